"""Tests of llmtrain.recipes.spikes: the metrics on hand-made histories (exact answers), Adam's
update under a huge gradient against torch.optim.Adam, one small real run, the reported
spikes' sources."""

import math

import pytest
import torch

from llmtrain import sources
from llmtrain.recipes import spikes
from llmtrain.recipes.train import History


def history(loss, grad_norm):
    n = len(loss)
    return History(step=list(range(n)), loss=list(loss), lr=[1.0] * n,
                   grad_norm=list(grad_norm), tokens_seen=[(i + 1) * 8 for i in range(n)],
                   batch_size=[1] * n)


# --- scenarios ------------------------------------------------------------------------------

def test_bad_batch_replaces_only_the_named_steps_and_keeps_shape_and_dtype():
    batch = torch.arange(12).reshape(3, 4)
    zeros = spikes.bad_batch("zeros", [2, 5])
    assert zeros(1, batch) is batch
    assert torch.equal(zeros(2, batch), torch.zeros(3, 4, dtype=torch.long))
    assert torch.equal(spikes.bad_batch("repeat", 0, token=9)(0, batch),
                       torch.full((3, 4), 9))
    rand = spikes.bad_batch("random", 3, vocab_size=16, seed=1)
    a, b = rand(3, batch), rand(3, batch)
    assert torch.equal(a, b) and a.dtype == batch.dtype and a.shape == batch.shape
    assert 0 <= int(a.min()) and int(a.max()) < 16


def test_warmup_schedule_is_linear_to_the_peak_then_constant():
    lr = spikes.warmup_schedule(1.0, 4)
    assert [lr(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert spikes.warmup_schedule(0.5, 0)(0) == 0.5


# --- metrics on hand-made histories (exact answers) ----------------------------------------

def test_clipped_steps_counts_norms_strictly_above_the_threshold_as_torch_does():
    # clip_grad_norm_ scales by clip / (norm + 1e-6) clamped to 1: a norm equal to clip is kept
    assert spikes.clipped_steps([0.5, 1.0, 1.5, 2.0], 1.0) == 2
    assert spikes.clipped_steps([0.5, 1.0, 1.5, 2.0], 0.4) == 4
    assert spikes.clipped_steps([9.0], None) == 0


def test_loss_excess_is_the_stepwise_difference():
    assert spikes.loss_excess([3.0, 2.5, 2.0], [3.0, 2.0, 2.25]) == [0.0, 0.5, -0.25]


def test_recovery_steps_is_the_first_step_from_which_the_excess_stays_within_tolerance():
    excess = [0.0, 0.0, 0.5, 0.3, 0.1, 0.01, 0.0]
    assert spikes.recovery_steps(excess, 1, 0.05) == 4      # from step 5 on, all within
    assert spikes.recovery_steps(excess, 1, 0.2) == 3       # 0.1 is within 0.2: from step 4
    assert spikes.recovery_steps([0.0, 0.01, 0.0], 0, 0.05) == 1
    assert spikes.recovery_steps([0.0, 0.0, 0.3], 0, 0.05) is None
    # a step below the reference by more than the tolerance is not recovered either
    assert spikes.recovery_steps([0.0, 0.0, -0.3, 0.0], 0, 0.05) == 3


def test_moving_mean_is_a_trailing_mean_shorter_at_the_start():
    assert spikes.moving_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert spikes.moving_mean([1.0, 3.0, 5.0, 7.0], 3) == [1.0, 2.0, 3.0, 5.0]
    assert spikes.moving_mean([2.0, 4.0], 1) == [2.0, 4.0]


def test_spike_stats_on_a_hand_made_pair_of_histories():
    ref = history([5.0, 4.0, 3.0, 2.5, 2.0, 1.75, 1.5], [2.0, 1.0, 3.0, 1.5, 1.0, 1.0, 1.0])
    run = history([5.0, 4.0, 9.0, 3.5, 2.5, 1.75, 1.5], [2.0, 1.0, 30.0, 4.0, 1.0, 1.0, 1.0])
    s = spikes.spike_stats(run, ref, after=2, clip=1.0, tolerance=0.5, window=2)
    assert s.typical_norm == 1.0                  # median of the reference's seven norms
    assert s.peak_norm == 30.0
    assert (s.clipped, s.steps) == (3, 7)          # 2.0, 30.0, 4.0 are above 1.0
    assert s.clipped_fraction == 3 / 7
    assert s.loss_peak == 1.0                     # step 3: 3.5 - 2.5; step 2 (the bad batch) excluded
    assert s.mean_excess == 0.75                  # steps 3 and 4: (1.0 + 0.5) / 2
    # 2-step means of [0, 0, 0, 1, .5, 0, 0] from step 3: .5, .75, .25, 0: within .5 from step 5
    assert s.recovery == 3
    raw = spikes.spike_stats(run, ref, after=2, clip=None, tolerance=0.5, window=1)
    assert raw.recovery == 2 and raw.clipped == 0  # raw excess 1.0, .5, 0, 0: within .5 from step 4
# --- Adam under a huge gradient (oracle: torch.optim.Adam) ---------------------------------

@pytest.mark.parametrize("beta2", [0.95, 0.999])
@pytest.mark.parametrize("t", [1, 5, 51])
def test_adam_spike_update_matches_torch_adam_after_zero_gradients(beta2, t):
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = torch.optim.Adam([p], lr=1e-3, betas=(0.9, beta2), eps=1e-12)
    for _ in range(t - 1):                         # moments stay zero, the step count advances
        p.grad = torch.zeros_like(p)
        opt.step()
    before = p.detach().clone()
    p.grad = torch.tensor([1e6, -2e6, 3e6], dtype=torch.float64)
    opt.step()
    moved = (before - p.detach()).abs() / 1e-3
    assert torch.allclose(moved, torch.full((3,), spikes.adam_spike_update(0.9, beta2, t),
                                            dtype=torch.float64), rtol=1e-9)


def test_adam_spike_update_limit_is_one_minus_beta1_over_root_one_minus_beta2():
    assert spikes.adam_spike_update(0.9, 0.95) == pytest.approx(0.1 / math.sqrt(0.05), rel=1e-15)
    assert spikes.adam_spike_update(0.9, 0.999) == pytest.approx(0.1 / math.sqrt(0.001), rel=1e-15)
    assert spikes.adam_spike_update(0.9, 0.95, 100_000) == pytest.approx(
        spikes.adam_spike_update(0.9, 0.95), rel=1e-12)


@pytest.mark.parametrize("beta2", [0.95, 0.99])
def test_adam_spike_displacement_is_the_sum_of_torch_adams_updates_after_one_huge_gradient(beta2):
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.Adam([p], lr=1.0, betas=(0.9, beta2), eps=1e-300)
    for _ in range(4000):                          # bias corrections ~1 by the spike
        p.grad = torch.zeros_like(p)
        opt.step()
    p.grad = torch.tensor([1e6], dtype=torch.float64)
    opt.step()
    for _ in range(2000):                          # then nothing but zero gradients
        p.grad = torch.zeros_like(p)
        opt.step()
    assert -float(p.detach()) == pytest.approx(spikes.adam_spike_displacement(0.9, beta2), rel=1e-9)


def test_adam_spike_displacement_closed_form_values():
    assert spikes.adam_spike_displacement(0.9, 0.95) == pytest.approx(
        0.1 / math.sqrt(0.05) / (1 - 0.9 / math.sqrt(0.95)), rel=1e-15)
    assert spikes.adam_spike_displacement(0.9, 0.999) > 5 * spikes.adam_spike_displacement(0.9, 0.95)


# --- one small real run ---------------------------------------------------------------------

def test_a_bad_batch_of_zeros_makes_a_gradient_norm_spike_and_changes_nothing_before_it():
    ref = spikes.spike_run(steps=8, grad_clip=None)
    run = spikes.spike_run(steps=8, grad_clip=None, bad=spikes.bad_batch("zeros", 5))
    assert run.loss[:5] == ref.loss[:5] and run.grad_norm[:5] == ref.grad_norm[:5]
    others = [n for i, n in enumerate(run.grad_norm) if i != 5]
    assert run.grad_norm[5] > 5 * max(others)      # measured ~15x at step 5
    s = spikes.spike_stats(run, ref, after=5, clip=None, window=2)
    assert s.clipped == 0 and s.peak_norm == run.grad_norm[5]


def test_when_every_step_is_clipped_the_threshold_does_not_change_adamw():
    # Adam is invariant to a constant rescaling of all gradients, up to its eps (1e-8, felt by
    # coordinates whose gradients are small): clipping every step to 1.0 or to 0.4 feeds it
    # g/|g| times a constant, so the two runs agree to ~1e-5 (measured 1.8e-5 after 6 steps)
    a = spikes.spike_run(steps=6, grad_clip=1.0)
    b = spikes.spike_run(steps=6, grad_clip=0.4)
    assert spikes.clipped_steps(a.grad_norm, 0.4) == 6 and spikes.clipped_steps(a.grad_norm, 1.0) == 6
    assert max(abs(x - y) for x, y in zip(a.loss, b.loss)) < 1e-4


# --- what the table's runs reported ---------------------------------------------------------

def test_every_reported_spike_names_a_registered_source_and_a_checked_place():
    assert {r.model for r in spikes.REPORTED} >= {"PaLM", "OPT", "GLM-130B"}
    for r in spikes.REPORTED:
        src = sources.find(r.source)
        assert src is not None, r.source
        assert r.place in src.checked, (r.source, r.place)
        assert r.quote and r.remedy and r.observed


# --- bad arguments --------------------------------------------------------------------------

@pytest.mark.parametrize("call, name", [
    (lambda: spikes.bad_batch("ones", 3), "kind"),
    (lambda: spikes.bad_batch("zeros", -1), "at"),
    (lambda: spikes.bad_batch("zeros", []), "at"),
    (lambda: spikes.bad_batch("repeat", 3, token=256), "token"),
    (lambda: spikes.warmup_schedule(0.0, 3), "peak_lr"),
    (lambda: spikes.warmup_schedule(1e-3, -1), "warmup_steps"),
    (lambda: spikes.spike_run(steps=0), "steps"),
    (lambda: spikes.spike_run(steps=2, beta2=1.0), "beta2"),
    (lambda: spikes.spike_run(steps=2, dtype=torch.float16), "dtype"),
    (lambda: spikes.clipped_steps([1.0], 0.0), "clip"),
    (lambda: spikes.loss_excess([1.0], [1.0, 2.0]), "same length"),
    (lambda: spikes.recovery_steps([0.0, 1.0], 1, 0.1), "after"),
    (lambda: spikes.recovery_steps([0.0, 1.0], 0, 0.0), "tolerance"),
    (lambda: spikes.spike_stats([1.0], [1.0], after=0, clip=None), "History"),
    (lambda: spikes.spike_stats(history([1.0] * 5, [1.0] * 5), history([1.0] * 5, [1.0] * 5),
                                after=1, clip=None, window=4), "window"),
    (lambda: spikes.moving_mean([1.0], 0), "window"),
    (lambda: spikes.adam_spike_update(0.9, 1.0), "beta2"),
    (lambda: spikes.adam_spike_update(0.9, 0.95, 0), "step"),
    (lambda: spikes.adam_spike_displacement(0.9, 0.8), "sqrt"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
