"""Learning-rate schedules: step-by-step equal to torch's and transformers' schedulers driving
a real optimizer, the shape properties of 预热 → 峰值 → 衰减, the SymPy curves, bad input.

Equality is exact (==) where the other side computes the same float operations (transformers'
LambdaLR schedules with min_lr = 0, torch's MultiStepLR after warmup); elsewhere it is
relative 1e-12, or 1e-12·peak_lr absolute where the lr is near 0 (``close``): torch's
chainable schedulers update the lr recursively, so they round differently.
"""

import math

import pytest
import sympy as sp
import torch
from hypothesis import given, settings, strategies as st
from torch.optim.lr_scheduler import (ConstantLR, CosineAnnealingLR, LinearLR, MultiStepLR,
                                      SequentialLR)

from llmtrain.recipes import schedules
from llmtrain.recipes.schedules import (inverse_sqrt, lr_lambda, scheduler, step_decay,
    warmup_cosine, warmup_linear, warmup_stable_decay)

FAST = settings(max_examples=40, deadline=None)
peaks = st.floats(1e-6, 1.0)
ratios = st.sampled_from([0.0, 0.1, 1.0]) | st.floats(0.0, 1.0)  # min_lr / peak_lr


def close(a: float, b: float, peak: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12 * peak)


def adamw(lr: float) -> torch.optim.AdamW:
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    return torch.optim.AdamW([p], lr=lr)


def drive(opt, sched, n: int) -> list[float]:
    """The lr the optimizer uses at steps 0 … n−1 (read before each ``opt.step()``)."""
    lrs = []
    for _ in range(n):
        lrs.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()
    return lrs


def torch_warmup_then(opt, W: int, after: list, after_milestones: list[int]) -> SequentialLR:
    """Our warmup peak·t/W in torch's schedulers, then ``after`` from step W.

    LinearLR cannot start at 0 (start_factor > 0), and LinearLR(start_factor=1/W,
    total_iters=W−1) gives peak·(t+1)/W, one step ahead of ours. The exact equivalent is
    ConstantLR(factor=0) for step 0, then that LinearLR from step 1: lr(t) = peak·t/W.
    """
    scheds, milestones = [], []
    if W >= 1:
        scheds.append(ConstantLR(opt, factor=0.0, total_iters=1))
    if W >= 2:
        scheds.append(LinearLR(opt, start_factor=1 / W, end_factor=1.0, total_iters=W - 1))
        milestones.append(1)
    if W >= 1:
        milestones.append(W)
    return SequentialLR(opt, scheds + after, milestones + after_milestones)


# --- the conventions, in numbers ------------------------------------------------------------

def test_conventions_small_example():
    kw = dict(peak_lr=1.0, warmup_steps=2, total_steps=6)
    assert [warmup_linear(t, **kw) for t in range(8)] == [0, .5, 1, .75, .5, .25, 0, 0]
    cos = [warmup_cosine(t, **kw, min_lr=0.1) for t in range(8)]
    assert cos[:3] == [0, .5, 1] and cos[4] == pytest.approx(0.55) and cos[6:] == [0.1, 0.1]
    assert cos[5] > 0.1  # min_lr is reached at t = T = 6, not before


def test_palm_numbers():
    # PaLM §5: 1e-2 for the first 10k steps, then 1e-2·sqrt(10k/k)
    lr = lambda k: inverse_sqrt(k, peak_lr=1e-2, warmup_steps=10_000)  # noqa: E731
    assert lr(0) == lr(9_999) == lr(10_000) == 1e-2
    assert lr(40_000) == 5e-3 and lr(1_000_000) == pytest.approx(1e-3)


def test_step_decay_opt_like():
    kw = dict(peak_lr=1e-4, warmup_steps=10, drops=[(100, 0.5), (150, 0.8)])
    assert [step_decay(t, **kw) for t in (0, 5, 10, 99, 100, 149, 150, 10**6)] == \
        [0.0, 5e-5, 1e-4, 1e-4, 5e-5, 5e-5, 5e-5 * 0.8, 5e-5 * 0.8]


# --- torch's schedulers ---------------------------------------------------------------------

@FAST
@given(peak=peaks, W=st.integers(0, 30), D=st.integers(1, 120), ratio=ratios)
def test_warmup_cosine_equals_torch(peak, W, D, ratio):
    T, m = W + D, ratio * peak
    opt = adamw(peak)
    after = [CosineAnnealingLR(opt, T_max=T - W, eta_min=m),  # CosineAnnealingLR is periodic:
             ConstantLR(opt, factor=m / peak, total_iters=10**9)]  # hold min_lr from T on
    got = drive(opt, torch_warmup_then(opt, W, after, [T]), T + 20)
    for t, lr in enumerate(got):
        ours = warmup_cosine(t, peak_lr=peak, warmup_steps=W, total_steps=T, min_lr=m)
        assert close(ours, lr, peak), (t, ours, lr)


@FAST
@given(peak=peaks, W=st.integers(0, 30), D=st.integers(1, 120), ratio=ratios)
def test_warmup_linear_equals_torch(peak, W, D, ratio):
    T, m = W + D, ratio * peak
    opt = adamw(peak)
    after = [LinearLR(opt, start_factor=1.0, end_factor=m / peak, total_iters=T - W)]
    got = drive(opt, torch_warmup_then(opt, W, after, []), T + 20)
    for t, lr in enumerate(got):
        ours = warmup_linear(t, peak_lr=peak, warmup_steps=W, total_steps=T, min_lr=m)
        assert close(ours, lr, peak), (t, ours, lr)


@FAST
@given(peak=peaks, W=st.integers(0, 20), gamma=st.floats(0.01, 1.0),
       gaps=st.lists(st.integers(1, 40), min_size=0, max_size=4), first=st.integers(0, 20))
def test_step_decay_equals_multisteplr(peak, W, gamma, gaps, first):
    # drops from step W + first on, every gap steps; MultiStepLR counts from W
    drop_steps = [W + first + sum(gaps[:i]) for i in range(len(gaps))]
    n = (drop_steps[-1] if drop_steps else W) + 10
    opt = adamw(peak)
    after = [MultiStepLR(opt, milestones=[s - W for s in drop_steps], gamma=gamma)]
    got = drive(opt, torch_warmup_then(opt, W, after, []), n)
    drops = [(s, gamma) for s in drop_steps]
    for t, lr in enumerate(got):
        ours = step_decay(t, peak_lr=peak, warmup_steps=W, drops=drops)
        assert (ours == lr) if t >= W else close(ours, lr, peak), (t, ours, lr)


# --- transformers' schedulers ---------------------------------------------------------------

def hf(name: str):
    from transformers import optimization  # the pinned release has every one of them

    return getattr(optimization, name)


@FAST
@given(peak=peaks, W=st.integers(0, 30), D=st.integers(1, 120))
def test_warmup_cosine_equals_transformers_exactly(peak, W, D):
    T, opt = W + D, adamw(peak)
    got = drive(opt, hf("get_cosine_schedule_with_warmup")(opt, W, T), T + 10)
    ours = [warmup_cosine(t, peak_lr=peak, warmup_steps=W, total_steps=T) for t in range(T + 10)]
    assert ours[:T + 1] == got[:T + 1]
    # after T transformers' cosine goes on (periodic in t, it rises again); ours stays at 0
    assert ours[T + 1:] == [0.0] * 9 and got[T + 1] > 0.0


@FAST
@given(peak=peaks, W=st.integers(0, 30), D=st.integers(1, 120))
def test_warmup_linear_equals_transformers_exactly(peak, W, D):
    T, opt = W + D, adamw(peak)
    got = drive(opt, hf("get_linear_schedule_with_warmup")(opt, W, T), T + 10)
    assert got == [warmup_linear(t, peak_lr=peak, warmup_steps=W, total_steps=T)
                   for t in range(T + 10)]


@FAST
@given(peak=peaks, W=st.integers(0, 30), D=st.integers(1, 120), ratio=ratios)
def test_warmup_cosine_min_lr_equals_transformers(peak, W, D, ratio):
    T, m, opt = W + D, ratio * peak, adamw(peak)
    got = drive(opt, hf("get_cosine_with_min_lr_schedule_with_warmup")(opt, W, T, min_lr=m),
                T + 1)
    for t, lr in enumerate(got):
        ours = warmup_cosine(t, peak_lr=peak, warmup_steps=W, total_steps=T, min_lr=m)
        assert close(ours, lr, peak), (t, ours, lr)


@FAST
@given(peak=peaks, W=st.integers(1, 30), D=st.integers(1, 120), ratio=ratios)
def test_transformers_lr_rate_variant_is_one_step_ahead(peak, W, D, ratio):
    # get_cosine_with_min_lr_schedule_with_warmup_lr_rate uses (t+1)/W: lr(0) = peak/W, the
    # peak at t = W−1 and min_lr at T−1, i.e. ours shifted one step earlier
    T, m, opt = W + D, ratio * peak, adamw(peak)
    sched = hf("get_cosine_with_min_lr_schedule_with_warmup_lr_rate")(opt, W, T, min_lr=m)
    for t, lr in enumerate(drive(opt, sched, T)):
        ours = warmup_cosine(t + 1, peak_lr=peak, warmup_steps=W, total_steps=T, min_lr=m)
        assert close(ours, lr, peak), (t, ours, lr)


@FAST
@given(peak=peaks, W=st.integers(0, 20), S=st.integers(0, 40), D=st.integers(1, 60),
       ratio=ratios, decay=st.sampled_from(["linear", "cosine", "sqrt"]))
def test_wsd_equals_transformers(peak, W, S, D, ratio, decay):
    m, opt, n = ratio * peak, adamw(peak), W + S + D + 10
    sched = hf("get_wsd_schedule")(opt, num_warmup_steps=W, num_decay_steps=D,
                                   num_stable_steps=S, min_lr_ratio=ratio,
                                   decay_type="1-sqrt" if decay == "sqrt" else decay)
    for t, lr in enumerate(drive(opt, sched, n)):
        ours = warmup_stable_decay(t, peak_lr=peak, warmup_steps=W, stable_steps=S,
                                   decay_steps=D, min_lr=m, decay=decay)
        if ratio == 0.0:
            assert ours == lr, (t, ours, lr)
        elif t >= W:
            assert close(ours, lr, peak), (t, ours, lr)
        else:  # transformers warms up from min_lr, we (and MiniCPM) from 0
            assert close(m + (peak - m) * t / W, lr, peak), (t, lr)


@FAST
@given(peak=peaks, W=st.integers(1, 50))
def test_inverse_sqrt_vs_transformers(peak, W):
    opt = adamw(peak)
    got = drive(opt, hf("get_inverse_sqrt_schedule")(opt, W), 4 * W + 10)
    for t, lr in enumerate(got):
        linear = inverse_sqrt(t, peak_lr=peak, warmup_steps=W, warmup="linear")
        palm = inverse_sqrt(t, peak_lr=peak, warmup_steps=W)
        assert close(linear, lr, peak), (t, linear, lr)
        # PaLM holds peak_lr during warmup where transformers ramps up from 0
        assert close(palm, lr, peak) if t >= W else palm == peak > lr


# --- lr_lambda / scheduler drive AdamW ------------------------------------------------------

CASES = [
    (warmup_cosine, dict(warmup_steps=7, total_steps=60, min_lr=0.1)),
    (warmup_linear, dict(warmup_steps=0, total_steps=40)),
    (inverse_sqrt, dict(warmup_steps=5)),
    (warmup_stable_decay, dict(warmup_steps=3, stable_steps=20, decay_steps=10, decay="sqrt")),
    (step_decay, dict(warmup_steps=4, drops=[(10, 0.5), (30, 0.1)])),
]


@pytest.mark.parametrize("fn,kw", CASES, ids=[f.__name__ for f, _ in CASES])
@settings(max_examples=10, deadline=None)
@given(peak=peaks)
def test_scheduler_drives_adamw(fn, kw, peak):
    kw = {**kw, "min_lr": kw["min_lr"] * peak} if "min_lr" in kw else kw
    opt = adamw(lr=123.0)  # scheduler() replaces the optimizer's lr by peak_lr
    got = drive(opt, scheduler(opt, fn, peak_lr=peak, **kw), 80)
    f = lr_lambda(fn, peak_lr=peak, **kw)
    for t, lr in enumerate(got):
        assert close(fn(t, peak_lr=peak, **kw), lr, peak) and close(peak * f(t), lr, peak)


def test_scheduler_on_an_already_scheduled_optimizer():
    opt = adamw(lr=1.0)
    drive(opt, torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5), 3)
    kw = dict(peak_lr=3e-4, warmup_steps=2, total_steps=10)
    got = drive(opt, scheduler(opt, warmup_linear, **kw), 12)
    assert got == pytest.approx([warmup_linear(t, **kw) for t in range(12)], rel=1e-12)


# --- properties: 预热 → 峰值 → 衰减 -----------------------------------------------------------

def curves(peak, W, D, ratio, S):
    """Each warmup schedule as (lr(t) for t in 0 … end+5, peak step, end step, final lr)."""
    m, T, n = ratio * peak, W + D, W + S + D + 6
    kw = dict(peak_lr=peak, warmup_steps=W)
    yield [warmup_cosine(t, **kw, total_steps=T, min_lr=m) for t in range(n)], W, T, m
    yield [warmup_linear(t, **kw, total_steps=T, min_lr=m) for t in range(n)], W, T, m
    for decay in schedules.DECAYS:
        yield ([warmup_stable_decay(t, **kw, stable_steps=S, decay_steps=D, min_lr=m,
                                    decay=decay) for t in range(n)], W, W + S + D, m)
    drops = [(W + S + 1, 0.5), (W + S + D + 1, ratio)] if ratio > 0 else [(W + S + 1, 0.5)]
    lrs = [step_decay(t, **kw, drops=drops) for t in range(n)]
    yield lrs, W, drops[-1][0], lrs[-1]


@FAST
@given(peak=peaks, W=st.integers(0, 30), D=st.integers(1, 100), ratio=ratios,
       S=st.integers(0, 30))
def test_shape_warmup_peak_decay(peak, W, D, ratio, S):
    for lrs, top, end, final in curves(peak, W, D, ratio, S):
        assert lrs[0] == (0.0 if W else peak)  # warmup starts at 0
        assert max(lrs) == lrs[top] == peak and lrs.index(peak) == top  # peak first at t = W
        if W:  # continuity: the warmup line peak·t/W reaches the peak exactly at t = W
            assert close(lrs[W - 1] + peak / W, lrs[W], peak)
        assert all(a <= b for a, b in zip(lrs[:top], lrs[1:top + 1]))  # rises during warmup
        assert all(a >= b for a, b in zip(lrs[top:], lrs[top + 1:]))  # monotone decay after
        assert lrs[end:] == [final] * len(lrs[end:])  # min_lr reached at the end, and kept


@FAST
@given(peak=peaks, W=st.integers(1, 1000), k=st.integers(0, 10**6))
def test_inverse_sqrt_shape(peak, W, k):
    lr = lambda t: inverse_sqrt(t, peak_lr=peak, warmup_steps=W)  # noqa: E731
    assert lr(k) <= lr(W) == peak and lr(W + k) >= lr(W + k + 1)
    assert close(lr(4 * W * (k + 1) ** 2), peak / (2 * (k + 1)), peak)  # ∝ 1/√t


# --- symbolic -------------------------------------------------------------------------------

@pytest.mark.parametrize("decay,fn", [("cosine", warmup_cosine), ("linear", warmup_linear)])
def test_symbolic_matches_numeric_and_is_continuous(decay, fn):
    expr, s = schedules.symbolic(decay)
    t, W, T = s["t"], s["warmup_steps"], s["total_steps"]
    warm, down = expr.args[0][0], expr.args[1][0]
    assert sp.simplify(warm.subs(t, W) - down.subs(t, W)) == 0  # continuous at t = W …
    assert sp.simplify(down.subs(t, W) - s["peak_lr"]) == 0  # … at the peak
    assert sp.simplify(down.subs(t, T) - s["min_lr"]) == 0  # continuous at t = T
    vals = {s["peak_lr"]: sp.Rational(3, 10), s["min_lr"]: sp.Rational(3, 100), W: 5, T: 40}
    for step in range(45):
        ours = fn(step, peak_lr=0.3, warmup_steps=5, total_steps=40, min_lr=0.03)
        assert float(expr.subs(vals).subs(t, step)) == pytest.approx(ours, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("decay,fn", [("cosine", warmup_cosine), ("linear", warmup_linear)])
def test_symbolic_mean(decay, fn):
    mean, s = schedules.symbolic_mean(decay)
    eta, eta_min, W, T = (s[k] for k in ("peak_lr", "min_lr", "warmup_steps", "total_steps"))
    assert sp.simplify(mean - (eta * W / 2 + (eta + eta_min) * (T - W) / 2) / T) == 0
    # the discrete mean over the T steps of a run is within O(peak/T) of the integral
    kw = dict(peak_lr=1.0, warmup_steps=100, total_steps=2000, min_lr=0.1)
    discrete = sum(fn(t, **kw) for t in range(2000)) / 2000
    exact = float(mean.subs({eta: 1, eta_min: sp.Rational(1, 10), W: 100, T: 2000}))
    assert abs(discrete - exact) < 1 / 2000


# --- bad input ------------------------------------------------------------------------------

WC = dict(peak_lr=1e-3, warmup_steps=10, total_steps=100)
WSD = dict(peak_lr=1e-3, warmup_steps=10, stable_steps=50, decay_steps=20)
BAD = [
    (warmup_cosine, -1, WC, "step"),
    (warmup_cosine, 2.5, WC, "step"),
    (warmup_cosine, 0, {**WC, "peak_lr": 0.0}, "peak_lr"),
    (warmup_cosine, 0, {**WC, "peak_lr": -1e-3}, "peak_lr"),
    (warmup_cosine, 0, {**WC, "peak_lr": math.inf}, "peak_lr"),
    (warmup_cosine, 0, {**WC, "warmup_steps": -1}, "warmup_steps"),
    (warmup_cosine, 0, {**WC, "total_steps": 5}, "total_steps"),
    (warmup_cosine, 0, {**WC, "total_steps": WC["warmup_steps"] - 1}, "total_steps"),
    (warmup_cosine, 0, {**WC, "min_lr": 2e-3}, "min_lr"),
    (warmup_linear, 0, {**WC, "min_lr": -1e-5}, "min_lr"),
    (warmup_linear, -3, WC, "step"),
    (inverse_sqrt, 0, dict(peak_lr=1e-2, warmup_steps=0), "warmup_steps"),
    (inverse_sqrt, 0, dict(peak_lr=1e-2, warmup_steps=10, warmup="cosine"), "warmup"),
    (inverse_sqrt, 0, dict(peak_lr=0, warmup_steps=10), "peak_lr"),
    (warmup_stable_decay, 0, {**WSD, "decay": "exp"}, "decay"),
    (warmup_stable_decay, 0, {**WSD, "decay_steps": 0}, "decay_steps"),
    (warmup_stable_decay, 0, {**WSD, "stable_steps": -1}, "stable_steps"),
    (warmup_stable_decay, 0, {**WSD, "min_lr": 1.0}, "min_lr"),
    (step_decay, 0, dict(peak_lr=1e-3, drops=[(20, 0.5), (10, 0.5)]), "drops"),
    (step_decay, 0, dict(peak_lr=1e-3, warmup_steps=10, drops=[(5, 0.5)]), "drops"),
    (step_decay, 0, dict(peak_lr=1e-3, drops=[(5, 0.0)]), "drops"),
    (step_decay, 0, dict(peak_lr=1e-3, drops=[5]), "drops"),
]


@pytest.mark.parametrize("fn,step,kw,name", BAD, ids=[f"{f.__name__}-{n}-{i}"
                                                      for i, (f, _, _, n) in enumerate(BAD)])
def test_bad_input_names_the_argument(fn, step, kw, name):
    with pytest.raises(ValueError, match=name):
        fn(step, **kw)


def test_factories_check_arguments_up_front():
    with pytest.raises(ValueError, match="total_steps"):
        lr_lambda(warmup_cosine, peak_lr=1e-3, warmup_steps=10, total_steps=9)
    with pytest.raises(ValueError, match="peak_lr"):
        scheduler(adamw(1e-3), warmup_linear, peak_lr=-1.0, warmup_steps=1, total_steps=10)
    with pytest.raises(ValueError, match="symbolic|decay"):
        schedules.symbolic("sqrt")


def test_no_decay_when_total_equals_warmup():
    # W = T: warmup, then min_lr from T on (transformers' linear schedule does the same)
    from transformers import get_linear_schedule_with_warmup

    opt = adamw(1e-3)
    hf = get_linear_schedule_with_warmup(opt, num_warmup_steps=5, num_training_steps=5)
    for t in range(8):
        assert opt.param_groups[0]["lr"] == warmup_linear(t, peak_lr=1e-3, warmup_steps=5, total_steps=5)
        opt.step()
        hf.step()
