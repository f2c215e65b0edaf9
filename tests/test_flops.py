"""llmtrain.cost.flops against torch's FlopCounterMode: the formulas equal the count exactly for the
reference Llama (eager/SDPA, every recomputation strategy) and transformers' LlamaForCausalLM;
the CPU SDPA pitfall; LLaMA-7B's 1.060 × 6PT (facts §3)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.checkpoint import set_checkpoint_early_stop
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from llmtrain.cost import flops, params
from llmtrain.model import recompute
from llmtrain.model.llama import ATTN_IMPLS, Llama
from llmtrain.model.shapes import ModelShape, get
from llmtrain.measure import flops as measured

aten = torch.ops.aten


@st.composite
def shapes(draw) -> ModelShape:
    """Small LLaMA shapes: MHA/GQA/MQA, biases, tied embeddings, head_dim != H/N."""
    n = draw(st.sampled_from([1, 2, 4]))
    d = draw(st.sampled_from([2, 4, 6, 8]))
    explicit = draw(st.booleans())
    return ModelShape(
        vocab_size=draw(st.integers(8, 48)),
        hidden_size=draw(st.sampled_from([8, 12, 20])) if explicit else n * d,
        num_layers=draw(st.integers(1, 3)),
        num_heads=n,
        num_kv_heads=draw(st.sampled_from([k for k in (1, 2, 4) if n % k == 0])),
        intermediate_size=draw(st.integers(4, 40)),
        max_seq_len=16,
        tie_embeddings=draw(st.booleans()),
        attention_bias=draw(st.booleans()),
        o_bias=draw(st.booleans()),
        mlp_bias=draw(st.booleans()),
        head_dim=d if explicit else None,
    )


def _ids(shape: ModelShape, batch: int, seq: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, shape.vocab_size, (batch, seq), generator=g)


def _attention_term(shape: ModelShape, batch: int, seq: int, per_unit: int) -> int:
    """per_unit · B·T²·Nd·L: facts §3's 12·BT²HL (eager), 14·BT²HL (SDPA), H -> N·d."""
    return per_unit * batch * seq * seq * shape.q_size * shape.num_layers


@settings(max_examples=40, deadline=None)
@given(shape=shapes())
def test_matmul_params(shape):
    with torch.device("meta"):
        model = Llama(shape)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert flops.matmul_params(shape) == linear  # lm_head counted even when tied
    biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))
    untied = 0 if shape.tie_embeddings else shape.vocab_size * shape.hidden_size
    norms = (2 * shape.num_layers + 1) * shape.hidden_size
    assert params.count(shape) == flops.matmul_params(shape) + untied + norms + biases


@settings(max_examples=20, deadline=None)
@given(shape=shapes(), batch=st.integers(1, 3), seq=st.integers(1, 16), k=st.integers(1, 3))
def test_reference_llama_matches_counter(shape, batch, seq, k):
    ids = _ids(shape, batch, seq)
    P, BT = flops.matmul_params(shape), batch * seq
    for attention, unit in (("eager", 12), ("sdpa", 14)):
        torch.manual_seed(0)
        model = Llama(shape, attn_impl=attention)
        assert flops.training_flops(shape, batch, seq, attention=attention) == \
            6 * P * BT + _attention_term(shape, batch, seq, unit)  # the closed form
        fwd = flops.training_flops(shape, batch, seq, attention=attention, backward=False)
        assert measured.measured_flops(model, ids, backward=False) == fwd == \
            flops.forward_flops(shape, batch, seq)
        for strategy in recompute.STRATEGIES:
            kk = k if strategy == "every" else None
            recompute.apply(model, strategy, k=kk)
            kw = dict(attention=attention, recompute=strategy, k=kk)
            assert measured.measured_flops(model, ids) == flops.training_flops(shape, batch, seq, **kw)
            with set_checkpoint_early_stop(False):  # recomputation runs the whole region again
                assert measured.measured_flops(model, ids) == \
                    flops.training_flops(shape, batch, seq, early_stop=False, **kw)


@pytest.mark.parametrize("batch,seq", [(2, 16), (1, 7)])
def test_full_recompute_is_one_extra_forward_of_the_layers(batch, seq):
    shape = get("tiny")
    for attention in ATTN_IMPLS:
        kw = dict(attention=attention, recompute="full")
        redone = flops.recompute_flops(shape, batch, seq, early_stop=False, **kw)
        lm_head = 2 * shape.vocab_size * shape.hidden_size * batch * seq
        assert redone == flops.forward_flops(shape, batch, seq) - lm_head
        skipped = 2 * batch * seq * shape.hidden_size * shape.intermediate_size  # each down_proj
        assert flops.recompute_flops(shape, batch, seq, **kw) == redone - shape.num_layers * skipped


HF_SHAPES = {
    "mha": ModelShape(vocab_size=40, hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=4,
                      intermediate_size=24, max_seq_len=16),
    "gqa_tied_qwen2_bias": ModelShape(vocab_size=40, hidden_size=16, num_layers=2, num_heads=4,
                                      num_kv_heads=2, intermediate_size=24, max_seq_len=16,
                                      tie_embeddings=True, attention_bias=True),
    "head_dim": ModelShape(vocab_size=40, hidden_size=20, num_layers=1, num_heads=4,
                           num_kv_heads=1, intermediate_size=12, max_seq_len=16, head_dim=6),
    "llama_biases": ModelShape(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2,
                               num_kv_heads=1, intermediate_size=24, max_seq_len=16,
                               attention_bias=True, o_bias=True, mlp_bias=True),
}


@pytest.mark.parametrize("attention", ATTN_IMPLS)
@pytest.mark.parametrize("name", list(HF_SHAPES))
def test_transformers_matches_counter(name, attention):
    import transformers

    shape = HF_SHAPES[name]
    model = transformers.AutoModelForCausalLM.from_config(
        shape.to_hf_config(attn_implementation=attention))
    assert model.config._attn_implementation == attention
    for batch, seq in ((1, 16), (3, 5)):
        # transformers 5 builds the RoPE angles elementwise; 4.x used a (1, d/2, 1) @ (1, 1, T)
        # matmul, T·d FLOPs more per forward (that branch is not run in this environment).
        rope = 0 if int(transformers.__version__.split(".")[0]) >= 5 else seq * shape.d_head
        ids = _ids(shape, batch, seq)
        assert measured.measured_flops(model, ids) - rope == \
            flops.training_flops(shape, batch, seq, attention=attention)
        assert measured.measured_flops(model, ids, backward=False) - rope == \
            flops.forward_flops(shape, batch, seq)


def test_cpu_sdpa_counts_zero_without_the_mapping():
    shape, batch, seq = get("tiny"), 2, 16
    ids = _ids(shape, batch, seq)
    model = Llama(shape, attn_impl="sdpa")
    with FlopCounterMode(display=False) as plain:  # torch's registry alone
        model(ids, labels=ids).loss.backward()
    exact = flops.training_flops(shape, batch, seq, attention="sdpa")
    assert exact - plain.get_total_flops() == _attention_term(shape, batch, seq, 14)
    assert measured.measured_flops(model, ids) == exact
    # The mapping gives the CPU ops exactly torch's formulas for the CUDA flash ops.
    q, kv = torch.empty(2, 4, 16, 8), torch.empty(2, 2, 16, 8)
    fwd, bwd = (measured.CPU_SDPA_MAPPING[op] for op in (
        aten._scaled_dot_product_flash_attention_for_cpu,
        aten._scaled_dot_product_flash_attention_for_cpu_backward))
    assert fwd(q.shape, kv.shape, kv.shape) == \
        flop_registry[aten._scaled_dot_product_flash_attention](q, kv, kv) == \
        4 * 2 * 4 * 16 * 16 * 8
    assert bwd(q.shape, q.shape, kv.shape, kv.shape) == \
        flop_registry[aten._scaled_dot_product_flash_attention_backward](q, q, kv, kv) == \
        10 * 2 * 4 * 16 * 16 * 8


def test_llama_7b_rule_of_thumb():
    shape, seq = get("llama-7b"), 2048
    exact = flops.training_flops(shape, 1, seq)
    assert exact == 6 * 6_607_077_376 * seq + 12 * seq * seq * 4096 * 32
    assert round(exact / flops.six_p_tokens(shape, seq), 3) == 1.060  # facts §3
    assert flops.rule_of_thumb_error(shape, 1, seq) == pytest.approx(1 / 1.0602 - 1, abs=1e-4)
    assert round(flops.training_flops(shape, 1, seq, attention="sdpa")
                 / flops.six_p_tokens(shape, seq), 3) == 1.073
    # The same count from torch, on the meta device (no memory, well under a second).
    with torch.device("meta"):
        model = Llama(shape, attn_impl="eager")
    ids = torch.zeros(1, seq, dtype=torch.long, device="meta")
    assert measured.measured_flops(model, ids) == exact
    # Pitfall: on meta tensors SDPA runs its math path (plain matmuls), so it counts as eager.
    for layer in model.model.layers:
        layer.self_attn.attn_impl = "sdpa"
    assert measured.measured_flops(model, ids) == exact


@pytest.mark.parametrize("kwargs,name", [
    (dict(batch=0), "batch"), (dict(seq=-1), "seq"), (dict(seq=2.0), "seq"),
    (dict(batch=True), "batch"), (dict(attention="flash"), "attention"),
    (dict(recompute="half"), "recompute"), (dict(recompute="every"), "k"),
    (dict(recompute="full", k=2), "k"), (dict(shape="llama-8b"), "shape: unknown model name"),
    (dict(shape=7), "shape must be a ModelShape or a preset name"),
])
def test_bad_input_raises(kwargs, name):
    args = dict(shape=get("tiny"), batch=1, seq=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        flops.training_flops(args.pop("shape"), args.pop("batch"), args.pop("seq"), **args)
    with pytest.raises(ValueError, match="tokens"):
        flops.six_p_tokens(get("tiny"), 0)


def test_a_preset_name_is_its_shape():
    assert flops.training_flops("tiny", 2, 8) == flops.training_flops(get("tiny"), 2, 8)
