"""Planning a 3D layout (3D 并行训练: 如何切分): for a model, a cluster and a global batch, the
memory per GPU and the step time of every (tp, pp, dp, ZeRO stage, recomputation, micro-batch),
the feasible ones ranked by step time. Pure arithmetic, no processes.

One layout, per GPU (``evaluate``):

- memory: the parts of ``memory.estimate(shape, dims, micro_batch, seq, zero, recompute,
  impl="korthikanti")`` (model states of the busiest stage, one micro-batch's activations of its
  ⌈L/pp⌉ layers, the slides' constants; tests/test_plan.py checks they equal ``estimate``'s)
  plus the pipeline's other in-flight micro-batches: the first stage of 1F1B holds min(pp, m)
  micro-batches of activations, of interleaved 1F1B more chunks of 1/v the layers
  (``pp_schedule.in_flight``; notebook 07);
- time: the busiest stage's FLOPs (``flops.training_flops`` with the recomputation, ⌈L/pp⌉
  layers plus the output layer) over tp GPUs at ``efficiency`` × peak, plus its exposed TP
  all-reduces (``tp_comm.comm_per_layer``, ring 2(t−1)/t, on NVLink when tp ≤ GPUs per node),
  stretched by the pipeline bubble (``pp_schedule.bubble_formula``: ideal/(1 − (p−1)/(vm+p−1)));
  then the exposed share of the data-parallel traffic, in units r = (d−1)/d × the GPU's
  16-bit gradient bytes (a ring reduce-scatter or all-gather; Rajbhandari et al. SC'20 §7):
  ZeRO-0/1 one all-reduce per step, 2r; ZeRO-2 a reduce-scatter per micro-batch and one
  all-gather of the new weights, (m + 1)r; ZeRO-3 two weight all-gathers and a reduce-scatter
  per micro-batch, 3mr (DeepSpeed and FSDP shard each micro-batch's gradients); and the
  pipeline's point-to-point activations (b·s·h per message, 2(vm + p − 1) on the critical
  path).
- MFU = model FLOPs (no recomputation) / (step time × GPUs × peak) (Chowdhery et al. 2022,
  PaLM, App. B); HFU counts the recomputation too.

A group's link: the ranks of a tp group span tp consecutive GPUs, a dp group tp·dp, the whole
pipeline tp·dp·pp (``mesh.ParallelDims``' rank order); a span within ``gpus_per_node`` uses
NVLink, otherwise the network. Every assumption is a field of ``Assumptions``.

The published runs it is checked against (Megatron-LM's Table 1, BLOOM-176B, Llama 3 405B) are
data with their sources in ``llmtrain.published_runs``; tests/test_plan.py checks them.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple

from . import check, shapes
from .parallel import pp_schedule
from .parallel.mesh import ParallelDims
from .shapes import ModelShape

__all__ = ["GIB", "MI", "Cluster", "CLUSTERS", "cluster", "MODELS", "ALIASES", "model",
           "model_names", "parse_tokens", "Assumptions", "Layout", "Plan", "layout",
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
    receives at once), in bytes/s; FLOPs are dense bf16 tensor-core FLOP/s per GPU."""

    name: str
    gpus_per_node: int
    memory_bytes: int
    peak_flops: float
    intra_node_bytes_per_s: float
    inter_node_bytes_per_s: float
    source: str = ""

    def __post_init__(self):
        check.positive_int("gpus_per_node", self.gpus_per_node)
        check.positive_int("memory_bytes", self.memory_bytes)
        for f in ("peak_flops", "intra_node_bytes_per_s", "inter_node_bytes_per_s"):
            check.positive_number(f, getattr(self, f))


_A100 = ("NVIDIA A100 datasheet: 312 TFLOPS bf16 dense, NVLink 600 GB/s (both directions: "
         "300e9 B/s each way); DGX A100: 8 GPUs, 8 × 200 Gb/s HDR InfiniBand (25e9 B/s per GPU)")
_H100 = ("NVIDIA H100 SXM datasheet: 989 TFLOPS bf16 dense, NVLink 900 GB/s (450e9 B/s each "
         "way); DGX H100: 8 GPUs, 8 × 400 Gb/s NDR (50e9 B/s per GPU; Llama 3 §3.3.1: 400 Gbps)")
CLUSTERS: dict[str, Cluster] = {c.name: c for c in [
    Cluster("a100-40g", 8, 40 * GIB, 312e12, 300e9, 25e9, _A100),
    Cluster("a100-80g", 8, 80 * GIB, 312e12, 300e9, 25e9, _A100),
    Cluster("h100-80g", 8, 80 * GIB, 989e12, 450e9, 50e9, _H100),
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
    """The step-time model's assumptions, each a stated default.

    efficiency: achieved share of peak inside matmul-bound kernels. An assumption: the best
      rows of Narayanan et al. 2021 Table 1 reach 52 % of peak end to end with everything
      included (their Eq. 3 FLOPs), so kernels alone run above that; 0.6 is ours, not measured.
    tp_overlap: share of the TP all-reduces hidden; 0: Megatron's f/g are synchronous, on the
      critical path (Shoeybi et al. 2019 §3).
    dp_overlap: share of the gradient all-reduce hidden behind backward; 0.5 is an assumption
      (bucketed overlap, Li et al. 2020 PyTorch DDP §3.2.3, only reaches the last micro-batch's
      backward when gradients accumulate).
    pp_overlap: share of point-to-point time hidden; 0 (an assumption; Llama 3 §3.3.2 makes
      them asynchronous).
    impl: the activation model of ``memory.estimate`` ("korthikanti": 16-bit, TP-aware).
    attention: the FLOPs of ``flops`` ("eager": causal attention counted in full, as
      Narayanan et al. Eq. 3 and PaLM's MFU do).
    overheads: add the slides' constants of ``memory.estimate`` (framework 1 GiB, ZeRO runtime
      4 GiB, fragmentation 1 GiB: DeepSpeed's; False leaves them out).
    """

    efficiency: float = 0.6
    tp_overlap: float = 0.0
    dp_overlap: float = 0.5
    pp_overlap: float = 0.0
    impl: str = "korthikanti"
    attention: str = "eager"
    overheads: bool = True

    def __post_init__(self):
        check.number("efficiency", self.efficiency, maximum=1, positive=True)
        for f in ("tp_overlap", "dp_overlap", "pp_overlap"):
            check.number(f, getattr(self, f), 0, 1)
        check.one_of("impl", self.impl, ("korthikanti", "textbook"))
        check.one_of("attention", self.attention, ("eager", "sdpa"))
        check.boolean("overheads", self.overheads)


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
def _layer_and_head_flops(shape: ModelShape, b: int, seq: int, recompute: str,
                          attention: str) -> tuple[int, int]:
    """FLOPs of one decoder layer and of the rest (output layer, loss) for b sequences:
    training_flops is affine in L."""
    from . import flops

    f1, f2 = (flops.training_flops(shape.replace(num_layers=n), b, seq, attention=attention,
                                   recompute=recompute) for n in (1, 2))
    return f2 - f1, 2 * f1 - f2


@functools.lru_cache(maxsize=4096)
def _activations(shape: ModelShape, n: int, b: int, seq: int, recompute: str, tp: int,
                 sp: bool, impl: str) -> tuple[int, int]:
    """(bytes of n layers as memory.estimate counts them, bytes of one more layer)."""
    from . import memory

    a = [memory.activation_bytes(shape.replace(num_layers=k), b, seq, impl=impl,
                                 recompute=recompute, tp=tp, sp=sp) for k in (n, n + 1)]
    return a[0], a[1] - a[0]


@functools.lru_cache(maxsize=4096)
def _flops(shape: ModelShape, seqs: int, seq: int, recompute: str, attention: str) -> int:
    from . import flops

    return flops.training_flops(shape, seqs, seq, attention=attention, recompute=recompute)


@functools.lru_cache(maxsize=4096)
def _tp_bytes(shape: ModelShape, tp: int, sp: bool, b: int, seq: int, n: int,
              recompute: str) -> Fraction:
    """Bytes one rank of the busiest stage sends for TP in one micro-batch (ring model): n
    layers of ``comm_per_layer`` (forward ones twice under full recomputation: the layer's
    forward runs again) + the embedding, output layer and loss of ``comm_per_model``."""
    from .parallel import tp_comm

    if tp == 1:
        return Fraction(0)
    total = Fraction(0)
    for (op, direction), t in tp_comm.comm_per_layer(tp, sp, b, seq, shape.hidden_size).items():
        again = 2 if direction == "forward" and recompute == "full" else 1
        total += again * n * tp_comm.sent_bytes(op, t, tp, 2)
    for (op, _, part), t in tp_comm.comm_per_model(shape, tp, sp, b, seq).items():
        if part != "layers":
            total += tp_comm.sent_bytes(op, t, tp, 2)
    return total


@functools.lru_cache(maxsize=4096)
def _states(shape: ModelShape, dims: ParallelDims, zero: int) -> tuple[int, int]:
    """(model-state bytes, parameters) of the busiest GPU."""
    from . import memory

    return (sum(memory.model_state_bytes(shape, dims=dims, zero=zero).values()),
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


def _bandwidth(c: Cluster, span: int) -> float:
    return c.intra_node_bytes_per_s if span <= c.gpus_per_node else c.inter_node_bytes_per_s


def memory_parts(shape, lay: Layout, seq: int, assumptions: Assumptions = Assumptions()):
    """Bytes per GPU by part: ``memory.estimate``'s parts for one micro-batch (built from the
    same functions, without its slower step-by-step peak) + "in-flight activations"."""
    from . import memory

    shape, a = model(shape, what="shape"), assumptions
    d, b = lay.dims, lay.micro_batch
    n = math.ceil(shape.num_layers / d.pp)
    act, per_layer = _activations(shape, n, b, seq, lay.recompute, d.tp, lay.sp, a.impl)
    parts = {"model states": _states(shape, d, lay.zero)[0], "activations": act,
             "softmax extra": 8 * b * seq * shape.vocab_size // d.tp}
    if a.overheads:
        parts["framework"] = memory.FRAMEWORK_BYTES
        if lay.zero:
            parts["ZeRO runtime"] = memory.ZERO_RUNTIME_BYTES
        parts["fragmentation"] = memory.FRAGMENTATION_BYTES
    chunks = _in_flight(d.pp, lay.microbatches, lay.virtual) if d.pp > 1 else 1
    extra = (Fraction(chunks, lay.virtual) - 1) * n * per_layer
    parts["in-flight activations"] = max(0, math.ceil(extra))
    return parts


def evaluate(shape, gpu: str | Cluster, lay: Layout, seq: int,
             assumptions: Assumptions = Assumptions()) -> Plan:
    """Memory per GPU and seconds per step of one layout (see the module's docstring)."""
    shape, c, a = model(shape, what="shape"), cluster(gpu), assumptions
    d, b, m, v = lay.dims, lay.micro_batch, lay.microbatches, lay.virtual
    H, n = shape.hidden_size, math.ceil(shape.num_layers / d.pp)
    layer_f, head_f = _layer_and_head_flops(shape, b, seq, lay.recompute, a.attention)
    compute = (n * layer_f + head_f) / (d.tp * c.peak_flops * a.efficiency)
    tp_bytes = _tp_bytes(shape, d.tp, lay.sp, b, seq, n, lay.recompute)
    tp_time = float(tp_bytes) / _bandwidth(c, d.tp) * (1 - a.tp_overlap)
    slot = compute + tp_time  # one micro-batch through the busiest stage
    bubble = pp_schedule.bubble_formula(d.pp, m, v)
    pipeline = m * slot / (1 - float(bubble))
    grads = _states(shape, d, lay.zero)[1] * 2  # 16-bit gradients of the busiest stage
    ring = Fraction((d.dp - 1) * grads, d.dp)  # one reduce-scatter or all-gather of them
    dp_bytes = ring * {0: 2, 1: 2, 2: m + 1, 3: 3 * m}[lay.zero]
    dp_time = float(dp_bytes) / _bandwidth(c, d.tp * d.dp) * (1 - a.dp_overlap)
    pp_time = 0.0
    if d.pp > 1:
        msgs = 2 * (v * m + d.pp - 1)
        pp_time = msgs * b * seq * H * 2 / _bandwidth(c, d.world_size) * (1 - a.pp_overlap)
    seqs = m * b * d.dp
    model_f = _flops(shape, seqs, seq, "none", a.attention)
    hw_f = _flops(shape, seqs, seq, lay.recompute, a.attention)
    times = {"compute": m * compute, "TP comm": m * tp_time, "bubble": pipeline - m * slot,
             "DP comm": dp_time, "PP p2p": pp_time}
    return Plan(lay, memory_parts(shape, lay, seq, a), c.memory_bytes, times, model_f, hw_f,
                d.world_size, c.peak_flops, seqs * seq,
                {"bubble_fraction": bubble, "in_flight": _in_flight(d.pp, m, v) if d.pp > 1
                 else 1, "tp_bytes": tp_bytes, "dp_bytes": dp_bytes})


def _divisors(n: int) -> list[int]:
    """The divisors of n, ascending, in √n steps."""
    small = [k for k in range(1, math.isqrt(n) + 1) if n % k == 0]
    return small + [n // k for k in reversed(small) if k * k != n]


def search(shape, gpu: str | Cluster, gpus: int, batch_tokens: int, seq: int | None = None, *,
           zeros=(0, 1, 2, 3), recomputes=("none", "selective", "full"),
           micro_batches=(1, 2, 4), virtuals=(1,), sps=(False, True),
           assumptions: Assumptions = Assumptions(),
           feasible_only: bool = True) -> list[Plan]:
    """Every layout of ``gpus`` GPUs (tp | heads and kv heads, pp ≤ L, dp = gpus/(tp·pp),
    m = batch/(dp·b) whole), evaluated, the fitting ones (all with ``feasible_only=False``)
    sorted by step time, then memory. gpus: a multiple of a node, or a divisor of one."""
    shape, c = model(shape, what="shape"), cluster(gpu)
    check.positive_int("gpus", gpus)
    if gpus % c.gpus_per_node and c.gpus_per_node % gpus:
        raise ValueError(f"gpus must be a multiple of the {c.gpus_per_node} GPUs of a node "
                         f"(or divide it), got {gpus}")
    seq = shape.max_seq_len if seq is None else check.positive_int("seq", seq)
    seqs = _sequences(batch_tokens, seq)
    plans = []
    for tp in _divisors(gpus):
        if shape.num_kv_heads % tp or shape.num_heads % tp:
            continue
        for pp in _divisors(gpus // tp):
            dp = gpus // (tp * pp)
            if pp > shape.num_layers:
                continue
            for b in micro_batches:
                if seqs % (dp * b):
                    continue
                for v, sp in itertools.product(virtuals, sps):
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
