"""Tensor parallelism (张量并行) and sequence parallelism by hand, Megatron-style, on ``comm``.

Split one product Y = XW over t ranks: by columns, W = [W₁ … W_t], each rank computes XWᵣ
(no communication; the outputs are shards); by rows, X = [X₁ … X_t], W = [W₁; …; W_t], each
rank computes XᵣWᵣ and Y = Σᵣ XᵣWᵣ needs one all-reduce. A LLaMA layer uses columns then rows
twice (Shoeybi et al. 2019, arXiv 1909.08053, §3): q/k/v (fused into one matrix) and gate/up
(fused) column-parallel — whole heads and whole SwiGLU columns per rank, so attention and
SiLU(G)⊙U run on shards locally — then o_proj and down_proj row-parallel. The embedding and
lm_head are split by vocabulary, and the cross entropy works on the logits' shards (3
all-reduces of one number per token). Sequence parallelism (Korthikanti et al. 2023) keeps
the residual stream and the RMSNorms on sequence shards between the blocks.

What this sends is ``tp_comm``'s: Megatron's f and g, the sequence-parallel pair, the comm tags
and ``comm_per_layer`` / ``comm_per_model``, the formulas a ``comm.counting()`` log of
``apply``'s model equals. Here: the layers (``ColumnParallelLinear`` is f then the local
matmul, ``RowParallelLinear`` the local matmul then g), ``apply(Llama)`` and the weights.

Shapes tp does not divide: whole heads are required (tp | num_heads, num_kv_heads), but the
vocabulary (embedding rows, lm_head rows, the cross entropy's logits) and the MLP's
intermediate columns (gate/up rows, down_proj columns) are split unevenly by one rule,
``mesh.shard_range`` (``torch.tensor_split``'s: the first n mod t ranks hold one row more), in
every constructor, ``load_full_state_dict``, ``full_state_dict`` and ``full_grads``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import check
from ..model.llama import MLP, Attention, Llama, Output, apply_rope
from . import comm
from ..cost.layout import ParallelDims, shard_range, shard_sizes
from .tp_comm import (BACKWARD, FORWARD, STATE, all_gathered, all_reduced, copy_to_tp,
    gather_from_tp, reduce_from_tp, reduce_scatter_to_sp, sp_column_linear)

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "VocabParallelEmbedding",
           "vocab_parallel_cross_entropy", "gather_logits", "apply", "shard_layers",
           "load_full_state_dict", "full_state_dict", "full_grads"]


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
            y = sp_column_linear(x, self.weight, self.bias, self.group)
        else:
            y = F.linear(copy_to_tp(x, self.group), self.weight, self.bias)
        if not self.gather_output:
            return y
        n, _ = _group_size(self.group)
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
    n, r = _group_size(group)
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
    return lambda grad: all_reduced(grad, group, BACKWARD)


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


def shard_layers(layers, group=None, sequence_parallel: bool = False) -> None:
    """Make each decoder layer of ``layers`` tensor parallel over ``group``, in place:
    ``ParallelAttention`` and ``ParallelMLP`` (what ``apply`` does to every layer; a pipeline
    stage's layers too, ``parallel.parallelize``)."""
    for layer in layers:
        layer.self_attn = ParallelAttention(layer.self_attn, group, sequence_parallel)
        layer.mlp = ParallelMLP(layer.mlp, group, sequence_parallel)


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
    shard_layers(body.layers, group, sp)
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


def load_full_state_dict(tp_model: TensorParallelLlama,
                         state_dict: dict[str, torch.Tensor]) -> None:
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
            out[key] = all_gathered(t.detach().narrow(dim, off, length), dim, tp_model.tp_group,
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
