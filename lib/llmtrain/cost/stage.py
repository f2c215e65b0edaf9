"""One pipeline stage of a layout: its layers, FLOPs, model states, activations, what it holds in
flight and what it sends for tensor parallelism, from the cost formulas (``plan.evaluate`` adds
them up). Each equals the function it caches: tests/test_plan.py.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

from ..model.shapes import ModelShape
from . import comm, flops, memory, pp_schedule, states, step_time
from .clusters import Cluster
from .layout import ParallelDims

__all__ = ["stage_layers", "stage_flops", "tp_bytes", "stage_states", "in_flight", "link_bandwidth",
           "stage_activations"]


@functools.lru_cache(maxsize=4096)
def stage_flops(shape: ModelShape, seqs: int, seq: int, recompute: str, attention: str) -> int:
    """``flops.training_flops`` of ``seqs`` sequences of ``seq`` tokens, cached for the planner.

    Checked: tests/test_plan.py::test_time_parts_are_the_terms (``Plan.model_flops``)."""
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
def tp_bytes(shape: ModelShape, tp: int, sp: bool, b: int, seq: int, n: int,
              recompute: str, staged: bool = False, head: bool = True) -> Fraction:
    """Bytes one rank of a stage sends for TP in one micro-batch (ring model): n layers of
    ``comm_per_layer`` (forward ones twice under full recomputation: the layer's forward runs
    again) + with ``head`` the output layer and loss of ``comm_per_model``, and the embedding's
    unless ``staged`` (a pipeline: the embedding is on the first stage).

    Checked by hand count: tests/test_plan.py::test_time_parts_are_the_terms (``tp_bytes``)."""
    if tp == 1:
        return Fraction(0)
    total = Fraction(0)
    for (op, direction), t in comm.comm_per_layer(tp, sp, b, seq, shape.hidden_size).items():
        again = 2 if direction == "forward" and recompute == "full" else 1
        total += again * n * comm.sent_bytes(op, t, tp, 2)
    for (op, _, part), t in comm.comm_per_model(shape, tp, sp, b, seq).items():
        if head and part != "layers" and not (staged and part == "embedding"):
            total += comm.sent_bytes(op, t, tp, 2)
    return total


@functools.lru_cache(maxsize=4096)
def stage_states(shape: ModelShape, dims: ParallelDims, zero: int,
            framework: str = "slides") -> tuple[int, int]:
    """(model-state bytes, parameters) of the busiest GPU.

    Checked: tests/test_plan.py::test_memory_parts_are_estimates (the bytes) and
    tests/test_plan.py::test_time_parts_are_the_terms (the parameters, through DP comm)."""
    return (sum(states.model_state_bytes(shape, dims=dims, zero=zero,
                                         framework=framework).values()),
            states.params_per_gpu(shape, dims))


def in_flight(pp: int, m: int, virtual: int) -> int:
    """Micro-batch chunks the first stage holds at its peak (1F1B: min(pp, m)).

    Replayed on the schedule of min(m, 2·pp) micro-batches: the count stops growing once the
    warm-up fits (1F1B: pp − 1 forwards; interleaved: 2(pp − 1) + (v − 1)·pp, below 2·pp·v),
    so the search costs the same for any batch (tests/test_plan.py checks it against the full
    schedule). 2·pp is a multiple of pp, as interleaving needs."""
    return __in_flight_schedule(pp, min(m, 2 * pp), virtual)


@functools.lru_cache(maxsize=1024)
def __in_flight_schedule(pp: int, m: int, virtual: int) -> int:
    name = "1f1b" if virtual == 1 else "interleaved"
    return pp_schedule.in_flight(pp_schedule.schedule(name, pp, m, 0, virtual))


def link_bandwidth(c: Cluster, span: int, k: step_time.Kernels) -> tuple[float, float]:
    """(datasheet bytes/s, achieved share) of the link a group spanning ``span`` consecutive
    ranks uses: NVLink inside a node, the network beyond."""
    if span <= c.gpus_per_node:
        return c.intra_node_bytes_per_s, k.nvlink
    return c.inter_node_bytes_per_s, k.network


@functools.lru_cache(maxsize=4096)
def stage_activations(shape: ModelShape, pp: int, tp: int, b: int, seq: int, recompute: str,
                       sp: bool, impl: str, m: int, v: int) -> tuple[int, int]:
    """(one micro-batch's activations, the other in-flight micro-batches') of the stage that
    holds the most: the first (``stage_layers``' first, with the loss's activations as
    ``memory.estimate`` counts them, holding ``pp_schedule.held_microbatches`` of rank 0) or,
    when it has fewer layers, the second (rank 1: one micro-batch fewer in flight, more layers).
    Equal to ``memory.pipeline_activation_bytes`` when pp divides L."""
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
