"""Planning a 3D layout (3D 并行训练: 如何切分): for a model, a cluster and a global batch, the
memory per GPU and the step time of every (tp, pp, dp, ZeRO stage, recomputation, micro-batch,
interleaving, sequence parallelism), the feasible ones ranked by step time. Pure arithmetic.

One layout, per GPU (``evaluate``):

- memory (``memory_parts``): ``memory.estimate``'s parts under the framework's count
  (``memory.FRAMEWORKS``): model states of the busiest stage, the activations of the stage that
  holds the most, the pipeline's micro-batches in flight (``pp_schedule.held_microbatches``;
  notebook 07) and the framework's constants; tests/test_plan.py checks they equal
  ``estimate``'s. Stages split the layers as ``stage_layers`` says (Llama 3's 7 + 14 × 8 + 7).
- time: one micro-batch through the busiest stage (``llmtrain.cost.step_time``: GEMMs by their
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
adjacent stages 2·tp·dp (``layout.ParallelDims``' rank order); within ``gpus_per_node`` NVLink,
otherwise the network. Every assumption is a field of ``Assumptions``; ``FRAMEWORKS`` holds
those of the frameworks the published runs used, ``FRAMEWORK_OPTIONS`` what each could run.
The runs themselves, and the planner's error on each, are ``llmtrain.cost.published_runs``.

Beyond 3D: ``layout(..., cp=)`` and ``evaluate`` take context parallelism (``search`` keeps
cp = 1): a cp rank does 1/cp of every micro-batch (each term at the full sequence /cp: zigzag
balances causal attention), holds ``memory.estimate``'s bytes with cp, sends ring attention's
K/V (``context.sent_per_layer``, in "TP + CP comm", not overlapped), and DP reduces over dp·cp.
No expert parallelism (ep = 1, no all-to-all in the step time): a layout with ep is counted by
``memory.estimate(shape, ParallelDims(..., ep=))`` only (notebook 14 §5).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple

from .. import check
from ..model import shapes
from ..model.shapes import ModelShape
from ..units import GIB
from . import context, memory, pp_schedule, step_time
from . import stage as _stage
from .assumptions import FRAMEWORK_OPTIONS, FRAMEWORKS, Assumptions, framework_assumptions
from .clusters import CLUSTERS, Cluster, cluster
from .layout import ParallelDims
from .activations import check_cp
from .stage import stage_layers
from .tokens import LARGE_BATCH_TOKENS, MI, parse_tokens

# The planner's parts have their own modules (``clusters``, ``assumptions``, ``stage``,
# ``tokens``); their public names are re-exported here, where readers of ``plan`` look.
__all__ = ["GIB", "MI", "Cluster", "CLUSTERS", "cluster", "parse_tokens", "Assumptions",
           "FRAMEWORKS", "framework_assumptions", "FRAMEWORK_OPTIONS", "Layout", "Plan", "layout",
           "stage_layers", "memory_parts", "evaluate", "search", "no_layout_reason", "rank_of",
           "LARGE_BATCH_TOKENS"]


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
        cp = f" cp{d.cp}" if d.cp > 1 else ""
        return (f"tp{d.tp}{'+sp' if self.sp else ''}{cp} pp{d.pp}{v} dp{d.dp} ZeRO-{self.zero} "
                f"{self.recompute} b{self.micro_batch}")


@dataclass(frozen=True)
class Plan:
    """One layout evaluated: bytes per GPU by part, seconds per step by part.

    Checked: tests/test_plan.py::test_time_parts_are_the_terms (parts, FLOPs, MFU < HFU)."""

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
           virtual: int = 1, sp: bool = False, cp: int = 1, ep: int = 1) -> Layout:
    """A checked Layout: gpus = dp·cp·tp·pp, the global batch batch_tokens/seq sequences split
    into dp × m micro-batches of micro_batch, each sequence over cp ranks (cp | seq);
    ``dims.check(shape)`` (tp | heads, pp ≤ L). ep must be 1 (the planner has no expert
    parallelism).

    Checked: tests/test_plan.py::test_time_parts_are_the_terms (dp, m) and
    tests/test_plan.py::test_bad_input_names_the_field."""
    check.positive_int("ep", ep)
    if ep != 1:
        raise ValueError(f"ep must be 1: the planner has no expert parallelism (its step time "
                         f"has no all-to-all; memory.estimate counts ep), got ep={ep}")
    return _layout(shapes.resolve(shape, "shape"), gpus, batch_tokens, seq, tp, pp, zero,
                   recompute, micro_batch, virtual, sp, cp)


def _layout(shape: ModelShape, gpus, batch_tokens, seq, tp, pp, zero, recompute, micro_batch,
            virtual, sp, cp=1) -> Layout:
    """``layout`` of a resolved shape (``search`` resolves it once, checks each layout here)."""
    dims = ParallelDims.from_gpus(gpus, tp, pp, cp).check(shape)
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
    if cp > 1:
        check_cp(cp, seq)
    if check.boolean("sp", sp) and (tp == 1 or seq // cp % tp):
        raise ValueError(f"sp needs tp > 1 dividing seq={seq}, got tp={tp}")
    return Layout(dims, zero, recompute, micro_batch, m, virtual, sp)


def _sequences(batch_tokens: int, seq: int) -> int:
    check.positive_int("batch_tokens", batch_tokens)
    check.positive_int("seq", seq)
    if batch_tokens % seq:
        raise ValueError(f"batch_tokens must be a positive multiple of seq={seq}, "
                         f"got {batch_tokens:,}")
    return batch_tokens // seq


def memory_parts(shape, lay: Layout, seq: int, assumptions: Assumptions = Assumptions()):
    """Bytes per GPU by part: ``memory.estimate``'s parts (the first stage, its micro-batches in
    flight, the framework's states and constants) built from the same functions, without its
    slower step-by-step peak; with FlashAttention, no recomputation saves what selective
    recomputation does. Checked: tests/test_plan.py::test_memory_parts_are_estimates."""
    return _memory_parts(shapes.resolve(shape, "shape"), lay, seq, assumptions)


def _memory_parts(shape: ModelShape, lay: Layout, seq: int, a: Assumptions) -> dict[str, int]:
    d, b = lay.dims, lay.micro_batch
    fw = memory.framework_of(a.memory_framework)
    # FlashAttention keeps no b·a·s² scores: without recomputation it saves what Korthikanti's
    # selective recomputation saves (the 34·sbh of a layer, not its 5·as²b)
    flash = a.attention_kernel == "flash"
    saved = "selective" if lay.recompute == "none" and flash else lay.recompute
    if d.cp > 1 and saved == "none":
        raise ValueError("cp > 1 is planned with attention_kernel='flash' (ring attention keeps no "
                         "scores) or with recomputation, got 'materialized' without it")
    # the count in flight stops growing once m covers the warm-up (below 2·pp, a multiple of
    # pp as interleaving needs): the cache then serves every larger m
    m = lay.microbatches if lay.microbatches < 2 * d.pp else 2 * d.pp
    act, in_flight = _stage.stage_activations(shape, d.pp, d.tp, b, seq // d.cp, saved, lay.sp,
                                              a.impl, m, lay.virtual)
    parts = {"model states": _stage.stage_states(shape, d, lay.zero, fw.name)[0], "activations": act}
    if d.pp > 1:
        parts["in-flight activations"] = in_flight
    if d.cp > 1:  # as memory.estimate: the next K/V block of ring attention
        parts["ring K/V in flight"] = 2 * 2 * b * (seq // d.cp) * (shape.kv_size // d.tp)
    if fw.softmax_extra:
        parts["softmax extra"] = fw.softmax_extra * b * (seq // d.cp) * shape.vocab_size // d.tp
    if a.overheads:
        parts["framework"] = fw.framework_bytes
        if lay.zero and fw.zero_runtime_bytes:
            parts["ZeRO runtime"] = fw.zero_runtime_bytes
        parts["fragmentation"] = fw.fragmentation_bytes
    return parts


def evaluate(shape, gpu: str | Cluster, lay: Layout, seq: int,
             assumptions: Assumptions = Assumptions()) -> Plan:
    """Memory per GPU and seconds per step of one layout (see ``llmtrain.step_time``).

    Checked: tests/test_plan.py::test_time_parts_are_the_terms (each time part is its term)
    and tests/test_published_runs.py::test_step_time_within_15_percent (published runs)."""
    return _evaluate(shapes.resolve(shape, "shape"), cluster(gpu), lay, seq, assumptions)


def _evaluate(shape: ModelShape, c: Cluster, lay: Layout, seq: int, a: Assumptions) -> Plan:
    """``evaluate`` of a resolved shape and cluster (``search`` resolves them once)."""
    k = a.kernels_of(c)
    d, b, m, v = lay.dims, lay.micro_batch, lay.microbatches, lay.virtual
    H = shape.hidden_size
    _, middle, last = _stage.stage_layers(shape.num_layers, d.pp)

    def stage(n: int, head: bool):  # one micro-batch through a stage: (compute parts, TP time)
        mb = _per_cp_rank(step_time.micro_batch(shape, n, head, d.tp, lay.sp, b, seq,
                                                lay.recompute, a.attention_kernel, k,
                                                c.peak_flops, c.hbm_bytes_per_s), d.cp)
        tpb = _stage.tp_bytes(shape, d.tp, lay.sp, b, seq // d.cp, n, lay.recompute, d.pp > 1,
                              head)
        t = step_time.link_seconds(tpb, *_stage.link_bandwidth(c, d.tp, k))
        t = step_time.exposed(t, a.overlap.tp * mb["GEMMs"], a.overlap.tp > 0)
        if d.cp > 1:  # ring K/V (and their gradients) around the cp group, not overlapped
            per = context.sent_per_layer(shape, b, seq, d.cp)
            again = 2 if lay.recompute == "full" else 1
            cpb = n * (again * per["forward"] + per["backward"])
            t += step_time.link_seconds(cpb, *_stage.link_bandwidth(c, d.tp * d.cp, k))
        return mb, tpb, t

    # the busiest stage: the last (its layers, the output layer, the loss) or a middle one
    stages = [stage(last, True)] + ([stage(middle, False)] if middle > last else [])
    mb, tp_bytes, tp_time = max(stages, key=lambda st: sum(st[0].values()) + st[2])
    compute = sum(mb.values())
    slot = compute + tp_time  # one micro-batch through the busiest stage
    bubble = pp_schedule.bubble_formula(d.pp, m, v)
    pipeline = m * slot / (1 - float(bubble))
    params, dp_time, dp_bytes = _stage.stage_states(shape, d, lay.zero)[1], 0.0, Fraction(0)
    dcp = d.dp * d.cp  # cp ranks hold the same weights: gradients reduce over dp·cp
    if dcp > 1:  # one ring reduce-scatter (r_g) or all-gather (r_w) of this GPU's stage
        r_g = Fraction((dcp - 1) * params * a.grad_bytes, dcp)
        r_w = Fraction((dcp - 1) * params * 2, dcp)
        bw, ov = _stage.link_bandwidth(c, d.tp * dcp, k), a.overlap.dp
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
        msg = Fraction(b * seq * H * 2, split * d.cp)
        msgs = 2 * (v * m + d.pp - 1)
        pp_bytes = msgs * msg
        pp_time = step_time.link_seconds(pp_bytes, *_stage.link_bandwidth(c, 2 * d.tp * dcp, k))
        if split > 1 and not lay.sp:  # the receiver all-gathers the t pieces on NVLink
            pp_time += step_time.link_seconds(msgs * msg * (d.tp - 1),
                                              *_stage.link_bandwidth(c, d.tp, k))
        pp_time *= 1 - a.overlap.pp
    updated = params // dcp if lay.zero else params
    opt_time = step_time.optimizer_seconds(updated, c.hbm_bytes_per_s, k)
    seqs = m * b * d.dp
    model_f = _stage.stage_flops(shape, seqs, seq, "none", a.attention)
    hw_f = _stage.stage_flops(shape, seqs, seq, lay.recompute, a.attention)
    times = {"compute": m * compute, ("TP + CP comm" if d.cp > 1 else "TP comm"): m * tp_time,
             "bubble": pipeline - m * slot,
             "DP comm": dp_time, "PP p2p": pp_time, "optimizer": opt_time}
    return Plan(lay, _memory_parts(shape, lay, seq, a), c.memory_bytes, times, model_f, hw_f,
                d.world_size, c.peak_flops, seqs * seq,
                {"bubble_fraction": bubble, "in_flight": _stage.in_flight(d.pp, m, v) if d.pp > 1
                 else 1, "tp_bytes": tp_bytes, "dp_bytes": dp_bytes, "pp_bytes": pp_bytes,
                 "compute_parts": {key: m * t for key, t in mb.items()}})


def _per_cp_rank(mb: step_time.MicroBatch, cp: int) -> step_time.MicroBatch:
    """One cp rank's share of a micro-batch: every term /cp (zigzag's causal balance)."""
    if cp == 1:
        return mb
    out = step_time.MicroBatch({key: t / cp for key, t in mb.items()})
    out.flops, out.backward_s = mb.flops // cp, mb.backward_s / cp
    return out


def _divisors(n: int) -> list[int]:
    """The divisors of n, ascending, in √n steps."""
    small = [k for k in range(1, math.isqrt(n) + 1) if n % k == 0]
    return small + [n // k for k in reversed(small) if k * k != n]


def search(shape, gpu: str | Cluster, gpus: int, batch_tokens: int, seq: int | None = None, *,
           zeros=(0, 1, 2, 3), recomputes=("none", "selective", "full"),
           micro_batches=(1, 2, 4), virtuals=(1,), sps=(False, True), tps=None, pps=None,
           stages: str = "any", assumptions: Assumptions = Assumptions(),
           feasible_only: bool = True) -> list[Plan]:
    """Every 3D layout of a dense model on ``gpus`` GPUs (tp | heads and kv heads, pp ≤ L, dp =
    gpus/(tp·pp), m = batch/(dp·b) whole; ``tps``, ``pps``: only these), evaluated, the fitting
    ones (all with ``feasible_only=False``) by step time, then memory. gpus: a multiple of a node,
    or a divisor of one. ``virtuals``: chunks per rank (a v > 1 divides a stage's ⌈L/pp⌉ layers),
    or "divisors". ``stages``: "any", "even" (pp | L: Megatron-LM) or "balanced" (BLOOM, Llama 3)."""
    check.one_of("stages", stages, ("any", "even", "balanced"))
    shape, c = shapes.resolve(shape, "shape"), cluster(gpu)
    if shape.is_moe or shape.is_mla:  # no ep in the search, no MLA in its step time
        raise ValueError(f"shape: plan searches dense models, {shape.name!r} is MoE or MLA")
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
                        lays = [_layout(shape, gpus, batch_tokens, seq, tp, pp, z, r, b, v, sp)
                                for r in recomputes for z in zeros]
                    except ValueError:  # this (v, sp) does not apply to this (tp, pp, m)
                        continue
                    plans += [_evaluate(shape, c, lay, seq, assumptions) for lay in lays]
    if feasible_only:
        plans = [p for p in plans if p.fits]
    return sorted(plans, key=lambda p: (p.step_time_s, p.memory_bytes))


def no_layout_reason(shape, gpu: str | Cluster, gpus: int, batch_tokens: int,
                     seq: int | None = None) -> str:
    """Why ``search(..., feasible_only=False)`` found no layout at all: the batch's sequences
    cannot be split over dp = gpus/(tp·pp) replicas for any tp (dividing the heads) and
    pp ≤ num_layers (each replica needs a whole number of sequences).

    Checked: tests/test_plan.py::test_too_many_gpus_names_the_sequences_not_memory."""
    shape, c = shapes.resolve(shape, "shape"), cluster(gpu)
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
    """1 + the number of plans strictly faster than ``target`` (ties share a rank).

    Checked: tests/test_plan.py::test_search_is_sorted_and_fits and, through
    ``published_runs.rank``, tests/test_published_runs.py::test_published_layout_is_among_the_best.
    """
    return 1 + sum(p.step_time_s < target.step_time_s * (1 - 1e-12) for p in plans)
