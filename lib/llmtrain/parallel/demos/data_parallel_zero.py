"""Notebook 05's rank functions (data parallelism and ZeRO), and the command line of
``python -m llmtrain.parallel.demos.data_parallel`` and ``python -m llmtrain.parallel.demos.zero``.

``train`` trains one strategy (single process, hand-written DP, DDP, ZeRO stage 0–3, FSDP2)
for a few steps on the Markov corpus of ``llmtrain.train`` and returns losses, final weights,
the bytes this rank held after the first step and the collectives of the first step. With
``dims`` (a ``ParallelDims``) the data parallelism runs over its dp groups only: the ranks of
a tp (or pp) group hold the same replica and see the same share of the batch. ``compare``
also trains the single-process reference on rank 0, for the command lines.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ...model.llama import Llama
from .. import comm, data_parallel, zero
from ..groups import build, device_mesh
from ..launch import device
from ...cost.layout import ParallelDims
from .harness import lm_loss, main, make_batches, make_model, max_weight_diff, positive

__all__ = ["STRATEGIES", "train", "train_all", "compare", "memory_by_stage", "phases", "phases_all",
           "collectives", "command"]

STRATEGIES = ("single", "dp", "ddp", "zero0", "zero1", "zero2", "zero3", "fsdp2")


def _optimizer(name: str, lr: float):
    if name == "adamw":
        return torch.optim.AdamW, {"lr": lr, "weight_decay": 0.1}
    if name == "sgd":
        return torch.optim.SGD, {"lr": lr}
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {name!r}")


def _units(model: nn.Module, units: str):
    if units == "root":
        return None
    if units == "layers":
        if isinstance(model, Llama):
            return list(model.model.layers)
        return [m for m in model.children() if any(True for _ in m.parameters())]
    raise ValueError(f"units must be 'root' or 'layers', got {units!r}")


def train(strategy: str, *, steps: int = 3, model: str = "tiny", dtype: str = "float32",
          optimizer: str = "adamw", lr: float = 1e-2, batch: int = 8, seq: int = 32,
          units: str = "layers", seed: int = 0, dims: ParallelDims | None = None
          ) -> dict[str, Any]:
    """Train ``strategy`` for ``steps`` steps on this rank's share of each batch.

    Returns {"losses": global mean loss per step, "weights": every weight whole (name →
    tensor), "memory": bytes held after the first step, before ``zero_grad``
    (``zero.memory_report``), "comm": the first step's collectives (``comm.Record``\\ s),
    "numels": parameter sizes}. ``dims``: data parallel over ``dims``' dp group (the batch
    is split dims.dp ways, by the rank's dp index); default: over the whole world.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    group, n, r = None, 1, 0
    if strategy != "single":
        if dims is not None:
            groups = build(dims)
            group, n, r = groups.dp, dims.dp, groups.coords.dp
        else:
            n, r = dist.get_world_size(), dist.get_rank()
    if batch % n:
        raise ValueError(f"batch={batch} must be divisible by the {n} data-parallel ranks")
    dev = device() if strategy != "single" else torch.device("cpu")
    net = make_model(model, dtype, seed).to(dev)
    cls, kw = _optimizer(optimizer, lr)
    numels = [p.numel() for p in net.parameters()]
    if strategy.startswith("zero"):
        units_ = _units(net, units) if strategy == "zero3" else None
        net, opt = zero.wrap(net, int(strategy[-1]), cls, units=units_, group=group, **kw)
    else:
        if strategy == "dp":
            net = data_parallel.wrap(net, group=group)
        elif strategy == "ddp":
            net = nn.parallel.DistributedDataParallel(net, process_group=group)
        elif strategy == "fsdp2":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard
            mesh = device_mesh(dims, dev.type)["dp"] if dims else init_device_mesh(dev.type, (n,))
            for unit in _units(net, units) or []:
                fully_shard(unit, mesh=mesh)
            fully_shard(net, mesh=mesh)
        opt = cls(net.parameters(), **kw)

    losses, memory, log0 = [], None, None
    b = batch // n
    for step, ids in enumerate(make_batches(steps, batch, seq, seed)):
        with comm.counting() as log:
            loss = lm_loss(net, ids[r * b:(r + 1) * b].to(dev))
            loss.backward()
            opt.step()
            if step == 0:  # after the step (AdamW's states exist), before zero_grad
                memory = zero.memory_report(net, opt)
            opt.zero_grad()
        if step == 0:
            log0 = log
        loss = loss.detach().double()
        if strategy != "single":
            dist.all_reduce(loss, op=dist.ReduceOp.AVG, group=group)  # reporting: not counted
        losses.append(loss.item())

    if strategy == "fsdp2":
        weights = {k: v.full_tensor() for k, v in net.named_parameters()}
    elif strategy == "ddp":
        weights = {k: v.detach().clone() for k, v in net.module.named_parameters()}
    else:
        weights = zero.full_state_dict(net, opt)
    return {"losses": losses, "weights": weights, "memory": memory,
            "comm": list(log0.records), "numels": numels}


def train_all(strategies, cfg: dict) -> dict[str, dict[str, Any]]:
    """``train`` each of ``strategies`` in turn with the same ``cfg``: one launch, many runs."""
    return {s: train(s, **cfg) for s in strategies}


def compare(strategy: str, **cfg) -> dict[str, Any]:
    """``train(strategy)`` on every rank; rank 0 also trains one process on the whole batch."""
    out = train(strategy, **cfg)
    if dist.get_rank() == 0:
        ref = train("single", **cfg)
        out["reference_losses"] = ref["losses"]
        out["max_weight_diff"] = max_weight_diff(out["weights"], ref["weights"])
    return out


def memory_by_stage(model: str = "tiny", dtype: str = "bfloat16",
                    stages=(0, 1, 2, 3)) -> dict[int, dict[str, int]]:
    """{stage: ``zero.memory_report`` after one step, before ``zero_grad``} on this rank."""
    out = {}
    for stage in stages:
        net, opt = zero.wrap(make_model(model, dtype).to(device()), stage, torch.optim.AdamW, lr=1e-3)
        ids = make_batches(1, 4 * dist.get_world_size(), 16)[0].to(device())
        lm_loss(net, ids[dist.get_rank()::dist.get_world_size()]).backward()
        opt.step()
        out[stage] = zero.memory_report(net, opt)  # after the step, before zero_grad
    return out


def phases(stage: int, model: str = "tiny", dtype: str = "bfloat16") -> dict[str, dict[str, int]]:
    """``zero.memory_report`` at three moments of a step (after one warm-up step, so AdamW's
    states exist): inside the forward of the first layer, after backward, after the update.
    Stage 3 gathers weights per transformer layer (``units=layers``)."""
    net = make_model(model, dtype).to(device())
    units = _units(net, "layers") if stage == 3 else None
    net, opt = zero.wrap(net, stage, torch.optim.AdamW, units=units, lr=1e-3)
    ids = make_batches(1, 2 * dist.get_world_size(), 16)[0].to(device())
    mine = ids[dist.get_rank()::dist.get_world_size()]
    out: dict[str, dict[str, int]] = {}
    first = _units(net, "layers")[0]
    for step in range(2):
        opt.zero_grad()
        hook = first.register_forward_pre_hook(  # runs after zero's own pre-hook has gathered
            lambda m, a: out.__setitem__("forward", zero.memory_report(net, opt)))
        loss = lm_loss(net, mine)
        hook.remove()
        loss.backward()
        out["backward"] = zero.memory_report(net, opt)
        opt.step()
        out["step"] = zero.memory_report(net, opt)
    return out


def phases_all(stages=(0, 1, 2, 3), model: str = "tiny", dtype: str = "bfloat16"
               ) -> dict[int, dict[str, dict[str, int]]]:
    """{stage: ``phases(stage)``} for each of ``stages``: one launch, many runs (each rank starts
    once: on a loaded machine starting the processes is most of the time)."""
    return {z: phases(z, model, dtype) for z in stages}


def collectives() -> dict[str, torch.Tensor]:
    """Each collective once, on tiny tensors, so a reader can see what it does: rank r
    starts with [r·10 + 0, r·10 + 1, …]."""
    r, n = dist.get_rank(), dist.get_world_size()
    mine = torch.arange(2.0 * n) + 10 * r
    out = {"start": mine.clone()}
    t = mine.clone()
    comm.all_reduce(t, "sum")
    out["all_reduce (sum)"] = t
    shard = torch.empty(2)
    comm.reduce_scatter(shard, mine.clone(), "sum")
    out["reduce_scatter (sum)"] = shard
    full = torch.empty(2 * n)
    comm.all_gather(full, shard)
    out["all_gather of those"] = full
    b = mine.clone()
    comm.broadcast(b, src=0)
    out["broadcast from 0"] = b
    return out


# ---------------------------------------------------------------------------- command line

def cli_compare(options: dict) -> dict[str, Any]:
    """The command lines' rank function: ``compare`` the strategy the flags name."""
    cfg = dict(options)
    stage = cfg.pop("stage", None)
    strategy = "dp" if stage is None else f"zero{stage}"
    return {**compare(strategy, **cfg), "strategy": strategy}


def _options(zero_stage: bool):
    def add(ap) -> None:
        if zero_stage:
            ap.add_argument("--stage", type=int, default=3, choices=zero.STAGES)
        ap.add_argument("--steps", type=positive, default=5)
        ap.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
        ap.add_argument("--batch", type=positive, default=8, help="sequences per step, all ranks")
        ap.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                        help="of the model and its training (float64: differences are rounding only)")
    return add


def _validate(options: dict, n: int) -> None:
    if options["batch"] % n:
        raise ValueError(f"--batch {options['batch']} must be divisible by the {n} ranks")


def _report(out: dict, n: int) -> None:
    strategy = out["strategy"]
    print(f"{strategy} on {n} ranks vs one process on the whole batch")
    print(f"{'step':>4}  {'single':>10}  {strategy:>10}")
    for i, (a, b) in enumerate(zip(out["reference_losses"], out["losses"])):
        print(f"{i:>4}  {a:>10.6f}  {b:>10.6f}")
    print(f"largest weight difference after {len(out['losses'])} steps: {out['max_weight_diff']:.1e}")
    m = out["memory"]
    print("bytes held by rank 0 after the first step: "
          + ", ".join(f"{k} {v:,}" for k, v in m.items()))
    sent = sum(rec.sent_bytes for rec in out["comm"])
    print(f"rank 0 sent {float(sent):,.0f} bytes in step 0 ({len(out['comm'])} collectives)")


def command(prog: str, zero_stage: bool, argv: list[str] | None = None) -> None:
    """The command line ``prog`` (``demos.data_parallel``, or ``demos.zero`` with ``--stage``):
    train with the strategy its flags name, compare with one process, print rank 0's report."""
    what = "ZeRO" if zero_stage else "data parallelism"
    main(prog, cli_compare, _report, options=_options(zero_stage), validate=_validate,
         description=f"train a tiny LLaMA with {what} and compare with one process on the "
                     "whole batch", argv=argv)
