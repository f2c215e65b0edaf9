"""Stored GPU measurements: what ``scripts/gpu_check.py`` wrote, read back for a notebook.

The GPU-only cells of the notebooks (matmul throughput, an autocast training step, FP8's
``torch._scaled_mm``, ``torch.cuda.max_memory_allocated`` against ``memory.estimate``, the
framework constants of the slides' "其他") can run only where a GPU is. ``scripts/gpu_check.py``
runs all of them in one command on a GPU machine and writes ``results/gpu/<card>.json`` (and a
markdown table beside it). Where no GPU is present, a notebook prints the stored numbers instead:

    print(gpu_results.section("matmul"))   # "measured on NVIDIA H100 …, torch …, date …" + table

or, while ``results/gpu/`` holds no measurement yet, one line saying so (``NO_RESULTS``).
Files marked ``dry_run`` (the script's CPU rehearsal with tiny sizes) are never shown.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import check

__all__ = ["SCHEMA", "SECTIONS", "NO_RESULTS", "results_dir", "validate", "load", "latest",
           "format_section", "section", "markdown"]

SCHEMA = 1
# section name -> its title in the markdown table
SECTIONS = {
    "matmul": "Matmul throughput (dense, TFLOP/s)",
    "autocast_step": "One training step: fp32 against torch.autocast",
    "memory_peak": "Peak of a training step: torch.cuda.max_memory_allocated against memory.estimate",
    "framework": "Framework constants (slides' 其他): CUDA context and allocator",
}
NO_RESULTS = ("no GPU here and no stored GPU measurement in results/gpu/ yet "
              "(run scripts/gpu_check.py on a GPU machine)")
ENV_VAR = "LLMTRAIN_GPU_RESULTS"
_TOP = {"schema": int, "dry_run": bool, "card": str, "date": str, "torch": str, "cuda": (str, type(None)),
        "device": str, "seconds": (int, float), "sections": dict}


def results_dir() -> Path:
    """Where results live: $LLMTRAIN_GPU_RESULTS, else the checkout's results/gpu/ (when the
    package runs from a checkout, as ``plots.figures_dir`` decides), else ./results/gpu."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "notebooks").is_dir():
        return repo / "results" / "gpu"
    return Path.cwd() / "results" / "gpu"


def validate(results: Any) -> dict:
    """``results`` if it has the schema ``gpu_check.py`` writes; else ValueError naming the field."""
    if not isinstance(results, dict):
        check.fail("results", "a dict (the JSON object gpu_check.py writes)", results)
    for key, kind in _TOP.items():
        if key not in results:
            raise ValueError(f"results must have the field {key!r}; it has {sorted(results)}")
        if not isinstance(results[key], kind) or (kind is int and isinstance(results[key], bool)):
            check.fail(f"results[{key!r}]", f"of type {kind}", results[key])
    if results["schema"] != SCHEMA:
        check.fail("results['schema']", f"{SCHEMA} (this llmtrain's schema)", results["schema"])
    for name in SECTIONS:
        sec = results["sections"].get(name)
        if not isinstance(sec, dict) or not isinstance(sec.get("rows"), list) \
                or not isinstance(sec.get("values"), dict):
            raise ValueError(f"results['sections'] must have a section {name!r} with a list of "
                             "'rows' (what is shown) and a dict of 'values' (the raw numbers)")
        for i, row in enumerate(sec["rows"]):
            if not (isinstance(row, list) and len(row) == 3 and all(isinstance(x, str) for x in row)):
                check.fail(f"results['sections'][{name!r}]['rows'][{i}]",
                           "a list of three strings [quantity, value, note]", row)
    return results


def load(path: Any) -> dict:
    """Read and validate one results file."""
    if not isinstance(path, (str, os.PathLike)):
        check.fail("path", "a file path", path)
    path = Path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"path {str(path)!r} must be a readable JSON results file: {e}") from None
    return validate(results)


def latest(directory: Any = None) -> tuple[Path, dict] | None:
    """The newest (by its ``date``) valid, non-dry-run results file in ``directory``
    (default ``results_dir()``) and its contents; None if there is none."""
    if directory is not None and not isinstance(directory, (str, os.PathLike)):
        check.fail("directory", "a folder path or None", directory)
    folder = results_dir() if directory is None else Path(directory)
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            results = load(path)
        except ValueError:
            continue  # not ours, or an older schema: never shown as a measurement
        if not results["dry_run"]:
            found.append((results["date"], str(path), path, results))
    if not found:
        return None
    _, _, path, results = max(found, key=lambda f: (f[0], f[1]))
    return path, results


def format_section(results: dict, name: str, source: str | None = None,
                   only: str | None = None) -> str:
    """One section of ``results`` as text: a header line (card, torch, CUDA, date) and a table
    (with ``only``: the rows whose quantity contains that text)."""
    results = validate(results)
    check.one_of("name", name, tuple(SECTIONS))
    if only is not None and (not isinstance(only, str) or not only):
        check.fail("only", "a non-empty string (text of the rows' quantity) or None", only)
    sec = results["sections"][name]
    where = f" ({source})" if source else ""
    kind = "DRY RUN on the CPU (tiny sizes, not a measurement)" if results["dry_run"] else "measured"
    head = (f"{kind} on {results['card']}, torch {results['torch']}, CUDA {results['cuda']}, "
            f"date {results['date']}{where}")
    lines = [head, f"{SECTIONS[name]}:"]
    rows = [r for r in sec["rows"] if only is None or only in r[0]]
    if sec.get("skipped"):
        lines.append(f"  skipped: {sec['skipped']}")
    w = max([len(r[0]) for r in rows] + [8])
    v = max([len(r[1]) for r in rows] + [5])
    for quantity, value, note in rows:
        lines.append(f"  {quantity:<{w}}  {value:>{v}}  {note}".rstrip())
    return "\n".join(lines)


def section(name: str, directory: Any = None, only: str | None = None) -> str:
    """What a GPU-only cell prints where no GPU is: the stored section ``name`` of the newest
    measurement (``only``: its rows whose quantity contains that text), or ``NO_RESULTS``
    (one line)."""
    check.one_of("name", name, tuple(SECTIONS))
    found = latest(directory)
    if found is None:
        return NO_RESULTS
    path, results = found
    return format_section(results, name, source=f"results/gpu/{path.name}", only=only)


def markdown(results: dict) -> str:
    """The whole of ``results`` as a short markdown document (what gpu_check.py writes as .md)."""
    results = validate(results)
    kind = "Dry run on the CPU (tiny sizes: not a measurement)" if results["dry_run"] else "Measured"
    out = [f"# GPU check: {results['card']}", "",
           f"{kind} by `scripts/gpu_check.py` on {results['date']}: torch {results['torch']}, "
           f"CUDA {results['cuda']}, device `{results['device']}`, {results['seconds']:.0f} s.", ""]
    for name, title in SECTIONS.items():
        sec = results["sections"][name]
        out += [f"## {title}", ""]
        if sec.get("skipped"):
            out += [f"Skipped: {sec['skipped']}", ""]
        if sec["rows"]:
            out += ["| quantity | value | note |", "|---|---:|---|"]
            out += [f"| {q} | {v} | {n} |" for q, v, n in sec["rows"]]
            out.append("")
    return "\n".join(out)
