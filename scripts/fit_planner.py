"""Fit the planner's kernel rates (``llmtrain.cost.step_time.KERNELS``) on the published runs.

    .venv/bin/python scripts/fit_planner.py            # fit, print the table, write results/
    .venv/bin/python scripts/fit_planner.py --write    # ... and KERNELS, published_ranks.py
    .venv/bin/python scripts/fit_planner.py --table    # the table for the committed KERNELS only

Ten numbers are fitted, on every run of ``llmtrain.cost.published_runs.RUNS`` at once: per GPU
generation (ampere, hopper) the share of peak of a large GEMM and of flash attention and the
GEMM width at half efficiency; shared by both, the rows (tokens) at half efficiency and the
achieved shares of HBM, NVLink and network bandwidth. The
objective is the mean squared log error of the predicted step time (each run's unpublished knobs
chosen as ``published_runs.predict`` does: its fastest choice that fits). A leave-one-source-out
pass refits without each source's runs and predicts them: the error a run of a paper the fit
has not seen may have. Nelder–Mead (no SciPy here), a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from llmtrain.cost import published_runs, step_time

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "planner_fit.txt"
SOURCE = ROOT / "lib" / "llmtrain" / "step_time.py"
RANKS = ROOT / "lib" / "llmtrain" / "published_ranks.py"
NAMES = ("ampere.gemm", "hopper.gemm", "ampere.attention", "hopper.attention",
         "ampere.gemm_half", "hbm", "nvlink", "hopper.gemm_half", "rows_half", "network")
# shares of a datasheet peak: at most 0.95 (no kernel reaches the datasheet's bandwidth or FLOPs;
# attention no faster than the GEMMs); half sizes between 8 and 2,048
BOUNDS = ((0.3, 0.95), (0.3, 0.95), (0.3, 0.95), (0.3, 0.95), (8.0, 2048.0), (0.3, 0.95),
          (0.3, 0.95), (8.0, 2048.0), (8.0, 2048.0), (0.3, 0.95))


def kernels(theta) -> dict[str, step_time.Kernels]:
    ag, hg, aa, ha, half, hbm, nvlink, hhalf, rows, network = theta
    return {"ampere": step_time.Kernels(ag, half, rows, aa, hbm, nvlink, network),
            "hopper": step_time.Kernels(hg, hhalf, rows, ha, hbm, nvlink, network)}


def ratios(theta, runs) -> list[float]:
    """predicted / published step time of each run, with the rates theta."""
    saved = dict(step_time.KERNELS)
    step_time.KERNELS.update(kernels(theta))
    try:
        return [published_runs.predict(r)[0].step_time_s / r.step_time_s for r in runs]
    finally:
        step_time.KERNELS.update(saved)


def loss(theta, runs) -> float:
    if any(not lo <= x <= hi for x, (lo, hi) in zip(theta, BOUNDS)):
        return math.inf
    if theta[2] > theta[0] or theta[3] > theta[1]:  # attention kernels no faster than GEMMs
        return math.inf
    return sum(math.log(q) ** 2 for q in ratios(theta, runs)) / len(runs)


def nelder_mead(f, x0, steps, iters=300, tol=1e-7):
    """Minimise f from x0 (the standard reflection/expansion/contraction/shrink moves)."""
    pts = [list(x0)] + [[x + (s if i == j else 0) for j, x in enumerate(x0)]
                        for i, s in enumerate(steps)]
    vals = [f(p) for p in pts]
    for _ in range(iters):
        order = sorted(range(len(pts)), key=vals.__getitem__)
        pts, vals = [pts[i] for i in order], [vals[i] for i in order]
        if vals[-1] - vals[0] < tol:
            break
        n = len(x0)
        c = [sum(p[j] for p in pts[:-1]) / n for j in range(n)]
        refl = [c[j] + (c[j] - pts[-1][j]) for j in range(n)]
        fr = f(refl)
        if fr < vals[0]:
            exp = [c[j] + 2 * (c[j] - pts[-1][j]) for j in range(n)]
            fe = f(exp)
            pts[-1], vals[-1] = (exp, fe) if fe < fr else (refl, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = refl, fr
        else:
            con = [c[j] + 0.5 * (pts[-1][j] - c[j]) for j in range(n)]
            fc = f(con)
            if fc < vals[-1]:
                pts[-1], vals[-1] = con, fc
            else:
                pts = [pts[0]] + [[pts[0][j] + 0.5 * (p[j] - pts[0][j]) for j in range(n)]
                                  for p in pts[1:]]
                vals = [vals[0]] + [f(p) for p in pts[1:]]
    i = min(range(len(pts)), key=vals.__getitem__)
    return pts[i], vals[i]


def current() -> list[float]:
    a, h = step_time.KERNELS["ampere"], step_time.KERNELS["hopper"]
    return [a.gemm, h.gemm, a.attention, h.attention, a.gemm_half, a.hbm, a.nvlink,
            h.gemm_half, a.rows_half, a.network]


def write_kernels(theta) -> None:
    """Replace step_time.py's KERNELS literal with the fitted values (4 significant digits)."""
    text = SOURCE.read_text()
    start = text.index("KERNELS: dict[str, Kernels] = {")
    end = text.index("}\n", start) + 2
    rows = ["KERNELS: dict[str, Kernels] = {"]
    for gen, k in kernels([float(f"{x:.4g}") for x in theta]).items():
        rows.append(f'    "{gen}": Kernels(gemm={k.gemm}, gemm_half={k.gemm_half}, '
                    f"rows_half={k.rows_half}, attention={k.attention},")
        rows.append(f"                      hbm={k.hbm}, nvlink={k.nvlink}, "
                    f"network={k.network}),")
    SOURCE.write_text(text[:start] + "\n".join(rows) + "\n}\n" + text[end:])


def fit(runs, x0):
    steps = [0.05, 0.05, 0.05, 0.05, 32.0, 0.05, 0.05, 32.0, 32.0, 0.05]
    return nelder_mead(lambda t: loss(t, runs), x0, steps)


def table(theta, runs) -> tuple[list[str], dict]:
    """Each run: published and predicted step time, their ratio, and the published layout's
    rank among the layouts its framework could run (``published_runs.rank``); and the ranks
    as {key: (rank, layouts that fit, step time over the fastest's)}."""
    saved = dict(step_time.KERNELS)
    step_time.KERNELS.update(kernels(theta))
    rows = [f"{'run':<44} {'gpus':>6} {'published s':>11} {'predicted s':>11} {'ratio':>6} "
            f"{'rank':>11} {'× fastest':>9}"]
    ranks = {}
    try:
        for r in runs:
            p = published_runs.predict(r)[0]
            k, n, x, _ = published_runs.rank(r, predicted=p)
            ranks[r.key] = (k, n, None if x is None else round(x, 4))
            where = f"{k}/{n}" if k else "no fit"
            rows.append(f"{r.key:<44} {r.gpus:>6} {r.step_time_s:>11.2f} {p.step_time_s:>11.2f}"
                        f" {p.step_time_s / r.step_time_s:>6.3f} {where:>11} "
                        + (f"{x:>9.3f}" if x else f"{'':>9}"))
    finally:
        step_time.KERNELS.update(saved)
    return rows, ranks


def write_ranks(ranks: dict) -> None:
    doc = ("The published layouts' ranks among the layouts their frameworks could run, as\n"
           "``published_runs.rank`` gives them: {run: (rank, layouts that fit, its step time over\n"
           "the fastest's)}. Written by scripts/fit_planner.py --write (the search takes half a\n"
           "minute, too long for notebook 08); tests/test_published_runs.py recomputes each.")
    body = "".join(f"    {k!r}: {v!r},\n" for k, v in ranks.items())
    RANKS.write_text(f'"""{doc}"""\n\nRANKS = {{\n{body}}}\n')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", action="store_true", help="no fit: the committed KERNELS")
    ap.add_argument("--no-cv", action="store_true", help="skip the leave-one-source-out pass")
    ap.add_argument("--write", action="store_true", help="write the fitted KERNELS into "
                                                          "lib/llmtrain/step_time.py")
    args = ap.parse_args(argv)
    runs = list(published_runs.RUNS)
    t0 = time.time()
    theta = current()
    lines = []
    if not args.table:
        theta, val = fit(runs, theta)
        theta = [float(f"{x:.4g}") for x in theta]  # as written into step_time.py
        lines.append("fitted: " + ", ".join(f"{n} = {x:.4g}" for n, x in zip(NAMES, theta))
                     + f"; mean squared log error {loss(theta, runs):.5f}")
        if args.write:
            write_kernels(theta)
    rows, ranks = table(theta, runs)
    lines += rows
    if args.write:
        write_ranks(ranks)
    qs = ratios(theta, runs)
    lines.append(f"{len(runs)} runs: ratio {min(qs):.3f} to {max(qs):.3f}; "
                 f"{sum(abs(q - 1) <= 0.15 for q in qs)} within ±15 %")
    if not args.table and not args.no_cv:
        lines.append("leave one source out (refit without the source, predict its runs):")
        for src in sorted({r.source for r in runs}):
            train = [r for r in runs if r.source != src]
            test = [r for r in runs if r.source == src]
            th, _ = fit(train, theta)
            q = ratios(th, test)
            lines.append(f"  {src:<34} {len(test):>2} runs: ratio {min(q):.3f} to {max(q):.3f}")
    lines.append(f"({time.time() - t0:.0f} s)")
    print("\n".join(lines))
    if not args.table:
        OUT.parent.mkdir(exist_ok=True)
        OUT.write_text("\n".join(lines[:-1]) + "\n")
        print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
