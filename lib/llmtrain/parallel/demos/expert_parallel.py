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
- ``llama_step(shape, dp, ep)`` / ``llama_one_process(shape, dp)``: a MoE LLaMA (``moe_llama``)
  on ``ParallelDims(dp, ep)``, gradients reduced over dp (experts: edp), and its oracle.
- ``section()``: what notebook 14 §4 runs, in one launch.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.distributed as dist

from ... import check
from .. import comm
from ...cost.layout import ParallelDims
from ...model.moe import MIXTRAL, MoE, MoELlama, Routing
from ...model.shapes import ModelShape
from .. import expert_parallel, groups

__all__ = ["AUX", "batch", "build", "moe_layer", "ep_layer", "one_process", "moe_llama", "llama_step",
           "llama_one_process", "section"]


def batch(tokens: int, hidden: int, world: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, G): world·tokens rows of hidden inputs and of output weights, float64, from ``seed``;
    rank r's tokens are rows [r·tokens, (r+1)·tokens)."""
    for name, v in (("tokens", tokens), ("hidden", hidden), ("world", world)):
        check.positive_int(name, v)
    check.integer("seed", seed, 0)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(world * tokens, hidden, generator=g, dtype=torch.float64)
    return x, torch.randn(world * tokens, hidden, generator=g, dtype=torch.float64)


# Mixtral's routing with the Switch balancing loss added to the LM loss (α = 0.01): notebook 14 §4
AUX = Routing("softmax", norm_topk_prob=True, aux_loss_coef=0.01)


def moe_layer(hidden: int = 8, experts: int = 4, top_k: int = 2, expert_size: int = 6,
              shared_size: int = 5, shared_gate: bool = False,
              routing: Routing = MIXTRAL) -> MoE:
    """The notebook's MoE layer (``llmtrain.model.moe.MoE``), float64: 4 experts of width 6,
    top-2, one shared expert of width 5, on hidden size 8."""
    return MoE(hidden, expert_size, experts, top_k, shared_size, shared_gate, routing).double()


def build(make: Callable[[], Any], seed: int = 0):
    """``make()`` after ``torch.manual_seed(seed)``: the layer every rank (and one process) builds."""
    check.function("make", make)
    check.integer("seed", seed, 0)
    torch.manual_seed(seed)
    moe = make()
    check.module("make()", moe)
    return moe


def one_process(make: Callable[[], Any], tokens: int, world: int, seed: int = 0) -> dict:
    """The whole layer on all world·tokens rows in one process: output, x's gradient, every
    parameter's gradient ({name: grad}) and ``last_load`` when the layer keeps one."""
    moe = build(make, seed)
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
    full = build(make, seed)
    hidden = next(full.parameters()).shape[-1]
    x_all, G_all = batch(tokens, hidden, world, seed)
    rows = slice(rank * tokens, (rank + 1) * tokens)
    results = []
    for c in capacity_factors:
        moe = copy.deepcopy(full)
        layer = expert_parallel.shard(moe, None, c)
        x = x_all[rows].clone().requires_grad_()
        with comm.counting() as log:
            out = moe(x)
            (out * G_all[rows]).sum().backward()
        d = layer.last
        load = getattr(moe, "last_load", None)
        results.append({
            "capacity_factor": c, "capacity": d.capacity, "experts": list(layer.local_experts()),
            "out": out.detach(), "x_grad": x.grad,
            "grads": {n: p.grad.clone() for n, p in moe.named_parameters()
                      if p.grad is not None},
            "routed": d.routed, "kept": d.kept, "received": d.received,
            "dropped": d.dropped, "indices": d.indices, "weights": d.weights,
            "load": None if load is None else load.clone(), "records": log.records})
    return results


def moe_llama(num_experts: int = 4) -> ModelShape:
    """The tiny LLaMA with a MoE in both layers: ``num_experts`` experts of width 32, top-2, a
    shared expert of width 32 (vocabulary 256, hidden 64, 4 heads, 2 kv heads)."""
    from ...model import shapes

    return shapes.get("tiny").replace(num_experts=num_experts, experts_per_token=2,
                                      moe_intermediate_size=32, shared_expert_size=32,
                                      name=f"tiny-moe-{num_experts}")


def _ids(shape: ModelShape, rows: int, seq: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 2)
    return torch.randint(0, shape.vocab_size, (rows, seq), generator=g)


def _llama(shape: ModelShape, seed: int, routing: Routing = MIXTRAL) -> MoELlama:
    torch.manual_seed(seed)
    return MoELlama(shape, routing).double()


def llama_one_process(shape: ModelShape, dp: int, batch: int = 2, seq: int = 16,
                      seed: int = 0, routing: Routing = MIXTRAL) -> dict:
    """One process: the whole MoE LLaMA on the dp ranks' batches concatenated (dp·batch rows):
    loss, every gradient, the load per MoE layer, the balancing biases after ``update_bias``."""
    model = _llama(shape, seed, routing)
    loss = model(_ids(shape, dp * batch, seq, seed), labels=_ids(shape, dp * batch, seq, seed)).loss
    loss.backward()
    model.update_bias()
    return {"loss": loss.detach(), "load": model.load(),
            "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
            "bias": torch.stack([m.gate.e_score_correction_bias for m in model.moe_layers()])}


def llama_step(shape: ModelShape, dp: int, ep: int, batch: int = 2, seq: int = 16,
               seed: int = 0, routing: Routing = MIXTRAL) -> dict:
    """On every rank of ``ParallelDims(dp=dp, ep=ep)`` (world dp; ep carved out of dp): the
    same MoE LLaMA, experts sharded over the ep group, this dp rank's ``batch`` rows; one
    forward + backward (the load statistics over the whole batch: ``balance_group`` dp), then
    ``reduce_gradients`` (dp; experts: edp) and ``update_bias``. Returns the local loss, every gradient this rank holds, its experts, the
    whole batch's load, the balancing biases and the comm records by axis."""
    dims = ParallelDims(dp=dp, ep=ep)
    g = groups.build(dims)
    place = dims.place(dist.get_rank())
    model = _llama(shape, seed, routing)
    layers = expert_parallel.apply(model, g.ep, balance_group=g.dp)
    ids = _ids(shape, dp * batch, seq, seed)[place.dp * batch:(place.dp + 1) * batch]
    with comm.counting() as log:
        loss = model(ids, labels=ids).loss
        loss.backward()
        expert_parallel.reduce_gradients(model, g.dp, g.edp)
    model.update_bias()
    return {"loss": loss.detach(), "load": model.load(), "experts": list(layers[0].local_experts()),
            "bias": torch.stack([m.gate.e_score_correction_bias for m in model.moe_layers()]),
            "place": tuple(place), "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
            "summary": log.summary(by=("op", "tag", "axis"))}


def section(tokens: int = 12, capacity_factor: float = 1.0, seed: int = 0) -> dict:
    """Notebook 14 §4 in one launch on 2 ranks: ``ep_layer`` of ``moe_layer`` without capacity
    and with ``capacity_factor``, and ``llama_step`` of ``moe_llama()`` (routing ``AUX``) on
    dp=2, ep=2."""
    return {"layer": ep_layer(moe_layer, tokens, (None, capacity_factor), seed),
            "llama": llama_step(moe_llama(), dist.get_world_size(), dist.get_world_size(),
                                seed=seed, routing=AUX)}
