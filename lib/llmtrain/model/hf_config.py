"""Hugging Face configs ↔ ``ModelShape``: read a ``config.json`` (or a transformers config, or a
dict) into the integers that fix the model, and build the matching transformers config back.

Read: dense Llama, Mistral, Qwen2; mixtures of experts Mixtral (``num_local_experts``,
``num_experts_per_tok``), Qwen2-MoE (``num_experts``, ``moe_intermediate_size``,
``shared_expert_intermediate_size``: its shared expert and its sigmoid gate) and DeepSeek-V2/V3
(``n_routed_experts``, ``n_shared_experts``, ``first_k_dense_replace`` and its multi-head latent
attention: ``q_lora_rank``, ``kv_lora_rank``, ``qk_nope_head_dim``, ``qk_rope_head_dim``,
``v_head_dim``). What a ``ModelShape`` cannot hold is refused, naming the key (Qwen2-MoE's
dense layers between MoE layers, DeepSeek's ``moe_layer_freq`` ≠ 1, biases on MLA).
DeepSeek-V3's multi-token-prediction module (``num_nextn_predict_layers``) is not part of the
model transformers builds nor of its 671B (the DeepSeek-V3 README): it is ignored.
Checked: tests/test_shapes.py, tests/test_moe_counts.py (counts equal transformers' models).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from .. import check

__all__ = ["HF_TYPES", "MOE_TYPES", "MOE_KEYS", "config_as_dict", "shape_from_hf_config",
           "hf_config_of"]

MOE_TYPES = ("mixtral", "qwen2_moe", "deepseek_v2", "deepseek_v3")
HF_TYPES = ("llama", "mistral", "qwen2", *MOE_TYPES)
# keys that make a config a mixture of experts (Mixtral, Qwen2-MoE, DeepSeek)
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
_EXPERTS_KEY = {"mixtral": "num_local_experts", "qwen2_moe": "num_experts",
                "deepseek_v2": "n_routed_experts", "deepseek_v3": "n_routed_experts"}


def config_as_dict(config: Any) -> dict:
    """A config as a plain dict: from a dict, a transformers config, a ``config.json`` or its
    folder. Unreadable files are refused with a ValueError naming the path."""
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ValueError(f"config file {path!r} does not exist") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {path!r} is not valid JSON: {e}") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"config file {path!r} is not UTF-8 text (a config.json): "
                             f"byte {e.start} is {e.object[e.start:e.start + 1]!r}") from None
        except OSError as e:
            raise ValueError(f"config file {path!r} cannot be read: {e.strerror or e}") from None
        if not isinstance(data, Mapping):
            raise ValueError(f"config file {path!r} does not hold a JSON object")
        return dict(data)
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        d = config.to_dict()
        d.setdefault("model_type", getattr(config, "model_type", "llama"))
        return d
    check.fail("config", "a dict, a path or a transformers config", config)


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _int(cfg: dict, key: str, default: Any = "required", minimum: int = 1) -> Any:
    value = cfg.get(key)
    if value is None:
        if default == "required":
            raise ValueError(f"config has no {key!r}")
        return default
    return check.integer(f"config[{key!r}]", value, minimum)


def _moe_fields(cfg: dict, model_type: str) -> dict:
    """ModelShape's MoE and MLA fields from a Mixtral, Qwen2-MoE or DeepSeek-V2/V3 config."""
    E = _int(cfg, _EXPERTS_KEY[model_type])
    k = _int(cfg, "num_experts_per_tok")
    if k > E:
        raise ValueError(f"config['num_experts_per_tok']={k} must be at most the number of "
                         f"experts {_EXPERTS_KEY[model_type]}={E}")
    out = dict(num_experts=E, experts_per_token=k)
    if model_type == "mixtral":  # every expert as wide as the dense FFN
        return {**out, "moe_intermediate_size": _int(cfg, "intermediate_size")}
    out["moe_intermediate_size"] = _int(cfg, "moe_intermediate_size")
    if model_type == "qwen2_moe":
        step = _int(cfg, "decoder_sparse_step", 1)
        if step != 1 or cfg.get("mlp_only_layers"):
            raise ValueError(f"config['decoder_sparse_step']={step}, config['mlp_only_layers']="
                             f"{cfg.get('mlp_only_layers')!r}: dense layers between MoE layers "
                             "are not modelled (only decoder_sparse_step 1, no mlp_only_layers)")
        shared = _int(cfg, "shared_expert_intermediate_size")
        return {**out, "shared_expert_size": shared, "shared_expert_gate": True}
    freq = _int(cfg, "moe_layer_freq", 1)
    if freq != 1:
        raise ValueError(f"config['moe_layer_freq']={freq} is not modelled (only 1: every layer "
                         "from first_k_dense_replace on is a MoE layer)")
    if cfg.get("mlp_bias"):
        raise ValueError("config['mlp_bias']=True is not modelled (biases on the dense MLP)")
    if cfg.get("attention_bias"):
        raise ValueError("config['attention_bias']=True is not modelled with multi-head latent "
                         "attention (DeepSeek-V3 has none)")
    shared = _int(cfg, "n_shared_experts", 0, 0) * out["moe_intermediate_size"]
    rope = _int(cfg, "qk_rope_head_dim")
    return {**out, "shared_expert_size": shared,
            "first_dense_layers": _int(cfg, "first_k_dense_replace", 0, 0),
            "q_lora_rank": _int(cfg, "q_lora_rank", None), "kv_lora_rank": _int(cfg, "kv_lora_rank"),
            "qk_rope_head_dim": rope, "v_head_dim": _int(cfg, "v_head_dim"),
            "head_dim": _int(cfg, "qk_nope_head_dim") + rope}


def shape_from_hf_config(cls: type, config: Any, name: str | None = None):
    """``cls`` (``ModelShape``) read from a config; see the module's docstring for what is read.
    Called by ``ModelShape.from_hf_config``."""
    cfg = config_as_dict(config)
    moe = [k for k in MOE_KEYS if cfg.get(k) is not None]
    if moe and "model_type" not in cfg:  # a MoE config stripped of its model_type
        raise ValueError(f"model_type missing; MoE configs ({', '.join(moe)}) are not supported "
                         f"without it: give model_type, one of {', '.join(MOE_TYPES)}")
    model_type = cfg.get("model_type", "llama")
    if model_type not in HF_TYPES:
        raise ValueError(
            f"model_type={model_type!r} is not supported; supported: {', '.join(HF_TYPES)}")
    if moe and model_type not in MOE_TYPES:
        raise ValueError(f"MoE configs ({', '.join(moe)}) are not supported with model_type="
                         f"{model_type!r}: MoE model types are {', '.join(MOE_TYPES)}")
    for key in ("tie_word_embeddings", "attention_bias", "mlp_bias", "qkv_bias"):
        if cfg.get(key) is not None and not isinstance(cfg[key], bool):  # "false" is truthy
            check.fail(f"config[{key!r}]", "a JSON boolean (true or false, no quotes)", cfg[key])
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size"):
        _int(cfg, key)
    for key in ("num_key_value_heads", "head_dim", "max_position_embeddings"):
        check.optional(check.positive_int, f"config[{key!r}]", cfg.get(key))  # 0 is no default
    for key in ("rms_norm_eps", "rope_theta"):
        check.optional(check.positive_number, f"config[{key!r}]", cfg.get(key))
    heads = cfg["num_attention_heads"]
    kv = _or(cfg.get("num_key_value_heads"), heads)  # absent: multi-head attention
    bias = bool(cfg.get("attention_bias") or False)
    if model_type == "llama":
        qkv_bias, o_bias, mlp_bias = bias, bias, bool(cfg.get("mlp_bias") or False)
    elif model_type == "qwen2":  # q/k/v always carry a bias, o_proj never
        qkv_bias, o_bias, mlp_bias = True, False, False
    elif model_type == "qwen2_moe":  # q/k/v carry a bias unless qkv_bias is false
        qkv_bias, o_bias, mlp_bias = _or(cfg.get("qkv_bias"), True), False, False
    else:  # mistral, mixtral, deepseek_v3: no biases
        qkv_bias, o_bias, mlp_bias = False, False, False
    extra = _moe_fields(cfg, model_type) if model_type in MOE_TYPES else {}
    if extra.get("kv_lora_rank") is not None:
        kv = heads  # MLA: every head has its own K and V (num_key_value_heads is not used)
    head_dim = extra.pop("head_dim", cfg.get("head_dim"))
    if head_dim is not None and head_dim * heads == cfg["hidden_size"] and "kv_lora_rank" not in extra:
        head_dim = None  # the usual H/N: keep the shape canonical
    rope = cfg.get("rope_parameters") or {}
    theta = rope.get("rope_theta") if isinstance(rope, Mapping) else None
    check.optional(check.positive_number, "config['rope_parameters']['rope_theta']", theta)
    theta = theta or cfg.get("rope_theta") or 10000.0
    return cls(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        num_layers=cfg["num_hidden_layers"], num_heads=heads, num_kv_heads=kv,
        intermediate_size=cfg["intermediate_size"],
        max_seq_len=_or(cfg.get("max_position_embeddings"), 2048),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=qkv_bias, o_bias=o_bias, mlp_bias=mlp_bias, head_dim=head_dim,
        norm_eps=float(_or(cfg.get("rms_norm_eps"), 1e-6)), rope_theta=float(theta),
        name=name or cfg.get("_name_or_path") or model_type, **extra)


def hf_config_of(shape: Any, **overrides: Any):
    """The matching transformers config: ``Qwen2Config`` for q/k/v-bias-only shapes,
    ``MistralConfig`` for bias-free shapes whose N does not divide H (explicit head_dim), else
    ``LlamaConfig``; for MoE shapes ``DeepseekV3Config`` (MLA or first_dense_layers),
    ``Qwen2MoeConfig`` (a shared expert), else ``MixtralConfig``. Needs transformers; called by
    ``ModelShape.to_hf_config``. Checked: tests/test_shapes.py, tests/test_moe_counts.py."""
    import transformers

    if not hasattr(shape, "is_moe") or not hasattr(shape, "d_head"):  # shapes imports this module
        check.fail("shape", "a ModelShape (ModelShape.to_hf_config calls this)", shape)
    common = dict(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size, num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_seq_len, rms_norm_eps=shape.norm_eps,
        tie_word_embeddings=shape.tie_embeddings, head_dim=shape.d_head,
    )
    if int(transformers.__version__.split(".")[0]) >= 5:
        common["rope_parameters"] = {"rope_type": "default", "rope_theta": shape.rope_theta}
    else:
        common["rope_theta"] = shape.rope_theta
    if shape.is_moe:
        return _moe_hf_config(transformers, shape, common, overrides)
    common.update(overrides)
    if shape.attention_bias and not shape.o_bias and not shape.mlp_bias:
        return transformers.Qwen2Config(**common)
    if shape.attention_bias != shape.o_bias:
        raise ValueError("Llama configs put a bias on q, k, v and o together or on none: "
                         f"attention_bias={shape.attention_bias}, o_bias={shape.o_bias}")
    if shape.hidden_size % shape.num_heads:
        if shape.attention_bias or shape.mlp_bias:
            raise ValueError("no transformers config has biases and num_heads not dividing "
                             f"hidden_size ({shape.num_heads} ∤ {shape.hidden_size})")
        return transformers.MistralConfig(**common)
    return transformers.LlamaConfig(attention_bias=shape.attention_bias,
                                    mlp_bias=shape.mlp_bias, **common)


def _moe_hf_config(transformers: Any, shape: Any, common: dict, overrides: dict):
    k, E, Hm = shape.experts_per_token, shape.num_experts, shape.moe_intermediate_size
    if shape.is_mla or shape.first_dense_layers:
        if not shape.is_mla:
            raise ValueError("first_dense_layers > 0 needs multi-head latent attention here "
                             "(only DeepseekV3Config has dense first layers)")
        if shape.shared_expert_size % Hm or shape.shared_expert_gate:
            raise ValueError(f"DeepSeek-V3's shared experts are n × moe_intermediate_size={Hm}, "
                             f"ungated: shared_expert_size={shape.shared_expert_size}")
        common.pop("head_dim")
        return transformers.DeepseekV3Config(**{
            **common, "n_routed_experts": E, "num_experts_per_tok": k,
            "moe_intermediate_size": Hm, "n_shared_experts": shape.shared_expert_size // Hm,
            "first_k_dense_replace": shape.first_dense_layers, "n_group": 1, "topk_group": 1,
            "q_lora_rank": shape.q_lora_rank, "kv_lora_rank": shape.kv_lora_rank,
            "qk_nope_head_dim": shape.qk_nope_head_dim,
            "qk_rope_head_dim": shape.qk_rope_head_dim, "v_head_dim": shape.v_head_dim,
            **overrides})
    if shape.o_bias or shape.mlp_bias:
        raise ValueError("no transformers MoE config has biases on o_proj or the MLP")
    if shape.shared_expert_size:
        if not shape.shared_expert_gate:
            raise ValueError("Qwen2MoeConfig gates its shared expert: shared_expert_gate must "
                             "be True with shared_expert_size > 0")
        return transformers.Qwen2MoeConfig(**{
            **common, "num_experts": E, "num_experts_per_tok": k, "moe_intermediate_size": Hm,
            "shared_expert_intermediate_size": shape.shared_expert_size,
            "qkv_bias": shape.attention_bias, **overrides})
    if shape.attention_bias or Hm != shape.intermediate_size:
        raise ValueError("MixtralConfig has no biases and experts as wide as intermediate_size: "
                         f"attention_bias={shape.attention_bias}, moe_intermediate_size={Hm}, "
                         f"intermediate_size={shape.intermediate_size}")
    return transformers.MixtralConfig(**{**common, "num_local_experts": E,
                                         "num_experts_per_tok": k, **overrides})
