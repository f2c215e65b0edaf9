"""pytest, every run (tests/ and notebooks/ alike; this file sits above both).

Figures never go into the tree: before any test or notebook kernel starts, LLMTRAIN_FIGURES
points ``llmtrain.plots.save`` at a temporary folder (nbval's kernels inherit the environment).
At the end of the session every figure a notebook wrote there must be byte-identical to the
tracked file in figures/: figures are drawn from numbers that hold on every CPU, so a run on
any machine leaves the tree clean. A differing figure fails the session with the list of files.
The temporary folder is removed when every figure agrees, kept otherwise. Set LLMTRAIN_FIGURES
yourself to keep the figures (they are still compared, unless it is figures/ itself).

OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE, unless set), in the tests and in nbval's
kernels: threads spinning for cores that another process needs made a loaded machine 20x slower
(scripts/notebooks.py KERNEL_ENV; tests/test_load.py).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: OpenMP reads it once
ROOT = Path(__file__).resolve().parent
_START = time.time() - 1.0  # file times may be rounded down to the second
_OWN = not os.environ.get("LLMTRAIN_FIGURES")  # our temporary folder: removed if all agree
if _OWN:
    os.environ["LLMTRAIN_FIGURES"] = tempfile.mkdtemp(prefix="llmtrain-figures-")
FIGURES_OUT = Path(os.environ["LLMTRAIN_FIGURES"])
_differing: list[str] = []


def pytest_report_header(config):
    import torch

    isa = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")
           if k in os.environ}
    return [f"torch {torch.__version__}, CPU kernels: {torch.backends.cpu.get_cpu_capability()}"
            + (f" (set: {' '.join(f'{k}={v}' for k, v in isa.items())})" if isa else ""),
            f"figures -> {FIGURES_OUT} (compared with figures/ at the end)"]


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    import sys

    tracked = ROOT / "figures"
    if not FIGURES_OUT.is_dir() or FIGURES_OUT.resolve() == tracked.resolve():
        return
    sys.path.insert(0, str(ROOT / "scripts"))
    import notebooks  # scripts/notebooks.py

    _differing[:] = notebooks.compare_figures(FIGURES_OUT, tracked, since=_START)
    if _differing and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if _OWN and not _differing:
        import shutil

        shutil.rmtree(FIGURES_OUT, ignore_errors=True)  # kept when a figure differs, to look at


def pytest_terminal_summary(terminalreporter):
    if _differing:
        terminalreporter.section("figures differ from figures/ (must be byte-identical on every CPU)",
                                 red=True)
        for line in _differing:
            terminalreporter.line(f"  {line}")
        terminalreporter.line(f"  written to {FIGURES_OUT}; compare: cmp {FIGURES_OUT}/NAME figures/NAME")


# The Chinese notebooks (notebooks/zh/) are the English ones with Chinese markdown: nbval runs
# the English only; tests/test_zh.py checks that the Chinese are in step with them.
collect_ignore_glob = ["notebooks/zh/*"]
