"""What each rank runs in notebook 05, in the tests and under torchrun.

``launch`` needs importable functions, so they live here. ``train`` trains one strategy
(single process, hand-written DP, DDP, ZeRO stage 0–3, FSDP2) for a few steps on the
Markov corpus of ``llmtrain.train`` and returns losses, final weights, the bytes this rank
held after the first step and the collectives of the first step; ``compare`` also
trains the single-process reference on rank 0, for the command-line demos:

    python -m llmtrain.parallel.data_parallel                          # launches 2 CPU ranks
    torchrun --nproc-per-node=4 -m llmtrain.parallel.zero --stage 3    # GPUs or many machines
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import shapes
from ..llama import Llama
from ..train import batches, corpus
from . import comm, data_parallel, zero
from .launch import device, init_from_env, launch, shutdown

__all__ = ["STRATEGIES", "make_model", "make_batches", "lm_loss", "train", "train_all",
           "max_weight_diff", "compare",
           "memory_by_stage", "phases", "collectives", "main_data_parallel", "main_zero"]

STRATEGIES = ("single", "dp", "ddp", "zero0", "zero1", "zero2", "zero3", "fsdp2")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def make_model(model: str = "tiny", dtype: str = "float32", seed: int = 0) -> nn.Module:
    """"tiny": the reference LLaMA of the ``tiny`` preset; "mlp": embedding → MLP → logits,
    sizes chosen so some weights do not split evenly over 4 ranks (padding shows)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    torch.manual_seed(seed)
    if model == "tiny":
        m = Llama(shapes.get("tiny"))
    elif model == "mlp":
        m = nn.Sequential(nn.Embedding(256, 30), nn.Linear(30, 50), nn.GELU(), nn.Linear(50, 256))
    else:
        raise ValueError(f"model must be 'tiny' or 'mlp', got {model!r}")
    return m.to(DTYPES[dtype])


def make_batches(steps: int, batch: int, seq: int, seed: int = 0) -> list[torch.Tensor]:
    """``steps`` full batches (batch × seq token ids), the same on every rank."""
    it = batches(corpus(20_000, seed=seed), batch, seq, seed=seed)
    return [next(it) for _ in range(steps)]


def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy, mean over tokens, in the model's own dtype."""
    out = model(ids)
    logits = out.logits if hasattr(out, "logits") else out
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten().to(logits.device))


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
          units: str = "layers", seed: int = 0) -> dict[str, Any]:
    """Train ``strategy`` for ``steps`` steps on this rank's share of each batch.

    Returns {"losses": global mean loss per step, "weights": every weight whole (name →
    tensor), "memory": bytes held after the first step, before ``zero_grad`` (``zero.memory_report``), "comm": the
    first step's collectives (``comm.Record``\\ s), "numels": parameter sizes}.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    n = dist.get_world_size() if strategy != "single" else 1
    r = dist.get_rank() if strategy != "single" else 0
    if batch % n:
        raise ValueError(f"batch={batch} must be divisible by the {n} ranks")
    dev = device() if strategy != "single" else torch.device("cpu")
    net = make_model(model, dtype, seed).to(dev)
    cls, kw = _optimizer(optimizer, lr)
    numels = [p.numel() for p in net.parameters()]
    if strategy.startswith("zero"):
        units_ = _units(net, units) if strategy == "zero3" else None
        net, opt = zero.wrap(net, int(strategy[-1]), cls, units=units_, **kw)
    else:
        if strategy == "dp":
            net = data_parallel.wrap(net)
        elif strategy == "ddp":
            net = nn.parallel.DistributedDataParallel(net)
        elif strategy == "fsdp2":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard
            mesh = init_device_mesh(dev.type, (n,))
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
            dist.all_reduce(loss, op=dist.ReduceOp.AVG)  # reporting only: not counted
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


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest |a − b| over all weights of two {name: tensor} dicts with the same names."""
    if a.keys() != b.keys():
        raise ValueError(f"the two sets of weights differ in names: {sorted(a.keys() ^ b.keys())}")
    return max((a[k].double().cpu() - b[k].double().cpu()).abs().max().item() for k in a)


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

def _parse(prog: str, zero_stage: bool) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=prog, description="train a tiny LLaMA with "
                                 + ("ZeRO" if zero_stage else "data parallelism")
                                 + " and compare with one process on the whole batch")
    if zero_stage:
        ap.add_argument("--stage", type=int, default=3, choices=zero.STAGES)
    ap.add_argument("--nproc", type=_positive, default=2,
                    help="ranks to launch when not under torchrun")
    ap.add_argument("--steps", type=_positive, default=5)
    ap.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    ap.add_argument("--batch", type=_positive, default=8, help="sequences per step, all ranks")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                    help="of the model and its training (float64: differences are rounding only)")
    args = ap.parse_args()
    n = int(os.environ.get("WORLD_SIZE", args.nproc))
    if args.batch % n:
        ap.error(f"--batch {args.batch} must be divisible by the {n} ranks")
    return args


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _run(strategy: str, args: argparse.Namespace) -> None:
    cfg = dict(steps=args.steps, optimizer=args.optimizer, batch=args.batch, dtype=args.dtype)
    if "RANK" in os.environ:  # under torchrun: this process is one rank
        init_from_env()
        try:
            out = compare(strategy, **cfg)
            if dist.get_rank() == 0:
                _report(strategy, dist.get_world_size(), out)
        finally:
            shutdown()
    else:
        _report(strategy, args.nproc, launch(_compare_kw, args.nproc, strategy, cfg)[0])


def _compare_kw(strategy: str, cfg: dict) -> dict[str, Any]:
    return compare(strategy, **cfg)


def _report(strategy: str, n: int, out: dict) -> None:
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


def main_data_parallel() -> None:
    _run("dp", _parse("python -m llmtrain.parallel.data_parallel", zero_stage=False))


def main_zero() -> None:
    args = _parse("python -m llmtrain.parallel.zero", zero_stage=True)
    _run(f"zero{args.stage}", args)
