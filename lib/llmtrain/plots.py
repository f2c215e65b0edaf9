"""One figure style for every notebook, ``save`` to write it to figures/, ``gantt`` for
pipeline schedules (one row per rank, a box per forward or backward, the bubble left white)
and ``rank_cube`` for the dp × tp × pp layout of the ranks (3D 并行).

White background (readable on GitHub's dark theme as well as in print), the Okabe–Ito
colour-blind-safe palette, and files that are byte-identical run after run.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import matplotlib.colors

from . import check

__all__ = ["PALETTE", "use_style", "save", "figures_dir", "gantt", "rank_cube"]

# Okabe & Ito (2008), colour-blind safe.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]

STYLE = {
    "figure.figsize": (7.0, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "savefig.facecolor": "white",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "axes.titleweight": "bold",
    "font.size": 10,
    "legend.frameon": False,
    "svg.hashsalt": "llmtrain",  # stable ids in SVG files
    "svg.fonttype": "path",
}


def use_style() -> None:
    """Apply the house style to matplotlib's global settings."""
    matplotlib.rcParams.update(STYLE)


def figures_dir() -> Path:
    """Where figures go: $LLMTRAIN_FIGURES, else the repository's figures/ (when the
    package runs from a checkout), else ./figures."""
    env = os.environ.get("LLMTRAIN_FIGURES")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "notebooks").is_dir():
        return repo / "figures"
    return Path.cwd() / "figures"


def save(fig, name: str) -> list[Path]:
    """Write ``figures/<name>.png`` and ``figures/<name>.svg``; returns the two paths."""
    if not hasattr(fig, "savefig"):
        check.fail("fig", "a matplotlib Figure", fig)
    if not isinstance(name, str) or not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ValueError(f"name must be a plain file stem like '10_params_by_component', got {name!r}")
    out = figures_dir()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    fig.savefig(paths[0], bbox_inches="tight", metadata={"Software": None})
    fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None, "Creator": None})
    return paths


def _shade(colour: str, amount: float) -> tuple[float, float, float]:
    """``colour`` mixed with white: amount 0 is the colour itself, 1 is white."""
    return tuple(c + (1 - c) * amount for c in matplotlib.colors.to_rgb(colour))


# pipeline operations: colour and legend of each kind (I and W: a backward split in two)
_GANTT = {"F": (PALETTE[0], "forward"), "B": (PALETTE[1], "backward"),
          "I": (PALETTE[3], "backward, input grad (I)"),
          "W": (PALETTE[2], "backward, weight grad (W)")}


def gantt(ax, events, *, stages: int | None = None, title: str | None = None, unit: str = "s"):
    """Draw a pipeline schedule on ``ax`` and return it: one row per rank (rank 0 on top), one
    box per event from its start to its end, forwards blue and backwards orange (zero-bubble
    schedules' I and W halves vermillion and green), the micro-batch written in each box wide
    enough for it; idle time stays white, so the bubble is what you see.

    ``events`` are ``pp_schedule.Event``\\ s (rank, stage, kind, mb, start, end), simulated
    (ints, Fractions) or measured (float seconds); times are shifted so the first starts at 0.
    With interleaving (``stages`` = p·v, by default the highest stage + 1) chunk c = stage // p
    is drawn lighter the higher c is, so chunk 0 and chunk 1 can be told apart."""
    events = check.sequence("events", events, nonempty=True)
    p, top = max(e.rank for e in events) + 1, max(e.stage for e in events)
    stages = top + 1 if stages is None else check.positive_int("stages", stages)
    if stages % p or stages <= top:
        check.fail("stages", f"a multiple of the {p} ranks above the highest stage {top}", stages)
    for name, value in (("title", title), ("unit", unit)):
        if not isinstance(value, str) and (name == "unit" or value is not None):
            check.fail(name, "a string", value)
    for e in events:
        check.one_of("kind", e.kind, tuple(_GANTT))
    v, t0 = stages // p, min(e.start for e in events)
    span = float(max(e.end for e in events) - t0) or 1.0
    digit_px = 0.6 * 8 * ax.figure.dpi / 72  # a digit at font size 8, in pixels
    groups: dict[tuple[str, int], list] = {}
    for e in events:
        groups.setdefault((e.kind, e.stage // p), []).append(e)
    for kind, chunk in sorted(groups, key=lambda key: (list(_GANTT).index(key[0]), key[1])):
        group = groups[kind, chunk]
        face = _shade(_GANTT[kind][0], 0.55 * chunk / max(v - 1, 1))
        text = "white" if 0.2126 * face[0] + 0.7152 * face[1] + 0.0722 * face[2] < 0.5 else "black"
        starts = [float(e.start - t0) for e in group]
        widths = [float(e.end - e.start) for e in group]
        label = _GANTT[kind][1] + (f", chunk {chunk}" if v > 1 else "")
        ax.barh([e.rank for e in group], widths, left=starts, height=0.8, color=face,
                edgecolor="white", linewidth=0.5, label=label)
        for e, x, w in zip(group, starts, widths):
            if w / span * ax.bbox.width >= digit_px * (len(str(e.mb)) + 1):
                ax.text(x + w / 2, e.rank, str(e.mb), ha="center", va="center", fontsize=8,
                        color=text)
    ax.set_yticks(range(p), [f"rank {r}" for r in range(p)])
    ax.set_ylim(p - 0.5, -0.5)  # rank 0 on top
    ax.set_xlim(0, span)
    ax.set_xlabel(f"time ({unit})")
    ax.grid(False, axis="y")
    ax.set_axisbelow(True)
    if title is not None:
        ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


def rank_cube(ax, dims, labels=None, *, title: str | None = None):
    """Draw the ranks of a ``ParallelDims`` layout as a cube on ``ax`` and return it: tp to the
    right, dp downwards, pp into the page (an oblique projection: each stage a layer of boxes
    drawn behind and above the one before, coloured by stage), one box per rank with its number
    and ``labels[rank]`` (a short text: what it holds) below it."""
    from matplotlib.patches import FancyBboxPatch

    from .cost.layout import ParallelDims

    if not isinstance(dims, ParallelDims):
        check.fail("dims", "a llmtrain.parallel.mesh.ParallelDims", dims)
    for name in ("dp", "tp", "pp"):
        if dims.size(name) > 4:
            check.fail(name, "at most 4 (a cube that fits on a page)", dims.size(name))
    if title is not None and not isinstance(title, str):
        check.fail("title", "a string", title)
    labels = {} if labels is None else dict(labels)
    w, h, sx, ox, oy = 2.2, 1.1, 3.0, 1.2, 1.3  # box, tp spacing, depth offset per stage
    sy = (dims.pp - 1) * oy + h + 0.2  # a dp row's stack of stages clears the next row
    def corner(c):
        return c.tp * sx + c.pp * ox, -c.dp * sy + c.pp * oy

    for r in range(dims.world_size):  # the groups' links, centre to centre, under the boxes
        c = dims.coords(r)
        for axis in ("tp", "dp", "pp"):
            step = c._asdict()
            if step[axis] + 1 < dims.size(axis):
                step[axis] += 1
                (x1, y1), (x2, y2) = corner(c), corner(type(c)(**step))
                ax.plot([x1 + w / 2, x2 + w / 2], [y1 + h / 2, y2 + h / 2], color="#999999",
                        lw=0.8, ls="--" if axis == "pp" else "-", zorder=0)
    for r in sorted(range(dims.world_size), key=lambda r: -dims.coords(r).pp):  # back first
        c = dims.coords(r)
        x, y = corner(c)
        colour = PALETTE[c.pp % len(PALETTE)]
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.04", zorder=2,
                                    facecolor=_shade(colour, 0.75), edgecolor=colour, lw=1.2))
        ax.text(x + w / 2, y + h - 0.22, f"rank {r}", ha="center", va="center", fontsize=8,
                fontweight="bold", zorder=3)
        if r in labels:
            ax.text(x + w / 2, y + 0.36, str(labels[r]), ha="center", va="center", fontsize=6.5,
                    linespacing=1.15, zorder=3)
    x0, y0 = -0.9, h + 0.55 + (dims.pp - 1) * oy  # the axes, from the top-left corner
    arrow = dict(arrowstyle="->", color="#444444", lw=1.0)
    ax.annotate("", (x0 + 1.6, y0), (x0, y0), arrowprops=arrow)
    ax.text(x0 + 1.7, y0, "tp", va="center", fontsize=8)
    ax.annotate("", (x0, y0 - 1.2), (x0, y0), arrowprops=arrow)
    ax.text(x0, y0 - 1.45, "dp", ha="center", fontsize=8)
    ax.annotate("", (x0 + 0.8, y0 + 0.5), (x0, y0), arrowprops=arrow)
    ax.text(x0 + 0.9, y0 + 0.55, "pp", fontsize=8)
    ax.set_xlim(x0 - 0.4, (dims.tp - 1) * sx + (dims.pp - 1) * ox + w + 0.3)
    ax.set_ylim(-(dims.dp - 1) * sy - 0.3, y0 + 0.9)
    ax.set_aspect("equal")
    ax.grid(False)
    ax.axis("off")
    if title is not None:
        ax.set_title(title)
    return ax
