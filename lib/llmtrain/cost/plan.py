"""Planning a 3D layout (3D 并行训练: 如何切分): for a model, a cluster and a global batch, the
memory per GPU and the step time of every (tp, pp, dp, ZeRO stage, recomputation, micro-batch,
interleaving, sequence parallelism), the feasible ones ranked by step time. Pure arithmetic.

One layout, per GPU (``evaluate``):

- memory (``memory_parts``): ``memory.estimate``'s parts under the framework's count
  (``memory.FRAMEWORKS``): model states of the busiest stage, the activations of the stage that
  holds the most, the pipeline's micro-batches in flight (``pp_schedule.held_microbatches``;
  notebook 07) and the framework's constants; tests/test_plan.py checks they equal
  ``estimate``'s. Stages split the layers as ``stage_layers`` says (Llama 3's 7 + 14 × 8 + 7).
- time: one micro-batch through the busiest stage (``llmtrain.step_time``: GEMMs by their
  shapes, the attention core, memory-bound kernels, TP collectives on their link), m of them
  stretched by the bubble (p − 1)/(vm + p − 1); the pipeline's p2p (b·s·h/t per message with
  scatter/gather or SP, Narayanan et al. 2021, §4.1), the data-parallel traffic of the ZeRO
  stage in units r = (d − 1)/d of this GPU's gradients or weights (ZeRO-0 an all-reduce 2r;
  ZeRO-1 a reduce-scatter and an all-gather; ZeRO-2 a reduce-scatter per micro-batch; ZeRO-3
  two gathers and a reduce-scatter per micro-batch), hidden only as far as the framework
  overlaps it (``step_time.Overlap``); the optimizer step.
- MFU = model FLOPs (``flops.training_flops``, no recomputation) / (step time × GPUs × peak);
  HFU counts the recomputation too (``flops.CONVENTIONS`` names the other counts).

A group's link: the ranks of a tp group span tp consecutive GPUs, a dp group tp·dp, two
adjacent stages 2·tp·dp (``mesh.ParallelDims``' rank order); within ``gpus_per_node`` NVLink,
otherwise the network. Every assumption is a field of ``Assumptions``; ``FRAMEWORKS`` holds
those of the frameworks the published runs used, ``FRAMEWORK_OPTIONS`` what each could run.
The runs themselves, and the planner's error on each, are ``llmtrain.published_runs``.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple

from .. import check
from ..model import shapes
from . import step_time
from . import pp_schedule
from .layout import ParallelDims
from ..model.shapes import ModelShape

__all__ = ["GIB", "MI", "Cluster", "CLUSTERS", "cluster", "MODELS", "ALIASES", "model",
           "model_names", "gpt_shape", "parse_tokens", "Assumptions", "FRAMEWORKS",
           "framework_assumptions", "FRAMEWORK_OPTIONS", "Layout", "Plan", "layout", "stage_layers",
           "memory_parts", "evaluate", "search", "no_layout_reason", "rank_of",
           "LARGE_BATCH_TOKENS"]

GIB = 2**30
# Above this many tokens per step the CLI reminds that --batch-tokens is one step's global batch
# (a student may type the total training tokens): 2³⁰, 64× the 16M of Llama 3 405B
# (published_runs). The search itself takes the same time for any count.
LARGE_BATCH_TOKENS = 2**30
MI = 2**20  # "4M tokens": 4·2²⁰ (Llama 3's 16M = 16 seqs × 8,192 × DP 128 = 2²⁴; BLOOM's
#             "4.2M tokens" = 2,048 × 2,048 = 4·2²⁰)


# --- clusters ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cluster:
    """One kind of GPU node. Bandwidths are per GPU and per direction (a ring sends and
    receives at once), in bytes/s; FLOPs are dense bf16 tensor-core FLOP/s per GPU;
    ``generation`` picks the fitted ``step_time.KERNELS``."""

    name: str
    gpus_per_node: int
    memory_bytes: int
    peak_flops: float
    intra_node_bytes_per_s: float
    inter_node_bytes_per_s: float
    hbm_bytes_per_s: float = 2.0e12
    generation: str = "ampere"
    source: str = ""

    def __post_init__(self):
        check.positive_int("gpus_per_node", self.gpus_per_node)
        check.positive_int("memory_bytes", self.memory_bytes)
        for f in ("peak_flops", "intra_node_bytes_per_s", "inter_node_bytes_per_s",
                  "hbm_bytes_per_s"):
            check.positive_number(f, getattr(self, f))
        check.one_of("generation", self.generation, tuple(step_time.KERNELS))


_A100 = ("NVIDIA A100 datasheet: 312 TFLOPS bf16 dense, NVLink 600 GB/s (both directions: "
         "300e9 B/s each way), HBM2e 1,935 GB/s (80GB PCIe) / 2,039 GB/s (80GB SXM), HBM2 "
         "1,555 GB/s (40GB); DGX A100: 8 GPUs, 8 × 200 Gb/s HDR InfiniBand (25e9 B/s per GPU)")
_H100 = ("NVIDIA H100 SXM datasheet: 989 TFLOPS bf16 dense, NVLink 900 GB/s (450e9 B/s each "
         "way), HBM3 3.35 TB/s; DGX H100: 8 GPUs, 8 × 400 Gb/s NDR (50e9 B/s per GPU; Llama 3 "
         "§3.3.1: 400 Gbps)")
CLUSTERS: dict[str, Cluster] = {c.name: c for c in [
    Cluster("a100-40g", 8, 40 * GIB, 312e12, 300e9, 25e9, 1.555e12, "ampere", _A100),
    Cluster("a100-80g", 8, 80 * GIB, 312e12, 300e9, 25e9, 2.039e12, "ampere", _A100),
    Cluster("h100-80g", 8, 80 * GIB, 989e12, 450e9, 50e9, 3.35e12, "hopper", _H100),
    # BLOOM's Jean Zay nodes: 8 A100 80GB on NVLink, "4 OmniPath links" per node (bigscience
    # train/tr11-176B-ml/README.md) of 100 Gb/s each: 50 Gb/s = 6.25e9 B/s per GPU
    Cluster("a100-80g-opa", 8, 80 * GIB, 312e12, 300e9, 6.25e9, 2.039e12, "ampere",
            _A100 + "; Omni-Path 100 Gb/s per link"),
]}  # an "80G" card is 80 GiB (81,920 MiB), as in widgets.CARD_GIB


def cluster(gpu: str | Cluster) -> Cluster:
    """A preset by name ("a100-40g", "a100-80g", "h100-80g") or a Cluster as given."""
    if isinstance(gpu, Cluster):
        return gpu
    return CLUSTERS[check.one_of("gpu", gpu, tuple(CLUSTERS))]


# --- models --------------------------------------------------------------------------------

# BLOOM-176B (bigscience train/tr11-176B-ml README): 70 layers, h 14336, 112 heads, vocabulary
# padded to 250,880, seq 2048, tied embeddings. BLOOM is not a LLaMA (ALiBi, LayerNorm, a GeLU
# MLP of 4h: 8h² weights + 5h biases). As a ModelShape: SwiGLU with H' = ⌊8h/3⌋ = 38,229 (3hH'
# = 8h² − h weights, the same matmul FLOPs up to 1/(8h)), biases on q/k/v, o and the MLP; the
# count differs from BLOOM's by ``params.count(MODELS["bloom-176b"]) − BLOOM_176B_PARAMS``
# (−0.0010 %, tests/test_plan.py::test_bloom_approximation).
# Llama 3 405B (arXiv 2407.21783, Table 3; vocabulary 128,256 as in the released config.json,
# the paper says "128K"), seq 8,192.
MODELS: dict[str, ModelShape] = {
    "bloom-176b": ModelShape(vocab_size=250880, hidden_size=14336, num_layers=70, num_heads=112,
                             num_kv_heads=112, intermediate_size=38229, max_seq_len=2048,
                             tie_embeddings=True, attention_bias=True, o_bias=True,
                             mlp_bias=True, name="bloom-176b"),
    "llama3-405b": ModelShape(vocab_size=128256, hidden_size=16384, num_layers=126,
                              num_heads=128, num_kv_heads=8, intermediate_size=53248,
                              max_seq_len=8192, name="llama3-405b", norm_eps=1e-5,
                              rope_theta=500000.0),
}
ALIASES = {"llama-70b": "llama2-70b"}  # the first LLaMA family with a 70B


def gpt_shape(hidden: int, layers: int, heads: int, vocab: int, seq: int, *, name: str,
              kv_heads: int | None = None, biases: bool = True,
              tie_embeddings: bool = True) -> ModelShape:
    """A GPT-style model (LayerNorm, a non-gated MLP of 4h: GeLU, or Nemotron's squared ReLU;
    learned or rotary positions) as a ``ModelShape``, as BLOOM is above: SwiGLU with H' = ⌊8h/3⌋
    (3hH' ≈ 8h² matmul weights: the same GEMM FLOPs up to 1/(8h); the GEMMs' widths and the
    activation's bytes differ by under 1/3, which moves ``step_time`` by about 1 %), biases on
    q/k/v, o and the MLP if ``biases``. A learned position embedding (s·h parameters, no FLOPs)
    is not counted."""
    return ModelShape(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
                      num_kv_heads=kv_heads or heads, intermediate_size=8 * hidden // 3,
                      max_seq_len=seq, tie_embeddings=tie_embeddings, attention_bias=biases,
                      o_bias=biases, mlp_bias=biases, name=name)


def model_names() -> list[str]:
    return [*shapes.names(), *MODELS, *ALIASES]


def model(name: str | ModelShape, *, what: str = "name") -> ModelShape:
    """A ``shapes`` preset, one of ``MODELS`` or an alias ("llama-70b" = llama2-70b);
    ``what``: the argument an error names."""
    if isinstance(name, ModelShape):
        return name
    check.one_of(what, name, model_names())
    name = ALIASES.get(name, name)
    return MODELS[name] if name in MODELS else shapes.get(name)


def parse_tokens(batch_tokens: str | int) -> int:
    """"4M" = 4·2²⁰, "512K" = 512·2¹⁰, "1G" = 2³⁰, "32768" = 32768 (binary prefixes: see MI)."""
    if isinstance(batch_tokens, int) and not isinstance(batch_tokens, bool):
        return check.positive_int("batch_tokens", batch_tokens)
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*", str(batch_tokens), re.IGNORECASE)
    if not m or int(m.group(1)) == 0:
        check.fail("batch_tokens", "a positive count of tokens like 4M, 512K or 32768", batch_tokens)
    return int(m.group(1)) * 2 ** (10 * " KMG".index(m.group(2).upper() or " "))


# --- one layout ----------------------------------------------------------------------------

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
        check.one_of("memory_framework", self.memory_framework,
                     ("slides", "deepspeed", "megatron", "fsdp", "nemo"))
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
    """``Assumptions`` of one of ``FRAMEWORKS``, with ``changes``."""
    return Assumptions(**{**FRAMEWORKS[check.one_of("framework", framework,
                                                    tuple(FRAMEWORKS))], **changes})


class Layout(NamedTuple):
    """dims = ParallelDims(dp, tp, pp); m micro-batches of b sequences per dp replica."""

    dims: ParallelDims
    zero: int
    recompute: str
    micro_batch: int
    microbatches: int
    virtual: int = 1  # > 1: interleaved 1F1B with that many chunks per rank
    sp: bool = False  # sequence parallelism (Korthikanti et al. 2023) in the tp group

    @property
    def schedule(self) -> str:
        return "1f1b" if self.virtual == 1 else "interleaved"

    def label(self) -> str:
        d = self.dims
        v = f" v{self.virtual}" if self.virtual > 1 else ""
        return (f"tp{d.tp}{'+sp' if self.sp else ''} pp{d.pp}{v} dp{d.dp} ZeRO-{self.zero} "
                f"{self.recompute} b{self.micro_batch}")


@dataclass(frozen=True)
class Plan:
    """One layout evaluated: bytes per GPU by part, seconds per step by part."""

    layout: Layout
    memory_parts: dict[str, int]
    card_bytes: int
    time_parts: dict[str, float]
    model_flops: int
    hardware_flops: int
    gpus: int
    peak_flops: float
    tokens: int
    details: dict = field(default_factory=dict)

    @property
    def memory_bytes(self) -> int:
        return sum(self.memory_parts.values())

    @property
    def fits(self) -> bool:
        return self.memory_bytes <= self.card_bytes

    @property
    def step_time_s(self) -> float:
        return sum(self.time_parts.values())

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.step_time_s

    @property
    def mfu(self) -> float:
        return self.model_flops / (self.step_time_s * self.gpus * self.peak_flops)

    @property
    def hfu(self) -> float:
        return self.hardware_flops / (self.step_time_s * self.gpus * self.peak_flops)


def layout(shape, gpus: int, batch_tokens: int, seq: int, *, tp: int = 1, pp: int = 1,
           zero: int = 1, recompute: str = "selective", micro_batch: int = 1,
           virtual: int = 1, sp: bool = False) -> Layout:
    """A checked Layout: gpus = dp·tp·pp, the global batch batch_tokens/seq sequences split into
    dp × m micro-batches of micro_batch; ``dims.check(shape)`` (tp | heads, pp ≤ L)."""
    from . import memory

    shape = model(shape, what="shape")
    dims = memory.parallel_dims(gpus, tp, pp).check(shape)
    check.one_of("zero", zero, (0, 1, 2, 3))
    check.one_of("recompute", recompute, ("none", "selective", "full"))
    check.positive_int("micro_batch", micro_batch)
    seqs = _sequences(batch_tokens, seq)
    if seqs % (dims.dp * micro_batch):
        raise ValueError(f"batch must be a multiple of dp·micro_batch={dims.dp * micro_batch} "
                         f"sequences, got {seqs} ({batch_tokens:,} tokens of seq={seq})")
    m = seqs // (dims.dp * micro_batch)
    check.positive_int("virtual", virtual)
    if virtual > 1:
        pp_schedule.check_schedule("interleaved", pp, m, virtual)
        if dims.pp == 1 or math.ceil(shape.num_layers / pp) < virtual:
            raise ValueError(f"virtual must be at most the {math.ceil(shape.num_layers / pp)} "
                             f"layers of a stage (and pp > 1), got virtual={virtual}")
    if check.boolean("sp", sp) and (tp == 1 or seq % tp):
        raise ValueError(f"sp needs tp > 1 dividing seq={seq}, got tp={tp}")
    return Layout(dims, zero, recompute, micro_batch, m, virtual, sp)


def _sequences(batch_tokens: int, seq: int) -> int:
    check.positive_int("batch_tokens", batch_tokens)
    check.positive_int("seq", seq)
    if batch_tokens % seq:
        raise ValueError(f"batch_tokens must be a positive multiple of seq={seq}, "
                         f"got {batch_tokens:,}")
    return batch_tokens // seq


@functools.lru_cache(maxsize=4096)
def _flops(shape: ModelShape, seqs: int, seq: int, recompute: str, attention: str) -> int:
    from . import flops

    return flops.training_flops(shape, seqs, seq, attention=attention, recompute=recompute)


def stage_layers(layers: int, pp: int) -> tuple[int, int, int]:
    """Decoder layers of the (first, middle, last) pipeline stages: ⌈L/pp⌉ each; where the
    stages fall short of L by one or two layers, the first and last stages (which also hold
    the embedding, the output layer and the loss) give them up, as Llama 3 405B does: 126
    layers on 16 stages, 7 + 14 × 8 + 7 (Llama 3, §3.3.2). Any other uneven split counts
    ⌈L/pp⌉ everywhere (the busiest stage; Megatron asks pp to divide L)."""
    n = math.ceil(layers / pp)
    short = pp * n - layers
    if pp == 1 or short > 2:
        return n, n, n
    return n - (short + 1) // 2, n, n - short // 2


@functools.lru_cache(maxsize=4096)
def _tp_bytes(shape: ModelShape, tp: int, sp: bool, b: int, seq: int, n: int,
              recompute: str, staged: bool = False, head: bool = True) -> Fraction:
    """Bytes one rank of a stage sends for TP in one micro-batch (ring model): n layers of
    ``comm_per_layer`` (forward ones twice under full recomputation: the layer's forward runs
    again) + with ``head`` the output layer and loss of ``comm_per_model``, and the embedding's
    unless ``staged`` (a pipeline: the embedding is on the first stage)."""
    from ..parallel import tp_comm

    if tp == 1:
        return Fraction(0)
    total = Fraction(0)
    for (op, direction), t in tp_comm.comm_per_layer(tp, sp, b, seq, shape.hidden_size).items():
        again = 2 if direction == "forward" and recompute == "full" else 1
        total += again * n * tp_comm.sent_bytes(op, t, tp, 2)
    for (op, _, part), t in tp_comm.comm_per_model(shape, tp, sp, b, seq).items():
        if head and part != "layers" and not (staged and part == "embedding"):
            total += tp_comm.sent_bytes(op, t, tp, 2)
    return total


@functools.lru_cache(maxsize=4096)
def _states(shape: ModelShape, dims: ParallelDims, zero: int,
            framework: str = "slides") -> tuple[int, int]:
    """(model-state bytes, parameters) of the busiest GPU."""
    from . import memory

    return (sum(memory.model_state_bytes(shape, dims=dims, zero=zero,
                                         framework=framework).values()),
            memory.params_per_gpu(shape, dims))


def _in_flight(pp: int, m: int, virtual: int) -> int:
    """Micro-batch chunks the first stage holds at its peak (1F1B: min(pp, m)).

    Replayed on the schedule of min(m, 2·pp) micro-batches: the count stops growing once the
    warm-up fits (1F1B: pp − 1 forwards; interleaved: 2(pp − 1) + (v − 1)·pp, below 2·pp·v),
    so the search costs the same for any batch (tests/test_plan.py checks it against the full
    schedule). 2·pp is a multiple of pp, as interleaving needs."""
    return _in_flight_schedule(pp, min(m, 2 * pp), virtual)


@functools.lru_cache(maxsize=1024)
def _in_flight_schedule(pp: int, m: int, virtual: int) -> int:
    name = "1f1b" if virtual == 1 else "interleaved"
    return pp_schedule.in_flight(pp_schedule.schedule(name, pp, m, 0, virtual))


def _bandwidth(c: Cluster, span: int, k: step_time.Kernels) -> tuple[float, float]:
    """(datasheet bytes/s, achieved share) of the link a group spanning ``span`` consecutive
    ranks uses: NVLink inside a node, the network beyond."""
    if span <= c.gpus_per_node:
        return c.intra_node_bytes_per_s, k.nvlink
    return c.inter_node_bytes_per_s, k.network


@functools.lru_cache(maxsize=4096)
def _stage_activations(shape: ModelShape, pp: int, tp: int, b: int, seq: int, recompute: str,
                       sp: bool, impl: str, m: int, v: int) -> tuple[int, int]:
    """(one micro-batch's activations, the other in-flight micro-batches') of the stage that
    holds the most: the first (``stage_layers``' first, with the loss's activations as
    ``memory.estimate`` counts them, holding ``pp_schedule.held_microbatches`` of rank 0) or,
    when it has fewer layers, the second (rank 1: one micro-batch fewer in flight, more layers).
    Equal to ``memory.pipeline_activation_bytes`` when pp divides L."""
    from . import memory

    first, middle, _ = stage_layers(shape.num_layers, pp)
    dims = ParallelDims(tp=tp, pp=pp)
    one, extra, _ = memory.pipeline_activation_bytes(
        shape.replace(num_layers=first * pp), dims, b, seq, recompute=recompute, sp=sp,
        impl=impl, microbatches=m, virtual=v)
    if middle == first:
        return one, extra
    kw = dict(impl=impl, recompute=recompute, tp=tp, sp=sp)
    layer = (memory.activation_bytes(shape.replace(num_layers=middle + 1), b, seq, **kw)
             - memory.activation_bytes(shape.replace(num_layers=middle), b, seq, **kw))
    held = pp_schedule.held_microbatches("1f1b" if v == 1 else "interleaved", pp, m, 1, v)
    second = math.ceil(held * middle * layer)
    if second <= one + extra:
        return one, extra
    return middle * layer, second - middle * layer


def memory_parts(shape, lay: Layout, seq: int, assumptions: Assumptions = Assumptions()):
    """Bytes per GPU by part: ``memory.estimate``'s parts (the first stage, its micro-batches in
    flight, the framework's states and constants) built from the same functions, without its
    slower step-by-step peak; with FlashAttention, no recomputation saves what selective
    recomputation does."""
    from . import memory

    shape, a = model(shape, what="shape"), assumptions
    d, b = lay.dims, lay.micro_batch
    fw = memory.framework_of(a.memory_framework)
    # FlashAttention keeps no b·a·s² scores: without recomputation it saves what Korthikanti's
    # selective recomputation saves (the 34·sbh of a layer, not its 5·as²b)
    flash = a.attention_kernel == "flash"
    saved = "selective" if lay.recompute == "none" and flash else lay.recompute
    # the count in flight stops growing once m covers the warm-up (below 2·pp, a multiple of
    # pp as interleaving needs): the cache then serves every larger m
    m = lay.microbatches if lay.microbatches < 2 * d.pp else 2 * d.pp
    act, in_flight = _stage_activations(shape, d.pp, d.tp, b, seq, saved, lay.sp, a.impl, m,
                                        lay.virtual)
    parts = {"model states": _states(shape, d, lay.zero, fw.name)[0], "activations": act}
    if d.pp > 1:
        parts["in-flight activations"] = in_flight
    if fw.softmax_extra:
        parts["softmax extra"] = fw.softmax_extra * b * seq * shape.vocab_size // d.tp
    if a.overheads:
        parts["framework"] = fw.framework_bytes
        if lay.zero and fw.zero_runtime_bytes:
            parts["ZeRO runtime"] = fw.zero_runtime_bytes
        parts["fragmentation"] = fw.fragmentation_bytes
    return parts


def evaluate(shape, gpu: str | Cluster, lay: Layout, seq: int,
             assumptions: Assumptions = Assumptions()) -> Plan:
    """Memory per GPU and seconds per step of one layout (see ``llmtrain.step_time``)."""
    shape, c, a = model(shape, what="shape"), cluster(gpu), assumptions
    k = a.kernels_of(c)
    d, b, m, v = lay.dims, lay.micro_batch, lay.microbatches, lay.virtual
    H = shape.hidden_size
    _, middle, last = stage_layers(shape.num_layers, d.pp)

    def stage(n: int, head: bool):  # one micro-batch through a stage: (compute parts, TP time)
        mb = step_time.micro_batch(shape, n, head, d.tp, lay.sp, b, seq, lay.recompute,
                                   a.attention_kernel, k, c.peak_flops, c.hbm_bytes_per_s)
        tpb = _tp_bytes(shape, d.tp, lay.sp, b, seq, n, lay.recompute, d.pp > 1, head)
        t = step_time.link_seconds(tpb, *_bandwidth(c, d.tp, k))
        return mb, tpb, step_time.exposed(t, a.overlap.tp * mb["GEMMs"], a.overlap.tp > 0)

    # the busiest stage: the last (its layers, the output layer, the loss) or a middle one
    stages = [stage(last, True)] + ([stage(middle, False)] if middle > last else [])
    mb, tp_bytes, tp_time = max(stages, key=lambda st: sum(st[0].values()) + st[2])
    compute = sum(mb.values())
    slot = compute + tp_time  # one micro-batch through the busiest stage
    bubble = pp_schedule.bubble_formula(d.pp, m, v)
    pipeline = m * slot / (1 - float(bubble))
    params, dp_time, dp_bytes = _states(shape, d, lay.zero)[1], 0.0, Fraction(0)
    if d.dp > 1:  # one ring reduce-scatter (r_g) or all-gather (r_w) of this GPU's stage
        r_g = Fraction((d.dp - 1) * params * a.grad_bytes, d.dp)
        r_w = Fraction((d.dp - 1) * params * 2, d.dp)
        bw, ov = _bandwidth(c, d.tp * d.dp, k), a.overlap.dp
        ov = d.pp == 1 if ov == "pp1" else ov
        sec = lambda nbytes: step_time.link_seconds(nbytes, *bw)  # noqa: E731
        bwd, fwd = mb.backward_s, compute - mb.backward_s
        x = step_time.exposed
        if lay.zero == 0:  # all-reduce of the accumulated gradients during the last backward
            dp_time, dp_bytes = x(sec(2 * r_g), bwd, ov), 2 * r_g
        elif lay.zero == 1:  # reduce-scatter then, all-gather of the new weights before the
            # next step's first forward needs them (Megatron's --overlap-param-gather)
            dp_time, dp_bytes = x(sec(r_g), bwd, ov) + x(sec(r_w), fwd, ov), r_g + r_w
        elif lay.zero == 2:  # a reduce-scatter per micro-batch, each free to run under every
            # later micro-batch's compute
            dp_time = x(m * sec(r_g), (m - 1) * slot + bwd, ov) + x(sec(r_w), fwd, ov)
            dp_bytes = m * r_g + r_w
        else:  # every micro-batch gathers the weights twice and reduce-scatters: prefetched
            dp_time = x(m * sec(2 * r_w + r_g), m * compute, ov)
            dp_bytes = m * (2 * r_w + r_g)
    pp_time, pp_bytes = 0.0, Fraction(0)
    if d.pp > 1:
        split = d.tp if (a.scatter_gather or lay.sp) else 1
        msg = Fraction(b * seq * H * 2, split)
        msgs = 2 * (v * m + d.pp - 1)
        pp_bytes = msgs * msg
        pp_time = step_time.link_seconds(pp_bytes, *_bandwidth(c, 2 * d.tp * d.dp, k))
        if split > 1 and not lay.sp:  # the receiver all-gathers the t pieces on NVLink
            pp_time += step_time.link_seconds(msgs * msg * (d.tp - 1),
                                              *_bandwidth(c, d.tp, k))
        pp_time *= 1 - a.overlap.pp
    updated = params // d.dp if lay.zero else params
    opt_time = step_time.optimizer_seconds(updated, c.hbm_bytes_per_s, k)
    seqs = m * b * d.dp
    model_f = _flops(shape, seqs, seq, "none", a.attention)
    hw_f = _flops(shape, seqs, seq, lay.recompute, a.attention)
    times = {"compute": m * compute, "TP comm": m * tp_time, "bubble": pipeline - m * slot,
             "DP comm": dp_time, "PP p2p": pp_time, "optimizer": opt_time}
    return Plan(lay, memory_parts(shape, lay, seq, a), c.memory_bytes, times, model_f, hw_f,
                d.world_size, c.peak_flops, seqs * seq,
                {"bubble_fraction": bubble, "in_flight": _in_flight(d.pp, m, v) if d.pp > 1
                 else 1, "tp_bytes": tp_bytes, "dp_bytes": dp_bytes, "pp_bytes": pp_bytes,
                 "compute_parts": {key: m * t for key, t in mb.items()}})


def _divisors(n: int) -> list[int]:
    """The divisors of n, ascending, in √n steps."""
    small = [k for k in range(1, math.isqrt(n) + 1) if n % k == 0]
    return small + [n // k for k in reversed(small) if k * k != n]


def search(shape, gpu: str | Cluster, gpus: int, batch_tokens: int, seq: int | None = None, *,
           zeros=(0, 1, 2, 3), recomputes=("none", "selective", "full"),
           micro_batches=(1, 2, 4), virtuals=(1,), sps=(False, True), tps=None, pps=None,
           stages: str = "any", assumptions: Assumptions = Assumptions(),
           feasible_only: bool = True) -> list[Plan]:
    """Every layout of ``gpus`` GPUs (tp | heads and kv heads, pp ≤ L, dp = gpus/(tp·pp),
    m = batch/(dp·b) whole; ``tps``, ``pps``: only these tp, pp), evaluated, the fitting ones
    (all with ``feasible_only=False``) sorted by step time, then memory. gpus: a multiple of a
    node, or a divisor of one. ``virtuals``: chunks per rank to try (a v > 1 must divide the
    ⌈L/pp⌉ layers of a stage), or "divisors": every divisor of them. ``stages``: "any" pp,
    "even" (pp divides L, as Megatron-LM asks) or "balanced" (``stage_layers``: the first and
    last stages short by at most a layer each, as BLOOM and Llama 3 split)."""
    check.one_of("stages", stages, ("any", "even", "balanced"))
    shape, c = model(shape, what="shape"), cluster(gpu)
    check.positive_int("gpus", gpus)
    if gpus % c.gpus_per_node and c.gpus_per_node % gpus:
        raise ValueError(f"gpus must be a multiple of the {c.gpus_per_node} GPUs of a node "
                         f"(or divide it), got {gpus}")
    seq = shape.max_seq_len if seq is None else check.positive_int("seq", seq)
    seqs = _sequences(batch_tokens, seq)
    plans = []
    for tp in _divisors(gpus):
        if shape.num_kv_heads % tp or shape.num_heads % tp or (tps and tp not in tps):
            continue
        for pp in _divisors(gpus // tp):
            dp = gpus // (tp * pp)
            if pp > shape.num_layers or (pps and pp not in pps):
                continue
            short = pp * math.ceil(shape.num_layers / pp) - shape.num_layers
            if (stages == "even" and short) or (stages == "balanced" and short > 2):
                continue
            per_stage = math.ceil(shape.num_layers / pp)
            vs = ([v for v in range(1, per_stage + 1) if per_stage % v == 0]
                  if virtuals == "divisors" else virtuals)
            for b in micro_batches:
                if seqs % (dp * b):
                    continue
                for v, sp in itertools.product(vs, sps):
                    if v > 1 and per_stage % v:
                        continue  # Megatron: v chunks of equal layers per stage
                    try:
                        lays = [layout(shape, gpus, batch_tokens, seq, tp=tp, pp=pp, zero=z,
                                       recompute=r, micro_batch=b, virtual=v, sp=sp)
                                for r in recomputes for z in zeros]
                    except ValueError:  # this (v, sp) does not apply to this (tp, pp, m)
                        continue
                    plans += [evaluate(shape, c, lay, seq, assumptions) for lay in lays]
    if feasible_only:
        plans = [p for p in plans if p.fits]
    return sorted(plans, key=lambda p: (p.step_time_s, p.memory_bytes))


def no_layout_reason(shape, gpu: str | Cluster, gpus: int, batch_tokens: int,
                     seq: int | None = None) -> str:
    """Why ``search(..., feasible_only=False)`` found no layout at all: the batch's sequences
    cannot be split over dp = gpus/(tp·pp) replicas for any tp (dividing the heads) and
    pp ≤ num_layers (each replica needs a whole number of sequences)."""
    shape, c = model(shape, what="shape"), cluster(gpu)
    seq = shape.max_seq_len if seq is None else seq
    seqs = _sequences(batch_tokens, seq)
    dps = [gpus // (tp * pp) for tp in _divisors(gpus)
           if not (shape.num_heads % tp or shape.num_kv_heads % tp)
           for pp in _divisors(gpus // tp) if pp <= shape.num_layers]
    return (f"no layout of {shape.name} on {gpus:,} {c.name}: the batch has {seqs:,} sequences "
            f"({batch_tokens:,} tokens / seq {seq:,}), and every data-parallel replica needs a "
            f"whole number of them, but dp = gpus/(tp·pp) is at least {min(dps):,} here (tp "
            f"dividing the heads, pp ≤ {shape.num_layers} layers) and no dp divides {seqs:,}: "
            f"use more --batch-tokens or fewer --gpus")


def rank_of(plans: list[Plan], target: Plan) -> int:
    """1 + the number of plans strictly faster than ``target`` (ties share a rank)."""
    return 1 + sum(p.step_time_s < target.step_time_s * (1 - 1e-12) for p in plans)
