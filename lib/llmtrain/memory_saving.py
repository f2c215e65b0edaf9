"""Memory-saving training (slides: the six headlines of 训练显存估计), the accounting side.

What each method changes in the 16 bytes per parameter of mixed-precision AdamW, measured
from real optimizers' state tensors (``state_tensor_bytes``). The methods themselves are in
``llmtrain.lowbit`` (8-/4-bit optimizer states), ``llmtrain.galore`` (gradient low-rank
projection) and ``llmtrain.lomo`` (the update fused into backward).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from . import check

__all__ = ["state_tensor_bytes", "state_bytes_per_param", "eager"]


def _tensors(obj: Any, seen: set[int]):
    """Every plain tensor reachable from ``obj`` (dicts, lists, tensor subclasses' inner
    tensors, plain objects' attributes such as galore-torch's projector), once per object."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if hasattr(obj, "__tensor_flatten__") and type(obj) is not torch.Tensor:
            names, _ = obj.__tensor_flatten__()  # torchao's OptimState8bit: codes, scale, qmap
            for name in names:
                yield from _tensors(getattr(obj, name), seen)
        else:
            yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v, seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.nn.Module)):
        yield from _tensors(vars(obj), seen)


def state_tensor_bytes(optimizer: torch.optim.Optimizer, *, count_steps: bool = False) -> int:
    """Bytes of every tensor an optimizer keeps in its state, measured from the tensors
    themselves (each storage once): ``torch.optim.AdamW``'s exp_avg/exp_avg_sq, torchao's
    quantised subclasses (codes + scales + quantisation map), bitsandbytes' state1/state2 +
    absmax + qmap, galore-torch's projected moments and projection matrices. The per-tensor
    ``step`` counters (0-dim) are left out unless ``count_steps``: they are not per-parameter
    memory. Measured: see tests/test_memory_saving.py."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        check.fail("optimizer", "a torch.optim.Optimizer", optimizer)
    seen: set[int] = set()
    storages: dict[int, int] = {}
    for state in optimizer.state.values():
        for t in _tensors(state, seen):
            if t.dim() == 0 and not count_steps:
                continue
            st = t.untyped_storage()
            storages[st.data_ptr() or id(st)] = st.nbytes()
    return sum(storages.values())


def state_bytes_per_param(optimizer: torch.optim.Optimizer, **kw: Any) -> float:
    """``state_tensor_bytes(optimizer)`` divided by the number of parameters it updates."""
    n = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    return state_tensor_bytes(optimizer, **kw) / n


@contextlib.contextmanager
def eager():
    """Inside the block ``torch.compile(fn)`` returns ``fn`` unchanged (``TORCHDYNAMO_DISABLE``,
    read by torch at each call). torchao's low-bit optimizers compile their step with gcc on the
    CPU (~20-50 s on the first step, measured); eager, they run in ~0.1 s a step on 2M
    parameters, with the same states."""
    old = os.environ.get("TORCHDYNAMO_DISABLE")
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TORCHDYNAMO_DISABLE"]
        else:
            os.environ["TORCHDYNAMO_DISABLE"] = old
