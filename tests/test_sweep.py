"""The batch × learning-rate sweep (llmtrain.recipes.sweep, scripts/sweep_batch_lr.py) and its
committed data (results/batch_lr_sweep.json).

Oracles: the script's own --small run (records complete, the fit runs on them); the committed
file's schema and the fit the notebook prints (recomputed here, rounded as printed); the
table's rows placed against hparam_laws.place by hand.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmtrain.cost import hparam_laws as hl
from llmtrain.recipes import settings, sweep, train

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "sweep_batch_lr.py"
DATA = ROOT / "results" / "batch_lr_sweep.json"
KEYS = {"budget_tokens", "seq_len", "batch_size", "batch_tokens", "peak_lr", "steps",
        "flops_per_token", "compute_flops", "eval_loss", "train_loss", "seconds"}


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_small_sweep_writes_complete_records_and_the_fit_runs_on_them(tmp_path):
    out = tmp_path / "s.json"
    p = _run("--small", "--quiet", "--out", str(out))
    assert p.returncode == 0, p.stderr
    data = json.loads(out.read_text())
    grid = sweep.SMALL
    n = len(grid["budgets_tokens"]) * len(grid["batch_sizes"]) * len(grid["peak_lrs"])
    assert data["command"] == "python scripts/sweep_batch_lr.py --small"
    assert data["seed"] == 0 and data["torch"] == torch.__version__ and data["threads"] == 1
    assert len(data["records"]) == n
    for r in data["records"]:
        assert set(r) == KEYS
        assert r["steps"] * r["batch_tokens"] == r["budget_tokens"]
        assert r["compute_flops"] == r["flops_per_token"] * r["budget_tokens"]
        assert math.isfinite(r["eval_loss"]) and r["eval_loss"] > 0
    fit = hl.fit_hparam_laws(data["records"])
    assert math.isfinite(fit["lr"].exponent) and math.isfinite(fit["batch_tokens"].exponent)


@pytest.mark.parametrize("args", [["--out", "x.txt"], ["--bogus"], ["--out", "/no/such/dir/x.json"]])
def test_bad_command_lines_are_one_line_and_exit_2(args):
    p = _run(*args, timeout=60)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("sweep_batch_lr.py")


def test_help_shows_the_usage():
    p = _run("--help", timeout=60)
    assert p.returncode == 0 and "--small" in p.stdout and "--out" in p.stdout


def test_run_is_deterministic_and_scores_held_out_tokens():
    tokens = train.corpus(4096 + 1024, 256, 0)
    kw = dict(budget_tokens=1024, batch_size=4, peak_lr=1e-2, seq_len=32,
              tokens=tokens[:4096], eval_tokens=tokens[4096:])
    a, b = sweep.run("tiny", **kw), sweep.run("tiny", **kw)
    assert a["eval_loss"] == b["eval_loss"] and a["steps"] == 8
    assert a["flops_per_token"] == hl.non_embedding_flops_per_token(2, 64, 32)
    # an untrained model scores about ln V on held-out tokens; 8 steps already do better
    assert a["eval_loss"] < math.log(256)


def test_held_out_loss_of_an_untrained_model_is_near_ln_v():
    from llmtrain.model.llama import Llama
    from llmtrain.model.shapes import get
    torch.manual_seed(0)
    loss = sweep.held_out_loss(Llama(get("tiny")), train.corpus(1024, 256, 1), 64)
    assert abs(loss - math.log(256)) < 0.3


def test_place_table_places_the_sized_rows_with_their_batch_and_lr():
    placed = {p["model"]: p for p in sweep.place_table()}
    assert set(placed) == {r.model for r in hl.TRAINING_RUNS}
    ds = placed["DeepSeek"]
    assert ds["batch_tokens"] == 4608 * 4096 and ds["peak_lr"] == 3.2e-4
    gpt3 = placed["GPT-3"]
    assert gpt3["batch_tokens"] == settings.get("GPT-3").batch_tokens_end == 3_200_000
    assert gpt3 == hl.place(hl.TRAINING_RUNS[0], 3_200_000, 6e-5)


@pytest.mark.parametrize("call, name", [
    (lambda: sweep.run("tiny", budget_tokens=1000, batch_size=4, peak_lr=1e-2, seq_len=32,
                       tokens=train.corpus(2048, 256, 0), eval_tokens=train.corpus(64, 256, 1)),
     "budget_tokens"),
    (lambda: sweep.run("tiny", budget_tokens=1024, batch_size=4, peak_lr=0, seq_len=32,
                       tokens=train.corpus(2048, 256, 0), eval_tokens=train.corpus(64, 256, 1)),
     "peak_lr"),
    (lambda: sweep.sweep("tiny", budgets_tokens=[], batch_sizes=[4], peak_lrs=[1e-2]),
     "budgets_tokens"),
    (lambda: sweep.sweep("tiny", budgets_tokens=[1024], batch_sizes=[0], peak_lrs=[1e-2]),
     "batch_sizes"),
    (lambda: sweep.held_out_loss(torch.nn.Linear(2, 2), train.corpus(10, 256, 0), 64), "tokens"),
    (lambda: sweep.place_table(["GPT-3"]), "table"),
    (lambda: sweep.load("/no/such/sweep.json"), "path"),
    (lambda: sweep.load(3), "path"),
])
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# --- the committed data ---------------------------------------------------------------------

def _data():
    assert sweep.DATA == DATA
    return sweep.load()


def test_committed_sweep_has_its_provenance_and_the_full_grid():
    data = _data()
    for key in ("command", "seed", "torch", "cpu", "platform", "seconds", "cpu_seconds",
                "threads", "schedule", "grid"):
        assert key in data
    assert data["command"] == "python scripts/sweep_batch_lr.py" and data["threads"] == 1
    grid = sweep.FULL
    assert data["grid"] == {k: list(v) if isinstance(v, tuple) else v for k, v in grid.items()}
    cells = {(r["budget_tokens"], r["batch_size"], r["peak_lr"]) for r in data["records"]}
    assert len(cells) == len(data["records"]) == (
        len(grid["budgets_tokens"]) * len(grid["batch_sizes"]) * len(grid["peak_lrs"]))
    for r in data["records"]:
        assert set(r) == KEYS
        assert r["steps"] * r["batch_tokens"] == r["budget_tokens"]


# The fit the notebook prints (notebook 13, §4), rounded as printed. Reproduced from the file.
PRINTED_FIT = {"lr": -0.06, "batch_tokens": 0.31}


def test_the_notebooks_fit_of_the_committed_sweep_is_reproducible():
    records = _data()["records"]
    a, b = hl.fit_hparam_laws(records), hl.fit_hparam_laws(list(reversed(records)))
    for k in ("lr", "batch_tokens"):
        assert a[k].exponent == pytest.approx(b[k].exponent, abs=1e-12)
        assert round(a[k].exponent, 2) == PRINTED_FIT[k]
    # what the notebook says about them: both directions as DeepSeek's, six near-optimal runs
    assert a["lr"].exponent < 0 < a["batch_tokens"].exponent
    assert sum(len(v) for v in a["near_optimal"].values()) == 6
