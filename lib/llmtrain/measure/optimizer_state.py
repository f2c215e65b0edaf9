"""The bytes an optimizer really keeps, measured from its state tensors (notebook 12).

``state_tensor_bytes`` reads every tensor of an optimizer's state, each storage once (torch's,
torchao's quantised subclasses, bitsandbytes', galore-torch's projectors, ours):
``llmtrain.cost.methods`` counts what each memory-saving method should keep, and
tests/test_memory_methods.py compares the two. ``grad_bytes``: the gradients a model holds.
The optimizers themselves are in ``llmtrain.optim``.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import check

__all__ = ["state_tensor_bytes", "measured_bytes_per_param", "grad_bytes"]


def _tensors(obj: Any, seen: set[int], skip: tuple[str, ...]):
    """Every plain tensor reachable from ``obj`` (dicts, lists, tensor subclasses' inner
    tensors, plain objects' attributes such as galore-torch's projector), once per object;
    dict entries named in ``skip`` are left out."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if hasattr(obj, "__tensor_flatten__") and type(obj) is not torch.Tensor:
            names, _ = obj.__tensor_flatten__()  # torchao's OptimState8bit: codes, scale, qmap
            for name in names:
                yield from _tensors(getattr(obj, name), seen, skip)
        else:
            yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if k not in skip:
                yield from _tensors(v, seen, skip)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v, seen, skip)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.nn.Module)):
        yield from _tensors(vars(obj), seen, skip)


def state_tensor_bytes(optimizer: torch.optim.Optimizer, *, count_steps: bool = False) -> int:
    """Bytes of every tensor an optimizer keeps in its state, measured from the tensors
    themselves (each storage once): ``torch.optim.AdamW``'s exp_avg/exp_avg_sq, torchao's
    quantised subclasses (codes + scales + quantisation map), bitsandbytes' state1/state2 +
    absmax + qmap, galore-torch's projected moments and projection matrices. The per-tensor
    ``step`` counters are left out unless ``count_steps``: they are not per-parameter memory.
    Measured: see tests/test_memory_saving.py."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        check.fail("optimizer", "a torch.optim.Optimizer", optimizer)
    check.boolean("count_steps", count_steps)
    seen: set[int] = set()
    storages: dict[int, int] = {}
    skip = () if count_steps else ("step",)
    for state in optimizer.state.values():
        for t in _tensors(state, seen, skip):
            st = t.untyped_storage()
            storages[st.data_ptr() or id(st)] = st.nbytes()
    return sum(storages.values())


def measured_bytes_per_param(optimizer: torch.optim.Optimizer, **kw: Any) -> float:
    """``state_tensor_bytes(optimizer)`` divided by the number of parameters it updates."""
    n = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    return state_tensor_bytes(optimizer, **kw) / n


def grad_bytes(model: torch.nn.Module) -> int:
    """Bytes of the gradients a model holds now (``p.grad`` that are not None)."""
    check.module("model", model)
    return sum(p.grad.numel() * p.grad.element_size() for p in model.parameters()
               if p.grad is not None)
