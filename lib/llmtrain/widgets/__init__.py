"""The notebooks' widgets: one figure each, updated in place, readable without a kernel.

Four explorers, one per notebook that lets the reader play, each in its own module:

- ``ScheduleExplorer``  notebook 03: warmup + cosine or linear decay (``schedules``),
  in ``schedule_explorer``
- ``PlannerExplorer``   notebook 08: the fastest 3D layouts of a model on a cluster (``plan``),
  in ``planner_explorer``
- ``ParamsExplorer``    notebook 10: parameters of a LLaMA-shaped model by component (``params``),
  in ``params_explorer``
- ``MemoryCalculator``  notebooks 11 and 12: per-GPU training memory by part
  (``memory.estimate``), in ``memory_calculator``

All four subclass ``Explorer`` (``explorer``); every name is importable from ``llmtrain.widgets``.

Each is a plain object, usable without Jupyter:

- ``compute(**settings)`` validates the settings and asks the library; it returns what is shown
  (a bad setting raises ``ValueError`` naming the setting and the rule);
- ``update(**changes)`` computes, then moves the artists of the explorer's *one* matplotlib
  figure (no new figure, no pyplot) and returns the text shown under it; a bad setting leaves
  the last good state drawn, dimmed, and the text is the error message;
- ``png()`` renders that figure (Agg, fixed layout, blitted: the frame, legend and ticks are
  kept as pixels, so an update draws the data and, only when an axis limit moves, the ticks;
  the pixels equal a full draw's);
- ``widget()`` wraps it in ipywidgets controls, an ``Image`` and an ``HTML`` text; a control's
  change calls ``set`` = ``update`` + ``png`` + two widget values.

Rebuilding a figure and its PNG on every change, as ``ipywidgets.interact`` with ``plt.show``
did, cost 135–155 ms of CPU per update, nearly all of it drawing text; ``set`` stays well
under a 50 ms budget (``scripts/bench_widgets.py`` measures both). ``static()`` draws the
default state with its headline as the title: the notebooks store it as a figure and a text,
which is what a reader sees on GitHub or in the HTML build, where the widget itself is blank.
Tested in tests/test_widgets.py.
"""

from __future__ import annotations

from .explorer import Explorer, nice_limit
from .memory_calculator import CARD_GIB, MemoryCalculator
from .params_explorer import ParamsExplorer
from .planner_explorer import PlannerExplorer
from .schedule_explorer import ScheduleExplorer

__all__ = ["nice_limit", "Explorer", "ScheduleExplorer", "ParamsExplorer", "MemoryCalculator",
           "PlannerExplorer", "EXPLORERS", "CARD_GIB"]

EXPLORERS = {"03": ScheduleExplorer, "08": PlannerExplorer, "10": ParamsExplorer,
             "11": MemoryCalculator}
"""The explorer of each notebook that has one (scripts/bench_widgets.py times them all)."""
