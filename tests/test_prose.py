"""The prose keeps the project's promises: its numbers come from outputs, its citations from
sources whose places were checked, and its errata correct what the slides actually say.

1. Every number of three or more significant digits in a notebook's markdown appears in that
   notebook's stored outputs (a printed value, a table, a markdown output made by code) or in the
   slides (a quote). Exempt: years, arXiv numbers, link targets, code spans, names glued to letters
   (A100, 1F1B, fp32). A decimal in prose may be an output's decimal rounded to fewer places.
2. Every section, table, figure, equation or algorithm number cited next to a paper (an author
   and year, an arXiv number, or a registered name) names a source of ``llmtrain.sources`` and a
   place that source lists as checked.
3. Every Erratum box is headed ``勘误 · Erratum``, quotes the slides word for word (课件原文：“…”),
   and gives the corrected statement in Chinese (**更正：**…). A remark on something the slides
   do not get wrong is a note, not an erratum.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal

import nbformat
import pytest

import notebooks as nbtool  # scripts/notebooks.py
from llmtrain import sources

STEMS = [p.stem for p in nbtool.pairs()]
# The slides' text (a copy of the chapter's slides, shared/chapter/): what a quote must match.
SLIDES = nbtool.ROOT / "tests" / "data" / "slides-3.3-training-techniques.md"


def _slides_text() -> str:
    return SLIDES.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# 1. Numbers

NUMBER = re.compile(r"(?<![\w.\-/#^_])\d[\d,\u2009\u202f]*(?:\.\d+)?(?![\w])")
SEPARATORS = re.compile(r"[,\u2009\u202f]")


def _notebook(stem):
    return nbformat.read(nbtool.NOTEBOOKS / f"{stem}.ipynb", as_version=4)


def output_text(nb) -> str:
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            if "text" in o:
                parts.append(o["text"])
            for mime in ("text/plain", "text/markdown", "text/html", "text/latex"):
                if mime in o.get("data", {}):
                    parts.append(o["data"][mime])
    return "\n".join(parts)


def _prose(text: str) -> str:
    """Markdown without what is not prose: code, link targets, addresses, arXiv numbers."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"<[^>]+>", " ", text)
    text = re.sub(r"https?://\S+", " ", text)
    text = re.sub(r"\b\d{4}\.\d{4,5}(v\d+)?\b", " ", text)
    return text


def _significant_digits(token: str) -> int:
    return len(SEPARATORS.sub("", token).replace(".", "").lstrip("0"))


def output_numbers(text: str) -> set[str]:
    """Every number printed, without separators, and each decimal rounded to fewer places."""
    found = set()
    for m in re.finditer(r"\d[\d,\u2009\u202f]*(?:\.\d+)?", text):
        n = SEPARATORS.sub("", m.group(0))
        found.add(n)
        if "." in n:
            whole, frac = n.split(".")
            found.add(whole)  # a prose integer may quote the whole part
            d = Decimal(n)
            for places in range(0, len(frac)):
                q = Decimal(1).scaleb(-places)
                for mode in (ROUND_HALF_UP, ROUND_HALF_EVEN):
                    found.add(str(d.quantize(q, rounding=mode)))
    return found


def unsourced_numbers(markdown: str, outputs: set[str], slides: str) -> list[str]:
    slides_plain = SEPARATORS.sub("", slides)
    missing = []
    for m in NUMBER.finditer(_prose(markdown)):
        token = m.group(0).rstrip(",")
        if _significant_digits(token) < 3:
            continue
        n = SEPARATORS.sub("", token)
        if re.fullmatch(r"(19[5-9]\d|20[0-3]\d)", n):  # a year
            continue
        if n in outputs or re.search(rf"(?<![\d.]){re.escape(n)}(?![\d])", slides_plain):
            continue
        missing.append(token)
    return missing


def test_number_check_finds_a_number_that_no_output_prints():
    outs = output_numbers("step time 0.3921 s, 6,738,415,616 parameters, 12.5%")
    text = "We measured 0.39 s for 6738415616 params (12.5 %) in 2021, not 0.007812; see arXiv 2104.04473."
    assert unsourced_numbers(text, outs, slides="") == ["0.007812"]
    assert unsourced_numbers("A100 and 1F1B, `12345`, [x](a/12345.png)", set(), "") == []
    assert unsourced_numbers("the slides' 112GB", set(), "例如 7B 模型需要 16 * 7B = 112GB 显存") == []


@pytest.mark.parametrize("stem", STEMS)
def test_every_number_in_the_prose_comes_from_an_output(stem):
    nb = _notebook(stem)
    outs = output_numbers(output_text(nb))
    slides = _slides_text()
    bad = []
    for i, c in enumerate(nb.cells):
        if c.cell_type == "markdown":
            bad += [f"cell {i}: {n}" for n in unsourced_numbers(c.source, outs, slides)]
    assert not bad, (f"{stem}: numbers in the markdown that no output of the notebook prints "
                     "(print them in a cell, or drop them):\n  " + "\n  ".join(bad))


# ---------------------------------------------------------------------------------------------
# 2. Citations

PLACE = re.compile(r"(?:§\s?(\d+(?:\.\d+)*)|\bSection\s(\d+(?:\.\d+)*)|\bTable\s(\d+(?:\.\d+)*)|\bEq(?:uation|\.)\s?\(?(\d+)"
                   r"|\bFig(?:ure|\.)\s?(\d+)|\bAlgorithm\s(\d+)|\bAppendix\s([A-Z](?:\.\d+)*))")
KINDS = ("§", "§", "Table ", "Eq. ", "Fig. ", "Algorithm ", "Appendix ")
AUTHOR_YEAR = re.compile(r"[A-Z][\w'-]+(?: et al\.?| and [A-Z][\w'-]+|, [A-Z][\w'-]+, [A-Z][\w'-]+),? (?:\w+ )?(19|20)\d\d")
INTERNAL = re.compile(r"\bnotebook\s+\d\d\b|\bthis notebook\b|本笔记本|笔记本\s*\d\d")
SENTENCE_END = re.compile(r"\n\n|。|(?<!\bal)(?<!\be\.g)(?<!\bi\.e)(?<!\bEq)(?<!\bFig)(?<!\bvs)\.\s")
# How far back a place looks for the source it belongs to: the same sentence or parenthesis.
WINDOW = 160


def _place(m) -> str:
    i = next(k for k, g in enumerate(m.groups()) if g)
    return KINDS[i] + m.group(i + 1)


def _owner(before: str, names: dict) -> tuple[str, object]:
    """The nearest source named in ``before`` (text since the sentence began), if any."""
    best = (-1, None, None)
    for name, src in names.items():
        j = before.rfind(name)
        if j > best[0]:
            best = (j + len(name), name, src)
    for m in AUTHOR_YEAR.finditer(before):
        if m.end() > best[0] and m.group(0) not in names:
            best = (m.end(), m.group(0), None)
    for m in re.finditer(r"arXiv \d{4}\.\d{4,5}", before):
        if m.end() > best[0] and m.group(0) not in names:
            best = (m.end(), m.group(0), None)
    for m in INTERNAL.finditer(before):
        if m.end() >= best[0]:
            best = (m.end(), "internal", "internal")
    return best[1], best[2]


def citations(markdown: str, names: dict):
    """(place, name, source or None) for every place cited next to a source in ``markdown``;
    source is "internal" for a notebook's own section."""
    text = re.sub(r"`[^`\n]*`", " ", markdown)
    for m in PLACE.finditer(text):
        start = max(0, m.start() - WINDOW)
        before = text[start:m.start()]
        breaks = [b.end() for b in SENTENCE_END.finditer(before)]
        before = before[breaks[-1]:] if breaks else before
        name, src = _owner(before, names)
        if name is None or src == "internal":
            continue
        yield _place(m), name, src


def bad_citations(markdown: str) -> list[str]:
    names = sources.mentions()
    bad = []
    for place, name, src in citations(markdown, names):
        if src is None:
            bad.append(f"{place} of {name!r}: source not in llmtrain.sources")
        elif place not in src.checked:
            bad.append(f"{place} of {src.key!r}: place not checked (llmtrain.sources lists {src.checked})")
    return bad


def test_citation_check_finds_an_unchecked_place_and_an_unknown_source():
    assert bad_citations("1F1B (Narayanan et al. 2021, §2.2.1) and their Table 1.") == []
    assert bad_citations("Its bubble (Narayanan et al. 2021, §2.1).") == [
        "§2.1 of 'Narayanan et al. 2021': place not checked (llmtrain.sources lists "
        f"{sources.find('Narayanan et al. 2021').checked})"]
    assert bad_citations("as Smith et al. 2020 show in Table 3") == [
        "Table 3 of 'Smith et al. 2020': source not in llmtrain.sources"]
    assert bad_citations("see §3 above, and notebook 05 §2") == []
    assert bad_citations("as Smith et al. 2020 show in Table 2.1") == [
        "Table 2.1 of 'Smith et al. 2020': source not in llmtrain.sources"]


def test_every_registered_source_is_complete():
    keys = [s.key for s in sources.SOURCES]
    assert len(keys) == len(set(keys))
    for s in sources.SOURCES:
        assert s.title and s.where and s.read, s.key
        for place in s.checked:
            assert re.fullmatch(r"(§\d+(\.\d+)*|Table \d+(\.\d+)*|(Eq\.|Fig\.|Algorithm) \d+|Appendix [A-Z](\.\d+)*)",
                                place), f"{s.key}: place {place!r} not in the canonical form"


@pytest.mark.parametrize("stem", STEMS)
def test_every_cited_place_was_checked(stem):
    nb = _notebook(stem)
    bad = [f"cell {i}: {b}" for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
           for b in bad_citations(c.source)]
    assert not bad, f"{stem}: citations of places not checked in their source:\n  " + "\n  ".join(bad)


# ---------------------------------------------------------------------------------------------
# 3. Errata

ERRATUM_HEAD = re.compile(r"^> \*\*勘误 · Erratum — .+\*\*", re.M)
QUOTE = re.compile(r"课件原文[：:]\s*“([^”]+)”")


def _plain(text: str) -> str:
    return re.sub(r"[\s$\\{}]|\*\*", "", text)


def erratum_problems(markdown: str, slides: str) -> list[str]:
    if "Erratum" not in markdown and "勘误" not in markdown:
        return []
    if not re.search(r"^> \*\*[^*\n]*(Erratum|勘误)", markdown, re.M):
        return []  # prose or a 导读 that mentions errata, not a box
    problems = []
    if not ERRATUM_HEAD.search(markdown):
        problems.append("the box is not headed '> **勘误 · Erratum — title.**'")
    quotes = QUOTE.findall(markdown)
    if not quotes:
        problems.append("no quote of the slides (课件原文：“…”)")
    for q in quotes:
        if _plain(q) not in _plain(slides):
            problems.append(f"quote not in the slides word for word: {q!r}")
    if not re.search(r"\*\*更正[：:]\*\*\s*\S", markdown) or not re.search(
            r"\*\*更正[：:]\*\*[^\n]*[\u4e00-\u9fff]", markdown):
        problems.append("no Chinese corrected statement (**更正：**…)")
    return problems


def test_erratum_check_wants_a_slide_quote_and_a_chinese_correction():
    slides = "流水线并行 需要与梯度累积联合使用，以达到流水线效果"
    good = "> **勘误 · Erratum — x.**\n> 课件原文：“需要与梯度累积联合使用”\n> **更正：** 这样说。"
    assert erratum_problems(good, slides) == []
    bad = "> **Erratum — x.** The slides say \"以达到最好效果\"."
    assert len(erratum_problems(bad, slides)) == 3
    assert erratum_problems("> **导读**\n> 最后是一处勘误。", slides) == []


@pytest.mark.parametrize("stem", STEMS)
def test_errata_quote_the_slides_and_correct_them_in_chinese(stem):
    nb = _notebook(stem)
    slides = _slides_text()
    bad = [f"cell {i}: {p}" for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
           for p in erratum_problems(c.source, slides)]
    assert not bad, f"{stem}: Erratum boxes:\n  " + "\n  ".join(bad)
