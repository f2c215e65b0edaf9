"""scripts/gpu_check.py's CPU dry run (CI), and llmtrain.gpu_results reading what it writes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llmtrain import gpu_results

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    assert run.returncode == 0, run.stderr
    files = sorted(out.iterdir())
    return out, files, run, seconds


def test_dry_run_writes_one_json_and_one_markdown(dry_run):
    out, files, run, seconds = dry_run
    assert [f.suffix for f in files] == [".json", ".md"]
    assert files[0].stem == files[1].stem
    assert seconds < 120  # measured about 20 s on 2 shared cores; the brief asks < 60 s unloaded


def test_dry_run_file_has_the_schema_and_is_marked(dry_run):
    out, files, run, _ = dry_run
    results = gpu_results.load(files[0])  # validates
    assert results["dry_run"] is True and results["device"] == "cpu"
    assert results["torch"] == torch.__version__
    assert set(results["sections"]) == set(gpu_results.SECTIONS)
    mm = results["sections"]["matmul"]["values"]
    assert all(mm[k] > 0 for k in ("fp32", "bf16", "fp16"))  # each path ran and timed something
    step = results["sections"]["autocast_step"]["values"]
    assert step["fp32_ms"] > 0 and step["autocast_ms"] > 0
    (peak,) = results["sections"]["memory_peak"]["values"]["runs"]
    # on the CPU the tracker is exact and so is the estimate's step peak for this model
    assert peak["measured_peak"] > 0 and abs(peak["step_peak_error"]) < 0.05
    fw = results["sections"]["framework"]["values"]
    assert fw["context_after_init"] > 0  # the fresh-process probe ran and reported
    assert files[1].read_text(encoding="utf-8") == gpu_results.markdown(results)
    assert "Dry run on the CPU" in files[1].read_text(encoding="utf-8")


def test_a_dry_run_is_never_shown_as_a_measurement(dry_run):
    out, *_ = dry_run
    assert gpu_results.latest(out) is None
    assert gpu_results.section("matmul", out) == gpu_results.NO_RESULTS
    assert "\n" not in gpu_results.NO_RESULTS


def fake(dry_results: dict, card: str, date: str, dry: bool = False) -> dict:
    r = json.loads(json.dumps(dry_results))
    r.update(dry_run=dry, card=card, date=date, device="cuda", cuda="12.8", torch="2.13.0+cu128")
    r["sections"]["matmul"]["rows"] = [["bf16 8192×8192", "701.3", "2.10× tf32"],
                                       ["fp8 8192×8192", "1302", "3.90× tf32"]]
    return r


def test_the_newest_measurement_is_found_and_formatted(dry_run, tmp_path):
    _, files, *_ = dry_run
    base = gpu_results.load(files[0])
    for name, card, date in [("old.json", "NVIDIA A100-SXM4-80GB", "2026-01-01T00:00:00Z"),
                             ("new.json", "NVIDIA H100 80GB HBM3", "2026-06-01T00:00:00Z")]:
        (tmp_path / name).write_text(json.dumps(fake(base, card, date)), encoding="utf-8")
    (tmp_path / "newer-dry.json").write_text(json.dumps(fake(base, "X", "2027-01-01T00:00:00Z", dry=True)))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"schema": 99}))
    path, results = gpu_results.latest(tmp_path)
    assert path.name == "new.json" and results["card"] == "NVIDIA H100 80GB HBM3"
    text = gpu_results.section("matmul", tmp_path)
    first = text.splitlines()[0]
    assert first.startswith("measured on NVIDIA H100 80GB HBM3, torch 2.13.0+cu128, CUDA 12.8, "
                            "date 2026-06-01T00:00:00Z")
    assert "results/gpu/new.json" in first
    assert "bf16 8192×8192" in text and "701.3" in text
    assert gpu_results.section("framework", tmp_path).splitlines()[1].startswith("Framework constants")
    fp8 = gpu_results.section("matmul", tmp_path, only="fp8")
    assert "fp8 8192×8192" in fp8 and "bf16" not in fp8 and fp8.splitlines()[0] == first


def test_results_dir_is_the_checkouts_or_the_environments(monkeypatch, tmp_path):
    monkeypatch.delenv(gpu_results.ENV_VAR, raising=False)
    assert gpu_results.results_dir() == ROOT / "results" / "gpu"
    monkeypatch.setenv(gpu_results.ENV_VAR, str(tmp_path))
    assert gpu_results.results_dir() == tmp_path
    assert gpu_results.section("matmul") == gpu_results.NO_RESULTS  # an empty folder


def test_bad_input_names_the_argument(dry_run, tmp_path):
    _, files, *_ = dry_run
    base = gpu_results.load(files[0])
    with pytest.raises(ValueError, match="name must be one of"):
        gpu_results.section("speed", tmp_path)
    with pytest.raises(ValueError, match="only must be"):
        gpu_results.format_section(base, "matmul", only="")
    with pytest.raises(ValueError, match="directory must be"):
        gpu_results.latest(3)
    with pytest.raises(ValueError, match="results must be a dict"):
        gpu_results.validate([])
    with pytest.raises(ValueError, match="must have the field 'card'"):
        gpu_results.validate({k: v for k, v in base.items() if k != "card"})
    bad = json.loads(json.dumps(base))
    bad["sections"]["matmul"]["rows"][0] = ["only two", "strings"]
    with pytest.raises(ValueError, match=r"\['rows'\]\[0\] must be a list of three strings"):
        gpu_results.validate(bad)
    (tmp_path / "x.json").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="x.json"):
        gpu_results.load(tmp_path / "x.json")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the full run would start")
def test_without_a_gpu_the_full_run_refuses_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--dry-run" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())
