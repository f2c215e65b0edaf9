"""What the ranks run in notebook 14 §1–2 (上下文并行): plain data back, one launch per check.

- ``llama_cp``: the reference LLaMA, one process and context parallel (``context_parallel.
  apply``) from the same seed, for each (method, layout) asked: the largest |difference| of the
  gathered logits, the loss and every gradient (after ``sum_grads``), the bytes this rank sent
  by ``comm`` tag, and the bytes it saved for backward (``measure.activations``).
- ``saved_cp``: the bytes this rank saves for backward in one forward (``measure.activations``)
  of each (method, layout), nothing else (the closed forms take 32- and 16-bit models).
- ``section``: notebook 14 §2's one launch: ``llama_cp`` in float64 (equality, bytes),
  ``saved_cp`` in fp32, ``torch_cp``.
- ``torch_cp``: PyTorch's own ``torch.distributed.tensor.experimental.context_parallel`` on
  this rank's devices: what it returns, or the exception it raises.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ... import check
from ...cost.context import LAYOUTS, METHODS
from ...measure.activations import measure
from ...model.llama import Llama
from ...model.shapes import resolve
from .. import comm
from .. import context_parallel as cp_

__all__ = ["CONFIGS", "reference", "llama_cp", "saved_cp", "torch_cp", "section"]

CONFIGS = tuple((m, lay) for m in METHODS for lay in LAYOUTS)


def _tokens(shape, batch: int, seq: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, shape.vocab_size, (batch, seq), generator=g)


def _model(shape, seed: int, dtype) -> Llama:
    torch.manual_seed(seed)
    return Llama(shape).to(dtype)


def reference(shape, batch: int, seq: int, seed: int = 0,
              dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    """One process: {"logits", "loss", "grads" (name → tensor)} of ``model(ids, labels=ids)``."""
    shape = resolve(shape, "shape")
    model = _model(shape, seed, dtype)
    ids = _tokens(shape, batch, seq, seed)
    out = model(ids, labels=ids)
    out.loss.backward()
    return {"logits": out.logits.detach(), "loss": out.loss.detach(),
            "grads": {n: p.grad for n, p in model.named_parameters()}}


def llama_cp(shape: Any = "tiny", batch: int = 2, seq: int = 64, seed: int = 0,
             configs: tuple = CONFIGS, dtype: torch.dtype = torch.float64,
             saved: bool = True) -> dict[str, Any]:
    """On this rank of the world (the cp group): for each (method, layout) of ``configs``
    {"logits", "loss", "grads": max |Δ| from one process; "sent": {tag: bytes this rank sent in
    forward + backward + sum_grads}; "calls": {tag: messages}; "saved": bytes saved for
    backward by one forward (``measure``), when ``saved``}; plus "rank", "cp", "positions"."""
    shape = resolve(shape, "shape")
    for name, value in (("batch", batch), ("seq", seq)):
        check.positive_int(name, value)
    n, r = dist.get_world_size(), dist.get_rank()
    ref = reference(shape, batch, seq, seed, dtype)
    ids = _tokens(shape, batch, seq, seed)
    out: dict[str, Any] = {"rank": r, "cp": n}
    for method, layout in configs:
        model = cp_.apply(_model(shape, seed, dtype), None, method, layout)
        x, y = cp_.split(ids, ids, n, r, layout)
        with comm.counting() as log:
            o = model(x, labels=y)
            o.loss.backward()
            cp_.sum_grads(model)
        logits = cp_.gather(o.logits, None, layout)
        grads = dict(model.named_parameters())
        res = {"logits": (logits - ref["logits"]).abs().max().item(),
               "loss": (o.loss.detach() - ref["loss"]).abs().item(),
               "grads": max((grads[k].grad - g).abs().max().item() for k, g in ref["grads"].items()),
               "sent": {t: v["sent_bytes"] for (t,), v in log.summary(by=("tag",)).items()},
               "calls": {t: v["calls"] for (t,), v in log.summary(by=("tag",)).items()}}
        if saved:
            res["saved"] = measure(model, x, labels=y).total_bytes
        out[(method, layout)] = res
    return out


def torch_cp(seq: int = 64, heads: int = 4, d: int = 16) -> dict[str, Any]:
    """PyTorch's context parallelism on this rank's device: causal SDPA of (1, heads, seq, d)
    under ``context_parallel(mesh, buffers=[q, k, v], buffer_seq_dims=[2, 2, 2])``, compared
    with one process. Returns {"ok": True, "max_diff"} or {"ok": False, "error": "Type: msg"}."""
    from torch.distributed.device_mesh import init_device_mesh

    try:
        from torch.distributed.tensor.experimental import context_parallel
        n = dist.get_world_size()
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        mesh = init_device_mesh(dev, (n,), mesh_dim_names=("cp",))
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, heads, seq, d, generator=g).to(dev) for _ in range(3))
        full = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        with context_parallel(mesh, buffers=[q, k, v], buffer_seq_dims=[2, 2, 2]):
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return {"ok": True, "shape": tuple(y.shape), "full": full.cpu(), "local": y.cpu()}
    except Exception as e:  # noqa: BLE001 - the error is the result
        return {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}


def saved_cp(shape: Any = "tiny", batch: int = 2, seq: int = 64, seed: int = 0,
             configs: tuple = CONFIGS, dtype: torch.dtype = torch.float32) -> dict[tuple, int]:
    """{(method, layout): bytes this rank's ``model(ids, labels)`` saves for backward}."""
    shape = resolve(shape, "shape")
    n, r = dist.get_world_size(), dist.get_rank()
    ids = _tokens(shape, batch, seq, seed)
    out = {}
    for method, layout in configs:
        model = cp_.apply(_model(shape, seed, dtype), None, method, layout)
        x, y = cp_.split(ids, ids, n, r, layout)
        out[(method, layout)] = measure(model, x, labels=y).total_bytes
    return out


def section(shape: Any = "tiny", batch: int = 2, seq: int = 64) -> dict[str, Any]:
    """{"f64": ``llama_cp`` in float64 without the saved-bytes pass, "fp32": ``saved_cp`` in
    fp32, "torch": ``torch_cp()``} on this rank: everything notebook 14 §2 prints."""
    return {"f64": llama_cp(shape, batch, seq, saved=False),
            "fp32": saved_cp(shape, batch, seq, dtype=torch.float32),
            "torch": torch_cp()}
