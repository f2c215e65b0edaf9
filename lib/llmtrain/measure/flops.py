"""Training FLOPs counted by torch's ``FlopCounterMode``: the oracle of ``cost.flops``' formulas.

Pitfall: torch has no formula for the CPU flash SDPA op and its backward, so an SDPA model's
attention silently counts 0 on CPU unless the counter is ``flop_counter()``.
Checked: tests/test_flops.py (every formula of ``cost.flops`` equals this count).
"""

from __future__ import annotations

import torch
from torch.utils import flop_counter as _fc

from .. import check

__all__ = ["CPU_SDPA_MAPPING", "flop_counter", "measured_flops"]


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
    ``backward``, ``loss.backward()``. Works for ``llmtrain.model.llama.Llama`` and transformers'
    causal LMs, on real or meta tensors."""
    check.module("model", model)
    check.tensor("input_ids", input_ids, dim=2, floating=False)
    check.boolean("backward", backward)
    with flop_counter() as counter:
        out = model(input_ids=input_ids, labels=input_ids)
        if backward:
            out.loss.backward()
    return counter.get_total_flops()
