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
# # Activation recomputation · 激活重计算
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llmtrain/llmtrain/blob/main/notebooks/09_activation_recomputation.ipynb)
#
# > - 激活值是前向传播的结果，需要在反向传播时参与梯度计算 — activations are results of the
# >   forward pass that the backward pass needs to compute gradients;
# > - 保存激活值需要占用大量显存 — keeping them takes a lot of GPU memory;
# > - 激活重计算：保留部分激活值，反向传播时重新计算其他激活值 — recomputation keeps some of
# >   them and computes the others again during backward.
#
# After this notebook you can list, tensor by tensor, what a LLaMA layer keeps for backward; apply
# the usual recomputation strategies (full, every k-th layer, √L segments, selective) to a real
# model; and weigh what each saves in bytes against what it costs in FLOPs and seconds — all
# measured, and checked against closed forms in `llmtrain.measure.activations` and `llmtrain.cost.flops`.

# %% [markdown]
# > **导读**
# > 本笔记本逐个张量列出一个 LLaMA 解码器层在前向传播中为反向传播保存的激活值，并与精确到字节的闭式公式核对。
# > 然后在真实模型上比较几种激活重计算策略（完全重计算、每 k 层、√L 分段、选择性重计算）：保存的字节、整步峰值显存和 FLOPs 都由代码精确测得。
# > 完全重计算时每层恰好只保留输入，即课件中的 $2BTH$；重计算约多做一次前向，但 FLOPs 的增幅略低于 33%。
# > 最后解释为什么在这个模型上完全重计算的峰值反而低于 √L 分段，以及为什么使用 SDPA 时选择性重计算几乎省不下显存。

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
import time

import matplotlib.pyplot as plt
import torch
from torch import nn

from llmtrain import plots, show
from llmtrain.cost import activations as activation_formulas, flops, memory
from llmtrain.measure import activations, flops as measured, tracker
from llmtrain.model import recompute
from llmtrain.model.llama import Llama
from llmtrain.model.shapes import ModelShape

plots.use_style()
torch.manual_seed(0)
MiB = 2**20

# %% [markdown]
# ## 1. What an activation is, and why backward needs it · 激活值是什么，反向传播为何需要它
#
# Take $y = W_2\,\mathrm{SiLU}(W_1 x)$. The gradient of a weight needs the *input* of its layer:
# $\partial \ell/\partial W_1 = \delta_1 x^\top$ and $\partial \ell/\partial W_2 = \delta_2 h^\top$ with
# $h = \mathrm{SiLU}(W_1 x)$; and $\delta_1$ needs $\mathrm{SiLU}'$ at $W_1 x$. So autograd keeps $x$,
# $W_1 x$ and $h$ — the activations — from the forward pass until backward. `activations.measure`
# lists them, exactly, with a `saved_tensors_hooks` pack hook (parameters are not counted: they are
# kept anyway).

# %%
two_layers = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 2))
x = torch.randn(3, 4)
saved = activations.measure(two_layers, x)
print(saved.table("tensor"))

# %% [markdown]
# Three tensors: the input $x$ (3×4) kept by the first Linear for $\partial\ell/\partial W_1$, the
# pre-activation $W_1x$ (3×8) kept by SiLU for its derivative, and $h$ (3×8) kept by the second
# Linear. Here is the code that counts them:

# %%
show(activations.measure)

# %% [markdown]
# ## 2. Everything one LLaMA decoder layer keeps · 一个解码器层保存的全部激活值
#
# A small LLaMA from the reference implementation (`llmtrain.model.llama`), in bf16 as in training,
# with the loss (labels = inputs). Per module, then per operation:

# %%
shape = ModelShape(vocab_size=512, hidden_size=256, num_layers=2, num_heads=8, num_kv_heads=8,
                   intermediate_size=688, max_seq_len=128, name="small")
B, T = 2, 128
model = Llama(shape, attn_impl="eager").to(torch.bfloat16)
ids = torch.randint(0, shape.vocab_size, (B, T))
saved = activations.measure(model, ids, labels=ids)
layer0 = {k: v for k, v in saved.by_module.items() if k.startswith("model.layers.0")}
BTH = B * T * shape.hidden_size
for name, b in layer0.items():
    print(f"{name:<40} {b:>10,} B = {b / BTH:5.2f} × BTH")
print(f"{'layer 0 in all':<40} {saved.by_layer[0]:>10,} B = {saved.by_layer[0] / BTH:5.2f} × BTH")

# %%
by_op = {}
for row in saved.tensors:
    if row.module.startswith("model.layers.0"):
        by_op[row.op] = by_op.get(row.op, 0) + row.bytes
for op, b in sorted(by_op.items(), key=lambda kv: -kv[1]):
    print(f"{op:<22} {b:>10,} B = {b / BTH:5.2f} × BTH")

# %% [markdown]
# The layer keeps far more than its input: the fp32 copies made by RMSNorm, Q, K, V, the
# $T\times T$ attention probabilities (the eager kernel keeps them in fp32 *and* bf16), the SwiGLU
# intermediates of width $H'$. The closed form in `llmtrain.cost.activations.saved_bytes` adds the same
# terms; it equals the measurement to the byte (tests check it on random shapes):

# %%
closed = activation_formulas.saved_bytes(shape, B, T, dtype="bf16", impl="reference", attention="eager")
print(f"measured {saved.total_bytes:,} B, closed form {closed:,} B, equal: {closed == saved.total_bytes}")
print(f"the slides' 2BTH per layer would be {2 * BTH:,} B; one layer really keeps "
      f"{saved.by_layer[0] / (2 * BTH):.1f}× that")

# %% [markdown]
# ## 3. The strategies side by side · 各种重计算策略对比
#
# `llmtrain.model.recompute.apply` sets a strategy on the reference model; it wraps layers (or the attention
# core) in `torch.utils.checkpoint` (non-reentrant):

# %%
show(recompute.segments)

# %% [markdown]
# A 16-layer model, fp32 on this machine. For each strategy: bytes kept after forward (exact), the
# peak during the whole step (exact CPU tracker, `tracker.measure_peak`), FLOPs of the step
# (`FlopCounterMode`, equal to `flops.training_flops`), and seconds (measured; they vary by machine).

# %%
deep = ModelShape(vocab_size=512, hidden_size=128, num_layers=16, num_heads=4, num_kv_heads=4,
                  intermediate_size=352, max_seq_len=256, name="deep")
B, T = 2, 256
torch.manual_seed(0)
net = Llama(deep, attn_impl="eager")
ids = torch.randint(0, deep.vocab_size, (B, T))
STRATS = [("none", None), ("every", 4), ("every", 2), ("sqrt", None), ("full", None), ("selective", None)]


def label(strategy, k):
    return f"every {k}" if strategy == "every" else strategy


def step():
    net(ids, labels=ids).loss.backward()
    net.zero_grad(set_to_none=True)


rows = {}
for strategy, k in STRATS:
    recompute.apply(net, strategy, k=k)
    kept = activations.measure(net, ids, labels=ids).total_bytes
    peak = tracker.measure_peak(step, include=net).peak_bytes
    counted = measured.measured_flops(net, ids)
    formula = flops.training_flops(deep, B, T, attention="eager", recompute=strategy, k=k)
    assert counted == formula, (strategy, counted, formula)
    rows[label(strategy, k)] = dict(kept=kept, peak=peak, flops=counted)
base = rows["none"]
print(f"{deep.num_layers}-layer LLaMA, fp32, eager attention, B = {B}, T = {T}:")
print(f"{'strategy':<10} {'kept (MiB)':>10} {'peak (MiB)':>10} {'FLOPs vs none':>14}")
for name, r in rows.items():
    print(f"{name:<10} {r['kept'] / MiB:>10.2f} {r['peak'] / MiB:>10.2f} {r['flops'] / base['flops']:>13.3f}×")

# %% tags=["nbval-ignore-output"]
# wall-clock seconds per step (the fastest of 3): they depend on the machine and its load (on a busy
# machine a strategy can even time faster than "none"), so they are printed, not compared, and the
# text draws no conclusion from them; checked is that each was measured
for strategy, k in STRATS:
    recompute.apply(net, strategy, k=k)
    step()  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    rows[label(strategy, k)]["seconds"] = min(times)
    print(f"{label(strategy, k):<10} {rows[label(strategy, k)]['seconds'] * 1000:7.1f} ms per step")
_ = recompute.apply(net, "none")
assert all(0 < r["seconds"] < float("inf") for r in rows.values())
assert set(rows) == {label(strategy, k) for strategy, k in STRATS}

# %% [markdown]
# ## 4. Full recomputation keeps exactly the layer inputs — the slides' 2BTH · 完全重计算只保留每层输入，即课件中的 2BTH
#
# > Transformer训练常保留每一层的输入作为激活值；批次大小为B，则需要 $2BTH$ 字节保存每层输入
#
# With every layer checkpointed, each layer keeps only its input: $b\cdot BTH$ bytes with $b = 2$ in
# 16-bit — the slides' $2BTH$ — and $4BTH$ in fp32. Measured per layer, in bf16:

# %%
model16 = recompute.apply(Llama(deep).to(torch.bfloat16), "full")
full = activations.measure(model16, ids, labels=ids)
two_BTH = 2 * B * T * deep.hidden_size
rope = 2 * T * deep.d_head * 2  # cos and sin, (T, d) each, bf16: computed once, used by all layers
print(f"2BTH = {two_BTH:,} B")
for i, b in full.by_layer.items():
    note = "  = 2BTH + RoPE cos/sin (the first checkpoint keeps them)" if b == two_BTH + rope else ""
    print(f"layer {i:>2}: {b:>9,} B{'  = 2BTH' if b == two_BTH else ''}{note}")
print("outside the layers:", full.outside_layers)

# %% [markdown]
# Outside the layers remain what the slides' $4BTV$ stands for (the fp32 log-softmax of the loss),
# plus small items the slides leave out: RoPE's cos/sin, the final norm's input, the label indices.
#
# ## 5. What recomputation costs in FLOPs · 重计算的计算代价
#
# The rule of thumb: full recomputation is one extra forward pass, so a step costs 4 forwards instead
# of 3 (+33 %). `FlopCounterMode` counts it exactly (table above). It is a little less than +33 %:
# the lm_head and loss are never recomputed, and torch's checkpoint stops recomputing as soon as the
# last saved tensor is rebuilt, skipping each segment's final `down_proj` matmul:

# %%
for strategy, k in STRATS[1:]:
    extra = flops.recompute_flops(deep, B, T, attention="eager", recompute=strategy, k=k)
    fwd = flops.forward_flops(deep, B, T)
    print(f"{label(strategy, k):<10} recomputes {extra / fwd:6.1%} of a forward pass; step +"
          f"{extra / flops.training_flops(deep, B, T, attention='eager'):6.1%}")

# %% [markdown]
# Selective recomputation (Korthikanti et al., "Reducing Activation Recomputation in Large Transformer
# Models", MLSys 2023; arXiv 2205.05198, 2022) recomputes only softmax$(QK^\top)V$: it costs a few per
# cent of the FLOPs yet removes the $O(T^2)$ attention probabilities, the largest item of section 2 at
# long context — with the *eager* kernel, which stores them. A fused SDPA kernel never stores them:
# it keeps q, k, v, its output and one fp32 logsumexp per row and head ($4BNT$ bytes). A checkpoint
# around the core must keep its inputs q, k, v all the same, and the core's output is `o_proj`'s input,
# kept anyway; so with SDPA selective recomputation saves just the logsumexp. For LLaMA-7B, bf16,
# $B = 1$, $T = 2048$ (the closed forms of `llmtrain.cost.activations`, notebook 11 §3):

# %%
from llmtrain.model.shapes import get

S7, B7, T7 = get("llama-7b"), 1, 2048
sdpa = {rc: activation_formulas.saved_bytes(S7, B7, T7, dtype="bf16", impl="reference", attention="sdpa",
                                            recompute=rc) for rc in ("none", "selective")}
eager = {rc: activation_formulas.saved_bytes(S7, B7, T7, dtype="bf16", impl="reference", attention="eager",
                                             recompute=rc) for rc in ("none", "selective")}
logsumexp = S7.num_layers * 4 * B7 * S7.num_heads * T7
assert sdpa["none"] - sdpa["selective"] == logsumexp  # all it saves, for MHA (N_kv = N)
print(f"SDPA : none {sdpa['none'] / 1e9:6.2f} GB, selective {sdpa['selective'] / 1e9:6.2f} GB: saves "
      f"L·4BNT = {logsumexp:,} B ({logsumexp / sdpa['none']:.2%})")
print(f"eager: none {eager['none'] / 1e9:6.2f} GB, selective {eager['selective'] / 1e9:6.2f} GB: saves "
      f"{(eager['none'] - eager['selective']) / 1e9:.2f} GB ({1 - eager['selective'] / eager['none']:.1%})")
print(f"(SDPA, none: {sdpa['none'] / 1e9:.2f} GB = {sdpa['none'] / 2**30:.2f} GiB, the number notebook 11 prints in GiB)")

# %% [markdown]
# ## 6. Memory against compute: √L checkpointing · 显存与计算的权衡：√L 分段检查点
#
# Chen et al. (2016) split $L$ layers into $\sqrt{L}$ segments and keep only segment inputs: memory
# $O(\sqrt{L})$ for one extra forward. What matters for fitting on a card is the *peak* during
# backward, when one segment at a time is recomputed:

# %%
fig, ax = plt.subplots(figsize=(7, 4.2))
for name, r in rows.items():
    ax.scatter(r["flops"] / base["flops"], r["peak"] / MiB, s=50)
    ax.annotate(name, (r["flops"] / base["flops"], r["peak"] / MiB), textcoords="offset points",
                xytext=(6, 4), fontsize=9)
ax.set_xlabel("FLOPs per step, relative to no recomputation")
ax.set_ylabel("peak memory of a step (MiB, measured)")
ax.set_title(f"{deep.num_layers}-layer LLaMA, B={B}, T={T}, fp32")
plots.save(fig, "09_memory_vs_compute")
plt.show()

# %% [markdown]
# **Exercise.** With $L = 16$, how many layer inputs does the √L strategy keep after forward, and
# how many layers' full activations are alive at most during backward? Chen et al. promise less memory
# than keeping every layer's input; why does the table of section 3 show the opposite here — full
# recomputation with the lower peak, *and* the fewer FLOPs?
#
# <details><summary>Answer</summary>
#
# `recompute.segments(16, "sqrt")` gives 4 segments of 4 layers: 4 segment inputs are kept; during
# backward one segment (4 layers) is recomputed and its activations are alive. Full recomputation
# keeps all 16 layer inputs but has only one layer's activations alive. Counted in layer inputs, with
# $r$ = (one layer's activations) / (its input): √L peaks near $4 + 4r$, full near $16 + r$, so √L
# wins only if $r < 4$. Chen et al.'s $O(\sqrt{L})$ counts each layer as one tensor ($r \approx 1$:
# 8 against 17). A LLaMA layer keeps far more than its input — $r$ is computed below for the model of
# section 3 — so keeping 4 whole segments' activations costs more than keeping 16 inputs. And the
# FLOPs: torch's checkpoint stops recomputing a segment once its last saved tensor is rebuilt, which
# skips the segment's final `down_proj` matmul (section 5); full has 16 segments to skip it in, √L 4,
# so √L recomputes more of each forward.
# </details>

# %%
print(recompute.segments(16, "sqrt"))
recompute.apply(net, "none")
per_layer = activations.measure(net, ids, labels=ids).by_layer
layer_input = 4 * B * T * deep.hidden_size  # fp32
assert len({per_layer[i] for i in range(1, deep.num_layers)}) == 1  # layer 0 also keeps RoPE's cos/sin
r = per_layer[1] / layer_input
print(f"one layer keeps {per_layer[1]:,} B, its input is {layer_input:,} B: r = {r:.2f}")
print(f"in layer inputs: √L ≈ 4 + 4r = {4 + 4 * r:.0f}, full ≈ 16 + r = {16 + r:.0f} "
      f"(measured peaks above: √L {rows['sqrt']['peak'] / MiB:.2f} MiB, full {rows['full']['peak'] / MiB:.2f} MiB)")
assert (4 + 4 * r > 16 + r) == (rows["sqrt"]["peak"] > rows["full"]["peak"])

# %% [markdown]
# ## 要点 · Key points
#
# - 激活值是反向传播要用到的前向结果：`activations.measure` 精确列出每个张量。小型 LLaMA（bf16，eager（非融合）注意力实现）一层保存 4,589,568 B，是课件“每层 2BTH”的 35.0 倍；整个模型的闭式公式与测量逐字节相等。
# - 完全重计算省显存最多：16 层模型的整步峰值从 133.64 MiB 降到 38.29 MiB，代价是 FLOPs 增加到 1.273 倍。
# - 完全重计算时每层恰好只保留输入，即课件中的 2BTH（bf16 下每层 131,072 B）。
# - 完全重计算的重算量相当于一次前向的 81.8%，整步只多 27.3%，低于“多一次前向”的 33%：输出层和损失不重算，torch 的检查点也跳过每段最后的 `down_proj`。
# - √L 分段在这里反而不如完全重计算：一层的激活值是其输入的 r = 29.27 倍，Chen 等人的 O(√L) 结论假设 r ≈ 1。
# - 使用 SDPA（融合注意力内核）时，选择性重计算几乎不省显存：LLaMA-7B 不重计算时的激活值为 12.55 GB（即笔记本 11 中的 11.69 GiB），选择性重计算只省 0.07%；使用 eager 实现时则省 67.4%。
