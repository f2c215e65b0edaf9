"""What tensor parallelism sends, and the formulas those counts equal (张量并行的通信).

``tensor_parallel``'s layers split Y = XW by columns (no communication; the outputs are shards)
or by rows (Y = Σᵣ XᵣWᵣ: one all-reduce). Megatron's two conjugate operators carry the
communication (Shoeybi et al. 2019, arXiv 1909.08053, §3):

    f = copy_to_tp      forward: identity              backward: all-reduce(sum)
    g = reduce_from_tp  forward: all-reduce(sum)        backward: identity

so a layer costs 2 all-reduces of b·s·h forward (g after o_proj and down_proj) and 2 backward
(f before the fused qkv and gate/up). With separate q/k/v and gate/up projections (DTensor's
plan) backward needs one all-reduce per column-parallel input: 5.

Sequence parallelism (Korthikanti et al., MLSys 2023, arXiv 2205.05198, §4.2.2): between the
blocks, the residual stream is split along the sequence, so the RMSNorms work on s/t tokens;
g becomes a reduce-scatter along the sequence and f an all-gather:

    gather_from_sp        forward: all-gather(seq)       backward: reduce-scatter(seq)
    reduce_scatter_to_sp  forward: reduce-scatter(seq)   backward: all-gather(seq)

An all-reduce is a reduce-scatter plus an all-gather, so the bytes are the same. Like
Megatron-LM, a sequence-parallel column-parallel linear (``sp_column_linear``) saves only its
sequence shard of the input and all-gathers it again in backward (that is why every activation
of Korthikanti's SP layer is divided by t): SP backward per layer = 2 reduce-scatters (the grads
of the column-parallel inputs) + 2 all-gathers (conjugates of the forward reduce-scatters) + 2
re-gathers. The replicated RMSNorm weights then see only their shard's tokens: their gradients
are all-reduced (a gradient hook, f's backward), 2 all-reduces of h per layer.

``gather_from_tp`` makes whole the shards of a last dimension (gather_output, the logits);
unequal shards (``mesh.shard_range``) are padded to the largest, all-gathered and trimmed (the
padding is counted: it is sent). The per-layer collectives (b·s·h) do not depend on the split.

Every collective goes through ``comm`` on ``group``, tagged ``FORWARD`` ("tp-forward") or
``BACKWARD`` ("tp-backward"), ``STATE`` ("tp-state") for gathering weights, so a
``comm.counting()`` log splits by direction; ``comm_per_layer`` / ``comm_per_model`` are the
formulas those logs equal and ``sent_bytes`` their bytes under the ring model
(tests/test_tensor_parallel.py).
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .. import check
from . import comm
from ..cost.layout import ParallelDims

__all__ = ["FORWARD", "BACKWARD", "STATE", "copy_to_tp", "reduce_from_tp", "gather_from_sp",
           "reduce_scatter_to_sp", "gather_from_tp", "sp_column_linear", "all_reduced",
           "all_gathered", "reduce_scattered", "Traffic", "comm_per_layer", "comm_per_model",
           "sent_bytes"]

FORWARD, BACKWARD, STATE = "tp-forward", "tp-backward", "tp-state"  # comm tags


# --- out-of-place collectives on autograd's tensors, through comm ---------------------------

def all_reduced(x: torch.Tensor, group, tag: str, op: str = "sum") -> torch.Tensor:
    """A copy of x all-reduced over the group (never in place on autograd's tensors)."""
    x = x.contiguous().clone()
    comm.all_reduce(x, op, group=group, tag=tag)
    return x


def all_gathered(x: torch.Tensor, dim: int, group, tag: str,
                 sizes: list[int] | None = None) -> torch.Tensor:
    """The group's shards of x concatenated along ``dim`` (rank order). ``sizes``: every
    rank's length along ``dim`` when they differ (each shard is padded to the largest,
    all-gathered, trimmed)."""
    n = dist.get_world_size(group)
    x = x.movedim(dim, 0).contiguous()
    width = x.shape[0] if sizes is None else max(sizes)
    if x.shape[0] != width:
        x = torch.cat([x, x.new_zeros((width - x.shape[0], *x.shape[1:]))])
    out = x.new_empty((n * width, *x.shape[1:]))
    comm.all_gather(out, x, group=group, tag=tag)
    if sizes is not None and min(sizes) != width:
        out = torch.cat([out[i * width: i * width + k] for i, k in enumerate(sizes)])
    return out.movedim(0, dim)


def reduce_scattered(x: torch.Tensor, dim: int, group, tag: str) -> torch.Tensor:
    """This rank's chunk along ``dim`` of the group's sum of x."""
    n = dist.get_world_size(group)
    if x.shape[dim] % n:
        raise ValueError(f"seq must be divisible by tp={n} for sequence parallelism, "
                         f"got seq={x.shape[dim]}")
    x = x.movedim(dim, 0).contiguous()
    out = x.new_empty((x.shape[0] // n, *x.shape[1:]))
    comm.reduce_scatter(out, x, "sum", group=group, tag=tag)
    return out.movedim(0, dim).contiguous()


# --- the communication operators: forward and backward side by side -------------------------

class _CopyToTP(torch.autograd.Function):  # Megatron's f
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        return all_reduced(grad, ctx.group, BACKWARD), None


class _ReduceFromTP(torch.autograd.Function):  # Megatron's g
    @staticmethod
    def forward(ctx, x, group):
        return all_reduced(x, group, FORWARD)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherFromSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return all_gathered(x, dim, group, FORWARD)

    @staticmethod
    def backward(ctx, grad):
        return reduce_scattered(grad, ctx.dim, ctx.group, BACKWARD), None, None


class _ReduceScatterToSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return reduce_scattered(x, dim, group, FORWARD)

    @staticmethod
    def backward(ctx, grad):
        return all_gathered(grad, ctx.dim, ctx.group, BACKWARD), None, None


class _GatherFromTP(torch.autograd.Function):  # shards of the last dim -> whole
    @staticmethod
    def forward(ctx, x, group, sizes):
        ctx.group, ctx.sizes = group, sizes
        return all_gathered(x, -1, group, FORWARD, sizes)

    @staticmethod
    def backward(ctx, grad):
        r = dist.get_rank(ctx.group)
        start = sum(ctx.sizes[:r])
        return grad.narrow(-1, start, ctx.sizes[r]).contiguous(), None, None


class _SPColumnLinear(torch.autograd.Function):
    """Y = gather(X) Wᵀ + b saving only X's sequence shard; backward gathers X again."""

    @staticmethod
    def forward(ctx, x, weight, bias, group):
        ctx.group, ctx.has_bias = group, bias is not None
        ctx.save_for_backward(x, weight)
        return F.linear(all_gathered(x, 1, group, FORWARD), weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        total = all_gathered(x, 1, ctx.group, BACKWARD)  # the re-gather
        grad_x = reduce_scattered(grad @ weight, 1, ctx.group, BACKWARD)
        grad_w = grad.flatten(0, -2).T @ total.flatten(0, -2)
        grad_b = grad.flatten(0, -2).sum(0) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


def copy_to_tp(x: torch.Tensor, group=None) -> torch.Tensor:
    """f: identity forward, all-reduce(sum) of the gradient backward."""
    return _CopyToTP.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group=None) -> torch.Tensor:
    """g: all-reduce(sum) forward, identity backward."""
    return _ReduceFromTP.apply(x, group)


def gather_from_sp(x: torch.Tensor, group=None, dim: int = 1) -> torch.Tensor:
    """SP's f: all-gather the sequence shards along ``dim`` forward, reduce-scatter backward."""
    return _GatherFromSP.apply(x, group, dim)


def reduce_scatter_to_sp(x: torch.Tensor, group=None, dim: int = 1) -> torch.Tensor:
    """SP's g: reduce-scatter along ``dim`` forward (sum, then this rank's sequence shard),
    all-gather backward."""
    return _ReduceScatterToSP.apply(x, group, dim)


def gather_from_tp(x: torch.Tensor, group, sizes: list[int]) -> torch.Tensor:
    """Every rank's shard of the last dimension (rank r: ``sizes[r]`` wide) concatenated:
    all-gather forward (tag tp-forward), this rank's columns of the gradient backward."""
    return _GatherFromTP.apply(x, group, sizes)


def sp_column_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     group) -> torch.Tensor:
    """SP's f fused with the column-parallel matmul: gather(x) Wᵀ + b, saving only x's sequence
    shard (backward all-gathers it again, then reduce-scatters the input's gradient)."""
    return _SPColumnLinear.apply(x, weight, bias, group)


# --- the formulas the counted logs equal ------------------------------------------------------

class Traffic(NamedTuple):
    """``calls`` collectives of ``elements`` elements each (all-reduce: the buffer;
    reduce-scatter: its input; all-gather: its output)."""

    calls: int
    elements: int


def comm_per_layer(tp: int, sequence_parallel: bool, batch: int, seq: int, hidden: int,
                   dtype_bytes: int = 2, fused: bool = True) -> dict[tuple[str, str], Traffic]:
    """{(op, "forward"|"backward"): Traffic} of one decoder layer on each rank (no biases on
    o/down; each would add one all-reduce of h backward under SP). b·s·h = batch·seq·hidden.

    TP, fused qkv and gate/up: all_reduce 2 × bsh forward, 2 × bsh backward (Shoeybi et al.
    §3). Separate projections (``fused=False``, DTensor's plan): 5 backward. SP: forward
    all_gather 2 × bsh + reduce_scatter 2 × bsh; backward reduce_scatter 2 × bsh, all_gather
    4 × bsh (2 conjugates + 2 re-gathers), all_reduce 2 × h (the norms' γ). Counts are in
    elements, so ``dtype_bytes`` (checked, part of the agreed signature) changes none of them:
    ``sent_bytes(op, traffic, tp, dtype_bytes)`` turns one into bytes.
    """
    for name, v in (("tp", tp), ("batch", batch), ("seq", seq), ("hidden", hidden),
                    ("dtype_bytes", dtype_bytes)):
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
    "cross entropy" (3 all-reduces of b(s−1) forward: max, target logit, Σ exp)."""
    shape = check.shape("shape", shape)
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
    """Bytes one rank sends for ``traffic`` under the ring model (``comm.ring_bytes``):
    all-reduce 2(t−1)/t, reduce-scatter and all-gather (t−1)/t of each buffer."""
    check.positive_int("dtype_bytes", dtype_bytes)
    return traffic.calls * comm.ring_bytes(op, traffic.elements * dtype_bytes, tp)[0]