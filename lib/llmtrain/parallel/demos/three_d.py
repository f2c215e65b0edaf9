"""What the ranks run in notebook 08 (3D 并行训练), and the command line of
``python -m llmtrain.parallel.demos.parallelize``.

- ``compare``: one training step of the same LLaMA and global batch on this rank's part of a
  ``ParallelDims`` layout (``parallelize``, hand-written and/or PyTorch's engines) beside one
  process: the losses, the largest gradient and weight differences after one SGD step, the
  bytes sent per axis in the step (counted, and by ``cost.comm.axis_bytes``) and in the
  optimizer's step after it (counted: ZeRO-1/2's reduce-scatter and all-gather), the model-state bytes
  this rank holds (measured, and by ``memory.model_state_bytes(rank=)``).
- ``compare_all``: several layouts in one launch (a launch costs seconds; each layout needs
  the world size it was launched with, so layouts of one launch share dp·tp·pp).
- ``groups``: this rank's dp, tp and pp groups built by hand and by ``init_device_mesh``.
- ``notebook``: both, for notebook 08's single launch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ... import check
from ...cost import memory
from .. import comm
from ...cost.layout import AXES, ParallelDims
from .. import zero as _zero
from ..groups import build, device_mesh
from ..parallelize import ENGINES, axis_bytes, parallelize

from .harness import main as _main
from .harness import max_weight_diff, positive
from .pipeline_parallel import batch_of, model_of

__all__ = ["compare", "compare_all", "groups", "notebook", "cli"]


def _single(shape, dtype: str, seed: int, ids: torch.Tensor, labels: torch.Tensor,
            lr: float) -> dict[str, Any]:
    model = model_of(shape, dtype, seed)
    out = model(ids, labels=labels)
    out.loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
    return {"loss": out.loss.detach(), "grads": grads,
            "weights": {k: p.detach().clone() for k, p in model.named_parameters()}}


def compare(dims: tuple[int, int, int] = (2, 2, 2), shape: Any = "tiny", *, zero: int = 0,
            recompute: str = "none", schedule: str = "1f1b", microbatches: int | None = None,
            batch: int = 8, seq: int = 16, seed: int = 0, dtype: str = "float64",
            lr: float = 0.1, masked: bool = False,
            engines: tuple[str, ...] = ("ours",)) -> dict[str, Any]:
    """One step of ``parallelize`` on ``ParallelDims(dp, tp, pp) = dims`` against one process.
    ``masked``: the first half of the batch has every third label -100 (no loss there).

    Returns, on this rank: {"rank", "coords", "single_loss", per engine {"loss" (last stage,
    else None), "grad_diff", "weight_diff" (largest |Δ| against one process, over the whole
    model), and for "ours" also "sent" {axis: bytes counted}, "formula" {axis: axis_bytes},
    "step_sent" {axis: bytes counted in ``optimizer.step()``}, "step_calls" {op: dp collectives
    in it}, "states" (memory_report after the step), "states_formula" (``memory.model_state_bytes``:
    ⌈P/dp⌉), "states_padded" (``zero.expected_bytes``: each tensor padded to a multiple of
    dp), "unpadded" (no tensor needed padding: the two formulas agree)}}.
    """
    for e in engines:
        check.one_of("engines", e, ENGINES)
    dp, tp, pp = dims
    layout = ParallelDims(dp=dp, tp=tp, pp=pp)
    model = model_of(shape, dtype, seed)
    ids = batch_of(model.shape, batch, seq, seed + 1)
    labels = ids.clone()
    if masked:  # every third token carries no loss: dp shares then hold unequal token counts
        labels[: batch // 2, 1::3] = -100
    single = _single(shape, dtype, seed, ids, labels, lr)
    r = dist.get_rank()
    out: dict[str, Any] = {"rank": r, "coords": tuple(layout.coords(r)),
                           "single_loss": float(single["loss"])}
    groups = build(layout)
    for engine in engines:
        par = parallelize(model_of(shape, dtype, seed), layout, zero=zero, recompute=recompute,
                          schedule=schedule, microbatches=microbatches, engine=engine, lr=lr,
                          **({"groups": groups} if engine == "ours" else {}))
        with comm.counting() as log:
            loss = par.step(ids, labels)
        res: dict[str, Any] = {"loss": None if loss is None else float(loss)}
        if engine == "ours":
            res["sent"] = {a: log.sent_bytes(axis=a) for a in ("dp", "tp", "pp")}
            res["formula"] = axis_bytes(model.shape, layout, r, batch, seq,
                                        microbatches=microbatches, zero=zero,
                                        recompute=recompute,
                                        dtype_bytes=model.lm_head.weight.element_size())
            res["calls"] = {a: log.calls(axis=a) for a in ("dp", "tp", "pp")}
        res["grad_diff"] = max_weight_diff(par.full_grads(), single["grads"])
        with comm.counting() as step_log:
            par.optimizer.step()
        if engine == "ours":
            res["step_sent"] = {a: step_log.sent_bytes(axis=a) for a in ("dp", "tp", "pp")}
            res["step_calls"] = {op: step_log.calls(op=op, axis="dp")
                                 for op in ("reduce_scatter", "all_gather", "all_reduce")}
            res["states"] = par.memory_report()
            e = model.lm_head.weight.element_size()  # fp32's formula, scaled to this dtype
            res["states_formula"] = {k: v * e // 4 for k, v in memory.model_state_bytes(
                model.shape, dims=layout, zero=zero, precision="fp32", optimizer="sgd",
                rank=r).items()}
            numels = memory.param_numels(model.shape, layout, r)  # ZeRO pads each to a multiple of dp
            res["states_padded"] = _zero.expected_bytes(numels, dp, zero, weight_bytes=e,
                                                        grad_bytes=e, master_bytes=0,
                                                        state_bytes=0)
            res["unpadded"] = zero == 0 or all(n % dp == 0 for n in numels)
        res["weight_diff"] = max_weight_diff(par.full_state_dict(), single["weights"])
        out[engine] = res
    return out


def groups(layouts: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    """For each (pp, dp, tp): this rank's groups built by hand (``ParallelDims.build``) and by
    ``init_device_mesh`` (``ParallelDims.device_mesh``), as lists of global ranks per axis."""
    out = []
    for pp, dp, tp in layouts:
        d = ParallelDims(dp=dp, tp=tp, pp=pp)
        g = build(d)
        mesh = device_mesh(d, "cpu")
        out.append({"coords": tuple(g.coords), "rank": g.rank,
                    "mesh_coords": tuple(mesh.get_coordinate()),
                    "ours": {a: dist.get_process_group_ranks(g.group(a)) for a in AXES},
                    "torch": {a: dist.get_process_group_ranks(mesh.get_group(a)) for a in AXES}})
    return out


def notebook(layouts: list[tuple[int, int, int]], configs: list[dict[str, Any]]) -> dict[str, Any]:
    """What notebook 08's one launch runs: ``groups(layouts)`` and ``compare_all(configs)``."""
    return {"groups": groups(layouts), "compare": compare_all(configs)}


def compare_all(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``compare(**config)`` for each config, in one launch."""
    return [compare(**c) for c in configs]


# ---------------------------------------------------------------------------- command line

def _options(ap) -> None:
    ap.add_argument("--dp", type=positive, default=2)
    ap.add_argument("--tp", type=positive, default=2)
    ap.add_argument("--pp", type=positive, default=2)
    ap.add_argument("--zero", type=int, choices=(0, 1, 2, 3), default=None,
                    help="ZeRO stage (default: 1 for ours, 3 for torch: FSDP2 has no stage 1)")
    ap.add_argument("--recompute", choices=("none", "full", "selective", "sqrt"), default="none")
    ap.add_argument("--microbatches", type=positive, default=None)
    ap.add_argument("--engine", choices=ENGINES, default="ours")


def _rank(o: dict) -> dict[str, Any]:
    zero = o["zero"] if o["zero"] is not None else 3 if o["engine"] == "torch" else 1
    return compare((o["dp"], o["tp"], o["pp"]), zero=zero, recompute=o["recompute"],
                   microbatches=o["microbatches"], batch=4 * o["dp"], engines=(o["engine"],))


def _report(res: dict, world: int) -> None:
    e = [k for k in ENGINES if k in res][0]
    print(f"{world} ranks, engine {e}: gradients equal one process's within "
          f"{res[e]['grad_diff']:.1e}, weights after one SGD step within {res[e]['weight_diff']:.1e}")


def cli(argv: list[str] | None = None) -> None:
    """``python -m llmtrain.parallel.demos.parallelize --dp 2 --tp 2 --pp 2 [--zero 1] …``: one
    step of the tiny LLaMA on dp·tp·pp ranks against one process."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if "--nproc" not in args:  # the layout fixes the number of ranks
        sizes = {k: 2 for k in ("--dp", "--tp", "--pp")}
        for i, a in enumerate(args[:-1]):
            if a in sizes:
                sizes[a] = int(args[i + 1]) if args[i + 1].isdigit() else 0
        args = args + ["--nproc", str(max(1, sizes["--dp"] * sizes["--tp"] * sizes["--pp"]))]
    _main("python -m llmtrain.parallel.demos.parallelize", _rank, _report,
          description="3D parallelism: one step on dp x tp x pp ranks against one process.",
          options=_options, validate=_check_world, nproc=8, argv=args)


def _check_world(o: dict, world: int) -> None:
    dims = ParallelDims(dp=o["dp"], tp=o["tp"], pp=o["pp"])
    if dims.world_size != world:
        raise ValueError(f"dp·tp·pp = {dims.world_size} must equal the number of ranks {world}")
    dims.check("tiny")  # before any rank starts: tp divides the heads, pp <= the layers
    if o["engine"] == "torch" and o["zero"] == 1:
        raise ValueError("--zero 1 has no FSDP2 equivalent: use --engine ours, or --zero 0, 2, 3")
