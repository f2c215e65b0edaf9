"""Parameter counts: exact integers, the SymPy formula, and transformers' own models."""

import pytest
import sympy as sp
from hypothesis import given, settings, strategies as st

from conftest import hf_numel
from llmtrain.cost import params
from llmtrain.model import shapes
from llmtrain.model.shapes import ModelShape

# facts.md §2, measured on HF LlamaForCausalLM (meta device); C2 is the slides' two numbers
KNOWN = {
    "llama-7b": 6_738_415_616, "llama-13b": 13_015_864_320, "llama-33b": 32_528_943_616,
    "llama-65b": 65_285_660_672, "llama2-70b": 68_976_648_192,
    "llama3-8b": 8_030_261_248, "llama3-70b": 70_553_706_496,
}


@pytest.mark.parametrize("name", KNOWN)
def test_known_counts(name):
    assert params.count(shapes.get(name)) == KNOWN[name]


@pytest.mark.parametrize("name", shapes.names())
def test_presets_equal_transformers(name):
    s = shapes.get(name)
    assert params.count(s) == hf_numel(s.to_hf_config())


def test_breakdown_components_and_sum():
    parts = params.breakdown(shapes.get("llama-7b"))
    assert tuple(parts) == params.COMPONENTS
    assert parts == {"embedding": 32000 * 4096, "attention": 32 * 4 * 4096**2,
                     "mlp": 32 * 3 * 4096 * 11008, "norms": 65 * 4096, "lm_head": 32000 * 4096}
    assert sum(parts.values()) == params.count(shapes.get("llama-7b"))


def test_slides_formula_is_exact_for_mha_and_high_for_gqa():
    for name in ["llama-7b", "llama-13b", "llama-33b", "llama-65b", "llama2-7b", "llama2-13b"]:
        assert params.slides_count(shapes.get(name)) == params.count(shapes.get(name))
    s = shapes.get("llama2-70b")
    assert params.slides_count(s) - params.count(s) == 2 * 80 * (8192**2 - 8192 * 128 * 8)


def test_formula_default_is_the_slides_expression():
    sym = params.symbols()
    V, H, Hp, L = sym["V"], sym["H"], sym["Hp"], sym["L"]
    assert sp.simplify(params.formula() - (2 * V * H + H + L * (4 * H**2 + 3 * H * Hp + 2 * H))) == 0
    assert set(params.terms()) == set(params.COMPONENTS)
    assert str(sym["Hp"]) == "H'"


@pytest.mark.parametrize("name", shapes.names())
def test_formula_with_gqa_equals_count(name):
    s = shapes.get(name)
    assert params.formula(gqa=True).subs(params.subs(s)) == params.count(s)


def valid_shapes(head_dim_free=False):
    @st.composite
    def build(draw):
        n_kv = draw(st.integers(1, 4))
        n = n_kv * draw(st.integers(1, 4))
        d = 2 * draw(st.integers(1, 8))
        tie, bias = draw(st.booleans()), draw(st.booleans())
        head_dim = draw(st.sampled_from([None, 2 * draw(st.integers(1, 8))])) if head_dim_free else None
        return ModelShape(vocab_size=draw(st.integers(8, 300)), hidden_size=n * d,
                          num_layers=draw(st.integers(1, 3)), num_heads=n, num_kv_heads=n_kv,
                          intermediate_size=draw(st.integers(1, 80)), max_seq_len=16,
                          tie_embeddings=tie, attention_bias=bias,
                          head_dim=head_dim if not bias else None)
    return build()


@settings(max_examples=40, deadline=None)
@given(valid_shapes())
def test_formula_equals_count_equals_transformers(shape):
    f = params.formula(gqa=True, tied=shape.tie_embeddings, bias=shape.attention_bias)
    assert f.subs(params.subs(shape)) == params.count(shape) == hf_numel(shape.to_hf_config())


@settings(max_examples=25, deadline=None)
@given(valid_shapes(head_dim_free=True))
def test_count_with_explicit_head_dim_equals_transformers(shape):
    # head_dim != H/N (Mistral-NeMo-style configs): the count follows q_size/kv_size
    assert params.count(shape) == hf_numel(shape.to_hf_config())


def test_biases_on_every_projection():
    s = ModelShape(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                   intermediate_size=40, max_seq_len=8, attention_bias=True, o_bias=True, mlp_bias=True)
    assert params.count(s) == hf_numel(s.to_hf_config())
    no_bias = s.replace(attention_bias=False, o_bias=False, mlp_bias=False)
    assert params.count(s) - params.count(no_bias) == 2 * ((32 + 2 * 16) + 32 + (2 * 40 + 32))


def test_describe_lists_components_and_flags_the_slides_formula_only_when_wrong():
    mha = params.describe(shapes.get("llama-7b"))
    assert mha.splitlines()[0] == "llama-7b: 6,738,415,616 parameters (6.74 B)"
    assert [line.split()[0] for line in mha.splitlines()[1:]] == list(params.COMPONENTS)
    assert "slides" not in mha
    gqa = params.describe(shapes.get("llama3-8b"))
    assert "gives 8,835,567,616: +805,306,368" in gqa
