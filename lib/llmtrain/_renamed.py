"""Old import paths, kept for one release: each old module name, and where its names live now.

The package was reorganised into wings (issue 24): arithmetic you can redo (``cost``) apart from
code that runs (``model``, ``measure``, ``optim``, ``precision``, ``recipes``, ``parallel``).
``import llmtrain.memory`` (or ``from llmtrain import memory``) still works: it gives a module
whose attributes are looked up, in order, in the new modules listed here. New code imports the
new paths; ``tests/test_architecture.py`` checks that nothing in the package uses these.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

OLD_NAMES: dict[str, tuple[str, ...]] = {
    "llmtrain.shapes": ("llmtrain.model.shapes",),
    "llmtrain.llama": ("llmtrain.model.llama",),
    "llmtrain.recompute": ("llmtrain.model.recompute",),
    "llmtrain.params": ("llmtrain.cost.params",),
    "llmtrain.flops": ("llmtrain.cost.flops", "llmtrain.measure.flops"),
    "llmtrain.activation_formulas": ("llmtrain.cost.activations",),
    "llmtrain.memory": ("llmtrain.cost.memory", "llmtrain.cost.states", "llmtrain.cost.frameworks",
                        "llmtrain.cost.slides", "llmtrain.measure.tracker"),
    "llmtrain.memory_methods": ("llmtrain.cost.methods",),
    "llmtrain.step_peak": ("llmtrain.cost.step_peak",),
    "llmtrain.headlines": ("llmtrain.cost.headlines",),
    "llmtrain.plan": ("llmtrain.cost.plan", "llmtrain.cost.stage", "llmtrain.model.shapes"),
    "llmtrain.plan_explain": ("llmtrain.cost.plan_explain",),
    "llmtrain.step_time": ("llmtrain.cost.step_time",),
    "llmtrain.published_runs": ("llmtrain.cost.published_runs", "llmtrain.cost.published_rows"),
    "llmtrain.published_ranks": ("llmtrain.cost.published_ranks",),
    "llmtrain.parallel.mesh": ("llmtrain.cost.layout", "llmtrain.parallel.groups"),
    "llmtrain.parallel.pp_schedule": ("llmtrain.cost.pp_schedule",),
    "llmtrain.activations": ("llmtrain.measure.activations",),
    "llmtrain.memory_saving": ("llmtrain.measure.optimizer_state", "llmtrain.optim.badam",
                               "llmtrain.optim.fp8_lm", "llmtrain.optim.packages"),
    "llmtrain.lowbit": ("llmtrain.optim.lowbit",),
    "llmtrain.galore": ("llmtrain.optim.galore",),
    "llmtrain.lomo": ("llmtrain.optim.lomo",),
    "llmtrain.amp": ("llmtrain.precision.amp",),
    "llmtrain.settings": ("llmtrain.recipes.settings",),
    "llmtrain.schedules": ("llmtrain.recipes.schedules",),
    "llmtrain.batch": ("llmtrain.recipes.batch",),
    "llmtrain.train": ("llmtrain.recipes.train",),
}

# Names that changed their name too: old module -> {old name: "new module:new name"}.
RENAMED: dict[str, dict[str, str]] = {
    "llmtrain.plan": {"MODELS": "llmtrain.model.shapes:OTHERS",
                      "model": "llmtrain.model.shapes:resolve",
                      "model_names": "llmtrain.model.shapes:all_names"},
    "llmtrain.memory_methods": {"Method": "llmtrain.cost.methods:OptimizerSpec"},
}


def _module(old: str) -> types.ModuleType:
    """A module named ``old`` whose attributes come from its new homes, first match wins."""
    homes = OLD_NAMES[old]
    module = types.ModuleType(old, f"Old path of {', '.join(homes)} (kept for one release).")

    def __getattr__(name: str):
        if name == "__all__":  # ``from <old> import *``: every home's public names
            names = set(RENAMED.get(old, {}))
            for home in homes:
                target = importlib.import_module(home)
                names |= set(getattr(target, "__all__", None)
                             or [n for n in vars(target) if not n.startswith("_")])
            return sorted(names)
        if name in RENAMED.get(old, {}):
            home, _, new = RENAMED[old][name].partition(":")
            return getattr(importlib.import_module(home), new)
        for home in homes:
            target = importlib.import_module(home)
            if hasattr(target, name):
                return getattr(target, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r} (it moved to {homes[0]})")

    def __dir__():
        return sorted({n for home in homes for n in dir(importlib.import_module(home))})

    module.__getattr__ = __getattr__
    module.__dir__ = __dir__
    return module


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in OLD_NAMES:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        return _module(spec.name)

    def exec_module(self, module):
        pass


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
