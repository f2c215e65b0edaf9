"""Tensor parallelism (张量并行) and sequence parallelism by hand, Megatron-style, on ``comm``.

Split one product Y = XW over t ranks: by columns, W = [W₁ … W_t], each rank computes XWᵣ
(no communication; the outputs are shards); by rows, X = [X₁ … X_t], W = [W₁; …; W_t], each
rank computes XᵣWᵣ and Y = Σᵣ XᵣWᵣ needs one all-reduce. A LLaMA layer uses columns then rows
twice (Shoeybi et al. 2019, arXiv 1909.08053, §3): q/k/v (fused into one matrix) and gate/up
(fused) column-parallel — whole heads and whole SwiGLU columns per rank, so attention and
SiLU(G)⊙U run on shards locally — then o_proj and down_proj row-parallel. Megatron's two
conjugate operators carry the communication:

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
Megatron-LM, a sequence-parallel ColumnParallelLinear saves only its sequence shard of the
input and all-gathers it again in backward (that is why every activation of Korthikanti's
SP layer is divided by t): SP backward per layer = 2 reduce-scatters (the grads of the
column-parallel inputs) + 2 all-gathers (conjugates of the forward reduce-scatters) + 2
re-gathers. The replicated RMSNorm weights then see only their shard's tokens: their
gradients are all-reduced (a gradient hook, f's backward), 2 all-reduces of h per layer.

Shapes tp does not divide: whole heads are required (tp | num_heads, num_kv_heads), but the
vocabulary (embedding rows, lm_head rows, the cross entropy's logits) and the MLP's
intermediate columns (gate/up rows, down_proj columns) are split unevenly by one rule,
``mesh.shard_range`` (``torch.tensor_split``'s: the first n mod t ranks hold one row more), in
every constructor, ``load_full_state_dict``, ``full_state_dict`` and ``full_grads``. Unequal
shards are gathered padded to the largest, all-gathered and trimmed (the padding is counted:
it is sent). The per-layer collectives (b·s·h) do not depend on the split.

Every collective goes through ``comm`` on ``group``, tagged ``"tp-forward"`` or
``"tp-backward"`` (``"tp-state"`` for gathering weights), so a ``comm.counting()`` log splits
by direction; ``comm_per_layer`` / ``comm_per_model`` are the formulas those logs equal
(tests/test_tensor_parallel.py).
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import check
from ..llama import MLP, Attention, Llama, Output, apply_rope
from . import comm
from .mesh import ParallelDims, shard_range, shard_sizes

__all__ = ["copy_to_tp", "reduce_from_tp", "gather_from_sp", "reduce_scatter_to_sp",
           "ColumnParallelLinear", "RowParallelLinear", "VocabParallelEmbedding",
           "vocab_parallel_cross_entropy", "gather_logits", "apply", "load_full_state_dict",
           "full_state_dict", "full_grads", "comm_per_layer", "comm_per_model", "sent_bytes", "Traffic",
           "FORWARD", "BACKWARD", "STATE"]

FORWARD, BACKWARD, STATE = "tp-forward", "tp-backward", "tp-state"  # comm tags


# --- the communication operators: forward and backward side by side -------------------------

def _all_reduce(x: torch.Tensor, group, tag: str, op: str = "sum") -> torch.Tensor:
    x = x.contiguous().clone()  # never in place on autograd's tensors
    comm.all_reduce(x, op, group=group, tag=tag)
    return x


def _all_gather(x: torch.Tensor, dim: int, group, tag: str,
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


def _reduce_scatter(x: torch.Tensor, dim: int, group, tag: str) -> torch.Tensor:
    """This rank's chunk along ``dim`` of the group's sum of x."""
    n = dist.get_world_size(group)
    if x.shape[dim] % n:
        raise ValueError(f"seq must be divisible by tp={n} for sequence parallelism, "
                         f"got seq={x.shape[dim]}")
    x = x.movedim(dim, 0).contiguous()
    out = x.new_empty((x.shape[0] // n, *x.shape[1:]))
    comm.reduce_scatter(out, x, "sum", group=group, tag=tag)
    return out.movedim(0, dim).contiguous()


def _shard(x: torch.Tensor, dim: int, n: int, r: int) -> torch.Tensor:
    """Rank r's rows of x along ``dim`` under ``shard_range`` (a view)."""
    return x.narrow(dim, *shard_range(x.shape[dim], n, r))


class _CopyToTP(torch.autograd.Function):  # Megatron's f
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad, ctx.group, BACKWARD), None


class _ReduceFromTP(torch.autograd.Function):  # Megatron's g
    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x, group, FORWARD)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherFromSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return _all_gather(x, dim, group, FORWARD)

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter(grad, ctx.dim, ctx.group, BACKWARD), None, None


class _ReduceScatterToSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return _reduce_scatter(x, dim, group, FORWARD)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.dim, ctx.group, BACKWARD), None, None


class _GatherFromTP(torch.autograd.Function):  # gather_output: shards of the last dim -> whole
    @staticmethod
    def forward(ctx, x, group, sizes, tag):
        ctx.group, ctx.sizes = group, sizes
        return _all_gather(x, -1, group, tag, sizes)

    @staticmethod
    def backward(ctx, grad):
        r = dist.get_rank(ctx.group)
        start = sum(ctx.sizes[:r])
        return grad.narrow(-1, start, ctx.sizes[r]).contiguous(), None, None, None


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


class _SPColumnLinear(torch.autograd.Function):
    """Y = gather(X) Wᵀ + b saving only X's sequence shard; backward gathers X again."""

    @staticmethod
    def forward(ctx, x, weight, bias, group):
        ctx.group, ctx.has_bias = group, bias is not None
        ctx.save_for_backward(x, weight)
        return F.linear(_all_gather(x, 1, group, FORWARD), weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        total = _all_gather(x, 1, ctx.group, BACKWARD)  # the re-gather
        grad_x = _reduce_scatter(grad @ weight, 1, ctx.group, BACKWARD)
        grad_w = grad.flatten(0, -2).T @ total.flatten(0, -2)
        grad_b = grad.flatten(0, -2).sum(0) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


# --- the parallel layers -------------------------------------------------------------------

def _group_size(group) -> tuple[int, int]:
    if not dist.is_initialized():
        raise RuntimeError("tensor parallelism needs torch.distributed: run it inside "
                           "llmtrain.parallel.launch (or torchrun)")
    return dist.get_world_size(group), dist.get_rank(group)


def _rows(t: torch.Tensor, dim: int, n: int, r: int) -> torch.Tensor:
    """Rank r's shard of a full weight along ``dim`` (``shard_range``; at least one row)."""
    if t.shape[dim] < n:
        raise ValueError(f"tp must be at most the size {t.shape[dim]} being split (every rank "
                         f"holds at least one row), got tp={n}")
    return _shard(t.detach(), dim, n, r)


def _full_size(what: str, local: int, full: int | None, n: int, r: int) -> int:
    """The full size whose shard r is ``local`` long (None: an even split, n · local)."""
    full = n * local if full is None else check.positive_int(what, full)
    if shard_range(full, n, r)[1] != local:
        raise ValueError(f"{what} must be a size whose shard {r} of {n} has the {local} rows "
                         f"held here, got {what}={full}")
    return full


class ColumnParallelLinear(nn.Module):
    """Y_r = X W_rᵀ (+ b_r): rank r holds rows ``shard_range(out_features, t, r)`` of W.

    Built from one nn.Linear or several fused (``from_linears([q, k, v])``: rank r's rows are
    [q_r; k_r; v_r], one matmul). ``parts`` names the linears fused, ``part_sizes`` their local
    widths, ``full_sizes`` their whole out_features (default: t × local, an even split).
    Input: whole (f before it) or, ``sequence_parallel``, a sequence shard (gathered).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, group, *,
                 sequence_parallel: bool = False, gather_output: bool = False,
                 parts: tuple[str, ...] = ("",), part_sizes: tuple[int, ...] | None = None,
                 full_sizes: tuple[int, ...] | None = None):
        super().__init__()
        self.group = group
        self.sequence_parallel = check.boolean("sequence_parallel", sequence_parallel)
        self.gather_output = check.boolean("gather_output", gather_output)
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.parts, self.part_sizes = parts, part_sizes or (weight.shape[0],)
        if len(self.parts) != len(self.part_sizes) or (
                full_sizes is not None and len(full_sizes) != len(self.parts)):
            raise ValueError(f"part_sizes and full_sizes must have one size per part "
                             f"{self.parts}, got {self.part_sizes} and {full_sizes}")
        if self.gather_output and len(self.parts) != 1:
            raise ValueError("gather_output must be False for fused linears (their shards "
                             "interleave)")
        n, r = _group_size(group)
        self.full_sizes = tuple(_full_size("full_sizes", k, None if full_sizes is None else f,
                                           n, r)
                                for k, f in zip(self.part_sizes, full_sizes or self.part_sizes))

    @classmethod
    def from_linear(cls, linear: nn.Linear, group=None, *, sequence_parallel: bool = False,
                    gather_output: bool = False) -> "ColumnParallelLinear":
        return cls.from_linears([linear], group, sequence_parallel=sequence_parallel,
                                gather_output=gather_output)

    @classmethod
    def from_linears(cls, linears: list[nn.Linear], group=None, *,
                     names: tuple[str, ...] | None = None, sequence_parallel: bool = False,
                     gather_output: bool = False) -> "ColumnParallelLinear":
        """One column-parallel matmul for ``linears`` (same input) named ``names`` (the full
        state_dict's module names, e.g. ("q_proj", "k_proj", "v_proj"))."""
        linears = check.sequence("linears", linears, nonempty=True)
        names = ("",) if names is None and len(linears) == 1 else names
        if names is None or len(names) != len(linears):
            raise ValueError(f"names must name each of the {len(linears)} linears, got {names!r}")
        n, r = _group_size(group)
        for i, lin in enumerate(linears):
            check.module(f"linears[{i}]", lin, nn.Linear)
        ws = [_rows(lin.weight, 0, n, r) for lin in linears]
        bias = None
        if linears[0].bias is not None:
            bias = torch.cat([_rows(lin.bias, 0, n, r) for lin in linears]).clone()
        return cls(torch.cat(ws).clone(), bias, group, sequence_parallel=sequence_parallel,
                   gather_output=gather_output, parts=tuple(names),
                   part_sizes=tuple(w.shape[0] for w in ws),
                   full_sizes=tuple(lin.out_features for lin in linears))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sequence_parallel:
            y = _SPColumnLinear.apply(x, self.weight, self.bias, self.group)
        else:
            y = F.linear(copy_to_tp(x, self.group), self.weight, self.bias)
        if not self.gather_output:
            return y
        n, _ = _group_size(self.group)
        return _GatherFromTP.apply(y, self.group, shard_sizes(self.full_sizes[0], n), FORWARD)


class RowParallelLinear(nn.Module):
    """Y = Σ_r X_r W_rᵀ + b: rank r holds columns r of W and gets its input's shard r; the sum
    is g (all-reduce) or, ``sequence_parallel``, a reduce-scatter along the sequence. The bias
    is added once, after the sum (replicated; under SP its gradient is all-reduced)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, group, *,
                 sequence_parallel: bool = False, in_features: int | None = None):
        super().__init__()
        self.group = group
        self.sequence_parallel = check.boolean("sequence_parallel", sequence_parallel)
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        n, r = _group_size(group)
        self.in_features = _full_size("in_features", weight.shape[1], in_features, n, r)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group=None, *,
                    sequence_parallel: bool = False) -> "RowParallelLinear":
        check.module("linear", linear, nn.Linear)
        n, r = _group_size(group)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(_rows(linear.weight, 1, n, r).clone(), bias, group,
                   sequence_parallel=sequence_parallel, in_features=linear.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if not self.sequence_parallel:
            y = reduce_from_tp(y, self.group)
            return y if self.bias is None else y + self.bias
        y = reduce_scatter_to_sp(y, self.group)
        return y if self.bias is None else y + copy_to_tp(self.bias, self.group)


class VocabParallelEmbedding(nn.Module):
    """Rank r holds rows ``shard_range(V, t, r)`` of the table (rV/t … when t | V); a token
    outside looks up zero; the sum over ranks (g, or a reduce-scatter along the sequence under
    SP) is the embedding. ``num_embeddings``: the whole V (default t × local rows)."""

    def __init__(self, weight: torch.Tensor, group, *, sequence_parallel: bool = False,
                 num_embeddings: int | None = None):
        super().__init__()
        self.group = group
        self.sequence_parallel = check.boolean("sequence_parallel", sequence_parallel)
        self.weight = nn.Parameter(weight)
        n, r = _group_size(group)
        self.num_embeddings = _full_size("num_embeddings", weight.shape[0], num_embeddings, n, r)
        self.start = shard_range(self.num_embeddings, n, r)[0]

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, group=None, *,
                       sequence_parallel: bool = False) -> "VocabParallelEmbedding":
        check.module("emb", emb, nn.Embedding)
        n, r = _group_size(group)
        return cls(_rows(emb.weight, 0, n, r).clone(), group, sequence_parallel=sequence_parallel,
                   num_embeddings=emb.num_embeddings)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        outside = (ids < self.start) | (ids >= self.start + self.weight.shape[0])
        y = F.embedding((ids - self.start).masked_fill(outside, 0), self.weight)
        y = y.masked_fill(outside.unsqueeze(-1), 0.0)
        if self.sequence_parallel:
            return reduce_scatter_to_sp(y, self.group)
        return reduce_from_tp(y, self.group)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-token −log softmax(z)[target] over logits split by vocabulary (Megatron's):
    all-reduce the max, the target's logit (only its owner has it) and Σ exp; grad softmax − 1."""

    @staticmethod
    def forward(ctx, z, target, group, ignore_index, start):
        z = z - _all_reduce(z.max(-1).values, group, FORWARD, "max").unsqueeze(-1)
        outside = (target < start) | (target >= start + z.shape[-1])
        local = (target - start).masked_fill(outside, 0)
        picked = z.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        picked = _all_reduce(picked, group, FORWARD)
        exp = z.exp_()
        sum_exp = _all_reduce(exp.sum(-1), group, FORWARD)
        keep = target != ignore_index
        loss = (sum_exp.log() - picked).masked_fill(~keep, 0.0)
        ctx.save_for_backward(exp.div_(sum_exp.unsqueeze(-1)), local, outside, keep)
        return loss

    @staticmethod
    def backward(ctx, grad):
        softmax, local, outside, keep = ctx.saved_tensors
        g = softmax.clone()
        g.scatter_add_(-1, local.unsqueeze(-1), -(~outside).to(g.dtype).unsqueeze(-1))
        return g * (grad * keep).unsqueeze(-1), None, None, None, None


def _vocab_sizes(width: int, group, vocab_size: int | None) -> list[int]:
    """Every rank's vocabulary width: ``shard_sizes(vocab_size, t)`` (checked against this
    rank's ``width``) or, vocab_size None, all-gathered (one int64 per rank, tag tp-forward)."""
    n, r = _group_size(group)
    if vocab_size is not None:
        _full_size("vocab_size", width, vocab_size, n, r)
        return shard_sizes(vocab_size, n)
    widths = torch.empty(n, dtype=torch.long)
    comm.all_gather(widths, torch.tensor([width]), group=group, tag=FORWARD)
    return widths.tolist()


def vocab_parallel_cross_entropy(logits_shard: torch.Tensor, labels: torch.Tensor, group=None,
                                 ignore_index: int = -100,
                                 vocab_size: int | None = None) -> torch.Tensor:
    """Mean cross entropy over the labels ≠ ignore_index, from this rank's vocabulary shard of
    the logits (..., ``shard_range(V, t, r)``): 3 all-reduces of one number per token (max,
    target logit, Σ exp); the logits are never gathered. Computed in at least fp32 (float64
    stays float64). ``vocab_size`` (V) locates the shard; None: the shards' widths are
    all-gathered first (one more small collective)."""
    check.tensor("logits_shard", logits_shard, floating=True)
    check.tensor("labels", labels, floating=False)
    if tuple(labels.shape) != tuple(logits_shard.shape[:-1]):
        raise ValueError(f"labels must have the shape of logits_shard without its last dimension "
                         f"{tuple(logits_shard.shape[:-1])}, got {tuple(labels.shape)}")
    sizes = _vocab_sizes(logits_shard.shape[-1], group, vocab_size)
    z = logits_shard.flatten(0, -2).to(torch.promote_types(logits_shard.dtype, torch.float32))
    target = labels.flatten()
    start = sum(sizes[: dist.get_rank(group)])
    loss = _VocabParallelCrossEntropy.apply(z, target, group, ignore_index, start)
    return loss.sum() / (target != ignore_index).sum()


def gather_logits(logits_shard: torch.Tensor, group=None,
                  vocab_size: int | None = None) -> torch.Tensor:
    """The whole logits (..., V) from every rank's vocabulary shard (..., V_r): the single
    model's ``model(ids).logits``. One all-gather of the largest shard (tag tp-forward;
    differentiable: its backward keeps this rank's columns). ``vocab_size`` as in
    ``vocab_parallel_cross_entropy`` (``model.shape.vocab_size`` for ``apply``'s model)."""
    check.tensor("logits_shard", logits_shard, floating=True)
    sizes = _vocab_sizes(logits_shard.shape[-1], group, vocab_size)
    return _GatherFromTP.apply(logits_shard, group, sizes, FORWARD)


# --- the whole LLaMA -------------------------------------------------------------------------

class ParallelAttention(Attention):
    """Attention on this rank's N/t query heads and N_kv/t key/value heads: one fused
    column-parallel qkv_proj, a row-parallel o_proj; the core (``Attention.core``) unchanged."""

    def __init__(self, attn: Attention, group, sequence_parallel: bool):
        nn.Module.__init__(self)
        n, _ = _group_size(group)
        self.n_heads, self.n_kv_heads, self.d = attn.n_heads // n, attn.n_kv_heads // n, attn.d
        self.attn_impl, self.recompute_core = attn.attn_impl, attn.recompute_core
        self.qkv_proj = ColumnParallelLinear.from_linears(
            [attn.q_proj, attn.k_proj, attn.v_proj], group, names=("q_proj", "k_proj", "v_proj"),
            sequence_parallel=sequence_parallel)
        self.o_proj = RowParallelLinear.from_linear(attn.o_proj, group,
                                                    sequence_parallel=sequence_parallel)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv_proj(x)  # (B, T, (N + 2 N_kv) d / t): T is whole, also under SP
        B, T, _ = qkv.shape
        q, k, v = qkv.split(list(self.qkv_proj.part_sizes), dim=-1)
        q = q.view(B, T, self.n_heads, self.d).transpose(1, 2)
        k = k.view(B, T, self.n_kv_heads, self.d).transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.d).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.recompute_core:
            from torch.utils.checkpoint import checkpoint
            y = checkpoint(self.core, q, k, v, use_reentrant=False)
        else:
            y = self.core(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.d))


class ParallelMLP(MLP):
    """SwiGLU on this rank's ``shard_range(H', t, r)`` columns: fused gate/up column-parallel,
    down row-parallel."""

    def __init__(self, mlp: MLP, group, sequence_parallel: bool):
        nn.Module.__init__(self)
        self.gate_up_proj = ColumnParallelLinear.from_linears(
            [mlp.gate_proj, mlp.up_proj], group, names=("gate_proj", "up_proj"),
            sequence_parallel=sequence_parallel)
        self.down_proj = RowParallelLinear.from_linear(mlp.down_proj, group,
                                                       sequence_parallel=sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(list(self.gate_up_proj.part_sizes), dim=-1)
        return self.down_proj(F.silu(gate) * up)


def _sum_grad_over(group):
    """A gradient hook: the sum over the group of each rank's partial gradient (f's backward)."""
    return lambda grad: _all_reduce(grad, group, BACKWARD)


class TensorParallelLlama(Llama):
    """A ``Llama`` after ``apply``: logits are this rank's vocabulary shard (B, T, V_r), the
    loss is the global mean (vocab-parallel cross entropy); ``gather_logits`` makes (B, T, V)."""

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> Output:
        self._check(input_ids, labels)
        if self.sequence_parallel and input_ids.shape[1] % self.tp:
            raise ValueError(f"seq must be divisible by tp={self.tp} for sequence parallelism, "
                             f"got seq={input_ids.shape[1]}")
        logits = self.lm_head(self.model(input_ids))  # (B, T, V/t)
        loss = None
        if labels is not None:
            loss = vocab_parallel_cross_entropy(logits[:, :-1], labels[:, 1:], self.tp_group,
                                                vocab_size=self.shape.vocab_size)
        return Output(logits, loss)

    def gather_logits(self, logits_shard: torch.Tensor) -> torch.Tensor:
        """``gather_logits(logits_shard, self.tp_group, self.shape.vocab_size)``: (B, T, V)."""
        return gather_logits(logits_shard, self.tp_group, self.shape.vocab_size)


def apply(model: Llama, group=None, sequence_parallel: bool = False) -> TensorParallelLlama:
    """Make ``model`` (a ``llmtrain.llama.Llama``) tensor parallel over ``group``, in place.

    Each rank keeps its shard of the weights the model has now (build every rank's model
    from the same seed, or ``load_full_state_dict`` afterwards). tp must divide num_heads and
    num_kv_heads (whole heads per rank; ValueError naming the field); the vocabulary and the
    MLP's intermediate size are split by ``mesh.shard_range`` (rank r: V_r rows, the first
    V mod t ranks one more), so tp need not divide them.

    ``model(ids).logits`` is this rank's vocabulary shard (B, T, V_r), as in Megatron (the
    loss never gathers it). The single model's (B, T, V) is
    ``model.gather_logits(out.logits)`` (= ``gather_logits(out.logits, group,
    model.shape.vocab_size)``: one all-gather).
    """
    check.module("model", model, Llama)
    if isinstance(model, TensorParallelLlama):
        raise ValueError("model must be a single-process Llama, got one already tensor parallel")
    sp = check.boolean("sequence_parallel", sequence_parallel)
    n, _ = _group_size(group)
    ParallelDims(tp=n).check(model.shape)
    body = model.model
    for layer in body.layers:
        layer.self_attn = ParallelAttention(layer.self_attn, group, sp)
        layer.mlp = ParallelMLP(layer.mlp, group, sp)
    if sp:  # a norm on a sequence shard gives γ a partial gradient: sum it over the group
        for norm in [*(m for layer in body.layers for m in (layer.input_layernorm,
                                                            layer.post_attention_layernorm)),
                     body.norm]:
            norm.weight.register_hook(_sum_grad_over(group))
    body.embed_tokens = VocabParallelEmbedding.from_embedding(body.embed_tokens, group,
                                                              sequence_parallel=sp)
    model.lm_head = ColumnParallelLinear.from_linear(model.lm_head, group, sequence_parallel=sp)
    if model.shape.tie_embeddings:
        model.lm_head.weight = body.embed_tokens.weight
    model.__class__ = TensorParallelLlama
    model.tp_group, model.tp, model.sequence_parallel = group, n, sp
    return model


# --- weights: each rank's shard of the full state_dict, and back ----------------------------

def _layout(tp_model: nn.Module):
    """(full key, local parameter, dim, offset, length, full size) for every full state_dict
    key: the full tensor's shard r along ``dim`` (``shard_range(full size, t, r)``) is
    ``param.narrow(dim, offset, length)`` (dim None: replicated, the whole parameter)."""
    out = []
    for prefix, m in tp_model.named_modules(remove_duplicate=False):
        pre = prefix + "." if prefix else ""
        parent = pre[: pre.rstrip(".").rfind(".") + 1]
        for name, p in m.named_parameters(recurse=False, remove_duplicate=False):
            if isinstance(m, ColumnParallelLinear):
                off = 0
                for part, size, full in zip(m.parts, m.part_sizes, m.full_sizes):
                    key = f"{parent}{part}.{name}" if part else pre + name
                    out.append((key, p, 0, off, size, full))
                    off += size
            elif isinstance(m, VocabParallelEmbedding):
                out.append((pre + name, p, 0, 0, p.shape[0], m.num_embeddings))
            elif isinstance(m, RowParallelLinear) and name == "weight":
                out.append((pre + name, p, 1, 0, p.shape[1], m.in_features))
            else:
                out.append((pre + name, p, None, 0, 0, 0))
    return out


def load_full_state_dict(tp_model: TensorParallelLlama, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy this rank's shard of every tensor of the single-process ``state_dict`` into the
    TP model (strict: the keys must be exactly the single model's)."""
    check.module("tp_model", tp_model, TensorParallelLlama, "a model made by tensor_parallel.apply")
    layout = _layout(tp_model)
    want = {k for k, *_ in layout}
    if set(state_dict) != want:
        missing, extra = sorted(want - set(state_dict)), sorted(set(state_dict) - want)
        raise ValueError(f"state_dict must have the single model's keys: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    n, r = tp_model.tp, dist.get_rank(tp_model.tp_group)
    with torch.no_grad():
        for key, p, dim, off, length, size in layout:
            full = state_dict[key]
            if dim is None:
                p.copy_(full)
            elif full.shape[dim] != size:
                raise ValueError(f"state_dict[{key!r}] must have {size} rows along dim {dim}, "
                                 f"got shape {tuple(full.shape)}")
            else:
                p.narrow(dim, off, length).copy_(_rows(full, dim, n, r))


def _gather(tp_model, get) -> dict[str, torch.Tensor]:
    out = {}
    for key, p, dim, off, length, size in _layout(tp_model):
        t = get(p)
        if t is None:
            out[key] = None
        elif dim is None:
            out[key] = t.detach().clone()
        else:
            out[key] = _all_gather(t.detach().narrow(dim, off, length), dim, tp_model.tp_group,
                                   STATE, shard_sizes(size, tp_model.tp))
    return out


def full_state_dict(tp_model: TensorParallelLlama) -> dict[str, torch.Tensor]:
    """{name: full tensor}: every rank's shards gathered (every rank calls it, gets it all);
    same keys and values as the single model's ``state_dict()``."""
    check.module("tp_model", tp_model, TensorParallelLlama, "a model made by tensor_parallel.apply")
    return _gather(tp_model, lambda p: p)


def full_grads(tp_model: TensorParallelLlama) -> dict[str, torch.Tensor]:
    """{name: full gradient} gathered like ``full_state_dict`` (None where there is none)."""
    check.module("tp_model", tp_model, TensorParallelLlama, "a model made by tensor_parallel.apply")
    return _gather(tp_model, lambda p: p.grad)


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
