"""The Chinese edition (scripts/zh.py): every notebooks/zh/NN.md in step with its English
notebook, cell by cell; every notebooks/zh/NN.ipynb the English one's code and outputs with that
Chinese markdown; the Chinese prose's numbers printed by the outputs; its links resolve."""

from __future__ import annotations

import re

import nbformat
import pytest

import zh  # scripts/zh.py
from test_prose import _prose, output_numbers, output_text, unsourced_numbers, _slides_text

STEMS = zh.stems()
CJK = re.compile(r"[\u3400-\u9fff]")
LINK = re.compile(r"\]\((?!https?://|#)([^)\s]+)\)")


def test_every_notebook_has_its_chinese_edition():
    """New notebooks ship both (docs/DEVELOPING.md): a notebook without its notebooks/zh/*.md
    fails here (python scripts/zh.py stub NN starts one)."""
    import notebooks as nbtool  # scripts/notebooks.py

    assert STEMS == [p.stem for p in nbtool.pairs()]


@pytest.mark.parametrize("stem", STEMS)
def test_in_step_with_the_english(stem):
    """A change to an English markdown cell without its Chinese fails here, naming the cell."""
    problems = zh.out_of_sync(stem)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("stem", STEMS)
def test_the_notebook_is_built_from_both(stem):
    en = zh.english(stem)
    cn = nbformat.read(zh.ZH / f"{stem}.ipynb", as_version=4)
    blocks = {i: t for i, _, t in zh.parse((zh.ZH / f"{stem}.md").read_text(encoding="utf-8"))}
    assert len(cn.cells) == len(en.cells)
    for i, (a, b) in enumerate(zip(en.cells, cn.cells)):
        assert a.cell_type == b.cell_type, (stem, i)
        if a.cell_type == "code":  # the English notebook's code and outputs, identical
            assert (a.source, a.get("outputs")) == (b.source, b.get("outputs")), (stem, i)
        else:
            assert b.source == zh.badge_zh(blocks[i], stem), \
                f"{stem} cell {i}: run python scripts/zh.py build {stem[:2]}"


@pytest.mark.parametrize("stem", STEMS)
def test_every_markdown_cell_is_chinese(stem):
    for i, _, text in zh.parse((zh.ZH / f"{stem}.md").read_text(encoding="utf-8")):
        assert CJK.search(_prose(text)), f"{stem} cell {i} has no Chinese"


@pytest.mark.parametrize("stem", STEMS)
def test_numbers_come_from_the_outputs(stem):
    outputs = output_numbers(output_text(zh.english(stem)))
    slides = _slides_text()
    bad = [f"cell {i}: {n}" for i, _, text in zh.parse(
        (zh.ZH / f"{stem}.md").read_text(encoding="utf-8"))
        for n in unsourced_numbers(text, outputs, slides)]
    assert not bad, f"{stem}: numbers the outputs do not print:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("stem", STEMS)
def test_links_resolve(stem):
    text = (zh.ZH / f"{stem}.md").read_text(encoding="utf-8")
    for target in LINK.findall(text):
        path = (zh.ZH / target.split("#")[0]).resolve()
        assert path.exists(), f"{stem}: link {target} does not resolve from notebooks/zh/"


def test_a_changed_english_cell_is_named(tmp_path, monkeypatch):
    """The oracle: change one English markdown cell in a copy; out_of_sync names that cell."""
    stem = STEMS[0]
    en = zh.english(stem)
    i = next(i for i, c in enumerate(en.cells) if c.cell_type == "markdown")
    en.cells[i].source += "\nOne more English sentence."
    (tmp_path / "zh").mkdir()
    nbformat.write(en, tmp_path / f"{stem}.ipynb")
    (tmp_path / "zh" / f"{stem}.md").write_text(
        (zh.ZH / f"{stem}.md").read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(zh, "NOTEBOOKS", tmp_path)
    monkeypatch.setattr(zh, "ZH", tmp_path / "zh")
    problems = zh.out_of_sync(stem)
    assert len(problems) == 1 and problems[0].startswith(f"{stem} cell {i}: the English text")


def test_html_pages_link_each_other(tmp_path):
    """make run writes NN.html and NN.zh.html side by side, each linking the other, and the
    index links both."""
    import notebooks as nbtool  # scripts/notebooks.py

    stem = STEMS[0]
    out = tmp_path / f"{stem}.html"
    assert nbtool.to_html_both(zh.NOTEBOOKS / f"{stem}.ipynb", out, stem)
    en, cn = out.read_text(encoding="utf-8"), (tmp_path / f"{stem}.zh.html").read_text(encoding="utf-8")
    assert f'<a href="{stem}.zh.html">中文版</a>' in en and f'<a href="{stem}.html">English</a>' in cn
    title = next(c.source for c in zh.english(stem).cells if c.cell_type == "markdown")
    assert CJK.search(cn)
    row = {"stem": stem, "title": title.splitlines()[0], "status": "ok", "seconds": 1.0,
           "slowest": 0.5, "slowest_cell": 1, "error": ""}
    nbtool.write_index([row], tmp_path / "index.html", "cpu")
    index = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert f'<a href="{stem}.zh.html">中文版</a>' in index


def test_readme_lists_every_chinese_notebook():
    """README.md's table of the Chinese notebooks, with their Colab badges, is the current one
    (python -c "import zh; print(zh.readme_table())" from scripts/ writes it)."""
    readme = (zh.ROOT / "README.md").read_text(encoding="utf-8")
    assert zh.readme_table() in readme
