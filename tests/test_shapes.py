import json

import pytest
from hypothesis import given, strategies as st

from llmtrain.model import shapes
from llmtrain.model.shapes import ModelShape

BASE = dict(vocab_size=100, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
            intermediate_size=96, max_seq_len=32)


def test_presets_match_the_slides_table():
    # the slides' Llama table: hidden, heads, layers, kv heads, FFN, context, vocabulary
    table = {
        "llama-7b": (4096, 32, 32, 32, 11008, 2048, 32000),
        "llama-13b": (5120, 40, 40, 40, 13824, 2048, 32000),
        "llama-33b": (6656, 52, 60, 52, 17920, 2048, 32000),
        "llama-65b": (8192, 64, 80, 64, 22016, 2048, 32000),
        "llama2-7b": (4096, 32, 32, 32, 11008, 4096, 32000),
        "llama2-13b": (5120, 40, 40, 40, 13824, 4096, 32000),
        "llama2-70b": (8192, 64, 80, 8, 28672, 4096, 32000),
        "llama3-8b": (4096, 32, 32, 8, 14336, 8192, 128256),
        "llama3-70b": (8192, 64, 80, 8, 28672, 8192, 128256),
    }
    for name, (H, N, L, Nkv, Hff, T, V) in table.items():
        s = shapes.get(name)
        assert (s.hidden_size, s.num_heads, s.num_layers, s.num_kv_heads, s.intermediate_size,
                s.max_seq_len, s.vocab_size) == (H, N, L, Nkv, Hff, T, V), name
        assert s.name == name and s.d_head == H // N
        assert s.is_gqa == (Nkv != N)


def test_unknown_preset_lists_known_names():
    with pytest.raises(ValueError, match="unknown model name 'llama-8b'.*llama3-8b"):
        shapes.get("llama-8b")


@pytest.mark.parametrize("field,value,message", [
    ("hidden_size", 0, "hidden_size must be a positive integer"),
    ("vocab_size", -5, "vocab_size must be a positive integer"),
    ("num_layers", 2.0, "num_layers must be a positive integer"),
    ("num_heads", True, "num_heads must be a positive integer"),
    ("max_seq_len", "32", "max_seq_len must be a positive integer"),
    ("num_heads", 5, "num_heads=5 must divide hidden_size=64"),
    ("num_kv_heads", 3, "num_kv_heads=3 must divide num_heads=4"),
    ("head_dim", 0, "head_dim must be a positive integer"),
    ("head_dim", 15, "head_dim=15 must be even"),
    ("tie_embeddings", 1, "tie_embeddings must be True or False"),
    ("norm_eps", 0.0, "norm_eps must be a positive finite number"),
])
def test_validation_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        ModelShape(**{**BASE, field: value})


@given(H=st.integers(1, 4096), N=st.integers(1, 128))
def test_heads_must_divide_hidden_unless_head_dim_given(H, N):
    kw = {**BASE, "hidden_size": H, "num_heads": N, "num_kv_heads": 1}
    if H % N == 0 and (H // N) % 2 == 0:
        assert ModelShape(**kw).d_head == H // N
    else:
        with pytest.raises(ValueError, match="num_heads|head_dim"):
            ModelShape(**kw)
    assert ModelShape(**kw, head_dim=8).q_size == 8 * N


def test_replace_validates_again():
    s = ModelShape(**BASE)
    assert s.replace(num_kv_heads=4).num_kv_heads == 4
    with pytest.raises(ValueError, match="num_kv_heads"):
        s.replace(num_kv_heads=3)


LLAMA_JSON = {"model_type": "llama", "vocab_size": 1000, "hidden_size": 128, "num_hidden_layers": 3,
              "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 344,
              "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 500000.0}


def test_from_dict_path_folder_and_config_object(tmp_path):
    from transformers import LlamaConfig

    (tmp_path / "config.json").write_text(json.dumps(LLAMA_JSON))
    from_dict = ModelShape.from_hf_config(LLAMA_JSON)
    from_path = ModelShape.from_hf_config(tmp_path / "config.json")
    from_dir = ModelShape.from_hf_config(str(tmp_path))
    obj = LlamaConfig(**{k: v for k, v in LLAMA_JSON.items() if k != "model_type"})
    from_obj = ModelShape.from_hf_config(obj)
    for s in (from_dict, from_path, from_dir, from_obj):
        assert (s.vocab_size, s.hidden_size, s.num_layers, s.num_heads, s.num_kv_heads,
                s.intermediate_size, s.max_seq_len) == (1000, 128, 3, 8, 2, 344, 512)
        assert s.rope_theta == 500000.0 and s.norm_eps == 1e-5
        assert not (s.tie_embeddings or s.attention_bias or s.o_bias or s.mlp_bias)


def test_qwen2_has_qkv_bias_and_mistral_none():
    qwen = ModelShape.from_hf_config({**LLAMA_JSON, "model_type": "qwen2", "tie_word_embeddings": True})
    assert qwen.attention_bias and not qwen.o_bias and qwen.tie_embeddings
    mistral = ModelShape.from_hf_config({**LLAMA_JSON, "model_type": "mistral", "attention_bias": True})
    assert not (mistral.attention_bias or mistral.o_bias)
    llama = ModelShape.from_hf_config({**LLAMA_JSON, "attention_bias": True, "mlp_bias": True})
    assert llama.attention_bias and llama.o_bias and llama.mlp_bias


def test_kv_heads_default_to_heads_and_explicit_head_dim_is_kept():
    s = ModelShape.from_hf_config({k: v for k, v in LLAMA_JSON.items() if k != "num_key_value_heads"})
    assert s.num_kv_heads == 8 and s.head_dim is None
    s = ModelShape.from_hf_config({**LLAMA_JSON, "model_type": "mistral", "head_dim": 32})
    assert s.d_head == 32 and s.q_size == 256


@pytest.mark.parametrize("config,message", [
    ({**LLAMA_JSON, "model_type": "gpt2"}, "model_type='gpt2' is not supported"),
    ({k: v for k, v in LLAMA_JSON.items() if k != "hidden_size"}, "config has no 'hidden_size'"),
    ({**LLAMA_JSON, "num_attention_heads": 7}, "num_heads=7 must divide hidden_size=128"),
    ("/no/such/config.json", "does not exist"),
    (42, "config must be a dict"),
])
def test_bad_configs(config, message):
    with pytest.raises(ValueError, match=message):
        ModelShape.from_hf_config(config)


def test_bad_json_file(tmp_path):
    p = tmp_path / "config.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelShape.from_hf_config(p)
    p.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        ModelShape.from_hf_config(p)


def test_round_trip_through_transformers_config():
    for name in shapes.names():
        s = shapes.get(name)
        back = ModelShape.from_hf_config(s.to_hf_config(), name=name)
        assert back == s, name


MOE = dict(num_experts=4, experts_per_token=2, moe_intermediate_size=32)


def test_moe_fields_default_to_a_dense_shape():
    s = ModelShape(**BASE)
    assert not s.is_moe and s.moe_layers == 0 and not s.is_mla
    m = ModelShape(**BASE, **MOE, shared_expert_size=64, first_dense_layers=1)
    assert m.is_moe and m.moe_layers == 1


@pytest.mark.parametrize("changes,message", [
    (dict(num_experts=-1), "num_experts must be an integer >= 0"),
    (dict(MOE, experts_per_token=0), r"experts_per_token must be an integer in \[1, 4\]"),
    (dict(MOE, experts_per_token=5), r"experts_per_token must be an integer in \[1, 4\]"),
    (dict(MOE, moe_intermediate_size=None), "moe_intermediate_size must be given"),
    (dict(MOE, moe_intermediate_size=0), "moe_intermediate_size must be a positive integer"),
    (dict(MOE, first_dense_layers=3), r"first_dense_layers must be an integer in \[0, 2\]"),
    (dict(MOE, shared_expert_gate=True), "shared_expert_gate=True needs shared_expert_size"),
    (dict(MOE, mlp_bias=True), "mlp_bias=True is not supported with num_experts"),
    (dict(experts_per_token=2), "experts_per_token=2 needs num_experts > 0"),
    (dict(shared_expert_size=8), "shared_expert_size=8 needs num_experts > 0"),
    (dict(kv_lora_rank=8), "v_head_dim must be given with kv_lora_rank"),
    (dict(q_lora_rank=8), "q_lora_rank=8 needs kv_lora_rank"),
    (dict(kv_lora_rank=8, v_head_dim=16, qk_rope_head_dim=16),
     r"qk_rope_head_dim=16 must be even and in \(0, head_dim=16\)"),
    (dict(kv_lora_rank=8, v_head_dim=16, qk_rope_head_dim=8), "num_kv_heads=2 must equal"),
])
def test_moe_and_mla_validation_names_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelShape(**{**BASE, **changes})
