"""Tensor parallelism (张量并行) and sequence parallelism of a LLaMA by hand, from a plan.

Megatron-style: a plan says which linear of a LLaMA is split how, and ``apply`` carries it out.

A LLaMA layer uses columns then rows twice (Shoeybi et al. 2019, arXiv 1909.08053, §3): q/k/v
(fused into one matrix) and gate/up (fused) column-parallel — whole heads and whole SwiGLU
columns per rank, so attention and SiLU(G)⊙U run on shards locally — then o_proj and
down_proj row-parallel. The embedding and lm_head are split by vocabulary, and the loss is the
vocab-parallel cross entropy. Sequence parallelism (Korthikanti et al. 2023) keeps the residual
stream and the RMSNorms on sequence shards between the blocks.

The split is data (``LAYER_PLAN``, ``MODEL_PLAN``: module path -> "column", "row" or "vocab",
picotron's pattern); ``shard`` replaces each module the plan names by its parallel layer
(``tp_layers``), fusing the linears ``FUSED`` lists, and the model's own ``Attention`` and
``MLP`` run the fused path (``qkv_proj``, ``gate_up_proj``) on this rank's heads. What this
sends is ``tp_comm``'s; ``cost.comm.comm_per_layer`` / ``comm_per_model`` are the formulas a
``comm.counting()`` log of ``apply``'s model equals.

Shapes tp does not divide: whole heads are required (tp | num_heads, num_kv_heads), but the
vocabulary and the MLP's intermediate columns are split unevenly by one rule,
``cost.layout.shard_range`` (``torch.tensor_split``'s: the first n mod t ranks hold one row
more), in every constructor, ``load_full_state_dict``, ``full_state_dict`` and ``full_grads``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from .. import check
from ..cost.layout import ParallelDims, shard_sizes
from ..model.llama import Llama, Output
from .tp_comm import BACKWARD, STATE, all_gathered, all_reduced
from .tp_layers import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
    gather_logits, shard_rows, size_and_rank, vocab_parallel_cross_entropy)

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "VocabParallelEmbedding",
           "vocab_parallel_cross_entropy", "gather_logits", "LAYER_PLAN", "MODEL_PLAN", "FUSED",
           "STAGE_PLAN", "shard", "shard_layers", "apply", "TensorParallelLlama",
           "load_full_state_dict", "full_state_dict", "full_grads", "gather_full"]


# --- the plan: which module is split how -------------------------------------------------------

# In each decoder layer (Megatron's): the fused projections by columns, their outputs by rows.
LAYER_PLAN = {"self_attn.qkv_proj": "column", "self_attn.o_proj": "row",
              "mlp.gate_up_proj": "column", "mlp.down_proj": "row"}
# Around the layers: the vocabulary's rows (the embedding table, lm_head's output rows).
MODEL_PLAN = {"model.embed_tokens": "vocab", "lm_head": "column"}
# A pipeline stage's: the embedding on the first stage only, lm_head on the last only.
STAGE_PLAN = {"embed_tokens": "vocab", "lm_head": "column"}
# A fused module: one column-parallel matmul for the linears it replaces (same input).
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def shard(root: nn.Module, plan: dict[str, str], group=None,
          sequence_parallel: bool = False) -> None:
    """Replace, in place, each module of ``root`` that ``plan`` names (path -> "column", "row"
    or "vocab") by its parallel layer over ``group``: rank r keeps its shard of the weights
    it has now. A path whose name ``FUSED`` lists is built from those linears (then removed);
    a path whose module is absent (None: a pipeline stage without the embedding) is skipped."""
    sp = check.boolean("sequence_parallel", sequence_parallel)
    for path, style in plan.items():
        check.one_of(f"plan[{path!r}]", style, ("column", "row", "vocab"))
        parent_path, _, name = path.rpartition(".")
        parent = root.get_submodule(parent_path)
        parts = FUSED.get(name, (name,))
        olds = [getattr(parent, p, None) for p in parts]
        if any(m is None for m in olds):
            continue
        if style == "vocab":
            new = VocabParallelEmbedding.from_embedding(olds[0], group, sequence_parallel=sp)
        elif style == "row":
            new = RowParallelLinear.from_linear(olds[0], group, sequence_parallel=sp)
        elif name in FUSED:
            new = ColumnParallelLinear.from_linears(olds, group, names=parts, sequence_parallel=sp)
        else:
            new = ColumnParallelLinear.from_linear(olds[0], group, sequence_parallel=sp)
        _replace(parent, parts, name, new)


def _replace(parent: nn.Module, parts: tuple[str, ...], name: str, new: nn.Module) -> None:
    """``new`` as ``parent.<name>`` in the place of ``parts[0]``, ``parts`` removed: the
    children (and so the parameters) keep their order."""
    children = dict(parent.named_children())
    later = list(children)[list(children).index(parts[0]):]
    for child in later:
        delattr(parent, child)
    setattr(parent, name, new)
    for child in later:
        if child not in parts:
            setattr(parent, child, children[child])


# --- the whole LLaMA -------------------------------------------------------------------------

def shard_layers(layers, group=None, sequence_parallel: bool = False) -> None:
    """Make each decoder layer of ``layers`` tensor parallel over ``group``, in place, by
    ``LAYER_PLAN`` (what ``apply`` does to every layer; a pipeline stage's layers too,
    ``parallel.parallelize``): its attention then runs on this rank's N/t query heads and
    N_kv/t key/value heads, its MLP on ``shard_range(H', t, r)`` columns."""
    n, _ = size_and_rank(group)
    for layer in layers:
        attn = layer.self_attn
        for field in ("n_heads", "n_kv_heads"):
            if getattr(attn, field) % n:
                raise ValueError(f"tp must divide {field}={getattr(attn, field)} (whole heads "
                                 f"per rank), got tp={n}")
        shard(layer, LAYER_PLAN, group, sequence_parallel)
        attn.n_heads, attn.n_kv_heads = attn.n_heads // n, attn.n_kv_heads // n


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


def apply(model: Llama, group=None, sequence_parallel: bool = False) -> TensorParallelLlama:
    """Make ``model`` (a ``llmtrain.model.llama.Llama``) tensor parallel over ``group``, in place:
    ``shard_layers``, then ``MODEL_PLAN`` (the embedding and lm_head by vocabulary).

    Each rank keeps its shard of the weights the model has now (build every rank's model
    from the same seed, or ``load_full_state_dict`` afterwards). tp must divide num_heads and
    num_kv_heads (whole heads per rank; ValueError naming the field); the vocabulary and the
    MLP's intermediate size are split by ``cost.layout.shard_range`` (rank r: V_r rows, the first
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
    n, _ = size_and_rank(group)
    ParallelDims(tp=n).check(model.shape)
    body = model.model
    shard_layers(body.layers, group, sp)
    if sp:  # a norm on a sequence shard gives γ a partial gradient: sum it over the group
        for norm in [*(m for layer in body.layers for m in (layer.input_layernorm,
                                                            layer.post_attention_layernorm)),
                     body.norm]:
            norm.weight.register_hook(_sum_grad_over(group))
    shard(model, MODEL_PLAN, group, sp)
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
    n, r = size_and_rank(tp_model.tp_group)
    with torch.no_grad():
        for key, p, dim, off, length, size in layout:
            full = state_dict[key]
            if dim is None:
                p.copy_(full)
            elif full.shape[dim] != size:
                raise ValueError(f"state_dict[{key!r}] must have {size} rows along dim {dim}, "
                                 f"got shape {tuple(full.shape)}")
            else:
                p.narrow(dim, off, length).copy_(shard_rows(full, dim, n, r))


def gather_full(module: nn.Module, group=None,
                get: Callable[[nn.Parameter], torch.Tensor | None] | None = None
                ) -> dict[str, torch.Tensor | None]:
    """{full name: full tensor} of a module made tensor parallel by ``shard`` (a whole model, a
    pipeline stage): ``get(p)`` of each parameter (default the weight; ``lambda p: p.grad``
    its gradient), its shards all-gathered over ``group`` (tag tp-state), replicated ones
    copied; None where ``get`` gives None. Collective: every rank of ``group`` calls it."""
    n = dist.get_world_size(group)
    out = {}
    for key, p, dim, off, length, size in _layout(module):
        t = p if get is None else get(p)
        if t is None:
            out[key] = None
        elif dim is None:
            out[key] = t.detach().clone()
        else:
            out[key] = all_gathered(t.detach().narrow(dim, off, length), dim, group, STATE,
                                    shard_sizes(size, n))
    return out


def full_state_dict(tp_model: TensorParallelLlama) -> dict[str, torch.Tensor]:
    """{name: full tensor}: every rank's shards gathered (every rank calls it, gets it all);
    same keys and values as the single model's ``state_dict()``."""
    check.module("tp_model", tp_model, TensorParallelLlama, "a model made by tensor_parallel.apply")
    return gather_full(tp_model, tp_model.tp_group)


def full_grads(tp_model: TensorParallelLlama) -> dict[str, torch.Tensor]:
    """{name: full gradient} gathered like ``full_state_dict`` (None where there is none)."""
    check.module("tp_model", tp_model, TensorParallelLlama, "a model made by tensor_parallel.apply")
    return gather_full(tp_model, tp_model.tp_group, lambda p: p.grad)
