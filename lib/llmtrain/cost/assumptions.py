"""The planner's assumptions, each a stated default, and those of the frameworks the published
runs used (``FRAMEWORKS``) with what each could run (``FRAMEWORK_OPTIONS``), each with its source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import check
from . import frameworks as _memory_frameworks
from . import step_time

__all__ = ["Assumptions", "FRAMEWORKS", "FRAMEWORK_OPTIONS", "framework_assumptions"]


@dataclass(frozen=True)
class Assumptions:
    """The step-time and memory model's assumptions, each a stated default
    (``llmtrain.step_time`` gives the reason for every term).

    kernels: achieved shares of the card's peaks (None: ``step_time.KERNELS`` of the card's
      generation, fitted on the published runs by scripts/fit_planner.py).
    attention_kernel: "flash" (FlashAttention: causal half skipped; Llama 3, torchtitan,
      Megatron-Core today) or "materialized" (Megatron's fused softmax of 2021–22).
    overlap: what is hidden behind compute (``step_time.Overlap``): Megatron-LM 2021 hid
      nothing ("none"); Megatron-Core, DeepSpeed and FSDP overlap the data-parallel traffic
      with backward ("dp", the default).
    scatter_gather: pipeline messages of b·s·h/t per GPU, then an all-gather on NVLink
      (Narayanan et al. 2021, §4.1; Megatron's default); False: b·s·h per GPU.
    grad_bytes: bytes per gradient element in the data-parallel reduction (2: bf16; Megatron
      reduces fp32 main gradients, 4).
    memory_framework: whose bytes per parameter and constants (``memory.FRAMEWORKS``: "slides",
      "deepspeed", "megatron", "fsdp").
    impl: the activation model of ``memory.estimate`` ("korthikanti": 16-bit, TP-aware).
    attention: the FLOPs convention of MFU and HFU (``flops``: "eager" counts causal attention
      in full, as Narayanan et al. Eq. 3 and PaLM's MFU do).
    overheads: add the framework's constants (the slides': framework 1 GiB, ZeRO runtime 4 GiB,
      fragmentation 1 GiB; False leaves them out).
    """

    kernels: step_time.Kernels | None = None
    attention_kernel: str = "flash"
    overlap: step_time.Overlap = step_time.OVERLAPS["dp"]
    scatter_gather: bool = True
    grad_bytes: int = 2
    memory_framework: str = "slides"
    impl: str = "korthikanti"
    attention: str = "eager"
    overheads: bool = True

    def __post_init__(self):
        if self.kernels is not None and not isinstance(self.kernels, step_time.Kernels):
            check.fail("kernels", "a step_time.Kernels or None", self.kernels)
        check.one_of("attention_kernel", self.attention_kernel, step_time.ATTENTION_KERNELS)
        if not isinstance(self.overlap, step_time.Overlap):
            check.fail("overlap", "a step_time.Overlap", self.overlap)
        check.boolean("scatter_gather", self.scatter_gather)
        check.one_of("grad_bytes", self.grad_bytes, (2, 4))
        check.one_of("memory_framework", self.memory_framework, tuple(_memory_frameworks.FRAMEWORKS))
        check.one_of("impl", self.impl, ("korthikanti", "textbook"))
        check.one_of("attention", self.attention, ("eager", "sdpa"))
        check.boolean("overheads", self.overheads)

    def kernels_of(self, c: Cluster) -> step_time.Kernels:
        return self.kernels or step_time.KERNELS[c.generation]


# The frameworks of the published runs, as assumptions: what each source says it ran, or what
# its framework did at the time (``llmtrain.published_runs``).
#   megatron-2021: Narayanan et al. 2021 (sc21 scripts @6985e589): the fused softmax (no
#     FlashAttention yet), fp16, full recomputation, scatter/gather; with pp > 1 Megatron's
#     local DDP all-reduces after the flush; with pp = 1 torch's DDP overlaps it with the last
#     backward (the scripts' DDP=local / DDP=torch).
#   megatron-2022: Korthikanti et al. 2023: the same kernels, selective recomputation and
#     sequence parallelism; "no overlapping of gradient all-reduces" (§6.3).
#   megatron-2023: the Megatron-LM baseline of MegaScale (commit 285068c8): MegaScale adds
#     FlashAttention-2 (its §3.3) and the overlaps, so the baseline is taken without them.
#   megatron-deepspeed: BLOOM: Megatron's kernels, DeepSpeed's pipeline engine (gradients
#     reduced after the flush, in fp32 by its BF16 optimizer), ZeRO-1, DeepSpeed's constants.
#   megatron-core / nemo: Megatron-Core r0.8 (README 2024: --overlap-grad-reduce,
#     --overlap-param-gather, --tp-comm-overlap, p2p overlapped "by default") and NeMo 24.11
#     (dgxc-benchmarking: ub_tp_comm_overlap, overlap_p2p_comm): FlashAttention (Transformer
#     Engine), TP collectives hidden behind the GEMMs they split; Megatron-Core reduces fp32
#     main gradients, NeMo's distributed_fused_adam bf16 ones (grad_sync_dtype: bf16) and
#     keeps 4 + 8/d bytes per parameter (memory.FRAMEWORKS["nemo"]).
#   megatron-core-2023: Nemotron-4 15B's run: Megatron-Core with the distributed optimizer;
#     no TP overlap said.
#   fsdp: PyTorch FSDP (llm-foundry's MPT runs): FlashAttention, prefetched gathers and
#     overlapped reduce-scatters, fp32 reduction; fsdp-llama3 adds Llama 3's asynchronous
#     pipeline p2p (§3.3.2).
FRAMEWORKS: dict[str, dict] = {
    "megatron-2021": dict(attention_kernel="materialized",
                          overlap=step_time.Overlap(dp="pp1"), grad_bytes=2,
                          memory_framework="megatron"),
    "megatron-2022": dict(attention_kernel="materialized", overlap=step_time.Overlap(dp=False),
                          grad_bytes=2, memory_framework="megatron"),
    "megatron-2023": dict(attention_kernel="materialized", overlap=step_time.Overlap(dp=False),
                          grad_bytes=4, memory_framework="megatron"),
    "megatron-deepspeed": dict(attention_kernel="materialized",
                               overlap=step_time.Overlap(dp=False), grad_bytes=4,
                               memory_framework="deepspeed"),
    "megatron-core": dict(attention_kernel="flash",
                          overlap=step_time.Overlap(dp=True, tp=1.0, pp=1.0),
                          grad_bytes=4, memory_framework="megatron"),
    "nemo": dict(attention_kernel="flash",
                 overlap=step_time.Overlap(dp=True, tp=1.0, pp=1.0),
                 grad_bytes=2, memory_framework="nemo"),
    "megatron-core-2023": dict(attention_kernel="flash", overlap=step_time.Overlap(dp=True),
                               grad_bytes=4, memory_framework="megatron"),
    "fsdp": dict(attention_kernel="flash", overlap=step_time.Overlap(dp=True), grad_bytes=4,
                 memory_framework="fsdp"),
    "fsdp-llama3": dict(attention_kernel="flash", overlap=step_time.Overlap(dp=True, pp=1.0),
                        grad_bytes=4, memory_framework="fsdp"),
}
_ALL = dict(zeros=(0, 1, 2, 3), recomputes=("none", "selective", "full"), sps=(False, True),
            virtuals="divisors", stages="even")
# What each framework could run (a published run's unpublished knobs are chosen among these).
FRAMEWORK_OPTIONS: dict[str, dict] = {
    "megatron-2021": dict(_ALL, zeros=(0,), recomputes=("full",), sps=(False,)),
    "megatron-2022": dict(_ALL, zeros=(0,)),
    "megatron-2023": dict(_ALL, zeros=(0, 1)),
    "megatron-deepspeed": dict(_ALL, zeros=(0, 1), recomputes=("full",), sps=(False,),
                               virtuals=(1,), stages="balanced"),
    "megatron-core": dict(_ALL, zeros=(0, 1)),
    "nemo": dict(_ALL, zeros=(0, 1)),
    "megatron-core-2023": dict(_ALL, zeros=(0, 1)),
    "fsdp": dict(_ALL, zeros=(2, 3), tps=(1,), pps=(1,)),  # llm-foundry: FSDP only
    "fsdp-llama3": dict(_ALL, zeros=(1, 2), stages="balanced"),
}


def framework_assumptions(framework: str, **changes) -> "Assumptions":
    """``Assumptions`` of one of ``FRAMEWORKS``, with ``changes``.

    Checked: tests/test_published_runs.py::test_step_time_within_15_percent (each run is
    predicted with its framework's assumptions)."""
    return Assumptions(**{**FRAMEWORKS[check.one_of("framework", framework,
                                                    tuple(FRAMEWORKS))], **changes})
