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
unequal shards (``cost.layout.shard_range``) are padded to the largest, all-gathered and trimmed (the
padding is counted: it is sent). The per-layer collectives (b·s·h) do not depend on the split.

Every collective goes through ``comm`` on ``group``, tagged ``FORWARD`` ("tp-forward") or
``BACKWARD`` ("tp-backward"), ``STATE`` ("tp-state") for gathering weights, so a
``comm.counting()`` log splits by direction; ``comm_per_layer`` / ``comm_per_model`` (in
``cost.comm``, re-exported here) are the formulas those logs equal and ``sent_bytes`` their
bytes under the ring model (tests/test_tensor_parallel.py).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..cost.comm import Traffic, comm_per_layer, comm_per_model, sent_bytes  # re-exported
from . import comm

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
