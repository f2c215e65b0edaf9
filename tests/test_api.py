"""The API page (scripts/api.py, build/html/api.html): generated from the source, it lists every
public name that importing the package finds, each name it lists exists, and every notebook
section it links exists, under the anchor nbconvert gives it."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import nbformat
import pytest
from nbconvert import HTMLExporter

import api  # scripts/api.py
import notebooks as nbtool  # scripts/notebooks.py

ROOT = Path(__file__).resolve().parents[1]

CONTENT = api.collect()
LISTED = {(m, e.name) for m, rows in CONTENT.items() for e in rows}


def _introspected() -> dict[str, list[str]]:
    """module -> its public names, as the imported module says: ``__all__``, else the functions
    and classes defined in it whose names do not start with an underscore."""
    out = {}
    for name in api.modules():
        module = importlib.import_module(name)
        if hasattr(module, "__all__"):
            out[name] = list(module.__all__)
        else:
            out[name] = [n for n, v in vars(module).items() if not n.startswith("_")
                         and (inspect.isfunction(v) or inspect.isclass(v))
                         and v.__module__ == name]
    return out


def test_every_public_module_is_on_the_page():
    found = {m.name for m in __import__("pkgutil").walk_packages(
        importlib.import_module("llmtrain").__path__, "llmtrain.")
        if not any(p.startswith("_") for p in m.name.split("."))}
    assert found - {"llmtrain"} <= set(api.modules()), found - set(api.modules())
    missing = [m for m in api.modules() if m not in CONTENT]
    assert not missing, f"public modules with no section on the API page: {missing}"


def test_the_page_lists_every_public_name():
    missing = []
    for module, names in _introspected().items():
        for n in names:
            obj = getattr(importlib.import_module(module), n, None)
            if obj is None and not hasattr(importlib.import_module(module), n):
                missing.append(f"{module}.{n} (in __all__, but the module has no such name)")
                continue
            if (module, n) in LISTED:
                continue
            # listed where it is defined: the same object under the same name elsewhere
            if not any(getattr(importlib.import_module(m), n, None) is obj
                       for m, listed_name in LISTED if listed_name == n):
                missing.append(f"{module}.{n}")
    assert not missing, f"{len(missing)} public name(s) missing from the API page: {missing}"


def test_every_listed_name_exists():
    absent = [f"{m}.{e.name}" for m, rows in CONTENT.items() for e in rows
              if not hasattr(importlib.import_module(m), e.name)]
    assert not absent, f"the API page lists names the package does not have: {absent}"


def test_a_re_export_points_to_its_home():
    for m, rows in CONTENT.items():
        for e in rows:
            if e.home and e.kind != "module":
                home, name = e.origin
                assert (home, name) in LISTED, f"{m}.{e.name} -> {home}.{name}"
                assert getattr(importlib.import_module(m), e.name) is getattr(
                    importlib.import_module(home), name)


def _headings(stem: str) -> set[str]:
    text = (api.NOTEBOOKS / f"{stem}.py").read_text(encoding="utf-8")
    return {m[2] for kind, _, lines in api.cells(text) if kind == "markdown"
            for line in lines if (m := api.HEADING.match(line))}


def test_every_listed_notebook_section_exists():
    uses = {(stem, section) for rows in CONTENT.values() for e in rows for stem, section, _ in e.uses}
    assert uses, "no notebook uses found"
    bad = [(stem, section) for stem, section in sorted(uses)
           if not (api.NOTEBOOKS / f"{stem}.py").is_file() or section not in _headings(stem)]
    assert not bad, f"sections the API page links that the notebooks do not have: {bad}"


def test_the_section_links_are_nbconverts_anchors():
    sections = sorted({section for rows in CONTENT.values() for e in rows
                       for _, section, _ in e.uses if section})
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("\n\n".join(f"## {s}" for s in sections))]
    body, _ = HTMLExporter().from_notebook_node(nb)
    ids = set(re.findall(r'<h2 id="([^"]*)"', body))
    assert [s for s in sections if api.anchor(s) not in ids] == []


@pytest.mark.parametrize("module, name, stem, shown", [
    ("llmtrain.widgets.schedule_explorer", "ScheduleExplorer", "03_lr_schedules", True),
    ("llmtrain.widgets.memory_calculator", "MemoryCalculator", "11_memory_estimation", True),
    ("llmtrain.cost.memory", "estimate", "11_memory_estimation", False),
])
def test_known_uses_are_found(module, name, stem, shown):
    """Through the notebooks' own imports (old paths, packages' re-exports): a widget that
    notebook shows with ``show(...)``, a function it calls."""
    entry = next(e for e in CONTENT[module] if e.name == name)
    hits = [u for u in entry.uses if u[0] == stem]
    assert hits and (any(u[2] for u in hits) if shown else True), entry.uses


def test_the_index_links_the_page(tmp_path: Path):
    out = api.write(tmp_path / "html" / "api.html")
    page = out.read_text(encoding="utf-8")
    assert page.count("<li id=") == len(LISTED)
    for m in CONTENT:
        assert f'<h3 id="{m}">' in page
    nbtool.write_index([], tmp_path / "html" / "index.html", "cpu", ["00_overview"])
    assert '<a href="api.html">API</a>' in (tmp_path / "html" / "index.html").read_text(encoding="utf-8")


def test_the_command_line_refuses_a_page_that_is_not_html(tmp_path):
    """``python scripts/api.py --help`` shows its usage (it once wrote the page to a file named
    "--help"); an OUT that is not .html is one line, exit 2; a good one is written."""
    import subprocess
    import sys

    script = [sys.executable, str(ROOT / "scripts" / "api.py")]
    ok = subprocess.run([*script, "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.startswith("usage: python scripts/api.py")
    assert list(tmp_path.iterdir()) == []
    bad = subprocess.run([*script, "page.txt"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.splitlines()[-1] == (
        "python scripts/api.py: error: out must be a path ending in .html, got 'page.txt'")
    good = subprocess.run([*script, str(tmp_path / "api.html")], capture_output=True, text=True,
                          timeout=120)
    assert good.returncode == 0 and (tmp_path / "api.html").read_text().startswith("<!doctype html>")

