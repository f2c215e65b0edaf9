"""μP against SP (llmtrain.recipes.mup) and the sweep that measures learning-rate transfer
(scripts/sweep_mup.py, results/mup_transfer.json).

Oracles: the rules of the ``mup`` package for Adam (microsoft/mup: MuReadout multiplies the
readout's input by 1/width_mult; MuAdam divides the lr of matrix-like parameters, both dimensions
growing with width, by width_mult and multiplies their weight decay by it; constant_std_init_
multiplies their init std by width_mult^-1/2; vector-like parameters keep lr and init), and the
SP model itself at m = 1.
"""

import functools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmtrain.model.llama import Llama
from llmtrain.model.shapes import get
from llmtrain.recipes import mup
from llmtrain.recipes.train import train

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "sweep_mup.py"
TINY = get("tiny")
HIDDEN_NAMES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_width_shape_keeps_head_width_and_scales_heads_and_mlp():
    s = mup.width_shape(256)
    assert (s.hidden_size, s.num_heads, s.num_kv_heads, s.intermediate_size, s.d_head) == (
        256, 16, 8, 704, 16)  # tiny: 64, 4 heads, 2 kv heads, 176; d_head 16 kept
    assert (s.num_layers, s.vocab_size, s.max_seq_len) == (2, 256, 64)
    assert mup.width_shape(64) == TINY.replace(head_dim=16, name="tiny-d64")
    small = mup.width_shape(32)
    assert (small.num_heads, small.num_kv_heads, small.intermediate_size) == (2, 1, 88)
    with pytest.raises(ValueError, match="d_model=40 gives a fractional num_heads"):
        mup.width_shape(40)
    with pytest.raises(ValueError, match="d_model"):
        mup.width_shape(0)
    with pytest.raises(ValueError, match="base must have untied"):
        mup.width_shape(64, TINY.replace(tie_embeddings=True))


@pytest.mark.parametrize("m", [0.5, 1, 2, 8])
def test_rules_are_the_mup_packages_for_adam(m):
    r = mup.rules(m, "mup")
    assert r["hidden"] == {"init_std": 0.02 / math.sqrt(m), "lr_scale": 1 / m, "wd_scale": m}
    for kind in ("embedding", "readout"):
        assert (r[kind]["init_std"], r[kind]["lr_scale"], r[kind]["wd_scale"]) == (0.02, 1, 1)
    assert r["norm"] == {"init_std": None, "lr_scale": 1.0, "wd_scale": 1.0}
    assert r["readout"]["output_mult"] == 1 / m
    sp = mup.rules(m, "sp")
    assert all(v["lr_scale"] == 1 and v["wd_scale"] == 1 for v in sp.values())
    assert sp["hidden"]["init_std"] == 0.02 and sp["readout"]["output_mult"] == 1


@pytest.mark.parametrize("width", [32, 64, 128, 256])
def test_built_models_and_groups_follow_the_rules(width):
    """Measured init stds (sample std of each tensor, within 5 %) and the groups' lr and decay
    equal ``rules`` at m = width / 64 (base tiny); the groups cover every parameter once."""
    m = width / 64
    sp, mu = mup.build(width, "sp", seed=1), mup.build(width, "mup", seed=1)
    r = mup.rules(m)
    for (name, p_sp), (_, p_mu) in zip(sp.named_parameters(), mu.named_parameters()):
        if name.split(".")[-2] in HIDDEN_NAMES:
            assert float(p_mu.detach().std()) == pytest.approx(r["hidden"]["init_std"], rel=0.05), name
            assert torch.allclose(p_mu, p_sp / math.sqrt(m))  # the same draws, rescaled
        else:
            assert torch.equal(p_mu, p_sp), name  # embedding, readout, norms: as SP
    assert float(mu.lm_head.weight.detach().std()) == pytest.approx(0.02, rel=0.05)
    assert mup.readout_mult(mu) == 1 / m and mup.readout_mult(sp) is None
    ids = torch.randint(256, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the readout multiplier: μP logits = lm_head(h) / m
        assert torch.allclose(mu(ids).logits,
                              torch.nn.functional.linear(mu.model(ids), mu.lm_head.weight) / m)
    groups = mup.param_groups(mu, 64, weight_decay=0.1)
    by_kind = {g["kind"]: g for g in groups}
    assert by_kind["hidden"]["lr_scale"] == 1 / m
    assert by_kind["hidden"]["weight_decay"] == pytest.approx(0.1 * m, rel=1e-15)
    assert len(by_kind["hidden"]["params"]) == 7 * 2  # 7 matrices per layer, 2 layers
    for kind in ("embedding", "readout"):
        assert (by_kind[kind]["lr_scale"], by_kind[kind]["weight_decay"]) == (1.0, 0.1)
    assert (by_kind["norm"]["lr_scale"], by_kind["norm"]["weight_decay"]) == (1.0, 0.0)
    ids_in_groups = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids_in_groups) == sorted(id(p) for p in mu.parameters())


def test_mup_at_base_width_trains_exactly_like_sp():
    """At m = 1 μP is SP: the same weights and, through train(), the same losses bit for bit."""
    sp, mu = mup.build(64, "sp", seed=3), mup.build(64, "mup", seed=3)
    kw = dict(steps=6, batch_size=4, seq_len=32, peak_lr=3e-3, weight_decay=0.1, seed=3)
    a = train(sp, **kw)
    b = train(mu, param_groups=functools.partial(mup.param_groups, base_d_model=64,
                                                 weight_decay=0.1), **kw)
    assert a.loss == b.loss and a.grad_norm == b.grad_norm
    assert all(torch.equal(p, q) for p, q in zip(sp.parameters(), mu.parameters()))


def test_mup_lr_scale_reaches_the_optimizer():
    """One Adam step from zero state moves every entry by about lr (Adam's first step is
    lr·sign(g)): lr for the embedding, lr/m for hidden matrices (m = 4 here)."""
    mu = mup.build(256, "mup", seed=0)
    before = {n: p.detach().clone() for n, p in mu.named_parameters()}
    train(mu, steps=1, batch_size=2, seq_len=16, peak_lr=1e-3, weight_decay=0.0, grad_clip=None,
          param_groups=functools.partial(mup.param_groups, base_d_model=64))
    delta = {n: float((p.detach() - before[n]).abs().max()) for n, p in mu.named_parameters()}
    assert delta["model.layers.0.mlp.up_proj.weight"] == pytest.approx(1e-3 / 4, rel=1e-3)
    assert delta["lm_head.weight"] == pytest.approx(1e-3, rel=1e-3)


def test_param_groups_refuse_a_model_of_another_parametrisation():
    with pytest.raises(ValueError, match="must be a μP model of base_d_model=64"):
        mup.param_groups(mup.build(128, "sp"), 64)
    with pytest.raises(ValueError, match="must be a μP model of base_d_model=32"):
        mup.param_groups(mup.build(128, "mup"), 32)  # built on base 64
    with pytest.raises(ValueError, match="model"):
        mup.param_groups("tiny", 64)
    with pytest.raises(ValueError, match="parametrisation"):
        mup.build(64, "ntk")
    with pytest.raises(ValueError, match="base_d_model"):
        mup.param_groups(mup.build(64, "mup"), 0)


def test_coordinate_check_logits_grow_with_width_under_sp_only():
    """The mup package's coordinate check: after 4 Adam steps at lr 1e-2 the logits' RMS at
    width 512 over width 64 is > 3 under SP and < 1.6 under μP (measured: about 5 and 1.1);
    the embedding's is flat under both."""
    out = {}
    for p in mup.PARAMETRISATIONS:
        recs = mup.coord_check([64, 512], p, steps=4)
        assert {r["where"] for r in recs} == {"embedding", "block 0", "block 1", "logits"}
        assert sorted({r["step"] for r in recs}) == [0, 1, 2, 3, 4]
        rms = {(r["width"], r["where"]): r["rms"] for r in recs if r["step"] == 4}
        out[p] = {w: rms[512, w] / rms[64, w] for w in ("embedding", "block 1", "logits")}
    assert out["sp"]["logits"] > 3 and out["mup"]["logits"] < 1.6
    assert out["sp"]["block 1"] > 10 and out["mup"]["block 1"] < 1.6
    assert all(0.8 < out[p]["embedding"] < 1.25 for p in out)
    with pytest.raises(ValueError, match="widths"):
        mup.coord_check([], "sp")


def test_best_lrs_skips_diverged_runs_and_prefers_the_smaller_lr_on_ties():
    recs = [{"parametrisation": "sp", "width": 32, "lr": 0.1, "heldout_loss": None},
            {"parametrisation": "sp", "width": 32, "lr": 0.01, "heldout_loss": 2.0},
            {"parametrisation": "sp", "width": 32, "lr": 0.001, "heldout_loss": 2.0},
            {"parametrisation": "mup", "width": 32, "lr": 0.1, "heldout_loss": 1.5}]
    assert mup.best_lrs(recs) == {("sp", 32): 0.001, ("mup", 32): 0.1}
    with pytest.raises(ValueError, match="records"):
        mup.best_lrs([])


def test_sweep_script_small_run_help_and_bad_input(tmp_path):
    out = tmp_path / "m.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--small", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    data = json.loads(out.read_text())
    _check_schema(data)
    assert len(data["records"]) == 2 * 2 * 2 and "--small" in data["command"]
    ok = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True,
                        timeout=60, cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.startswith("usage: python scripts/sweep_mup.py")
    for argv, msg in [(["--out", "m.txt"], "--out must be a path ending in .json"),
                      (["--out", "/no/such/dir/m.json"], "does not exist"),
                      (["--steps", "3"], "unrecognized arguments")]:
        bad = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True,
                             text=True, timeout=60, cwd=tmp_path)
        assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr
        assert bad.stderr.startswith("python scripts/sweep_mup.py: error:") and msg in bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def _check_schema(data):
    assert {"what", "grid", "records", "seconds", "cpu_seconds", "load_average_at_start", "cpu",
            "threads", "torch", "python", "command", "seed"} <= set(data)
    assert 0 < data["cpu_seconds"] <= data["seconds"] * 1.05 + 1  # one thread
    g = data["grid"]
    assert {"base_d_model", "widths", "lrs", "steps", "batch_size", "seq_len", "n_tokens",
            "seed", "base"} <= set(g)
    keys = {(r["parametrisation"], r["width"], r["lr"]) for r in data["records"]}
    assert keys == {(p, w, lr) for p in mup.PARAMETRISATIONS for w in g["widths"]
                    for lr in g["lrs"]}  # the whole grid, once each
    assert len(keys) == len(data["records"])
    for r in data["records"]:
        assert set(r) == {"parametrisation", "width", "lr", "train_loss", "heldout_loss"}
        assert r["heldout_loss"] is None or r["heldout_loss"] > 0


def test_load_transfer_says_how_to_make_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="run python scripts/sweep_mup.py"):
        mup.load_transfer(tmp_path / "none.json")


def test_committed_sweep_has_the_schema_and_the_full_grid():
    assert mup.TRANSFER_FILE == ROOT / "results" / "mup_transfer.json"
    data = mup.load_transfer()
    _check_schema(data)
    assert "--small" not in data["command"] and data["threads"] == 1
    assert data["grid"]["widths"] == [32, 64, 128, 256]
