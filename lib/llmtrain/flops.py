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
Pitfall: torch has no formula for the CPU flash SDPA op and its backward, so an SDPA model's
attention silently counts 0 on CPU unless the counter is ``flop_counter()``.
"""

from __future__ import annotations

import torch
from torch.utils import flop_counter as _fc

from . import check, params
from .llama import ATTN_IMPLS
from .recompute import STRATEGIES, segments
from .shapes import ModelShape

__all__ = ["STRATEGIES", "CPU_SDPA_MAPPING", "flop_counter", "measured_flops",
           "matmul_params", "forward_flops", "backward_flops", "recompute_flops",
           "training_flops", "six_p_tokens", "rule_of_thumb_error"]



# --- counting with torch ------------------------------------------------------------

def _cpu_sdpa_forward(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return _fc.sdpa_flop_count(q, k, v)  # torch's formula for the CUDA flash op


def _cpu_sdpa_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return _fc.sdpa_backward_flop_count(grad_out, q, k, v)


# The CPU flash-attention op and its backward, counted as torch counts the CUDA flash op.
CPU_SDPA_MAPPING = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_forward,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def flop_counter(**kwargs) -> _fc.FlopCounterMode:
    """``FlopCounterMode`` that also counts CPU SDPA (``CPU_SDPA_MAPPING``); no table printed
    unless ``display=True``. Other keyword arguments go to ``FlopCounterMode``."""
    mapping = {**CPU_SDPA_MAPPING, **(kwargs.pop("custom_mapping", None) or {})}
    kwargs.setdefault("display", False)
    return _fc.FlopCounterMode(custom_mapping=mapping, **kwargs)


def measured_flops(model: torch.nn.Module, input_ids: torch.Tensor, *,
                   backward: bool = True) -> int:
    """FLOPs counted by ``flop_counter()`` for ``model(input_ids=ids, labels=ids)`` and, with
    ``backward``, ``loss.backward()``. Works for ``llmtrain.llama.Llama`` and transformers'
    causal LMs, on real or meta tensors."""
    check.module("model", model)
    check.tensor("input_ids", input_ids, dim=2, floating=False)
    check.boolean("backward", backward)
    with flop_counter() as counter:
        out = model(input_ids=input_ids, labels=input_ids)
        if backward:
            out.loss.backward()
    return counter.get_total_flops()


# --- formulas -----------------------------------------------------------------------

def _check(shape, batch, seq, attention="eager", recompute="none", k=None) -> ModelShape:
    """The shape (a preset name resolved), after checking every argument."""
    shape = check.shape("shape", shape)
    check.positive_int("batch", batch)
    check.positive_int("seq", seq)
    check.one_of("attention", attention, ATTN_IMPLS)
    check.one_of("recompute", recompute, STRATEGIES)
    segments(shape.num_layers, recompute, k)  # ValueError naming k when k does not fit
    return shape


def _layer_params(shape: ModelShape) -> int:
    """Matmul weights of one decoder layer: 2H·Nd + 2H·N_kv·d + 3HH'."""
    H = shape.hidden_size
    return 2 * H * shape.q_size + 2 * H * shape.kv_size + 3 * H * shape.intermediate_size


def matmul_params(shape: ModelShape) -> int:
    """P_mm = L(2H·Nd + 2H·N_kv·d + 3HH') + VH: weights that take part in matmuls (lm_head
    yes, even when tied; input embedding, norms and biases no). Source: facts §3; measured:
    see tests/test_flops.py::test_matmul_params."""
    shape = _check(shape, 1, 1)
    return shape.num_layers * _layer_params(shape) + shape.vocab_size * shape.hidden_size


def _core_flops(shape: ModelShape, batch: int, seq: int) -> int:
    """One layer's attention core, forward: 2·BT²·Nd (QKᵀ) + 2·BT²·Nd (softmax·V)."""
    return 4 * batch * seq * seq * shape.q_size


def forward_flops(shape: ModelShape, batch: int, seq: int) -> int:
    """2·P_mm·BT + 4·BT²·Nd·L, eager and SDPA alike. Source: Kaplan et al. 2020 (2P per
    token), attention term as in Narayanan et al. 2021 (arXiv 2104.04473, FLOPs appendix);
    measured: see tests/test_flops.py::test_reference_llama_matches_counter."""
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
        core += 2 * batch * seq * seq * shape.q_size
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
    tests/test_flops.py::test_reference_llama_matches_counter.
    """
    shape = _check(shape, batch, seq, attention, recompute, k)
    check.boolean("early_stop", early_stop)
    core = _core_flops(shape, batch, seq)
    if recompute == "selective":
        if early_stop and attention == "eager":
            core //= 2
        return shape.num_layers * core
    layer = 2 * _layer_params(shape) * batch * seq + core
    skipped = 2 * batch * seq * shape.hidden_size * shape.intermediate_size if early_stop else 0
    return sum(len(seg) * layer - skipped for seg in segments(shape.num_layers, recompute, k))


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
    """The rule of thumb 6·P·tokens with P = params.count(shape), all parameters (embedding,
    norms and biases included). Source: Kaplan et al. 2020 §2.1."""
    check.positive_int("tokens", tokens)
    shape = _check(shape, 1, 1)
    return 6 * params.count(shape) * tokens


def rule_of_thumb_error(shape: ModelShape, batch: int, seq: int, **kwargs) -> float:
    """Relative error of the rule of thumb: six_p_tokens(shape, BT) / training_flops(...) - 1
    (negative: 6PT underestimates). LLaMA-7B, T = 2048, eager: -0.057 (facts §3: exact =
    1.060 × 6PT); see tests/test_flops.py::test_llama_7b_rule_of_thumb."""
    exact = training_flops(shape, batch, seq, **kwargs)
    return six_p_tokens(shape, batch * seq) / exact - 1
