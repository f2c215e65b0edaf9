"""What the ranks run in notebook 07 (流水线并行), and the command line
``python -m llmtrain.parallel.demos.pipeline_parallel``.

Each function returns plain data (tensors, numbers, ``Event``\\ s, ``comm.Record``\\ s):

- ``step``: one training step of a LLaMA pipelined by ``pipeline_parallel.pipeline`` and, on
  the same stages and weights, by ``torch.distributed.pipelining`` (``PipelineStage`` with
  ``ScheduleGPipe`` / ``Schedule1F1B`` / ``ScheduleInterleaved1F1B``), beside one process: the
  losses, this rank's gradients (full model names), the messages, the events.
- ``timeline``: the events of one step with fixed per-operation costs (``fixed_costs``: each
  forward and backward padded with a sleep to a known time), after a warm-up step: the
  measured Gantt chart and bubble, to hold against ``pp_schedule.simulate``.
- ``held``: the live bytes of this rank after every operation, from the exact storage tracker
  (``measure.tracker.tracking``): how many micro-batches of activations a stage really holds.
- ``torch_schedule``: one step by torch's zero-bubble or DualPipeV schedule on the same stages,
  and the order torch runs them in (to replay with ``pp_schedule.replay``).
- ``run_all``: several of these in one launch.
"""

from __future__ import annotations

import sys
import time
from fractions import Fraction
from typing import Any

import torch
import torch.distributed as dist

from ... import check
from ...cost import memory
from ...measure.tracker import tracking
from ...model import shapes
from ...model.llama import Llama
from .. import comm
from .. import pipeline_parallel as pp
from ...cost.pp_schedule import SCHEDULES, bubble_formula, bubble_fraction, makespan, simulate

from .harness import DTYPES, positive, seconds
from .harness import main as _main
from ...model.shapes import resolve

__all__ = ["step", "timeline", "held", "torch_schedule", "run_all", "LOOK_AHEAD", "batch_of",
           "model_of", "TORCH_SCHEDULES", "cli", "unresolved", "check_timing", "SLACK"]

TORCH_SCHEDULES = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B",
                   "interleaved": "ScheduleInterleaved1F1B"}


def model_of(shape: Any = "tiny", dtype: str = "float64", seed: int = 0) -> Llama:
    """The reference LLaMA of ``shape``, weights drawn from ``seed`` (the same on every rank)."""
    check.one_of("dtype", dtype, tuple(DTYPES))
    check.integer("seed", seed, 0)
    torch.manual_seed(seed)
    return Llama(resolve(shape, "shape")).to(DTYPES[dtype])


def batch_of(shape: Any, batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    """batch × seq token ids drawn from ``seed`` (labels = the ids: next-token prediction)."""
    shape = resolve(shape, "shape")
    check.positive_int("batch", batch)
    check.positive_int("seq", seq)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, shape.vocab_size, (batch, seq), generator=g)


def _grads(named) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in named}


def step(shape: Any = "tiny", schedule: str = "1f1b", microbatches: int = 4, virtual: int = 1,
         batch: int = 8, seq: int = 16, seed: int = 0, dtype: str = "float64",
         engines: tuple[str, ...] = ("ours", "torch")) -> dict[str, Any]:
    """One forward + backward of the same batch, per engine, on this rank.

    Returns {"rank", "world_size", "single": {"loss", "grads"} (rank 0 only: one process),
    "ours" / "torch": {"loss" (last stage, else None), "grads" (this rank's stages, full
    names; the tied lm_head copy is "lm_head.weight"), "events", "comm" (ours: the records),
    "peak_in_flight" (ours)}}.
    """
    check.one_of("schedule", schedule, SCHEDULES)
    for e in engines:
        check.one_of("engines", e, ("ours", "torch"))
    if "torch" in engines and batch % microbatches:
        raise ValueError(f"batch must be a multiple of microbatches={microbatches} for engine "
                         f"'torch' (its stages fix one micro-batch shape; ours take uneven "
                         f"ones), got batch={batch}")
    r, n = dist.get_rank(), dist.get_world_size()
    model = model_of(shape, dtype, seed)
    ids = batch_of(model.shape, batch, seq, seed + 1)
    out: dict[str, Any] = {"rank": r, "world_size": n}
    if r == 0:
        res = model(ids, labels=ids)
        res.loss.backward()
        out["single"] = {"loss": res.loss.detach(), "grads": _grads(model.named_parameters())}
        model.zero_grad(set_to_none=True)
    if "ours" in engines:
        pipe = pp.pipeline(model, None, schedule, microbatches, virtual)
        with comm.counting() as log:
            loss = pipe.step(ids, ids)
        out["ours"] = {"loss": loss, "grads": _grads(pipe.named_parameters()),
                       "events": pipe.events, "comm": list(log.records),
                       "peak_in_flight": pipe.peak_in_flight}
    if "torch" in engines:
        out["torch"] = _torch_step(model, schedule, microbatches, virtual, ids)
    return out


def _torch_step(model: Llama, schedule: str, m: int, v: int, ids: torch.Tensor) -> dict[str, Any]:
    """The same stages (``pipeline``'s split, fresh copies) run by torch.distributed.pipelining."""
    from torch.distributed import pipelining

    r, p = dist.get_rank(), dist.get_world_size()
    pipe = pp.pipeline(model, None, "1f1b" if v == 1 else schedule, m, v, warm=False)
    stages = [pipelining.PipelineStage(s, c * p + r, p * v, torch.device("cpu"))
              for c, s in enumerate(pipe.stages)]
    tokens = int((ids[:, 1:] != -100).sum())

    def loss_fn(logits, labels):  # the same per-micro-batch loss as ours: summed / batch tokens
        return pp.lm_loss(logits, labels, tokens)

    cls = getattr(pipelining, TORCH_SCHEDULES[schedule])
    sched = cls(stages if v > 1 else stages[0], m, loss_fn=loss_fn, scale_grads=False)
    tied = pipe.tied_snapshot()
    losses: list = []
    t0 = time.perf_counter()
    sched.step(*((ids,) if r == 0 else ()), target=ids if r == p - 1 else None, losses=losses)
    seconds = time.perf_counter() - t0
    pipe.sync_tied(tied)
    loss = torch.stack([x.detach() for x in losses]).sum() if r == p - 1 else None
    return {"loss": loss, "grads": _grads(pipe.named_parameters()), "seconds": seconds}


def timeline(schedule: str = "1f1b", microbatches: int = 8, virtual: int = 1,
             t_f: float = 0.02, t_b: float = 0.04, shape: Any = "tiny", batch: int | None = None,
             seq: int = 16, seed: int = 0) -> dict[str, Any]:
    """The events of one step with every forward / backward of a rank's layers padded to
    ``t_f`` / ``t_b`` seconds, after two unpadded steps: a warm-up (the first step of a process
    is slower: one-time allocations and kernel set-up; its slowest operation took 0.4 s here,
    4 ms after) and one that measures the real compute.

    Returns {"rank", "events", "compute" ({"F", "B"}: this rank's longest unpadded forward and
    backward, seconds: they must stay below the pads for the cost model to hold), "pads"
    ({"F": t_f / v, "B": t_b / v, "v": v}: what each operation is padded to), "simulated"
    (``simulate`` with the same costs), "formula" (``bubble_formula``)}; ``check_timing``
    holds the measured events against the simulated ones."""
    r, p = dist.get_rank(), dist.get_world_size()
    model = model_of(shape, "float32", seed)
    batch = batch or microbatches
    ids = batch_of(model.shape, batch, seq, seed + 1)
    bare = pp.pipeline(model, None, schedule, microbatches, virtual)
    bare.step(ids, ids)  # warm-up
    bare.step(ids, ids)  # unpadded: how long the real compute takes
    compute = {k: max(e.end - e.start for e in bare.events if e.kind == k) for k in "FB"}
    pipe = pp.pipeline(model, None, schedule, microbatches, virtual, fixed_costs=(t_f, t_b))
    dist.barrier()  # all ranks start together (the process is warm: two steps ran)
    pipe.step(ids, ids)
    return {"rank": r, "events": pipe.events, "compute": compute,
            "pads": {"F": t_f / virtual, "B": t_b / virtual, "v": virtual},
            "simulated": simulate(schedule, p, microbatches, virtual, t_f=Fraction(str(t_f)),
                                  t_b=Fraction(str(t_b))),  # exact: 0.02 is 1/50
            "formula": bubble_formula(p, microbatches, virtual)}


def held(schedule: str = "1f1b", microbatches: int = 8, shape: Any = "tiny",
         batch: int | None = None, seq: int = 16, seed: int = 0, dtype: str = "float32",
         virtual: int = 1) -> dict[str, Any]:
    """Live bytes on this rank after each operation of one step, from the exact tracker.

    Returns {"rank", "ops" [(kind, mb)], "live" [bytes after each op, relative to just
    before the first], "per_microbatch" (the bytes the first forward adds: one chunk's when
    interleaved), "peak" (the tracker's peak, relative), "held" (the most live bytes after an
    op // per_microbatch), "peak_in_flight" (the schedule's own count)}."""
    r = dist.get_rank()
    model = model_of(shape, dtype, seed)
    ids = batch_of(model.shape, batch or microbatches, seq, seed + 1)
    tracker, base, samples = None, [], []

    def on_start() -> None:  # sampled in the tracked step only
        if tracker is not None:
            base.append(tracker.live)

    def on_op(event) -> None:
        if tracker is not None:
            samples.append(tracker.live - base[0])

    pipe = pp.pipeline(model, None, schedule, microbatches, virtual, on_start=on_start,
                       on_op=on_op)
    pipe.step(ids, ids)  # warm-up: the .grad buffers exist from now on
    with tracking() as tracker:
        pipe.step(ids, ids)
    per_mb = samples[0]
    return {"rank": r, "ops": [(e.kind, e.mb) for e in pipe.events], "live": samples,
            "per_microbatch": per_mb, "peak": tracker.peak - base[0],
            "held": max(samples) // per_mb,
            "peak_in_flight": pipe.peak_in_flight}


# ---------------------------------------------------------------------------- command line

def _options(ap) -> None:
    ap.add_argument("--schedule", choices=SCHEDULES, default="1f1b")
    ap.add_argument("--microbatches", type=positive, default=8)
    ap.add_argument("--virtual", type=positive, default=1)
    ap.add_argument("--t-f", type=seconds, default=0.02, help="seconds per forward (padded)")
    ap.add_argument("--t-b", type=seconds, default=0.04, help="seconds per backward (padded)")


def _validate(o: dict, world: int) -> None:
    from ...cost.pp_schedule import check_schedule

    check_schedule(o["schedule"], world, o["microbatches"], o["virtual"])
    if o["microbatches"] < world:
        raise ValueError(f"microbatches must be at least the {world} stages, "
                         f"got {o['microbatches']}")


def _rank(o: dict) -> dict[str, Any]:
    layers = max(4, 2 * dist.get_world_size() * o["virtual"])  # two or more per stage
    res = timeline(o["schedule"], o["microbatches"], o["virtual"], o["t_f"], o["t_b"],
                   shape=shapes.get("tiny").replace(num_layers=layers))
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (res["events"], res["compute"]))
    res["events"] = [e for evs, _ in gathered for e in evs]
    res["compute"] = {k: max(c[k] for _, c in gathered) for k in "FB"}  # the slowest rank's
    return res


def unresolved(compute: dict[str, float], pads: dict[str, float]) -> list[str]:
    """Which pads ("F", "B") cannot hold their operations to the cost model: the real compute
    (the slowest rank's unpadded operation) takes more than half the pad, so jitter or a slow
    operation overruns it and the measured bubble is the real compute's, not the schedule's."""
    return [k for k in "FB" if compute[k] > pads[k] / 2]


SLACK = 0.005  # s: the most an operation may overrun its pad, or start after its input arrived


def check_timing(events: list, simulated: list, pads: dict[str, float], *,
                 slack: float = SLACK) -> dict[str, Any]:
    """Hold a padded step's measured ``events`` (all ranks, seconds; ``timeline``) against the
    ``simulated`` ones (the same schedule with the pads as costs).

    Asserted, because they hold on any machine however busy: every rank ran its operations in
    the schedule's order; none started before its input was there (the previous stage's
    forward, the next stage's backward: one monotonic clock for all processes of a machine);
    each lasted at least its pad (``pads``: {"F": t_f / v, "B": t_b / v}); hence the step lasts
    at least the simulated makespan, and each rank r idles at least r·(pad F + pad B) (its
    first forward waits for r stages' forwards, its last backward is followed by r stages'
    backwards), a lower bound of the bubble.

    Returned: {"overrun" (s, the most an operation ran past its pad: compute longer than the pad,
    or a sleep woken late), "lag" (s, the most an operation started after its rank was free and
    its input was there: a message's latency, a receiver woken late), "ratio" (measured over
    simulated makespan), "bubble" (measured), "bubble_floor" (the lower bound above), "quiet"
    (both delays within ``slack``: only then can the step resolve a tolerance of a few per cent;
    on a busy machine a descheduled rank adds tens of milliseconds per operation), "why" (on a
    busy machine: which delay, how large)}."""
    check.number("slack", slack, 0)
    ranks = sorted({e.rank for e in simulated})
    order = {r: [(e.kind, e.stage, e.mb) for e in sorted(simulated, key=lambda e: e.start)
                 if e.rank == r] for r in ranks}
    got = {r: sorted((e for e in events if e.rank == r), key=lambda e: e.start) for r in ranks}
    for r in ranks:
        ran = [(e.kind, e.stage, e.mb) for e in got[r]]
        assert ran == order[r], f"rank {r} ran {ran}, the schedule says {order[r]}"
    last = max(e.stage for e in simulated)
    end = {(e.kind, e.stage, e.mb): e.end for e in events}
    overrun = lag = 0.0
    for r in ranks:
        free = None
        for e in got[r]:
            dep = (("F", e.stage - 1, e.mb) if e.stage > 0 else None) if e.kind == "F" else \
                ("B", e.stage + 1, e.mb) if e.stage < last else None
            ready = max([t for t in (free, end.get(dep)) if t is not None], default=e.start)
            assert e.start >= ready - 1e-6, f"{e} started before its input or its rank was free"
            took = e.end - e.start
            assert took >= pads[e.kind] - 1e-6, f"{e} lasted {took} s, less than its pad"
            overrun, lag = max(overrun, took - pads[e.kind]), max(lag, e.start - ready)
            free = e.end
    measured, want = makespan(events), float(makespan(simulated))
    assert measured >= want - 1e-6, f"the step took {measured} s, less than the simulated {want} s"
    bub = float(bubble_fraction(events))
    floor = sum(r * (pads["F"] + pads["B"]) for r in ranks) / (len(ranks) * measured)
    assert bub >= floor - 1e-9, (bub, floor)
    why = ""
    if overrun > slack:
        why = f"an operation overran its pad by {1e3 * overrun:.0f} ms"
    elif lag > slack:
        why = f"an operation started {1e3 * lag:.0f} ms after its input was there"
    return {"overrun": overrun, "lag": lag, "ratio": measured / want, "bubble": bub,
            "bubble_floor": floor, "quiet": not why, "why": why}


def _report(res: dict, world: int) -> None:
    measured = float(bubble_fraction(res["events"]))
    print(f"{world} stages, bubble: measured {measured:.3f}, simulated "
          f"{float(bubble_fraction(res['simulated'])):.3f}, formula (p-1)/(vm+p-1) = "
          f"{res['formula']} = {float(res['formula']):.3f}")
    for k in unresolved(res["compute"], res["pads"]):
        flag, op = ("--t-f", "forward") if k == "F" else ("--t-b", "backward")
        print(f"warning: {flag} is too short to resolve the bubble: the slowest {op} computes for "
              f"{1e3 * res['compute'][k]:.1f} ms, more than half its pad of "
              f"{1e3 * res['pads'][k]:.1f} ms, so the pads do not fix the costs and the measured "
              f"bubble is not the schedule's; give {flag} at least "
              f"{10 * res['compute'][k] * res['pads']['v']:.3g} s", file=sys.stderr)


def cli(argv: list[str] | None = None) -> None:
    """``python -m llmtrain.parallel.demos.pipeline_parallel [--nproc 4] [--schedule gpipe] …``:
    one padded step, its bubble measured, simulated and by the formula."""
    _main("python -m llmtrain.parallel.demos.pipeline_parallel", _rank, _report,
          description="Pipeline parallelism: measure the bubble of one schedule.",
          options=_options, validate=_validate, nproc=2, argv=argv)


LOOK_AHEAD = ("ScheduleInterleavedZeroBubble", "ScheduleZBVZeroBubble", "ScheduleDualPipeV")


def torch_schedule(name: str = "ScheduleZBVZeroBubble", microbatches: int = 4, shape: Any = "tiny",
                   batch: int = 8, seq: int = 16, seed: int = 0) -> dict[str, Any]:
    """One step by one of torch's newer schedules, two stages per rank, on our stages
    (float64): round-robin for ScheduleInterleavedZeroBubble (rank r: stages r, r + p), a "V"
    for ScheduleZBVZeroBubble and ScheduleDualPipeV (rank r: stages r and 2p − 1 − r, so rank 0
    holds the first and the last). Returns {"rank", "stages", "loss" (the rank holding the last
    stage, else None), "grads" (full names), "order" (the rank's computations as torch lists
    them in ``pipeline_order``: (kind, stage, micro-batch), kind F, B, or I and W, a backward's
    input- and weight-gradient halves; an overlapped F;B pair as its two parts), "single"
    (rank 0: one process's loss and gradients)}."""
    from torch.distributed import pipelining

    check.one_of("name", name, LOOK_AHEAD)
    r, p = dist.get_rank(), dist.get_world_size()
    model = model_of(shape, "float64", seed)
    if model.shape.tie_embeddings:
        raise ValueError("shape must have untied embeddings here (the V puts both ends on rank 0)")
    ids = batch_of(model.shape, batch, seq, seed + 1)
    out: dict[str, Any] = {"rank": r}
    if r == 0:
        res = model(ids, labels=ids)
        res.loss.backward()
        out["single"] = {"loss": res.loss.detach(), "grads": _grads(model.named_parameters())}
        model.zero_grad(set_to_none=True)
    n = 2 * p
    ranges = pp.stage_layers(model.shape.num_layers, n)
    mine = [r, n - 1 - r] if name in LOOK_AHEAD[1:] else [r, r + p]
    stages = [pp.Stage(model, ranges[s], s == 0, s == n - 1) for s in mine]
    tokens = int((ids[:, 1:] != -100).sum())
    sched = getattr(pipelining, name)(
        [pipelining.PipelineStage(st, s, n, torch.device("cpu")) for st, s in zip(stages, mine)],
        microbatches, loss_fn=lambda logits, labels: pp.lm_loss(logits, labels, tokens),
        scale_grads=False)
    losses: list = []
    sched.step(*((ids,) if 0 in mine else ()), target=ids if n - 1 in mine else None, losses=losses)

    def parts(action):
        for a in action.sub_actions or (action,):
            if a.computation_type.value in ("F", "B", "I", "W"):
                yield a.computation_type.value, a.stage_index, a.microbatch_index

    order = [t for a in sched.pipeline_order[r] if a is not None for t in parts(a)]
    return {"rank": r, "stages": mine, "order": order, **out,
            "loss": torch.stack([x.detach() for x in losses]).sum() if losses else None,
            "grads": {pp.Stage.full_name(k): q.grad.detach().clone()
                      for st in stages for k, q in st.named_parameters()}}


def run_all(fn, configs: list[dict[str, Any]]) -> list[Any]:
    """``[fn(**c) for c in configs]`` on this rank: several demos in one launch (each launch
    costs seconds of process start)."""
    check.function("fn", fn)
    return [fn(**c) for c in configs]


if __name__ == "__main__":  # the ranks import _rank by this module's name, not "__main__"
    from llmtrain.parallel.demos.pipeline_parallel import cli as _cli

    _cli()
