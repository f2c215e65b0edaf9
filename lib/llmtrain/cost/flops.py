"""Training FLOPs of the reference LLaMA, exactly as torch's FlopCounterMode counts them
(the chapter's 6P rule of thumb, 计算量估计).

FlopCounterMode counts matrix products only: 2·m·n·k for an (m×k)(k×n) product; the bias of
``addmm`` and every elementwise op count 0. For one step on B sequences of T tokens, with
P_mm = L(2H·Nd + 2H·N_kv·d + 3HH') + VH the weights that take part in matmuls:

    forward          2·P_mm·BT +  4·BT²·Nd·L   (QKᵀ and softmax·V, eager and SDPA alike)
    backward, eager  4·P_mm·BT +  8·BT²·Nd·L
    backward, SDPA   4·P_mm·BT + 10·BT²·Nd·L   (the fused backward recomputes QKᵀ)

so a step is 6·P_mm·BT + 12·BT²·Nd·L (eager) or + 14·BT²·Nd·L (SDPA); the causal mask is
never discounted. Recomputation adds forward work during backward (``recompute_flops``).
The count these formulas equal is ``llmtrain.measure.flops.measured_flops`` (tests/test_flops.py).

Papers count a step differently (6PT, Kaplan, PaLM, Narayanan, causal, MFU vs HFU):
``CONVENTIONS`` names each with its formula and source, ``restate_mfu`` converts an MFU
between them, ``conventions_table`` lists them all for one shape.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from .. import check
from ..model.recompute import STRATEGIES, segments
from ..model.shapes import ATTN_IMPLS, ModelShape, resolve
from . import params

__all__ = ["STRATEGIES", "matmul_params", "forward_flops", "backward_flops", "recompute_flops",
           "training_flops", "six_p_tokens", "rule_of_thumb_error", "non_embedding_params",
           "Convention", "CONVENTIONS", "convention_flops", "restate_mfu", "conventions_table"]



# --- formulas -----------------------------------------------------------------------

def _check(shape, batch, seq, attention="eager", recompute="none", k=None) -> ModelShape:
    """The shape (a preset name resolved), after checking every argument."""
    shape = resolve(shape, "shape")
    check.positive_int("batch", batch)
    check.positive_int("seq", seq)
    check.one_of("attention", attention, ATTN_IMPLS)
    check.one_of("recompute", recompute, STRATEGIES)
    segments(shape.num_layers, recompute, k)  # ValueError naming k when k does not fit
    return shape


def _layer_params(shape: ModelShape, layer: int = 0) -> int:
    """Matmul weights one token meets in decoder layer ``layer``: attention
    (``params.attention_matmul_params``) + the dense FFN 3HH', or in a MoE layer the router EH,
    k routed experts k·3H·H_e, the shared expert 3H·H_s and its gate H."""
    attn = params.attention_matmul_params(shape)
    H = shape.hidden_size
    if layer < shape.num_layers - shape.moe_layers:
        return attn + 3 * H * shape.intermediate_size
    return (attn + shape.num_experts * H
            + 3 * H * (shape.experts_per_token * shape.moe_intermediate_size
                       + shape.shared_expert_size)
            + (H if shape.shared_expert_gate else 0))


def matmul_params(shape: ModelShape) -> int:
    """P_mm = L(2H·Nd + 2H·N_kv·d + 3HH') + VH: weights that take part in matmuls (lm_head
    yes, even when tied; input embedding, norms and biases no). Source: facts §3; measured:
    see tests/test_flops.py::test_matmul_params. A mixture of experts: the ACTIVE matmul
    weights, each layer's ``_layer_params`` (router, k routed experts, shared expert) summed,
    + VH; multi-head latent attention: its low-rank factors. Measured equal to FlopCounterMode
    on transformers' Mixtral, Qwen2-MoE and DeepSeek-V3: tests/test_moe_counts.py."""
    shape = _check(shape, 1, 1)
    return (sum(n * _layer_params(shape, i) for i, n in _layer_kinds(shape).items())
            + shape.vocab_size * shape.hidden_size)


def _layer_kinds(shape: ModelShape) -> dict[int, int]:
    """{first layer of a kind: how many}: the dense layers, then the MoE layers (same sums
    as looping over all L layers, in two terms)."""
    dense = shape.num_layers - shape.moe_layers
    return {i: n for i, n in ((0, dense), (dense, shape.moe_layers)) if n}


def _core_flops(shape: ModelShape, batch: int, seq: int) -> int:
    """One layer's attention core, forward: 2·BT²·Nd (QKᵀ) + 2·BT²·Nd (softmax·V); with MLA's
    value width d_v: 2·BT²·N·(d + d_v)."""
    return 2 * batch * seq * seq * shape.num_heads * (shape.d_head + shape.v_dim)


def _qk_flops(shape: ModelShape, batch: int, seq: int) -> int:
    """One layer's QKᵀ, forward: 2·BT²·Nd."""
    return 2 * batch * seq * seq * shape.q_size


def forward_flops(shape: ModelShape, batch: int, seq: int) -> int:
    """2·P_mm·BT + 4·BT²·Nd·L, eager and SDPA alike. Source: Kaplan et al. 2020 (2P per
    token), attention term as in Narayanan et al. 2021 (arXiv 2104.04473, FLOPs appendix);
    measured: see tests/test_flops.py::test_reference_llama_matches_counter (MoE, MLA:
    tests/test_moe_counts.py)."""
    shape = _check(shape, batch, seq)
    return (2 * matmul_params(shape) * batch * seq
            + shape.num_layers * _core_flops(shape, batch, seq))


def backward_flops(shape: ModelShape, batch: int, seq: int, *, attention: str = "eager") -> int:
    """4·P_mm·BT + 8·BT²·Nd·L (eager) or + 10·BT²·Nd·L (SDPA: its backward recomputes
    QKᵀ), without recomputation. Source: Narayanan et al. 2021 (backward = 2 × forward), torch's
    sdpa_backward_flop_count; measured: see
    tests/test_flops.py::test_reference_llama_matches_counter."""
    shape = _check(shape, batch, seq, attention)
    core = 2 * _core_flops(shape, batch, seq)
    if attention == "sdpa":
        core += _qk_flops(shape, batch, seq)
    return 4 * matmul_params(shape) * batch * seq + shape.num_layers * core


def recompute_flops(shape: ModelShape, batch: int, seq: int, *, attention: str = "eager",
                    recompute: str = "none", k: int | None = None,
                    early_stop: bool = True) -> int:
    """Forward work redone in backward by ``llmtrain.recompute.apply(model, recompute, k)``.

    Each checkpointed segment of n layers: n·(2·P_layer·BT + 4·BT²·Nd), minus 2·BT·HH' with
    early stop (torch's default: recomputation stops at the last saved tensor, the input of
    the segment's last down_proj, so that matmul never runs again). Selective: 4·BT²·Nd per
    layer; eager with early stop 2·BT²·Nd (softmax·V is the core's last op). Source: Chen et
    al. 2016, Korthikanti et al., MLSys 2023; measured (with and without early stop): see
    tests/test_flops.py::test_reference_llama_matches_counter. A segment ending in a MoE layer
    with early stop is refused (its last matmul depends on the routing: not modelled).
    """
    shape = _check(shape, batch, seq, attention, recompute, k)
    check.boolean("early_stop", early_stop)
    core = _core_flops(shape, batch, seq)
    if recompute == "selective":
        if early_stop and attention == "eager":
            core = _qk_flops(shape, batch, seq)
        return shape.num_layers * core
    dense = shape.num_layers - shape.moe_layers
    total = 0
    for seg in segments(shape.num_layers, recompute, k):
        if early_stop and seg[-1] >= dense:
            raise ValueError(f"early_stop=True is not modelled for a segment ending in a MoE "
                             f"layer (layer {seg[-1]} of {shape.name}): pass early_stop=False")
        total += sum(2 * _layer_params(shape, i) * batch * seq + core for i in seg)
        if early_stop:
            total -= 2 * batch * seq * shape.hidden_size * shape.intermediate_size
    return total


def training_flops(shape: ModelShape, batch: int, seq: int, *, attention: str = "eager",
                   recompute: str = "none", k: int | None = None, backward: bool = True,
                   early_stop: bool = True) -> int:
    """Forward + backward (+ recomputation), as FlopCounterMode counts it for the reference
    Llama and transformers' LlamaForCausalLM with labels: eager 6·P_mm·BT + 12·BT²·Nd·L,
    SDPA 6·P_mm·BT + 14·BT²·Nd·L (with ``flop_counter()``), plus ``recompute_flops``.
    ``backward=False``: forward only. Source: Kaplan et al. 2020, Narayanan et al. 2021;
    measured: see tests/test_flops.py::test_reference_llama_matches_counter."""
    shape = _check(shape, batch, seq, attention, recompute, k)
    check.boolean("backward", backward)
    check.boolean("early_stop", early_stop)
    if not backward:
        return forward_flops(shape, batch, seq)
    return (forward_flops(shape, batch, seq)
            + backward_flops(shape, batch, seq, attention=attention)
            + recompute_flops(shape, batch, seq, attention=attention, recompute=recompute, k=k,
                              early_stop=early_stop))


def six_p_tokens(shape: ModelShape, tokens: int) -> int:
    """The rule of thumb 6·P·tokens with P = params.active(shape), all parameters a token uses
    (embedding, norms and biases included; = params.count for a dense model, the active ones
    for a mixture of experts). Source: Kaplan et al. 2020 §2.1."""
    check.positive_int("tokens", tokens)
    shape = _check(shape, 1, 1)
    return 6 * params.active(shape) * tokens


def rule_of_thumb_error(shape: ModelShape, batch: int, seq: int, **kwargs) -> float:
    """Relative error of the rule of thumb: six_p_tokens(shape, BT) / training_flops(...) - 1
    (negative: 6PT underestimates). LLaMA-7B, T = 2048, eager: -0.057 (facts §3: exact =
    1.060 × 6PT); see tests/test_flops.py::test_llama_7b_rule_of_thumb."""
    exact = training_flops(shape, batch, seq, **kwargs)
    return six_p_tokens(shape, batch * seq) / exact - 1


# --- conventions: how papers count a training step's FLOPs ---------------------------
#
# An MFU is FLOPs per step / (step time × peak): the same run has a different MFU in each
# convention, so a published MFU means little without the convention it was counted in.
# Notation below: B sequences of s tokens per step, L layers, h = hidden_size, V vocabulary,
# Nd = num_heads·head_dim (d_attn), P = params.active (= params.count unless a mixture of
# experts: then the parameters one token uses), N = non_embedding_params,
# P_mm = matmul_params. "As written" formulas (GPT's 12h² of matmul weights per layer) are
# applied to the shape's (L, h, V, s) unchanged, even where the shape is not a GPT;
# "megatron-generalised" and "hfu-*" are the same counts for any layer.
# "causal" counts s²/2 scores per head, as Megatron-LM and FlashAttention's benchmarks do. The
# lower triangle with its diagonal has s(s+1)/2, i.e. 6·B·s·Nd·L more (a 1/s share of the
# core term); FlashAttention also computes the masked part of the diagonal tiles, and its
# benchmarks count its backward as 2.5 forwards (QKᵀ recomputed: SDPA's 14 halved is 7).

def non_embedding_params(shape: ModelShape) -> int:
    """N = P − VH (embedding) − VH (lm_head, 0 when tied): Kaplan et al. 2020's model size
    ("excluding all vocabulary and positional embeddings", §1.3); norms and biases stay in.
    A mixture of experts: P is ``params.active`` (the parameters one token uses)."""
    b = params.breakdown(shape)
    return params.active(shape) - b["embedding"] - b["lm_head"]


class Convention(NamedTuple):
    counts: str  # "model" (MFU: forward + backward only) or "hardware" (HFU: + recomputation)
    definition: str  # the formula per step, in this module's notation
    source: str  # where the formula is written
    flops: Callable[[ModelShape, int, int], int]  # (shape, B, s) -> FLOPs per step


def _gpt(shape: ModelShape, B: int, s: int, layer: int, core: int) -> int:
    """Narayanan et al.'s form for GPT: layer·Bslh² + core·Bs²lh + 6BshV."""
    L, h, V = shape.num_layers, shape.hidden_size, shape.vocab_size
    return layer * B * s * L * h * h + core * B * s * s * L * h + 6 * B * s * h * V


def _core(shape: ModelShape, B: int, s: int, per_unit: int) -> int:
    """per_unit · B·s²·Nd·L: the attention core (QKᵀ and softmax·V) of all layers."""
    return per_unit * B * s * s * shape.q_size * shape.num_layers


CONVENTIONS: dict[str, Convention] = {
    "6PT": Convention(
        "model", "6·P·Bs, P all parameters (embedding, norms included)",
        "Kaplan et al. 2020 §2.1 (C ≈ 6N per training token; N there is non-embedding)",
        lambda sh, B, s: 6 * params.active(sh) * B * s),
    "6PT-nonembedding": Convention(
        "model", "6·N·Bs, N = P − embedding − lm_head", "Kaplan et al. 2020 §2.1, Table 1",
        lambda sh, B, s: 6 * non_embedding_params(sh) * B * s),
    "kaplan": Convention(
        "model", "3·(2N + 2·L·s·Nd)·Bs: Table 1's C_forward, ×3 for training; its one "
                 "attention term is half of QKᵀ + softmax·V",
        "Kaplan et al. 2020 Table 1 (Total row), §2.1",
        lambda sh, B, s: 6 * non_embedding_params(sh) * B * s + _core(sh, B, s, 6)),
    "palm": Convention(
        "model", "(6P + 12·L·Nd·s)·Bs: 6N + 12LHQT per token, N all parameters",
        "Chowdhery et al. 2022 App. B (MFU; read in secondary sources, not the paper)",
        lambda sh, B, s: 6 * params.active(sh) * B * s + _core(sh, B, s, 12)),
    "narayanan-model": Convention(
        "model", "72Bslh²(1 + s/6h + V/12lh) = 72Bslh² + 12Bs²lh + 6BshV, as written for GPT",
        "Narayanan et al. 2021 Appendix (Eq. 3 without the recomputed forward)",
        lambda sh, B, s: _gpt(sh, B, s, 72, 12)),
    "megatron-generalised": Convention(
        "model", "6·P_mm·Bs + 12·Bs²·Nd·L: Narayanan's count for any layer "
                 "(= training_flops(..., attention='eager'))",
        "Narayanan et al. 2021 Appendix, generalised; measured: tests/test_flops.py",
        lambda sh, B, s: training_flops(sh, B, s)),
    "causal": Convention(
        "model", "6·P_mm·Bs + 6·Bs²·Nd·L: the attention core halved for the causal mask",
        "Megatron-LM num_floating_point_operations (training.py); FlashAttention's benchmarks",
        lambda sh, B, s: 6 * matmul_params(sh) * B * s + _core(sh, B, s, 6)),
    "narayanan": Convention(
        "hardware", "96Bslh²(1 + s/6h + V/16lh) = 96Bslh² + 16Bs²lh + 6BshV: full "
                    "recomputation, as written for GPT",
        "Narayanan et al. 2021 Eq. 3 (§5.1, Appendix)",
        lambda sh, B, s: _gpt(sh, B, s, 96, 16)),
    "hfu-full": Convention(
        "hardware", "megatron-generalised + every layer's forward again (2·(P_mm − VH)·Bs + "
                    "4·Bs²·Nd·L) = training_flops(..., recompute='full', early_stop=False)",
        "Narayanan et al. 2021 Eq. 3, generalised; measured: tests/test_flops.py",
        lambda sh, B, s: training_flops(sh, B, s, recompute="full", early_stop=False)),
    "korthikanti-hfu": Convention(
        "hardware", "72Bslh²(1 + s/3h + V/12lh) = 72Bslh² + 24Bs²lh + 6BshV: selective "
                    "recomputation, as written for GPT (counts the core's forward and "
                    "backward again, 12Bs²lh; the recomputation runs only its forward)",
        "Korthikanti et al. 2023 Eq. 8 (read in a secondary note; the Megatron-LM README agrees)",
        lambda sh, B, s: _gpt(sh, B, s, 72, 24)),
    "hfu-selective": Convention(
        "hardware", "megatron-generalised + 4·Bs²·Nd·L (the core's forward again) = "
                    "training_flops(..., recompute='selective', early_stop=False)",
        "Korthikanti et al. 2023 §4.2.2 (what is recomputed); measured: tests/test_flops.py",
        lambda sh, B, s: training_flops(sh, B, s, recompute="selective", early_stop=False)),
}


def convention_flops(shape: ModelShape, batch: int, seq: int, convention: str) -> int:
    """FLOPs of one step of ``batch`` sequences of ``seq`` tokens, counted as
    ``CONVENTIONS[convention]`` counts them (exact integers).

    Checked: tests/test_flops_conventions.py::test_each_convention_is_its_papers_formula."""
    shape = _check(shape, batch, seq)
    check.one_of("convention", convention, CONVENTIONS)
    return CONVENTIONS[convention].flops(shape, batch, seq)


def restate_mfu(mfu: float, shape: ModelShape, batch: int, seq: int, *,
                from_convention: str, to_convention: str) -> float:
    """The same step time's MFU in another convention: mfu · F_to / F_from (FLOPs per step).
    Independent of ``batch``: every convention is linear in it.

    Checked:
    tests/test_flops_conventions.py::test_narayanan_as_written_is_published_runs_formula."""
    check.positive_number("mfu", mfu)
    check.one_of("from_convention", from_convention, CONVENTIONS)
    check.one_of("to_convention", to_convention, CONVENTIONS)
    f_from = convention_flops(shape, batch, seq, from_convention)
    return mfu * convention_flops(shape, batch, seq, to_convention) / f_from


def conventions_table(shape: ModelShape, batch: int, seq: int, *, mfu: float | None = None,
                      convention: str | None = None) -> list[dict]:
    """One row per convention: name, counts, definition, source, flops (per step), ratio
    (to ``megatron-generalised``, llmtrain's eager count) and, given a published ``mfu`` in
    ``convention``, that MFU restated in each convention.

    Checked: tests/test_flops_conventions.py::test_conventions_table_rows."""
    shape = _check(shape, batch, seq)
    if (mfu is None) != (convention is None):
        raise ValueError("mfu and convention go together: give both or neither, got "
                         f"mfu={mfu!r}, convention={convention!r}")
    if mfu is not None:
        check.positive_number("mfu", mfu)
        check.one_of("convention", convention, CONVENTIONS)
    counts = {name: convention_flops(shape, batch, seq, name) for name in CONVENTIONS}
    ours = counts["megatron-generalised"]
    rows = []
    for name, c in CONVENTIONS.items():
        row = dict(name=name, counts=c.counts, definition=c.definition, source=c.source,
                   flops=counts[name], ratio=counts[name] / ours)
        if mfu is not None:
            row["mfu"] = mfu * counts[name] / counts[convention]
        rows.append(row)
    return rows
