"""Megatron's tensor-parallel layers (张量并行的层): split linears, embedding and loss.

Split one product Y = XW over t ranks: by columns, W = [W₁ … W_t], each rank computes XWᵣ
(no communication; the outputs are shards); by rows, X = [X₁ … X_t], W = [W₁; …; W_t], each
rank computes XᵣWᵣ and Y = Σᵣ XᵣWᵣ needs one all-reduce (Shoeybi et al. 2019, arXiv
1909.08053, §3). ``ColumnParallelLinear`` is f then the local matmul, ``RowParallelLinear``
the local matmul then g (``tp_comm``); under sequence parallelism their input / output is a
sequence shard. The embedding and lm_head are split by vocabulary, and the cross entropy works
on the logits' shards (3 all-reduces of one number per token). Sizes tp does not divide are
split by ``cost.layout.shard_range`` (the first n mod t ranks hold one row more).
``tensor_parallel`` puts these layers into a LLaMA by its plan.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import check
from ..cost.layout import shard_range, shard_sizes
from . import comm
from .tp_comm import (FORWARD, all_reduced, copy_to_tp, gather_from_tp, reduce_from_tp,
    reduce_scatter_to_sp, sp_column_linear)

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "VocabParallelEmbedding",
           "vocab_parallel_cross_entropy", "gather_logits", "size_and_rank", "shard_rows"]


# --- the parallel layers -------------------------------------------------------------------

def size_and_rank(group) -> tuple[int, int]:
    """(ranks in ``group``, this rank's index in it); RuntimeError outside a rank."""
    if not dist.is_initialized():
        raise RuntimeError("tensor parallelism needs torch.distributed: run it inside "
                           "llmtrain.parallel.launch (or torchrun)")
    return dist.get_world_size(group), dist.get_rank(group)


def shard_rows(t: torch.Tensor, dim: int, n: int, r: int) -> torch.Tensor:
    """Rank r of n's shard of a full weight along ``dim`` (``shard_range``; at least one row)."""
    if t.shape[dim] < n:
        raise ValueError(f"tp must be at most the size {t.shape[dim]} being split (every rank "
                         f"holds at least one row), got tp={n}")
    return t.detach().narrow(dim, *shard_range(t.shape[dim], n, r))  # a view


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
        n, r = size_and_rank(group)
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
        n, r = size_and_rank(group)
        for i, lin in enumerate(linears):
            check.module(f"linears[{i}]", lin, nn.Linear)
        ws = [shard_rows(lin.weight, 0, n, r) for lin in linears]
        bias = None
        if linears[0].bias is not None:
            bias = torch.cat([shard_rows(lin.bias, 0, n, r) for lin in linears]).clone()
        return cls(torch.cat(ws).clone(), bias, group, sequence_parallel=sequence_parallel,
                   gather_output=gather_output, parts=tuple(names),
                   part_sizes=tuple(w.shape[0] for w in ws),
                   full_sizes=tuple(lin.out_features for lin in linears))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sequence_parallel:
            y = sp_column_linear(x, self.weight, self.bias, self.group)
        else:
            y = F.linear(copy_to_tp(x, self.group), self.weight, self.bias)
        if not self.gather_output:
            return y
        n, _ = size_and_rank(self.group)
        return gather_from_tp(y, self.group, shard_sizes(self.full_sizes[0], n))


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
        n, r = size_and_rank(group)
        self.in_features = _full_size("in_features", weight.shape[1], in_features, n, r)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group=None, *,
                    sequence_parallel: bool = False) -> "RowParallelLinear":
        check.module("linear", linear, nn.Linear)
        n, r = size_and_rank(group)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(shard_rows(linear.weight, 1, n, r).clone(), bias, group,
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
        n, r = size_and_rank(group)
        self.num_embeddings = _full_size("num_embeddings", weight.shape[0], num_embeddings, n, r)
        self.start = shard_range(self.num_embeddings, n, r)[0]

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, group=None, *,
                       sequence_parallel: bool = False) -> "VocabParallelEmbedding":
        check.module("emb", emb, nn.Embedding)
        n, r = size_and_rank(group)
        return cls(shard_rows(emb.weight, 0, n, r).clone(), group,
                   sequence_parallel=sequence_parallel, num_embeddings=emb.num_embeddings)

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
        z = z - all_reduced(z.max(-1).values, group, FORWARD, "max").unsqueeze(-1)
        outside = (target < start) | (target >= start + z.shape[-1])
        local = (target - start).masked_fill(outside, 0)
        picked = z.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(outside, 0.0)
        picked = all_reduced(picked, group, FORWARD)
        exp = z.exp_()
        sum_exp = all_reduced(exp.sum(-1), group, FORWARD)
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
    n, r = size_and_rank(group)
    if vocab_size is not None:
        _full_size("vocab_size", width, vocab_size, n, r)
        return shard_sizes(vocab_size, n)
    widths = torch.empty(n, dtype=torch.long)
    comm.all_gather(widths, torch.tensor([width]), group=group, tag=FORWARD)
    return widths.tolist()


def vocab_parallel_cross_entropy(logits_shard: torch.Tensor, labels: torch.Tensor, group=None,
                                 ignore_index: int = -100, vocab_size: int | None = None,
                                 reduction: str = "mean") -> torch.Tensor:
    """Mean (``reduction="sum"``: sum) cross entropy over the labels ≠ ignore_index, from this rank's vocabulary shard of
    the logits (..., ``shard_range(V, t, r)``): 3 all-reduces of one number per token (max,
    target logit, Σ exp); the logits are never gathered. Computed in at least fp32 (float64
    stays float64). ``vocab_size`` (V) locates the shard; None: the shards' widths are
    all-gathered first (one more small collective)."""
    check.tensor("logits_shard", logits_shard, floating=True)
    check.tensor("labels", labels, floating=False)
    check.one_of("reduction", reduction, ("mean", "sum"))
    if tuple(labels.shape) != tuple(logits_shard.shape[:-1]):
        raise ValueError(f"labels must have the shape of logits_shard without its last dimension "
                         f"{tuple(logits_shard.shape[:-1])}, got {tuple(labels.shape)}")
    sizes = _vocab_sizes(logits_shard.shape[-1], group, vocab_size)
    z = logits_shard.flatten(0, -2).to(torch.promote_types(logits_shard.dtype, torch.float32))
    target = labels.flatten()
    start = sum(sizes[: dist.get_rank(group)])
    loss = _VocabParallelCrossEntropy.apply(z, target, group, ignore_index, start).sum()
    return loss if reduction == "sum" else loss / (target != ignore_index).sum()


def gather_logits(logits_shard: torch.Tensor, group=None,
                  vocab_size: int | None = None) -> torch.Tensor:
    """The whole logits (..., V) from every rank's vocabulary shard (..., V_r): the single
    model's ``model(ids).logits``. One all-gather of the largest shard (tag tp-forward;
    differentiable: its backward keeps this rank's columns). ``vocab_size`` as in
    ``vocab_parallel_cross_entropy`` (``model.shape.vocab_size`` for ``apply``'s model)."""
    check.tensor("logits_shard", logits_shard, floating=True)
    sizes = _vocab_sizes(logits_shard.shape[-1], group, vocab_size)
    return gather_from_tp(logits_shard, group, sizes)
