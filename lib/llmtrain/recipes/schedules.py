"""Learning-rate schedules (slides: 学习率预热与衰减, 预热 → 峰值 → 衰减: warmup → peak → decay).

Every schedule is a pure function of the 0-based optimizer step t (an int: the step about to
be taken) returning the learning rate, a float. Conventions, the same in every function:

- warmup is linear from 0: lr(t) = peak·t/W for t < W, so lr(0) = 0 (the first update is
  wasted) and the peak is reached *at* t = W, the first step after warmup, where lr is
  exactly ``peak_lr``. This is transformers' convention (``get_cosine_schedule_with_warmup``
  and friends); torch's LinearLR(start_factor=1/W, total_iters=W−1) is one step ahead.
- a decay ending at ``total_steps`` T reaches ``min_lr`` at t = T exactly and stays there,
  so T must exceed W. Decays never rise above peak_lr, even by rounding.

With W = 2, T = 6, peak 1, min 0, warmup_linear gives 0, .5, 1, .75, .5, .25, 0, 0, …

``lr_lambda``/``scheduler`` turn any of them into a ``torch.optim.lr_scheduler.LambdaLR``;
``symbolic`` and ``symbolic_mean`` give the warmup-cosine and warmup-linear curves as SymPy
expressions in a continuous t. tests/test_schedules.py checks each function step by step
against torch's and transformers' schedulers driving a real optimizer.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

from .. import check

if TYPE_CHECKING:
    import torch

__all__ = ["warmup_cosine", "warmup_linear", "inverse_sqrt", "warmup_stable_decay",
           "step_decay", "lr_lambda", "scheduler", "symbols", "symbolic", "symbolic_mean",
           "DECAYS"]

DECAYS = ("linear", "cosine", "sqrt")  # shapes of the decay phase of warmup_stable_decay


# --- validation -----------------------------------------------------------------------

def _int(name: str, value, minimum: int = 0) -> int:
    return check.integer(name, value, minimum)


def _lrs(peak_lr: float, min_lr: float = 0.0) -> None:
    check.positive_number("peak_lr", peak_lr)
    check.number("min_lr", min_lr, 0, peak_lr)  # 0 <= min_lr <= peak_lr


def _warmup_decay_args(step, peak_lr, warmup_steps, total_steps, min_lr) -> tuple[int, int, int]:
    step, warmup_steps = _int("step", step), _int("warmup_steps", warmup_steps)
    total_steps = _int("total_steps", total_steps)
    if total_steps < warmup_steps:
        raise ValueError(f"total_steps must be >= warmup_steps = {warmup_steps}, got {total_steps}"
                         " (with total_steps = warmup_steps there is no decay: min_lr from then on)")
    _lrs(peak_lr, min_lr)
    return step, warmup_steps, total_steps


def _lerp(lo: float, hi: float, g: float) -> float:
    """lo + (hi − lo)·g for 0 ≤ g ≤ 1, rounded so that g = 1 gives hi exactly and no value
    exceeds hi: the peak is exactly peak_lr and the decay never rises above it."""
    return float(hi if g == 1.0 else min(hi, lo + (hi - lo) * g))


# --- schedules --------------------------------------------------------------------------

def warmup_cosine(step: int, *, peak_lr: float, warmup_steps: int, total_steps: int,
                  min_lr: float = 0.0) -> float:
    """peak·t/W for t < W; min + (peak − min)·½(1 + cos(π(t − W)/(T − W))) for W ≤ t ≤ T;
    min after T.

    Source: cosine annealing, Loshchilov & Hutter 2017 (SGDR), with linear warmup (GPT-3,
    LLaMA: min_lr = peak/10). With min_lr = 0 it is transformers'
    ``get_cosine_schedule_with_warmup`` up to t = T (after T transformers' cosine rises
    again; here it stays at min_lr); with min_lr, ``get_cosine_with_min_lr_schedule_with_warmup``.
    """
    step, W, T = _warmup_decay_args(step, peak_lr, warmup_steps, total_steps, min_lr)
    if step < W:
        return peak_lr * (step / W)
    if step >= T:
        return float(min_lr)
    progress = (step - W) / (T - W)
    return _lerp(min_lr, peak_lr, 0.5 * (1.0 + math.cos(math.pi * progress)))


def warmup_linear(step: int, *, peak_lr: float, warmup_steps: int, total_steps: int,
                  min_lr: float = 0.0) -> float:
    """peak·t/W for t < W; min + (peak − min)·(T − t)/(T − W) for W ≤ t ≤ T; min after T.

    Source: BERT (Devlin et al. 2019, §A.2), transformers' ``get_linear_schedule_with_warmup``
    (min_lr = 0).
    """
    step, W, T = _warmup_decay_args(step, peak_lr, warmup_steps, total_steps, min_lr)
    if step < W:
        return peak_lr * (step / W)
    if step >= T:
        return float(min_lr)
    return _lerp(min_lr, peak_lr, (T - step) / (T - W))


def inverse_sqrt(step: int, *, peak_lr: float, warmup_steps: int,
                 warmup: str = "constant") -> float:
    """peak for t < W, then peak·√(W/t) ∝ 1/√t: continuous at t = W, where both give peak.

    Source: PaLM (Chowdhery et al. 2022, §5): "10⁻² for the first 10,000 steps, which is then
    decayed at a rate of 1/√k", i.e. peak_lr = 1e-2, warmup_steps = 10_000.
    ``warmup="linear"`` replaces the constant phase by peak·t/W (so lr(0) = 0): that is
    transformers' ``get_inverse_sqrt_schedule`` (default timescale) and the Transformer's
    schedule d⁻⁰·⁵·min(t⁻⁰·⁵, t·W⁻¹·⁵) (Vaswani et al. 2017, §5.3) rescaled to peak at W.
    """
    step, W = _int("step", step), _int("warmup_steps", warmup_steps, minimum=1)
    _lrs(peak_lr)
    check.one_of("warmup", warmup, ("constant", "linear"))  # constant: PaLM
    if step < W:
        return peak_lr * (step / W) if warmup == "linear" else float(peak_lr)
    return peak_lr * math.sqrt(W / step)


def warmup_stable_decay(step: int, *, peak_lr: float, warmup_steps: int, stable_steps: int,
                        decay_steps: int, min_lr: float = 0.0, decay: str = "linear") -> float:
    """peak·t/W for t < W; peak until W + S; min + (peak − min)·g(p) with p = (t − W − S)/D
    for W + S ≤ t < W + S + D; min after. g: 1 − p (linear), ½(1 + cos πp), 1 − √p (sqrt).

    Source: WSD, MiniCPM (Hu et al. 2024), which allows any decreasing g (it used an
    exponential one); 1 − √p is the cooldown of Hägele et al. 2024. transformers'
    ``get_wsd_schedule`` (decay_type "linear", "cosine", "1-sqrt") is the same after warmup;
    its warmup starts from min_lr instead of 0, so the two agree everywhere when min_lr = 0.
    ``decay="1-sqrt"`` is accepted as another name for "sqrt".
    """
    step, W = _int("step", step), _int("warmup_steps", warmup_steps)
    S, D = _int("stable_steps", stable_steps), _int("decay_steps", decay_steps, minimum=1)
    _lrs(peak_lr, min_lr)
    if decay == "1-sqrt":
        decay = "sqrt"
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    if step < W:
        return peak_lr * (step / W)
    if step < W + S:
        return float(peak_lr)
    if step >= W + S + D:
        return float(min_lr)
    p = (step - W - S) / D
    if decay == "linear":
        g = 1.0 - p
    elif decay == "cosine":
        g = 0.5 * (1.0 + math.cos(math.pi * p))
    else:
        g = 1.0 - math.sqrt(p)
    return _lerp(min_lr, peak_lr, g)


def step_decay(step: int, *, peak_lr: float, drops: Sequence[tuple[int, float]],
               warmup_steps: int = 0) -> float:
    """peak·t/W for t < W, then peak·∏ f over the drops (s, f) with s ≤ t: "from step s on,
    multiply the learning rate by f".

    Source: the hand-tuned ("manual") schedule of OPT-175B (Zhang et al. 2022, and the
    OPT-175B logbook), where the LR was lowered by hand when training diverged. ``drops``
    must have strictly increasing steps s ≥ warmup_steps and factors f > 0 (f < 1 lowers
    the LR).
    With equal factors γ it is torch's ``MultiStepLR(milestones, gamma=γ)``.
    """
    step, W = _int("step", step), _int("warmup_steps", warmup_steps)
    _lrs(peak_lr)
    check.sequence("drops", drops)
    previous = W - 1
    for i, drop in enumerate(drops):
        if not (isinstance(drop, (tuple, list)) and len(drop) == 2):
            raise ValueError(f"drops[{i}] must be a pair (step, factor), got {drop!r}")
        s, f = _int(f"drops[{i}] step", drop[0]), drop[1]
        if s <= previous:
            raise ValueError(f"drops must have strictly increasing steps >= warmup_steps = {W}; "
                             f"drops[{i}] has step {s}")
        check.positive_number(f"drops[{i}] factor", f)
        previous = s
    if step < W:
        return peak_lr * (step / W)
    lr = float(peak_lr)
    for s, f in drops:
        if step >= s:
            lr *= f
    return lr


# --- torch ------------------------------------------------------------------------------

def lr_lambda(fn: Callable[..., float], *, peak_lr: float, **kw) -> Callable[[int], float]:
    """The multiplier t ↦ fn(t, peak_lr=peak_lr, **kw)/peak_lr for torch's ``LambdaLR``,
    which sets lr = base_lr·multiplier(t); the arguments are checked now, not at step 0."""
    check.function("fn", fn)
    fn(0, peak_lr=peak_lr, **kw)  # raises ValueError on bad arguments

    def multiplier(step: int) -> float:
        return fn(step, peak_lr=peak_lr, **kw) / peak_lr

    multiplier.__name__ = f"{getattr(fn, '__name__', 'schedule')}_multiplier"
    return multiplier


def scheduler(optimizer: torch.optim.Optimizer, fn: Callable[..., float], *, peak_lr: float,
              **kw) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` that gives ``optimizer`` lr = fn(t, peak_lr=peak_lr, **kw) at step t.

    Sets every param group's lr (and ``initial_lr``, LambdaLR's base) to peak_lr first, so the
    optimizer's own lr does not matter. Use: ``opt.step(); sched.step()`` once per step.
    """
    import torch
    from torch.optim.lr_scheduler import LambdaLR

    check.module("optimizer", optimizer, torch.optim.Optimizer)
    multiplier = lr_lambda(fn, peak_lr=peak_lr, **kw)
    for group in optimizer.param_groups:
        if hasattr(group["lr"], "fill_"):  # a tensor lr (capturable/fused optimizers)
            group["lr"].fill_(peak_lr)
        else:
            group["lr"] = peak_lr
        group["initial_lr"] = peak_lr
    return LambdaLR(optimizer, multiplier)


# --- symbolic ---------------------------------------------------------------------------

def symbols() -> dict:
    """SymPy symbols: t (step, a continuous real ≥ 0), η (peak_lr), η_min (min_lr),
    W (warmup_steps), T (total_steps); keys are the Python argument names and "t"."""
    import sympy as sp

    return {"t": sp.Symbol("t", nonnegative=True),
            "peak_lr": sp.Symbol("eta", positive=True),
            "min_lr": sp.Symbol("eta_min", nonnegative=True),
            "warmup_steps": sp.Symbol("W", positive=True),
            "total_steps": sp.Symbol("T", positive=True)}


def _pieces(decay: str) -> tuple:
    import sympy as sp

    s = symbols()
    t, eta, eta_min, W, T = (s[k] for k in ("t", "peak_lr", "min_lr", "warmup_steps",
                                            "total_steps"))
    warm = eta * t / W
    if decay == "cosine":
        down = eta_min + (eta - eta_min) * (1 + sp.cos(sp.pi * (t - W) / (T - W))) / 2
    elif decay == "linear":
        down = eta_min + (eta - eta_min) * (T - t) / (T - W)
    else:
        check.one_of("decay", decay, ("cosine", "linear"))
    return warm, down, s


def symbolic(decay: str = "cosine") -> tuple:
    """(expr, symbols()): ``warmup_cosine`` (decay="cosine") or ``warmup_linear``
    (decay="linear") as a SymPy Piecewise in t — warmup for t < W, decay for W ≤ t ≤ T,
    η_min after. At integer t it equals the numeric function."""
    import sympy as sp

    warm, down, s = _pieces(decay)
    t, W, T = s["t"], s["warmup_steps"], s["total_steps"]
    return sp.Piecewise((warm, t < W), (down, t <= T), (s["min_lr"], True)), s


def symbolic_mean(decay: str = "cosine") -> tuple:
    """(mean, symbols()): the average LR over a run, (1/T)∫₀ᵀ lr(t) dt, integrated piece by
    piece (so W < T need not be assumed). Both decays give (η·W/2 + (η + η_min)(T − W)/2)/T.
    The discrete mean (1/T)·Σ_{t<T} lr(t) differs from it by O(η/T)."""
    import sympy as sp

    warm, down, s = _pieces(decay)
    t, W, T = s["t"], s["warmup_steps"], s["total_steps"]
    area = sp.integrate(warm, (t, 0, W)) + sp.integrate(down, (t, W, T))
    return sp.simplify(area / T), s
