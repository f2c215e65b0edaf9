"""Notebook machinery: pairs in sync, outputs fresh, headers canonical (nbval does the rest)."""

import re

import jupytext
import nbformat
import pytest

import notebooks as nbtool  # scripts/notebooks.py

PYS = nbtool.pairs()
STEMS = [p.stem for p in PYS]


def test_there_are_notebooks_and_every_ipynb_has_its_py():
    assert PYS, "no notebooks/NN_topic.py found"
    ipynbs = {p.stem for p in nbtool.NOTEBOOKS.glob("*.ipynb")}
    assert ipynbs == set(STEMS), "every notebook is a .py/.ipynb pair"


def _cells(nb):
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("stem", STEMS)
def test_pair_in_sync(stem):
    py = jupytext.read(nbtool.NOTEBOOKS / f"{stem}.py")
    ipynb = nbformat.read(nbtool.NOTEBOOKS / f"{stem}.ipynb", as_version=4)
    assert _cells(py) == _cells(ipynb), f"{stem}: .py and .ipynb differ; run `make notebooks`"


@pytest.mark.parametrize("stem", STEMS)
def test_outputs_fresh_and_clean(stem):
    nb = nbformat.read(nbtool.NOTEBOOKS / f"{stem}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{stem}: not executed top to bottom; run `make notebooks`"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{stem}: stored outputs contain an error"
    streams = [o.text for c in code for o in c.outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not any("Traceback" in s for s in streams)


@pytest.mark.parametrize("stem", STEMS)
def test_header(stem):
    nb = jupytext.read(nbtool.NOTEBOOKS / f"{stem}.py")
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    title = first.source.splitlines()[0]
    assert re.match(r"# .+ · .*[\u4e00-\u9fff]", title), f"{stem}: title needs English · 中文: {title!r}"
    assert nbtool.badge(stem) in first.source, f"{stem}: Colab badge missing or stale; run `make notebooks`"
    setup = next(c for c in nb.cells if c.cell_type == "code")
    assert set(setup.metadata.get("tags", [])) >= {"setup", "nbval-ignore-output"}
    assert setup.source == nbtool.setup_source(), f"{stem}: setup cell stale; run `make notebooks`"


def test_repository_address_lives_in_pyproject(root):
    url = nbtool.repo_url()
    assert url.startswith("https://github.com/")
    assert url.removeprefix("https://github.com/") in nbtool.badge("00_overview")
    assert f"git+{url}" in nbtool.setup_source()


def test_readme_lists_every_notebook(root):
    readme = (root / "README.md").read_text(encoding="utf-8")
    for stem in STEMS:
        assert f"notebooks/{stem}.ipynb" in readme, f"README.md does not list {stem}"
        assert nbtool.badge(stem) in readme, f"README.md: Colab badge of {stem} missing or stale"
    assert "make run" in readme and "make test" in readme
