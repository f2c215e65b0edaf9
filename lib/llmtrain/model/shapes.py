"""Model shapes: the handful of integers that fix a LLaMA-family transformer.

The chapter's symbols map to fields like this (slides, "模型参数量估计"):

    L  -> num_layers          H  -> hidden_size        H' -> intermediate_size
    N  -> num_heads           T  -> max_seq_len        V  -> vocab_size

plus what the slides leave out: ``num_kv_heads`` (GQA), ``head_dim`` (usually H/N),
tied embeddings and biases (Qwen2 puts biases on q/k/v).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .. import check
__all__ = ["ModelShape", "get", "names", "resolve", "all_names", "gpt_shape", "PRESETS", "OTHERS",
           "ALIASES", "ATTN_IMPLS"]

# How the attention core runs in the reference LLaMA: PyTorch's fused kernel, or written out
# (softmax(QKᵀ/√d)V, which saves the scores). The cost formulas take the same names.
ATTN_IMPLS = ("sdpa", "eager")


@dataclass(frozen=True)
class ModelShape:
    """Sizes of a LLaMA-family decoder (RMSNorm, RoPE, SwiGLU, optional GQA)."""

    vocab_size: int  # V
    hidden_size: int  # H
    num_layers: int  # L
    num_heads: int  # N
    num_kv_heads: int  # N_kv (= N for multi-head attention)
    intermediate_size: int  # H'
    max_seq_len: int  # T, the context window
    tie_embeddings: bool = False  # lm_head shares the input embedding matrix
    attention_bias: bool = False  # biases on q, k, v (Qwen2)
    name: str = "custom"
    head_dim: int | None = None  # None means H / N
    o_bias: bool = False  # bias on the output projection (Llama attention_bias=True)
    mlp_bias: bool = False  # biases on gate, up, down (Llama mlp_bias=True)
    norm_eps: float = 1e-6  # RMSNorm epsilon (does not change any count)
    rope_theta: float = 10000.0  # RoPE base (does not change any count)
    # --- mixture of experts (num_experts = 0: a dense model, every other MoE field unset) ---
    num_experts: int = 0  # E, routed experts per MoE layer
    experts_per_token: int = 0  # k, the router's top-k
    moe_intermediate_size: int | None = None  # one routed expert's SwiGLU width
    shared_expert_size: int = 0  # SwiGLU width of the always-on shared expert(s), 0 = none
    shared_expert_gate: bool = False  # Qwen2-MoE: sigmoid(Linear(H, 1)) scales the shared expert
    first_dense_layers: int = 0  # DeepSeek-V3's first_k_dense_replace: dense FFN (H') below
    # --- multi-head latent attention (DeepSeek-V2/V3); kv_lora_rank None = MHA/GQA ----------
    q_lora_rank: int | None = None  # query compressed to this rank first (None: full W^Q)
    kv_lora_rank: int | None = None  # width of the compressed K/V latent
    qk_rope_head_dim: int = 0  # the part of head_dim that carries RoPE (the rest does not)
    v_head_dim: int | None = None  # value head width (head_dim is the query/key width)

    def __post_init__(self) -> None:
        for f in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                  "intermediate_size", "max_seq_len"):
            check.positive_int(f, getattr(self, f))
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size} "
                    "(or give head_dim explicitly)")
        else:
            check.positive_int("head_dim", self.head_dim)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}")
        if self.d_head % 2:
            raise ValueError(f"head_dim={self.d_head} must be even (RoPE rotates pairs)")
        for f in ("tie_embeddings", "attention_bias", "o_bias", "mlp_bias"):
            check.boolean(f, getattr(self, f))
        check.positive_number("norm_eps", self.norm_eps)
        check.positive_number("rope_theta", self.rope_theta)
        if not isinstance(self.name, str):
            check.fail("name", "a string", self.name)
        self._check_moe()
        self._check_mla()

    def _check_moe(self) -> None:
        check.integer("num_experts", self.num_experts, 0)
        check.integer("shared_expert_size", self.shared_expert_size, 0)
        check.boolean("shared_expert_gate", self.shared_expert_gate)
        check.integer("first_dense_layers", self.first_dense_layers, 0, self.num_layers)
        if self.num_experts == 0:
            for f, dense in (("experts_per_token", 0), ("moe_intermediate_size", None),
                             ("shared_expert_size", 0), ("shared_expert_gate", False),
                             ("first_dense_layers", 0)):
                if getattr(self, f) != dense:
                    raise ValueError(f"{f}={getattr(self, f)!r} needs num_experts > 0 (a MoE "
                                     f"shape); a dense shape has {f}={dense!r}")
            return
        check.integer("experts_per_token", self.experts_per_token, 1, self.num_experts)
        if self.moe_intermediate_size is None:
            raise ValueError("moe_intermediate_size must be given when num_experts > 0 "
                             "(one routed expert's SwiGLU width)")
        check.positive_int("moe_intermediate_size", self.moe_intermediate_size)
        if self.shared_expert_gate and not self.shared_expert_size:
            raise ValueError("shared_expert_gate=True needs shared_expert_size > 0")
        if self.mlp_bias:
            raise ValueError("mlp_bias=True is not supported with num_experts > 0 (no MoE "
                             "model here has biases on its experts)")

    def _check_mla(self) -> None:
        check.optional(check.positive_int, "q_lora_rank", self.q_lora_rank)
        check.optional(check.positive_int, "kv_lora_rank", self.kv_lora_rank)
        check.integer("qk_rope_head_dim", self.qk_rope_head_dim, 0)
        check.optional(check.positive_int, "v_head_dim", self.v_head_dim)
        if self.kv_lora_rank is None:
            for f, unset in (("q_lora_rank", None), ("qk_rope_head_dim", 0),
                             ("v_head_dim", None)):
                if getattr(self, f) != unset:
                    raise ValueError(f"{f}={getattr(self, f)!r} needs kv_lora_rank (multi-head "
                                     f"latent attention); without it {f}={unset!r}")
            return
        if self.v_head_dim is None:
            raise ValueError("v_head_dim must be given with kv_lora_rank (MLA)")
        if not 0 < self.qk_rope_head_dim < self.d_head or self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim={self.qk_rope_head_dim} must be even and in "
                             f"(0, head_dim={self.d_head}) with kv_lora_rank (MLA)")
        if self.num_kv_heads != self.num_heads:
            raise ValueError(f"num_kv_heads={self.num_kv_heads} must equal num_heads="
                             f"{self.num_heads} with kv_lora_rank (MLA: every head has its K/V)")
        if self.attention_bias or self.o_bias:
            raise ValueError("attention_bias and o_bias must be False with kv_lora_rank (MLA)")

    # --- derived sizes -------------------------------------------------------------
    @property
    def d_head(self) -> int:
        """Width of one attention head, d (H/N unless the config says otherwise)."""
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def q_size(self) -> int:
        """Output width of the query projection, N·d (= H for most models)."""
        return self.num_heads * self.d_head

    @property
    def kv_size(self) -> int:
        """Output width of the key (and of the value) projection, N_kv·d."""
        return self.num_kv_heads * self.d_head

    @property
    def is_gqa(self) -> bool:
        return self.num_kv_heads != self.num_heads

    @property
    def is_moe(self) -> bool:
        """A mixture of experts: num_experts > 0."""
        return self.num_experts > 0

    @property
    def moe_layers(self) -> int:
        """Layers whose FFN is a MoE block: L − first_dense_layers (0 for a dense shape)."""
        return self.num_layers - self.first_dense_layers if self.is_moe else 0

    @property
    def is_mla(self) -> bool:
        """Multi-head latent attention (DeepSeek-V2/V3): kv_lora_rank is set."""
        return self.kv_lora_rank is not None

    @property
    def qk_nope_head_dim(self) -> int:
        """MLA: the part of a query/key head without RoPE, head_dim − qk_rope_head_dim."""
        return self.d_head - self.qk_rope_head_dim

    @property
    def v_dim(self) -> int:
        """Width of one value head: v_head_dim under MLA, else head_dim."""
        return self.v_head_dim if self.v_head_dim is not None else self.d_head

    def replace(self, **changes: Any) -> "ModelShape":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # --- from and to Hugging Face configs (llmtrain.model.hf_config) ----------------
    @classmethod
    def from_hf_config(cls, config: Any, name: str | None = None) -> "ModelShape":
        """Read a Llama, Mistral, Qwen2, Mixtral, Qwen2-MoE or DeepSeek-V3 config: a
        transformers config object, a dict, or a path to a ``config.json``. No network access.
        What is read and what is refused: ``llmtrain.model.hf_config``."""
        from .hf_config import shape_from_hf_config

        return shape_from_hf_config(cls, config, name)

    def to_hf_config(self, **overrides: Any):
        """The matching transformers config (Llama, Mistral, Qwen2, Mixtral, Qwen2-MoE or
        DeepSeek-V3: ``llmtrain.model.hf_config.hf_config_of``). Needs transformers; used by
        notebooks and cross-check tests."""
        from .hf_config import hf_config_of

        return hf_config_of(self, **overrides)


def _llama(name, V, H, L, N, Nkv, Hff, T, eps=1e-6, theta=10000.0):
    return ModelShape(vocab_size=V, hidden_size=H, num_layers=L, num_heads=N, num_kv_heads=Nkv,
                      intermediate_size=Hff, max_seq_len=T, name=name, norm_eps=eps,
                      rope_theta=theta)


# The slides' table (Llama, Llama 2, Llama 3) plus the released configs.json of each model.
PRESETS: dict[str, ModelShape] = {s.name: s for s in [
    _llama("llama-7b", 32000, 4096, 32, 32, 32, 11008, 2048),
    _llama("llama-13b", 32000, 5120, 40, 40, 40, 13824, 2048),
    _llama("llama-33b", 32000, 6656, 60, 52, 52, 17920, 2048),
    _llama("llama-65b", 32000, 8192, 80, 64, 64, 22016, 2048),
    _llama("llama2-7b", 32000, 4096, 32, 32, 32, 11008, 4096, eps=1e-5),
    _llama("llama2-13b", 32000, 5120, 40, 40, 40, 13824, 4096, eps=1e-5),
    _llama("llama2-70b", 32000, 8192, 80, 64, 8, 28672, 4096, eps=1e-5),
    _llama("llama3-8b", 128256, 4096, 32, 32, 8, 14336, 8192, eps=1e-5, theta=500000.0),
    _llama("llama3-70b", 128256, 8192, 80, 64, 8, 28672, 8192, eps=1e-5, theta=500000.0),
    # A toy for CPU demos and tests: same architecture, laptop size.
    _llama("tiny", 256, 64, 2, 4, 2, 176, 64),
]}


def names() -> list[str]:
    """Names of the presets."""
    return list(PRESETS)


def get(name: str) -> ModelShape:
    """A preset by name, e.g. ``get("llama-7b")``."""
    if not isinstance(name, str):
        check.fail("name", f"a preset name ({', '.join(PRESETS)})", name)
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"name: unknown model name {name!r}; known: {', '.join(PRESETS)}") from None


# --- models beyond the slides' table: the published runs the planner reproduces --------------

def gpt_shape(hidden: int, layers: int, heads: int, vocab: int, seq: int, *, name: str,
              kv_heads: int | None = None, biases: bool = True,
              tie_embeddings: bool = True) -> ModelShape:
    """A GPT-style model (LayerNorm, a non-gated MLP of 4h: GeLU, or Nemotron's squared ReLU;
    learned or rotary positions) as a ``ModelShape``, as BLOOM is below: SwiGLU with H' = ⌊8h/3⌋
    (3hH' ≈ 8h² matmul weights: the same GEMM FLOPs up to 1/(8h); the GEMMs' widths and the
    activation's bytes differ by under 1/3, which moves ``step_time`` by about 1 %), biases on
    q/k/v, o and the MLP if ``biases``. A learned position embedding (s·h parameters, no FLOPs)
    is not counted. Checked: tests/test_plan.py::test_bloom_approximation."""
    return ModelShape(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
                      num_kv_heads=kv_heads or heads, intermediate_size=8 * hidden // 3,
                      max_seq_len=seq, tie_embeddings=tie_embeddings, attention_bias=biases,
                      o_bias=biases, mlp_bias=biases, name=name)


# BLOOM-176B (bigscience train/tr11-176B-ml README): 70 layers, h 14336, 112 heads, vocabulary
# padded to 250,880, seq 2048, tied embeddings. BLOOM is not a LLaMA (ALiBi, LayerNorm, a GeLU
# MLP of 4h: 8h² weights + 5h biases): ``gpt_shape``'s SwiGLU stand-in; the count differs from
# BLOOM's by ``params.count(OTHERS["bloom-176b"]) − plan.BLOOM_176B_PARAMS``
# (−0.0010 %, tests/test_plan.py::test_bloom_approximation).
# Llama 3 405B (arXiv 2407.21783, Table 3; vocabulary 128,256 as in the released config.json,
# the paper says "128K"), seq 8,192.
# Mixtures of experts, from their released config.json files (counts: tests/test_moe_counts.py):
# Mixtral-8x7B-v0.1 (8 experts as wide as Mistral 7B's FFN, top-2; transformers' MixtralConfig
# documents that checkpoint); DeepSeek-V3 (deepseek-ai/DeepSeek-V3 inference/configs/
# config_671B.json @9b4e978, with the Hugging Face config.json's 163,840 positions, ε and θ:
# 256 routed experts of 2048, top-8, one shared expert, 3 dense layers first, MLA); Qwen1.5-MoE-
# A2.7B (transformers' Qwen2MoeConfig defaults, documented as that checkpoint: 60 experts of
# 1408, top-4, a gated shared expert of 5632).
OTHERS: dict[str, ModelShape] = {
    "bloom-176b": gpt_shape(14336, 70, 112, 250880, 2048, name="bloom-176b"),
    "llama3-405b": _llama("llama3-405b", 128256, 16384, 126, 128, 8, 53248, 8192, eps=1e-5,
                          theta=500000.0),
    "mixtral-8x7b": _llama("mixtral-8x7b", 32000, 4096, 32, 32, 8, 14336, 32768, eps=1e-5,
                           theta=1e6).replace(num_experts=8, experts_per_token=2,
                                              moe_intermediate_size=14336),
    "deepseek-v3": _llama("deepseek-v3", 129280, 7168, 61, 128, 128, 18432, 163840).replace(
        num_experts=256, experts_per_token=8, moe_intermediate_size=2048,
        shared_expert_size=2048, first_dense_layers=3, q_lora_rank=1536, kv_lora_rank=512,
        head_dim=128 + 64, qk_rope_head_dim=64, v_head_dim=128),
    "qwen1.5-moe-a2.7b": _llama("qwen1.5-moe-a2.7b", 151936, 2048, 24, 16, 16, 5632, 32768,
                                theta=1e6).replace(
        attention_bias=True, num_experts=60, experts_per_token=4, moe_intermediate_size=1408,
        shared_expert_size=5632, shared_expert_gate=True),
}
ALIASES = {"llama-70b": "llama2-70b"}  # the first LLaMA family with a 70B


def all_names() -> list[str]:
    """Every name ``resolve`` accepts: the presets, the other models, the aliases."""
    return [*PRESETS, *OTHERS, *ALIASES]


def resolve(model: Any, name: str = "model") -> ModelShape:
    """The one place a model name becomes a ``ModelShape`` (a ``ModelShape`` is returned as is).

    Called at the boundary (the CLI, the widgets, ``Llama``, ``memory.estimate``,
    ``plan.search``, ``headlines.fit`` and the other functions a notebook calls with a name);
    the functions they call take the resolved shape. ``name``: the argument an error names; an
    unknown name is refused with the list of names.
    """
    if isinstance(model, ModelShape):
        return model
    if isinstance(model, str):
        key = ALIASES.get(model, model)
        if key in PRESETS:
            return PRESETS[key]
        if key in OTHERS:
            return OTHERS[key]
        raise ValueError(f"{name}: unknown model name {model!r}; known: {', '.join(all_names())}")
    check.fail(name, f"a ModelShape or a preset name ({', '.join(all_names())})", model)

