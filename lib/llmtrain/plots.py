"""One figure style for every notebook, and ``save`` to write it to figures/.

White background (readable on GitHub's dark theme as well as in print), the Okabe–Ito
colour-blind-safe palette, and files that are byte-identical run after run.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

from . import check

__all__ = ["PALETTE", "use_style", "save", "figures_dir"]

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
