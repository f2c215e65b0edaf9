# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Learning-rate warmup and decay · 学习率预热与衰减
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llmtrain/llmtrain/blob/main/notebooks/03_lr_schedules.ipynb)
#
# Eleven of the twelve models in the slides' table follow the same pattern, 预热 → 峰值 → 衰减
# (warmup → peak → decay), mostly with a cosine decay; PaLM instead holds 10⁻² and then decays as
# $1/\sqrt{\text{step}}$. After this notebook you can write each schedule as a function of the step,
# derive its properties with SymPy (continuity, the average learning rate), drive a PyTorch optimizer
# with it — identically to torch's and transformers' own schedulers — and see what warmup and decay do
# to a real (small) training run.

# %% tags=["setup", "nbval-ignore-output"]
# Setup. On Colab: install llmtrain from the repository; Colab's own torch, transformers
# and ipywidgets are kept when they satisfy llmtrain's ranges (pip upgrades only if needed).
# Elsewhere `make venv` has installed it already; this cell only reports the device.
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "--upgrade-strategy", "only-if-needed",
                    "llmtrain[hf] @ git+https://github.com/llmtrain/llmtrain"], check=True)

import llmtrain  # noqa: F401  (fails here, not later, if the install did not work)
from llmtrain.device import report

print(report())

# %%
from collections import Counter

import matplotlib.pyplot as plt
import sympy as sp
import torch

from llmtrain import plots, schedules, settings, show, train

plots.use_style()
torch.manual_seed(0)

# %% [markdown]
# ## 1. What the table says

# %%
for s in settings.TABLE:
    print(f"{s.model:<10} {s.lr_text}")
print("\ndecay kinds:", dict(Counter(s.decay for s in settings.TABLE)))

# %% [markdown]
# ## 2. Warmup then cosine, derived
#
# Warmup raises the learning rate linearly from 0 to the peak $\eta$ over $W$ steps; the cosine then
# brings it down to $\eta_{\min}$ at step $T$ (GPT-3 and LLaMA use $\eta_{\min} = \eta/10$):

# %%
show(schedules.warmup_cosine)

# %%
expr, sym = schedules.symbolic("cosine")
t, eta, eta_min, W, T = (sym[k] for k in ("t", "peak_lr", "min_lr", "warmup_steps", "total_steps"))
expr

# %% [markdown]
# Continuous where the pieces meet: the warmup line reaches the peak exactly where the cosine starts,
# and the cosine ends exactly at $\eta_{\min}$:

# %%
warm, cos_piece = expr.args[0][0], expr.args[1][0]
print("warmup at t = W    :", sp.simplify(warm.subs(t, W)))
print("cosine at t = W    :", sp.simplify(cos_piece.subs(t, W)))
print("cosine at t = T    :", sp.simplify(cos_piece.subs(t, T)))
print("slope of the cosine at W and at T:",
      [sp.simplify(sp.diff(cos_piece, t).subs(t, x)) for x in (W, T)])

# %% [markdown]
# The cosine leaves the peak and arrives at the floor with zero slope. The average learning rate over
# the run, $\frac1T\int_0^T \eta(t)\,dt$, for a cosine and for a linear decay:

# %%
mean_cos, _ = schedules.symbolic_mean("cosine")
mean_lin, _ = schedules.symbolic_mean("linear")
print("cosine:", sp.factor(mean_cos))
print("linear:", sp.factor(mean_lin))
print("equal :", sp.simplify(mean_cos - mean_lin) == 0)

# %% [markdown]
# The same area: the cosine is symmetric about the midpoint of the decay, exactly like the straight
# line. Cosine and linear decay give the same *average* learning rate; they differ in *when* it is
# spent — the cosine stays high longer, then drops faster. With GPT-3's $\eta_{\min} = \eta/10$ and a
# warmup of 1 % of the run the average is:

# %%
print(sp.nsimplify(mean_cos.subs({eta_min: eta / 10, W: T / 100}) / eta), "× the peak")

# %% [markdown]
# ## 3. All the schedules of the table, drawn
#
# Over a 1,000-step run: GPT-3-style warmup + cosine to a tenth; warmup + linear (BERT); PaLM's
# constant-then-$1/\sqrt{t}$ (with its 10k steps scaled to 100 here); warmup–stable–decay (WSD, MiniCPM);
# and a hand-tuned step schedule like OPT's.

# %%
N, peak = 1000, 3e-4
curves = {
    "warmup + cosine (GPT-3, LLaMA)": lambda s: schedules.warmup_cosine(
        s, peak_lr=peak, warmup_steps=50, total_steps=N, min_lr=peak / 10),
    "warmup + linear (BERT)": lambda s: schedules.warmup_linear(
        s, peak_lr=peak, warmup_steps=50, total_steps=N),
    "constant, then 1/√t (PaLM)": lambda s: schedules.inverse_sqrt(s, peak_lr=peak, warmup_steps=100),
    "warmup-stable-decay (WSD)": lambda s: schedules.warmup_stable_decay(
        s, peak_lr=peak, warmup_steps=50, stable_steps=750, decay_steps=200, min_lr=peak / 10),
    "steps by hand (OPT)": lambda s: schedules.step_decay(
        s, peak_lr=peak, warmup_steps=50, drops=[(400, 0.5), (700, 0.5)]),
}
fig, ax = plt.subplots(figsize=(8, 4))
for name, fn in curves.items():
    ax.plot(range(N + 1), [fn(s) * 1e4 for s in range(N + 1)], label=name)
ax.set(xlabel="step", ylabel="learning rate (×10⁻⁴)", title="learning-rate schedules")
ax.legend(fontsize=8)
plots.save(fig, "03_lr_schedules")
plt.show()

# %% [markdown]
# ## 4. The same numbers as torch's and transformers' schedulers
#
# `schedules.scheduler` wraps any of them in a `LambdaLR`. The tests
# (`tests/test_schedules.py`) compare every schedule, step by step and with random parameters, against
# torch's `SequentialLR(LinearLR, CosineAnnealingLR)` and transformers'
# `get_cosine_schedule_with_warmup`, `get_linear_schedule_with_warmup`, `get_wsd_schedule`,
# `get_inverse_sqrt_schedule`. One of those checks, run here:

# %%
from transformers import get_cosine_schedule_with_warmup


def lrs_of(make_scheduler, steps=300):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = make_scheduler(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


ours = lrs_of(lambda o: schedules.scheduler(o, schedules.warmup_cosine, peak_lr=1e-3,
                                            warmup_steps=30, total_steps=300))
hf = lrs_of(lambda o: get_cosine_schedule_with_warmup(o, num_warmup_steps=30, num_training_steps=300))
print("max |ours − transformers| over 300 steps:", max(abs(a - b) for a, b in zip(ours, hf)))

# %% [markdown]
# ## 5. Explore

# %% tags=["nbval-ignore-output"]
# widget output is routed through the front end, so its stored form depends on the runner
import ipywidgets as widgets


def explore(peak_lr=3e-4, warmup_frac=0.05, min_frac=0.1, decay="cosine"):
    steps = 1000
    W = int(warmup_frac * steps)
    fn = schedules.warmup_cosine if decay == "cosine" else schedules.warmup_linear
    lrs = [fn(s, peak_lr=peak_lr, warmup_steps=W, total_steps=steps, min_lr=min_frac * peak_lr)
           for s in range(steps + 1)]
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.plot(lrs)
    ax.set(xlabel="step", ylabel="lr")
    plt.show()
    print(f"average lr = {sum(lrs) / len(lrs):.3g} ({sum(lrs) / len(lrs) / peak_lr:.3f} × peak)")


widgets.interact(explore, peak_lr=widgets.FloatLogSlider(3e-4, base=10, min=-5, max=-1),
                 warmup_frac=(0.0, 0.5, 0.01), min_frac=(0.0, 1.0, 0.05), decay=["cosine", "linear"]);

# %% [markdown]
# ## 6. What warmup does: training runs
#
# The tiny LLaMA (125k parameters) on a generated Markov corpus whose best possible loss is its entropy
# rate, 1.213 nats (`llmtrain.train`). 300 steps of AdamW with gradient clipping at 1.0, as in the
# table; the same data order and initial weights in every run. First: warmup or not, at a moderate and
# at a very high peak learning rate, both followed by a cosine to a tenth.

# %%
STEPS = 300


def run(schedule):
    return train.train("tiny", steps=STEPS, batch_size=8, seq_len=64, lr_schedule=schedule, seed=0)


def final(h):
    return sum(h.loss[-20:]) / 20  # mean of the last 20 steps


warmup_runs = {}
for peak in (1e-2, 1e-1):
    for W in (0, 30):
        warmup_runs[(peak, W)] = run(lambda s, p=peak, w=W: schedules.warmup_cosine(
            s, peak_lr=p, warmup_steps=w, total_steps=STEPS, min_lr=p / 10))
print(f"{'peak lr':>8} {'warmup':>7} {'final loss':>11}")
for (peak, W), h in warmup_runs.items():
    print(f"{peak:>8g} {W:>7} {final(h):>11.3f}")

# %% [markdown]
# ## 7. What decay does: cosine vs WSD vs constant
#
# At the moderate peak (10⁻²), with a 30-step warmup in all three:

# %%
peak = 1e-2
decay_runs = {
    "cosine to a tenth": run(lambda s: schedules.warmup_cosine(
        s, peak_lr=peak, warmup_steps=30, total_steps=STEPS, min_lr=peak / 10)),
    "WSD (decay over the last 20 %)": run(lambda s: schedules.warmup_stable_decay(
        s, peak_lr=peak, warmup_steps=30, stable_steps=210, decay_steps=60, min_lr=peak / 10)),
    "constant": run(lambda s: schedules.warmup_stable_decay(
        s, peak_lr=peak, warmup_steps=30, stable_steps=STEPS, decay_steps=1)),
}
for name, h in decay_runs.items():
    print(f"{name:<32} final loss {final(h):.3f}")

# %%
fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for (p, W), h in warmup_runs.items():
    a.plot(h.step, h.loss, label=f"peak {p:g}, warmup {W}", lw=1)
a.set(xlabel="step", ylabel="training loss (nats)", title="warmup or not", ylim=(1.0, 6.0))
for name, h in decay_runs.items():
    b.plot(h.step, h.loss, label=name, lw=1)
b.set(xlabel="step", title="decay: cosine, WSD, constant")
for ax in (a, b):
    ax.axhline(train.entropy_rate_nats(), color="gray", ls="--", lw=1)
    ax.legend(fontsize=8)
plots.save(fig, "03_training_runs")
plt.show()

# %%
hi_cold, hi_warm = final(warmup_runs[(1e-1, 0)]), final(warmup_runs[(1e-1, 30)])
lo_cold, lo_warm = final(warmup_runs[(1e-2, 0)]), final(warmup_runs[(1e-2, 30)])
print(f"peak 0.1 : warmup saves {hi_cold - hi_warm:.3f} nats ({hi_cold:.3f} → {hi_warm:.3f})")
print(f"peak 0.01: warmup saves {lo_cold - lo_warm:.3f} nats ({lo_cold:.3f} → {lo_warm:.3f})")
finals = {name: final(h) for name, h in decay_runs.items()}
print("decay, best to worst:", " < ".join(f"{n} {v:.3f}" for n, v in sorted(finals.items(), key=lambda kv: kv[1])))

# %% [markdown]
# **What these runs show** (the numbers are the cell above):
#
# - At a very high peak (0.1), starting at full speed costs dearly: the run without warmup ends about
#   a nat worse than the run with 30 warmup steps. At 10⁻² warmup changes little here — at this size
#   and with clipping at 1.0 the model survives a cold start. Warmup is insurance against early
#   instability, and its value grows with the learning rate.
# - Decay matters at the end: cosine and WSD both finish below the constant learning rate. WSD keeps
#   the peak for 80 % of the run and wins back most of the gap in its short final decay; in this
#   short run the cosine, which starts lowering the rate early, stays ahead (the dashed line is the
#   corpus's entropy, the best any model can do).
#
# **Exercise.** GPT-3 175B warmed up over 375M tokens and decayed over 260B with batches of 3.2M
# tokens. Roughly what fraction of its optimizer steps were warmup?
#
# <details><summary>Answer</summary>
#
# About 375M / 3.2M ≈ 117 steps (fewer at full batch, more during its batch ramp, notebook 02) out of
# 260B / 3.2M ≈ 81k: about 0.1 %. The warmup is short; its job is only to get through the first
# unstable steps.
# </details>
