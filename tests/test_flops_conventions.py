"""llmtrain.cost.flops.CONVENTIONS: each paper's way of counting a training step, as exact integers.

Oracles: the papers' formulas written out again here from the shapes' published sizes (not from
llmtrain), the external reviewer's table (shared/reviews/external-calculators.md §3), the
relations between conventions, and the MFU/HFU pairs Megatron-LM published for Korthikanti
et al.'s selective recomputation."""

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmtrain.cost import flops, params
from llmtrain.cost.published_runs import NARAYANAN_TABLE1, narayanan_flops, narayanan_model_flops
from llmtrain.model.shapes import ModelShape, get

NAMES = ("6PT", "6PT-nonembedding", "kaplan", "palm", "narayanan-model", "megatron-generalised",
         "causal", "narayanan", "hfu-full", "korthikanti-hfu", "hfu-selective")


def _by_hand(V, h, L, heads, kv_heads, Hff, B, s):
    """Every convention from its paper's formula, for an untied LLaMA without biases
    (d = h/heads): P = 2Vh + h + L(2h² + 2h·kv·d + 3hH' + 2h)."""
    d = h // heads
    layer_mm = 2 * h * h + 2 * h * kv_heads * d + 3 * h * Hff  # q, o; k, v; gate, up, down
    P = 2 * V * h + h + L * (layer_mm + 2 * h)
    N = P - 2 * V * h  # Kaplan: no vocabulary embeddings (input and output)
    T = B * s
    eager = 6 * (L * layer_mm + V * h) * T + 12 * B * s * s * h * L
    return {
        "6PT": 6 * P * T,
        "6PT-nonembedding": 6 * N * T,
        "kaplan": 3 * (2 * N + 2 * L * s * h) * T,  # C_forward = 2N + 2 n_layer n_ctx d_attn
        "palm": (6 * P + 12 * L * heads * d * s) * T,  # 6N + 12LHQT per token
        "narayanan-model": 72 * B * s * L * h * h + 12 * B * s * s * L * h + 6 * B * s * h * V,
        "megatron-generalised": eager,
        "causal": eager - 6 * B * s * s * h * L,
        "narayanan": 96 * B * s * L * h * h + 16 * B * s * s * L * h + 6 * B * s * h * V,  # Eq. 3
        "hfu-full": eager + 2 * L * layer_mm * T + 4 * B * s * s * h * L,
        "korthikanti-hfu": 72 * B * s * L * h * h + 24 * B * s * s * L * h + 6 * B * s * h * V,
        "hfu-selective": eager + 4 * B * s * s * h * L,
    }, P


# Published sizes (config.json of each model) and its HF parameter count.
LLAMA2_7B = dict(V=32000, h=4096, L=32, heads=32, kv_heads=32, Hff=11008)
LLAMA3_70B = dict(V=128256, h=8192, L=80, heads=64, kv_heads=8, Hff=28672)


@pytest.mark.parametrize("name,sizes,P,s", [
    ("llama2-7b", LLAMA2_7B, 6_738_415_616, 4096),
    ("llama3-70b", LLAMA3_70B, 70_553_706_496, 8192),
])
@pytest.mark.parametrize("B", [1, 3])
def test_each_convention_is_its_papers_formula(name, sizes, P, s, B):
    expected, P_by_hand = _by_hand(**sizes, B=B, s=s)
    assert P_by_hand == P == params.count(get(name))
    assert tuple(flops.CONVENTIONS) == NAMES == tuple(expected)
    for convention, value in expected.items():
        assert flops.convention_flops(name, B, s, convention) == value, convention


# The reviewer's table (shared/reviews/external-calculators.md §3), one sequence, 6 digits.
REVIEWED = {
    ("llama2-7b", 4096): {"megatron-generalised": 1.88764e14, "6PT": 1.65603e14,
                          "6PT-nonembedding": 1.59161e14, "kaplan": 1.72355e14,
                          "palm": 1.91992e14, "narayanan-model": 1.87939e14,
                          "narayanan": 2.49512e14, "korthikanti-hfu": 2.14327e14},
    ("llama3-70b", 8192): {"megatron-generalised": 3.94391e15, "6PT": 3.46786e15,
                           "6PT-nonembedding": 3.36457e15, "kaplan": 3.62845e15,
                           "palm": 3.99562e15, "narayanan-model": 3.74600e15,
                           "narayanan": 4.97745e15, "korthikanti-hfu": 4.27377e15},
}


@pytest.mark.parametrize("model,s", list(REVIEWED))
def test_the_reviewers_table_is_reproduced(model, s):
    for convention, value in REVIEWED[model, s].items():
        assert flops.convention_flops(model, 1, s, convention) == pytest.approx(value, rel=6e-6)
    # "hfu-full" is the reviewer's "llmtrain recompute=full, early_stop=False": it / Eq. 3.
    ratio = {"llama2-7b": 1.0044, "llama3-70b": 1.0530}[model]
    assert flops.convention_flops(model, 1, s, "hfu-full") / \
        flops.convention_flops(model, 1, s, "narayanan") == pytest.approx(ratio, abs=5e-5)


@st.composite
def shapes(draw) -> ModelShape:
    n = draw(st.sampled_from([1, 2, 4]))
    return ModelShape(vocab_size=draw(st.integers(8, 64)), hidden_size=n * 4,
                      num_layers=draw(st.integers(1, 4)), num_heads=n,
                      num_kv_heads=draw(st.sampled_from([k for k in (1, 2, 4) if n % k == 0])),
                      intermediate_size=draw(st.integers(4, 40)), max_seq_len=16,
                      tie_embeddings=draw(st.booleans()))


@settings(max_examples=60, deadline=None)
@given(shape=shapes(), B=st.integers(1, 4), s=st.integers(1, 32))
def test_relations_between_conventions(shape, B, s):
    F = {c: flops.convention_flops(shape, B, s, c) for c in NAMES}
    L, Nd, h, V = shape.num_layers, shape.q_size, shape.hidden_size, shape.vocab_size
    assert F["megatron-generalised"] == flops.training_flops(shape, B, s, attention="eager")
    core = 12 * B * s * s * Nd * L  # the attention core, forward + backward, unmasked
    assert F["megatron-generalised"] - F["causal"] == core // 2
    assert F["hfu-selective"] - F["megatron-generalised"] == core // 3  # its forward again
    assert F["korthikanti-hfu"] - F["narayanan-model"] == 12 * B * s * s * h * L  # fwd + bwd again
    assert F["hfu-full"] == flops.training_flops(shape, B, s, recompute="full", early_stop=False)
    # Eq. 3 / its 3-pass version = 4/3 − (output layer's share of the 3-pass count) / 3.
    output_share = Fraction(6 * B * s * h * V, F["narayanan-model"])
    assert Fraction(F["narayanan"], F["narayanan-model"]) == Fraction(4, 3) - output_share / 3
    for c in NAMES:  # one step of B sequences is B steps of one
        assert F[c] == B * flops.convention_flops(shape, 1, s, c)


@settings(max_examples=30, deadline=None)
@given(n=st.sampled_from([1, 2, 4]), L=st.integers(1, 4), V=st.integers(8, 64),
       B=st.integers(1, 3), s=st.integers(1, 32))
def test_written_for_gpt_equals_generalised_on_a_12h2_layer(n, L, V, B, s):
    h = 6 * n  # MHA and 3hH' = 8h² with H' = 8h/3: 12h² of matmul weights per layer
    shape = ModelShape(vocab_size=V, hidden_size=h, num_layers=L, num_heads=n, num_kv_heads=n,
                       intermediate_size=8 * h // 3, max_seq_len=16)
    F = {c: flops.convention_flops(shape, B, s, c) for c in NAMES}
    assert F["narayanan-model"] == F["megatron-generalised"]
    assert F["narayanan"] == F["hfu-full"]
    assert flops.non_embedding_params(shape) == 12 * L * h * h + (2 * L + 1) * h  # + norms


def _gpt(layers, hidden, heads):
    """Narayanan et al.'s GPT as a ModelShape (only (L, h, V) enter the GPT-written formulas):
    MHA, and a SwiGLU of H' = ⌊8h/3⌋ for its 4h GeLU MLP (3hH' = 8h² − h or 8h²)."""
    return ModelShape(vocab_size=51200, hidden_size=hidden, num_layers=layers, num_heads=heads,
                      num_kv_heads=heads, intermediate_size=8 * hidden // 3, max_seq_len=2048)


@pytest.mark.parametrize("row", NARAYANAN_TABLE1, ids=lambda r: f"{r.params_b}B")
def test_narayanan_as_written_is_published_runs_formula(row):
    shape = _gpt(row.layers, row.hidden, row.heads)
    assert flops.convention_flops(shape, row.batch, 2048, "narayanan") == \
        narayanan_flops(row.batch, row.layers, row.hidden)
    assert flops.convention_flops(shape, row.batch, 2048, "narayanan-model") == \
        narayanan_model_flops(row.batch, row.layers, row.hidden)
    # The row's TFLOP/s are Eq. 3's; as an MFU in Eq. 3's 3-pass convention it is 3/(4 − f)
    # of it, f the output layer's share of the 3-pass count (it is never recomputed).
    mfu = row.tflops_per_gpu / 312
    model = flops.restate_mfu(mfu, shape, row.batch, 2048, from_convention="narayanan",
                              to_convention="narayanan-model")
    assert model == pytest.approx(mfu * narayanan_model_flops(row.batch, row.layers, row.hidden)
                                  / narayanan_flops(row.batch, row.layers, row.hidden))
    f = 6 * row.batch * 2048 * row.hidden * 51200 / narayanan_model_flops(
        row.batch, row.layers, row.hidden)
    assert model / mfu == pytest.approx(3 / (4 - f)) and 0.75 < model / mfu < 0.77


# Megatron-LM README (commit 2e90a342, 2022-05-19): "Model FLOPs Utilization | Hardware FLOPs
# Utilization" per model size, "see our paper (arXiv 2205.05198) for how these are calculated".
# For the 530B and 1T rows (Narayanan et al.'s Table 1 shapes, s = 2048, V = 51,200), Eq. 8's
# HFU / the 3-pass MFU turns the published MFU (±0.05 % rounding) into the published HFU
# (±0.05 %); what selective recomputation runs (the core's forward once more) does not.
def _hfu_range(shape, mfu, to):
    return [flops.restate_mfu(m, shape, 1, 2048, from_convention="narayanan-model",
                              to_convention=to) for m in (mfu - 0.0005, mfu + 0.0005)]


@pytest.mark.parametrize("layers,hidden,heads,mfu,hfu", [
    (105, 20480, 128, 0.560, 0.570), (128, 25600, 160, 0.563, 0.570)])
def test_megatron_readme_hfu_is_korthikanti_eq8(layers, hidden, heads, mfu, hfu):
    shape = _gpt(layers, hidden, heads)
    low, high = _hfu_range(shape, mfu, "korthikanti-hfu")
    assert low < hfu + 0.0005 and high > hfu - 0.0005  # the intervals overlap
    low, high = _hfu_range(shape, mfu, "hfu-selective")
    assert high < hfu - 0.0005


def test_conventions_table_rows():
    rows = flops.conventions_table("llama2-7b", 1, 4096, mfu=0.4, convention="palm")
    assert [r["name"] for r in rows] == list(NAMES)
    by = {r["name"]: r for r in rows}
    assert by["megatron-generalised"]["ratio"] == 1.0 and by["palm"]["mfu"] == 0.4
    for r in rows:
        assert r["flops"] == flops.convention_flops("llama2-7b", 1, 4096, r["name"])
        assert r["mfu"] == pytest.approx(0.4 * r["flops"] / by["palm"]["flops"])
        assert r["counts"] in ("model", "hardware") and r["definition"] and r["source"]
        assert r["mfu"] == pytest.approx(flops.restate_mfu(
            0.4, "llama2-7b", 1, 4096, from_convention="palm", to_convention=r["name"]))
    assert {r["name"] for r in rows if r["counts"] == "hardware"} == \
        {"narayanan", "hfu-full", "korthikanti-hfu", "hfu-selective"}
    assert "mfu" not in flops.conventions_table("tiny", 2, 8)[0]


@pytest.mark.parametrize("call,match", [
    (lambda: flops.convention_flops("tiny", 1, 8, "6pt"), "convention must be one of"),
    (lambda: flops.convention_flops("tiny", 0, 8, "palm"), "batch"),
    (lambda: flops.convention_flops("tiny", 1, 8, None), "convention must be one of"),
    (lambda: flops.restate_mfu(0.4, "tiny", 1, 8, from_convention="mfu", to_convention="palm"),
     "from_convention must be one of"),
    (lambda: flops.restate_mfu(0.4, "tiny", 1, 8, from_convention="palm", to_convention="hfu"),
     "to_convention must be one of"),
    (lambda: flops.restate_mfu(0.0, "tiny", 1, 8, from_convention="palm", to_convention="palm"),
     "mfu"),
    (lambda: flops.conventions_table("tiny", 1, 8, mfu=0.4), "mfu and convention go together"),
    (lambda: flops.conventions_table("tiny", 1, 8, convention="palm"), "go together"),
    (lambda: flops.conventions_table("tiny", 1, 8, mfu=0.4, convention="x"), "convention"),
    (lambda: flops.conventions_table("tiny", 1, 8, mfu=float("nan"), convention="palm"), "mfu"),
])
def test_bad_input_is_one_line_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
    if "one of" in match:
        assert "'palm'" in str(err.value) and "'korthikanti-hfu'" in str(err.value)
