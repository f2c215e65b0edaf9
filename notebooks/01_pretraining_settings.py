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
# # Pretraining settings of real LLMs · 现有大语言模型的预训练优化设置
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llmtrain/llmtrain/blob/main/notebooks/01_pretraining_settings.ipynb)
#
# The chapter opens with a table: for twelve models, the batch size, the learning-rate schedule,
# the optimizer, the number format, the weight decay and the gradient clipping used to pretrain
# them. After this notebook you can
#
# - read every cell of that table: what "32K → 3.2M", "预热 → 6×10⁻⁵ → 余弦", AdamW, Adafactor,
#   $lr^2$, BF16 and a clipping value of 1.0 each mean, with a few lines of PyTorch for each;
# - say which model size each row describes (the slides do not) and see peak learning rate
#   against model size and batch size;
# - state the recipe most of these models share, computed from the table, and where the slide
#   and the papers behind it disagree.
#
# The table lives in `llmtrain.recipes.settings` as data (`Setting` records, tested cell by cell against
# the slides in `tests/test_settings.py`); everything below is computed from it.

# %% [markdown]
# > **导读**
# > 课件开篇的表格列出了十二个大语言模型预训练时所用的批次大小、学习率（预热 → 峰值 → 衰减）、优化器、精度类型、权重衰减和梯度裁剪。
# > 本笔记本把这张表存为数据（`llmtrain.recipes.settings`），逐列解释每个单元格的含义，并各用几行 PyTorch 代码演示。
# > 我们画出峰值学习率随模型规模、批次大小变化的散点图，从表中统计出多数模型共用的训练配方，并用一个小实验说明大模型为什么常取 β2 = 0.95。
# > 最后对照原始论文，指出课件中 DeepSeek 学习率衰减方式的一处错误。

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
from collections import Counter

import matplotlib.pyplot as plt
import torch

from llmtrain import plots, show
from llmtrain.cost import memory
from llmtrain.model import shapes
from llmtrain.recipes import settings
from llmtrain.units import GB

plots.use_style()
torch.manual_seed(0)
TABLE = settings.TABLE
print(f"{len(TABLE)} models in the slides' table:", ", ".join(settings.names()))

# %% [markdown]
# ## 1. The slides' table · 课件中的表格
#
# > 模型 | 批次大小 | 学习率 (预热 → 峰值 → 衰减) | 优化器 | 精度类型 | 权重衰减 | 梯度裁剪
#
# (model | batch size | learning rate: warmup → peak → decay | optimizer | precision | weight decay |
# gradient clipping). Here it is as `llmtrain.recipes.settings` holds it, in English notation:
# 余弦 = cosine, 平方根倒数 = inverse square root, 手动 = manual, 预热 = warmup; "-" where the slide
# has "-".

# %%
print(settings.format_table())

# %% [markdown]
# Each row is a frozen record. Missing cells are `None`, never a guess; PaLM's weight decay is the
# string `"lr^2"`, not a number; what the slides do not say (the model size, the exact batch, the
# paper) is kept apart from what they do, with its source:

# %%
show(settings.Setting)

# %%
print(f"{'model':<11} {'size (B)':>8}  paper")
for s in TABLE:
    print(f"{s.model:<11} {s.params_b:>8g}  {s.source}")

# %% [markdown]
# The sizes are not in the slides. Where a paper trains several sizes with different numbers, the
# row is the model whose numbers the slide quotes (GPT-3 175B, LLaMA-2 70B, Baichuan 2-13B,
# Falcon-180B, DeepSeek LLM 67B); where the sizes share the numbers, the largest of the report
# (Qwen 14B, InternLM2 20B). Each record's `notes` says which:

# %%
for name in ["LLaMA-2", "Qwen-1.5"]:
    print(f"{name}: {settings.get(name).notes}\n")

# %% [markdown]
# ## 2. Peak learning rate against model size and batch size · 峰值学习率与模型规模、批次大小

# %%
def label(ax, name, x, y, where):
    """Name a point; `where` moves labels that would overlap: model -> (dx, dy, alignment)."""
    dx, dy, ha = where.get(name, (5, 3, "left"))
    ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, fontsize=8)


fig, ax = plt.subplots(figsize=(7, 4.2))
where = {"YuLan": (0, -13, "center"), "Qwen-1.5": (0, 6, "center"), "GPT-3": (5, -11, "left"),
         "OPT": (-6, 2, "right")}
for s in TABLE:
    colour = plots.PALETTE[{"Adam": 0, "AdamW": 1, "Adafactor": 3}[s.optimizer]]
    ax.scatter(s.params_b * 1e9, s.peak_lr, color=colour, zorder=3)
    label(ax, s.model, s.params_b * 1e9, s.peak_lr, where)
for opt, i in [("Adam", 0), ("AdamW", 1), ("Adafactor", 3)]:
    ax.scatter([], [], color=plots.PALETTE[i], label=opt)
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("parameters of the model the row describes (from its paper)")
ax.set_ylabel("peak learning rate")
ax.set_title("Peak learning rate against model size")
ax.legend(loc="upper left")
plots.save(fig, "01_peak_lr_vs_params")
plt.show()

# %% [markdown]
# PaLM sits two orders of magnitude above the rest because Adafactor's learning rate is
# *relative*: PaLM uses Adafactor "with parameter scaling", which multiplies the step by the
# root-mean-square of each weight matrix (Chowdhery et al. 2022, §5). PaLM initialises kernels
# with variance $1/n_{in}$, so at initialisation the RMS of a matrix fed by the residual stream is
# about $1/\sqrt{d_{model}}$, with $d_{model} = 18432$ for PaLM 540B:

# %%
d_model = 18432  # PaLM 540B (Chowdhery et al. 2022, Table 1)
palm = settings.get("PaLM")
print(f"PaLM's relative lr 1e-2 × RMS 1/sqrt({d_model}) ≈ {palm.peak_lr / math.sqrt(d_model):.1e} "
      "absolute, at initialisation")
print(f"GPT-3 175B: {settings.get('GPT-3').peak_lr:.1e}, BLOOM 176B: {settings.get('BLOOM').peak_lr:.1e}")

# %% [markdown]
# Leaving PaLM out, a least-squares line through the points in log-log space shows the trend the
# figure suggests: larger models get smaller peak rates.

# %%
pts = [(math.log10(s.params_b), math.log10(s.peak_lr)) for s in TABLE if s.optimizer != "Adafactor"]
mx = sum(x for x, _ in pts) / len(pts)
my = sum(y for _, y in pts) / len(pts)
slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
print(f"{len(pts)} models (Adam/AdamW): peak lr ∝ params^{slope:.2f}")
print(f"a 10× larger model gets a {10 ** slope:.2f}× peak learning rate on this trend")

# %% [markdown]
# Within one paper the trend is clean (from the records' notes): LLaMA-2 3e-4 at 7B/13B, 1.5e-4
# at 70B; DeepSeek LLM 4.2e-4 at 7B, 3.2e-4 at 67B; Baichuan 2 2e-4 at 7B, 1.5e-4 at 13B. Across
# papers the data, tokenizer and batch differ too, so the line is a trend, not a rule.
#
# Against the final batch size (Baichuan-2 has no batch in the slide, so it is left out):

# %%
with_batch = [s for s in TABLE if s.batch_tokens_end is not None]
print("left out (no batch in the slide):", [s.model for s in TABLE if s.batch_tokens_end is None])
fig, ax = plt.subplots(figsize=(7, 4.2))
where = {"Qwen-1.5": (-5, 4, "right"), "YuLan": (0, -13, "center"), "Falcon": (5, -9, "left")}
for s in with_batch:
    ax.scatter(s.batch_tokens_end, s.peak_lr, color=plots.PALETTE[1 if s.batch_ramp else 0], zorder=3)
    label(ax, s.model, s.batch_tokens_end, s.peak_lr, where)
ax.scatter([], [], color=plots.PALETTE[0], label="constant batch")
ax.scatter([], [], color=plots.PALETTE[1], label="batch ramped up (slide: a → b)")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("final batch size (tokens, slide's value, M = 10⁶)")
ax.set_ylabel("peak learning rate")
ax.set_title("Peak learning rate against batch size")
ax.legend(loc="upper left")
plots.save(fig, "01_peak_lr_vs_batch")
plt.show()

# %% [markdown]
# ## 3. What the columns mean · 各列的含义
#
# ### 3.1 Batch size, in tokens · 批次大小
#
# A batch is counted in tokens per optimizer step: sequences × sequence length. "32K → 3.2M" is a
# batch that grows during training (动态批次调整, dynamic batch size: notebook
# [02](02_batch_schedules.ipynb)); "预热 → 4M" (Falcon) a ramp whose start the slide does not give.
#
# The slides do not say whether "M" is 10⁶ or 2²⁰. `llmtrain.recipes.settings` stores what is printed,
# reading M as 10⁶; where the paper gives sequences and sequence length, the exact batch is in
# `paper_batch`, and there "M" turns out to be 2²⁰:

# %%
for s in TABLE:
    if s.paper_batch:
        n, t = s.paper_batch
        exact = s.paper_batch_tokens
        print(f"{s.model:<9} slide {s.batch_tokens_end / 1e6:>5g}M   paper {n} × {t} = {exact:>10,} tokens"
              f" = {exact / 2**20:g} × 2²⁰ = {exact / 1e6:.2f} × 10⁶")
glm = settings.get("GLM-130B")  # the start of its ramp, from its paper (not in the slide)
(n, t), first = glm.paper_batch_start, glm.paper_batch_start_tokens
print(f"GLM-130B's first batch: slide {glm.batch_tokens_start / 1e6:g}M   paper {n} × {t} = {first:,} tokens"
      f" = {first / 2**20:g} × 2²⁰ = {first / 1e6:.2f} × 10⁶")

# %% [markdown]
# ### 3.2 Learning rate: warmup → peak → decay · 学习率：预热 → 峰值 → 衰减
#
# Eleven rows warm the learning rate up to its peak, then decay it; the decay is cosine in ten of
# them. PaLM has no warmup: 10⁻² for 10,000 steps, then $10^{-2}\sqrt{10^4/k} = 1/\sqrt{k}$ at
# step $k$ (平方根倒数, inverse square root). OPT planned a linear decay and then lowered the rate
# by hand mid-run (手动, manual). Schedules, warmup and their reasons are notebook
# [03](03_lr_schedules.ipynb).

# %%
def palm_lr(step):
    """PaLM's schedule (Chowdhery et al. 2022, §5): 1e-2 for 10k steps, then 1/sqrt(step)."""
    return 1e-2 if step <= 10_000 else step ** -0.5


for k in [1, 10_000, 40_000, 100_000, 250_000]:
    print(f"step {k:>7,}: lr = {palm_lr(k):.2e}")

# %% [markdown]
# ### 3.3 Optimizer: Adam vs AdamW · 优化器
#
# Adam with "weight decay" in the classic sense adds $\lambda\theta$ to the gradient, which then
# goes through Adam's normalisation $\hat m / \sqrt{\hat v}$. AdamW (Loshchilov & Hutter, "Decoupled
# Weight Decay Regularization", ICLR 2019, arXiv 1711.05101) takes the decay out of the gradient
# and shrinks the weights directly: $\theta \leftarrow \theta - \eta\lambda\theta - \eta\,\hat m/(\sqrt{\hat v}+\epsilon)$.
# One step on a weight $\theta = 1$ whose loss gradient is zero shows the difference:

# %%
def one_step(opt_cls, theta=1.0, lr=0.1, weight_decay=0.1):
    p = torch.nn.Parameter(torch.tensor([theta]))
    opt = opt_cls([p], lr=lr, weight_decay=weight_decay)
    p.grad = torch.zeros(1)  # the loss does not depend on this weight
    opt.step()
    return p.item()


print(f"Adam  (L2 in the gradient): 1.0 -> {one_step(torch.optim.Adam):.6f}   "
      "(the decay gradient 0.1·θ is normalised to a full lr step)")
print(f"AdamW (decoupled)         : 1.0 -> {one_step(torch.optim.AdamW):.6f}   (θ·(1 − lr·λ) = 0.99)")

# %% [markdown]
# With Adam, the size of the decay step does not depend on $\lambda$ at all once the gradient is
# only the decay term; with AdamW it is exactly $\eta\lambda\theta$. Eight of the twelve rows say
# AdamW. Where a row says "Adam" together with weight decay 0.1, the name alone does not tell which of
# the two ran; the sources sometimes do. BLOOM's training README (bigscience-workshop/bigscience,
# `train/tr11-176B-ml/README.md`, section "Optimizer") says "AdamW, β1=0.9, β2=0.95" (its command line
# passes Megatron's `--optimizer adam`): the slide's "Adam" is AdamW there. GPT-3's paper says "Adam"
# with weight decay 0.1 (Brown et al. 2020, Appendix B) and does not say which. What the records hold
# beside the slide's name, each with the place it was read:

# %%
for s in TABLE:
    if s.betas is not None:
        print(f"{s.model:<9} slide: {s.optimizer:<6} source: {s.paper_optimizer:<6} (β1, β2) = {s.betas}")
        print(f"          {s.optimizer_source}")
default = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]).defaults["betas"]
print("torch.optim.AdamW's default (β1, β2):", default)

# %% [markdown]
# **Why β2 = 0.95.** Every source above sets β2 = 0.95, not PyTorch's default 0.999. β2 sets how long
# Adam remembers squared gradients: about $1/(1-\beta_2)$ steps, 20 at 0.95 and 1,000 at 0.999. The
# step is $\hat m/\sqrt{\hat v}$, so when the gradient suddenly grows (a burst of large gradients is a
# common sign that a loss spike is coming), a long memory leaves $\hat v$ small for many steps and the
# steps grow with the gradient. One weight whose gradient is 1 for 1,000 steps and then 10 times
# larger, AdamW with lr 1:

# %%
def step_sizes(beta2, before=1000, after=50, jump=10.0):
    """|Δθ| of each AdamW step (lr 1, no decay) on one weight: gradient 1 for `before` steps,
    then `jump` for `after` steps."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0, betas=(0.9, beta2), weight_decay=0.0)
    sizes = []
    for k in range(before + after):
        p.grad = torch.full((1,), 1.0 if k < before else jump)
        with torch.no_grad():
            p.zero_()
        opt.step()
        sizes.append(abs(p.item()))
    return sizes[before - 1], sizes[before:]


for beta2 in (0.95, 0.999):
    normal, later = step_sizes(beta2)
    print(f"β2 = {beta2:<5}: memory ≈ {1 / (1 - beta2):>4.0f} steps; after the gradient jumps 10×, "
          f"the largest step is {max(later) / normal:.2f}× the usual one, "
          f"{later[-1] / normal:.2f}× after 50 steps")

# %% [markdown]
# With β2 = 0.95 the step hardly changes; with 0.999 it is several times too large and stays so for
# long after the jump. That is an argument from this computation, not a quote: the sources above
# state the value without giving a reason. PaLM went the other way (Chowdhery et al. 2022, §5): its
# $\beta_2 = 1 - k^{-0.8}$ grows towards 1, which the paper found "more stable than the standard
# β2 = 0.99 … because rare embedding tokens can have poorly estimated second moments over shorter
# windows".
#
# ### 3.4 Adafactor · Adafactor 优化器
#
# Adafactor (Shazeer & Stern 2018, arXiv 1804.04235) keeps, for each $n \times m$ weight matrix, a
# row vector and a column vector of second-moment statistics ($n + m$ numbers) instead of Adam's
# full $v$ ($nm$ numbers), and by default no first moment $m$. On LLaMA-7B (notebook
# [11](11_memory_estimation.ipynb), `llmtrain.cost.memory`):

# %%
S7 = shapes.get("llama-7b")
for opt in ["adamw", "adafactor"]:
    b = memory.model_state_bytes(S7, precision="mixed", optimizer=opt)["optimizer"]
    print(f"LLaMA-7B optimizer states, {opt:<9}: {b:>14,} bytes = {b / GB:6.3f} GB (fp32, GB = 10⁹ bytes)")

# %% [markdown]
# But PaLM did not take that saving: it ran Adafactor "without factorization" and with momentum
# $\beta_1 = 0.9$ (Chowdhery et al. 2022, §5), which the paper calls effectively Adam with parameter
# scaling: Adam-sized states. What PaLM kept from Adafactor is the relative step size (§2 above) and
# the $\beta_2 = 1 - k^{-0.8}$ schedule.

# %%
print(settings.get("PaLM").notes)

# %% [markdown]
# ### 3.5 Weight decay, and PaLM's $lr^2$ · 权重衰减
#
# Eleven rows use $\lambda = 0.1$. PaLM uses a *dynamic* weight decay equal to the square of the
# current learning rate (Chowdhery et al. 2022, §5): with its schedule, $\lambda_k = 10^{-4}$ for
# the first 10,000 steps and $1/k$ after, so the decay falls faster than the rate itself
# ($1/\sqrt{k}$):

# %%
for k in [1, 10_000, 40_000, 100_000, 250_000]:
    lr = palm_lr(k)
    print(f"step {k:>7,}: lr = {lr:.2e}   weight decay lr² = {lr ** 2:.2e}")

# %% [markdown]
# ### 3.6 Gradient clipping to a global norm · 梯度裁剪
#
# Before each step, all gradients are treated as one vector $g$; if $\|g\|_2 > c$ they are all
# scaled by $c / \|g\|_2$, so the direction is kept and the length is at most $c$. PyTorch's
# `torch.nn.utils.clip_grad_norm_` does this and returns the norm *before* clipping. Two tensors with
# gradients $(3, 4)$ and $(12)$ have global norm $\sqrt{3^2 + 4^2 + 12^2} = 13$:

# %%
a = torch.nn.Parameter(torch.zeros(2))
b = torch.nn.Parameter(torch.zeros(1))
for c in [1.0, 0.5, 0.4]:  # the slides' values: most rows, Baichuan-2, Falcon
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([12.0])
    before = torch.nn.utils.clip_grad_norm_([a, b], max_norm=c)
    after = torch.cat([a.grad, b.grad]).norm()
    print(f"max_norm {c}: norm before {before.item():.1f}, scale {c}/13, "
          f"grads {[round(x, 4) for x in a.grad.tolist()]} {[round(x, 4) for x in b.grad.tolist()]}, "
          f"norm after {after.item():.4f}")

# %% [markdown]
# A gradient already shorter than $c$ is left alone (the scale is capped at 1):

# %%
a.grad, b.grad = torch.tensor([0.3, 0.4]), torch.tensor([0.0])
before = torch.nn.utils.clip_grad_norm_([a, b], max_norm=1.0)
print(f"norm {before.item():.2f} ≤ 1.0: grads unchanged {[round(x, 4) for x in a.grad.tolist()]} "
      f"{b.grad.tolist()}")

# %% [markdown]
# ### 3.7 Precision: FP16 vs BF16 · 精度类型
#
# Both are 16-bit. FP16 spends 5 bits on the exponent and 10 on the mantissa; BF16 spends 8 and 7:
# the range of fp32 with less precision. `torch.finfo` gives the numbers:

# %%
print(f"{'dtype':<9} {'bits':>4} {'max':>10} {'smallest normal':>16} {'eps (1 → next)':>15}")
for dt in [torch.float16, torch.bfloat16, torch.float32]:
    fi = torch.finfo(dt)
    print(f"{str(dt).removeprefix('torch.'):<9} {fi.bits:>4} {fi.max:>10.3g} {fi.tiny:>16.3g} {fi.eps:>15.3g}")

# %% [markdown]
# What that means for a training run: in FP16, large activations overflow to `inf` and small
# gradients underflow to 0 (hence loss scaling); BF16 keeps both, but rounds more coarsely:

# %%
x = torch.tensor([70000.0, 1e-8, 1 + 2**-8])
for dt in [torch.float16, torch.bfloat16]:
    print(f"{str(dt).removeprefix('torch.'):<8}: 70000 -> {x[0].to(dt).item():g}, 1e-8 -> {x[1].to(dt).item():g}, "
          f"1 + 2⁻⁸ -> {x[2].to(dt).item():.6f}")

# %% [markdown]
# Mixed precision, loss scaling and FP8 are notebook [04](04_mixed_precision.ipynb); the memory a
# 16-bit recipe takes (the $16P$ bytes) is notebook [11](11_memory_estimation.ipynb).
#
# ## 4. The common recipe, counted · 共同的训练配方
#
# Shares over the rows where the slide gives the value ("of n" says how many do):

# %%
def share(column, value):
    given = [getattr(s, column) for s in TABLE if getattr(s, column) is not None]
    hits = sum(v == value for v in given)
    return f"{column + ' = ' + str(value):<20}: {hits:>2} of {len(given):>2} ({100 * hits / len(given):3.0f} %)"


for column, value in [("warmup", True), ("decay", "cosine"), ("optimizer", "AdamW"),
                      ("precision", "BF16"), ("weight_decay", 0.1), ("grad_clip", 1.0)]:
    print(share(column, value))
print("optimizers:", dict(Counter(s.optimizer for s in TABLE)))
print("precisions:", dict(Counter(s.precision or "-" for s in TABLE)))
print("clipping  :", dict(Counter(s.grad_clip or "-" for s in TABLE)))

# %% [markdown]
# The typical row — warmup, a peak between 6×10⁻⁵ and 3.2×10⁻⁴, cosine decay, AdamW, BF16, weight
# decay 0.1, clipping at 1.0, a few million tokens per batch — describes most of the models. The
# FP16 rows are GPT-3, OPT and GLM-130B:

# %%
print("FP16:", [s.model for s in TABLE if s.precision == "FP16"])
print("batch ramped up:", [s.model for s in TABLE if s.batch_ramp])
peaks = sorted(s.peak_lr for s in TABLE if s.optimizer != "Adafactor")
print(f"peak lr, Adam/AdamW rows: {settings.format_lr(peaks[0])} … {settings.format_lr(peaks[-1])}")

# %% [markdown]
# ## 5. Where the slide and the paper disagree · 课件与论文的出入
#
# DeepSeek LLM's paper (DeepSeek-AI 2024, arXiv 2401.02954, §2.3) describes its schedule: a
# multi-step scheduler "instead of the typical cosine scheduler" — 2000 warmup steps to the peak,
# then a lower rate after 80 % and after 90 % of the training tokens (the record's `paper_lr_steps`).
# The two schedules over training, peak 3.2×10⁻⁴, cosine to 10 % of the peak as the other rows do
# (warmup left out):

# %%
deepseek = settings.get("DeepSeek")
peak = deepseek.peak_lr


def multi_step(frac):
    return peak * deepseek.paper_lr_factor(frac)


def cosine(frac, floor=0.1):
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


print(f"slide: {deepseek.lr_text}")
print("paper, after warmup:", "; ".join(f"{f:.1%} of the peak from {start:.0%} of the tokens"
                                        for start, f in deepseek.paper_lr_steps))
for frac in [0.0, 0.25, 0.5, 0.79, 0.85, 0.95]:
    print(f"{frac:4.0%} of tokens: multi-step {multi_step(frac):.2e}   cosine {cosine(frac):.2e}")

# %% [markdown]
# > **勘误 · Erratum — DeepSeek 的学习率衰减.**
# > 课件原文：“DeepSeek 18M 预热 → $3.2 \times 10^{-4}$ → 余弦”
# > DeepSeek LLM 67B warms up and then decays in steps, not along a cosine: the paper uses "a
# > multi-step learning rate scheduler … instead of the typical cosine scheduler" (DeepSeek-AI 2024,
# > §2.3), 31.6 % of the peak after 80 % of the tokens and 10 % after 90 % (the cell above prints the
# > record and both schedules). `llmtrain.recipes.settings` keeps the slide's value, records the paper's
# > steps in `paper_lr_steps` and says so in the record's notes.
# > **更正：** DeepSeek 一行应为“预热 → 3.2×10⁻⁴ → 多步（阶梯式）衰减”：训练到 80% 的词元后降到峰值的 31.6%，到 90% 后降到 10%。
#
# Smaller points, not errors, that the records' `notes` keep: several rows quote the largest model
# of a family (LLaMA-2's 1.5×10⁻⁴ is for 34B/70B; 7B and 13B use 3×10⁻⁴; DeepSeek's 18M batch
# and 3.2×10⁻⁴ are the 67B model's, the 7B used 9.4×10⁶ tokens and 4.2×10⁻⁴); OPT's "-" for
# clipping, where the paper clips at 1.0 and lowered it to 0.3 mid-run; the Qwen-1.5 row, whose
# values are those of the Qwen (1.0) technical report, Qwen1.5 having no pretraining report.

# %%
for s in TABLE:
    if s.model in ("OPT", "DeepSeek"):
        print(f"{s.model}: {s.notes}\n")

# %% [markdown]
# ## 6. Try it · 动手试一试
#
# 1. Which rows would a "10⁻⁴ ≤ peak lr ≤ 3×10⁻⁴, AdamW, clip 1.0" filter keep? Write it with
#    `settings.TABLE` in one line.
#
# <details><summary>Answer</summary>
#
# `[s.model for s in settings.TABLE if 1e-4 <= s.peak_lr <= 3e-4 and s.optimizer == "AdamW" and s.grad_clip == 1.0]`
# gives LLaMA-2 and Qwen-1.5 only: OPT and InternLM-2 give no clipping value, Baichuan-2 and
# Falcon clip tighter, DeepSeek's 3.2×10⁻⁴ is just above the range and GLM-130B's 8×10⁻⁵ below it.
#
# </details>
#
# 2. GLM-130B's batch grows from 192 to 4224 sequences of 2048 tokens. Which reading of "M" makes
#    the slide's "0.4M → 8.25M" exact?
#
# <details><summary>Answer</summary>
#
# 4224 × 2048 = 8,650,752 = 8.25 × 2²⁰ exactly (8.65 × 10⁶); 192 × 2048 = 393,216 = 0.375 × 2²⁰
# (0.39 × 10⁶), rounded to 0.4M either way. The slide's M is 2²⁰ here.
#
# </details>
#
# Next: how the batch grows (notebook [02](02_batch_schedules.ipynb)), how the learning rate is warmed up
# and decayed (notebook [03](03_lr_schedules.ipynb)), mixed precision in practice (notebook
# [04](04_mixed_precision.ipynb)), and what these recipes cost in memory (notebook
# [11](11_memory_estimation.ipynb)).

# %% [markdown]
# ## 要点 · Key points
#
# - 多数模型共用一套配方：预热 + 余弦衰减、AdamW、BF16、权重衰减 0.1、梯度裁剪 1.0。例如 12 个模型中 11 个预热，8 个用 AdamW。
# - 模型越大，峰值学习率越小：除 PaLM 外，11 个模型在对数坐标下的拟合为 peak lr ∝ params^-0.42。这是趋势，不是规律。
# - PaLM 的 1e-2 是 Adafactor 的相对学习率：乘以初始化时权重的均方根 1/sqrt(18432) 后约为 7.4e-05，与 GPT-3、BLOOM 的 6.0e-05 同一量级。
# - 批次大小按词元（token）计。论文给出序列数和序列长度时，课件中的“M”都是 2²⁰：GLM-130B 的 8.25M 就是 4224 × 2048 个词元。
# - AdamW 把权重衰减与梯度解耦：梯度为零时，一步把 θ = 1.0 变为 0.990000；Adam 把衰减项放进梯度再归一化，得到 0.900000。
# - 课件中 BLOOM 写作 Adam，它的训练 README 写明是 AdamW、β2 = 0.95；GPT-3、Llama 2、DeepSeek LLM 也取 β2 = 0.95。
# - β2 = 0.95 时二阶矩只记住约 20 步：梯度突然增大 10 倍时，单步更新最多变为原来的 1.11 倍；torch 默认的 0.999 会变为 4.48 倍。
# - 梯度裁剪把全局范数为 13.0 的梯度整体缩放到 max_norm，方向不变；范数本来就小于阈值时梯度不变。
# - 勘误：DeepSeek LLM 67B 预热后分阶段降低学习率（80% 的词元后降到峰值的 31.6%，90% 后降到 10%），不是课件所写的余弦衰减。
