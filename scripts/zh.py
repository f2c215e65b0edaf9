"""The Chinese edition of the notebooks (中文版), from one code source.

    python scripts/zh.py stub NN      # notebooks/zh/NN_topic.md: one block per markdown cell
    python scripts/zh.py build [NN]   # notebooks/zh/NN_topic.ipynb from the English .ipynb
    python scripts/zh.py check        # which Chinese cells are behind their English cell

The English notebook (notebooks/NN_topic.py and its .ipynb with outputs) is the only source of
code and outputs. Its Chinese edition keeps only the Chinese markdown, beside it, in
notebooks/zh/NN_topic.md: one block per markdown cell of the English notebook, in order,

    <!-- cell 7 · en 3f2a9c1b04d2 -->
    中文的 markdown……

where 7 is the cell's index in the English notebook and ``en`` a hash of the English cell's
text when the Chinese was written. ``build`` writes notebooks/zh/NN_topic.ipynb: the English
notebook's cells and outputs, each markdown cell's text replaced by its block (the Colab badge
pointing at the Chinese notebook). A changed English markdown cell changes its hash: ``check``
and tests/test_zh.py name the cell until its Chinese is brought up to date (and the hash with
it). nbval runs the English notebooks only; the Chinese ones are checked by tests/test_zh.py.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ZH = NOTEBOOKS / "zh"
BLOCK_RE = re.compile(r"^<!-- cell (\d+) · en ([0-9a-f]{12}) -->\n", re.M)


def en_hash(text: str) -> str:
    """12 hex digits of the SHA-256 of an English markdown cell's text (trailing space ignored)."""
    return hashlib.sha256(text.rstrip().encode("utf-8")).hexdigest()[:12]


def english(stem: str):
    """The English notebook with its outputs (notebooks/STEM.ipynb)."""
    return nbformat.read(NOTEBOOKS / f"{stem}.ipynb", as_version=4)


def markdown_cells(nb) -> list[tuple[int, str]]:
    """(index, text) of the notebook's markdown cells."""
    return [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"]


def parse(text: str) -> list[tuple[int, str, str]]:
    """The blocks of a notebooks/zh/*.md file: (cell index, English hash, Chinese text)."""
    heads = list(BLOCK_RE.finditer(text))
    if text[:heads[0].start()].strip() if heads else text.strip():
        raise ValueError("a zh file must start with a '<!-- cell N · en HASH -->' line")
    out = []
    for k, m in enumerate(heads):
        end = heads[k + 1].start() if k + 1 < len(heads) else len(text)
        out.append((int(m.group(1)), m.group(2), text[m.end():end].strip("\n")))
    return out


def render(blocks: list[tuple[int, str, str]]) -> str:
    return "\n\n".join(f"<!-- cell {i} · en {h} -->\n{t.rstrip()}" for i, h, t in blocks) + "\n"


def out_of_sync(stem: str) -> list[str]:
    """What keeps notebooks/zh/STEM.md from being the Chinese of notebooks/STEM.ipynb, a line
    each naming the cell; [] when in sync."""
    en = markdown_cells(english(stem))
    blocks = parse((ZH / f"{stem}.md").read_text(encoding="utf-8"))
    if [i for i, _ in en] != [i for i, _, _ in blocks]:
        return [f"{stem}: the Chinese blocks are for cells {[i for i, _, _ in blocks]}, the "
                f"English markdown cells are {[i for i, _ in en]} (python scripts/zh.py stub "
                f"{stem[:2]} shows the layout)"]
    return [f"{stem} cell {i}: the English text changed since its Chinese was written "
            f"(en {h} → {en_hash(src)}): update the Chinese, then its hash"
            for (i, src), (_, h, _) in zip(en, blocks) if h != en_hash(src)]


def stub(stem: str) -> Path:
    """notebooks/zh/STEM.md with every block holding its English text, to be replaced by the
    Chinese (refuses to overwrite a file that exists)."""
    path = ZH / f"{stem}.md"
    if path.exists():
        raise SystemExit(f"{path.relative_to(ROOT)} exists: edit it (or delete it first)")
    ZH.mkdir(exist_ok=True)
    path.write_text(render([(i, en_hash(src), src) for i, src in markdown_cells(english(stem))]),
                    encoding="utf-8")
    return path


def badge_zh(text: str, stem: str) -> str:
    """The English notebook's Colab badge pointed at the Chinese notebook."""
    return text.replace(f"/notebooks/{stem}.ipynb", f"/notebooks/zh/{stem}.ipynb")


def chinese(stem: str, nb):
    """The notebook ``nb`` (the English one, or an executed copy of it) with its markdown
    Chinese, in place; None if STEM has no Chinese edition or it is behind the English."""
    path = ZH / f"{stem}.md"
    if not path.exists() or out_of_sync(stem):
        return None
    blocks = {i: t for i, _, t in parse(path.read_text(encoding="utf-8"))}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            cell.source = badge_zh(blocks[i], stem)
    nb.metadata["llmtrain"] = {"edition": "zh", "english": f"../{stem}.ipynb"}
    return nb


def build(stem: str) -> Path:
    """notebooks/zh/STEM.ipynb: the English notebook's cells and outputs, its markdown Chinese."""
    problems = out_of_sync(stem)
    if problems:
        raise SystemExit("\n".join(problems))
    out = ZH / f"{stem}.ipynb"
    nbformat.write(chinese(stem, english(stem)), out)
    return out


def title(stem: str) -> str:
    """The Chinese title of STEM's Chinese edition: its first heading, before " · "."""
    first = parse((ZH / f"{stem}.md").read_text(encoding="utf-8"))[0][2]
    head = next(ln for ln in first.splitlines() if ln.startswith("# "))
    return head[2:].split(" · ")[0].strip()


def readme_table(url: str = "https://github.com/llmtrain/llmtrain") -> str:
    """The README's table of the Chinese notebooks, with their Colab badges."""
    gh = url.removeprefix("https://github.com/")
    rows = ["| # | 笔记本 | 打开 |", "|---|---|---|"]
    for s in stems():
        rows.append(f"| {s[:2]} | [{title(s)}](notebooks/zh/{s}.ipynb) | "
                    "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
                    f"(https://colab.research.google.com/github/{gh}/blob/main/notebooks/zh/"
                    f"{s}.ipynb) |")
    return "\n".join(rows)


def stems() -> list[str]:
    """The notebooks that have a Chinese edition (a notebooks/zh/*.md)."""
    return sorted(p.stem for p in ZH.glob("[0-9][0-9]_*.md"))


def _stem(arg: str) -> str:
    hits = [p.stem for p in NOTEBOOKS.glob(f"{arg}*.py") if p.stem[:2].isdigit()]
    if len(hits) != 1:
        raise SystemExit(f"notebook must name one notebook (a number like 08), got {arg!r}")
    return hits[0]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("stub", "build", "check"):
        print(__doc__.split("\n\n")[1])
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "stub":
        for a in args:
            print(stub(_stem(a)).relative_to(ROOT))
    elif cmd == "build":
        for s in ([_stem(a) for a in args] or stems()):
            print(build(s).relative_to(ROOT))
    else:
        problems = [p for s in stems() for p in out_of_sync(s)]
        print("\n".join(problems) or f"{len(stems())} Chinese notebooks in sync")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
