#!/usr/bin/env python3
"""Time the update path of the notebooks' widgets, without a browser or a kernel.

    python scripts/bench_widgets.py              # 50 settings per widget, median and p90
    python scripts/bench_widgets.py --baseline   # also: a new figure per update (the old way)
    python scripts/bench_widgets.py --check      # exit 1 if a median is over the 50 ms budget

For each widget of notebooks 03, 08, 10 and 11 (``llmtrain.widgets.EXPLORERS``) it draws N valid settings
at random (seeded) from the ranges of the widget's own ipywidgets controls, and times what a
control's change runs: ``explorer.set(**setting)`` = validate + library call + move the
artists of the one figure + render the PNG (blitted) + hand the PNG and the text to the
``Image`` and ``HTML`` widgets. Reported: CPU time of this process (``time.process_time``,
what the kernel spends) and wall time, median and 90th percentile, in ms; and the library
call alone (``compute``). A first update, outside the timing, draws the static background.

``--baseline`` times, on the same settings, what ``ipywidgets.interact`` with a plotting
function did before: a new figure per update (a fresh explorer), rendered the way Jupyter's
inline backend renders a figure (``savefig(format="png", bbox_inches="tight")``, which draws
twice). Timings depend on the machine and its load; this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import io
import math
import random
import statistics
import sys
import time

from llmtrain import widgets

BUDGET_MS = 50.0


def sample(controls: dict, rng: random.Random) -> dict:
    """One setting drawn from the controls' own ranges (sliders: on their step grid)."""
    out = {}
    for name, c in controls.items():
        kind = type(c).__name__
        if kind == "Dropdown":
            out[name] = rng.choice([v for _, v in c.options]) if isinstance(c.options[0], tuple) \
                else rng.choice(list(c.options))
        elif kind == "FloatLogSlider":
            k = rng.randint(0, round((c.max - c.min) / c.step))
            out[name] = float(c.base ** (c.min + k * c.step))
        elif kind == "IntSlider":
            out[name] = rng.randrange(c.min, c.max + 1, c.step)
        elif kind == "FloatSlider":
            k = rng.randint(0, round((c.max - c.min) / c.step))
            out[name] = round(c.min + k * c.step, 10)
        else:
            raise SystemExit(f"no sampler for control {name!r} of type {kind}")
    return out


def valid_settings(cls, n: int, seed: int) -> tuple[list[dict], int]:
    """n settings the library accepts, and how many drawn ones it refused on the way."""
    import ipywidgets

    explorer = cls()
    controls = explorer._controls(ipywidgets)
    rng = random.Random(seed)
    good, refused = [], 0
    while len(good) < n:
        s = sample(controls, rng)
        try:
            explorer.compute(**s)
        except ValueError:
            refused += 1
            continue
        good.append(s)
    return good, refused


def drag(cls, n: int) -> tuple[str, list[dict]]:
    """A drag: the first slider of the widget moved one step at a time from its default,
    n times (bouncing at the ends), the other settings at their defaults."""
    import ipywidgets

    controls = cls()._controls(ipywidgets)
    name, c = next((k, c) for k, c in controls.items() if type(c).__name__.endswith("Slider"))
    log = type(c).__name__ == "FloatLogSlider"
    x = math.log(cls.DEFAULTS[name], c.base) if log else cls.DEFAULTS[name]
    step, out = c.step, []
    for _ in range(n):
        if not (c.min <= x + step <= c.max):
            step = -step
        x += step
        value = float(c.base ** x) if log else (round(x, 10) if isinstance(step, float) else x)
        out.append({name: value})
    return name, out


def timed(fn, settings: list[dict]) -> tuple[list[float], list[float]]:
    cpu, wall = [], []
    for s in settings:
        c0, w0 = time.process_time(), time.perf_counter()
        fn(s)
        c1, w1 = time.process_time(), time.perf_counter()
        cpu.append(1000 * (c1 - c0))
        wall.append(1000 * (w1 - w0))
    return cpu, wall


def p90(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=10, method="inclusive")[-1]


def rebuild(cls, s: dict) -> bytes:
    """The old way: a new figure for each update, rendered as the inline backend does."""
    fresh = cls(**s)
    buf = io.BytesIO()
    fresh.fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50, help="settings per widget (default 50)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline", action="store_true", help="also time a new figure per update")
    ap.add_argument("--check", action="store_true",
                    help=f"exit 1 if a median exceeds {BUDGET_MS:g} ms")
    args = ap.parse_args(argv)
    if args.n < 2:
        ap.error(f"--n must be an integer >= 2, got {args.n}")

    rows, over = [], False
    for nb, cls in widgets.EXPLORERS.items():
        settings, refused = valid_settings(cls, args.n, args.seed)
        explorer = cls()
        explorer.widget()  # the ipywidgets controls, Image and HTML that set() updates
        explorer.set(**settings[-1])  # draws the static background once
        lib_cpu, _ = timed(lambda s: explorer.compute(**s), settings)
        cpu, wall = timed(lambda s: explorer.set(**s), settings)
        assert explorer.error is None, explorer.error
        over |= statistics.median(cpu) > BUDGET_MS
        rows.append((f"{nb} {cls.__name__}", "set, random", refused, lib_cpu, cpu, wall))
        name, moves = drag(cls, args.n)
        explorer.set(**cls.DEFAULTS)
        lib_cpu, _ = timed(lambda s: explorer.compute(**{**cls.DEFAULTS, **s}), moves)
        cpu, wall = timed(lambda s: explorer.set(**s), moves)
        assert explorer.error is None, explorer.error
        over |= statistics.median(cpu) > BUDGET_MS
        rows.append((f"{nb} {cls.__name__}", f"set, drag {name}", refused, lib_cpu, cpu, wall))
        if args.baseline:
            lib_cpu = rows[-2][3]
            rebuild(cls, settings[-1])
            bcpu, bwall = timed(lambda s: rebuild(cls, s), settings)
            rows.append((f"{nb} {cls.__name__}", "new figure, random", refused, lib_cpu,
                         bcpu, bwall))

    print(f"{args.n} valid settings per widget (seed {args.seed}); ms per update; "
          f"budget {BUDGET_MS:g} ms of CPU (median)")
    head = (f"{'widget':<20} {'path':<19} {'library':>8} {'CPU med':>8} {'CPU p90':>8} "
            f"{'wall med':>9} {'wall p90':>9}")
    print(head)
    print("-" * len(head))
    for name, path, _, lib_cpu, cpu, wall in rows:
        print(f"{name:<20} {path:<19} {statistics.median(lib_cpu):>8.2f} "
              f"{statistics.median(cpu):>8.1f} {p90(cpu):>8.1f} "
              f"{statistics.median(wall):>9.1f} {p90(wall):>9.1f}")
    print("library = the library call alone (compute: validation + schedules/params/memory);"
          " random: N valid settings drawn from the controls' ranges (refused on the way: "
          + ", ".join(f"{r[0].split()[0]}: {r[2]}" for r in rows[::3 if args.baseline else 2])
          + "); drag: one slider moved a step at a time")
    if args.check and over:
        print(f"over budget: a median exceeds {BUDGET_MS:g} ms", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
