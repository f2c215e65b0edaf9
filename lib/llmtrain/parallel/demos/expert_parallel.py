"""What the ranks run in notebook 14 §4 (专家并行): one MoE layer's experts over the ep ranks.

``launch`` needs importable functions, so they live here; each returns plain data (tensors,
ints, ``comm.Record``\\ s), never a model.

- ``ep_layer(make, tokens, capacity_factors, seed)``: every rank builds the same MoE layer
  (``make()``, float64), takes its own ``tokens`` rows of one batch drawn from ``seed``, wraps
  the layer in ``expert_parallel.ExpertParallel`` once per capacity factor and runs forward +
  backward of Σ out·G (G a fixed random weighting, so every output row has its own gradient),
  counting the all-to-alls. Returns, per capacity factor: the output, x's gradient, every
  gradient this rank holds (its experts', the router's, the shared expert's), what it routed,
  kept, received and dropped, and the comm records.
- ``one_process(make, tokens, world, seed)``: the same batch through the whole layer in one
  process: the oracle the ranks are compared with.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.distributed as dist

from ... import check
from .. import comm
from ..expert_parallel import ExpertParallel

__all__ = ["batch", "ep_layer", "one_process"]


def batch(tokens: int, hidden: int, world: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, G): world·tokens rows of hidden inputs and of output weights, float64, from ``seed``;
    rank r's tokens are rows [r·tokens, (r+1)·tokens)."""
    for name, v in (("tokens", tokens), ("hidden", hidden), ("world", world)):
        check.positive_int(name, v)
    check.integer("seed", seed, 0)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(world * tokens, hidden, generator=g, dtype=torch.float64)
    return x, torch.randn(world * tokens, hidden, generator=g, dtype=torch.float64)


def _build(make: Callable[[], Any], seed: int):
    torch.manual_seed(seed)
    moe = make()
    check.module("make()", moe)
    return moe


def one_process(make: Callable[[], Any], tokens: int, world: int, seed: int = 0) -> dict:
    """The whole layer on all world·tokens rows in one process: output, x's gradient, every
    parameter's gradient ({name: grad}) and ``last_load`` when the layer keeps one."""
    moe = _build(make, seed)
    hidden = next(moe.parameters()).shape[-1]
    x, G = batch(tokens, hidden, world, seed)
    x.requires_grad_()
    out = moe(x)
    (out * G).sum().backward()
    load = getattr(moe, "last_load", None)
    return {"out": out.detach(), "x_grad": x.grad, "load": None if load is None else load.clone(),
            "grads": {n: p.grad.clone() for n, p in moe.named_parameters() if p.grad is not None}}


def ep_layer(make: Callable[[], Any], tokens: int, capacity_factors: tuple = (None,),
             seed: int = 0) -> list[dict]:
    """On every rank of the world (the ep group): this rank's tokens through the layer's
    ``ExpertParallel`` wrapping, once per capacity factor (see the module docstring)."""
    check.positive_int("tokens", tokens)
    check.sequence("capacity_factors", capacity_factors, nonempty=True)
    world, rank = dist.get_world_size(), dist.get_rank()
    full = _build(make, seed)
    hidden = next(full.parameters()).shape[-1]
    x_all, G_all = batch(tokens, hidden, world, seed)
    rows = slice(rank * tokens, (rank + 1) * tokens)
    results = []
    for c in capacity_factors:
        layer = ExpertParallel(copy.deepcopy(full), None, c)
        x = x_all[rows].clone().requires_grad_()
        with comm.counting() as log:
            out = layer(x)
            (out * G_all[rows]).sum().backward()
        d = layer.last
        load = getattr(layer.moe, "last_load", None)
        results.append({
            "capacity_factor": c, "capacity": d.capacity, "experts": list(layer.local_experts()),
            "out": out.detach(), "x_grad": x.grad,
            "grads": {n: p.grad.clone() for n, p in layer.moe.named_parameters()
                      if p.grad is not None},
            "routed": d.routed, "kept": d.kept, "received": d.received,
            "dropped": d.dropped, "indices": d.indices, "weights": d.weights,
            "load": None if load is None else load.clone(), "records": log.records})
    return results
