"""Live bytes and peaks, measured exactly: every storage alive, counted once (a TorchDispatchMode).

The oracle of ``cost.memory`` and ``cost.step_peak`` on the CPU, and of the optimizers' bytes
in notebook 12. Measured: tests/test_memory.py, tests/test_step_peak.py.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .. import check

__all__ = ["Peak", "measure_peak", "tracking"]


@dataclass(frozen=True)
class Peak:
    """Peak bytes allocated while a function ran."""

    peak_bytes: int
    start_bytes: int  # live when it started (CPU: the storages of ``include``)
    end_bytes: int
    device: str
    method: str


def measure_peak(fn: Callable[[], Any], *, device: Any = None, include: Any = ()) -> Peak:
    """Run ``fn()`` and return the peak bytes allocated meanwhile.

    CUDA: ``torch.cuda.max_memory_allocated`` (everything allocated on the device).
    CPU: an exact tracker: a TorchDispatchMode sees every tensor an op creates and a weak
    reference on its storage sees it freed (views counted once). Tensors that exist before
    ``fn`` runs are counted only if passed in ``include`` (modules, optimizers, tensors).
    """
    check.function("fn", fn)
    try:
        dev = torch.device(device) if device is not None else torch.device("cpu")
    except (RuntimeError, TypeError):
        check.fail("device", "a device name (cpu, cuda, cuda:1) or a torch.device", device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        start = torch.cuda.memory_allocated(dev)
        fn()
        torch.cuda.synchronize(dev)
        return Peak(torch.cuda.max_memory_allocated(dev), start, torch.cuda.memory_allocated(dev),
                    str(dev), "torch.cuda.max_memory_allocated")
    if dev.type != "cpu":
        raise ValueError(f"device must be cpu or cuda, got {dev}")
    with tracking(include=include) as tracker:
        start = tracker.live
        fn()
    return Peak(tracker.peak, start, tracker.live, "cpu", "TorchDispatchMode storage tracker")


@contextlib.contextmanager
def tracking(*, include: Any = ()):
    """The exact CPU tracker of ``measure_peak`` as a block: inside it, ``tracker.live`` is the
    bytes of the storages created so far and still alive (plus ``include``'s), ``tracker.peak``
    their maximum; read them at any moment (e.g. after each pipeline operation)."""
    tracker = _LiveStorages()
    for t in _tensors_of(include):
        tracker.add(t)
    with tracker:
        yield tracker


class _LiveStorages(torch.utils._python_dispatch.TorchDispatchMode):
    """Live bytes of the CPU storages created by ops (and of any added by hand)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def add(self, t: torch.Tensor) -> None:
        if t.device.type != "cpu":
            return
        st = t.untyped_storage()
        key = st._cdata
        if key in self._refs and self._refs[key]() is not None:
            return
        nbytes = st.nbytes()
        self._refs[key] = weakref.ref(st, lambda _, key=key, n=nbytes: self._free(key, n))
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def _free(self, key: int, nbytes: int) -> None:
        self._refs.pop(key, None)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:  # a view allocates nothing: its storage is its base's
            return out
        leaves = torch.utils._pytree.tree_leaves
        inputs = {t.untyped_storage()._cdata for t in leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in leaves(out):  # new storages only: in-place and out= ops reuse an input's
            if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in inputs:
                self.add(t)
        return out


def _tensors_of(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, torch.nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()
        for p in obj.parameters():
            if p.grad is not None:
                yield p.grad
    elif isinstance(obj, torch.optim.Optimizer):
        for state in obj.state.values():
            yield from (v for v in state.values() if isinstance(v, torch.Tensor))
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors_of(o)
    else:
        raise ValueError(f"include must hold tensors, modules or optimizers, got {type(obj).__name__}")
