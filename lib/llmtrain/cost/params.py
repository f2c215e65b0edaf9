"""Parameter counts of LLaMA-family models (slides: 模型参数量估计).

The slides count

    P = 2VH + H + L(4H² + 3HH' + 2H)
        ─┬─   ┬    ─┬─   ─┬──   ┬
    embed+out │  attention │  2 norms per layer
          final norm      SwiGLU FFN

which is exact for multi-head attention. With grouped-query attention (GQA) the key and
value projections are H × (N_kv·d) with d = H/N, so the attention term becomes
2H² + 2H²·N_kv/N. Tied embeddings drop one VH; Qwen2's q/k/v biases add H + 2d·N_kv per
layer. ``count`` is the integer truth for any ``ModelShape``; ``formula`` is the same thing
as a SymPy expression built term by term; tests check both against transformers' models.

A mixture of experts (``shape.is_moe``) holds E routed experts per MoE layer but sends each
token to k of them: ``count`` is the total (every expert), ``active`` what one token uses (k
routed experts, the router, the shared expert, and everything outside the MoE blocks), as
DeepSeek-V3's "671B total, 37B activated" counts. Multi-head latent attention (DeepSeek-V2/V3)
is counted by its low-rank factors (``attention_matmul_params``). Checked against transformers'
Mixtral, Qwen2-MoE and DeepSeek-V2/V3 models: tests/test_moe_counts.py.
"""

from __future__ import annotations

from .. import check
from ..model.shapes import ModelShape
from ..model.shapes import resolve

__all__ = ["count", "active", "breakdown", "active_breakdown", "attention_matmul_params",
           "describe", "terms", "formula", "symbols", "subs", "slides_count", "moe_symbols",
           "moe_terms", "moe_subs", "COMPONENTS", "MOE_COMPONENTS"]

COMPONENTS = ("embedding", "attention", "mlp", "norms", "lm_head")
# a mixture of experts' breakdown: "mlp" is then the dense layers' FFN (first_dense_layers)
MOE_COMPONENTS = ("embedding", "attention", "mlp", "router", "shared", "experts", "norms",
                  "lm_head")


def attention_matmul_params(shape: ModelShape) -> int:
    """One layer's attention weights that take part in matmuls (no biases, no norms).

    GQA: H·Nd (W^Q) + 2H·N_kv·d (W^K, W^V) + Nd·H (W^O). Multi-head latent attention
    (DeepSeek-V2/V3; d_qk = head_dim, d_v = v_head_dim, r_q, r_kv the ranks, d_R the RoPE part):
    H·r_q + r_q·N·d_qk (or H·N·d_qk without r_q) + H·(r_kv + d_R) + r_kv·N·(d_qk − d_R + d_v)
    + N·d_v·H. Source: DeepSeek-V2 report §2.1 (MLA); measured equal to transformers'
    DeepseekV3ForCausalLM: tests/test_moe_counts.py::test_deepseek_v3_full_config_equals_transformers.
    """
    shape = resolve(shape, "shape")
    H, N = shape.hidden_size, shape.num_heads
    if not shape.is_mla:
        q, kv = shape.q_size, shape.kv_size
        return H * q + 2 * H * kv + q * H
    dqk, dv, rkv = shape.d_head, shape.v_dim, shape.kv_lora_rank
    rq = shape.q_lora_rank
    q = H * N * dqk if rq is None else H * rq + rq * N * dqk
    kv = H * (rkv + shape.qk_rope_head_dim) + rkv * N * (shape.qk_nope_head_dim + dv)
    return q + kv + N * dv * H


def breakdown(shape: ModelShape) -> dict[str, int]:
    """Parameters per component (ints). Sums to ``count(shape)``.

    embedding VH · attention L(H·Nd + 2H·N_kv·d + Nd·H + biases) · mlp L·3HH' (+ biases)
    · norms (2L+1)H · lm_head VH, or 0 when tied. Source: slides; measured equal to
    transformers' LlamaForCausalLM/Qwen2ForCausalLM, see tests/test_params.py.

    A mixture of experts (``shape.is_moe``; keys ``MOE_COMPONENTS``), L_moe = L − first_dense
    layers: mlp first_dense·3HH' · router L_moe·EH · shared L_moe·(3H·H_s + H if gated) ·
    experts L_moe·E·3H·H_e. Multi-head latent attention: ``attention_matmul_params`` plus its two
    norms (r_q + r_kv) per layer, counted in attention. The router's bias for choosing (DeepSeek-
    V3's e_score_correction_bias) is a buffer in transformers, not counted. Measured equal to
    transformers' Mixtral, Qwen2-MoE and DeepSeek-V3: tests/test_moe_counts.py.
    """
    shape = resolve(shape, "shape")
    H, V, L, Hff = shape.hidden_size, shape.vocab_size, shape.num_layers, shape.intermediate_size
    q, kv = shape.q_size, shape.kv_size
    attn = attention_matmul_params(shape)  # W^Q, W^K, W^V, W^O (MLA: its low-rank factors)
    if shape.is_mla:
        attn += (shape.q_lora_rank or 0) + shape.kv_lora_rank  # q_a_layernorm, kv_a_layernorm
    if shape.attention_bias:
        attn += q + 2 * kv
    if shape.o_bias:
        attn += H
    mlp = 3 * H * Hff  # W^G, W^U, W^D
    if shape.mlp_bias:
        mlp += 2 * Hff + H
    parts = {"embedding": V * H, "attention": L * attn, "mlp": (L - shape.moe_layers) * mlp}
    if shape.is_moe:
        Lm, E = shape.moe_layers, shape.num_experts
        shared = 3 * H * shape.shared_expert_size + (H if shape.shared_expert_gate else 0)
        parts.update(router=Lm * E * H, shared=Lm * shared,
                     experts=Lm * E * 3 * H * shape.moe_intermediate_size)
    parts.update(norms=(2 * L + 1) * H, lm_head=0 if shape.tie_embeddings else V * H)
    return parts


def count(shape: ModelShape) -> int:
    """Total number of parameters: sum of ``breakdown(shape)`` (a MoE: every expert).

    Checked against transformers' numel: tests/test_params.py::test_presets_equal_transformers,
    tests/test_moe_counts.py (Mixtral, Qwen2-MoE, DeepSeek-V3)."""
    return sum(breakdown(shape).values())


def active_breakdown(shape: ModelShape) -> dict[str, int]:
    """``breakdown`` of the parameters one token uses: the same, but k of the E routed experts
    (experts L_moe·k·3H·H_e); the router, the shared expert, attention, embedding and lm_head
    all count, as DeepSeek-V3's 37B activated does (README_WEIGHTS.md: "including 0.9B for
    Embedding and 0.9B for the output Head"). Equal to ``breakdown`` for a dense shape.
    Checked: tests/test_moe_counts.py (Mixtral's 12.9B, DeepSeek-V3's 37B)."""
    parts = breakdown(shape)
    shape = resolve(shape, "shape")
    if shape.is_moe:
        parts["experts"] = (shape.moe_layers * shape.experts_per_token * 3 * shape.hidden_size
                            * shape.moe_intermediate_size)
    return parts


def active(shape: ModelShape) -> int:
    """Parameters one token uses (sum of ``active_breakdown``): ``count`` − the routed experts
    it is not sent to. Checked: tests/test_moe_counts.py::test_published_totals_and_active."""
    return sum(active_breakdown(shape).values())


def slides_count(shape: ModelShape) -> int:
    """The slides' formula 2VH + H + L(4H² + 3HH' + 2H), whatever the shape really is.

    Right for MHA without biases or tied embeddings; it ignores N_kv, so it overcounts GQA.
    """
    shape = resolve(shape, "shape")
    V, H, L, Hff = shape.vocab_size, shape.hidden_size, shape.num_layers, shape.intermediate_size
    return 2 * V * H + H + L * (4 * H * H + 3 * H * Hff + 2 * H)


def describe(shape: ModelShape) -> str:
    """A small table: the total, each component with its share, and the slides' formula
    where it disagrees; for a mixture of experts also the active parameters per token (a
    second column). Printed by ``llmtrain params`` and by the notebooks."""
    shape = resolve(shape, "shape")
    parts = breakdown(shape)
    total = sum(parts.values())
    if shape.is_moe:
        used = active_breakdown(shape)
        act = sum(used.values())
        rows = [f"{shape.name}: {total:,} parameters ({_short(total)}), {act:,} active per "
                f"token ({_short(act)}: {shape.experts_per_token} of {shape.num_experts} routed "
                f"experts in {shape.moe_layers} MoE layers)",
                f"  {'':<10} {'total':>16}  {'':>7}  {'active':>16}"]
        for k, v in parts.items():
            rows.append(f"  {k:<10} {v:>16,}  {100 * v / total:5.1f} %  {used[k]:>16,}")
        return "\n".join(rows)
    rows = [f"{shape.name}: {total:,} parameters ({_short(total)})"]
    for k, v in parts.items():
        rows.append(f"  {k:<10} {v:>16,}  {100 * v / total:5.1f} %")
    slides = slides_count(shape)
    if slides != total and not shape.is_mla:
        rows.append(f"  (the slides' 2VH + H + L(4H² + 3HH' + 2H) gives {slides:,}: "
                    f"{slides - total:+,}; it assumes N_kv = N, untied embeddings, no biases)")
    return "\n".join(rows)


def _short(n: int) -> str:
    """6.74 B, 1.24 M, 912 K: the count in the largest unit (10⁹, 10⁶, 10³) it reaches."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n}"


# --- symbolic -----------------------------------------------------------------------

def symbols() -> dict:
    """The chapter's symbols as SymPy positive integers: V, H, H' (key "Hp"), L, N, N_kv."""
    import sympy as sp

    names = {"V": "V", "H": "H", "Hp": "H'", "L": "L", "N": "N", "N_kv": "N_kv"}
    return {k: sp.Symbol(v, positive=True, integer=True) for k, v in names.items()}


def terms(*, gqa: bool = False, tied: bool = False, bias: bool = False) -> dict:
    """One SymPy term per component, as the slides add them up.

    ``gqa``: keys/values use N_kv heads of width d = H/N (the slides assume N_kv = N).
    ``tied``: the output layer reuses the input embedding. ``bias``: q/k/v biases (Qwen2).
    """
    s = symbols()
    V, H, Hp, L, N, Nkv = s["V"], s["H"], s["Hp"], s["L"], s["N"], s["N_kv"]
    kv = H / N * Nkv if gqa else H  # width of the K (and V) projection output
    attn = H * H + 2 * H * kv + H * H
    if bias:
        attn += H + 2 * kv
    return {
        "embedding": V * H,
        "attention": L * attn,
        "mlp": L * 3 * H * Hp,
        "norms": (2 * L + 1) * H,
        "lm_head": 0 if tied else V * H,
    }


def formula(*, gqa: bool = False, tied: bool = False, bias: bool = False):
    """The total count as a SymPy expression over V, H, H', L, N, N_kv (sum of ``terms``).

    With the defaults it is the slides' 2VH + H + L(4H² + 3HH' + 2H).
    """
    for name, value in (("gqa", gqa), ("tied", tied), ("bias", bias)):
        check.boolean(name, value)
    return sum(terms(gqa=gqa, tied=tied, bias=bias).values())


def subs(shape: ModelShape) -> dict:
    """Substitution dict {symbol: value} for a shape, for ``formula(...).subs(subs(shape))``.

    Checked: tests/test_params.py::test_formula_with_gqa_equals_count."""
    shape = resolve(shape, "shape")
    s = symbols()
    values = {"V": shape.vocab_size, "H": shape.hidden_size, "Hp": shape.intermediate_size,
              "L": shape.num_layers, "N": shape.num_heads, "N_kv": shape.num_kv_heads}
    return {s[k]: v for k, v in values.items()}


def moe_symbols() -> dict:
    """A mixture of experts' symbols as SymPy positive integers: E, k, H_e, H_s, L_moe (MoE
    layers), with H the hidden size as in ``symbols``. Checked:
    tests/test_moe_counts.py::test_moe_terms_equal_breakdown."""
    import sympy as sp

    names = {"E": "E", "k": "k", "H_e": "H_e", "H_s": "H_s", "L_moe": "L_moe"}
    return {k: sp.Symbol(v, positive=True, integer=True) for k, v in names.items()}


def moe_terms(*, active: bool = False, gated: bool = False) -> dict:
    """The MoE blocks' SymPy terms: router L_moe·E·H, shared L_moe·(3H·H_s [+ H if gated]),
    experts L_moe·E·3H·H_e, or with ``active`` L_moe·k·3H·H_e (what one token uses).
    Source: the DeepSeekMoE layer of the DeepSeek-V3 report §2.1.2 (shared + routed experts);
    checked: tests/test_moe_counts.py::test_moe_terms_equal_breakdown."""
    check.boolean("active", active)
    check.boolean("gated", gated)
    s, m = symbols(), moe_symbols()
    H, E, Lm = s["H"], m["E"], m["L_moe"]
    return {"router": Lm * E * H,
            "shared": Lm * (3 * H * m["H_s"] + (H if gated else 0)),
            "experts": Lm * (m["k"] if active else E) * 3 * H * m["H_e"]}


def moe_subs(shape: ModelShape) -> dict:
    """``subs(shape)`` plus the MoE symbols' values, for ``moe_terms(...)``.

    Checked: tests/test_moe_counts.py::test_moe_terms_equal_breakdown."""
    shape = resolve(shape, "shape")
    if not shape.is_moe:
        raise ValueError(f"shape must be a mixture of experts (num_experts > 0), got "
                         f"{shape.name!r} with num_experts=0")
    m = moe_symbols()
    values = {"E": shape.num_experts, "k": shape.experts_per_token,
              "H_e": shape.moe_intermediate_size, "H_s": shape.shared_expert_size,
              "L_moe": shape.moe_layers}
    return {**subs(shape), **{m[k]: v for k, v in values.items()}}
