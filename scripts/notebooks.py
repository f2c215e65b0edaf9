#!/usr/bin/env python3
"""Execute, refresh and check the notebooks.

    python scripts/notebooks.py run       # make run: execute into build/, HTML, figures, table
    python scripts/notebooks.py refresh   # make notebooks: sync headers, re-execute in place
    python scripts/notebooks.py sync      # only rewrite badges/setup cells and sync the pairs
    python scripts/notebooks.py figures-diff DIR   # figures written to DIR == figures/ ?

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
# Per-cell timeout, seconds. A new user's 2-core machine took about 25 s for the slowest cell
# (issue 10); 600 s is a margin of ~20x for a loaded or slower machine. With
# the same 2 cores at a load average of 13-15, the slowest cells took 156 s (03) and 103 s (05):
# still 4x inside. A cell that hangs still ends: its notebook is marked failed in one line and
# the remaining ones run.
TIMEOUT_S = 600

# What every kernel (and every rank it launches) inherits. OpenMP threads that wait spin on their
# core by default: with two kernels on the 2 cores of a classroom server, 100 tiny-LLaMA steps took
# 287 s each spinning and 14 s each with passive waiting (tests/test_load.py has the measurement).
KERNEL_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def kernel_environment() -> None:
    """Set KERNEL_ENV in this process (kernels inherit it), keeping what the user set."""
    import os

    for k, v in KERNEL_ENV.items():
        os.environ.setdefault(k, v)


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


def kernel_config():
    """Configuration for the kernel manager nbclient creates (and shuts down) per notebook.

    ipykernel >= 7 warns "Kernel is running over TCP without encryption" when the client
    gives it no CurveZMQ keys. jupyter_client >= 8.10 provisions them itself where the
    kernelspec declares support (ipykernel's does): transport_encryption = "auto". Older
    versions have no such option, and their kernels do not warn.
    """
    from jupyter_client.manager import KernelManager
    from traitlets.config import Config

    config = Config()
    if "transport_encryption" in KernelManager.class_trait_names():
        config.KernelManager.transport_encryption = "auto"
    return config


def _cell_seconds(cell) -> float:
    t = cell.metadata.get("execution", {})
    try:
        from datetime import datetime

        start = datetime.fromisoformat(t["iopub.execute_input"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(t["shell.execute_reply"].replace("Z", "+00:00"))
        return (end - start).total_seconds()
    except (KeyError, ValueError):
        return 0.0


def one_line(e: BaseException) -> str:
    """An execution error as one line: the exception's last line, without terminal colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    last = text.splitlines()[-1].strip() if text else ""
    name = type(e).__name__
    return last if last.startswith(name) or ":" in last[:40] else f"{name}: {last or 'no message'}"


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while a notebook ran: the whole run stops (not only that
    notebook, which is what nbclient's own signal handler would make of it)."""

    def __init__(self, message: str, seconds: float = 0.0):
        super().__init__(message)
        self.seconds = seconds


def section_of(nb) -> list[str]:
    """For each cell, the heading of the section it is in ("" before the first ## heading)."""
    heading, out = "", []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("## "):
                    heading = line[3:].strip()
                    break
        out.append(heading)
    return out


class Progress:
    """What the runner prints while a notebook runs: a line when a new section starts (with the
    cell number), and every cell that took at least ``slow_s`` seconds."""

    def __init__(self, nb, slow_s: float = 10.0, stream=None):
        self.sections, self.n = section_of(nb), len(nb.cells)
        self.slow_s, self.stream, self.shown, self.t = slow_s, stream or sys.stdout, None, {}

    def start(self, cell, cell_index, **_):
        self.t[cell_index] = time.perf_counter()
        sec = self.sections[cell_index]
        if sec and sec != self.shown:
            self.shown = sec
            print(f"  cell {cell_index:>2}/{self.n}  {sec}", file=self.stream, flush=True)

    def done(self, cell, cell_index, **_):
        took = time.perf_counter() - self.t.get(cell_index, time.perf_counter())
        if took >= self.slow_s:
            print(f"  cell {cell_index:>2}/{self.n}  took {took:.0f} s", file=self.stream, flush=True)


def execute(src: Path, dst: Path, timeout: int = TIMEOUT_S, progress: bool = True
            ) -> tuple[bool, float, str, float, int]:
    """Execute notebook src (cwd: its folder) and write it to dst.

    Returns ok, seconds, error (one line, "" if ok), seconds of the slowest cell and its number
    (the index in the notebook, as nbval and JupyterLab count; -1 if no cell ran). With
    ``progress``, prints each section as it starts and every cell of 10 s or more. Any failure
    (a cell's error, a cell over `timeout`, a dead kernel) is caught and reported in one line:
    the caller runs the remaining notebooks. Raises Interrupted (after writing dst) when
    SIGINT or SIGTERM arrived: nbclient then kills the kernel and the cell fails.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    if src.suffix == ".py":  # the reviewed source; outputs come from this run
        import jupytext

        nb = jupytext.read(src)
        nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    else:
        nb = nbformat.read(src, as_version=4)
    # shutdown "immediate": a kernel whose cell timed out is killed, not left running its cell
    hooks = {}
    if progress:
        p = Progress(nb)
        hooks = {"on_cell_start": p.start, "on_cell_executed": p.done}
    client = NotebookClient(nb, kernel_name="python3", config=kernel_config(), timeout=timeout,
                            record_timing=True, shutdown_kernel="immediate",
                            resources={"metadata": {"path": str(src.parent)}}, **hooks)
    t0 = time.perf_counter()
    ok, err = True, ""
    try:
        client.execute()
    except CellTimeoutError:
        ok, err = False, f"CellTimeoutError: a cell ran longer than {timeout} s (the per-cell timeout)"
    except DeadKernelError:
        ok, err = False, "DeadKernelError: the kernel died (out of memory? a crash in native code?)"
    except CellExecutionError as e:
        ok, err = False, one_line(e)
    except Exception as e:  # noqa: BLE001  (a kernel that never started, a broken notebook, ...)
        ok, err = False, one_line(e)
    seconds = time.perf_counter() - t0
    # nbclient handles SIGINT/SIGTERM itself while it runs: it kills the kernel and sets this
    interrupted = getattr(client, "_async_cleanup_kernel_future", None) is not None
    timed = [(_cell_seconds(c), i) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    slowest, slowest_cell = max(timed, default=(0.0, -1))
    for cell in nb.cells:  # no per-cell timestamps: stored notebooks change only with their outputs
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)  # widget state holds random model ids; Jupyter rebuilds it
    if interrupted and dst.resolve() == src.resolve():  # in place: the stored notebook stays whole
        raise Interrupted(f"interrupted (SIGINT or SIGTERM) after {seconds:.0f} s", seconds)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dst)
    if interrupted:
        raise Interrupted(f"interrupted (SIGINT or SIGTERM) after {seconds:.0f} s", seconds)
    return ok, seconds, err, slowest, slowest_cell


def title_of(nb_path: Path) -> str:
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return nb_path.stem


# The pages' fonts. The pages name no web font (they work offline), so Chinese needs a CJK font on
# the reader's system: these families, in this order, cover Linux (Noto / Source Han / WenQuanYi),
# macOS (PingFang) and Windows (Microsoft YaHei); without any of them Chinese shows as boxes.
# On Debian/Ubuntu: `sudo apt-get install fonts-noto-cjk`; Fedora: `google-noto-sans-cjk-fonts`.
CJK_SANS = ('"Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Hiragino Sans GB", '
            '"Microsoft YaHei", "WenQuanYi Micro Hei"')
FONT_CSS = f"""<style>
:root {{
  --jp-ui-font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, {CJK_SANS}, sans-serif;
  --jp-content-font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, {CJK_SANS}, sans-serif;
  --jp-code-font-family: "DejaVu Sans Mono", Menlo, Consolas, "Noto Sans Mono CJK SC", {CJK_SANS}, monospace;
}}
body {{ font-family: var(--jp-content-font-family); }}
</style>"""
FONT_NOTE = ("Chinese text needs a CJK font on this computer: Noto Sans CJK SC (Linux: package "
             "fonts-noto-cjk), PingFang SC (macOS) or Microsoft YaHei (Windows).")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


# Offline HTML. nbconvert's pages load MathJax and require.js from a CDN: offline every formula
# shows as raw $...$. The pages here load MathJax 2.7 from mathjax/ beside them, copied from the
# jupyter-server-mathjax package (a dev dependency), and drop require.js and the Mermaid loader
# (no output needs them; widget state is not stored). The package ships only the STIX-Web fonts
# (as Jupyter's classic notebook configured it), so the pages tell MathJax to use those.
# tests/test_build.py checks that no page loads an external script.
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
<script type="text/x-mathjax-config">
MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web",
                                 imageFont: null}, SVG: {font: "STIX-Web"}});
</script>
{{ super() }}
{%- endblock html_head_js_mathjax -%}
{%- block html_head_css -%}
{{ super() }}
@FONT_CSS@
{%- endblock html_head_css -%}
"""


OFFLINE_TEMPLATE = OFFLINE_TEMPLATE.replace("@FONT_CSS@", FONT_CSS)


def mathjax_source() -> Path:
    """The folder holding MathJax.js, from the installed jupyter-server-mathjax."""
    try:
        import jupyter_server_mathjax
    except ImportError as e:
        raise SystemExit("the offline HTML build needs jupyter-server-mathjax: run `make venv`") from e
    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (static / "MathJax.js").is_file():
        raise SystemExit(f"no MathJax.js in {static}")
    return static


def copy_mathjax(html_dir: Path) -> Path:
    """Copy MathJax into html_dir/mathjax (once; kept when already there and complete)."""
    import shutil

    dst = html_dir / "mathjax"
    if not (dst / "MathJax.js").is_file():
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(mathjax_source(), dst)
    return dst


def to_html(nb_path, out: Path, switch: tuple[str, str] | None = None) -> None:
    """Render a notebook (a path or a notebook node) as a page that works offline (MathJax from
    ./mathjax, no CDN); ``switch`` = (href, label): a link to the page in the other language,
    at the top of the page."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    out.parent.mkdir(parents=True, exist_ok=True)
    copy_mathjax(out.parent)
    exporter = HTMLExporter(extra_loaders=[DictLoader({"llmtrain_offline.html.j2": OFFLINE_TEMPLATE})],
                            template_file="llmtrain_offline.html.j2",
                            mathjax_url=f"mathjax/MathJax.js?config={MATHJAX_CONFIG}")
    nb = nb_path if not isinstance(nb_path, (str, Path)) else nbformat.read(nb_path, as_version=4)
    body, _ = exporter.from_notebook_node(without_live_widgets(nb))
    if switch:
        link = (f'<div class="llmtrain-lang" style="text-align:right;margin:.5em 1em">'
                f'<a href="{html.escape(switch[0])}">{html.escape(switch[1])}</a></div>')
        body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + link, body, count=1)
    out.write_text(body, encoding="utf-8")


ZH_PAGE = "{stem}.zh.html"  # the Chinese page beside the English one (same mathjax/)


def to_html_both(executed: Path, out: Path, stem: str) -> bool:
    """The English page and, when STEM has a Chinese edition in step with it, the Chinese page
    (the executed notebook's outputs, scripts/zh.py's markdown), each linking the other.
    Returns True if the Chinese page was written."""
    import nbformat

    import zh  # scripts/zh.py

    cn = zh.chinese(stem, nbformat.read(executed, as_version=4))
    zh_name = ZH_PAGE.format(stem=stem)
    to_html(executed, out, (zh_name, "中文版") if cn is not None else None)
    if cn is None:
        (out.parent / zh_name).unlink(missing_ok=True)
        return False
    to_html(cn, out.parent / zh_name, (out.name, "English"))
    return True




def without_live_widgets(nb):
    """The notebook without the outputs of live widgets: with no kernel (a static page) they show
    only their repr ("VBox(children=…"); the notebooks draw a static rendering right after."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", []) if WIDGET_MIME not in o.get("data", {})]
    return nb


INDEX_ROWS = "index.json"  # the index's rows, kept between runs: an interrupted run keeps them all


def write_index(rows: list[dict], out: Path, device: str, stems: list[str] | None = None) -> list[dict]:
    """Write the index page: one row per notebook of ``stems`` (default: those of ``rows``).

    A notebook this run did not reach (interrupted, or not selected) keeps its row from the
    previous index, marked "(earlier run)", or is listed as "not run": the index always lists every
    notebook and links each page that exists. Returns the rows written."""
    import json

    stems = stems or [r["stem"] for r in rows]
    kept = out.parent / INDEX_ROWS
    try:
        earlier = {r["stem"]: r for r in json.loads(kept.read_text(encoding="utf-8"))}
    except (OSError, ValueError, TypeError, KeyError):
        earlier = {}
    now = {r["stem"]: r for r in rows}
    table = []
    for stem in stems:
        if stem in now:
            table.append(dict(now[stem]))
        elif stem in earlier and not earlier[stem]["status"].startswith("not run"):
            old = dict(earlier[stem])
            old["status"] = old["status"].replace(" (earlier run)", "") + " (earlier run)"
            table.append(old)
        else:
            table.append({"stem": stem, "title": stem, "status": "not run", "seconds": 0.0,
                          "slowest": 0.0, "slowest_cell": -1, "error": ""})
    out.parent.mkdir(parents=True, exist_ok=True)

    def link(r):
        name = html.escape(r["stem"])
        en = f'<a href="{name}.html">{name}</a>' if (out.parent / f"{r['stem']}.html").is_file() else name
        zh_page = ZH_PAGE.format(stem=r["stem"])
        return en + (f' · <a href="{html.escape(zh_page)}">中文版</a>'
                     if (out.parent / zh_page).is_file() else "")

    def slowest(r):
        return f'{r["slowest"]:.1f} (cell {r["slowest_cell"]})' if r.get("slowest_cell", -1) >= 0 else ""

    api_link = ('\n<p><a href="api.html">API</a>: every public name of llmtrain, one line each, and '
                'the notebook sections that use it</p>' if (out.parent / "api.html").is_file() else "")
    items = "\n".join(
        f'<tr><td>{link(r)}</td>'
        f'<td>{html.escape(r["title"])}</td><td>{html.escape(r["status"])}</td>'
        f'<td>{r["seconds"]:.1f}</td><td>{slowest(r)}</td>'
        f'<td>{html.escape(r["error"])}</td></tr>'
        for r in table)
    out.write_text(f"""<!doctype html>
<html lang="zh-Hans"><head><meta charset="utf-8"><title>llmtrain notebooks</title>
<style>body{{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,{CJK_SANS},sans-serif;
max-width:60em;margin:2em auto}}
td,th{{padding:.3em .8em;text-align:left}}tr:nth-child(even){{background:#f4f4f4}}</style></head>
<body><h1>llmtrain · 预训练之训练技术</h1>
<p>Executed notebooks. Device: {html.escape(device)}</p>{api_link}
<table><tr><th>notebook</th><th>title</th><th>status</th><th>seconds</th><th>slowest cell (s)</th><th>error</th></tr>
{items}
</table>
<p><small>{html.escape(FONT_NOTE)}</small></p></body></html>
""", encoding="utf-8")
    kept.write_text(json.dumps(table, indent=1, ensure_ascii=False), encoding="utf-8")
    return table


def write_api_page(out: Path) -> None:
    """build/html/api.html: every public name of llmtrain and the notebook sections that use it
    (scripts/api.py, read from the source; a failure is printed, the index is still written)."""
    if str(ROOT / "scripts") not in sys.path:  # imported from elsewhere than this folder
        sys.path.append(str(ROOT / "scripts"))
    try:
        import api  # scripts/api.py

        api.write(out)
    except Exception as e:  # noqa: BLE001  (the notebooks' pages matter more)
        print(f"FAILED api.html: {one_line(e)}", flush=True)


def device_line() -> str:
    try:
        from llmtrain.device import choose

        c = choose()
        return f"{c.device} ({c.name})"
    except Exception as e:  # the table is still useful without it
        return f"unknown ({e})"


def run(sources: list[Path], in_place: bool, build: Path = BUILD, timeout: int = TIMEOUT_S,
        index_stems: list[str] | None = None) -> int:
    """Execute each source notebook; one failing notebook (an error, a timeout, a dead kernel)
    is reported in one line and the rest still run. Unless in place, also write the HTML pages
    and build/html/index.html (listing ``index_stems``, default the sources: rows this run did
    not reach are kept from the previous index). Prints progress, then the table and the total;
    returns 0 if every notebook ran, 1 if one failed, 130 if the run was stopped by a signal."""
    kernel_environment()
    device = device_line()
    rows = []
    t_run = time.perf_counter()
    for k, src in enumerate(sources, 1):
        dst = src if in_place else build / "notebooks" / f"{src.stem}.ipynb"
        name = src.relative_to(ROOT) if src.is_relative_to(ROOT) else src
        print(f"[{k}/{len(sources)}] executing {name} ...", flush=True)
        try:
            ok, seconds, err, slowest, slowest_cell = execute(src, dst, timeout=timeout)
        except Interrupted as e:
            print(f"STOPPED at {src.stem}: {e}; the remaining notebooks do not run", flush=True)
            rows.append({"stem": src.stem, "title": src.stem, "status": "STOPPED", "seconds": e.seconds,
                         "slowest": 0.0, "slowest_cell": -1, "error": str(e)})
            break
        if not ok:
            print(f"FAILED {src.stem}: {err}", flush=True)
        print(f"  done in {seconds:.1f} s; slowest: cell {slowest_cell}, {slowest:.1f} s", flush=True)
        row = {"stem": src.stem, "title": src.stem, "status": "ok" if ok else "FAILED",
               "seconds": seconds, "slowest": slowest, "slowest_cell": slowest_cell, "error": err}
        try:
            row["title"] = title_of(dst)
            if not in_place:
                to_html_both(dst, build / "html" / f"{src.stem}.html", src.stem)
        except Exception as e:  # noqa: BLE001  (the table and the index still get written)
            row["status"], row["error"] = "FAILED", f"HTML: {one_line(e)}"
            print(f"FAILED {src.stem}: {row['error']}", flush=True)
        rows.append(row)
    total = time.perf_counter() - t_run
    table = rows
    if not in_place:
        write_api_page(build / "html" / "api.html")
        table = write_index(rows, build / "html" / "index.html", device,
                            index_stems or [s.stem for s in sources])
    w = max([len(r["stem"]) for r in table] + [8])
    print()
    print(f"device: {device}")
    print(f"{'notebook':<{w}}  {'status':<6}  seconds  slowest cell")
    for r in table:
        cell = f"{r['slowest']:6.1f} s (cell {r['slowest_cell']})" if r.get("slowest_cell", -1) >= 0 else ""
        print(f"{r['stem']:<{w}}  {r['status']:<6}  {r['seconds']:7.1f}  {cell}")
        if r["error"]:
            print(f"{'':<{w}}  {r['error']}")
    print(f"\ntotal: {total:.0f} s ({total / 60:.1f} min) for {len(rows)} of {len(sources)} notebooks")
    if not in_place:
        index = build / "html" / "index.html"
        print(f"HTML: {index.relative_to(ROOT) if index.is_relative_to(ROOT) else index} · figures: figures/")
    failed = [r["stem"] for r in rows if r["status"] != "ok"]
    if failed:
        print(f"\n{len(failed)} of {len(rows)} notebooks failed: {', '.join(failed)}")
    if rows and rows[-1]["status"] == "STOPPED":
        return 130  # as a shell reports a run stopped by a signal
    return 1 if failed else 0


def run_all(in_place: bool, only: list[str]) -> int:
    sources = pairs() if not in_place else [p.with_suffix(".ipynb") for p in pairs()]
    if only:
        sources = [p for p in sources if any(o in p.stem for o in only)]
    if not sources:
        print(f"no notebook matches {only}")
        return 1
    return run(sources, in_place, index_stems=[p.stem for p in pairs()])


FIGURES = ROOT / "figures"


def compare_figures(written: Path, tracked: Path = FIGURES, since: float | None = None) -> list[str]:
    """Figures in `written` (files modified at or after `since`, if given) that are not
    byte-identical to the tracked file of the same name: one line each, empty if all agree.

    Every figure must come out the same on every CPU (drawn from robust numbers), so that a
    run of the notebooks anywhere leaves figures/ unchanged."""
    bad = []
    for f in sorted(written.glob("*")):
        if not f.is_file() or (since is not None and f.stat().st_mtime < since):
            continue
        ref = tracked / f.name
        if not ref.is_file():
            bad.append(f"{f.name}: written by a notebook but not in {tracked.name}/ (new? commit it)")
        elif ref.read_bytes() != f.read_bytes():
            bad.append(f"{f.name}: differs from {tracked.name}/{f.name}")
    return bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["run", "refresh", "sync", "figures-diff"])
    p.add_argument("only", nargs="*", help="run only notebooks whose name contains one of these "
                   "(figures-diff: the folder the notebooks wrote their figures to)")
    args = p.parse_args(argv)
    if args.command == "figures-diff":
        if len(args.only) != 1 or not Path(args.only[0]).is_dir():
            p.error("figures-diff takes one argument: the folder the figures were written to")
        bad = compare_figures(Path(args.only[0]))
        print("\n".join(bad) if bad else f"every figure in {args.only[0]} equals figures/")
        return 1 if bad else 0
    if args.command == "sync":
        sync()
        return 0
    if args.command == "refresh":
        sync()
        return run_all(in_place=True, only=args.only)
    return run_all(in_place=False, only=args.only)


if __name__ == "__main__":
    sys.exit(main())
