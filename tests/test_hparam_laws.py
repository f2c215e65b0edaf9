"""DeepSeek LLM's scaling laws of hyperparameters (llmtrain.cost.hparam_laws).

Oracles: DeepSeek-AI 2024 (arXiv 2401.02954) itself — Eq. 2's M against the seven rows of its
Table 3, Eq. 1's laws against the 67B model of its Table 2 (batch 4608 × 4096 at 3.2e-4, chosen
"based on our findings in Section 3") — and exact synthetic power laws for the fit.
"""

from __future__ import annotations

import math

import pytest

from llmtrain.cost import hparam_laws as hl
from llmtrain.recipes import settings


# --- M and C ------------------------------------------------------------------------------

# DeepSeek-AI 2024, Table 3: (n_layer, d_model, M as printed); l_seq 4096 (printed on one row,
# the table's only sequence length), M printed to three significant digits.
TABLE_3 = [(8, 512, 352e6), (12, 768, 963e6), (24, 1024, 3.02e9), (24, 2048, 9.66e9),
           (32, 4096, 45.1e9), (40, 5120, 85.6e9), (80, 8192, 419e9)]


@pytest.mark.parametrize("n_layer, d_model, printed", TABLE_3)
def test_m_reproduces_every_row_of_deepseek_table_3(n_layer, d_model, printed):
    m = hl.non_embedding_flops_per_token(n_layer, d_model, 4096)
    assert abs(m - printed) <= 0.005 * printed


def test_m_is_an_exact_integer():
    # 72·2·64² + 12·2·64·64 for the tiny model at seq 64
    assert hl.non_embedding_flops_per_token(2, 64, 64) == 589_824 + 98_304 == 688_128


def test_compute_is_m_times_tokens():
    assert hl.compute_flops(688_128, 2**17) == 688_128 * 2**17


# --- the laws -------------------------------------------------------------------------------

def test_the_laws_are_deepseeks_equation_1():
    assert hl.DEEPSEEK_LAWS["lr"][:2] == (0.3118, -0.1250)
    assert hl.DEEPSEEK_LAWS["batch_tokens"][:2] == (0.2920, 0.3271)
    assert hl.NEAR_OPTIMAL_TOLERANCE == 0.0025
    c = 1e20
    assert hl.deepseek_lr(c) == pytest.approx(0.3118 * c**-0.125, rel=1e-12)
    assert hl.deepseek_batch_tokens(c) == pytest.approx(0.2920 * c**0.3271, rel=1e-12)


def test_deepseek_67b_lies_near_its_own_law():
    # Table 2: 67B, 95 layers of 8192, context 4096, 2.0T tokens, 4608 sequences, lr 3.2e-4.
    run = next(r for r in hl.TRAINING_RUNS if r.model == "DeepSeek")
    p = hl.place(run, 4608 * 4096, 3.2e-4)
    assert p["compute_flops"] == pytest.approx(9.94e23, rel=0.002)
    assert 0.85 < p["batch_ratio"] < 1.0      # 18.9M against the law's 20.7M
    assert 1.0 < p["lr_ratio"] < 1.05         # 3.2e-4 against the law's 3.12e-4


def test_place_uses_the_table_rows_sources():
    names = {r.model for r in hl.TRAINING_RUNS}
    assert names <= set(settings.names())
    for r in hl.TRAINING_RUNS:
        assert r.source and r.tokens > 0


# --- the fit --------------------------------------------------------------------------------

def test_fit_power_law_recovers_an_exact_law():
    xs = [1e3, 1e4, 3e5, 1e7]
    law = hl.fit_power_law(xs, [2.5 * x**-0.37 for x in xs])
    assert law.coefficient == pytest.approx(2.5, rel=1e-9)
    assert law.exponent == pytest.approx(-0.37, abs=1e-12)
    assert law(1e5) == pytest.approx(2.5 * 1e5**-0.37, rel=1e-9)


def test_fit_power_law_through_noisy_points_is_least_squares_in_log_space():
    # two x values, two y values each: the fit passes through the geometric means
    law = hl.fit_power_law([1.0, 1.0, 100.0, 100.0], [1.0, 4.0, 10.0, 40.0])
    assert law.exponent == pytest.approx(0.5, abs=1e-12)
    assert law.coefficient == pytest.approx(2.0, rel=1e-12)


def _grid():
    # three budgets; the best (batch, lr) moves: batch ∝ C^0.5, lr ∝ C^-0.25 exactly
    out = []
    for c in (1e12, 1e14, 1e16):
        b_opt, lr_opt = 1e-3 * c**0.5, 10 * c**-0.25
        for fb in (0.5, 1.0, 2.0):
            for fl in (0.5, 1.0, 2.0):
                loss = 2.0 + 0.1 * (math.log(fb) ** 2 + math.log(fl) ** 2)
                out.append({"compute_flops": c, "batch_tokens": b_opt * fb,
                            "peak_lr": lr_opt * fl, "eval_loss": loss})
    return out


def test_near_optimal_keeps_the_runs_within_the_tolerance():
    runs = [r for r in _grid() if r["compute_flops"] == 1e12]
    assert len(hl.near_optimal(runs, 0.0)) == 1
    assert len(hl.near_optimal(runs, 0.03)) == 5   # the best and its four neighbours (+2.4 %)
    assert len(hl.near_optimal(runs, 0.05)) == 9
    inf = dict(runs[0], eval_loss=float("inf"))
    assert inf not in hl.near_optimal(runs + [inf], 10.0)


def test_fit_hparam_laws_on_a_grid():
    fit = hl.fit_hparam_laws(_grid(), 0.03)
    assert fit["batch_tokens"].exponent == pytest.approx(0.5, abs=1e-9)
    assert fit["lr"].exponent == pytest.approx(-0.25, abs=1e-9)
    assert [len(v) for v in fit["near_optimal"].values()] == [5, 5, 5]


# --- bad arguments --------------------------------------------------------------------------

@pytest.mark.parametrize("call, name", [
    (lambda: hl.non_embedding_flops_per_token(0, 64, 64), "n_layer"),
    (lambda: hl.non_embedding_flops_per_token(2, 64.5, 64), "d_model"),
    (lambda: hl.compute_flops(-1, 10), "flops_per_token"),
    (lambda: hl.deepseek_lr(0), "compute"),
    (lambda: hl.deepseek_batch_tokens("1e20"), "compute"),
    (lambda: hl.fit_power_law([1, 2], [1]), "same length"),
    (lambda: hl.fit_power_law([3, 3], [1, 2]), "two different"),
    (lambda: hl.fit_power_law([1, -2], [1, 2]), "xs"),
    (lambda: hl.near_optimal([], 0.01), "records"),
    (lambda: hl.near_optimal([{"eval_loss": 1.0}], -1), "tolerance"),
    (lambda: hl.near_optimal([{"loss": 1.0}]), "key"),
    (lambda: hl.fit_hparam_laws([{"compute_flops": 1.0, "eval_loss": 1.0}]), "two compute"),
    (lambda: hl.place("GPT-3", 1e6, 1e-4), "run"),
    (lambda: hl.place(hl.TRAINING_RUNS[0], 1e6, 0), "peak_lr"),
])
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
