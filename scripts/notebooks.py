#!/usr/bin/env python3
"""Execute, refresh and check the notebooks.

    python scripts/notebooks.py run       # make run: execute into build/, HTML, figures, table
    python scripts/notebooks.py refresh   # make notebooks: sync headers, re-execute in place
    python scripts/notebooks.py sync      # only rewrite badges/setup cells and sync the pairs

Each notebook is a pair: notebooks/NN_topic.py (jupytext percent, what reviewers diff) and
notebooks/NN_topic.ipynb (with outputs, what readers see). The repository address lives
only in pyproject.toml ([project.urls] Repository); every badge and setup cell is made
from it here and checked in tests/test_notebooks.py.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
BUILD = ROOT / "build"
TIMEOUT_S = 300  # per cell: every notebook is meant to run in about a minute

BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
SETUP_TAG = "setup"


def repo_url() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    m = re.search(r'^Repository\s*=\s*"([^"]+)"', text, re.M)
    if not m:
        raise SystemExit("pyproject.toml has no [project.urls] Repository")
    return m.group(1).rstrip("/")


def badge(stem: str, url: str | None = None) -> str:
    url = url or repo_url()
    gh = url.removeprefix("https://github.com/")
    return ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{gh}/blob/main/notebooks/{stem}.ipynb)")


def setup_source(url: str | None = None) -> str:
    """The first code cell of every notebook.

    The Colab install uses pip's default upgrade strategy, stated: a requirement that the
    runtime already satisfies (Colab's own torch, transformers, ipywidgets, within llmtrain's
    ranges in pyproject.toml) is kept, never upgraded. tests/test_build.py runs this very pip
    command as a dry run against fake newer releases to check it.
    """
    url = url or repo_url()
    return f'''# Setup. On Colab: install llmtrain from the repository; Colab's own torch, transformers
# and ipywidgets are kept when they satisfy llmtrain's ranges (pip upgrades only if needed).
# Elsewhere `make venv` has installed it already; this cell only reports the device.
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "--upgrade-strategy", "only-if-needed",
                    "llmtrain[hf] @ git+{url}"], check=True)

import llmtrain  # noqa: F401  (fails here, not later, if the install did not work)
from llmtrain.device import report

print(report())'''


def pairs() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def canonical_header(nb, stem: str) -> bool:
    """Rewrite the badge and the setup cell of a jupytext notebook in place; True if changed."""
    changed = False
    want_badge, want_setup = badge(stem), setup_source()
    for cell in nb.cells:
        if cell.cell_type == "markdown" and BADGE_RE.search(cell.source):
            new = BADGE_RE.sub(want_badge.replace("\\", "\\\\"), cell.source)
            changed |= new != cell.source
            cell.source = new
            break
    for cell in nb.cells:
        if cell.cell_type == "code" and SETUP_TAG in cell.metadata.get("tags", []):
            changed |= cell.source != want_setup
            cell.source = want_setup
            break
    return changed


NOTEBOOK_LIST = ROOT / "lib" / "llmtrain" / "_notebooks.py"


def notebook_list_source() -> str:
    """lib/llmtrain/_notebooks.py: the notebooks of this copy, shipped inside the package so the
    overview's chapter map is right on Colab too (where the current folder has no notebooks)."""
    stems = "".join(f'    "{p.stem}",\n' for p in pairs())
    return ('"""The notebooks that exist in this copy of llmtrain (generated: do not edit).\n\n'
            'Written by `python scripts/notebooks.py sync` from notebooks/; tests/test_build.py\n'
            'checks that it matches. Used by llmtrain.chapter for the chapter map."""\n\n'
            f"NOTEBOOKS: tuple[str, ...] = (\n{stems})\n")


def sync() -> None:
    """Make every .py canonical, then bring each .ipynb's sources up to date (outputs kept);
    write the package's list of notebooks."""
    import jupytext

    want = notebook_list_source()
    if not NOTEBOOK_LIST.exists() or NOTEBOOK_LIST.read_text(encoding="utf-8") != want:
        NOTEBOOK_LIST.write_text(want, encoding="utf-8")
        print(f"rewrote {NOTEBOOK_LIST.relative_to(ROOT)}")

    for py in pairs():
        nb = jupytext.read(py)
        if canonical_header(nb, py.stem):
            jupytext.write(nb, py, fmt="py:percent")
            print(f"rewrote header of {py.relative_to(ROOT)}")
        ipynb = py.with_suffix(".ipynb")
        nb = jupytext.read(py)
        if ipynb.exists():
            old = jupytext.read(ipynb)
            # keep outputs of unchanged cells; execution refreshes them anyway
            nb = jupytext.combine.combine_inputs_with_outputs(nb, old, fmt="py:percent")
        nb.metadata.setdefault("jupytext", {})["formats"] = "ipynb,py:percent"
        nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
        jupytext.write(nb, ipynb)


def execute(src: Path, dst: Path) -> tuple[bool, float, str]:
    """Execute notebook src (cwd notebooks/) and write it to dst. Returns ok, seconds, error."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    if src.suffix == ".py":  # the reviewed source; outputs come from this run
        import jupytext

        nb = jupytext.read(src)
        nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    else:
        nb = nbformat.read(src, as_version=4)
    # no per-cell timestamps: stored notebooks change only when their outputs change
    client = NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    t0 = time.perf_counter()
    ok, err = True, ""
    try:
        client.execute()
    except DeadKernelError:
        ok, err = False, "the kernel died (out of memory? a crash in native code?)"
    except CellExecutionError as e:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # drop terminal colours
        ok, err = False, text.splitlines()[-1] if text else "error"
    seconds = time.perf_counter() - t0
    nb.metadata.pop("widgets", None)  # widget state holds random model ids; Jupyter rebuilds it
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dst)
    return ok, seconds, err


def title_of(nb_path: Path) -> str:
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return nb_path.stem


def to_html(nb_path: Path, out: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(nb_path, as_version=4))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")


def write_index(rows: list[dict], out: Path, device: str) -> None:
    items = "\n".join(
        f'<tr><td><a href="{r["stem"]}.html">{html.escape(r["stem"])}</a></td>'
        f'<td>{html.escape(r["title"])}</td><td>{r["status"]}</td><td>{r["seconds"]:.1f}</td></tr>'
        for r in rows)
    out.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>llmtrain notebooks</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
td,th{{padding:.3em .8em;text-align:left}}tr:nth-child(even){{background:#f4f4f4}}</style></head>
<body><h1>llmtrain · 预训练之训练技术</h1>
<p>Executed notebooks. Device: {html.escape(device)}</p>
<table><tr><th>notebook</th><th>title</th><th>status</th><th>seconds</th></tr>
{items}
</table></body></html>
""", encoding="utf-8")


def device_line() -> str:
    try:
        from llmtrain.device import choose

        c = choose()
        return f"{c.device} ({c.name})"
    except Exception as e:  # the table is still useful without it
        return f"unknown ({e})"


def run_all(in_place: bool, only: list[str]) -> int:
    sources = pairs() if not in_place else [p.with_suffix(".ipynb") for p in pairs()]
    if only:
        sources = [p for p in sources if any(o in p.stem for o in only)]
    device = device_line()
    rows = []
    for src in sources:
        dst = src if in_place else BUILD / "notebooks" / f"{src.stem}.ipynb"
        print(f"executing {src.relative_to(ROOT)} ...", flush=True)
        ok, seconds, err = execute(src, dst)
        row = {"stem": src.stem, "title": title_of(dst), "status": "ok" if ok else "FAILED",
               "seconds": seconds, "error": err}
        rows.append(row)
        if not in_place:
            to_html(dst, BUILD / "html" / f"{src.stem}.html")
    if not in_place:
        write_index(rows, BUILD / "html" / "index.html", device)
    w = max([len(r["stem"]) for r in rows] + [8])
    print()
    print(f"{'notebook':<{w}}  status  seconds  device")
    for r in rows:
        print(f"{r['stem']:<{w}}  {r['status']:<6}  {r['seconds']:7.1f}  {device}")
        if r["error"]:
            print(f"{'':<{w}}  {r['error']}")
    if not in_place:
        print(f"\nHTML: {(BUILD / 'html' / 'index.html').relative_to(ROOT)} · figures: figures/")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["run", "refresh", "sync"])
    p.add_argument("only", nargs="*", help="run only notebooks whose name contains one of these")
    args = p.parse_args(argv)
    if args.command == "sync":
        sync()
        return 0
    if args.command == "refresh":
        sync()
        return run_all(in_place=True, only=args.only)
    return run_all(in_place=False, only=args.only)


if __name__ == "__main__":
    sys.exit(main())
