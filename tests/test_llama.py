"""The reference LLaMA (llmtrain.model.llama) against transformers' LlamaForCausalLM / Qwen2ForCausalLM:
same logits, same loss, same state_dict keys, same parameter counts."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import transformers  # noqa: E402  (a test dependency: missing, these tests must fail, not skip)

from llmtrain.model.llama import Llama, Output  # noqa: E402
from llmtrain.model.shapes import ModelShape, get  # noqa: E402

B, T = 2, 16


def _shape(**kw) -> ModelShape:
    base = dict(vocab_size=96, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=4,
                intermediate_size=56, max_seq_len=32, norm_eps=1e-5, rope_theta=10000.0)
    base.update(kw)
    return ModelShape(**base)


SHAPES = {
    "mha": _shape(),
    "gqa": _shape(num_kv_heads=2, rope_theta=500000.0),
    "mqa": _shape(num_kv_heads=1),
    "qwen2_qkv_bias": _shape(num_kv_heads=2, attention_bias=True),
    "tied": _shape(tie_embeddings=True),
    "head_dim": _shape(num_heads=4, num_kv_heads=2, head_dim=12),  # N·d = 48 != H = 32
    "llama_biases": _shape(num_kv_heads=2, attention_bias=True, o_bias=True, mlp_bias=True),
    "tiny_preset": get("tiny"),
}


def _hf(shape: ModelShape, attn_impl: str = "sdpa"):
    """transformers' model for this shape (Llama or Qwen2), fp32, eval mode, random weights that
    are large enough (and biases / norm gains non-trivial) for the comparison to be sharp."""
    config = shape.to_hf_config(attn_implementation=attn_impl)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    assert model.config._attn_implementation == attn_impl
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _pair(shape: ModelShape, attn_impl: str):
    torch.manual_seed(0)
    hf = _hf(shape, attn_impl)
    ours = Llama(shape, attn_impl=attn_impl).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    return hf, ours


def _ids(shape: ModelShape, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, shape.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_logits_and_loss_match_transformers(name, attn_impl):
    shape = SHAPES[name]
    hf, ours = _pair(shape, attn_impl)
    if shape.attention_bias and not shape.o_bias:
        assert type(hf).__name__ == "Qwen2ForCausalLM"
    ids = _ids(shape)
    labels = ids.clone()
    labels[0, 5:9] = -100  # ignored tokens
    with torch.no_grad():
        ref = hf(input_ids=ids, labels=labels)
        out = ours(ids, labels=labels)
    assert isinstance(out, Output) and out.logits.shape == (B, T, shape.vocab_size)
    assert ref.logits.abs().max() > 0.5  # the comparison is not between near-zeros
    assert (out.logits - ref.logits).abs().max().item() <= 1e-5
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-5


def test_eager_equals_sdpa():
    shape = SHAPES["gqa"]
    hf, eager = _pair(shape, "eager")
    sdpa = Llama(shape, attn_impl="sdpa")
    sdpa.load_state_dict(eager.state_dict(), strict=True)
    ids = _ids(shape)
    with torch.no_grad():
        assert torch.allclose(eager(ids).logits, sdpa(ids).logits, atol=1e-5, rtol=0)


def test_causal_future_tokens_do_not_change_the_past():
    _, ours = _pair(SHAPES["gqa"], "eager")
    ids = _ids(SHAPES["gqa"])
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % SHAPES["gqa"].vocab_size
    with torch.no_grad():
        a, b = ours(ids).logits, ours(changed).logits
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_loss_without_labels_is_none_and_loss_is_next_token_ce():
    _, ours = _pair(SHAPES["mha"], "sdpa")
    ids = _ids(SHAPES["mha"])
    logits, loss = ours(ids)
    assert loss is None
    _, loss = ours(ids, labels=ids)
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                               ids[:, 1:].reshape(-1))
    assert torch.allclose(loss, manual, atol=1e-6)


@pytest.mark.parametrize("name", ["mha", "qwen2_qkv_bias", "tied", "llama_biases"])
def test_state_dict_keys_and_strict_load_both_ways(name):
    shape = SHAPES[name]
    hf = _hf(shape)
    torch.manual_seed(3)
    ours = Llama(shape)
    assert set(ours.state_dict()) == set(hf.state_dict())
    assert "model.rotary_emb.inv_freq" not in ours.state_dict()
    assert all("inv_freq" not in n for n, _ in ours.named_parameters())
    ours.load_state_dict(hf.state_dict(), strict=True)  # transformers -> ours
    for k, v in hf.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    torch.manual_seed(4)
    ours2 = Llama(shape)
    hf.load_state_dict(ours2.state_dict(), strict=True)  # ours -> transformers
    for k, v in ours2.state_dict().items():
        assert torch.equal(hf.state_dict()[k], v), k
    if shape.tie_embeddings:  # lm_head.weight is listed, and is the embedding itself
        assert "lm_head.weight" in ours.state_dict()
        assert ours.lm_head.weight is ours.model.embed_tokens.weight
        assert len(list(ours.parameters())) == len(ours.state_dict()) - 1


def test_init_is_deterministic_and_hf_like():
    shape = SHAPES["llama_biases"]
    torch.manual_seed(0)
    a = Llama(shape)
    torch.manual_seed(0)
    b = Llama(shape)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n
    sd = a.state_dict()
    assert torch.equal(sd["model.norm.weight"], torch.ones(shape.hidden_size))
    assert torch.equal(sd["model.layers.0.mlp.up_proj.bias"], torch.zeros(shape.intermediate_size))
    w = torch.cat([sd["model.embed_tokens.weight"].flatten(), sd["lm_head.weight"].flatten()])
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002


def test_llama_7b_on_meta_has_the_published_count():
    with torch.device("meta"):
        ours = Llama(get("llama-7b"))
        hf = transformers.LlamaForCausalLM(get("llama-7b").to_hf_config())
    n = sum(p.numel() for p in ours.parameters())
    assert n == 6_738_415_616
    assert n == sum(p.numel() for p in hf.parameters())
    assert all(p.is_meta for p in ours.parameters())


def test_meta_then_to_empty_then_init_gives_a_working_model():
    shape = SHAPES["gqa"]
    hf, ref = _pair(shape, "sdpa")
    with torch.device("meta"):
        m = Llama(shape)
    m.to_empty(device="cpu")
    m.init_weights()
    assert torch.equal(m.model.rotary_emb.inv_freq, ref.model.rotary_emb.inv_freq)
    m.load_state_dict(hf.state_dict(), strict=True)
    ids = _ids(shape)
    with torch.no_grad():
        assert (m(ids).logits - hf(input_ids=ids).logits).abs().max() <= 1e-5


@st.composite
def small_shapes(draw):
    n_kv = draw(st.integers(1, 4))
    n_heads = n_kv * draw(st.integers(1, 3))
    d = 2 * draw(st.integers(1, 8))
    own_head_dim = draw(st.booleans())
    # transformers 5.24's LlamaConfig insists that N divides H even when head_dim is given
    hidden = n_heads * draw(st.integers(1, 16)) if own_head_dim else n_heads * d
    bias = draw(st.sampled_from(["none", "qwen2", "llama_attn", "llama_mlp", "llama_all"]))
    return ModelShape(
        vocab_size=draw(st.integers(8, 300)), hidden_size=hidden,
        num_layers=draw(st.integers(1, 3)), num_heads=n_heads, num_kv_heads=n_kv,
        intermediate_size=draw(st.integers(1, 100)), max_seq_len=draw(st.integers(1, 64)),
        head_dim=d if own_head_dim else None, tie_embeddings=draw(st.booleans()),
        attention_bias=bias in ("qwen2", "llama_attn", "llama_all"),
        o_bias=bias in ("llama_attn", "llama_all"), mlp_bias=bias in ("llama_mlp", "llama_all"))


@settings(max_examples=25, deadline=None)
@given(small_shapes())
def test_parameter_count_matches_transformers_on_meta(shape):
    with torch.device("meta"):
        ours = Llama(shape)
        hf = transformers.AutoModelForCausalLM.from_config(shape.to_hf_config())
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())
    assert set(ours.state_dict()) == set(hf.state_dict())


def test_bad_inputs_raise_value_error_naming_the_argument():
    shape = SHAPES["mha"]
    with pytest.raises(ValueError, match="attn_impl"):
        Llama(shape, attn_impl="flash")
    with pytest.raises(ValueError, match="shape"):
        Llama({"hidden_size": 32})
    m = Llama(shape)
    with pytest.raises(ValueError, match="input_ids"):
        m(torch.zeros(T, dtype=torch.long))  # 1-D
    with pytest.raises(ValueError, match="input_ids"):
        m(torch.zeros(1, 2, T, dtype=torch.long))  # 3-D
    with pytest.raises(ValueError, match="input_ids"):
        m(torch.zeros(B, T))  # floats
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(B, shape.max_seq_len + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        m(torch.zeros(B, T, dtype=torch.long), labels=torch.zeros(B, T - 1, dtype=torch.long))
    full = torch.zeros(B, shape.max_seq_len, dtype=torch.long)  # exactly the window is fine
    assert m(full).logits.shape[1] == shape.max_seq_len


@pytest.mark.parametrize("name", ["tied", "llama_biases", "qwen2_qkv_bias"])
def test_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    m = Llama(SHAPES[name])
    ids = _ids(SHAPES[name])
    m(ids, labels=ids).loss.backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        if not n.endswith("bias"):  # biases start at 0 but still get gradients
            assert p.grad.abs().sum() > 0, n


def test_llama_refuses_shapes_it_would_build_wrong():
    """A MoE shape built as a dense Llama, or MLA attention run as GQA, would be a silently
    wrong model: both are refused, naming what builds or counts them."""
    tiny = get("tiny")
    moe = tiny.replace(num_experts=4, experts_per_token=2, moe_intermediate_size=32)
    with pytest.raises(ValueError, match="mixture of experts: build it with .*MoELlama"):
        Llama(moe)
    mla = tiny.replace(num_kv_heads=4, q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8,
                       v_head_dim=16)
    with pytest.raises(ValueError, match="multi-head latent attention"):
        Llama(mla)
