"""Context parallelism by hand (上下文并行): ring attention and DeepSpeed-Ulysses on a cp group.

Every rank of a cp group holds a part of every sequence (``cost.context``'s layouts:
contiguous, or zig-zag, which balances causal work). Everything outside attention works
token by token and runs on the local tokens unchanged; RoPE takes each token's *global*
position. Attention needs every earlier token, so it communicates, one of two ways:

- ``ring_attention`` (Liu et al. 2023, arXiv 2310.01889): queries stay; the K/V blocks pass
  around the ring (cp − 1 counted point-to-point shifts); each step computes one block of
  scores, masked by global positions (a block entirely in the future is skipped), and merges
  it into the running output by its log-sum-exp (the online softmax). Written as one
  ``autograd.Function`` with its backward beside it (flash attention's backward, block by
  block): each rank saves only its own q, k, v, output and log-sum-exp, and backward sends
  the K/V blocks around again with gradient buffers riding along, which arrive home after
  one last shift. (Letting autograd differentiate through the loop would be shorter, but
  every rank would keep all cp K/V blocks for backward: the memory context parallelism is
  meant to split. PyTorch's own ring, ``torch.distributed.tensor.experimental``'s
  ``_templated_ring_attention_backward`` in torch 2.13, also rotates K/V again in backward,
  their gradients with them.) Each shift here is waited for before the block is computed;
  Liu et al. hide it behind the computation of the previous block.
- ``ulysses_attention`` (Jacobs et al. 2023, arXiv 2309.14509): an all-to-all turns the
  sequence shards of q, k, v into head shards of the whole sequence; attention runs as on
  one process on N/cp heads; an all-to-all turns the output back. Needs cp | N_kv (whole
  key/value heads per rank; GQA groups stay together).

``apply(model, group, method, layout)`` makes the reference LLaMA context parallel in place;
``split`` cuts a batch for one rank (labels shifted first: a shard's last target lives on the
next rank), ``gather`` puts the shards back in order, ``sum_grads`` sums the replicated
weights' gradients over cp (in a real run, folded into data parallelism's all-reduce). The
bytes a ``comm.counting()`` log records equal ``cost.context.sent_per_layer``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import check
from ..cost.context import LAYOUTS, METHODS, positions
from ..model.llama import Attention, Llama, Output, upcast
from . import comm

__all__ = ["FORWARD", "BACKWARD", "LOSS", "GRADS", "GATHER", "ring_pass", "RingAttention",
           "ring_attention",
           "ulysses_attention", "seq_to_heads", "heads_to_seq", "apply", "ContextParallelLlama",
           "split", "gather", "sum_grads", "cp_loss", "LAYOUTS", "METHODS"]

FORWARD, BACKWARD, LOSS, GRADS, GATHER = "cp-forward", "cp-backward", "cp-loss", "cp-grads", "cp-gather"


def _size_rank(group) -> tuple[int, int]:
    return dist.get_world_size(group), dist.get_rank(group)


def _global(group, r: int) -> int:
    return r if group is None else dist.get_global_rank(group, r)


# --- the ring: one shift of blocks to the next rank ------------------------------------------

def ring_pass(tensors: list[torch.Tensor], group=None, tag: str = FORWARD) -> list[torch.Tensor]:
    """Send each tensor to the next rank of ``group``'s ring and return the previous rank's
    (one ``batch_isend_irecv``, every message counted)."""
    n, r = _size_rank(group)
    nxt, prv = _global(group, (r + 1) % n), _global(group, (r - 1) % n)
    tensors = [t.contiguous() for t in tensors]
    out = [torch.empty_like(t) for t in tensors]
    ops = ([comm.P2P("send", t, nxt, group, tag) for t in tensors]
           + [comm.P2P("recv", o, prv, group, tag) for o in out])
    for work in comm.batch_isend_irecv(ops):
        work.wait()
    return out


def _expand(x: torch.Tensor, groups: int) -> torch.Tensor:
    """GQA: each key/value head repeated for the ``groups`` query heads that share it."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _fold(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse for gradients: the sum over the query heads that share a key/value head."""
    if groups == 1:
        return x
    B, N, T, d = x.shape
    return x.view(B, N // groups, groups, T, d).sum(2)


class RingAttention(torch.autograd.Function):
    """softmax(QKᵀ/√d + causal mask by global positions) V with K/V passed around the ring."""

    @staticmethod
    def forward(ctx, q, k, v, pos, group, scale):
        n, r = _size_rank(group)
        g, acc = q.shape[1] // k.shape[1], upcast(q.dtype)
        qf = q.to(acc)
        out = torch.zeros_like(qf)
        lse = torch.full(q.shape[:3] + (1,), float("-inf"), dtype=acc)
        kv, skipped = (k, v), []
        for i in range(n):
            if i:  # pass the block on, receive the previous rank's
                kv = tuple(ring_pass(list(kv), group, FORWARD))
            mask = pos[(r - i) % n][None, :] > pos[r][:, None]  # key in the future
            if bool(mask.all()):
                skipped.append(i)
                continue
            s = (qf @ _expand(kv[0], g).to(acc).transpose(-2, -1)) * scale
            s = s.masked_fill(mask, float("-inf"))
            m = s.amax(-1, keepdim=True)
            m = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # rows with no key here
            p = torch.exp(s - m)
            block_lse = m + p.sum(-1, keepdim=True).log()
            new = torch.logaddexp(lse, block_lse)
            out = out * torch.exp(lse - new) + (p @ _expand(kv[1], g).to(acc)) * torch.exp(m - new)
            lse = new
        out = out.to(q.dtype)  # laid out as q, (B, t, N, d) in memory: o_proj's input is a view
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.pos, ctx.group, ctx.scale, ctx.skipped = pos, group, scale, skipped
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        n, r = _size_rank(ctx.group)
        g, acc, pos = q.shape[1] // k.shape[1], lse.dtype, ctx.pos
        qf, do = q.to(acc), grad_out.to(acc)
        D = (do * out.to(acc)).sum(-1, keepdim=True)  # rowsum(dO ⊙ O)
        dq = torch.zeros_like(qf)
        dk, dv = torch.zeros(k.shape, dtype=acc), torch.zeros(v.shape, dtype=acc)
        kv = (k, v)
        for i in range(n):
            if i:  # K/V travel on, their gradient buffers with them
                k_, v_, dk, dv = ring_pass([*kv, dk, dv], ctx.group, BACKWARD)
                kv = (k_, v_)
            if i in ctx.skipped:
                continue
            mask = pos[(r - i) % n][None, :] > pos[r][:, None]
            kf, vf = _expand(kv[0], g).to(acc), _expand(kv[1], g).to(acc)
            s = ((qf @ kf.transpose(-2, -1)) * ctx.scale).masked_fill(mask, float("-inf"))
            p = torch.exp(s - lse)  # the final softmax, block by block
            dv = dv + _fold(p.transpose(-2, -1) @ do, g)
            ds = p * (do @ vf.transpose(-2, -1) - D)
            dq = dq + (ds @ kf) * ctx.scale
            dk = dk + _fold(ds.transpose(-2, -1) @ qf, g) * ctx.scale
        if n > 1:  # the buffers hold the block of rank r + 1: one more shift brings them home
            dk, dv = ring_pass([dk, dv], ctx.group, BACKWARD)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: list[torch.Tensor],
                   group=None, scale: float | None = None) -> torch.Tensor:
    """Causal attention of this rank's queries q (B, N, t, d) over the whole sequence, whose
    keys and values k, v (B, N_kv, t, d) are spread over ``group``; ``pos[j]``: the global
    positions of rank j's t tokens (``cost.context.positions``). Returns (B, N, t, d)."""
    n, _ = _size_rank(group)
    if len(pos) != n:
        raise ValueError(f"pos must hold the positions of each of the {n} ranks, got {len(pos)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"num_kv_heads={k.shape[1]} must divide num_heads={q.shape[1]}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return RingAttention.apply(q, k, v, pos, group, scale)


# --- Ulysses: sequence shards <-> head shards --------------------------------------------------

def _a2a(x: torch.Tensor, group, tag: str) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)  # x contiguous: chunk j (dim 0) goes to rank j
    comm.all_to_all(out, x, group=group, tag=tag)
    return out


def _to_heads(x: torch.Tensor, group, tag: str) -> torch.Tensor:
    n, _ = _size_rank(group)
    B, H, t, d = x.shape
    y = _a2a(x.view(B, n, H // n, t, d).transpose(0, 1), group, tag)  # chunk j: heads for rank j
    return y.permute(1, 2, 0, 3, 4).reshape(B, H // n, n * t, d)  # rank j's tokens, in rank order


def _to_seq(x: torch.Tensor, group, tag: str) -> torch.Tensor:
    n, _ = _size_rank(group)
    B, h, T, d = x.shape
    y = _a2a(x.view(B, h, n, T // n, d).permute(2, 0, 1, 3, 4), group, tag)  # chunk j: rank j's tokens
    return y.transpose(0, 1).reshape(B, n * h, T // n, d)  # heads of every rank, in order


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _to_heads(x, group, FORWARD)

    @staticmethod
    def backward(ctx, grad):
        return _to_seq(grad, ctx.group, BACKWARD), None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _to_seq(x, group, FORWARD)

    @staticmethod
    def backward(ctx, grad):
        return _to_heads(grad, ctx.group, BACKWARD), None


def seq_to_heads(x: torch.Tensor, group=None) -> torch.Tensor:
    """(B, H, t, d) on each rank (its tokens, all heads) → (B, H/cp, cp·t, d) (its heads, every
    rank's tokens in rank order): one all-to-all; backward the inverse one."""
    n, _ = _size_rank(group)
    if x.shape[1] % n:
        raise ValueError(f"cp={n} must divide the {x.shape[1]} heads (Ulysses: whole heads per rank)")
    return _SeqToHeads.apply(x, group)


def heads_to_seq(x: torch.Tensor, group=None) -> torch.Tensor:
    """The inverse of ``seq_to_heads``: (B, H/cp, cp·t, d) → (B, H, t, d)."""
    return _HeadsToSeq.apply(x, group)


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      pos: list[torch.Tensor], group=None) -> torch.Tensor:
    """DeepSpeed-Ulysses: all-to-all q, k, v to head shards of the whole sequence, causal SDPA
    (tokens put in position order first), all-to-all back. Shapes as ``ring_attention``."""
    n, _ = _size_rank(group)
    if k.shape[1] % n:
        raise ValueError(f"cp={n} must divide num_kv_heads={k.shape[1]} (Ulysses: whole key/value "
                         "heads per rank; repeat K/V to N heads first to use more ranks)")
    q, k, v = seq_to_heads(q, group), seq_to_heads(k, group), seq_to_heads(v, group)
    every = torch.cat(pos)
    order = None if bool((every[1:] > every[:-1]).all()) else torch.argsort(every)
    if order is not None:  # zig-zag: gathered in rank order, not position order
        q, k, v = (x.index_select(2, order) for x in (q, k, v))
    g = q.shape[1] // k.shape[1]
    y = F.scaled_dot_product_attention(q, _expand(k, g), _expand(v, g), is_causal=True)
    if order is not None:
        y = y.index_select(2, torch.argsort(order))
    return heads_to_seq(y, group)


# --- the reference LLaMA with its sequence split over cp ---------------------------------------

class ContextParallelAttention(Attention):
    """``Attention`` whose core is ring attention or Ulysses over ``cp_group``."""

    def core(self, q, k, v):
        pos = self.cp_positions(q.shape[2])
        if self.cp_method == "ring":
            return ring_attention(q, k, v, pos, self.cp_group, self.d ** -0.5)
        return ulysses_attention(q, k, v, pos, self.cp_group)

    def cp_positions(self, local: int) -> list[torch.Tensor]:
        n = self.cp_size
        return [torch.tensor(positions(local * n, n, j, self.cp_layout)) for j in range(n)]


class ContextParallelRotary(nn.Module):
    """RoPE at this rank's global positions: the model's cos/sin for the whole sequence, indexed."""

    def __init__(self, rotary: nn.Module, group, layout: str):
        super().__init__()
        self.rotary, self.group, self.layout = rotary, group, layout

    def forward(self, T: int, dtype: torch.dtype):
        n, r = _size_rank(self.group)
        cos, sin = self.rotary(T * n, dtype)
        idx = torch.tensor(positions(T * n, n, r, self.layout), device=cos.device)
        return cos.index_select(0, idx), sin.index_select(0, idx)


class _SumForward(torch.autograd.Function):  # all-reduce(sum) forward, identity backward
    @staticmethod
    def forward(ctx, x, group):
        x = x.clone()
        comm.all_reduce(x, "sum", group=group, tag=LOSS)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def cp_loss(logits: torch.Tensor, targets: torch.Tensor, group=None) -> torch.Tensor:
    """Mean cross entropy over every target of the cp group (-100: ignored): one all-reduce of
    (Σ loss, count); backward is the identity, so each rank back-propagates its own tokens'
    share and ``sum_grads`` adds the shares."""
    ce = F.cross_entropy(logits.flatten(0, 1).to(upcast(logits.dtype)), targets.flatten(),
                         ignore_index=-100, reduction="sum")
    count = (targets != -100).sum().to(ce.dtype)
    total = _SumForward.apply(torch.stack([ce, count]), group)
    return total[0] / total[1]


class ContextParallelLlama(Llama):
    """A ``Llama`` after ``apply``: ``forward(ids, labels)`` takes this rank's tokens and its
    *already shifted* targets (``split``'s); logits are this rank's (B, t, V), the loss the
    mean over the whole cp group."""

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> Output:
        self._check(input_ids, labels)
        t = input_ids.shape[1]
        if t * self.cp > self.shape.max_seq_len:
            raise ValueError(f"seq = cp·{t} = {t * self.cp} tokens is more than "
                             f"max_seq_len={self.shape.max_seq_len}")
        if self.cp_layout == "zigzag" and t % 2:
            raise ValueError(f"seq must be a multiple of 2·cp = {2 * self.cp} for the zigzag "
                             f"layout: each rank holds two equal chunks, got {t} tokens here")
        logits = self.lm_head(self.model(input_ids))
        loss = None if labels is None else cp_loss(logits, labels, self.cp_group)
        return Output(logits, loss)


def apply(model: Llama, group=None, method: str = "ring",
          layout: str = "zigzag") -> ContextParallelLlama:
    """Make ``model`` (a single-process ``Llama``) context parallel over ``group``, in place:
    every attention core becomes ``method`` ("ring" or "ulysses") over the group, RoPE takes
    global positions of ``layout`` ("zigzag" or "contiguous"). Weights stay whole (replicated);
    after backward, ``sum_grads(model, group)`` makes them the single process's gradients."""
    check.module("model", model, Llama)
    if isinstance(model, ContextParallelLlama):
        raise ValueError("model must be a single-process Llama, got one already context parallel")
    check.one_of("method", method, METHODS)
    check.one_of("layout", layout, LAYOUTS)
    n, _ = _size_rank(group)
    if method == "ulysses":
        for field in ("num_heads", "num_kv_heads"):
            if getattr(model.shape, field) % n:
                raise ValueError(f"cp must divide {field}={getattr(model.shape, field)} for "
                                 f"Ulysses (whole heads per rank), got cp={n}")
    for layer in model.model.layers:
        attn = layer.self_attn
        attn.__class__ = ContextParallelAttention
        attn.cp_group, attn.cp_size, attn.cp_method, attn.cp_layout = group, n, method, layout
    model.model.rotary_emb = ContextParallelRotary(model.model.rotary_emb, group, layout)
    model.__class__ = ContextParallelLlama
    model.cp_group, model.cp, model.cp_method, model.cp_layout = group, n, method, layout
    return model


def split(input_ids: torch.Tensor, labels: torch.Tensor | None, cp: int, rank: int,
          layout: str = "zigzag") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rank ``rank``'s tokens of a (B, T) batch and their targets: labels shifted by one first
    (position t's target is labels[t+1], -100 at the end, as ``Llama`` shifts inside), then cut
    like the tokens. ValueError naming seq when the layout cannot cut T."""
    check.tensor("input_ids", input_ids, dim=2)
    idx = torch.tensor(positions(input_ids.shape[1], cp, rank, layout))
    ids = input_ids.index_select(1, idx)
    if labels is None:
        return ids, None
    if labels.shape != input_ids.shape:
        raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, "
                         f"got {tuple(labels.shape)}")
    shifted = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], 1)
    return ids, shifted.index_select(1, idx)


def gather(x: torch.Tensor, group=None, layout: str = "zigzag", dim: int = 1) -> torch.Tensor:
    """Every rank's shard of the sequence (along ``dim``) put back in position order: one
    all-gather (tag cp-gather), then the layout undone. Not differentiable (for checking)."""
    check.one_of("layout", layout, LAYOUTS)
    n, _ = _size_rank(group)
    x = x.detach().movedim(dim, 0).contiguous()
    out = x.new_empty((n * x.shape[0], *x.shape[1:]))
    comm.all_gather(out, x, group=group, tag=GATHER)
    every = torch.tensor([p for j in range(n) for p in positions(n * x.shape[0], n, j, layout)])
    return out.index_select(0, torch.argsort(every)).movedim(0, dim)


@torch.no_grad()
def sum_grads(model: nn.Module, group=None) -> None:
    """Each parameter's gradient summed over ``group`` in place (tag cp-grads): every rank saw
    only its tokens, the weights saw them all."""
    for p in model.parameters():
        if p.grad is not None:
            comm.all_reduce(p.grad, "sum", group=group, tag=GRADS)

