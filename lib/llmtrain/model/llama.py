"""A from-scratch reference LLaMA, read top to bottom (LLaMA 模型结构).

One decoder layer is  X = X + MHA(RMSNorm(X));  X = X + MLP(RMSNorm(X)),  stacked L times
between a token embedding and a final RMSNorm + output projection. Everything is sized by
a ``ModelShape`` (see ``shapes.py``). The module names are exactly those of transformers'
``LlamaForCausalLM`` (and ``Qwen2ForCausalLM`` for shapes with q/k/v biases), so the two
load each other's ``state_dict`` with ``strict=True``:

    model.embed_tokens.weight
    model.layers.{i}.self_attn.{q,k,v,o}_proj.weight (+ .bias)
    model.layers.{i}.mlp.{gate,up,down}_proj.weight (+ .bias)
    model.layers.{i}.{input,post_attention}_layernorm.weight
    model.norm.weight
    lm_head.weight              (the same tensor as model.embed_tokens.weight when tied)

Checked against transformers in tests/test_llama.py (logits, loss, keys, parameter counts).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import check
from .shapes import ATTN_IMPLS, ModelShape
from .shapes import resolve

__all__ = ["Llama", "LlamaModel", "DecoderLayer", "Attention", "MLP", "RMSNorm",
           "RotaryEmbedding", "Output", "causal_lm_loss", "ATTN_IMPLS"]


class RMSNorm(nn.Module):
    """RMSNorm(x) = x / RMS(x) · γ, with RMS(x) = sqrt(mean(x²) + eps); computed in fp32
    (16-bit inputs are upcast, as transformers does; a float64 model stays float64)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))  # γ
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(upcast(x.dtype))
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def upcast(dtype: torch.dtype) -> torch.dtype:
    """The dtype norms, softmax and the loss are computed in: fp32 for fp32 and 16-bit models,
    float64 for float64 models (so a float64 model is float64 end to end)."""
    return torch.promote_types(dtype, torch.float32)


class RotaryEmbedding(nn.Module):
    """RoPE: rotate each pair (x_i, x_{i+d/2}) of a head by the angle t·θ^(-2i/d)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        # Not a parameter and not saved: recomputed by reset() (e.g. after to_empty()).
        self.register_buffer("inv_freq", torch.empty(head_dim // 2), persistent=False)
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        """Fill inv_freq_i = 1 / θ^(2i/d), i = 0 .. d/2-1 (same arithmetic as transformers)."""
        d = self.head_dim
        self.inv_freq.copy_(1.0 / (self.theta ** (torch.arange(0, d, 2, dtype=torch.float) / d)))

    def forward(self, T: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the angles for positions 0..T-1, each (T, d)."""
        t = torch.arange(T, device=self.inv_freq.device, dtype=torch.float)
        freqs = t[:, None] * self.inv_freq[None, :]  # (T, d/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, d): angle for x_i and x_{i+d/2}
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys (B, heads, T, d) by the position angles: x·cos + rot(x)·sin."""
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    """Causal multi-head attention with grouped key/value heads (GQA when N_kv < N)."""

    def __init__(self, shape: ModelShape, attn_impl: str = "sdpa"):
        super().__init__()
        H = shape.hidden_size
        self.n_heads, self.n_kv_heads, self.d = shape.num_heads, shape.num_kv_heads, shape.d_head
        self.attn_impl = attn_impl
        self.q_proj = nn.Linear(H, shape.q_size, bias=shape.attention_bias)  # W^Q
        self.k_proj = nn.Linear(H, shape.kv_size, bias=shape.attention_bias)  # W^K
        self.v_proj = nn.Linear(H, shape.kv_size, bias=shape.attention_bias)  # W^V
        self.o_proj = nn.Linear(shape.q_size, H, bias=shape.o_bias)  # W^O
        self.qkv_proj = None  # or [W^Q W^K W^V] in one matmul (tensor parallelism's fused path)
        self.recompute_core = False  # set by llmtrain.recompute.apply(model, "selective")

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # Q = XW^Q, K = XW^K, V = XW^V
        if self.qkv_proj is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:  # fused: one matmul, its output cut into Q, K, V
            kv = self.n_kv_heads * self.d
            q, k, v = self.qkv_proj(x).split([self.n_heads * self.d, kv, kv], dim=-1)
        B, T, _ = q.shape
        # split into heads: (B, heads, T, d)
        q = q.view(B, T, self.n_heads, self.d).transpose(1, 2)
        k = k.view(B, T, self.n_kv_heads, self.d).transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.d).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.recompute_core:  # selective recomputation: keep q, k, v; redo the rest in backward
            y = checkpoint(self.core, q, k, v, use_reentrant=False)
        else:
            y = self.core(q, k, v)
        # MHA = Concat(head_1, ..., head_N) W^O
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.d))

    def core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(QKᵀ/√d + causal mask) V for q (B, N, T, d) and k, v (B, N_kv, T, d)."""
        T = q.shape[2]
        # GQA: each group of N/N_kv query heads shares one key/value head.
        k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        if self.attn_impl == "sdpa":  # one fused call, same math as below
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        # eager: the explicit softmax, in fp32 (float64 for a float64 model)
        scores = (q @ k.transpose(-2, -1)) * self.d ** -0.5  # (B, N, T, T)
        future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
        return F.softmax(scores, dim=-1, dtype=upcast(q.dtype)).to(q.dtype) @ v


class MLP(nn.Module):
    """SwiGLU feed-forward: G = XW^G, U = XW^U, D = Swish(G) ⊙ U, out = DW^D."""

    def __init__(self, shape: ModelShape):
        super().__init__()
        H, Hff, bias = shape.hidden_size, shape.intermediate_size, shape.mlp_bias
        self.gate_proj = nn.Linear(H, Hff, bias=bias)  # W^G
        self.up_proj = nn.Linear(H, Hff, bias=bias)  # W^U
        self.down_proj = nn.Linear(Hff, H, bias=bias)  # W^D
        self.gate_up_proj = None  # or [W^G W^U] in one matmul (tensor parallelism's fused path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is None:
            gate, up = self.gate_proj(x), self.up_proj(x)
        else:  # fused: one matmul, its output cut in two halves
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)  # Swish = SiLU


class DecoderLayer(nn.Module):
    """Pre-norm block: X += MHA(RMSNorm(X)); X += MLP(RMSNorm(X))."""

    def __init__(self, shape: ModelShape, attn_impl: str = "sdpa"):
        super().__init__()
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.norm_eps)
        self.self_attn = Attention(shape, attn_impl)
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.norm_eps)
        self.mlp = MLP(shape)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """Token embedding, L decoder layers and the final RMSNorm: ids (B, T) -> (B, T, H)."""

    def __init__(self, shape: ModelShape, attn_impl: str = "sdpa"):
        super().__init__()
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(shape, attn_impl) for _ in range(shape.num_layers))
        self.norm = RMSNorm(shape.hidden_size, shape.norm_eps)
        self.rotary_emb = RotaryEmbedding(shape.d_head, shape.rope_theta)  # no parameters
        # Activation recomputation (notebook 09), set by llmtrain.recompute.apply: each range
        # of layers keeps only its input in forward and is run again in backward.
        self.recompute_segments: list[range] = []

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb(input_ids.shape[1], x.dtype)
        segments = {seg.start: seg for seg in self.recompute_segments}
        i = 0
        while i < len(self.layers):
            if i in segments:  # one checkpoint around the whole segment
                seg = segments[i]
                x = checkpoint(self.run_layers, x, cos, sin, seg, use_reentrant=False)
                i = seg.stop
            else:
                x = self.layers[i](x, cos, sin)
                i += 1
        return self.norm(x)

    def run_layers(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   layers: range) -> torch.Tensor:
        """Run the decoder layers with the given indices, in order."""
        for i in layers:
            x = self.layers[i](x, cos, sin)
        return x


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor,
                   reduction: str = "mean") -> torch.Tensor:
    """Cross entropy of position t's logits against labels[:, t+1] (tokens labelled -100 left
    out), in fp32 (float64 for a float64 model); ``reduction`` "mean" or "sum" over tokens."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).to(upcast(logits.dtype)),
                           labels[:, 1:].flatten(), ignore_index=-100, reduction=reduction)


class Output(NamedTuple):
    """What ``Llama.forward`` returns: logits (B, T, V) and the mean loss (None without labels)."""

    logits: torch.Tensor
    loss: torch.Tensor | None


class Llama(nn.Module):
    """LLaMA for causal language modelling, built from a ``ModelShape``.

    ``attn_impl`` is ``"sdpa"`` (torch's fused scaled_dot_product_attention) or ``"eager"``
    (the explicit softmax, as in the chapter). Weights are drawn by ``init_weights`` from
    torch's global RNG, so ``torch.manual_seed`` makes them reproducible. Building under
    ``with torch.device("meta"):`` allocates nothing; after ``to_empty(device=...)`` call
    ``init_weights()`` to fill the weights and the RoPE buffer.
    """

    def __init__(self, shape: ModelShape, attn_impl: str = "sdpa"):
        super().__init__()
        shape = resolve(shape, "shape")  # a preset name is its ModelShape
        check.one_of("attn_impl", attn_impl, ATTN_IMPLS)
        if shape.is_mla:  # counted by cost.params, not run: this model has GQA attention only
            raise ValueError(f"shape: {shape.name!r} has multi-head latent attention "
                             "(kv_lora_rank): the reference Llama runs GQA attention only")
        if shape.is_moe and type(self) is Llama:  # its MLPs would be dense: a silent wrong model
            raise ValueError(f"shape: {shape.name!r} is a mixture of experts: build it with "
                             "llmtrain.model.moe.MoELlama (Llama builds dense models)")
        self.shape, self.attn_impl = shape, attn_impl
        self.model = LlamaModel(shape, attn_impl)
        self.lm_head = nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)  # W^out
        if shape.tie_embeddings:  # one V×H matrix for input and output, as in transformers
            self.lm_head.weight = self.model.embed_tokens.weight
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Linear and Embedding weights ~ N(0, std²), biases 0, RMSNorm γ = 1 (as transformers'
        initializer_range=0.02); also recomputes the RoPE frequencies."""
        check.positive_number("std", std)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
            elif isinstance(m, RotaryEmbedding):
                m.reset()

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> Output:
        """Logits for every position; with ``labels`` (B, T) also the causal-LM loss.

        As in transformers, labels are shifted inside: position t is scored on labels[:, t+1],
        so ``labels=input_ids`` trains next-token prediction. Cross entropy in fp32 (float64 for
        a float64 model), mean over
        the tokens whose label is not -100.
        """
        self._check(input_ids, labels)
        logits = self.lm_head(self.model(input_ids))  # (B, T, V)
        loss = None if labels is None else causal_lm_loss(logits, labels)
        return Output(logits, loss)

    def _check(self, input_ids, labels) -> None:
        """ValueError, naming the argument, for inputs forward() cannot take."""
        def desc(t):
            return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__

        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a 2-D tensor (batch, seq), got {desc(input_ids)}")
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex:
            raise ValueError(f"input_ids must hold integer token ids, got {input_ids.dtype}")
        if input_ids.shape[1] > self.shape.max_seq_len:
            raise ValueError(f"input_ids has {input_ids.shape[1]} tokens, more than "
                             f"max_seq_len={self.shape.max_seq_len}")
        if labels is not None and desc(labels) != desc(input_ids):
            raise ValueError(f"labels must have the shape of input_ids {desc(input_ids)}, "
                             f"got {desc(labels)}")
