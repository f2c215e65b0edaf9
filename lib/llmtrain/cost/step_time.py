"""How long one training step takes on one layout: the planner's time model, term by term
(3D 并行训练: 单步耗时). Pure arithmetic on a model's shapes; no torch.

One micro-batch through the busiest pipeline stage (its ⌈L/pp⌉ layers and the output layer),
on one GPU of its tensor-parallel group, is the sum of

- **GEMMs**: every matrix product the GPU runs (q/k/v, o, the MLP's up and down, the output
  layer), forward once, backward twice (the input's and the weight's gradient), the forward
  again under full recomputation. A GEMM of (M×K)(K×N) takes 2MNK / (peak · e(M, N, K)) with
  e = ``Kernels.gemm`` · M/(M + ``rows_half``) · N/(N + ``gemm_half``) · K/(K + ``gemm_half``):
  tensor parallelism shrinks N or K, a small micro-batch shrinks M = b·s, and the kernel runs
  further from its peak (the GEMM-size effect Narayanan et al. 2021, §3 and BLOOM's README
  invoke for the micro-batch).
- **the attention core** (QKᵀ and softmax·V): ``"flash"`` kernels skip the masked half of a
  causal T×T (forward 2 of the 4·b·s²·h FLOPs, backward 5 of 10: it recomputes QKᵀ) at
  ``Kernels.attention`` of peak; ``"materialized"`` (Megatron's fused softmax, 2021–22) runs them
  as batched GEMMs of width d_head, in full, and moves the b·(a/t)·s² scores through memory
  (``SOFTMAX_BYTES`` per score forward, twice that backward).
- **memory-bound kernels**: norms, residual adds (with bias and dropout fused, as Megatron fuses
  them), the activation function, the loss over the vocabulary: ``ELEMENTWISE`` bytes per token,
  at ``Kernels.hbm`` of the card's memory bandwidth. Norms and residuals run on the whole hidden
  state on every tensor rank unless sequence parallelism splits them (Korthikanti et al. 2023).
- **TP collectives** on the critical path (Megatron's f/g are synchronous: Shoeybi et al. 2019,
  §3), ring bytes over NVLink (or the network, for a TP group wider than a node) at
  ``Kernels.nvlink`` (``Kernels.network``) of its bandwidth.

The step: m micro-batches stretched by the pipeline bubble (p − 1)/(v·m + p − 1); the pipeline's
point-to-point messages (b·s·h per message, b·s·h/t with Megatron's scatter/gather or sequence
parallelism, Narayanan et al. 2021, §4.1); the data-parallel gradient traffic, hidden behind
backward only where the framework overlaps it (``Overlap``); the optimizer step, memory-bound
(``OPTIMIZER_BYTES`` per parameter it updates).

The constants of ``Kernels`` are fitted (``scripts/fit_planner.py``) on the published runs of
``llmtrain.published_runs``, each run's step time derived from its published throughput; the
others are counted from the kernels named above. tests/test_step_time.py checks that the FLOPs
timed here are exactly ``flops.training_flops``'s and that every term moves the way its reason
says.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction

from .. import check
from ..model.shapes import ModelShape

__all__ = ["Kernels", "KERNELS", "Overlap", "OVERLAPS", "ELEMENTWISE", "SOFTMAX_BYTES",
           "OPTIMIZER_BYTES", "gemm_efficiency", "layer_gemms", "MicroBatch", "micro_batch",
           "ATTENTION_KERNELS", "optimizer_seconds", "exposed", "link_seconds"]

ATTENTION_KERNELS = ("flash", "materialized")


@dataclass(frozen=True)
class Kernels:
    """Achieved rates of one GPU generation: shares of its datasheet peaks (fitted)."""

    gemm: float        # a large bf16 GEMM, share of dense tensor-core peak
    gemm_half: float   # the width (N or K) at which x/(x + gemm_half) is 1/2
    rows_half: float   # the rows (M = b·s tokens) at which M/(M + rows_half) is 1/2
    attention: float   # flash attention (FLOPs it executes), share of peak
    hbm: float         # memory-bound kernels, share of HBM bandwidth
    nvlink: float      # NCCL collectives and p2p inside a node, share of NVLink's bandwidth
    network: float     # ... between nodes, share of the network's bandwidth per GPU

    def __post_init__(self):
        for f in ("gemm", "attention", "hbm", "nvlink", "network"):
            check.number(f, getattr(self, f), maximum=1, positive=True)
        check.positive_number("gemm_half", self.gemm_half)
        check.positive_number("rows_half", self.rows_half)


# Fitted by scripts/fit_planner.py on the 69 runs of llmtrain.published_runs (its output, with
# each run's error and a leave-one-source-out check, is kept in results/planner_fit.txt): gemm,
# gemm_half and attention per GPU generation; rows_half, hbm, nvlink and network shared. Hopper
# needs much wider GEMMs than Ampere to approach its peak (half efficiency at about 800 columns
# against about 120), and reaches a smaller share of it (about 66 % against 74 %).
KERNELS: dict[str, Kernels] = {
    "ampere": Kernels(gemm=0.743, gemm_half=121.6, rows_half=142.7, attention=0.3403,
                      hbm=0.9498, nvlink=0.8458, network=0.8479),
    "hopper": Kernels(gemm=0.6583, gemm_half=805.0, rows_half=142.7, attention=0.4574,
                      hbm=0.9498, nvlink=0.8458, network=0.8479),
}


@dataclass(frozen=True)
class Overlap:
    """What a framework hides behind compute. dp: the gradient reduction (and ZeRO's weight
    gathers) runs beside compute, hidden up to the compute time it can overlap with ("pp1":
    only when pp = 1, as Megatron-LM 2021 ran torch's DDP there and its own, unoverlapped,
    with a pipeline); tp: the
    share of a stage's GEMM time that can hide its TP collectives (Megatron-Core's
    --tp-comm-overlap splits each GEMM into chunks and sends one while the next computes: at
    most the GEMM time is hidden); pp: the share of the pipeline's p2p hidden (asynchronous)."""

    dp: bool | str  # True, False, or "pp1": only without a pipeline (Megatron-LM 2021)
    tp: float = 0.0
    pp: float = 0.0

    def __post_init__(self):
        if self.dp != "pp1":
            check.boolean("dp", self.dp)
        check.number("tp", self.tp, 0, 1)
        check.number("pp", self.pp, 0, 1)


# Megatron-LM 2021 (Narayanan et al. 2021): gradients all-reduced after the pipeline flush, f/g
# and p2p synchronous. Megatron-Core (--overlap-grad-reduce, --overlap-param-gather), DeepSpeed
# (overlap_comm) and FSDP overlap the data-parallel traffic with backward.
OVERLAPS = {"none": Overlap(dp=False), "dp": Overlap(dp=True)}

# Bytes a memory-bound kernel moves per token and layer, forward (backward: twice), in units of
# one 16-bit element: per hidden element, 2 norms (read, write) + 2 residual adds with fused bias
# and dropout (read 2, write 1) = 10; per element of the MLP's inner width (divided by t), the
# activation (GeLU: read 4h, write 4h; SwiGLU: read 2H', write H': 8h either way for H' = 8h/3)
# = 3 per H'. The loss: per logit (V/t per token), logits read in 16 bits, probabilities and
# their gradient in fp32 (fused cross entropy): 10 bytes.
ELEMENTWISE = {"hidden": 10, "inner": 3, "logit_bytes": 10}
# Per attention score of a materialized core, forward: QKᵀ written (2), the fused scale-mask-
# softmax reads and writes (4), dropout reads, writes and keeps a 1-byte mask (5): 11 bytes.
SOFTMAX_BYTES = 11
# The optimizer step per parameter it updates (mixed-precision AdamW with fp32 master weights):
# read master 4, gradient 4, m 4, v 4; write master 4, m 4, v 4, the 16-bit weight 2.
OPTIMIZER_BYTES = 30


def gemm_efficiency(k: Kernels, M: int, N: int, K: int) -> float:
    """e(M, N, K) = gemm · M/(M + rows_half) · N/(N + gemm_half) · K/(K + gemm_half).

    Checked:
    tests/test_step_time.py::test_gemm_efficiency_grows_with_size_towards_the_peak_share."""
    return (k.gemm * M / (M + k.rows_half) * N / (N + k.gemm_half)
            * K / (K + k.gemm_half))


def layer_gemms(shape: ModelShape, tp: int, tokens: int) -> list[tuple[str, int, int, int]]:
    """(name, M, N, K) of the forward GEMMs of one decoder layer on one of tp ranks, for
    ``tokens`` = b·s rows: q/k/v fused (column-parallel), o (row-parallel), gate/up fused
    (column), down (row). Checked (their FLOPs, through ``micro_batch``):
    tests/test_step_time.py::test_the_flops_timed_are_training_flops."""
    H, Hf = shape.hidden_size, shape.intermediate_size
    return [("qkv", tokens, (shape.q_size + 2 * shape.kv_size) // tp, H),
            ("o", tokens, H, shape.q_size // tp),
            ("gate_up", tokens, 2 * Hf // tp, H),
            ("down", tokens, H, Hf // tp)]


class MicroBatch(dict):
    """Seconds of one micro-batch through one stage, by term; ``.flops``: the FLOPs timed."""

    flops: int = 0
    backward_s: float = 0.0  # the part that runs in backward (what DP traffic can hide behind)


@functools.lru_cache(maxsize=8192)
def micro_batch(shape: ModelShape, layers: int, head: bool, tp: int, sp: bool, b: int, seq: int,
                recompute: str, attention: str, kernels: Kernels, peak_flops: float,
                hbm_bytes_per_s: float) -> MicroBatch:
    """One micro-batch of b sequences through ``layers`` decoder layers (and the output layer and
    loss if ``head``) on one of tp GPUs: seconds by term (no communication).

    Checked: tests/test_step_time.py::test_the_flops_timed_are_training_flops (``.flops``) and,
    with the fitted ``KERNELS``, tests/test_published_runs.py::test_step_time_within_15_percent."""
    check.one_of("attention", attention, ATTENTION_KERNELS)
    k, T = kernels, b * seq
    passes = 4 if recompute == "full" else 3  # forward, 2 × backward, forward again
    gemm_s, flops = 0.0, 0
    for _, M, N, K in layer_gemms(shape, tp, T):
        f = 2 * M * N * K
        flops += passes * layers * f
        gemm_s += passes * layers * f / (peak_flops * gemm_efficiency(k, M, N, K))
    # attention core, forward 4·b·s²·(N·d)/t FLOPs counted in full (flops.training_flops, eager)
    core = 4 * b * seq * seq * shape.q_size // tp
    again = recompute in ("selective", "full")
    flops += layers * core * (4 if again else 3)
    if attention == "flash":  # causal: half the tiles; backward recomputes QKᵀ (5 GEMMs, not 4)
        executed = core / 2 * (1 + 2.5 + (1 if again else 0))
        attn_s = layers * executed / (peak_flops * k.attention)
        score_s = 0.0
    else:
        heads = shape.num_heads // tp
        e = gemm_efficiency(k, seq, seq, shape.d_head)
        attn_s = layers * core * (4 if again else 3) / (peak_flops * e)
        scores = b * heads * seq * seq
        score_s = layers * scores * SOFTMAX_BYTES * (4 if again else 3) / (
            hbm_bytes_per_s * k.hbm)
    per_token = (ELEMENTWISE["hidden"] * shape.hidden_size / (tp if sp else 1)
                 + ELEMENTWISE["inner"] * shape.intermediate_size / tp) * 2
    elem_s = layers * T * per_token * (passes) / (hbm_bytes_per_s * k.hbm)
    head_s = 0.0
    if head:  # output layer: forward + 2 backward GEMMs, never recomputed; the loss
        M, N, K = T, shape.vocab_size // tp, shape.hidden_size
        f = 2 * M * N * K
        flops += 3 * f
        head_s = 3 * f / (peak_flops * gemm_efficiency(k, M, N, K))
        head_s += T * N * ELEMENTWISE["logit_bytes"] / (hbm_bytes_per_s * k.hbm)
    out = MicroBatch({"GEMMs": gemm_s + head_s, "attention": attn_s + score_s,
                      "memory-bound": elem_s})
    out.flops = flops
    # backward: 2 of the `passes` GEMM/elementwise passes (+ recompute), and the attention's
    out.backward_s = sum(out.values()) * (passes - 1) / passes
    return out


def optimizer_seconds(params: int, hbm_bytes_per_s: float, kernels: Kernels) -> float:
    """The optimizer step over ``params`` parameters (this GPU's share), memory-bound.

    Checked: tests/test_step_time.py::test_the_optimizer_step_is_memory_bound."""
    return params * OPTIMIZER_BYTES / (hbm_bytes_per_s * kernels.hbm)


def exposed(comm_s: float, window_s: float, overlap: bool) -> float:
    """Communication time left on the critical path: all of it, or what exceeds the compute
    window it overlaps with. Checked: tests/test_step_time.py::test_exposed_communication."""
    return max(0.0, comm_s - window_s) if overlap else comm_s


def link_seconds(nbytes: float | Fraction, bytes_per_s: float, share: float) -> float:
    """Bytes sent over a link of ``bytes_per_s`` (per direction), at ``share`` of it
    (``Kernels.nvlink`` or ``Kernels.network``).

    Checked: tests/test_plan.py::test_time_parts_are_the_terms (TP comm, DP comm, PP p2p)."""
    return float(nbytes) / (bytes_per_s * share)
