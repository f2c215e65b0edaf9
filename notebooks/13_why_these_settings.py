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
# # Why these settings: optimizer, weight decay, clipping, batch and learning rate at scale · 为什么这样设置：优化器、权重衰减、梯度裁剪、规模化的批次与学习率
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llmtrain/llmtrain/blob/main/notebooks/13_why_these_settings.ipynb)
#
# Notebook [01](01_pretraining_settings.ipynb) read every cell of the slides' table of twelve
# LLMs' settings, and notebooks [02](02_batch_schedules.ipynb), [03](03_lr_schedules.ipynb) and
# [04](04_mixed_precision.ipynb) ran the batch, learning-rate and precision columns. The optimizer,
# weight-decay and clipping columns were only tabulated, and nothing said why a bigger run picks a
# bigger batch at a smaller learning rate. Here each of those choices is run on tiny LLaMAs on this
# CPU and measured. After this notebook you can
#
# - say what AdamW's weight decay 0.1 does per step and over a run, how it differs from Adam with
#   L2, and why β₂ = 0.95 rather than 0.999 (`llmtrain.recipes.optimizers`);
# - provoke a loss spike and say what clipping at 1.0, 0.5 or 0.4, warmup and β₂ do to it
#   (`llmtrain.recipes.spikes`);
# - reproduce DeepSeek LLM's batch and learning-rate scaling laws in miniature and place the table's
#   runs on the published curves (`llmtrain.cost.hparam_laws`, `llmtrain.recipes.sweep`);
# - explain why the peak learning rate falls as models grow wider, and what μP changes
#   (`llmtrain.recipes.mup`).

# %% [markdown]
# > **导读**
# > 课件的表格列出了十二个大语言模型的优化器、权重衰减和梯度裁剪，但没有说明为什么这样设置。
# > 本笔记本在小型 LLaMA 上逐项运行这些设置：AdamW 与 Adam+L2 的区别、β₂ 取 0.95 的原因、梯度裁剪对损失尖峰的作用。
# > 接着用 DeepSeek LLM 的方法，在 CPU 上复现“最优批次随算力增大、最优学习率随算力减小”的幂律，并把表中的模型放到论文的曲线上。
# > 最后用 μP 说明为什么模型越宽，峰值学习率越小。

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
import math

import matplotlib.pyplot as plt
import sympy as sp
import torch

from llmtrain import plots, show
from llmtrain.recipes import settings, train

plots.use_style()
# The runs here are tiny (d = 32 to 512): one thread is as fast, and on a shared machine a second
# thread only waits for a core that another kernel is using.
torch.set_num_threads(1)

# %% [markdown]
# ## 1. The columns this notebook explains · 本笔记本解释的几列
#
# The slides' table (notebook [01](01_pretraining_settings.ipynb) explains every cell of it) gives
# each run an optimizer, a weight decay and a gradient-clipping threshold, beside its batch and peak
# learning rate. Where a paper or README names the optimizer and its β more precisely than the
# slide, `llmtrain.recipes.settings` records it with the place it was read:

# %%
from collections import Counter

from llmtrain.recipes.settings import TABLE

print(f"{'model':<11}{'optimizer':<11}{'paper says':<12}{'β1, β2':<12}{'decay':<7}{'clip':<6}"
      f"{'batch':<14}peak lr")
for s in TABLE:
    betas = "-" if s.betas is None else f"{s.betas[0]}, {s.betas[1]}"
    print(f"{s.model:<11}{s.optimizer:<11}{s.paper_optimizer or '-':<12}{betas:<12}"
          f"{s.weight_decay!s:<7}{s.grad_clip or '-'!s:<6}{s.batch_text:<14}{settings.format_lr(s.peak_lr)}")
decays, clips = Counter(s.weight_decay for s in TABLE), Counter(s.grad_clip for s in TABLE)
print(f"\nweight decay 0.1 in {decays[0.1]} of {len(TABLE)} runs (PaLM: lr²); clipping at 1.0 in "
      f"{clips[1.0]}, at 0.5 and 0.4 in {clips[0.5]} and {clips[0.4]}, not stated in {clips[None]}")
assert decays[0.1] == 11 and clips[1.0] == 8

# %% [markdown]
# Four questions follow, one per section: what weight decay 0.1 and Adam's β₂ = 0.95 do (§2);
# what clipping at 1.0, 0.5 or 0.4 does to a loss spike (§3); why a bigger run takes a bigger batch
# at a smaller learning rate (§4); and why the peak learning rate falls as models grow wider (§5).
# Each is run on tiny LLaMAs on this CPU, and each answer is checked in the cell that gives it.

# %% [markdown]
# ## 2. Optimizer and weight decay · 优化器与权重衰减
#
# The table's columns 优化器 (optimizer) and 权重衰减 (weight decay): Adam, AdamW or Adafactor; 0.1 in
# eleven rows, $lr^2$ for PaLM.
#
# Notebook [01](01_pretraining_settings.ipynb) §3.3–3.5 reads these cells and takes one Adam and one
# AdamW step by hand. Here we derive what the two kinds of decay do, run the tiny LLaMA where they
# differ, turn the table's 0.1 into a number per step, and measure why every source that gives Adam's
# $\beta_2$ sets 0.95.

# %%
from llmtrain.cost import memory
from llmtrain.cost.methods import OPTIMIZERS
from llmtrain.model import shapes
from llmtrain.recipes import optimizers

n_01 = sum(s.weight_decay == 0.1 for s in settings.TABLE)
n_adamw = sum(s.optimizer == "AdamW" for s in settings.TABLE)
assert (n_01, n_adamw, len(settings.TABLE)) == (11, 8, 12)
print(f"weight decay 0.1: {n_01} rows; AdamW: {n_adamw} rows of {len(settings.TABLE)}")

# %% [markdown]
# ### 2.1 Adam with L2, and AdamW, written out · L2 正则的 Adam 与 AdamW 的更新公式
#
# "Weight decay λ" means two different updates. Adam with L2 (`torch.optim.Adam(weight_decay=λ)`)
# adds $\lambda w$ to the gradient, so the decay goes through the moments $m$, $v$ and is divided by
# $\sqrt{\hat v}$. AdamW (Loshchilov and Hutter 2019; `torch.optim.AdamW`) leaves the moments to the
# loss gradient and takes $\eta\lambda w$ off the weight outside. One step $t$ from the state
# $(m_{t-1}, v_{t-1})$:

# %%
show(optimizers.adam_update)

# %%
l2, adamw = optimizers.adam_update(decoupled=False), optimizers.adam_update(decoupled=True)
sym = l2["symbols"]
lam = sym["lam"]
print("λ inside m (Adam + L2):", lam in l2["m"].free_symbols, "  inside m (AdamW):", lam in adamw["m"].free_symbols)
sp.Eq(sp.Symbol(r"\Delta w_{\mathrm{L2}}"), l2["update"])

# %%
sp.Eq(sp.Symbol(r"\Delta w_{\mathrm{AdamW}}"), adamw["update"])

# %% [markdown]
# `tests/test_optimizers.py::test_symbolic_update_is_torchs` evaluates both expressions on the state
# torch keeps and matches `torch.optim.Adam` and `torch.optim.AdamW` step by step (float64, equal to
# rounding). The difference shows on a weight the loss does not touch ($g = 0$), at the first step:

# %%
first = {sym["g"]: 0, sym["m_prev"]: 0, sym["v_prev"]: 0, sym["t"]: 1}
w_pos = {sym["w"]: sp.Rational(1, 50)}  # a weight w = 0.02 > 0
du_l2 = sp.simplify(l2["update"].subs(first).subs(sym["eps"], 0).subs(w_pos))
du_w = sp.simplify(adamw["update"].subs(first).subs(w_pos))
print("Adam + L2:", du_l2, "  (λw/|λw| = 1: a full step η, whatever λ)")
print("AdamW    :", du_w, "  (η·λ·w, the decay alone)")
assert du_l2 == -sym["eta"] and du_w == -sym["eta"] * lam / 50

# %% [markdown]
# With L2, Adam normalises the decay gradient like any other gradient: a weight whose only gradient
# is $\lambda w$ moves by about $\eta$ per step towards 0, and λ drops out. With AdamW it shrinks by the
# factor $1-\eta\lambda$ per step, exactly ($m = v = 0$, so the adaptive part is 0).
#
# ### 2.2 A run where they differ · 一次能看出差别的训练
#
# Train the tiny LLaMA on a corpus that uses only tokens 0–191 of its 256: the input-embedding rows of
# tokens 192–255 then get no loss gradient, only the decay. The embedding must be untied (a tied
# output layer would give every row a gradient):

# %%
tiny, USED = shapes.get("tiny"), 192
print("tiny: V =", tiny.vocab_size, " tie_embeddings =", tiny.tie_embeddings)
print(f"tokens in the corpus: 0–{USED - 1}; never used: {USED}–{tiny.vocab_size - 1}")
assert not tiny.tie_embeddings
show(optimizers.unused_rows)

# %% tags=["nbval-ignore-output"]
LR, STEPS, WD = 1e-3, 100, 0.1
runs = {o: optimizers.unused_rows(o, steps=STEPS, lr=LR, weight_decay=WD, used_vocab=USED)
        for o in ("adamw", "adam_l2")}
for o, r in runs.items():
    print(f"{o:<8} unused rows' norm {r.unused_norm[0]:.4f} -> {r.unused_norm[-1]:.4f}   used rows' norm "
          f"{r.used_norm[0]:.3f} -> {r.used_norm[-1]:.3f}   loss (mean of last 10 steps) "
          f"{sum(r.loss[-10:]) / 10:.3f}")

# %%
ks = range(STEPS + 1)
w, a = runs["adamw"], runs["adam_l2"]
adamw_pred = [w.unused_norm[0] * optimizers.decay_factor(LR, WD, k) for k in ks]
l2_pred = [optimizers.adam_l2_shrunk_norm(a.w0_unused, LR, k) for k in ks]
rel = max(abs(m / p - 1) for m, p in zip(w.unused_norm, adamw_pred))
assert rel < 1e-4
print(f"AdamW: unused rows' norm = (1 − ηλ)^k × start at every step (to < 1e-4; float32 rounding); "
      f"after {STEPS} steps {optimizers.decay_factor(LR, WD, STEPS):.4f} of it is left")
assert all(abs(a.unused_norm[k] / l2_pred[k] - 1) < 0.1 for k in (5, 10, 20))
assert a.unused_norm[-1] < 0.02 * a.unused_norm[0]
print("Adam + L2: within 10 % of ‖max(|w₀| − ηk, 0)‖ at k = 5, 10, 20; under 2 % of the start after",
      STEPS, "steps")
print(f"  closed form: the largest unused weight, {float(a.w0_unused.abs().max()):.3f}, reaches 0 after "
      f"{float(a.w0_unused.abs().max()) / LR:.0f} steps (|w|/η)")

# %%
loss_w, loss_a = sum(w.loss[-10:]) / 10, sum(a.loss[-10:]) / 10
assert loss_a - loss_w > 0.3 and a.used_norm[-1] < 0.6 * a.used_norm[0] < w.used_norm[-1]
print("Loss over the last 10 steps: AdamW lower than Adam + L2 by more than 0.3 nats")
print("Used rows: Adam + L2 shrinks them below 60 % of their start; AdamW lets them grow")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
ax = axes[0]
ax.plot(ks, w.unused_norm, label="AdamW, measured")
ax.plot(ks, adamw_pred, "k:", label="(1 − ηλ)^k")
ax.plot(ks, a.unused_norm, label="Adam + L2, measured")
ax.plot(ks, l2_pred, "k--", label="‖max(|w₀| − ηk, 0)‖")
ax.set(xlabel="step", ylabel="norm of the unused rows", title="Rows with no loss gradient")
ax.legend()
ax = axes[1]
ax.plot(w.loss, label="AdamW")
ax.plot(a.loss, label="Adam + L2")
ax.set(xlabel="step", ylabel="training loss (nats)", title=f"Same λ = {WD}, η = {LR}")
ax.legend()
plt.show()

# %% [markdown]
# Same λ = 0.1, two different optimizers. Under AdamW the unused rows lose 1 % in 100 steps, as
# $(1-\eta\lambda)^k$ says to rounding. Under Adam + L2 they shrink by about $\eta$ per step and less
# than 2 % of them is left after 100 steps. The used rows shrink as well, below 60 % of their start,
# where under AdamW they grow; the loss pays for it. In Adam + L2 the decay's
# strength depends on the gradients' sizes; in AdamW it is $\eta\lambda$ per step for every weight.
# Eight of the twelve rows say AdamW; on the rows that say "Adam", see notebook 01 §3.3.
#
# ### 2.3 What 0.1 means per step · 每一步的 0.1 意味着什么
#
# Under AdamW a weight the gradients leave alone keeps $(1-\eta\lambda)$ of itself per step, and
# $e^{-1}$ of itself after $1/(\eta\lambda)$ steps. At the table's peak learning rates, with the final
# batch converting steps to tokens:

# %%
print(f"{'model':<10} {'peak lr':>8} {'1 − ηλ per step':>16} {'1/(ηλ) steps':>13} {'half-life':>10}"
      f" {'tokens in 1/(ηλ) steps':>23}")
for s in settings.TABLE:
    if not isinstance(s.weight_decay, float):
        continue
    steps_e = 1 / (s.peak_lr * s.weight_decay)
    half = optimizers.half_life_steps(1 - s.peak_lr * s.weight_decay)
    tok = "batch not given" if s.batch_tokens_end is None else f"{steps_e * s.batch_tokens_end:.2e}"
    print(f"{s.model:<10} {settings.format_lr(s.peak_lr):>8} {1 - s.peak_lr * s.weight_decay:>16.7f} "
          f"{steps_e:>13,.0f} {half:>10,.0f} {tok:>23}")

# %% [markdown]
# GPT-3's 6×10⁻⁵ gives a time scale of 166,667 steps; at its 3.2M-token batch that is about
# 5.33×10¹¹ tokens. The decay is slow: it acts over the whole run, not within a few steps, and it acts
# less once the cosine has lowered $\eta$. How many steps each run took is not in the records here
# (`llmtrain.recipes.settings` holds the batch, not the training tokens), so the table above cannot say
# what fraction of a run one time scale is.
#
# **PaLM's $lr^2$.** The cell of notebook 01 §3.5 computes PaLM's decay rate $\lambda_k = \eta_k^2$ from its schedule:
# $10^{-4}$ while $\eta = 10^{-2}$ (the first 10,000 steps), then $1/k$. What it means per step depends on
# how the optimizer applies it. In T5X's Adafactor (the public
# JAX code that has this option, `weight_decay_rate_lr_exponent`; google-research/t5x, `t5x/adafactor.py`)
# the rate is the fraction removed per step, $w \leftarrow (1-\eta^2)w - \Delta$: then the first 10,000
# steps remove $10^{-4}$ per step, a time scale of 10,000 steps, and afterwards the factors $(1 - 1/k)$
# telescope, $\prod_{k=a}^{K}(1-1/k) = (a-1)/K$: an untouched weight shrinks like $1/K$. (Applied like
# AdamW's λ, the fraction would be $\eta\cdot\eta^2 = 10^{-6}$ per step instead.)

# %%
a_, K = 10_001, 250_000
prod = math.prod(1 - 1 / k for k in range(a_, K + 1))
assert abs(prod / ((a_ - 1) / K) - 1) < 1e-9
print(f"∏(1 − 1/k), k = {a_:,}..{K:,} = {prod:.6f} = (a − 1)/K = {(a_ - 1) / K:.6f}")
print(f"first 10,000 steps at 1 − 1e-4 per step: {(1 - 1e-4) ** 10_000:.4f} left (≈ 1/e)")

# %% [markdown]
# **Adafactor's memory, and what PaLM kept.** Adafactor (Shazeer and Stern 2018) replaces Adam's
# $v$ of an $n\times m$ matrix by a row and a column vector ($n + m$ numbers) and by default keeps no
# first moment $m$. Optimizer states per parameter on LLaMA-7B, fp32 states, from the accounting's
# registry `llmtrain.cost.methods.OPTIMIZERS`:

# %%
S7 = shapes.get("llama-7b")
P = memory.model_state_bytes(S7, precision="mixed", optimizer="adamw")["weights"] // 2
adam_b = memory.model_state_bytes(S7, precision="mixed", optimizer="adam")["optimizer"]
fact_b = memory.model_state_bytes(S7, precision="mixed", optimizer="adafactor")["optimizer"]
palm_b = OPTIMIZERS["adam"].states * 4 * P  # unfactored v + momentum m: two fp32 states, Adam's count
print(f"Adam (m, v)                        : {adam_b / P:.2f} bytes per parameter")
print(f"Adafactor, factored, no momentum   : {fact_b / P:.5f} bytes per parameter ({fact_b:,} bytes)")
print(f"Adafactor as PaLM ran it (§5: no factorisation, β1 = 0.9): {palm_b / P:.2f} bytes per parameter")
assert palm_b == adam_b

# %% [markdown]
# PaLM took none of that saving (notebook 01 §3.4; Chowdhery et al. 2022, §5). Dropping the first
# moment also drops the averaging of noise across steps: without $m$ every step follows the current
# gradient alone. A gradient that flips sign every step (pure noise around 0), Adam's update in closed
# form with and without momentum:

# %%
noise = [(1.0, 1), (-1.0, 1)] * 100
for b1 in (0.9, 0.0):
    u = optimizers.adam_updates(noise, beta1=b1, beta2=0.95)
    print(f"β1 = {b1}: mean |update| over the last 100 steps = {sum(abs(x) for x in u[-100:]) / 100:.3f} "
          f"(a full step is 1)")

# %% [markdown]
# With $\beta_1 = 0.9$ the ±1 gradients nearly cancel in $m$ and the steps are small; without momentum each
# step is a full step, wherever the current gradient points.
#
# ### 2.4 Why β₂ = 0.95 rather than 0.999 · 为什么 β₂ 取 0.95 而不是 0.999
#
# Every source in the records that gives Adam's $(\beta_1, \beta_2)$ says (0.9, 0.95), against
# PyTorch's default 0.999:

# %%
for s in settings.TABLE:
    if s.betas is not None:
        print(f"{s.model:<9} {s.paper_optimizer:<6} (β1, β2) = {s.betas}   [{s.optimizer_source[:60]}…]")
print("not recorded:", ", ".join(s.model for s in settings.TABLE if s.betas is None))
assert {s.betas for s in settings.TABLE if s.betas is not None} == {(0.9, 0.95)}

# %% [markdown]
# $v$ remembers a squared gradient with weight $(1-\beta_2)\beta_2^k$ after $k$ steps: its memory halves
# every $\ln 2 / (-\ln\beta_2)$ steps. After a long run of gradients $g$ and one gradient $S = rg$, Adam's
# update $k$ steps later (once $m$ has forgotten the spike, $\beta_1^k \ll 1$) is
# $1/\sqrt{1 + (1-\beta_2)\beta_2^k(r^2-1)}$ of its usual size, so it is back to a fraction $f$ after
# $k = \ln\!\big[(1/f^2-1)/((1-\beta_2)(r^2-1))\big]/\ln\beta_2$ steps:

# %%
show(optimizers.recovery_steps)

# %%
for b2 in (0.95, 0.999):
    print(f"β2 = {b2}: half-life of v's memory {optimizers.half_life_steps(b2):.1f} steps; after one 100× "
          f"gradient, back to 50 % in {math.ceil(optimizers.recovery_steps(b2, 100, 0.5)):,} steps, "
          f"to 90 % in {math.ceil(optimizers.recovery_steps(b2, 100, 0.9)):,}")

# %% [markdown]
# The exact update for any stream of constant pieces is a sum of geometric series
# (`optimizers.adam_updates`, with Adam's bias corrections). It equals `torch.optim.Adam` fed the same
# gradients, and its long-run count of steps equals the formula above:

# %%
spike_updates, jump_updates = {}, {}
for b2 in (0.95, 0.999):
    short = [(1.0, 200), (100.0, 1), (1.0, 200)]
    cf, me = optimizers.adam_updates(short, 0.9, b2), optimizers.adam_updates_measured(short, 0.9, b2)
    err = max(abs(x - y) for x, y in zip(cf, me))
    assert err < 1e-12
    n = 2_000 if b2 == 0.95 else 20_000  # long enough that v has settled (β2^n ≈ 0)
    after = spike_updates[b2] = optimizers.adam_updates([(1.0, n), (100.0, 1), (1.0, 5_000)], 0.9, b2)[n:]
    counts = [max(k for k, u in enumerate(after) if u < f) + 1 for f in (0.5, 0.9)]
    assert counts == [math.ceil(optimizers.recovery_steps(b2, 100, f)) for f in (0.5, 0.9)]
    larger = sum(u > 1.01 for u in after[:100])  # the spike's step and those after it
    assert (counts[0] > 1000 and larger > 5) if b2 == 0.999 else (counts == [100, 150] and larger == 0)
    print(f"β2 = {b2}: closed form = torch.optim.Adam (float64, < 1e-12 over {len(cf)} steps)")
    print(f"  update at the spike {after[0]:.2f}× the usual (for a huge spike (1 − β1)/√(1 − β2) = "
          f"{0.1 / math.sqrt(1 - b2):.2f}); steps over 1 % larger than usual: {larger}")
    print(f"  last step below 50 % / 90 % of the usual: {counts[0] - 1:,} / {counts[1] - 1:,} steps after it")

# %% [markdown]
# Two effects, both in favour of 0.95. At the spike and just after it, $m$ carries the large gradient
# while $v$ has taken in only $(1-\beta_2)$ of its square: at 0.999 the spike's step is 3.29× the usual
# one and the next steps stay larger than usual (the spike's step tends to
# $(1-\beta_1)/\sqrt{1-\beta_2} = 3.16$ for a huge spike); at 0.95 it is 0.49× (limit 0.45) and no step
# is larger than usual. Afterwards a long memory holds $\sqrt{\hat v}$ up: at 0.999 training runs at
# under half speed for over a thousand steps after one bad batch, at 0.95 for about a hundred.
#
# The other side: gradients that grow suddenly ×10 and stay large (notebook 01 §3.3 measured the
# largest step of this case). Here $\hat v$ must catch up, and until it does the update
# overshoots its usual size 1:

# %%
for b2 in (0.95, 0.999):
    n = 2_000 if b2 == 0.95 else 20_000
    jump_updates[b2] = optimizers.adam_updates([(1.0, n), (10.0, 5_000)], 0.9, b2)[n - 1:]
    after = jump_updates[b2][1:]  # after[0]: the first step with the larger gradient
    peak = max(after)
    over = max(k for k, u in enumerate(after) if u > 1.1) + 1
    assert (peak < 1.12 and over < 150) if b2 == 0.95 else (peak > 5 and over > 1000)
    print(f"β2 = {b2}: largest update {peak:.2f}× the usual, {after.index(peak) + 1} steps after the jump; "
          f"above 1.1× for {over:,} steps")

# %%
ks_ = sorted({round(10 ** (i / 40)) for i in range(0, 148)})  # 1..5,000, log-spaced
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for b2 in (0.95, 0.999):  # the closed forms computed above: the same numbers on every CPU
    axes[0].plot(ks_, [spike_updates[b2][k] for k in ks_], label=f"β2 = {b2}")
    axes[1].plot(ks_, [jump_updates[b2][k] for k in ks_], label=f"β2 = {b2}")
axes[0].set(xscale="log", xlabel="steps after one 100× gradient", ylabel="update / usual update",
            title="The memory of a spike")
axes[1].set(xscale="log", xlabel="steps after the gradient grows 10×", ylabel="update / usual update",
            title="Catching up with larger gradients")
for ax in axes:
    ax.axhline(1, color="grey", lw=0.8)
    ax.legend()
plots.save(fig, "13_beta2_memory")
plt.show()

# %% [markdown]
# At 0.95, Adam forgets a spike within about 150 steps and adapts to larger gradients with a step at most
# 11 % too large; at 0.999 it takes over a thousand steps either way, and its steps are up to five times
# too large while the gradients grow. PaLM chose the other way (notebook 01 §3.3): a $\beta_2$ that grows
# towards 1, which its paper found more stable for rare tokens' poorly estimated second moments. These are
# computations, not the sources' stated reasons: the records above give the value, not why.
#
# **Exercise · 练习.** With GPT-3's peak learning rate and λ = 0.1, after how many steps does a weight
# that the gradients never touch lose half of itself under AdamW? Under Adam + L2, for a weight of 0.02?
#
# <details><summary>Answer · 答案</summary>
#
# AdamW: $(1-\eta\lambda)^k = 1/2$ gives $k = \ln 2/(-\ln(1-\eta\lambda))$; Adam + L2: about $\eta$ per
# step whatever λ, so $0.01/\eta$ steps (printed below).
#
# </details>

# %%
lr3 = settings.get("GPT-3").peak_lr
print(f"AdamW    : {optimizers.half_life_steps(1 - lr3 * 0.1):,.0f} steps")
print(f"Adam + L2: {0.01 / lr3:.0f} steps (0.02 → 0.01 at η = {settings.format_lr(lr3)} per step)")

# %% [markdown]
# ## 3. Gradient clipping and loss spikes · 梯度裁剪与损失尖峰
#
# The table's last column clips the global gradient norm: most runs at 1.0, Baichuan-2 at 0.5,
# Falcon at 0.4. Clipping rescales a step's gradient g to g · min(1, c/‖g‖) before the
# optimizer sees it. It is there for the rare step whose gradient is far larger than usual, the
# kind that starts a loss spike. This section provokes spikes on the tiny Llama the two ways they
# happen in practice (a rare bad batch; a learning rate too high without warmup), measures what
# clipping, warmup and β₂ do to them, and lists what the table's large runs reported.

# %%
from llmtrain.recipes import spikes

clip_column = {s.model: s.grad_clip for s in settings.TABLE}
print("grad clip in the table:", clip_column)

# %% [markdown]
# ### 3.1 What clipping does to Adam · 裁剪对 Adam 的作用
#
# Two facts about Adam decide what clipping can do, both visible in its update
# m̂/√v̂ (with m and v the running means of g and g²):
#
# 1. Multiply every gradient by the same k > 0 and m grows by k, √v by k: the update does not
#    change (up to Adam's ε). So if *every* step is clipped, the threshold does not matter; what
#    decides how often clipping acts is the typical gradient norm relative to the threshold.
# 2. One gradient far larger than all before it moves each weight by a bounded amount:
#    m ≈ (1−β₁)g, v ≈ (1−β₂)g², so Δθ/lr → (1−β₁)/√(1−β₂), and its decaying moments keep
#    pushing the same way in the following steps, (1−β₁)/√(1−β₂) · (β₁/√β₂)ᵏ at the k-th.

# %%
b1, b2, k, g, m0, v0 = sp.symbols("beta1 beta2 k g m_0 v_0", positive=True)
m = b1 * m0 + (1 - b1) * g              # one Adam step's moments from earlier m0, v0
v = b2 * v0 + (1 - b2) * g**2
update = m / sp.sqrt(v)
scaled = update.subs({g: k * g, m0: k * m0, v0: k**2 * v0}, simultaneous=True)
assert sp.simplify(scaled - update) == 0
a, c = sp.symbols("a c", positive=True)  # a = 1 - beta1, c = 1 - beta2
huge = sp.limit(update.subs({b1: 1 - a, b2: 1 - c}), g, sp.oo)
assert sp.simplify(huge - a / sp.sqrt(c)) == 0
print("all gradients times k: the update is unchanged:", sp.simplify(scaled - update) == 0)
print("one huge gradient, |g| -> oo: dtheta/lr ->", huge, " (a = 1-beta1, c = 1-beta2)")

# %% [markdown]
# In numbers, for the table's β₂ = 0.95 and the older default 0.999 (β₁ = 0.9): the first
# column is the step of the huge gradient late in training, the second at step 31 (Adam's bias
# correction still large, as at the bad batch below), the third the total over all later steps.

# %%
show(spikes.adam_spike_displacement)
for beta2 in (0.95, 0.999):
    print(f"beta2 {beta2}: one step {spikes.adam_spike_update(0.9, beta2):.3f} lr, "
          f"at step 31 {spikes.adam_spike_update(0.9, beta2, 31):.3f} lr, "
          f"in total {spikes.adam_spike_displacement(0.9, beta2):.1f} lr per weight")
assert spikes.adam_spike_displacement(0.9, 0.999) > 5 * spikes.adam_spike_displacement(0.9, 0.95)

# %% [markdown]
# A large β₂ remembers gradients longer, so the spike's own g² divides its later updates less
# quickly than its momentum fades: late in training one bad step moves each weight about 5× as
# far with β₂ = 0.999 as with 0.95. Early in training Adam's bias correction narrows the gap.
#
# ### 3.2 A rare bad batch · 罕见的坏批次
#
# The runs: the tiny Llama, AdamW at 3×10⁻³, batches of 4 × 32 tokens, 80 steps, in float64
# (the runs then agree across CPUs to about 10⁻³ in the loss; float32 parts sooner). At step 30
# the batch is replaced by one of a single repeated token; every other batch is the same as in
# the undisturbed run, so the two losses can be compared step by step.

# %%
show(spikes.bad_batch)
show(spikes.spike_stats)

# %% tags=["nbval-ignore-output"]
AT, N = 30, 80
bad = spikes.bad_batch("repeat", AT)
ref_none = spikes.spike_run(steps=N, grad_clip=None)
run_none = spikes.spike_run(steps=N, grad_clip=None, bad=bad)
ref_1 = spikes.spike_run(steps=N, grad_clip=1.0)
run_1 = spikes.spike_run(steps=N, grad_clip=1.0, bad=bad)
run_04 = spikes.spike_run(steps=N, grad_clip=0.4, bad=bad)
typical = spikes.spike_stats(run_none, ref_none, after=AT, clip=None).typical_norm
print(f"typical gradient norm {typical:.2f} (smallest {min(ref_none.grad_norm):.2f}); "
      f"at the bad batch {run_none.grad_norm[AT]:.1f}, {run_none.grad_norm[AT] / typical:.0f}x")
for clip in (1.0, 0.5, 0.4):
    print(f"clip {clip}: acts on {spikes.clipped_steps(ref_none.grad_norm, clip)} of {N} steps")
assert run_none.grad_norm[AT] > 10 * typical            # measured 21x
assert 1.3 < typical < 2.0                               # measured 1.56
assert min(ref_none.grad_norm) > 1.0                     # every step above every threshold

# %% [markdown]
# The tiny model's gradient norm never falls below 1 (about 1.6 at every stage of these runs:
# with 4 × 32 tokens a batch, it is mostly noise), so clipping at 1.0, 0.5 or 0.4 acts on *every*
# step and, by fact 1, the three thresholds give the same run. What clipping changes here is
# only the bad step: its gradient gets the same norm as every other step's.

# %% tags=["nbval-ignore-output"]
rows = {"no clipping": spikes.spike_stats(run_none, ref_none, after=AT, clip=None),
        "clip 1.0": spikes.spike_stats(run_1, ref_1, after=AT, clip=1.0)}
for name, s in rows.items():
    rec = "not within the run" if s.recovery is None else f"{s.recovery} steps"
    print(f"{name:12s} clipped {s.clipped_fraction:.0%}  loss peak +{s.loss_peak:.3f} nats  "
          f"mean excess over {s.window} steps +{s.mean_excess:.3f}  back within "
          f"{s.tolerance} nats ({s.window}-step mean): {rec}")
same = max(abs(x - y) for x, y in zip(run_1.loss, run_04.loss))
print(f"clip 0.4 vs clip 1.0 with the bad batch: losses differ by at most {same:.0e}")
s0, s1 = rows["no clipping"], rows["clip 1.0"]
assert s0.loss_peak > 2.5 * s1.loss_peak                 # measured 0.161 vs 0.054
assert s0.mean_excess > 1.5 * s1.mean_excess             # measured 0.059 vs 0.027
assert s1.recovery is not None and (s0.recovery is None or s0.recovery > s1.recovery)
# measured: 30 steps with clipping; without, not within the run
assert same < 0.01                                       # measured 4e-4
excess_none = spikes.loss_excess(run_none.loss, ref_none.loss)
top = max(range(AT + 1, AT + 16), key=lambda s: excess_none[s])
print(f"without clipping the loss excess peaks {top - AT} steps after the bad batch")
assert AT + 2 <= top <= AT + 12                          # measured 4

# %% tags=["nbval-ignore-output"]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
ax1.semilogy(run_none.grad_norm, label=f"bad batch at step {AT}")
ax1.semilogy(ref_none.grad_norm, label="undisturbed", alpha=0.7)
for clip in (1.0, 0.4):
    ax1.axhline(clip, ls="--", lw=1, color="gray")
ax1.set(xlabel="step", ylabel="gradient norm (before clipping)", title="the norm trace")
ax1.legend()
for name, run, ref in (("no clipping", run_none, ref_none), ("clip 1.0", run_1, ref_1)):
    excess = spikes.loss_excess(run.loss, ref.loss)
    excess[AT] = 0.0  # the bad batch's own loss is a different batch's
    ax2.plot(spikes.moving_mean(excess, 10), label=name)
ax2.axhline(0.03, ls="--", lw=1, color="gray")
ax2.set(xlabel="step", ylabel="loss − undisturbed (10-step mean)", title="the spike")
ax2.legend()
plt.show()

# %% [markdown]
# The loss peaks a few steps after the bad batch, not at it: Adam's first moment keeps
# pushing in the bad batch's direction for about 1/(1−β₁) = 10 steps. Without clipping the
# spike is about three times as high and has not faded by the end of the run; with clipping
# (any threshold) the bad gradient enters Adam's moments at the size of an ordinary one.
#
# β₂ where it matters: the same bad batch with β₂ = 0.999, without clipping (fact 2 predicts a
# larger spike; this early, only by the ratio of 3.1's second column).

# %% tags=["nbval-ignore-output"]
ref_999 = spikes.spike_run(steps=N, grad_clip=None, beta2=0.999)
run_999 = spikes.spike_run(steps=N, grad_clip=None, beta2=0.999, bad=bad)
s999 = spikes.spike_stats(run_999, ref_999, after=AT, clip=None)
print(f"no clipping, beta2 0.999: loss peak +{s999.loss_peak:.3f} nats, mean excess "
      f"+{s999.mean_excess:.3f} (beta2 0.95: +{s0.loss_peak:.3f}, +{s0.mean_excess:.3f})")
assert s999.loss_peak > s0.loss_peak + 0.01              # measured 0.185 vs 0.161

# %% [markdown]
# ### 3.3 A learning rate too high without warmup · 没有预热的过高学习率
#
# The second way: the peak learning rate from the first step. Here 3×10⁻² (10× the runs
# above), with clipping at 1.0, from step 0 or after a 20-step linear warmup, 60 steps each. At this rate the runs are chaotic (two CPUs differ by
# ~0.1 nats), so only the large differences are asserted.

# %% tags=["nbval-ignore-output"]
import statistics
lnV = math.log(256)
cold = spikes.spike_run(steps=60, peak_lr=3e-2, warmup_steps=0, grad_clip=1.0)
warm = spikes.spike_run(steps=60, peak_lr=3e-2, warmup_steps=20, grad_clip=1.0)
for name, h in (("no warmup, clip 1.0", cold), ("20-step warmup, clip 1.0", warm)):
    print(f"{name:25s} highest loss {max(h.loss):.2f} (ln V = {lnV:.2f}), "
          f"mean of the last 10 steps {statistics.fmean(h.loss[-10:]):.2f}")
assert max(cold.loss) > lnV + 0.2                                           # measured +0.3
assert max(warm.loss) <= warm.loss[0] + 1e-9                                # never above the start
assert statistics.fmean(cold.loss[-10:]) > 4.5                             # measured 5.1
assert statistics.fmean(warm.loss[-10:]) < 3.0                              # measured 2.5

# %% tags=["nbval-ignore-output"]
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, h in (("no warmup, clip 1.0", cold), ("20-step warmup, clip 1.0", warm)):
    ax.plot(h.loss, label=name)
ax.axhline(lnV, ls="--", lw=1, color="gray")
ax.set(xlabel="step", ylabel="training loss (nats)", title="peak 3e-2 from step 0 vs warmed up")
ax.legend()
plt.show()

# %% [markdown]
# Without warmup the loss climbs above ln V (worse than guessing uniformly) within a few steps
# and is still near 5 nats after 60 steps; warmed up to the same peak, the same model is near
# 2.5. Clipping at 1.0 does not rescue the cold start: Adam's step size is set by the learning rate,
# not by the gradient's norm (fact 1), so a threshold cannot shrink it. Warmup can.
#
# ### 3.4 What the table's runs reported · 表中模型报告的尖峰
#
# From the papers, each record with the place read (`spikes.REPORTED`):

# %%
from llmtrain import sources
for r in spikes.REPORTED:
    assert r.place in sources.find(r.source).checked
    print(f"{r.model}: {r.observed}.\n    What they did: {r.remedy}.\n"
          f"    ({r.source}, {r.place}: \"{r.quote}\")")

# %% [markdown]
# None of them relied on clipping alone: PaLM's spikes came "despite the fact that gradient
# clipping was enabled" (Chowdhery et al. 2022, §5.1), OPT lowered its threshold from 1.0 to
# 0.3 and its learning rate by hand (Zhang et al. 2022, §2.5), GLM-130B shrank the embedding
# layer's gradient (Zeng et al. 2022, §3). The table's choices read, with the runs above:
#
# - **Clip at 1.0** (0.5, 0.4): a guard against the rare huge gradient. It acts only on steps
#   whose norm exceeds it, so the threshold means something only beside the model's typical
#   norm. On the tiny model every norm is above all three thresholds, and 0.4 and 1.0 give the
#   same run (fact 1); the measurable effect is on the bad batch, whose spike clipping cuts to about a third.
# - **Warmup**: the remedy for a learning rate too high at the start; clipping is not.
# - **β₂ = 0.95**: a shorter memory of g² makes one bad gradient move the weights less in total
#   (5.8 lr against 31.8 lr per weight late in training).
#
# **Exercise · 练习.** With β₁ = 0.9 and β₂ = 0.98, how far (in units of lr) does one huge
# gradient move each weight late in training, at its own step and in total? Is that closer to
# β₂ = 0.95 or to 0.999?
#
# <details><summary>Answer · 答案</summary>
#
# (1−β₁)/√(1−β₂) at its step and that divided by 1 − β₁/√β₂ in total, printed by the cell
# below: closer to β₂ = 0.95's total than to 0.999's.
#
# </details>

# %%
step98, total98 = spikes.adam_spike_update(0.9, 0.98), spikes.adam_spike_displacement(0.9, 0.98)
print(f"beta2 0.98: {step98:.3f} lr at its step, {total98:.2f} lr in total")
assert abs(total98 - spikes.adam_spike_displacement(0.9, 0.95)) < \
    abs(total98 - spikes.adam_spike_displacement(0.9, 0.999))

# %% [markdown]
# ## 4. Batch size and learning rate at scale · 大规模下的批次大小与学习率
#
# The table gives DeepSeek 67B a batch of 18M tokens at a peak learning rate of 3.2×10⁻⁴, and GPT-3
# 175B a batch of 3.2M at 6×10⁻⁵: a bigger batch *and* a bigger rate for a model less than half the
# size. Notebook [02](02_batch_schedules.ipynb) measured the gradient noise scale, the critical batch
# size beyond which a bigger batch stops saving steps (McCandlish et al. 2018); it says how far a batch
# can grow, not which batch and rate are best for a run. DeepSeek LLM's paper (DeepSeek-AI 2024, §3.1)
# answers that empirically: grids of (batch, learning rate) at compute budgets from 10¹⁷ to 2×10¹⁹
# FLOPs, and power laws of compute fitted through each budget's near-optimal runs. Here we redo that
# method in miniature, then put the table's LLMs on DeepSeek's published curves.

# %% [markdown]
# ### 4.1 DeepSeek's laws · DeepSeek 的超参数缩放律
#
# DeepSeek measures compute as $C = M\cdot D$: $D$ training tokens times $M$, the non-embedding FLOPs
# per token (§3.2, Eq. 2), which counts attention's cost and leaves out the vocabulary's:
# $M = 72\,n_\text{layer} d_\text{model}^2 + 12\,n_\text{layer} d_\text{model} l_\text{seq}$.
# The fitted laws (§3.1, Eq. 1) are $\eta_\text{opt} = 0.3118\cdot C^{-0.1250}$ and
# $B_\text{opt} = 0.2920\cdot C^{0.3271}$ (B in tokens), fitted through every run whose
# generalization error was within 0.25 % of its budget's minimum (Fig. 3).

# %%
from llmtrain.cost import hparam_laws as hl
from llmtrain.recipes import sweep

show(hl.non_embedding_flops_per_token)

# %%
C = sp.symbols("C", positive=True)
lr_law = sp.Float(hl.DEEPSEEK_LAWS["lr"].coefficient, 4) * C ** sp.Rational(-1250, 10000)
b_law = sp.Float(hl.DEEPSEEK_LAWS["batch_tokens"].coefficient, 4) * C ** sp.Rational(3271, 10000)
per_10x = {k: float(sp.simplify(law.subs(C, 10 * C) / law)) for k, law in
           (("lr", lr_law), ("batch", b_law))}
print("eta_opt(C) =", lr_law, "   B_opt(C) =", b_law)
for k, law in hl.DEEPSEEK_LAWS.items():
    print(f"{k:>12}: {law.coefficient:.4f}·C^{law.exponent:.4f}   ({law.source})")
print(f"per 10x compute: batch x{per_10x['batch']:.2f}, learning rate x{per_10x['lr']:.2f}")
print(f"per 1000x compute: batch x{per_10x['batch']**3:.1f}, learning rate x{per_10x['lr']**3:.2f}")
assert 2.1 < per_10x["batch"] < 2.2 and 0.74 < per_10x["lr"] < 0.76

# %% [markdown]
# Ten times the compute: a batch 2.12 times larger, a learning rate 0.75 times as large. The laws are
# the paper's fit to its own data and recipe; DeepSeek says plainly that they leave out everything
# but $C$ (the model/data split shifts the optimum slightly, §3.1). Check them against the model they
# chose with them, DeepSeek LLM 67B (Table 2: 95 layers of width 8192, sequences of 4096, 2.0T tokens,
# 4608 sequences per batch, peak rate 3.2×10⁻⁴):

# %%
ds = next(r for r in hl.TRAINING_RUNS if r.model == "DeepSeek")
row = settings.get("DeepSeek")  # the table's row: 67B, its paper's batch in sequences × length
(n_seq, _), chosen_lr = row.paper_batch, row.peak_lr
p = hl.place(ds, row.paper_batch_tokens, chosen_lr)
print(f"DeepSeek 67B: {ds.n_layer} layers, d_model {ds.d_model}, l_seq {ds.seq_len}, "
      f"{ds.tokens / 1e12:.1f}T tokens, batch {n_seq} x {ds.seq_len}")
print(f"M = {p['flops_per_token']:.3e} FLOPs/token, C = M·D = {p['compute_flops']:.2e} FLOPs")
print(f"B_opt = {p['batch_opt_tokens'] / 1e6:.1f}M tokens (chosen: {row.paper_batch_tokens / 1e6:.1f}M, "
      f"ratio {p['batch_ratio']:.2f});  eta_opt = {p['lr_opt']:.2e} (chosen: {settings.format_lr(chosen_lr)}, "
      f"ratio {p['lr_ratio']:.2f})")
assert 0.85 < p["batch_ratio"] < 1 and 1 < p["lr_ratio"] < 1.05

# %% [markdown]
# ### 4.2 The method in miniature · 小模型上复现方法
#
# `scripts/sweep_batch_lr.py` trains the tiny LLaMA (2 layers of width 64) on the generated corpus at
# four budgets of training tokens $D$, 8× apart from first to last in compute, on a grid of 5 batch
# sizes (2 to 32 sequences of 64 tokens) × 6 peak learning rates (2×10⁻³ to 6.4×10⁻²): AdamW as in
# the table, a linear warmup over the first 10 % of the steps, then cosine decay to a tenth of the
# peak. That schedule is our choice: DeepSeek's multi-step schedule ends at essentially the same loss
# as cosine, and DeepSeek chose it to reuse the first stage across budgets (DeepSeek-AI 2024, §2.3).
# Each run is scored on held-out tokens of the same Markov chain that no run trained on. The grid is
# too slow for a notebook: the script wrote its records to `results/batch_lr_sweep.json`, and this
# section only reads them.

# %%
show(sweep.run)

# %%
data = sweep.load()
runs = data["records"]
print(f"{len(runs)} runs, written by `{data['command']}` (seed {data['seed']}, torch "
      f"{data['torch']}, {data['threads']} thread)")
print(f"on {data['cpu']}: {data['seconds'] / 60:.0f} min wall clock, "
      f"{data['cpu_seconds'] / 60:.0f} min of CPU")
budgets = sorted({r["compute_flops"] for r in runs})
grid = data["grid"]
print(f"M = {runs[0]['flops_per_token']:,} FLOPs/token; budgets D = "
      + ", ".join(f"{d:,}" for d in grid["budgets_tokens"]) + " tokens, C = "
      + ", ".join(f"{c:.2e}" for c in budgets) + " FLOPs")

# %% [markdown]
# Held-out loss over the grid, one panel per budget; the dots mark the near-optimal runs (within
# DeepSeek's 0.25 % of the budget's minimum):

# %%
tol = hl.NEAR_OPTIMAL_TOLERANCE
bs, lrs = grid["batch_sizes"], grid["peak_lrs"]
near = {c: hl.near_optimal([r for r in runs if r["compute_flops"] == c], tol) for c in budgets}
fig, axes = plt.subplots(1, len(budgets), figsize=(3.1 * len(budgets), 3.2), sharey=True)
for ax, c in zip(axes, budgets):
    cell = {(r["batch_size"], r["peak_lr"]): r["eval_loss"] for r in runs if r["compute_flops"] == c}
    z = [[min(cell[(b, lr)], 6.0) for lr in lrs] for b in bs]
    im = ax.imshow(z, origin="lower", cmap="viridis_r", vmin=1.2, vmax=2.2, aspect="auto")
    for r in near[c]:
        ax.plot(lrs.index(r["peak_lr"]), bs.index(r["batch_size"]), "o", color="white", ms=6)
    ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs], rotation=60, fontsize=7)
    ax.set_yticks(range(len(bs)), [str(b) for b in bs])
    ax.set_title(f"C = {c:.1e}", fontsize=9)
    ax.grid(False)
    ax.set_xlabel("peak lr")
axes[0].set_ylabel("batch (sequences of 64)")
fig.colorbar(im, ax=axes, shrink=0.8, label="held-out loss (nats)")
plots.save(fig, "13_batch_lr_grid")
plt.show()

# %%
def geo(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


print(f"{'':>10} {'':>9} {'best':>10} {'':>8} {'near-optimal':>12}  {'their geometric mean':>22}")
print(f"{'C (FLOPs)':>10} {'best loss':>9} {'batch (tok)':>11} {'best lr':>7} {'runs':>12}  "
      f"{'batch (tok)':>11} {'lr':>10}")
centre = {}
for c in budgets:
    best = min(near[c], key=lambda r: r["eval_loss"])
    centre[c] = (geo([r["batch_tokens"] for r in near[c]]), geo([r["peak_lr"] for r in near[c]]))
    print(f"{c:>10.2e} {best['eval_loss']:>9.3f} {best['batch_tokens']:>11} {best['peak_lr']:>7.3g} "
          f"{len(near[c]):>12}  {centre[c][0]:>11.0f} {centre[c][1]:>10.2e}")
floor = train.entropy_rate_nats()
print(f"the corpus's floor (its entropy rate): {floor:.3f} nats")
best_losses = [min(r["eval_loss"] for r in near[c]) for c in budgets]
assert all(a > b for a, b in zip(best_losses, best_losses[1:])), best_losses
assert best_losses[-1] - floor < 0.15, best_losses

# %% [markdown]
# More compute, lower loss at the best cell, closer to the corpus's floor of 1.213 nats. Now
# DeepSeek's fit: a power law of $C$ through all the near-optimal runs, batch and learning rate
# separately.

# %%
show(hl.fit_hparam_laws)

# %%
fit = hl.fit_hparam_laws(runs)
print(f"{'':>14} {'miniature':>10} {'DeepSeek':>9}")
for k, name in (("batch_tokens", "batch"), ("lr", "learning rate")):
    print(f"{name + ' exponent':>14}: {fit[k].exponent:>+9.2f} {hl.DEEPSEEK_LAWS[k].exponent:>+9.4f}")
edge = [c for c in budgets if min(r["batch_size"] for r in near[c]) == min(bs)]
print(f"\nthe near-optimal learning rate falls as compute grows: {fit['lr'].exponent < 0}")
print(f"the near-optimal batch grows as compute grows: {fit['batch_tokens'].exponent > 0}")
print(f"budgets whose near-optimal runs include the grid's smallest batch ({min(bs)} sequences): "
      f"{len(edge)} of {len(budgets)}")
lr_best = {min(near[c], key=lambda r: r["eval_loss"])["peak_lr"] for c in budgets}
print(f"best learning rate at every budget: {sorted(lr_best)}; DeepSeek's law over "
      f"{budgets[-1] / budgets[0]:.0f}x compute: x{(budgets[-1] / budgets[0]) ** -0.125:.2f}")
n_near = sum(len(v) for v in near.values())
print(f"near-optimal runs in the fit: {n_near}")
assert fit["lr"].exponent < 0 < fit["batch_tokens"].exponent
assert 0.2 < fit["batch_tokens"].exponent < 0.45 and -0.15 < fit["lr"].exponent < 0
assert len(edge) >= 2 and lr_best == {8e-3} and n_near == 6

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
cs = [c for c in budgets for _ in near[c]]
for ax, k, ylabel in ((ax1, "batch_tokens", "batch (tokens)"), (ax2, "peak_lr", "peak learning rate")):
    law = fit["batch_tokens" if k == "batch_tokens" else "lr"]
    ax.scatter(cs, [r[k] for c in budgets for r in near[c]], color="0.6", label="near-optimal runs")
    xs = [budgets[0] / 1.5, budgets[-1] * 1.5]
    ax.plot(xs, [law(x) for x in xs], "--", label=f"fit: exponent {law.exponent:+.2f}")
    ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel=ylabel)
    ax.legend(fontsize=8)
fig.suptitle("tiny LLaMA: near-optimal batch and learning rate against compute")
plots.save(fig, "13_batch_lr_fit")
plt.show()

# %% [markdown]
# **How far the miniature goes.** Both directions come out as DeepSeek's: the near-optimal batch grows
# with compute (from 2 to 4 sequences of 64 tokens) and the near-optimal learning rate falls, though
# barely (exponent −0.06 against DeepSeek's −0.125). The batch exponent, +0.31 against DeepSeek's
# +0.3271, agrees more closely than the data can support: it rests on six near-optimal runs and a
# single doubling of the batch over an 8× range of compute, and at the two smallest budgets the best
# batch is the grid's smallest, so their true optimum may lie lower still. The learning rate's best
# cell is 8×10⁻³ at every budget: over 8× in compute DeepSeek's exponent predicts a rate only 0.77
# times as large, less than one step of this grid. What the miniature reproduces is the method, and
# the direction of both laws; the exponents need the far wider range of compute DeepSeek spent.

# %% [markdown]
# ### 4.3 The table's LLMs on DeepSeek's curves · 表中模型在 DeepSeek 曲线上的位置
#
# Placing a row needs its layers, width, sequence length and training tokens. Three rows have them
# from a checked source (printed below with it): GPT-3 175B (from its paper's table of model sizes,
# Brown et al. 2020), LLaMA-2 70B (the registry's `llama2-70b`; its tokens from Meta's model card) and
# DeepSeek 67B (DeepSeek-AI 2024, Table 2). The other nine rows are left out: their shapes are not in
# the registry and their token counts were not checked here (BLOOM's shape is in the registry, but its
# token count was read only in secondary summaries).

# %%
for r in hl.TRAINING_RUNS:
    print(f"{r.model:>8}: {r.n_layer} layers x {r.d_model}, l_seq {r.seq_len}, {r.tokens:.3g} tokens"
          f"  [{r.source}]")
placed = sweep.place_table()
print(f"{'model':>8} {'C (FLOPs)':>10} {'batch':>7} {'B_opt':>7} {'ratio':>5}   {'lr':>7} "
      f"{'eta_opt':>7} {'ratio':>5}")
for q in placed:
    print(f"{q['model']:>8} {q['compute_flops']:>10.2e} {q['batch_tokens'] / 1e6:>6.1f}M "
          f"{q['batch_opt_tokens'] / 1e6:>6.1f}M {q['batch_ratio']:>5.2f}   {q['peak_lr']:>7.1e} "
          f"{q['lr_opt']:>7.1e} {q['lr_ratio']:>5.2f}")
by = {q["model"]: q for q in placed}
g3, dsq = by["GPT-3"], by["DeepSeek"]
c_ratio = dsq["compute_flops"] / g3["compute_flops"]
print(f"\nDeepSeek 67B used {c_ratio:.1f}x GPT-3's compute: the laws predict a batch "
      f"x{c_ratio ** 0.3271:.2f} and a learning rate x{c_ratio ** -0.125:.2f}")
print(f"the table's values differ by x{dsq['batch_tokens'] / g3['batch_tokens']:.1f} (batch) and "
      f"x{dsq['peak_lr'] / g3['peak_lr']:.1f} (learning rate)")
assert 2.5 < c_ratio < 3.5
assert g3["batch_ratio"] < 0.3 and g3["lr_ratio"] < 0.25
assert by["LLaMA-2"]["batch_ratio"] < 0.3 and 0.3 < by["LLaMA-2"]["lr_ratio"] < 0.6
assert 0.85 < dsq["batch_ratio"] < 1 and 1 < dsq["lr_ratio"] < 1.05

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
xs = [1e17, 1e25]
ax1.plot(xs, [hl.deepseek_batch_tokens(x) for x in xs], "--", color="0.4", label="DeepSeek, Eq. 1")
ax2.plot(xs, [hl.deepseek_lr(x) for x in xs], "--", color="0.4", label="DeepSeek, Eq. 1")
for ax in (ax1, ax2):
    ax.axvspan(1e17, 2e19, color="0.85", alpha=0.5, lw=0, label="budgets DeepSeek fitted")
for i, q in enumerate(placed):
    ax1.scatter(q["compute_flops"], q["batch_tokens"], color=plots.PALETTE[i], label=q["model"])
    ax2.scatter(q["compute_flops"], q["peak_lr"], color=plots.PALETTE[i], label=q["model"])
ax1.set(xscale="log", yscale="log", xlabel="compute C = M·D (FLOPs)", ylabel="batch (tokens)")
ax2.set(xscale="log", yscale="log", xlabel="compute C = M·D (FLOPs)", ylabel="peak learning rate")
ax1.legend(fontsize=8)
fig.suptitle("the table's LLMs against DeepSeek's hyperparameter laws")
plots.save(fig, "13_batch_lr_llms")
plt.show()

# %% [markdown]
# **Why 18M at 3.2×10⁻⁴ and not 3.2M at 6×10⁻⁵.** Compute does not explain it: DeepSeek 67B used
# about three times GPT-3's compute, for which the laws predict a batch only 1.4 times larger and a
# learning rate slightly *smaller*. The table's numbers differ by 5.9× and 5.3×. DeepSeek chose its
# values from its own laws and sits on them. GPT-3 and LLaMA-2 sit far below both curves: batches
# about a fifth of $B_\text{opt}$, rates about a sixth (GPT-3) and a half (LLaMA-2) of
# $\eta_\text{opt}$. GPT-3's own table of model sizes lowers the rate and raises the batch as the model
# grows, in steps of its own choosing, years before DeepSeek fitted its laws. And those laws are a fit to
# DeepSeek's data and recipe, not a law of nature: near-optimal settings form a broad band (§3.1), and
# what GPT-3's settings cost it, if anything, was never measured.
#
# **Exercise.** DeepSeek LLM 7B (Table 2): 30 layers of width 4096, sequences of 4096, 2.0T tokens.
# What batch (tokens) and peak learning rate do the laws give, and how do they compare with the
# 2304 sequences and 4.2×10⁻⁴ it used?

# %%
m7 = hl.non_embedding_flops_per_token(30, 4096, 4096)
c7 = hl.compute_flops(m7, 2.0e12)
b7, lr7 = hl.deepseek_batch_tokens(c7), hl.deepseek_lr(c7)
print(f"M = {m7:.3e}, C = {c7:.2e}: B_opt = {b7 / 1e6:.1f}M tokens = {b7 / 4096:.0f} sequences "
      f"(used 2304), eta_opt = {lr7:.2e} (used 4.2e-4)")
assert 0.8 < 2304 * 4096 / b7 < 1.2 and 0.9 < 4.2e-4 / lr7 < 1.1

# %% [markdown]
# <details><summary>Answer · 答案</summary>
#
# $M$ = 4.228×10¹⁰ FLOPs per token and $C$ = 8.46×10²² FLOPs, for which the laws give a batch of
# 9.2M tokens, 2252 sequences of 4096 (the 7B used 2304, 2 % more), and a peak rate of
# 4.25×10⁻⁴ against the 4.2×10⁻⁴ used: like the 67B, DeepSeek LLM 7B sits on DeepSeek's own laws.
#
# </details>

# %% [markdown]
# ## 5. Width and learning rate: μP · 宽度与学习率：μP
#
# The table's peak learning rate falls as the models grow (notebook 01, §2, plots it): within
# one paper, LLaMA-2 uses 3e-4 at 7B and 13B but 1.5e-4 at 70B. One explanation is a
# property of Adam in a wide network: under the *standard parametrisation* (SP: every weight
# drawn with the same std 0.02, one learning rate for all) a step of the same size moves a wider
# layer's output more, so the widest model tolerates the smallest rate. The *maximal-update
# parametrisation* μP (Yang et al. 2022, arXiv 2203.03466) rescales initialisation, learning
# rates and the readout with the width so that a step moves every layer's output by the same
# amount at every width; then the best learning rate of a small model is also the best of a
# large one. We build μP for our Llama, check it the way the authors' `mup` package does (a
# coordinate check), and measure the transfer.

# %% [markdown]
# ### 5.1 Why a step moves a wider layer more · 为什么同样的步长让更宽的层变化更大
#
# Take a hidden matrix $W$ with $n$ inputs (its fan-in), fed an input $x$ whose $n$ entries have
# size about $\bar x$. Its gradient is an outer product $\delta x^\top$, so Adam's first step
# moves every entry of $W$ by $\pm\eta$ with the sign of $\delta_i x_j$: the output changes by
# $\Delta y_i = \eta\,\mathrm{sign}(\delta_i)\sum_j |x_j| \approx \eta\, n\, \bar x$ on that same
# input, growing linearly with the width. At initialisation the same output is a sum of $n$ *uncorrelated*
# terms, of size $\sigma\sqrt n\,\bar x$. μP divides the hidden matrices' Adam rate by the
# width multiplier $m = n / n_0$ and their init std by $\sqrt m$; the readout (the last layer,
# width in, vocabulary out) keeps its rate and is multiplied by $1/m$ instead:

# %%
n, n0, eta, x_bar, sigma = sp.symbols("n n_0 eta xbar sigma", positive=True)
m = n / n0  # the width multiplier
sizes = {
    "SP  init   y = W x": sigma * sp.sqrt(n) * x_bar,
    "SP  step  Δy = ΔW x": eta * n * x_bar,
    "μP  init   y = W x": sigma / sp.sqrt(m) * sp.sqrt(n) * x_bar,
    "μP  step  Δy = ΔW x": (eta / m) * n * x_bar,
    "μP  readout step Δz = ΔW x / m": eta * n * x_bar / m,
}
for what, size in sizes.items():
    size = sp.simplify(size)
    print(f"{what:<32} ~ {size}   {'grows with n' if size.has(n) else 'independent of the width'}")
    assert size.has(n) == what.startswith("SP")

# %% [markdown]
# The rules, as `mup.rules` states them for each kind of parameter (the `mup` package's
# `MuReadout`, `MuAdam` and `constant_std_init_`, rewritten for our Llama). Two choices are
# ours. The head width $d_{head}$ stays 16 and the number of heads grows with the width
# (`mup.width_shape`), so the attention's $1/\sqrt{d_{head}}$ never changes and μP's rule for a
# growing $d_{head}$ ($1/d_{head}$) does not arise. And the readout keeps its random init
# (the package may also start it at zero) so that μP at $m = 1$ *is* the SP model, bit for bit
# (tests/test_mup.py checks the same losses).

# %%
from llmtrain.recipes import mup

show(mup.rules)
for m_ in (1, 2, 4, 8):
    r = mup.rules(m_)
    print(f"m = {m_}: hidden init std {r['hidden']['init_std']:.4f}, lr × {r['hidden']['lr_scale']:.3f}, "
          f"decay × {r['hidden']['wd_scale']:g}; embedding and readout lr × 1; "
          f"logits × {r['readout']['output_mult']:.3f}")

# %% [markdown]
# `mup.build(d_model, "mup")` draws the SP Llama and rescales it (hidden matrices × $1/\sqrt m$,
# a forward hook multiplying the logits by $1/m$); `mup.param_groups` gives `train` the
# per-group learning rates (`lr_scale`) and weight decays:

# %%
show(mup.build)

# %%
show(mup.param_groups)

# %% [markdown]
# ### 5.2 The coordinate check · 坐标检查
#
# The `mup` package's test of a parametrisation: train a few Adam steps at one learning rate at
# several widths and watch the size (RMS) of every layer's output. For widths 64 to 512 (tiny's
# shape, 4 to 32 heads of 16), four steps at lr 1e-2, the RMS of the embedding, of the last
# block's output and of the logits at step 0 (initialisation) and step 4:

# %% tags=["nbval-ignore-output"]
widths = [64, 128, 256, 512]
coords = {p: mup.coord_check(widths, p, lr=1e-2, steps=4) for p in mup.PARAMETRISATIONS}


def rms(p, where, step):
    return [r["rms"] for r in coords[p] if r["where"] == where and r["step"] == step]


for p in mup.PARAMETRISATIONS:
    for where in ("embedding", "block 1", "logits"):
        for step in (0, 4):
            row = rms(p, where, step)
            print(f"{p:>3} {where:<9} step {step}: " + "  ".join(f"{v:7.3f}" for v in row)
                  + f"   {widths[-1]}/{widths[0]}: ×{row[-1] / row[0]:.2f}")

# %% [markdown]
# Read the last column, the size at width 512 over the size at width 64. At initialisation the
# logits' RMS grows as $\sqrt m = \sqrt 8$ under SP and falls as $1/\sqrt 8$ under μP (§5.1's
# init rows with the readout's $1/m$). After four steps SP's last block has grown by orders of
# magnitude at width 512 and its logits by several times, while under μP every row stays within
# a factor 2 either way across an 8× range of widths:

# %%
ratio = {(p, w, s): rms(p, w, s)[-1] / rms(p, w, s)[0]
         for p in mup.PARAMETRISATIONS for w in ("embedding", "block 1", "logits") for s in (0, 4)}
assert abs(ratio["sp", "logits", 0] / math.sqrt(8) - 1) < 0.15
assert abs(ratio["mup", "logits", 0] * math.sqrt(8) - 1) < 0.15
assert ratio["sp", "logits", 4] > 3 and ratio["sp", "block 1", 4] > 30
assert all(1 / 2 < ratio["mup", w, 4] < 2 for w in ("embedding", "block 1", "logits"))
assert all(0.8 < ratio[p, "embedding", 4] < 1.25 for p in mup.PARAMETRISATIONS)
print("at init: SP logits grow as sqrt(8), μP logits shrink as 1/sqrt(8) (within 15 %)")
print("after 4 steps, width 512 / width 64: SP logits > 3×, SP last block > 30×; "
      "μP embedding, last block and logits all within 2× either way")

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), sharey=True)
for ax, p in zip(axes, mup.PARAMETRISATIONS):
    for i, where in enumerate(("embedding", "block 1", "logits")):
        ax.plot(widths, rms(p, where, 4), "o-", color=plots.PALETTE[i], label=where)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width d_model")
    ax.set_title({"sp": "SP", "mup": "μP"}[p] + ": RMS after 4 Adam steps")
axes[0].set_ylabel("RMS of the output")
axes[0].legend()
plt.show()

# %% [markdown]
# ### 5.3 The best learning rate transfers under μP only · 最优学习率只在 μP 下可迁移
#
# The claim that matters in practice: tune the learning rate on a small model, use it on the big
# one. `scripts/sweep_mup.py` trains widths 32 to 256 (base width 32: 2 to 16 heads) at nine
# learning rates, powers of 2, under SP and μP, a fixed number of AdamW steps on the Markov
# corpus, and records the held-out loss. It takes minutes, so its results are data in the
# repository:

# %%
sweep = mup.load_transfer()  # results/mup_transfer.json
g = sweep["grid"]
print(f"{len(sweep['records'])} runs: widths {g['widths']}, lr 2^{math.log2(g['lrs'][0]):.0f} .. "
      f"2^{math.log2(g['lrs'][-1]):.0f}, {g['steps']} steps of {g['batch_size']} × {g['seq_len']} "
      f"tokens, base width {g['base_d_model']}")
print(f"took {sweep['cpu_seconds'] / 60:.0f} min of CPU time on one thread of {sweep['cpu']} "
      f"({sweep['seconds'] / 60:.0f} min wall-clock on a machine with load average "
      f"{sweep['load_average_at_start']:.0f} at the start), torch {sweep['torch']}")
print("reproduce:", sweep["command"])

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 3.6), sharey=True)
for ax, p in zip(axes, mup.PARAMETRISATIONS):
    for i, w in enumerate(g["widths"]):
        pts = [(r["lr"], r["heldout_loss"]) for r in sweep["records"]
               if r["parametrisation"] == p and r["width"] == w and r["heldout_loss"] is not None]
        ax.plot(*zip(*pts), "o-", color=plots.PALETTE[i], label=f"width {w}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("learning rate")
    ax.set_title({"sp": "SP", "mup": "μP"}[p])
axes[0].set_ylabel("held-out loss (nats/token)")
axes[0].legend()
plots.save(fig, "13_mup_transfer")
plt.show()

# %%
best = mup.best_lrs(sweep["records"])
for p in mup.PARAMETRISATIONS:
    lrs = [best[p, w] for w in g["widths"]]
    print(f"{p:>3}: best lr per width " + ", ".join(f"{w}: 2^{math.log2(lr):.0f}"
                                                   for w, lr in zip(g["widths"], lrs))
          + f"  -> moves by {max(lrs) / min(lrs):.0f}×")
sp_move = best["sp", g["widths"][0]] / best["sp", g["widths"][-1]]
mup_lrs = [best["mup", w] for w in g["widths"]]
assert sp_move >= 4 and max(mup_lrs) / min(mup_lrs) <= 2

# %% [markdown]
# Under SP the best rate falls as the width grows, about as $1/m$; under μP it stays put. What
# that costs SP, at the learning rate tuned on the smallest model: under μP the widest model
# trained at that rate beats the smallest one, under SP it does worse than the smallest:

# %%
def loss(p, w, lr):
    return next(r["heldout_loss"] for r in sweep["records"]
                if (r["parametrisation"], r["width"], r["lr"]) == (p, w, lr))


w0, w1 = g["widths"][0], g["widths"][-1]
for p in mup.PARAMETRISATIONS:
    lr0 = best[p, w0]
    print(f"{p:>3} at width {w0}'s best lr 2^{math.log2(lr0):.0f}: width {w0} {loss(p, w0, lr0):.3f}, "
          f"width {w1} {loss(p, w1, lr0):.3f} nats")
assert loss("mup", w1, best["mup", w0]) < loss("mup", w0, best["mup", w0])
assert loss("sp", w1, best["sp", w0]) > loss("sp", w0, best["sp", w0])

# %% [markdown]
# ### 5.4 Back to the table · 回到表格
#
# The table's models are all SP: one peak rate for every parameter. μP says the rate that
# should fall with the width is the hidden matrices', as $1/d_{model}$. LLaMA-2's three sizes
# fit that rule in one step and not in the other:

# %%
from llmtrain.model import shapes

d = {n_: shapes.get(n_).hidden_size for n_ in ("llama2-7b", "llama2-13b", "llama2-70b")}
print("d_model:", d, f"-> 13B/7B ×{d['llama2-13b'] / d['llama2-7b']:g}, "
      f"70B/7B ×{d['llama2-70b'] / d['llama2-7b']:g}")
note = settings.get("LLaMA-2").notes.split(". ")[0]
print("LLaMA-2 peak lr (the table's note):", note)
lr7 = 3e-4  # 7B and 13B, from the note
assert "7B and 13B use 3e-4" in note
for n_ in ("llama2-13b", "llama2-70b"):
    print(f"μP's 1/d_model from 7B's 3e-4: {n_} -> {lr7 * d['llama2-7b'] / d[n_]:.3g}")
assert lr7 * d["llama2-7b"] / d["llama2-70b"] == settings.get("LLaMA-2").peak_lr

# %% [markdown]
# From 7B to 70B the width doubles and the rate halves, as μP's hidden-layer rule would have it;
# from 7B to 13B the width grows 1.25× and the rate does not change. Depth, batch, data and
# tokens change too, so this is one explanation among several (the scaling laws of the batch
# and the rate against compute in this notebook are another), not a law. Some later models do use μP: Cerebras's
# documentation says Cerebras-GPT was trained in both SP and μP, with μTransfer from a 40M
# model to models of up to 2.7B parameters; MiniCPM (Hu et al. 2024) releases model code whose
# readout divides the hidden state by `hidden_size / dim_model_base`, μP's readout multiplier
# $1/m$.

# %% [markdown]
# **Exercise · 练习.** The sweep's μP optimum at width 32 is the learning rate you tuned on the
# proxy. You now train LLaMA-2 7B's width ($d_{model}$ 4096) under μP with the same base width
# 32. What Adam rates do the hidden matrices, the embedding and the readout get, what std do the
# hidden matrices start with, and what multiplies the logits?
#
# <details><summary>Answer · 答案</summary>
#
# $m = 4096/32 = 128$: the hidden matrices get the proxy's rate divided by 128 and start with
# std $0.02/\sqrt{128}$; the embedding and the readout keep the proxy's rate; the logits are
# multiplied by $1/128$. The cell below prints the numbers.
#
# </details>

# %%
eta_proxy = best["mup", 32]
r = mup.rules(4096 / 32)
print(f"m = {4096 // 32}; proxy lr 2^{math.log2(eta_proxy):.0f} = {eta_proxy:.2e}")
print(f"hidden matrices: lr {eta_proxy * r['hidden']['lr_scale']:.2e}, init std {r['hidden']['init_std']:.5f}")
print(f"embedding and readout: lr {eta_proxy * r['readout']['lr_scale']:.2e}; "
      f"logits × {r['readout']['output_mult']:.5f} (1/{4096 // 32})")

# %% [markdown]
# ## 要点 · Key points
#
# - 同样写作“权重衰减 0.1”，AdamW 与 Adam+L2 完全不同：对没有梯度的权重，AdamW 每步乘以 1−ηλ，100 步后还剩 0.9900；Adam+L2 每步约减少 η，100 步后只剩不到 2%。
# - 0.1 的衰减作用得很慢：按 GPT-3 的峰值学习率，时间尺度 1/(ηλ) 为 166,667 步，约 5.33×10¹¹ 个词元（token），作用于整个训练过程。
# - β₂ 取 0.95 而不是 0.999：一次 100 倍的梯度之后，β₂ = 0.95 时更新在 150 步内恢复到正常的 90%，0.999 时要 3,751 步；梯度突然增大 10 倍时，0.999 的更新最多放大到 5.20 倍。
# - 小型 LLaMA 的梯度范数约为 1.56，1.0、0.5、0.4 三个裁剪阈值每一步都起作用；Adam 对梯度的整体缩放不敏感，所以三者训练结果相同。裁剪真正起作用的是坏批次那一步：损失尖峰从 +0.161 降到 +0.054 奈特。
# - 学习率过高又没有预热时，损失升到 5.86，超过均匀猜测的 ln V；同样的峰值加 20 步预热，最后约为 2.53。梯度裁剪挽救不了没有预热的训练。
# - DeepSeek LLM 的超参数缩放律：算力每增大 10 倍，最优批次 ×2.12，最优学习率 ×0.75。DeepSeek 67B 的批次和学习率几乎正好落在公式上（比值 0.91 和 1.03），GPT-3 的只有公式的 0.22 和 0.17。
# - 在 CPU 上按同样的方法复现：批次指数 +0.31（DeepSeek 为 +0.3271），学习率指数 −0.06（DeepSeek 为 −0.1250）。方向一致，但网格太粗、近优的运行太少，数值不能当真。
# - μP：标准参数化下，最优学习率从宽度 32 到 256 移动了 8 倍（2⁻⁷ → 2⁻¹⁰）；μP 下始终是 2⁻⁷。这是“模型越宽，峰值学习率越小”的一种解释。
