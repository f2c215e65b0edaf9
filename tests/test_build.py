"""The build around the notebooks: the runner (timeouts, failures, index), offline HTML, the
package's list of notebooks (chapter map), the Colab install, `make lab` as root, figures."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

import notebooks as nbtool  # scripts/notebooks.py
from llmtrain import chapter

# ---------------------------------------------------------------------------------------------
# The package knows which notebooks exist (the chapter map is right on Colab too)


def test_package_lists_the_notebooks_of_this_copy():
    assert nbtool.NOTEBOOK_LIST.read_text(encoding="utf-8") == nbtool.notebook_list_source(), \
        "lib/llmtrain/_notebooks.py is stale: run `python scripts/notebooks.py sync`"
    assert set(chapter.NOTEBOOKS) == {p.stem for p in nbtool.pairs()}


def test_chapter_map_status_comes_from_the_package_not_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # like Colab: no notebooks in the current folder
    stems = {p.stem for p in nbtool.pairs()}
    for stem, _, _ in chapter.CHAPTER_MAP:
        assert chapter.status(stem) == ("ready" if stem in stems else "planned")
    assert "ready" in chapter.table()
    # every notebook but the overview is on the map
    assert stems - {"00_overview"} <= {s for s, _, _ in chapter.CHAPTER_MAP}
    with pytest.raises(ValueError, match="stem"):
        chapter.status(3)


# ---------------------------------------------------------------------------------------------
# The runner: a failing or hanging notebook is one line; the others run; index and table written

def _nb(path: Path, *cells) -> Path:
    nb = nbformat.v4.new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    """Three tiny notebooks through the runner: one hangs, one raises, one is fine."""
    src = tmp_path_factory.mktemp("src")
    build = tmp_path_factory.mktemp("build")
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    sources = [
        _nb(src / "a_hangs.ipynb", code("import time\ntime.sleep(60)")),
        _nb(src / "b_raises.ipynb", code("raise ValueError('batch must be positive')")),
        _nb(src / "c_fine.ipynb", md("# Fine · 好\n\n## 1. The only section · 唯一一节\n\n"
                                     "A formula: $E = mc^2$ and $$\\sum_i x_i$$"),
            code("import os\nprint(os.environ.get('LLMTRAIN_FIGURES'), os.environ.get('OMP_WAIT_POLICY'))"),
            code("import ipywidgets\nipywidgets.VBox([ipywidgets.IntSlider(value=3)])  # a live widget"),
            code("print('the static rendering')")),
    ]
    import io
    import tempfile
    from contextlib import redirect_stdout

    out = io.StringIO()
    with tempfile.TemporaryFile("w+") as err_file:
        # the kernels' stderr (where ipykernel warns) is this process's fd 2
        saved = os.dup(2)
        os.dup2(err_file.fileno(), 2)
        try:
            with redirect_stdout(out):
                rc = nbtool.run(sources, in_place=False, build=build, timeout=3)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err_file.seek(0)
        err = err_file.read()
    return {"rc": rc, "out": out.getvalue(), "err": err, "build": build}


def test_runner_marks_failures_in_one_line_and_runs_the_rest(small_build):
    out = small_build["out"]
    assert small_build["rc"] == 1
    assert "FAILED a_hangs: CellTimeoutError: a cell ran longer than 3 s" in out
    assert "FAILED b_raises: ValueError: batch must be positive" in out
    assert "Traceback" not in out
    assert re.search(r"^c_fine\s+ok\s", out, re.M), out
    assert "2 of 3 notebooks failed: a_hangs, b_raises" in out
    index = (small_build["build"] / "html" / "index.html").read_text(encoding="utf-8")
    assert index.count("FAILED") == 2 and "c_fine.html" in index
    for stem in ("a_hangs", "b_raises", "c_fine"):  # partial outputs are kept for reading
        assert (small_build["build"] / "notebooks" / f"{stem}.ipynb").is_file()


def test_runner_kernels_inherit_the_environment_and_do_not_warn(small_build):
    nb = nbformat.read(small_build["build"] / "notebooks" / "c_fine.ipynb", as_version=4)
    want_omp = os.environ.get("OMP_WAIT_POLICY", nbtool.KERNEL_ENV["OMP_WAIT_POLICY"])
    assert nb.cells[1].outputs[0]["text"].split() == [os.environ["LLMTRAIN_FIGURES"], want_omp]
    assert "without encryption" not in small_build["err"], small_build["err"]
    assert all("execution" not in c.metadata for c in nb.cells), "timestamps must not be stored"


def test_runner_shows_progress_the_slowest_cell_and_the_total(small_build):
    out = small_build["out"]
    assert "[1/3] executing" in out and "[3/3] executing" in out
    assert re.search(r"^  cell +0/4  1\. The only section · 唯一一节$", out, re.M), out
    assert re.search(r"^  done in [0-9.]+ s; slowest: cell [0-9]+, [0-9.]+ s$", out, re.M), out
    assert re.search(r"^c_fine\s+ok\s+[0-9.]+\s+[0-9.]+ s \(cell [123]\)$", out, re.M), out
    assert re.search(r"^total: [0-9]+ s \([0-9.]+ min\) for 3 of 3 notebooks$", out, re.M), out


def test_progress_reports_each_section_once_and_each_slow_cell():
    import io

    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[md("# T"), code("1"), md("## 1. A"), code("2"), code("3"),
                                         md("## 2. B"), code("4")])
    assert nbtool.section_of(nb) == ["", "", "1. A", "1. A", "1. A", "2. B", "2. B"]
    stream = io.StringIO()
    p = nbtool.Progress(nb, slow_s=0.0, stream=stream)
    for i, cell in enumerate(nb.cells):
        p.start(cell=cell, cell_index=i)
        p.done(cell=cell, cell_index=i)
    lines = stream.getvalue().splitlines()
    assert [ln for ln in lines if "took" not in ln] == ["  cell  2/7  1. A", "  cell  5/7  2. B"]
    assert sum("took" in ln for ln in lines) == 7


def test_index_keeps_every_notebook_when_a_run_stops_early(tmp_path):
    out = tmp_path / "html" / "index.html"
    out.parent.mkdir()
    (out.parent / "a.html").write_text("page a")
    (out.parent / "b.html").write_text("page b")
    row = {"title": "t", "seconds": 1.0, "slowest": 0.5, "slowest_cell": 2, "error": ""}
    full = [{**row, "stem": s, "status": "ok"} for s in ("a", "b", "c")]
    nbtool.write_index(full, out, "cpu")
    stopped = [{**row, "stem": "a", "status": "STOPPED", "seconds": 16.0, "error": "interrupted"}]
    table = nbtool.write_index(stopped, out, "cpu", ["a", "b", "c", "d"])
    assert [(r["stem"], r["status"]) for r in table] == [
        ("a", "STOPPED"), ("b", "ok (earlier run)"), ("c", "ok (earlier run)"), ("d", "not run")]
    page = out.read_text(encoding="utf-8")
    assert '<a href="b.html">b</a>' in page and '<a href="c.html">' not in page  # no page for c
    assert "<td>16.0</td>" in page and "ok (earlier run)" in page and "not run" in page
    # stopped again: the kept rows stay marked once, "(earlier run)" does not pile up
    table = nbtool.write_index(stopped, out, "cpu", ["a", "b", "c", "d"])
    assert table[1]["status"] == "ok (earlier run)"


def test_html_pages_name_cjk_fonts_and_hide_the_widget_repr(small_build):
    html_dir = small_build["build"] / "html"
    page = (html_dir / "c_fine.html").read_text(encoding="utf-8")
    for family in ("Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Microsoft YaHei",
                   "WenQuanYi Micro Hei"):
        assert family in page and family in nbtool.FONT_CSS
    # the override comes after the theme's own definition of the variables
    assert page.rindex("--jp-content-font-family: system-ui") > page.index("--jp-content-font-family")
    assert "VBox(children=" not in page and "the static rendering" in page
    stored = nbformat.read(small_build["build"] / "notebooks" / "c_fine.ipynb", as_version=4)
    assert "VBox(children=" in str(stored.cells[2].outputs)  # the notebook keeps it: Jupyter shows the widget
    index = (html_dir / "index.html").read_text(encoding="utf-8")
    assert "fonts-noto-cjk" in index and "Noto Sans CJK SC" in index


def test_html_export_drops_only_live_widget_outputs():
    code = nbformat.v4.new_code_cell
    widget = nbformat.v4.new_output("display_data", {"text/plain": "VBox(children=())",
                                                     nbtool.WIDGET_MIME: {"model_id": "m"}})
    text = nbformat.v4.new_output("stream", text="kept\n")
    nb = nbformat.v4.new_notebook(cells=[code("w", outputs=[widget, text])])
    assert nbtool.without_live_widgets(nb).cells[0].outputs == [text]


def test_cell_timeout_has_a_wide_margin():
    assert nbtool.TIMEOUT_S >= 20 * 25, "about 20x the slowest cell measured (25 s)"


class _Refs(HTMLParser):
    """Every script, stylesheet and module import a page loads."""

    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self._in_script = True
            if a.get("src"):
                self.refs.append(a["src"])
        if tag == "link" and "stylesheet" in (a.get("rel") or "") and a.get("href"):
            self.refs.append(a["href"])

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.refs += re.findall(r"""import\s*\(\s*["']([^"']+)""", data)
            self.refs += re.findall(r"""\bsrc\s*=\s*["']([^"']+)""", data)


def external_scripts(page: str) -> list[str]:
    p = _Refs()
    p.feed(page)
    return [u for u in p.refs if re.match(r"^([a-z][a-z0-9+.-]*:)?//", u, re.I)]


def test_html_pages_load_nothing_from_the_network(small_build):
    html_dir = small_build["build"] / "html"
    pages = sorted(html_dir.glob("*.html"))
    assert [p.name for p in pages] == ["a_hangs.html", "api.html", "b_raises.html", "c_fine.html",
                                       "index.html"]  # three notebooks, the API page, the index
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert external_scripts(text) == [], page.name
    fine = (html_dir / "c_fine.html").read_text(encoding="utf-8")
    m = re.search(r'<script src="(mathjax/MathJax\.js)\?config=([^",]+)', fine)
    assert m, "the page loads MathJax from the folder beside it"
    assert (html_dir / m.group(1)).is_file()
    assert (html_dir / "mathjax" / "config" / f"{m.group(2)}.js").is_file()
    assert "$E = mc^2$" in fine  # MathJax typesets it in the browser


def test_the_offline_check_catches_nbconverts_default_page():
    from nbconvert import HTMLExporter

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("$x$")])
    body, _ = HTMLExporter().from_notebook_node(nb)
    assert any("mathjax" in u.lower() for u in external_scripts(body))


# ---------------------------------------------------------------------------------------------
# Colab: installing llmtrain keeps Colab's own torch, transformers and ipywidgets

def _colab_pip_args() -> list[str]:
    """The pip arguments of the setup cell every notebook ships (parsed, not retyped)."""
    tree = ast.parse(nbtool.setup_source())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and ast.unparse(n.func) == "subprocess.run"]
    assert len(calls) == 1
    argv = calls[0].args[0]
    assert ast.unparse(argv.elts[0]) == "sys.executable"
    strings = [ast.literal_eval(e) for e in argv.elts[1:]]
    assert strings[:2] == ["-m", "pip"]
    return strings[2:]


def _fake_wheel(folder: Path, name: str, version: str, requires: str = "") -> None:
    dist = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        z.writestr(f"{dist}/METADATA",
                   f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{requires}")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")


def _llmtrain_requires() -> str:
    """llmtrain's METADATA requirement lines, from pyproject.toml (what pip resolves)."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((nbtool.ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = [f"Requires-Dist: {r}" for r in project["dependencies"]]
    for extra, reqs in project["optional-dependencies"].items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f'Requires-Dist: {r}; extra == "{extra}"' for r in reqs]
    return "\n".join(lines) + "\n"


def _fake_installed(site: Path, name: str, version: str) -> None:
    d = site / f"{name}-{version}.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (d / "INSTALLER").write_text("pip\n")


# A Colab-like runtime: versions at the low end of llmtrain's ranges (Colab ships ipywidgets 7.7.1).
COLAB = {"torch": "2.8.0", "transformers": "4.56.0", "ipywidgets": "7.7.1", "sympy": "1.13.1",
         "matplotlib": "3.10.0", "pygments": "2.19.1"}


def _dry_run(tmp_path: Path, installed: dict[str, str]) -> list[str]:
    """What the setup cell's pip command would install, as `name==version`, in a runtime that
    has `installed`, while the index offers a newer release (99.0) of every dependency.

    Offline: llmtrain itself is a wheel with pyproject.toml's requirements (the setup cell's
    git URL is swapped for it); the runtime's packages are dist-info folders put first on
    sys.path, so pip sees their versions and not this venv's."""
    site, index = tmp_path / "site", tmp_path / "index"
    index.mkdir()
    for name in COLAB:
        _fake_wheel(index, name, "99.0")
    _fake_wheel(index, "llmtrain", "99.0", _llmtrain_requires())  # not the one this venv has
    for name, version in installed.items():
        _fake_installed(site, name, version)
    args = _colab_pip_args()
    assert args[-1].startswith("llmtrain[hf] @ git+"), args
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", *args[:-1], "llmtrain[hf]==99.0",
           "--dry-run", "--report", str(report), "--no-index", "--find-links", str(index),
           "--disable-pip-version-check"]
    # only the fake index: no pip config files, no PIP_* settings of this machine
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PYTHONPATH=str(site), PIP_CONFIG_FILE=os.devnull)
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True, timeout=300)
    return sorted(f"{i['metadata']['name']}=={i['metadata']['version']}"
                  for i in json.loads(report.read_text())["install"])


def test_colab_install_keeps_colabs_packages(tmp_path):
    assert _dry_run(tmp_path, COLAB) == ["llmtrain==99.0"]


def test_colab_install_check_can_fail(tmp_path):
    too_old = {**COLAB, "torch": "2.6.0"}  # below torch>=2.8: pip must upgrade it
    assert _dry_run(tmp_path, too_old) == ["llmtrain==99.0", "torch==99.0"]


# ---------------------------------------------------------------------------------------------
# make lab as root; make test-portable; CI

def _make_n(target: str) -> str:
    return subprocess.run(["make", "-n", target], cwd=nbtool.ROOT, capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX only")
def test_make_lab_allows_root_only_as_root():
    lab = [line for line in _make_n("lab").splitlines() if "jupyter lab" in line]
    assert len(lab) == 1
    assert ("--allow-root" in lab[0]) == (os.getuid() == 0)


def test_make_test_portable_runs_nbval_under_two_other_cpus():
    text = _make_n("test-portable")
    assert "ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2" in text
    assert "ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41" in text
    assert "pytest notebooks --nbval" in text
    ci = (nbtool.ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "time make test " in ci and "make test-portable" in ci and "make venv\n" in ci
    # CI drops only the pass whose kernels make test just ran (AVX2 on an AVX2 CPU)
    assert 'if [ "$native" = AVX2 ]; then portable=base; else portable="avx2 base"; fi' in ci
    one = subprocess.run(["make", "-n", "test-portable", "PORTABLE=base"], cwd=nbtool.ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "for isa in base;" in one and "for isa in avx2 base;" in text


def test_make_test_portable_refuses_an_unknown_pass():
    r = subprocess.run(["make", "test-portable", "PORTABLE=avx9", "STAMP=Makefile"], cwd=nbtool.ROOT,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "PORTABLE: 'avx9' is not one of: avx2 base" in r.stdout


# ---------------------------------------------------------------------------------------------
# Figures: tests never write into the tree; what the notebooks write is compared

def test_tests_write_figures_to_a_temporary_folder():
    out = Path(os.environ["LLMTRAIN_FIGURES"]).resolve()
    assert out != (nbtool.ROOT / "figures").resolve()
    from llmtrain import plots

    assert plots.figures_dir().resolve() == out


def test_compare_figures_lists_each_differing_file(tmp_path):
    tracked, written = tmp_path / "figures", tmp_path / "out"
    tracked.mkdir()
    written.mkdir()
    (tracked / "a.png").write_bytes(b"same")
    (written / "a.png").write_bytes(b"same")
    (tracked / "b.svg").write_bytes(b"old")
    (written / "b.svg").write_bytes(b"new")
    (written / "c.png").write_bytes(b"untracked")
    (tracked / "d.png").write_bytes(b"not written this run: not compared")
    bad = nbtool.compare_figures(written, tracked)
    assert [line.split(":")[0] for line in bad] == ["b.svg", "c.png"]
    assert nbtool.compare_figures(written, tracked, since=os.path.getmtime(written / "c.png") + 10) == []


def test_a_run_that_writes_a_differing_figure_fails_with_its_name(tmp_path):
    """The session check of conftest.py, end to end: a figure that differs from figures/ fails
    the run (exit 1) and is named; the tracked file is untouched."""
    tracked = nbtool.ROOT / "figures" / "01_peak_lr_vs_params.png"
    before = tracked.read_bytes()
    (tmp_path / "test_fig.py").write_text(
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "from llmtrain import plots\n\n"
        "def test_draw():\n"
        "    fig, ax = plt.subplots()\n"
        "    ax.plot([0, 1], [1, 0])\n"
        "    plots.save(fig, '01_peak_lr_vs_params')\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "LLMTRAIN_FIGURES"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider",
                        "-q", str(tmp_path / "test_fig.py")], cwd=nbtool.ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 passed" in r.stdout
    assert "01_peak_lr_vs_params.png: differs from figures/01_peak_lr_vs_params.png" in r.stdout
    assert tracked.read_bytes() == before


def test_a_signal_stops_the_whole_run(tmp_path):
    """SIGTERM (or Ctrl-C) while a notebook runs stops the run: nbclient's own handler would only
    fail that notebook and go on with the next."""
    import signal
    import time

    code = nbformat.v4.new_code_cell
    started = tmp_path / "started"
    first = _nb(tmp_path / "a_sleeps.ipynb",
                code(f"import time\nopen({str(started)!r}, 'w').close()\ntime.sleep(120)"))
    second = _nb(tmp_path / "b_never.ipynb", code("print('ran')"))
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import notebooks; from pathlib import Path; "
              "sys.exit(notebooks.run([Path(a) for a in sys.argv[3:]], False, build=Path(sys.argv[2]), timeout=100))")
    p = subprocess.Popen([sys.executable, "-c", script, str(nbtool.ROOT / "scripts"), str(tmp_path / "build"),
                          str(first), str(second)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.monotonic()
    while not started.exists() and time.monotonic() - t0 < 120:
        time.sleep(0.2)  # the first notebook's cell is running
    time.sleep(1)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130, out
    assert "STOPPED at a_sleeps" in out and "executing" in out and "b_never" not in out.split("STOPPED")[0]
    assert not (tmp_path / "build" / "notebooks" / "b_never.ipynb").exists()
    index = (tmp_path / "build" / "html" / "index.html").read_text(encoding="utf-8")
    assert re.search(r"<td>a_sleeps</td>.*<td>STOPPED</td><td>([0-9.]+)</td>", index)
    assert float(re.search(r"<td>STOPPED</td><td>([0-9.]+)</td>", index)[1]) > 0  # its seconds
    assert "<td>b_never</td><td>b_never</td><td>not run</td>" in index  # listed, not dropped


def test_a_signal_during_a_refresh_leaves_the_stored_notebook_as_it_was(tmp_path):
    """`make notebooks` executes in place: stopped half-way, it must not store half the outputs."""
    import signal
    import time

    code = nbformat.v4.new_code_cell
    started = tmp_path / "started"
    nb = _nb(tmp_path / "a_sleeps.ipynb", code("print('stored output')"),
             code(f"import time\nopen({str(started)!r}, 'w').close()\ntime.sleep(120)"))
    stored = nb.read_bytes()
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import notebooks; from pathlib import Path; "
              "sys.exit(notebooks.run([Path(sys.argv[2])], True, timeout=100))")
    p = subprocess.Popen([sys.executable, "-c", script, str(nbtool.ROOT / "scripts"), str(nb)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.monotonic()
    while not started.exists() and time.monotonic() - t0 < 120:
        time.sleep(0.2)
    time.sleep(1)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130 and "STOPPED at a_sleeps" in out, out
    assert nb.read_bytes() == stored


def test_jupyterlab_lists_each_notebook_once_and_saving_it_keeps_the_pair(tmp_path):
    """notebooks/jupytext.toml: in JupyterLab (`make lab`, rooted at notebooks/) the .ipynb is the
    notebook and the paired .py a plain file; saving the .ipynb still rewrites the .py."""
    import shutil

    from jupyter_server.services.contents.largefilemanager import LargeFileManager
    from jupytext.sync_contentsmanager import build_sync_jupytext_contents_manager_class

    stem = "05_data_parallel_zero"
    for name in ("jupytext.toml", f"{stem}.py", f"{stem}.ipynb"):
        shutil.copy(nbtool.NOTEBOOKS / name, tmp_path / name)
    cm = build_sync_jupytext_contents_manager_class(LargeFileManager)(root_dir=str(tmp_path))
    listed = {e["name"]: e["type"] for e in cm.get("", content=True)["content"]}
    assert listed == {f"{stem}.ipynb": "notebook", f"{stem}.py": "file", "jupytext.toml": "file"}
    model = cm.get(f"{stem}.ipynb", content=True)
    model["content"]["cells"][0]["source"] += "\n\nedited in Lab"
    cm.save(model, f"{stem}.ipynb")
    assert "# edited in Lab" in (tmp_path / f"{stem}.py").read_text(encoding="utf-8")


def test_nbval_waits_for_a_loaded_machine_but_not_forever():
    for target in ("test", "test-portable"):
        text = _make_n(target)
        assert "--nbval-kernel-startup-timeout=300" in text, target  # nbval's default: 60 s
        assert f"--nbval-cell-timeout={nbtool.TIMEOUT_S}" in text, target  # as make run
