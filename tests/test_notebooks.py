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
    shown = [o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for c in code for o in c.outputs]
    reprs = [s for s in shown if re.search(r"<[\w.]+ (object )?at 0x[0-9a-f]+>", s)]
    assert not reprs, f"{stem}: an object's repr with its address is stored (end the line with ';'): {reprs[:2]}"


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


# ---------------------------------------------------------------------------------------------
# Links, 导读, 要点 and bilingual headings (the conventions every notebook follows; README)

CJK = re.compile(r"[\u3400-\u9fff]")
LATIN = re.compile(r"[A-Za-z]")
LINK_RE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HREF_RE = re.compile(r"""\b(?:href|src)\s*=\s*["']([^"']+)["']""")


def _markdown_texts(stem):
    """(where, text) of every markdown cell of the .py and the .ipynb, and of every markdown or
    HTML output the .ipynb stores (what a reader sees rendered)."""
    py = jupytext.read(nbtool.NOTEBOOKS / f"{stem}.py")
    ipynb = nbformat.read(nbtool.NOTEBOOKS / f"{stem}.ipynb", as_version=4)
    for kind, nb in (("py", py), ("ipynb", ipynb)):
        for i, c in enumerate(nb.cells):
            if c.cell_type == "markdown":
                yield f"{stem}.{kind} cell {i}", c.source
    for i, c in enumerate(ipynb.cells):
        for o in c.get("outputs", []):
            for mime in ("text/markdown", "text/html"):
                if mime in o.get("data", {}):
                    yield f"{stem}.ipynb cell {i} output", o["data"][mime]


def _without_code(text):
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def relative_links(text):
    text = _without_code(text)
    for target in LINK_RE.findall(text) + HREF_RE.findall(text):
        if re.match(r"^([a-z][a-z0-9+.-]*:|//|#)", target, re.I):
            continue  # web addresses, data: URIs, anchors in the same page
        yield target


@pytest.mark.parametrize("stem", STEMS)
def test_relative_links_resolve(stem):
    root = nbtool.ROOT.resolve()
    broken = []
    for where, text in _markdown_texts(stem):
        for target in relative_links(text):
            path = (nbtool.NOTEBOOKS / target.split("#")[0].split("?")[0]).resolve()
            if not path.exists() or not path.is_relative_to(root):
                broken.append(f"{where}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_link_check_finds_a_broken_link():
    assert list(relative_links("see [02](02_batch_size.ipynb), [web](https://x.org), `[no](a.md)`")) \
        == ["02_batch_size.ipynb"]


def _headings(text):
    return [line for line in _without_code(text).splitlines() if re.match(r"#{2,3} ", line)]


@pytest.mark.parametrize("stem", STEMS)
def test_guide_comes_second_in_chinese(stem):
    nb = jupytext.read(nbtool.NOTEBOOKS / f"{stem}.py")
    cell = nb.cells[1]
    lines = cell.source.strip().splitlines()
    assert cell.cell_type == "markdown" and lines[0].strip() == "> **导读**", \
        f"{stem}: the second cell must be the 导读, first line '> **导读**'"
    assert all(line.startswith(">") for line in lines), f"{stem}: every line of the 导读 is quoted ('> ')"
    body = " ".join(line.lstrip("> ") for line in lines[1:])
    sentences = len(re.findall(r"[。！？]", body))
    assert CJK.search(body) and 3 <= sentences <= 5, f"{stem}: 导读 has {sentences} Chinese sentences, not 3–5"


@pytest.mark.parametrize("stem", STEMS)
def test_key_points_close_the_notebook_in_chinese(stem):
    nb = jupytext.read(nbtool.NOTEBOOKS / f"{stem}.py")
    cell = nb.cells[-1]
    lines = cell.source.strip().splitlines()
    assert cell.cell_type == "markdown" and lines[0].strip() == "## 要点 · Key points", \
        f"{stem}: the last cell must be '## 要点 · Key points'"
    bullets = [line for line in lines[1:] if line.startswith("- ")]
    assert bullets and all(CJK.search(b) for b in bullets), f"{stem}: 要点 is a list of Chinese bullets"


@pytest.mark.parametrize("stem", STEMS)
def test_section_headings_are_bilingual(stem):
    nb = jupytext.read(nbtool.NOTEBOOKS / f"{stem}.py")
    bad = [h for c in nb.cells if c.cell_type == "markdown" for h in _headings(c.source)
           if not (CJK.search(h) and LATIN.search(h))]
    assert not bad, f"{stem}: headings need English and 中文: {bad}"
