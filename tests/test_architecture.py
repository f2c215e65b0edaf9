"""The house rules of issue 24, each a test that names the offending file and line.

The package's import graph is read from the source (``ast``: every ``import`` and ``from ...
import``, those inside functions included; those under ``if TYPE_CHECKING:`` left out, as they
never run), relative imports resolved. From it:

- no import circles (each circle printed, edge by edge, with its file and line);
- no import running up a layer (``LAYERS`` below: an import goes down or sideways, never up);
- no library module imports ``llmtrain.parallel.demos`` (the demos import the library);
- no private name (``_x``) of one llmtrain module used by another (``from .x import _y``,
  ``x._y``; dunders and the alias module ``_renamed`` exempt);
- every module at most 400 lines;
- nothing in lib/, tests/, scripts/ or the notebooks imports an old path of
  ``llmtrain._renamed.OLD_NAMES`` (which still work: ``test_old_import_paths_still_work``).

``llmtrain.cost`` (the arithmetic a reader can redo), ``model.shapes``, ``model.recompute``,
``check`` and ``units`` import and compute with torch blocked (``sys.modules["torch"] = None``,
in a subprocess). Every public function and class of ``llmtrain.cost`` names in its docstring
the source of its formula or the test that measures it. One registry per kind: models
(``shapes.resolve``), optimizers (``cost.methods.OPTIMIZERS``, the CLI's choices).
"""

from __future__ import annotations

import ast
import functools
import importlib
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib"
PKG = LIB / "llmtrain"
MAX_LINES = 400

# The layers, lowest first: a module may import its own layer or a lower one, never a higher one.
# A module's layer is that of the longest name here that is it or a package above it.
LAYERS: dict[str, int] = {
    # base: argument checks, showing source, the sources' registry, units, the package itself
    "llmtrain": 0, "llmtrain.check": 0, "llmtrain.show": 0, "llmtrain.sources": 0,
    "llmtrain.units": 0, "llmtrain._notebooks": 0,
    "llmtrain.model": 1,      # shapes (the model registry), llama, recompute
    "llmtrain.cost": 2,       # closed forms, schedules as data, the planner: no runtime
    "llmtrain.measure": 3, "llmtrain.optim": 3, "llmtrain.precision": 3, "llmtrain.recipes": 3,
    "llmtrain.parallel": 4,   # processes: launch, comm, the parallel kinds, parallelize, demos
    # top: what the reader touches
    "llmtrain.widgets": 5, "llmtrain.plots": 5, "llmtrain.cli": 5, "llmtrain.chapter": 5,
    "llmtrain.device": 5, "llmtrain.gpu_results": 5, "llmtrain.__main__": 5,
}
EXEMPT = {"llmtrain._renamed"}  # maps the old names to the new: imports whatever it must
DEMOS = "llmtrain.parallel.demos"

# What must import and compute with torch blocked.
TORCH_FREE_MODULES = ("llmtrain.check", "llmtrain.units", "llmtrain.model.shapes",
                      "llmtrain.model.recompute")


# --- reading the package -------------------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


@functools.cache
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _type_checking_nodes(module: ast.Module) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (never run)."""
    out = set()
    for node in ast.walk(module):
        if isinstance(node, ast.If):
            t = node.test
            name = t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else ""
            if name == "TYPE_CHECKING":
                out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def _package_of(name: str, path: Path) -> list[str]:
    return name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]


def imports_of(name: str, path: Path, mods: dict[str, Path] | None = None, with_alias=False):
    """(target, imported name or None, line) for each llmtrain import of a file: targets are
    the modules as written (``from .x import y``: ``pkg.x.y`` if that is a module, else
    ``pkg.x`` with imported name ``y``). ``name`` is the file's module name (for relative
    imports); ``mods`` the known modules (default: the package's). ``with_alias``: also the
    local name bound (None for ``import a.b`` without ``as``)."""
    mods = modules() if mods is None else mods
    skip = _type_checking_nodes(tree(path))
    pkg = _package_of(name, path)
    for node in ast.walk(tree(path)):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "llmtrain" or a.name.startswith("llmtrain."):
                    yield (a.name, None, a.asname, node.lineno) if with_alias else (
                        a.name, None, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg[:len(pkg) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if not (base == "llmtrain" or base.startswith("llmtrain.")):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                target, imported = (sub, None) if sub in mods or sub in OLD_NAMES() else (base, a.name)
                yield (target, imported, a.asname or a.name, node.lineno) if with_alias else (
                    target, imported, node.lineno)


def _existing(target: str, mods: dict[str, Path]) -> str | None:
    while target not in mods and "." in target:
        target = target.rsplit(".", 1)[0]
    return target if target in mods else None


@functools.cache
def graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}, within the package (self-imports left out)."""
    mods = modules()
    edges: dict[str, dict[str, int]] = {m: {} for m in mods}
    for m, p in mods.items():
        for target, _, line in imports_of(m, p):
            t = _existing(target, mods)
            if t and t != m:
                edges[m].setdefault(t, line)
    return edges


@functools.cache
def OLD_NAMES() -> dict[str, tuple[str, ...]]:  # noqa: N802  (the constant of _renamed)
    """``llmtrain._renamed.OLD_NAMES``, read without importing the package."""
    for node in tree(PKG / "_renamed.py").body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "OLD_NAMES":
            return ast.literal_eval(node.value)
    raise AssertionError("llmtrain/_renamed.py defines no OLD_NAMES")


def layer(module: str) -> int | None:
    while module not in LAYERS and "." in module:
        module = module.rsplit(".", 1)[0]
    return LAYERS.get(module)


def _where(importer: str, target: str) -> str:
    return f"{_rel(modules()[importer])}:{graph()[importer][target]}"


# --- the import graph ----------------------------------------------------------------------

def circles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every elementary circle of the graph, each once, starting from its smallest module."""
    found = []

    def walk(start, node, path, seen):
        for n in sorted(edges[node]):
            if n == start:
                found.append(path[:])
            elif n > start and n not in seen:
                walk(start, n, path + [n], seen | {n})

    for s in sorted(edges):
        walk(s, s, [s], {s})
    return found


def test_no_import_circles():
    edges = {m: {t: ln for t, ln in e.items() if t not in EXEMPT}
             for m, e in graph().items() if m not in EXEMPT}
    found = circles(edges)
    lines = []
    for c in found:
        lines.append(" -> ".join(c + [c[0]]))
        for a, b in zip(c, c[1:] + c[:1]):
            lines.append(f"    {_where(a, b)}: {a} imports {b}")
    assert not found, f"{len(found)} import circle(s):\n" + "\n".join(lines)


def test_every_module_has_a_layer():
    missing = sorted(m for m in modules() if m not in EXEMPT and layer(m) is None)
    assert not missing, f"modules with no layer in LAYERS (tests/test_architecture.py): {missing}"


def test_no_import_runs_up_a_layer():
    up = []
    for m, targets in sorted(graph().items()):
        if m in EXEMPT or layer(m) is None:
            continue
        for t in sorted(targets):
            if t not in EXEMPT and layer(t) is not None and layer(t) > layer(m):
                up.append(f"{_where(m, t)}: {m} (layer {layer(m)}) imports {t} (layer {layer(t)})")
    assert not up, f"{len(up)} import(s) run up a layer:\n" + "\n".join(up)


def test_no_library_module_imports_a_demo():
    bad = [f"{_where(m, t)}: {m} imports {t}"
           for m, targets in sorted(graph().items())
           if not (m == DEMOS or m.startswith(DEMOS + "."))
           for t in sorted(targets) if t == DEMOS or t.startswith(DEMOS + ".")]
    assert not bad, "library modules import the demos (entry points are python -m " \
                    f"{DEMOS}.<name>):\n" + "\n".join(bad)


# --- sizes and private names ---------------------------------------------------------------

def test_every_module_is_at_most_400_lines():
    over = sorted(((len(p.read_text(encoding="utf-8").splitlines()), _rel(p))
                   for p in modules().values()), reverse=True)
    over = [f"{path}: {n} lines" for n, path in over if n > MAX_LINES]
    assert not over, f"{len(over)} module(s) over {MAX_LINES} lines (two topics each?):\n" + \
        "\n".join(over)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses() -> list[str]:
    """``from .x import _y`` and ``x._y`` (x an llmtrain module bound by an import) across
    modules of the package; within one module anything goes."""
    mods, bad = modules(), []
    for m, p in sorted(mods.items()):
        if m in EXEMPT:
            continue
        bound: dict[str, str] = {}  # local name -> the llmtrain module it is bound to
        for target, name, local, line in imports_of(m, p, with_alias=True):
            if target in EXEMPT:
                continue
            if name is not None and _private(name):
                bad.append(f"{_rel(p)}:{line}: from {target} import {name}")
            elif name is None and local and target in mods:
                bound[local] = target
        for node in ast.walk(tree(p)):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and bound.get(node.value.id, m) != m and _private(node.attr)):
                bad.append(f"{_rel(p)}:{node.lineno}: {node.value.id}.{node.attr} "
                           f"({bound[node.value.id]}'s private name)")
    return sorted(set(bad))


def test_no_private_name_is_used_across_modules():
    bad = private_uses()
    assert not bad, (f"{len(bad)} private name(s) of one llmtrain module used by another "
                     "(make it public, or pass it through a constructor argument):\n"
                     + "\n".join(bad))


# --- old import paths ----------------------------------------------------------------------

def _python_sources() -> dict[Path, str]:
    """Every Python file of lib/, tests/, scripts/ and the notebooks (module name for lib)."""
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        out[p] = _module_name(p)
    for folder in ("tests", "scripts"):
        for p in sorted((ROOT / folder).rglob("*.py")):
            out[p] = f"{folder}.{p.stem}"
    for p in sorted((ROOT / "notebooks").rglob("*.py")):
        if ".ipynb_checkpoints" not in p.parts:
            out[p] = f"notebooks.{p.stem}"
    out.pop(Path(__file__).resolve(), None)
    out.pop(PKG / "_renamed.py", None)
    return out


def _parse_notebook_source(text: str, path: Path) -> ast.Module:
    # jupytext percent files may hold IPython lines (%magic, !shell): comment them out
    lines = [("# " + ln) if ln.lstrip().startswith(("%", "!")) else ln for ln in text.splitlines()]
    return ast.parse("\n".join(lines), filename=str(path))


def old_path_uses() -> list[str]:
    old, mods, bad = OLD_NAMES(), modules(), []
    for p, name in _python_sources().items():
        try:
            t = tree(p) if p.is_relative_to(PKG) else _parse_notebook_source(
                p.read_text(encoding="utf-8"), p)
        except SyntaxError as e:
            bad.append(f"{_rel(p)}:{e.lineno}: cannot be parsed ({e.msg})")
            continue
        fake = Path("__init__.py") if p.name == "__init__.py" else p
        skip = _type_checking_nodes(t)
        for node in ast.walk(t):
            if id(node) in skip or not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            if isinstance(node, ast.Import):
                hits = [a.name for a in node.names if _under_old(a.name, old)]
            else:
                base = node.module or ""
                if node.level:
                    pkg = _package_of(name, fake)
                    base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
                hits = [base] if _under_old(base, old) else [
                    f"{base}.{a.name}" for a in node.names
                    if f"{base}.{a.name}" in old and f"{base}.{a.name}" not in mods]
            bad += [f"{_rel(p)}:{node.lineno}: {h} (now {old[_old_root(h, old)][0]})" for h in hits]
    return sorted(set(bad))


def _old_root(name: str, old) -> str | None:
    while name not in old and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in old else None


def _under_old(name: str, old) -> bool:
    return _old_root(name, old) is not None


def test_nothing_uses_an_old_import_path():
    bad = old_path_uses()
    assert not bad, (f"{len(bad)} import(s) of an old path (llmtrain._renamed.OLD_NAMES; import "
                     "the new one):\n" + "\n".join(bad))


@pytest.mark.parametrize("old", sorted(OLD_NAMES()))
def test_old_import_paths_still_work(old):
    """Each old module path imports (for one release) and gives one of its new home's public
    names, the very same object; ``from llmtrain import <old>`` too."""
    module = importlib.import_module(old)
    home = importlib.import_module(OLD_NAMES()[old][0])
    public = getattr(home, "__all__", None) or [n for n in vars(home) if not n.startswith("_")]
    attr = sorted(public)[0]
    assert getattr(module, attr) is getattr(home, attr), f"{old}.{attr}"
    parent, _, leaf = old.rpartition(".")
    assert getattr(importlib.import_module(parent), leaf).__name__ == old


# --- torch blocked -------------------------------------------------------------------------

TORCH_BLOCKED = textwrap.dedent("""
    import importlib, json, pkgutil, sys, traceback
    sys.modules["torch"] = None   # `import torch` raises ImportError from here on
    report = {"imports": {}, "computations": {}}

    def attempt(kind, what, fn):
        try:
            fn()
        except BaseException as e:  # noqa: BLE001
            tb = [f for f in traceback.extract_tb(e.__traceback__) if "/llmtrain/" in f.filename]
            chain = " -> ".join(f"lib/{f.filename.split('/lib/')[-1]}:{f.lineno}" for f in tb)
            report[kind][what] = f"{type(e).__name__}: {e} (via {chain or '?'})"

    names = list(sys.argv[1:])
    attempt("imports", "llmtrain.cost", lambda: importlib.import_module("llmtrain.cost"))
    if "llmtrain.cost" in sys.modules:
        cost = sys.modules["llmtrain.cost"]
        names += sorted(m.name for m in pkgutil.walk_packages(cost.__path__, "llmtrain.cost."))
    for name in names:
        attempt("imports", name, lambda name=name: importlib.import_module(name))

    def compute():
        from llmtrain.model import shapes
        from llmtrain.cost import memory, plan, flops, params, pp_schedule, layout
        return dict(
            shape=lambda: shapes.resolve("llama-7b"),
            estimate=lambda: memory.estimate("llama-7b", layout.ParallelDims(dp=2), batch=1,
                                             seq=2048, zero=1).total,
            search=lambda: plan.search("llama-7b", "a100-80g", 8, 2**20, 2048)[0].step_time_s,
            training_flops=lambda: flops.training_flops(shapes.resolve("tiny"), 2, 64),
            count=lambda: params.count(shapes.resolve("llama-7b")),
            simulate=lambda: pp_schedule.simulate("1f1b", 4, 8),
            dims=lambda: layout.ParallelDims(dp=2, tp=2, pp=2).world_size,
        )

    steps = {}
    attempt("computations", "import llmtrain.cost's modules", lambda: steps.update(compute()))
    for what, fn in steps.items():
        attempt("computations", what, fn)
    print(json.dumps(report))
""")


@functools.cache
def torch_blocked_report() -> dict:
    out = subprocess.run([sys.executable, "-c", TORCH_BLOCKED, *TORCH_FREE_MODULES],
                         capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(LIB), "PATH": "/usr/bin:/bin"}, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cost_and_the_shapes_import_with_torch_blocked():
    failed = torch_blocked_report()["imports"]
    assert not failed, (f"{len(failed)} module(s) do not import without torch:\n"
                        + "\n".join(f"{m}: {e}" for m, e in sorted(failed.items())))


def test_cost_computes_with_torch_blocked():
    failed = torch_blocked_report()["computations"]
    assert not failed, ("with torch blocked these fail:\n"
                        + "\n".join(f"{m}: {e}" for m, e in sorted(failed.items())))


# --- docstrings name their source ----------------------------------------------------------

# What counts as naming a source: a paper (arXiv, a section, table, equation, figure, appendix,
# algorithm), a URL, the slides or the chapter, a repository's file, a measurement (a test, a
# "measured"), an implementation it reproduces (Megatron-LM, DeepSpeed, PyTorch's, a
# datasheet), or a key or alias of llmtrain.sources' registry ("Narayanan et al. 2021") or its
# first author's name. A docstring that only restates what the function returns names none.
SOURCE_MARKERS = re.compile(
    r"arXiv|§|\bTable\b|\bEq\.?|\bFig\.?|\bAppendix\b|\bApp\.|\bAlgorithm\b|https?://|"
    r"\bslides?'?\b|\bchapter\b|tests/|\btest_\w+|[Mm]easured|\bet al\.|\.py\b|"
    r"Megatron|DeepSpeed|PyTorch|\btorch\.|FSDP|NeMo|LLMBox|llm-foundry|torchtitan|"
    r"transformers|datasheet|bitsandbytes|torchao|galore-torch|lomo-optim")


@functools.cache
def _source_names() -> tuple[str, ...]:
    """The keys and aliases of ``llmtrain.sources.SOURCES``, read without importing it."""
    for node in tree(PKG / "sources.py").body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "SOURCES":
            names = []
            for call in node.value.elts:
                args = [a for a in call.args if isinstance(a, ast.Constant)]
                names.append(args[0].value)
                if len(call.args) > 5 and isinstance(call.args[5], ast.Tuple):
                    names += [e.value for e in call.args[5].elts if isinstance(e, ast.Constant)]
                names += [e.value for k in call.keywords if k.arg == "aliases"
                          for e in getattr(k.value, "elts", []) if isinstance(e, ast.Constant)]
            return tuple(n for n in names if isinstance(n, str))
    raise AssertionError("llmtrain/sources.py defines no SOURCES")


def _names_a_source(doc: str) -> bool:
    if SOURCE_MARKERS.search(doc):
        return True
    authors = {n.split(" et al")[0].split(",")[0].split(" ")[0] for n in _source_names()}
    return any(n in doc for n in _source_names()) or any(
        re.search(rf"\b{re.escape(a)}\b", doc) for a in authors if len(a) > 3)


def public_definitions(module: str) -> list[tuple[str, ast.AST]]:
    """The module's public functions and classes: those of ``__all__`` if it has one (defined
    here), else those whose names do not start with an underscore."""
    t = tree(modules()[module])
    defs = {n.name: n for n in t.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    listed = None
    for node in t.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            if isinstance(target, ast.Name) and target.id == "__all__":
                listed = ast.literal_eval(node.value)
    names = listed if listed is not None else [n for n in defs if not n.startswith("_")]
    return [(n, defs[n]) for n in names if n in defs]


def _is_record(node: ast.AST) -> bool:
    """A class that only holds data (a NamedTuple, or a class with no methods): no formula."""
    if not isinstance(node, ast.ClassDef):
        return False
    bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
    return "NamedTuple" in bases or not any(
        isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in node.body)


def undocumented_sources() -> list[str]:
    """Public functions and classes of llmtrain.cost (records exempt) whose docstring names
    no source and no measuring test."""
    bad = []
    for m in sorted(modules()):
        if not (m == "llmtrain.cost" or m.startswith("llmtrain.cost.")):
            continue
        for name, node in public_definitions(m):
            if _is_record(node):
                continue
            doc = ast.get_docstring(node) or ""
            if not _names_a_source(doc):
                what = "no docstring" if not doc else f"{doc.splitlines()[0][:70]!r}"
                bad.append(f"{_rel(modules()[m])}:{node.lineno}: {m}.{name}: {what}")
    return bad


def test_every_cost_function_names_its_source_or_test():
    bad = undocumented_sources()
    assert not bad, (f"{len(bad)} public function(s)/class(es) of llmtrain.cost whose docstring "
                     "names no source (paper, §, Table, Eq., the slides, a registered source) and "
                     "no test that measures it (tests/...):\n" + "\n".join(bad))


# --- one registry per kind -----------------------------------------------------------------

def _assigned_names(module: str) -> set[str]:
    t = tree(modules()[module])
    out = set()
    for node in t.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        out |= {x.id for x in targets if isinstance(x, ast.Name)}
    return out


def test_one_registry_of_models():
    assert "MODELS" not in _assigned_names("llmtrain.cost.plan"), \
        "lib/llmtrain/cost/plan.py defines MODELS beside model.shapes.PRESETS: one registry"
    from llmtrain.cost import memory
    from llmtrain.model import shapes

    bloom = shapes.resolve("bloom-176b")
    assert isinstance(bloom, shapes.ModelShape)
    assert shapes.resolve(bloom) is bloom
    assert memory.estimate("bloom-176b", 64, zero=1).total > 0


def test_check_resolves_no_shapes():
    assert "shape" not in {n.name for n in tree(PKG / "check.py").body
                           if isinstance(n, ast.FunctionDef)}, \
        "lib/llmtrain/check.py defines shape(): shapes are resolved once, by shapes.resolve"


def _optimizer_choices() -> set:
    from llmtrain import cli

    build = getattr(cli, "build_parser", None) or getattr(cli, "_build_parser")
    found = []

    def walk(parser):
        for action in parser._actions:
            if "--optimizer" in action.option_strings:
                found.append(action.choices)
            for sub in (getattr(action, "choices", None) or {}).values() if isinstance(
                    getattr(action, "choices", None), dict) else ():
                walk(sub)

    walk(build())
    assert found, "the CLI has no --optimizer"
    return found


def test_the_cli_offers_the_optimizer_registry():
    from llmtrain.cost import methods

    assert hasattr(methods, "OPTIMIZERS"), "llmtrain.cost.methods has no OPTIMIZERS registry"
    for choices in _optimizer_choices():
        assert choices is not None and set(choices) == set(methods.OPTIMIZERS), (
            f"llmtrain/cli.py: --optimizer choices {choices} != cost.methods.OPTIMIZERS "
            f"{sorted(methods.OPTIMIZERS)}")


# --- the checker itself, on small made-up inputs -------------------------------------------

def test_the_circle_finder_lists_each_elementary_circle_once():
    g = {"a": {"b": 1}, "b": {"c": 1, "a": 2}, "c": {"a": 1}, "d": {"a": 1}}
    assert sorted(circles(g)) == [["a", "b"], ["a", "b", "c"]]
    assert circles({"a": {"b": 1}, "b": {}}) == []


def test_imports_are_resolved_relative_to_the_file_and_type_checking_is_left_out(tmp_path):
    pkg = tmp_path / "llmtrain" / "cost"
    pkg.mkdir(parents=True)
    path = pkg / "memory.py"
    path.write_text(textwrap.dedent("""
        from typing import TYPE_CHECKING
        from . import params
        from ..model.shapes import resolve, _private
        from .. import check as c
        import llmtrain.units
        if TYPE_CHECKING:
            from ..parallel import launch
        def late():
            from ..measure import tracker
    """))
    mods = {m: Path() for m in ("llmtrain.cost.params", "llmtrain.model.shapes", "llmtrain.check",
                                "llmtrain.units", "llmtrain.measure.tracker", "llmtrain.parallel.launch")}
    found = sorted(imports_of("llmtrain.cost.memory", path, mods))
    assert found == [("llmtrain.check", None, 5), ("llmtrain.cost.params", None, 3),
                     ("llmtrain.measure.tracker", None, 10), ("llmtrain.model.shapes", "_private", 4),
                     ("llmtrain.model.shapes", "resolve", 4), ("llmtrain.units", None, 6)]
    assert layer("llmtrain.cost.memory") == 2 and layer("llmtrain.widgets.explorer") == 5


# Removed on purpose, with what replaces it (issue 24): check knows no domain names any more.
REMOVED = {("llmtrain.check", "shape"): "llmtrain.model.shapes.resolve(value, name)"}


def test_every_public_name_before_the_wings_is_still_reachable():
    """Every public name of every module as of main 0673540 (before the wings; written once to
    tests/data/old_public_names.json by importing each module) still resolves at its old path,
    through ``llmtrain._renamed`` where the module moved: old code keeps running for one release.
    The exceptions are listed in REMOVED with their replacement."""
    import json

    old = json.loads((ROOT / "tests" / "data" / "old_public_names.json").read_text())
    assert len(old) == 48 and sum(map(len, old.values())) == 465
    missing = [f"{module}.{name}" for module, names in old.items() for name in names
               if (module, name) not in REMOVED
               and not hasattr(importlib.import_module(module), name)]
    assert not missing, f"{len(missing)} old public name(s) no longer reachable: {missing}"


def test_a_star_import_of_an_old_path_gives_its_old_names():
    """``from llmtrain.memory import *`` (an old path) binds every public name the module had
    before the wings, from whichever new home now holds it."""
    import json

    old = json.loads((ROOT / "tests" / "data" / "old_public_names.json").read_text())
    for module in OLD_NAMES():
        namespace: dict = {}
        exec(f"from {module} import *", namespace)  # noqa: S102
        missing = [n for n in old[module] if (module, n) not in REMOVED and n not in namespace]
        assert not missing, f"from {module} import * misses {missing}"

