"""What the collectives send, in closed form (通信量): ring, tensor parallel, 3D axes.

The ring model of one collective, tensor parallelism's collectives per layer and per model,
and the bytes of each 3D axis in one step.

Per rank, for a buffer of M bytes on N ranks (Patarasuk & Yuan 2009; ZeRO paper §7), under
the bandwidth-optimal ring algorithm (NCCL's for large buffers):

    all_reduce       sends 2(N−1)/N · M   (reduce-scatter then all-gather)
    reduce_scatter   sends  (N−1)/N · M   (M = the whole input; each rank keeps M/N)
    all_gather       sends  (N−1)/N · M   (M = the whole output)
    broadcast        root sends M, every other rank receives M (a pipelined chain)
    send / recv      M to one peer / M from one peer (pipeline stages)
    all_to_all       sends  (N−1)/N · M   (M = the whole input, split evenly: chunk j goes to
                     rank j, the own chunk stays; DeepSpeed-Ulysses, expert parallelism)

and receives as much as it sends (broadcast: the root receives 0, the last rank sends 0 —
counted here as M received, M sent, for every non-root rank but the last).

Tensor parallelism (Shoeybi et al. 2019, arXiv 1909.08053, §3; sequence parallelism:
Korthikanti et al. 2023, arXiv 2205.05198, §4.2.2): ``comm_per_layer`` / ``comm_per_model``
are the collectives of ``parallel.tensor_parallel``'s model, ``sent_bytes`` their bytes.
``axis_bytes`` adds pipeline and data parallelism (``parallel.parallelize``). Arithmetic only
(no torch): ``parallel.comm.counting()`` logs of the real runs equal these
(tests/test_parallel.py, tests/test_tensor_parallel.py, tests/test_parallelize.py).
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

from .. import check
from ..model.recompute import WITHOUT_K
from ..model.recompute import segments as recompute_segments
from . import memory
from .layout import ParallelDims, cut_segments, shard_range, stage_layers
from ..model.shapes import resolve

__all__ = ["OPS", "ring_bytes", "Traffic", "comm_per_layer", "comm_per_model", "sent_bytes",
           "axis_bytes"]

OPS = ("all_reduce", "reduce_scatter", "all_gather", "broadcast", "send", "recv", "all_to_all")


def ring_bytes(op: str, buffer_bytes: int, world_size: int, rank: int = 0,
               src: int = 0) -> tuple[Fraction, Fraction]:
    """(sent, received) bytes of one rank for one collective on ``buffer_bytes`` (see above;
    Patarasuk & Yuan 2009; the counted runs: tests/test_parallel.py, tests/test_mesh.py)."""
    check.one_of("op", op, OPS)
    n = check.positive_int("world_size", world_size)
    m = Fraction(check.integer("buffer_bytes", buffer_bytes, 0))
    check.integer("rank", rank, 0, n - 1)
    check.integer("src", src, 0, n - 1)
    if op == "send":
        return m, Fraction(0)
    if op == "recv":
        return Fraction(0), m
    if n == 1:
        return Fraction(0), Fraction(0)
    if op == "all_reduce":
        return 2 * (n - 1) * m / n, 2 * (n - 1) * m / n
    if op in ("reduce_scatter", "all_gather", "all_to_all"):
        return (n - 1) * m / n, (n - 1) * m / n
    if op == "broadcast":  # chain src → src+1 → … ; the last one only receives
        pos = (rank - src) % n
        return (m if pos < n - 1 else Fraction(0)), (Fraction(0) if pos == 0 else m)
    raise ValueError(f"op must be one of {OPS}, got {op!r}")


# --- tensor parallelism: the collectives of one layer, of the model ----------------------------

class Traffic(NamedTuple):
    """``calls`` collectives of ``elements`` elements each (all-reduce: the buffer;
    reduce-scatter: its input; all-gather: its output)."""

    calls: int
    elements: int


def comm_per_layer(tp: int, sequence_parallel: bool, batch: int, seq: int, hidden: int, *,
                   fused: bool = True) -> dict[tuple[str, str], Traffic]:
    """{(op, "forward"|"backward"): Traffic} of one decoder layer on each rank (no biases on
    o/down; each would add one all-reduce of h backward under SP). b·s·h = batch·seq·hidden.

    TP, fused qkv and gate/up: all_reduce 2 × bsh forward, 2 × bsh backward (Shoeybi et al.
    §3). Separate projections (``fused=False``, DTensor's plan): 5 backward. SP: forward
    all_gather 2 × bsh + reduce_scatter 2 × bsh; backward reduce_scatter 2 × bsh, all_gather
    4 × bsh (2 conjugates + 2 re-gathers), all_reduce 2 × h (the norms' γ). Counts are in
    elements: ``sent_bytes(op, traffic, tp, dtype_bytes)`` turns one into bytes.
    """
    for name, v in (("tp", tp), ("batch", batch), ("seq", seq), ("hidden", hidden)):
        check.positive_int(name, v)
    check.boolean("sequence_parallel", sequence_parallel)
    check.boolean("fused", fused)
    if tp == 1:
        return {}
    bsh = batch * seq * hidden
    if not sequence_parallel:
        return {("all_reduce", "forward"): Traffic(2, bsh),
                ("all_reduce", "backward"): Traffic(2 if fused else 5, bsh)}
    if not fused:
        raise ValueError("fused must be True with sequence_parallel (separate projections are "
                         "modelled without SP only)")
    if seq % tp:
        raise ValueError(f"seq must be divisible by tp={tp}, got seq={seq}")
    return {("all_gather", "forward"): Traffic(2, bsh),
            ("reduce_scatter", "forward"): Traffic(2, bsh),
            ("reduce_scatter", "backward"): Traffic(2, bsh),
            ("all_gather", "backward"): Traffic(4, bsh),
            ("all_reduce", "backward"): Traffic(2, hidden)}


def comm_per_model(shape, tp: int, sequence_parallel: bool, batch: int,
                   seq: int) -> dict[tuple[str, str, str], Traffic]:
    """{(op, direction, part): Traffic} of one forward+backward of ``apply``'s model with
    labels: part "layers" (L × ``comm_per_layer``), "embedding" (all-reduce, SP: reduce-scatter
    of bsh forward; SP: its all-gather backward), "lm_head" (its input: TP all-reduce bsh
    backward; SP all-gather bsh forward, re-gather + reduce-scatter backward), "final norm"
    (SP: all-reduce h backward), "row biases" (SP: one all-reduce of h backward each) and
    "cross entropy" (3 all-reduces of b(s−1) forward: max, target logit, Σ exp). Counted:
    tests/test_tensor_parallel.py::test_counted_communication_equals_the_formulas."""
    shape = resolve(shape, "shape")
    ParallelDims(tp=tp).check(shape)
    L, H = shape.num_layers, shape.hidden_size
    out = {(op, d, "layers"): Traffic(L * c.calls, c.elements) for (op, d), c in
           comm_per_layer(tp, sequence_parallel, batch, seq, H).items()}
    if tp == 1:
        return out
    bsh = batch * seq * H
    if sequence_parallel:
        out[("reduce_scatter", "forward", "embedding")] = Traffic(1, bsh)
        out[("all_gather", "backward", "embedding")] = Traffic(1, bsh)
        out[("all_gather", "forward", "lm_head")] = Traffic(1, bsh)
        out[("all_gather", "backward", "lm_head")] = Traffic(1, bsh)
        out[("reduce_scatter", "backward", "lm_head")] = Traffic(1, bsh)
        out[("all_reduce", "backward", "final norm")] = Traffic(1, H)
        biases = L * (int(shape.o_bias) + int(shape.mlp_bias))
        if biases:
            out[("all_reduce", "backward", "row biases")] = Traffic(biases, H)
    else:
        out[("all_reduce", "forward", "embedding")] = Traffic(1, bsh)
        out[("all_reduce", "backward", "lm_head")] = Traffic(1, bsh)
    out[("all_reduce", "forward", "cross entropy")] = Traffic(3, batch * (seq - 1))
    return out


def sent_bytes(op: str, traffic: Traffic, tp: int, dtype_bytes: int) -> Fraction:
    """Bytes one rank sends for ``traffic`` under the ring model (``ring_bytes``):
    all-reduce 2(t−1)/t, reduce-scatter and all-gather (t−1)/t of each buffer (counted:
    tests/test_tensor_parallel.py)."""
    check.positive_int("dtype_bytes", dtype_bytes)
    return traffic.calls * ring_bytes(op, traffic.elements * dtype_bytes, tp)[0]


# --- the bytes each axis carries in one step ------------------------------------------------

def axis_bytes(shape, dims: ParallelDims, rank: int, batch: int, seq: int, *,
               microbatches: int | None = None, zero: int = 0, recompute: str = "none",
               dtype_bytes: int = 4, loss_bytes: int | None = None) -> dict[str, Fraction]:
    """Bytes global ``rank`` sends along each axis in one ``parallelize.Parallel.step`` of a
    global batch (batch × seq tokens; the ring model), without the optimizer's step:

    - tp: ``comm_per_model`` of the stage's layers, per micro-batch (the embedding's
      all-reduce on the first stage, lm_head's and the cross entropy's on the last); with
      "full"/"sqrt" recomputation a segment of k layers runs 2k − 1 of its forward
      all-reduces again in backward (measured: torch.utils.checkpoint stops recomputing
      after the last tensor backward needs, before the segment's last all-reduce;
      "selective" recomputes only the attention core: no communication);
    - pp: b·s·h·e per micro-batch forward (not on the last stage) and backward (not on the
      first), plus the tied matrix's gradient shard exchanged by the first and last stage;
    - dp: zero 0: one all-reduce of this rank's gradients, 2(d−1)/d · P·e; zero 1: none
      before the optimizer's step; zero 2: a reduce-scatter of every micro-batch's gradients,
      m · (d−1)/d · P̃·e; zero 3: also the weights all-gathered in each forward and backward,
      3m · (d−1)/d · P̃·e (P̃: every parameter padded to a multiple of d); plus the loss's
      average over dp on the last stage (one number).
    """
    shape = resolve(shape, "shape")
    if not isinstance(dims, ParallelDims):
        check.fail("dims", "a llmtrain.cost.layout.ParallelDims", dims)
    dims.check(shape)
    c = dims.coords(rank)
    check.positive_int("batch", batch)
    check.positive_int("seq", seq)
    m = dims.pp if microbatches is None else check.positive_int("microbatches", microbatches)
    check.integer("zero", zero, 0, 3)
    check.one_of("recompute", recompute, WITHOUT_K)
    check.positive_int("dtype_bytes", dtype_bytes)
    check.optional(check.positive_int, "loss_bytes", loss_bytes)
    if batch % dims.dp or batch // dims.dp < m:
        raise ValueError(f"batch must be a multiple of dp={dims.dp} with at least "
                         f"microbatches={m} sequences per share, got batch={batch}")
    share = batch // dims.dp
    first, last = c.pp == 0, c.pp == dims.pp - 1
    layers = stage_layers(shape.num_layers, dims.pp)[c.pp]
    out = {"tp": Fraction(0), "pp": Fraction(0), "dp": Fraction(0)}
    loss_bytes = max(dtype_bytes, 4) if loss_bytes is None else loss_bytes
    # torch's non-reentrant checkpoint stops recomputing once it has every tensor backward
    # needs: a segment's last all-reduce (the MLP's g, whose output nothing saves) is not run
    # again, so a segment of k layers repeats 2k − 1 of its 2k forward all-reduces
    again = sum(2 * len(g) - 1
                for g in cut_segments(recompute_segments(shape.num_layers, recompute), layers))
    for mb in range(m):
        b = shard_range(share, m, mb)[1]
        traffic = comm_per_model(shape.replace(num_layers=len(layers)), dims.tp, False, b, seq)
        for (op, direction, part), t in traffic.items():
            keep = {"embedding": first, "lm_head": last, "cross entropy": last}.get(part, True)
            if keep:
                e = loss_bytes if part == "cross entropy" else dtype_bytes
                out["tp"] += sent_bytes(op, t, dims.tp, e)
        if dims.tp > 1 and again:  # the recomputed forwards' all-reduces of b·s·h
            out["tp"] += sent_bytes("all_reduce", Traffic(again, b * seq * shape.hidden_size),
                                    dims.tp, dtype_bytes)
        out["pp"] += b * seq * shape.hidden_size * dtype_bytes * ((not last) + (not first))
    if shape.tie_embeddings and dims.pp > 1 and (first or last):
        rows = shard_range(shape.vocab_size, dims.tp, c.tp)[1] * shape.hidden_size
        out["pp"] += (-(-rows // dims.dp) if zero >= 2 else rows) * dtype_bytes  # both ways
    d = dims.dp
    numels = memory.param_numels(shape, dims, rank)
    full = sum(numels) * dtype_bytes
    padded = sum(-(-n // d) * d for n in numels) * dtype_bytes  # ZeRO's flat, padded tensors

    def sent(op: str, nbytes: int) -> Fraction:  # the ring model
        return ring_bytes(op, nbytes, d)[0]

    out["dp"] += {0: sent("all_reduce", full), 1: 0, 2: m * sent("reduce_scatter", padded),
                  3: m * (2 * sent("all_gather", padded) + sent("reduce_scatter", padded))}[zero]
    if last:
        out["dp"] += sent("all_reduce", loss_bytes)
    return out
