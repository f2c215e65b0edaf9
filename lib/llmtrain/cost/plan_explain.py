"""The planner's answer in words (``llmtrain plan``, ``--explain``): the fastest layouts with
their memory and time by part, and why the fastest wins against the best layout of each other
choice (another tensor-parallel size, pipeline depth, interleaving, recomputation, ZeRO stage,
micro-batch)."""

from __future__ import annotations

from .plan import GIB, Plan

__all__ = ["TIME_PARTS", "table", "rivals", "explain"]

TIME_PARTS = ("compute", "TP comm", "bubble", "DP comm", "PP p2p", "optimizer")
_SHORT = {"compute": "compute", "TP comm": "TP", "bubble": "bubble", "DP comm": "DP",
          "PP p2p": "p2p", "optimizer": "optim"}


def table(plans: list[Plan]) -> list[str]:
    """One row per plan: layout, micro-batches, GiB per GPU (model states + activations +
    other), seconds per step and its parts, MFU. Checked (the CLI's table):
    tests/test_plan.py::test_cli_table."""
    head = (f"{'#':>3} {'layout':<40} {'m':>5} {'GiB/GPU':>7} {'states':>6} {'acts':>6} "
            f"{'s/step':>8} " + " ".join(f"{_SHORT[k]:>7}" for k in TIME_PARTS) + f" {'MFU':>6}")
    rows = [head]
    for i, p in enumerate(plans, 1):
        mem = p.memory_parts
        acts = mem.get("activations", 0) + mem.get("in-flight activations", 0)
        rows.append(f"{i:>3} {p.layout.label():<40} {p.layout.microbatches:>5} "
                    f"{p.memory_bytes / GIB:>7.1f} {mem['model states'] / GIB:>6.1f} "
                    f"{acts / GIB:>6.1f} {p.step_time_s:>8.3f} "
                    + " ".join(f"{p.time_parts[k]:>7.3f}" for k in TIME_PARTS)
                    + f" {100 * p.mfu:>5.1f}%")
    return rows


def rivals(plans: list[Plan]) -> dict[str, Plan]:
    """The fastest plan of each choice the fastest (``plans[0]``) did not make: {what differs:
    that plan}. ``plans`` sorted fastest first, as ``plan.search`` returns them.

    Checked: tests/test_plan.py::test_rivals_differ_where_they_say."""
    best = plans[0].layout
    tests = {
        f"tp ≠ {best.dims.tp}": lambda lay: lay.dims.tp != best.dims.tp,
        f"pp ≠ {best.dims.pp}": lambda lay: lay.dims.pp != best.dims.pp,
        ("no interleaving" if best.virtual > 1 else "interleaved"):
            lambda lay: (lay.virtual == 1) != (best.virtual == 1),
        f"recompute ≠ {best.recompute}": lambda lay: lay.recompute != best.recompute,
        f"ZeRO ≠ {best.zero}": lambda lay: lay.zero != best.zero,
        f"micro-batch ≠ {best.micro_batch}": lambda lay: lay.micro_batch != best.micro_batch,
        ("no sequence parallelism" if best.sp else "sequence parallelism"):
            lambda lay: lay.sp != best.sp,
    }
    out = {}
    for what, differs in tests.items():
        other = next((p for p in plans[1:] if differs(p.layout)), None)
        if other is not None:
            out[what] = other
    return out


def explain(plans: list[Plan]) -> list[str]:
    """Why ``plans[0]`` wins: its memory and time by part, then for each rival (``rivals``) how
    much slower it is and the two parts that cost it most.

    Checked (the CLI's --explain):
    tests/test_plan.py::test_cli_searches_interleaving_and_explains."""
    if not plans:
        raise ValueError("plans must hold at least one plan")
    p = plans[0]
    rows = [f"why #1 ({p.layout.label()}) wins:",
            "  memory per GPU: " + ", ".join(f"{k} {v / GIB:.1f}" for k, v in
                                             p.memory_parts.items())
            + f" = {p.memory_bytes / GIB:.1f} GiB of {p.card_bytes / GIB:.0f}",
            "  time per step: " + ", ".join(f"{k} {v:.3f}" for k, v in p.time_parts.items())
            + f" = {p.step_time_s:.3f} s (compute: " + ", ".join(
                f"{k} {v:.3f}" for k, v in p.details["compute_parts"].items()) + ")"]
    for what, q in rivals(plans).items():
        diff = {k: q.time_parts[k] - p.time_parts[k] for k in TIME_PARTS}
        worst = sorted(diff, key=diff.get, reverse=True)[:2]
        why = ", ".join(f"{k} {diff[k]:+.3f} s" for k in worst if diff[k] > 0) or "no part"
        rows.append(f"  best with {what}: {q.layout.label()}, {q.step_time_s:.3f} s "
                    f"({100 * (q.step_time_s / p.step_time_s - 1):+.1f} %), "
                    f"{q.memory_bytes / GIB:.1f} GiB; costs more: {why}")
    return rows
