"""Mixtures of experts counted: total vs active parameters (cost.params), training FLOPs with the
active matmul weights (cost.flops), Mixtral / Qwen2-MoE / DeepSeek-V3 configs read
(ModelShape.from_hf_config) and the CLI's params and flops.

Oracles: transformers' MixtralForCausalLM, Qwen2MoeForCausalLM and DeepseekV3ForCausalLM built
from the released configs on the meta device (exact numel); torch's FlopCounterMode on those
models and on llmtrain's MoELlama (exact FLOPs); the published totals (Mixtral 46.7B / 12.9B,
DeepSeek-V3 671B / 37B, Qwen1.5-MoE-A2.7B 14.3B / 2.7B) within their rounding.
"""

import json

import pytest
import torch
from conftest import hf_numel
from hypothesis import given, settings, strategies as st

from llmtrain import cli
from llmtrain.cost import flops, params
from llmtrain.measure import flops as measured
from llmtrain.model import moe, shapes
from llmtrain.model.shapes import ModelShape

# The keys of the released config.json files that fix a count (values as released).
RELEASED = {
    # mistralai/Mixtral-8x7B-v0.1 config.json
    "mixtral-8x7b": dict(
        model_type="mixtral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=32768,
        rms_norm_eps=1e-5, rope_theta=1e6, tie_word_embeddings=False),
    # Qwen/Qwen1.5-MoE-A2.7B config.json (= transformers' Qwen2MoeConfig defaults)
    "qwen1.5-moe-a2.7b": dict(
        model_type="qwen2_moe", vocab_size=151936, hidden_size=2048, intermediate_size=5632,
        num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
        num_experts=60, num_experts_per_tok=4, moe_intermediate_size=1408,
        shared_expert_intermediate_size=5632, decoder_sparse_step=1,
        max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1e6,
        tie_word_embeddings=False),
    # deepseek-ai/DeepSeek-V3: inference/configs/config_671B.json @9b4e978 in the HF key names
    # (dim 7168, inter_dim 18432, moe_inter_dim 2048, n_layers 61, n_dense_layers 3, n_heads
    # 128, 256 routed, 1 shared, 8 activated, q_lora_rank 1536, kv_lora_rank 512, qk_nope 128,
    # qk_rope 64, v_head_dim 128) + the HF config.json's positions; its MTP layer is not built.
    "deepseek-v3": dict(
        model_type="deepseek_v3", vocab_size=129280, hidden_size=7168, intermediate_size=18432,
        moe_intermediate_size=2048, num_hidden_layers=61, first_k_dense_replace=3,
        num_attention_heads=128, num_key_value_heads=128, n_routed_experts=256,
        n_shared_experts=1, num_experts_per_tok=8, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, moe_layer_freq=1,
        num_nextn_predict_layers=1, max_position_embeddings=163840, rms_norm_eps=1e-6,
        rope_theta=10000.0, tie_word_embeddings=False),
}


def _transformers_config(cfg: dict):
    import transformers

    cfg = dict(cfg)
    return transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_configs_read_as_the_presets_and_count_as_transformers(name):
    shape = ModelShape.from_hf_config(RELEASED[name], name=name)
    assert shape == shapes.resolve(name)
    assert params.count(shape) == hf_numel(_transformers_config(RELEASED[name]))  # exact


# DeepSeek-V2 (236B total, 21B activated: the DeepSeek-V3 README's comparison table), from
# inference/configs/config_236B.json @9b4e978 of the DeepSeek-V3 repository in HF key names.
DEEPSEEK_V2 = dict(
    model_type="deepseek_v2", vocab_size=102400, hidden_size=5120, intermediate_size=12288,
    moe_intermediate_size=1536, num_hidden_layers=60, first_k_dense_replace=1,
    num_attention_heads=128, num_key_value_heads=128, n_routed_experts=160, n_shared_experts=2,
    num_experts_per_tok=6, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
    qk_rope_head_dim=64, v_head_dim=128)


def test_deepseek_v2_config_counts_as_transformers_and_its_published_size():
    shape = ModelShape.from_hf_config(DEEPSEEK_V2)
    assert shape.shared_expert_size == 2 * 1536 and shape.moe_layers == 59
    total = params.count(shape)
    assert total == hf_numel(_transformers_config(DEEPSEEK_V2)) == 235_741_434_880
    assert (round(total / 1e9), round(params.active(shape) / 1e9)) == (236, 21)


def test_deepseek_v3_breakdown_by_hand():
    H, V, L, dense, moe_layers = 7168, 129280, 61, 3, 58
    mla = (H * 1536 + 1536 + 1536 * 128 * (128 + 64)  # W^DQ, its norm, W^UQ and W^QR
           + H * (512 + 64) + 512 + 512 * 128 * (128 + 128)  # W^DKV + W^KR, norm, W^UK, W^UV
           + 128 * 128 * H)  # W^O
    assert params.breakdown("deepseek-v3") == {
        "embedding": V * H, "attention": L * mla, "mlp": dense * 3 * H * 18432,
        "router": moe_layers * 256 * H, "shared": moe_layers * 3 * H * 2048,
        "experts": moe_layers * 256 * 3 * H * 2048, "norms": (2 * L + 1) * H, "lm_head": V * H}
    assert params.count("deepseek-v3") == 671_026_404_352
    assert params.active("deepseek-v3") == 37_552_282_624
    assert params.active_breakdown("deepseek-v3")["experts"] == moe_layers * 8 * 3 * H * 2048


def test_published_totals_and_active():
    # Mixtral: 46.7B total, 12.9B per token (the release blog, the model card); its paper's
    # abstract rounds to 47B and 13B.
    mixtral = params.count("mixtral-8x7b"), params.active("mixtral-8x7b")
    assert [round(n / 1e9, 1) for n in mixtral] == [46.7, 12.9]
    assert [round(n / 1e9) for n in mixtral] == [47, 13]
    # DeepSeek-V3: 671B total, "37B activated for each token" (report abstract, README);
    # ours is 37.55B, which the report states as 37B (truncated, not rounded). README_WEIGHTS.md
    # says 36.7B "including 0.9B for Embedding and 0.9B for the output Head": 0.85B less than
    # this count, a gap DeepSeek does not explain (the embedding and head are 0.93B each here).
    total, act = params.count("deepseek-v3"), params.active("deepseek-v3")
    assert round(total / 1e9) == 671 and int(act / 1e9) == 37
    assert round(params.breakdown("deepseek-v3")["embedding"] / 1e9, 1) == 0.9
    assert 0.8e9 < act - 36.7e9 < 0.9e9
    # Qwen1.5-MoE-A2.7B: 14.3B total, 2.7B activated (its model card)
    qwen = params.count("qwen1.5-moe-a2.7b"), params.active("qwen1.5-moe-a2.7b")
    assert [round(n / 1e9, 1) for n in qwen] == [14.3, 2.7]


@pytest.mark.parametrize("name", ["mixtral-8x7b", "qwen1.5-moe-a2.7b", "deepseek-v3"])
def test_moe_terms_equal_breakdown(name):
    shape = shapes.resolve(name)
    values = params.moe_subs(shape)
    for active, parts in ((False, params.breakdown(shape)), (True, params.active_breakdown(shape))):
        terms = params.moe_terms(active=active, gated=shape.shared_expert_gate)
        assert {k: int(v.subs(values)) for k, v in terms.items()} == \
            {k: parts[k] for k in ("router", "shared", "experts")}
    m, H = params.moe_symbols(), params.symbols()["H"]
    gap = sum(params.moe_terms().values()) - sum(params.moe_terms(active=True).values())
    assert (gap - m["L_moe"] * (m["E"] - m["k"]) * 3 * H * m["H_e"]).expand() == 0
    with pytest.raises(ValueError, match="shape must be a mixture of experts"):
        params.moe_subs("tiny")
    with pytest.raises(ValueError, match="active must be True or False"):
        params.moe_terms(active=1)


@settings(max_examples=30, deadline=None)
@given(E=st.integers(1, 16), data=st.data(), first=st.integers(0, 3), shared=st.integers(0, 40))
def test_active_is_count_less_the_experts_not_chosen(E, data, first, shared):
    k = data.draw(st.integers(1, E))
    shape = ModelShape(vocab_size=50, hidden_size=16, num_layers=3, num_heads=4, num_kv_heads=2,
                       intermediate_size=24, max_seq_len=16, num_experts=E, experts_per_token=k,
                       moe_intermediate_size=8, shared_expert_size=shared,
                       first_dense_layers=first)
    not_chosen = (3 - first) * (E - k) * 3 * 16 * 8
    assert params.active(shape) == params.count(shape) - not_chosen
    assert (params.active(shape) == params.count(shape)) == (k == E or first == 3)


def test_dense_shapes_active_equals_count_and_breakdown_is_unchanged():
    for name in shapes.names():
        shape = shapes.get(name)
        assert params.active(shape) == params.count(shape)
        assert tuple(params.breakdown(shape)) == params.COMPONENTS


# --- FLOPs: FlopCounterMode on transformers' MoE models and on MoELlama ------------------------

BASE = dict(vocab_size=40, hidden_size=16, num_layers=3, num_heads=4, num_kv_heads=2,
            intermediate_size=24, max_seq_len=16)
TINY = {
    "mixtral": ModelShape(**BASE, num_experts=4, experts_per_token=2, moe_intermediate_size=24),
    "qwen2_moe": ModelShape(**{**BASE, "attention_bias": True}, num_experts=4,
                            experts_per_token=2, moe_intermediate_size=8, shared_expert_size=12,
                            shared_expert_gate=True),
    "deepseek_v3": ModelShape(**{**BASE, "num_kv_heads": 4}, head_dim=12, num_experts=8,
                              experts_per_token=2, moe_intermediate_size=8,
                              shared_expert_size=16, first_dense_layers=1, q_lora_rank=10,
                              kv_lora_rank=6, qk_rope_head_dim=4, v_head_dim=6),
}


def _ids(batch, seq):
    return torch.randint(0, BASE["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list(TINY))
def test_transformers_moe_flops_equal_counter(name):
    import transformers

    shape = TINY[name]
    assert shape.to_hf_config().model_type == name
    assert ModelShape.from_hf_config(shape.to_hf_config()) == shape.replace(name=name)
    for attention in ("eager", "sdpa"):
        torch.manual_seed(0)  # experts_implementation "eager": one matmul per expert hit
        model = transformers.AutoModelForCausalLM.from_config(shape.to_hf_config(
            attn_implementation=attention, experts_implementation="eager"))
        assert sum(p.numel() for p in model.parameters()) == params.count(shape)
        ids = _ids(2, 7)
        assert measured.measured_flops(model, ids, backward=False) == \
            flops.forward_flops(shape, 2, 7)
        # MLA's d_v ≠ d: PyTorch's CPU SDPA takes its math path (no fused kernel, QKᵀ not
        # recomputed in backward): counted as eager.
        counted_as = "eager" if shape.is_mla else attention
        assert measured.measured_flops(model, ids) == \
            flops.training_flops(shape, 2, 7, attention=counted_as)


@st.composite
def moe_shapes(draw):
    """Small MoE shapes of the three kinds transformers builds: Mixtral, Qwen2-MoE, DeepSeek."""
    kind = draw(st.sampled_from(["mixtral", "qwen2_moe", "deepseek_v3"]))
    heads, L = draw(st.sampled_from([1, 2, 4])), draw(st.integers(1, 3))
    E = draw(st.integers(2 if kind == "deepseek_v3" else 1, 6))  # its router scores a group by
    # the sum of its two best experts: transformers' DeepSeek needs E >= 2
    common = dict(vocab_size=draw(st.integers(8, 40)), hidden_size=draw(st.sampled_from([8, 12, 16])),
                  num_layers=L, num_heads=heads, intermediate_size=draw(st.integers(1, 20)),
                  max_seq_len=16, num_experts=E, experts_per_token=draw(st.integers(1, E)))
    if kind == "mixtral":
        kv = draw(st.sampled_from([d for d in (1, 2, 4) if heads % d == 0]))
        return ModelShape(**common, num_kv_heads=kv, head_dim=2 * draw(st.integers(1, 4)),
                          moe_intermediate_size=common["intermediate_size"])
    Hm = draw(st.integers(1, 12))
    if kind == "qwen2_moe":
        return ModelShape(**common, num_kv_heads=heads, head_dim=2 * draw(st.integers(1, 4)),
                          attention_bias=draw(st.booleans()), moe_intermediate_size=Hm,
                          shared_expert_size=draw(st.integers(1, 16)), shared_expert_gate=True)
    rope = 2 * draw(st.integers(1, 3))
    return ModelShape(**common, num_kv_heads=heads, head_dim=rope + 2 * draw(st.integers(1, 3)),
                      qk_rope_head_dim=rope, v_head_dim=draw(st.integers(1, 8)),
                      kv_lora_rank=draw(st.integers(1, 8)),
                      q_lora_rank=draw(st.one_of(st.none(), st.integers(1, 8))),
                      moe_intermediate_size=Hm, shared_expert_size=Hm * draw(st.integers(0, 2)),
                      first_dense_layers=draw(st.integers(0, L)))


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # DeepSeek, no shared
@settings(max_examples=12, deadline=None)
@given(shape=moe_shapes(), batch=st.integers(1, 2), seq=st.integers(1, 6))
def test_any_moe_shape_counts_and_flops_as_transformers(shape, batch, seq):
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(shape.to_hf_config(
        attn_implementation="eager", experts_implementation="eager"))
    assert sum(p.numel() for p in model.parameters()) == params.count(shape)
    ids = torch.randint(0, shape.vocab_size, (batch, seq))
    assert measured.measured_flops(model, ids) == flops.training_flops(shape, batch, seq)


def test_moe_llama_flops_and_params_equal_counter():
    routings = {"mixtral": moe.MIXTRAL, "qwen2_moe": moe.QWEN2_MOE}
    deepseek_like = ModelShape(**BASE, num_experts=8, experts_per_token=2,
                               moe_intermediate_size=8, shared_expert_size=16,
                               first_dense_layers=1)
    cases = [(TINY[n], r) for n, r in routings.items()]
    cases.append((deepseek_like, moe.Routing("sigmoid", n_group=2, topk_group=1)))
    for shape, routing in cases:
        for attention in ("eager", "sdpa"):
            torch.manual_seed(0)
            model = moe.MoELlama(shape, routing, attn_impl=attention)
            assert sum(p.numel() for p in model.parameters()) == params.count(shape)
            ids = _ids(3, 5)
            assert measured.measured_flops(model, ids) == \
                flops.training_flops(shape, 3, 5, attention=attention)


def test_moe_flops_closed_form():
    shape, B, T = TINY["qwen2_moe"], 2, 9
    H, L = 16, 3
    attn = H * 16 + 2 * H * 8 + 16 * H
    moe_layer = attn + 4 * H + 3 * H * (2 * 8 + 12) + H  # router, k experts, shared, its gate
    P_mm = L * moe_layer + 40 * H
    assert flops.matmul_params(shape) == P_mm
    assert flops.training_flops(shape, B, T) == 6 * P_mm * B * T + 12 * B * T * T * 16 * L
    assert flops.six_p_tokens(shape, B * T) == 6 * params.active(shape) * B * T


def test_recompute_of_a_moe_layer_needs_early_stop_off():
    shape = TINY["deepseek_v3"]
    with pytest.raises(ValueError, match="early_stop=True is not modelled for a segment ending "
                                         "in a MoE layer"):
        flops.recompute_flops(shape, 1, 4, recompute="full")
    redone = flops.recompute_flops(shape, 1, 4, recompute="full", early_stop=False)
    assert redone == flops.forward_flops(shape, 1, 4) - 2 * 40 * 16 * 4  # all but lm_head


# --- configs refused, naming the key -----------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    (dict(decoder_sparse_step=2), r"config\['decoder_sparse_step'\]=2.*not modelled"),
    (dict(mlp_only_layers=[1]), r"config\['mlp_only_layers'\]=\[1\].*not modelled"),
    (dict(num_experts_per_tok=61), r"config\['num_experts_per_tok'\]=61 must be at most"),
    (dict(moe_intermediate_size=None), "config has no 'moe_intermediate_size'"),
    (dict(num_experts=0), r"config\['num_experts'\] must be a positive integer, got 0"),
    (dict(model_type="qwen2"), "MoE configs \\(num_experts\\) are not supported with "
                               "model_type='qwen2'"),
])
def test_qwen2_moe_config_refusals(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelShape.from_hf_config({**RELEASED["qwen1.5-moe-a2.7b"], **changes})


@pytest.mark.parametrize("changes, message", [
    (dict(moe_layer_freq=2), r"config\['moe_layer_freq'\]=2 is not modelled"),
    (dict(attention_bias=True), r"config\['attention_bias'\]=True is not modelled"),
    (dict(kv_lora_rank=None), "config has no 'kv_lora_rank'"),
    (dict(first_k_dense_replace=62), r"first_dense_layers must be an integer in \[0, 61\]"),
])
def test_deepseek_v3_config_refusals(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelShape.from_hf_config({**RELEASED["deepseek-v3"], **changes})


def test_hf_config_helpers_name_their_bad_argument():
    from llmtrain.model import hf_config

    with pytest.raises(ValueError, match="shape must be a ModelShape"):
        hf_config.hf_config_of("nope")
    with pytest.raises(ValueError, match="config must be a dict, a path or a transformers config"):
        hf_config.config_as_dict(3)
    with pytest.raises(ValueError, match="shape must be a ModelShape"):
        params.active(3)


def test_moe_config_without_model_type_is_refused():
    cfg = {k: v for k, v in RELEASED["mixtral-8x7b"].items() if k != "model_type"}
    with pytest.raises(ValueError, match="model_type missing; MoE configs \\(num_local_experts\\)"):
        ModelShape.from_hf_config(cfg)


# --- the CLI ----------------------------------------------------------------------------------

def test_cli_params_prints_total_and_active(capsys, tmp_path):
    assert cli.main(["params", "deepseek-v3"]) == 0
    out = capsys.readouterr().out
    assert "671,026,404,352 parameters (671.03 B), 37,552,282,624 active per token" in out
    path = tmp_path / "config.json"
    path.write_text(json.dumps(RELEASED["mixtral-8x7b"]))
    assert cli.main(["params", "--json", "--hf-config", str(path)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["total"], got["active"]) == (params.count("mixtral-8x7b"),
                                             params.active("mixtral-8x7b"))
    assert got["active_breakdown"] == params.active_breakdown("mixtral-8x7b")


def test_cli_flops_uses_the_active_parameters(capsys):
    assert cli.main(["flops", "qwen1.5-moe-a2.7b", "--seq", "128", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    shape = shapes.resolve("qwen1.5-moe-a2.7b")
    assert got["total"] == flops.training_flops(shape, 1, 128)
    assert got["six_p_tokens"] == 6 * params.active(shape) * 128


def test_cli_bad_moe_config_is_one_line_exit_2(capsys, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**RELEASED["qwen1.5-moe-a2.7b"], "decoder_sparse_step": 2}))
    assert cli.main(["params", "--hf-config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "decoder_sparse_step" in err[0]
