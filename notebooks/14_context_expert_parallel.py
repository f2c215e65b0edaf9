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
# # Beyond 3D: context parallelism and expert parallelism · 超越 3D 并行：上下文并行与专家并行
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llmtrain/llmtrain/blob/main/notebooks/14_context_expert_parallel.ipynb)
#
# The chapter ends at 3D parallelism: data, tensor and pipeline (notebook
# [08](08_3d_parallel.ipynb)). Two runs of its own table went further. Llama 3 405B added
# **context parallelism** (CP) to train on 128K-token sequences; DeepSeek-V3 is a **mixture of
# experts** (MoE) trained with **expert parallelism** (EP) over 64 GPUs. Here both axes are built by
# hand on real `torch.distributed` ranks of this CPU, each proven equal to one process in float64
# with every byte counted. After this notebook you can
#
# - say why long sequences need their own axis: the bytes of Llama 3 405B's activations at 8K and
#   128K tokens (`llmtrain.cost.context`);
# - run ring attention and DeepSpeed-Ulysses' all-to-all on the reference LLaMA, equal to one
#   process, and say which sends less (`llmtrain.parallel.context_parallel`);
# - build a MoE LLaMA equal to Hugging Face's Mixtral and Qwen2-MoE, count DeepSeek-V3's 671B total
#   and 37B active parameters from its config, and balance its experts with an auxiliary loss or
#   DeepSeek-V3's bias (`llmtrain.model.moe`, `llmtrain.cost.params`);
# - shard the experts over ranks with two counted all-to-alls, and explain capacity and dropped
#   tokens (`llmtrain.parallel.expert_parallel`, `llmtrain.cost.moe_comm`);
# - say what one GPU holds in Llama 3's long-context layout and in DeepSeek-V3's
#   (`llmtrain.cost.memory` with `ParallelDims(cp=…, ep=…)`).
#
# `ParallelDims` gains the two axes: cp sits between tp and dp in the rank order (Megatron-Core's
# tp-cp-dp-pp for the dense layers), ep is carved out of the dp ranks (Megatron-Core's newer
# layouts may also let an ep group span cp ranks; the group sizes agree); the groups equal
# PyTorch's `init_device_mesh` (tests/test_layout_5d.py).

# %% [markdown]
# > **导读**
# > 课件讲到 3D 并行（数据并行、张量并行、流水线并行）为止，但表格里的模型走得更远：Llama 3 405B 为了 128K 词元的长序列增加了上下文并行（CP），DeepSeek-V3 是混合专家（MoE）模型，用专家并行（EP）把专家分到 64 张 GPU 上。
# > 本笔记本在 CPU 上用真实的 `torch.distributed` 进程手写这两种并行：环形注意力与 Ulysses 全对全通信、路由器与负载均衡、专家的分发与合并。每一种都与单进程的结果在 float64 下逐项相等，每一个字节都与公式核对。
# > 最后用这些公式算出 Llama 3 长序列阶段和 DeepSeek-V3 的五维并行布局中，每张 GPU 上放了什么。

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
from llmtrain.model import shapes
from llmtrain.parallel import launch

plots.use_style()
# The ranks and models here are tiny: one thread each is as fast, and on a shared machine a
# second thread only waits for a core another kernel or rank is using.
torch.set_num_threads(1)

# %% [markdown]
# ## 1. Why long sequences need their own axis · 长序列为何需要单独的并行维度
#
# Data, tensor and pipeline parallelism split the batch, the weights and the layers. None of them
# splits the **sequence**: every rank that runs a layer keeps that layer's activations for all T
# tokens of its sequences. Activations grow with T, and an attention that materialises its
# scores grows with T². Llama 3 405B was trained on 8K-token sequences first, then on 128K-token
# ones; for that last stage it added a fourth axis, context parallelism (Llama 3, arXiv
# 2407.21783, Table 4).
#
# The bytes one decoder layer keeps for backward are `cost.activations.saved_bytes_terms` (exact
# for our reference LLaMA, notebook 09); `cost.context.long_context_bytes` reads them at T/cp
# tokens per rank, with a fused attention kernel (SDPA, flash) and with the explicit softmax.

# %%
from llmtrain.cost import activations as activation_formulas
from llmtrain.cost import context as cp_formulas
from llmtrain.cost import published_runs

show(cp_formulas.long_context_bytes)

# %% [markdown]
# ### 1.1 Linear in T, or quadratic · 线性增长还是平方增长
#
# Every term of a layer with a fused attention kernel is proportional to T (norm inputs,
# projections, SwiGLU, q/k/v, the log-sum-exp): one layer keeps a·T bytes. The explicit softmax
# adds the scores: an fp32 softmax output of B·N·T² and, for 16-bit models, its cast copy and the
# T×T causal mask. The two polynomials below are checked against the exact formula at 1K, 8K and
# 128K tokens (three points fix a quadratic).

# %%
SHAPE_405B = shapes.resolve("llama3-405b")
T = sp.Symbol("T", positive=True, integer=True)
per_token = cp_formulas.long_context_bytes(SHAPE_405B, 1)["layer (flash)"]  # a: bytes per token
flash = per_token * T
eager = flash + (6 * SHAPE_405B.num_heads + 1) * T**2 - 4 * SHAPE_405B.num_heads * T
for t in (1024, 8192, 131072):  # the polynomials are the closed form at every length
    got = cp_formulas.long_context_bytes(SHAPE_405B, t)
    assert got["layer (flash)"] == flash.subs(T, t) and got["layer (eager)"] == eager.subs(T, t)
print(f"Llama 3 405B, bf16, batch 1, one layer keeps (bytes):")
print("  fused attention (SDPA):   ", flash)
print("  explicit softmax (eager): ", sp.expand(eager))

# %%
LENGTHS = {"8K": 8192, "128K": 131072}
GIB = 2**30
rows = {name: cp_formulas.long_context_bytes(SHAPE_405B, t) for name, t in LENGTHS.items()}
print(f"{'Llama 3 405B, bf16':<28}{'8K':>12}{'128K':>14}   (GiB = 2^30 bytes)")
for key in ("layer (flash)", "layer (eager)", "model (flash)"):
    print(f"{key:<28}{rows['8K'][key] / GIB:>12,.1f}{rows['128K'][key] / GIB:>14,.1f}")
ratio_flash = rows["128K"]["layer (flash)"] / rows["8K"]["layer (flash)"]
ratio_scores = rows["128K"]["scores (eager)"] / rows["8K"]["scores (eager)"]
assert ratio_flash == 16 and ratio_scores == 256  # 16× the tokens: 16× the bytes, 256× the scores
assert rows["128K"]["layer (flash)"] > 80 * 2**30  # one layer alone exceeds an 80 GiB GPU
print(f"16× the tokens: {ratio_flash:.0f}× a fused layer's bytes, {ratio_scores:.0f}× the scores")

# %% [markdown]
# At 128K tokens one layer keeps more than an 80 GB GPU holds, even with a fused attention
# kernel, and Llama 3 405B has 126 layers. Tensor parallelism with sequence parallelism divides
# a layer by t (notebook 06), but t stops at the 8 GPUs of a node; pipeline parallelism divides
# the layers, not a layer. Context parallelism divides the tokens: each of cp ranks keeps T/cp
# of them, so CP = 16 at 128K gives every rank exactly the 8K stage's activations per layer.

# %%
long_run = published_runs.LLAMA3_405B_LONG_CONTEXT
cp16 = cp_formulas.long_context_bytes(SHAPE_405B, long_run["seq"], cp=long_run["cp"])
assert long_run["tp"] * long_run["cp"] * long_run["pp"] * long_run["dp"] == long_run["gpus"]
assert cp16["layer (flash)"] == rows["8K"]["layer (flash)"]
print(f"Llama 3 405B long-context stage: {long_run['seq']:,} tokens per sequence, "
      f"TP {long_run['tp']} x CP {long_run['cp']} x PP {long_run['pp']} x DP {long_run['dp']} "
      f"= {long_run['gpus']:,} GPUs")
print(f"each CP rank holds {long_run['seq'] // long_run['cp']:,} tokens: one layer keeps "
      f"{cp16['layer (flash)'] / GIB:.1f} GiB, as at 8K without CP "
      f"({rows['8K']['layer (flash)'] / GIB:.1f} GiB)")

# %%
lengths = [2**k for k in range(10, 21)]  # 1K … 1M tokens
fig, ax = plt.subplots(figsize=(7, 4))
for key, label in (("layer (flash)", "fused attention (SDPA): ∝ T"),
                   ("layer (eager)", "explicit softmax: ∝ T²")):
    ax.plot(lengths, [cp_formulas.long_context_bytes(SHAPE_405B, t)[key] / 1e9 for t in lengths],
            marker="o", label=label)
ax.axhline(80 * 2**30 / 1e9, color="grey", linestyle="--", label="80 GiB (one H100)")
for name, t in LENGTHS.items():
    ax.axvline(t, color="grey", linewidth=0.8)
    ax.text(t, 3e5, f"{name} ", color="grey", ha="right")
ax.set(xscale="log", yscale="log", xlabel="tokens per sequence T (per rank: T/cp)",
       ylabel="bytes one layer keeps (GB)", title="Llama 3 405B, one decoder layer, bf16, batch 1")
ax.set_xticks(lengths[::2], [f"{t // 1024}K" for t in lengths[::2]])
ax.legend()
plots.save(fig, "14_long_context_bytes")
plt.show()

# %% [markdown]
# *Reading the figure.* Both lines are one layer of one sequence. For the fused line, read the
# x-axis as tokens **per rank**: context parallelism moves a run left along it, by a factor cp.
# Not so for the explicit softmax: a rank's T/cp queries still meet all T keys, so it keeps
# (T/cp)·T scores, cp times less, not cp² times. Fused kernels (flash attention) remove the
# quadratic line, not the linear one: a fused kernel is why 128K is possible at all, context
# parallelism is what makes it fit.

# %% [markdown]
# ## 2. Ring attention and all-to-all · 环形注意力与全对全
#
# Everything in a decoder layer except attention works token by token: norms, projections,
# SwiGLU and the loss run on a rank's own tokens unchanged. RoPE needs each token's *global*
# position, which the rank knows. Attention is the one place where a token needs the others:
# a query attends to every earlier key. Three ways to bring the keys (the notebook builds the
# first and the last):
#
# - **Ring attention** (Liu et al. 2023, arXiv 2310.01889): queries stay; K/V blocks travel
#   around a ring of the cp ranks, one block per step; each step computes one block of scores
#   and folds it into the output by the online softmax.
# - **All-gather**: every rank gathers all K/V blocks at once, then attends its own queries. Llama
#   3 does this (Llama 3, §3.3.2), and it is the default of PyTorch's own context parallelism
#   (section 2.6): the same bytes as the ring's forward, but in one collective whose time is not
#   hidden behind computation, and the whole sequence's K/V held for a moment.
# - **All-to-all** (DeepSpeed-Ulysses, Jacobs et al. 2023, arXiv 2309.14509): one all-to-all
#   turns "my tokens, all heads" into "all tokens, my heads"; attention runs as on one GPU on
#   N/cp heads; one all-to-all turns the output back.
#
# ### 2.1 Who holds which tokens · 谁持有哪些词元
#
# Cut T tokens into cp contiguous pieces and the causal mask makes the work uneven: the last rank's
# queries see every key, the first rank's see only their own. The **zig-zag** layout cuts T into
# 2·cp chunks and gives rank r chunks r and 2cp−1−r, an early one and a late one (as Megatron-LM's
# `get_batch_on_this_cp_rank` does).

# %%
from llmtrain.parallel import context_parallel as cp_
from llmtrain.parallel.demos import context_parallel as cp_demo

show(cp_formulas.chunks)

# %%
T_DEMO, CP_DEMO = 16, 4
for layout in cp_formulas.LAYOUTS:
    print(f"{layout:>10}: " + " | ".join(
        ",".join(map(str, cp_formulas.positions(T_DEMO, CP_DEMO, r, layout)))
        for r in range(CP_DEMO)))
work = {layout: cp_formulas.causal_pairs(T_DEMO, CP_DEMO, layout) for layout in cp_formulas.LAYOUTS}
assert sum(work["zigzag"]) == sum(work["contiguous"]) == T_DEMO * (T_DEMO + 1) // 2
assert len(set(work["zigzag"])) == 1
print(f"causal score entries per rank (T = {T_DEMO}, cp = {CP_DEMO}, total T(T+1)/2 = "
      f"{T_DEMO * (T_DEMO + 1) // 2}): contiguous {work['contiguous']}, zigzag {work['zigzag']}")

# %% [markdown]
# At ring step i, rank r holds the K/V block of rank (r − i) mod cp. The schedule is data:
# `ring_schedule` gives, per step and rank, whose block it holds and how many causal score
# entries it computes with it (0: the block lies entirely in the future and is skipped).

# %%
for layout in cp_formulas.LAYOUTS:
    print(layout)
    for i, step in enumerate(cp_formulas.ring_schedule(T_DEMO, CP_DEMO, layout)):
        print(f"  step {i}: " + "  ".join(f"rank {r} <- K/V of {o} ({p:>2} scores)"
                                          for r, (o, p) in enumerate(step)))

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1, 1, 0.8]})
colors = plt.get_cmap("tab10").colors[:CP_DEMO]
for ax, layout in zip(axes, ("contiguous", "zigzag")):
    owner = {p: r for r in range(CP_DEMO) for p in cp_formulas.positions(T_DEMO, CP_DEMO, r, layout)}
    for q in range(T_DEMO):
        for k in range(q + 1):  # a causal score entry, computed by the rank holding query q
            ax.add_patch(plt.Rectangle((k, q), 1, 1, color=colors[owner[q]], alpha=0.75))
    c = cp_formulas.chunk_tokens(T_DEMO, CP_DEMO, layout)
    for q0 in range(0, T_DEMO, c):  # each block: the ring step at which its K/V block arrives
        for k0 in range(0, q0 + 1, c):
            step = (owner[q0] - owner[k0]) % CP_DEMO
            ax.text(k0 + c / 2, q0 + c / 2, str(step), ha="center", va="center", fontsize=9)
    ax.set(xlim=(0, T_DEMO), ylim=(T_DEMO, 0), aspect="equal", xlabel="key position",
           ylabel="query position", title=layout, xticks=range(0, T_DEMO + 1, 4),
           yticks=range(0, T_DEMO + 1, 4))
axes[2].bar([r - 0.2 for r in range(CP_DEMO)], work["contiguous"], 0.4, label="contiguous",
            color="grey")
axes[2].bar([r + 0.2 for r in range(CP_DEMO)], work["zigzag"], 0.4, label="zigzag",
            color=colors[0])
axes[2].set(xlabel="rank", ylabel="causal score entries", title="attention work per rank",
            xticks=range(CP_DEMO))
axes[2].legend()
fig.suptitle(f"T = {T_DEMO}, cp = {CP_DEMO}: colour = the rank holding the query, "
             "digit = the ring step that brings the key block")
plots.save(fig, "14_ring_layouts")
plt.show()

# %% [markdown]
# ### 2.2 The online softmax · 在线 softmax
#
# A rank never sees a whole row of scores at once. For each block it keeps the block's output
# and its log-sum-exp ℓ = log Σ exp(s); two blocks merge as
# o = e^{ℓ₁−ℓ} o₁ + e^{ℓ₂−ℓ} o₂ with ℓ = log(e^{ℓ₁} + e^{ℓ₂}) — the softmax over the union,
# exactly (SymPy, below, with three scores split 2 + 1).

# %%
s1, s2, s3, v1, v2, v3 = sp.symbols("s1 s2 s3 v1 v2 v3", real=True)
whole = (sp.exp(s1) * v1 + sp.exp(s2) * v2 + sp.exp(s3) * v3) / (sp.exp(s1) + sp.exp(s2) + sp.exp(s3))
o1, l1 = (sp.exp(s1) * v1 + sp.exp(s2) * v2) / (sp.exp(s1) + sp.exp(s2)), sp.log(sp.exp(s1) + sp.exp(s2))
o2, l2 = v3, s3
l = sp.log(sp.exp(l1) + sp.exp(l2))
merged = sp.exp(l1 - l) * o1 + sp.exp(l2 - l) * o2
assert sp.simplify(merged - whole) == 0
print("merging two blocks by their log-sum-exp = softmax over all three scores:",
      sp.simplify(merged - whole) == 0)

# %% [markdown]
# `RingAttention` is that loop with its backward beside it. Forward: cp − 1 shifts of K and V, a
# block of scores per step masked by global positions, the merge. It saves only this rank's q, k,
# v, output and log-sum-exp. Backward recomputes each block's probabilities from the saved
# log-sum-exp (flash attention's backward) and sends the K/V blocks around again, each with a
# gradient buffer riding along that collects every rank's contribution and arrives home after one
# last shift. (Letting autograd differentiate through the loop would be shorter, but every rank
# would then keep all cp K/V blocks: the memory context parallelism exists to split.)

# %%
show(cp_.RingAttention)

# %% [markdown]
# ### 2.3 On two real ranks, equal to one process · 两个真实进程上与单进程一致
#
# `context_parallel.apply(model, group, method, layout)` swaps every attention core of the
# reference LLaMA and makes RoPE read global positions; `split` gives each rank its tokens and
# targets (labels are shifted *before* the cut: a chunk's last target lives on another rank); the
# loss is one all-reduce of (Σ loss, token count); `sum_grads` adds the replicated weights'
# gradients over cp. One launch runs ring and Ulysses, zig-zag and contiguous, in float64, and
# compares the gathered logits, the loss and every gradient with one process.

# %%
SHAPE_CP, B_CP, T_CP = shapes.get("tiny"), 2, 64
ranks = launch(cp_demo.section, 2, SHAPE_CP, B_CP, T_CP, timeout=300)
for cfg in cp_demo.CONFIGS:
    for rank in ranks:
        res = rank["f64"][cfg]
        assert max(res["logits"], res["loss"], res["grads"]) < 1e-12, (cfg, res)
    print(f"{cfg[0]:>7}, {cfg[1]:>10}: gathered logits, loss and every gradient equal to one "
          "process on both ranks (max |Δ| < 1e-12)")

# %% [markdown]
# Every byte is counted. Per layer and rank, with kv = B·(T/cp)·N_kv·d elements of K (or V) and b
# bytes each, ring attention sends 2(cp−1)·kv·b forward and 2(cp−1)·kv·b + 2cp·kv·g backward (the
# blocks again, and the gradient buffers one step further; g = b here, 4 bytes for a 16-bit
# model's fp32 buffers); Ulysses sends (cp−1)/cp of q, k, v and the output each way. Add the loss's
# all-reduce and the gradients' (`sum_grads`):

# %%
show(cp_formulas.sent_per_layer)

# %%
from llmtrain.cost import params as param_count

n_params = param_count.count(SHAPE_CP)
for method in cp_formulas.METHODS:
    want = cp_formulas.sent_per_step(SHAPE_CP, B_CP, T_CP, 2, method=method, dtype="fp64",
                                     params=n_params)
    for layout in cp_formulas.LAYOUTS:
        for rank in ranks:
            assert rank["f64"][(method, layout)]["sent"] == want
    print(f"{method:>7}: bytes each rank sent = formula: " + ", ".join(
        f"{tag} {int(v):,}" for tag, v in want.items()))

# %% [markdown]
# ### 2.4 What each rank keeps · 每个进程保存的激活值
#
# Each rank keeps the activations of T/cp tokens: the single process's closed form at T/cp
# (notebook 09), except attention and the loss. Ring attention keeps its own q, k, v (the blocks
# that arrive are not kept) — k and v with N_kv heads, not repeated to N as SDPA gets them — and
# an fp32 log-sum-exp; Ulysses keeps what SDPA keeps, plus its output twice (head-sharded for
# SDPA, sequence-sharded for o_proj), and in the zig-zag layout two int64 index vectors that
# reorder the gathered tokens (the 2,048 bytes between its two rows below); the loss keeps all T/cp rows (one process drops each sequence's last position).
# `cp_saved_bytes` writes these differences out; the ranks measured them (fp32, saved-tensor hooks).

# %%
one_process = activation_formulas.saved_bytes(SHAPE_CP, B_CP, T_CP, dtype="fp32")
print(f"one process, T = {T_CP}: {one_process:,} bytes saved for backward (fp32)")
for cfg in cp_demo.CONFIGS:
    want = cp_formulas.cp_saved_bytes(SHAPE_CP, B_CP, T_CP, 2, method=cfg[0], layout=cfg[1],
                                      dtype="fp32")
    assert all(rank["fp32"][cfg] == want for rank in ranks)
    print(f"{cfg[0]:>7}, {cfg[1]:>10}: each of 2 ranks {want:,} bytes = cp_saved_bytes "
          f"({want / one_process:.3f} of one process)")

# %% [markdown]
# ### 2.5 Ring or all-to-all · 环形还是全对全
#
# Per rank, ring attention's bytes do not shrink as cp grows: every rank still sees every other
# rank's K/V block, cp − 1 blocks of B·(T/cp)·N_kv·d, so its bytes approach a constant times
# B·T·N_kv·d. Ulysses sends (cp − 1)/cp of q, k, v and the output of T/cp tokens: its bytes fall
# as 1/cp. With GQA, K and V are small (Llama 3 405B: 8 key/value heads for 128
# query heads), so the ring sends less at small cp; the two cross near cp = 8, and Ulysses can
# not go further without repeating key/value heads: it needs whole key/value heads per rank.
# These numbers are for TP 1; under Llama 3's TP 8 each rank has a single key/value head left,
# and Ulysses cannot split it at all. What the byte count leaves out: the ring's messages can hide behind the
# computation of each block (Liu et al. 2023; this implementation simply waits for each one),
# an all-to-all's cannot hide behind attention, which needs its result.

# %%
print("Llama 3 405B, 128K tokens, bf16, batch 1: bytes one rank sends per layer, forward + backward")
totals = {}
for cp in (2, 4, 8, 16):
    ring = sum(cp_formulas.sent_per_layer(SHAPE_405B, 1, 131072, cp).values())
    try:
        ulysses = sum(cp_formulas.sent_per_layer(SHAPE_405B, 1, 131072, cp, method="ulysses").values())
        totals[cp] = (ring, ulysses)
        print(f"  cp = {cp:>2}: ring {int(ring):>13,}   Ulysses {int(ulysses):>13,}")
    except ValueError as e:
        assert cp > SHAPE_405B.num_kv_heads
        print(f"  cp = {cp:>2}: ring {int(ring):>13,}   Ulysses: {e}")
assert all(totals[cp][0] < totals[cp][1] for cp in (2, 4)) and totals[8][1] < totals[8][0]
ring_totals = [sum(cp_formulas.sent_per_layer(SHAPE_405B, 1, 131072, cp).values()) for cp in (2, 4, 8, 16)]
assert ring_totals == sorted(ring_totals) and totals[2][1] > totals[4][1] > totals[8][1]

# %% [markdown]
# ### 2.6 PyTorch's own context parallelism · PyTorch 自带的上下文并行
#
# PyTorch ships context parallelism as `torch.distributed.tensor.experimental.context_parallel`:
# it shards the sequence of the buffers it is given and replaces SDPA inside the block by a
# blockwise attention whose K/V are all-gathered by default (`set_rotate_method("alltoall")`
# passes them around instead). The message below is torch 2.13's.
# The same launch tried it on the CPU ranks. It does not run there: torch registers its ring for
# the CUDA attention kernels (flash, efficient, cuDNN) only, and CPU SDPA is another operator.

# %% tags=["nbval-ignore-output"]
torch_cp = ranks[0]["torch"]
print("torch.distributed.tensor.experimental.context_parallel on these ranks:",
      torch_cp.get("error", "ran"))
assert torch_cp["ok"] or "cpu" in torch_cp["error"].lower()  # CPU ranks: refused; GPUs may run it

# %% [markdown]
# **Exercise · 练习.** Llama 3's long-context stage uses CP = 16 on 131,072-token sequences. With the contiguous
# layout, how many times more causal score entries does the busiest rank compute than the least
# busy one? With zig-zag? (Work in chunks: the ratio does not depend on T.)
#
# <details><summary>Answer · 答案</summary>
#
# Contiguous: rank r computes its own triangle plus r full blocks, c(c+1)/2 + r·c² with c = T/16;
# the last rank does about 31 times the first's work (the cell below prints it exactly). Zig-zag:
# every rank computes the same number, so the ratio is 1.
#
# </details>

# %%
busy = cp_formulas.causal_pairs(131072, 16, "contiguous")
even = cp_formulas.causal_pairs(131072, 16, "zigzag")
assert len(set(even)) == 1 and round(max(busy) / min(busy)) == 31
print(f"contiguous: busiest / least busy rank = {max(busy):,} / {min(busy):,} = "
      f"{max(busy) / min(busy):.2f}; zigzag: every rank {even[0]:,}")

# %% [markdown]
# ## 3. Mixture of experts · 混合专家
#
# A mixture-of-experts (MoE) layer replaces the dense SwiGLU MLP of a decoder layer by E smaller
# SwiGLU *experts* and a *router*. For each token the router scores every expert, keeps the k
# best, and sums their outputs weighted by the scores. The parameters grow with E, the compute
# per token only with k. This section builds that layer into the reference LLaMA
# (`llmtrain.model.moe`), checks it against Hugging Face's Mixtral, Qwen2-MoE and DeepSeek-V3,
# counts total and active parameters, and measures the load imbalance that expert parallelism
# (section 4) has to live with, with and without balancing.

# %% [markdown]
# ### 3.1 What a router does · 路由器做什么
#
# Mixtral (§2.1) writes the layer as $y = \sum_i G(x)_i\,\mathrm{SwiGLU}_i(x)$ with
# $G(x) = \mathrm{Softmax}(\mathrm{TopK}(x W_g))$, K = 2 of 8 experts: the router is one linear
# map $W_g$ (H → E, no bias), the logits outside the top k are set to −∞, and the softmax runs over
# the k that are left. Hugging Face and `llmtrain` compute it in the other order: softmax over all
# E experts, keep the top k, divide by their sum. The two are the same numbers (the softmax's
# denominator cancels); the cell below checks it. The router's code:

# %%
from llmtrain.model import moe

show(moe.Router.route)

# %% [markdown]
# And the layer: each expert runs only on the tokens routed to it (`torch.where` picks them,
# `index_add_` adds its weighted output back), then the shared expert, if any, sees every token.

# %%
show(moe.MoE.forward)

# %% [markdown]
# Eight tokens through a router with E = 4 experts and k = 2. Each token gets its own pair; the
# weights of a pair sum to 1.

# %%
torch.manual_seed(0)
layer = moe.MoE(hidden=8, expert_size=16, num_experts=4, k=2, routing=moe.MIXTRAL).double()
x = torch.randn(8, 8, dtype=torch.float64)
weights, chosen = layer.route(x)
probs = torch.softmax(layer.gate(x), dim=-1)  # all E probabilities
# Mixtral §2.1: softmax over the top-k logits (the others set to -inf)
logits = layer.gate(x)
kept = torch.full_like(logits, float("-inf")).scatter(1, chosen, logits.gather(1, chosen))
mixtral = torch.softmax(kept, dim=-1).gather(1, chosen)
assert torch.allclose(weights, mixtral, atol=1e-15, rtol=0)
assert torch.allclose(weights.sum(-1), torch.ones(8, dtype=torch.float64), atol=1e-15)
print("token  experts (top-2 of 4)")
for t in range(8):
    print(f"{t:>5}  {sorted(chosen[t].tolist())}")
print("Softmax(TopK(logits)) = top-k of softmax, renormalised: equal, max |Δ| < 1e-15")
print("tokens per expert (the load):", moe.expert_load(chosen, 4).tolist())

# %% tags=["nbval-ignore-output"]
fig, ax = plt.subplots(figsize=(5, 3))
ax.imshow(probs.detach().T, cmap="Blues", vmin=0, vmax=1)
for t in range(8):
    for e in chosen[t].tolist():
        ax.add_patch(plt.Rectangle((t - 0.5, e - 0.5), 1, 1, fill=False, lw=2, ec="C1"))
ax.set(xlabel="token", ylabel="expert", title="router probabilities; boxed: the top-2")
plt.show()

# %% [markdown]
# ### 3.2 The same model as Hugging Face's · 与 Hugging Face 的模型相同
#
# `MoELlama(shape, routing)` is the reference LLaMA with a `MoE` in place of the MLP of every layer
# from `shape.first_dense_layers` on. Its module names follow `transformers`, except that experts
# are a plain `ModuleList` (Hugging Face stacks them into 3-D tensors): `hf_state_dict_to_ours`
# cuts those apart. Below, a small Mixtral and a small Qwen2-MoE (a shared expert behind a
# sigmoid gate, the top-k weights *not* renormalised) are built from their configs with random
# weights, copied into ours, and run on the same tokens in float32. (In float64 the logits agree
# to 1e-10: tests/test_moe.py, where `transformers`' internal casts to float32 are turned off.)

# %%
import transformers
from llmtrain.cost import params

def same_as_hf(shape, hf_class, routing):
    torch.manual_seed(0)
    hf = hf_class(shape.to_hf_config()).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.1)
    ours = moe.MoELlama(shape, routing).eval()
    ours.load_state_dict(moe.hf_state_dict_to_ours(hf.state_dict()), strict=True)
    ids = torch.randint(0, shape.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        gap = (ours(ids).logits - hf(input_ids=ids).logits).abs().max().item()
    n_ours, n_hf = (sum(p.numel() for p in m.parameters()) for m in (ours, hf))
    assert gap < 1e-5 and n_ours == n_hf == params.count(shape)
    print(f"{hf_class.__name__:<20} logits equal (float32, max |Δ| < 1e-5); "
          f"parameters {n_ours:,} = {n_hf:,} = params.count")
    return hf, ours, ids

tiny_moe = shapes.get("tiny").replace(num_experts=8, experts_per_token=2, moe_intermediate_size=176)
hf_mixtral, our_mixtral, ids = same_as_hf(tiny_moe, transformers.MixtralForCausalLM, moe.MIXTRAL)
tiny_qwen = tiny_moe.replace(moe_intermediate_size=48, shared_expert_size=96,
                             shared_expert_gate=True, attention_bias=True)
_ = same_as_hf(tiny_qwen, transformers.Qwen2MoeForCausalLM, moe.QWEN2_MOE)

# %% [markdown]
# ### 3.3 Shared and fine-grained experts · 共享专家与细粒度专家
#
# DeepSeek-V3 (§2.1.2, Eq. 12) adds to the routed experts $N_s$ *shared* experts that every token
# goes through, and uses many *fine-grained* experts: 256 routed experts of width 2048, 8 per
# token, plus 1 shared (§4.2). Its router differs from Mixtral's (Eqs. 13-16): sigmoid
# affinities instead of a softmax, the chosen ones normalised to sum 1, and a balancing bias
# (3.5). DeepSeek's released configuration (`config_671B.json`, copied by `transformers`'
# `DeepseekV3Config` defaults) adds two things: the weights scaled by 2.5
# (`routed_scaling_factor`), and the choice limited to the experts of 4 of 8 groups, like the
# paper's node-limited routing (each token goes to at most 4 nodes, §4.2). Our layer with that
# routing against `transformers`' `DeepseekV3MoE`, one MoE block with a non-zero bias:

# %%
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

cfg = transformers.DeepseekV3Config(hidden_size=32, moe_intermediate_size=12, n_routed_experts=16,
                                    num_experts_per_tok=4, n_group=8, topk_group=4,
                                    n_shared_experts=1, routed_scaling_factor=2.5,
                                    experts_implementation="eager")
torch.manual_seed(0)
hf_block = DeepseekV3MoE(cfg)
with torch.no_grad():
    for p in hf_block.parameters():
        p.normal_(0, 0.1)
    hf_block.gate.e_score_correction_bias.normal_(0, 0.05)
ours = moe.MoE(32, 12, 16, 4, shared_size=12, routing=moe.Routing(
    "sigmoid", n_group=8, topk_group=4, routed_scaling_factor=2.5))
state = moe.hf_state_dict_to_ours({f"mlp.{k}": v for k, v in hf_block.state_dict().items()})
ours.load_state_dict({k.removeprefix("mlp."): v for k, v in state.items()}, strict=True)
x = torch.randn(64, 32)
with torch.no_grad():
    gap = (ours(x) - hf_block(x[None])[0]).abs().max().item()
assert gap < 1e-5
print("DeepseekV3MoE (sigmoid, bias, 8 groups keep 4, 1 shared, x2.5): equal, max |Δ| < 1e-5")

# %% [markdown]
# Why fine-grained? Cut each of Mixtral's 8 experts into 8 narrower ones and route each token to
# 16 of the 64: the parameters and the compute per token stay exactly the same, but the number of
# expert combinations a token can choose from explodes. `cost.params` counts total and active
# (what one token uses) parameters:

# %%
coarse = tiny_moe.replace(num_experts=8, experts_per_token=2, moe_intermediate_size=512)
fine = tiny_moe.replace(num_experts=64, experts_per_token=16, moe_intermediate_size=64)
for s in (coarse, fine):
    E, k = s.num_experts, s.experts_per_token
    print(f"E={E:>2}, k={k:>2}: total {params.count(s):,}, active {params.active(s):,}, "
          f"combinations C(E, k) = {int(sp.binomial(E, k)):,}")
H, moe_layers = tiny_moe.hidden_size, tiny_moe.num_layers
router_rows = moe_layers * (8 - 64) * H  # the only difference: 8 router rows instead of 64
assert params.count(coarse) - params.count(fine) == router_rows
assert params.active(coarse) - params.active(fine) == router_rows

# %% [markdown]
# (The only difference is the router: 64 rows instead of 8.)

# %% [markdown]
# ### 3.4 Total vs active parameters: DeepSeek-V3's 671B / 37B · 总参数量与激活参数量
#
# The DeepSeek-V3 report (arXiv 2412.19437, abstract and §4.2) describes "671B total parameters
# with 37B activated for each token": 61 layers, the first three dense, the other 58 each with
# one shared expert and 256 routed experts of width 2048, of which a token activates 8.
# A MoE layer holds all E experts, but a token runs through only k of them, plus the router and
# the shared expert; attention, the embedding and the output head are used by every token.
# So, with L_moe MoE layers of E experts of width H_e:
#
# $$P_\text{total} - P_\text{active} = L_\text{moe}\,(E - k)\cdot 3 H H_e .$$
#
# `params.breakdown` counts every component of a `ModelShape` (now with `router`, `shared`,
# `experts`, and DeepSeek's multi-head latent attention); `params.active_breakdown` keeps k of
# the E routed experts.

# %%
from llmtrain.cost import params

show(params.active_breakdown)

# %% [markdown]
# The shape is read from DeepSeek's released `config_671B.json` (the `deepseek-v3` preset;
# `ModelShape.from_hf_config` reads the Hugging Face `config.json` to the same shape). The MoE
# blocks' terms in SymPy (`params.moe_terms`): their difference is the formula above, and
# evaluated for DeepSeek-V3 it is exactly what `active` removes:

# %%
shape = shapes.resolve("deepseek-v3")
moe_total, moe_active = params.moe_terms(), params.moe_terms(active=True)
m, H = params.moe_symbols(), params.symbols()["H"]
gap = m["L_moe"] * (m["E"] - m["k"]) * 3 * H * m["H_e"]
assert sp.expand(sum(moe_total.values()) - sum(moe_active.values()) - gap) == 0
values = params.moe_subs(shape)
total, active = params.count(shape), params.active(shape)
assert gap.subs(values) == total - active
for name in moe_total:
    print(f"  {name:<8} total {moe_total[name]},  active {moe_active[name]}")
print(f"{shape.name}: L = {shape.num_layers} ({shape.first_dense_layers} dense, "
      f"{shape.moe_layers} MoE), E = {shape.num_experts}, k = {shape.experts_per_token}, "
      f"H = {shape.hidden_size}, H_e = {shape.moe_intermediate_size}, "
      f"shared H_s = {shape.shared_expert_size}")
print(f"P_total − P_active = {gap} = {int(gap.subs(values)):,}")
print(f"total  {total:,} = {total / 1e9:.2f} B (the report: 671B)")
print(f"active {active:,} = {active / 1e9:.2f} B per token (the report: 37B)")

# %% [markdown]
# The count is not only arithmetic: Hugging Face's `DeepseekV3ForCausalLM`, built from the same
# shape on the meta device (shapes, no memory), has exactly as many parameters. Its
# multi-token-prediction module is not built, and the 671B leaves it out too (the DeepSeek-V3
# README: the Hugging Face checkpoint adds a 14B MTP module to the 671B of the main model).

# %%
with torch.device("meta"):
    hf = transformers.DeepseekV3ForCausalLM(shape.to_hf_config())
hf_total = sum(p.numel() for p in hf.parameters())
assert hf_total == total
print(f"transformers' DeepseekV3ForCausalLM on meta: {hf_total:,} parameters = params.count")

# %% [markdown]
# Where the 671B sit: 97 % of them are routed experts, of which a token uses 8/256. What a token
# does use is mostly attention (MLA) and the routed and shared experts it is sent to.

# %%
print(params.describe(shape))
parts, used = params.breakdown(shape), params.active_breakdown(shape)
assert parts["experts"] * 100 // total == 97 and used["experts"] * 32 == parts["experts"]

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
names = [n for n in parts if parts[n]]
for ax, counts, title in ((axes[0], parts, "total"), (axes[1], used, "active per token")):
    left = 0
    for i, n in enumerate(names):
        ax.barh(0, counts[n] / 1e9, left=left, color=plots.PALETTE[i % len(plots.PALETTE)], label=n)
        left += counts[n] / 1e9
    ax.set_yticks([])
    ax.set_xlabel("parameters (10⁹)")
    ax.set_title(f"DeepSeek-V3, {title}: {sum(counts.values()) / 1e9:.2f} B")
axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
fig.tight_layout()
plots.save(fig, "14_moe_total_vs_active")
plt.show()

# %% [markdown]
# The report rounds the active count down: our 37.55B is its "37B". DeepSeek's `README_WEIGHTS.md`
# gives 36.7B "including 0.9B for Embedding and 0.9B for the output Head", 0.85B less than this
# count, with no breakdown to compare: we state the gap and do not explain it.
#
# Mixtral 8x7B is the other extreme: 8 experts as wide as Mistral 7B's FFN, 2 per token, no
# shared expert, no dense layers. Its release (model card) says 46.7B total, 12.9B per token;
# the paper's abstract (arXiv 2401.04088) rounds to 47B and 13B.

# %%
mixtral = shapes.resolve("mixtral-8x7b")
m_total, m_active = params.count(mixtral), params.active(mixtral)
assert (round(m_total / 1e9, 1), round(m_active / 1e9, 1)) == (46.7, 12.9)
print(f"Mixtral 8x7B: {m_total:,} total ({m_total / 1e9:.1f} B), "
      f"{m_active:,} active ({m_active / 1e9:.1f} B)")
print(f"DeepSeek-V3 active − README_WEIGHTS.md's 36.7B: {(active - 36.7e9) / 1e9:.2f} B")

# %% [markdown]
# **Exercise · 练习.** Qwen1.5-MoE-A2.7B (preset `qwen1.5-moe-a2.7b`) has 24 MoE layers of 60 experts
# of width 1408, top-4, and a gated shared expert of width 5632. How many parameters does a
# token use, and how many would it use with top-8? (Its model card: 14.3B total, 2.7B activated.)
#
# <details><summary>Answer · 答案</summary>
#
# Each extra expert adds 24 · 3 · 2048 · 1408 = 207,618,048 parameters: top-4 uses 2,689,173,504
# (2.7B), top-8 uses 3,519,645,696, out of 14,315,784,192 in total (cell below).
# </details>

# %%
qwen = shapes.resolve("qwen1.5-moe-a2.7b")
print(f"{qwen.name}: {qwen.moe_layers} MoE layers, E = {qwen.num_experts}, "
      f"k = {qwen.experts_per_token}, H = {qwen.hidden_size}, H_e = {qwen.moe_intermediate_size}, "
      f"gated shared expert H_s = {qwen.shared_expert_size}")
top8 = qwen.replace(experts_per_token=8)
per_expert = qwen.moe_layers * 3 * qwen.hidden_size * qwen.moe_intermediate_size
assert params.active(top8) - params.active(qwen) == 4 * per_expert
print(f"one more expert per token: {per_expert:,}; top-4: {params.active(qwen):,}; "
      f"top-8: {params.active(top8):,}; total: {params.count(qwen):,} "
      f"({params.count(qwen) / 1e9:.1f} B, active {params.active(qwen) / 1e9:.1f} B)")

# %% [markdown]
# ### 3.5 Load balancing · 负载均衡
#
# Nothing in a router keeps the experts equally busy; an expert that gets more tokens learns
# faster and attracts more. With expert parallelism an overloaded expert is a GPU that everyone
# waits for (section 4). Two remedies:
#
# - **An auxiliary loss** (Switch Transformer, Fedus et al. 2022, §2.2, Eq. 4):
#   $\alpha \cdot E \cdot \sum_i f_i P_i$, where $f_i$ is the share of tokens sent to expert i and
#   $P_i$ the mean router probability of expert i. Only $P$ carries a gradient; the product is
#   smallest when both are uniform. Switch adds it for each MoE layer, α = 10⁻².
# - **A bias that only chooses** (DeepSeek-V3, §2.1.2, Eq. 16): add $b_i$ to expert i's score
#   when picking the top k, but weight the outputs with the unbiased scores; after each step
#   lower $b_i$ by γ if expert i was overloaded, raise it by γ if underloaded (γ = 0.001 for most of
#   the training, then 0; §4.2). No gradient, so nothing competes with the language-model loss.
#   DeepSeek-V3 keeps only a tiny sequence-wise balance loss beside it (§2.1.2, α = 0.0001, §4.2).

# %%
show(moe.aux_loss)

# %%
show(moe.MoE.update_bias)

# %% [markdown]
# The aux loss at its two extremes, with k = 2 of E = 8 (our $f_i$ counts each of a token's k
# choices, as `transformers` does, so uniform routing gives k rather than 1; a definition that
# divides by k gives 1, and its α is then k times ours for the same pull):

# %%
n, E, k = 64, 8, 2
uniform = moe.aux_loss(torch.full((n, E), 1 / E, dtype=torch.float64),
                       torch.tensor([[i % E, (i + 1) % E] for i in range(n)]))
collapsed = torch.zeros(n, E, dtype=torch.float64)
collapsed[:, :2] = 0.5
worst = moe.aux_loss(collapsed, torch.tensor([[0, 1]] * n))
assert abs(uniform.item() - k) < 1e-12 and abs(worst.item() - E) < 1e-12
print(f"uniform routing: aux loss = {uniform.item():.0f} (= k); "
      f"all tokens on experts 0 and 1: {worst.item():.0f} (= E)")

# %% [markdown]
# `transformers`' `load_balancing_loss_func` gives the same number for one layer. For several
# layers it first averages f and P over the layers and then multiplies, which is not the sum (nor
# the mean) of the layers' losses; ours adds each layer's loss, as Switch does. On the small
# Mixtral of 3.2:

# %%
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

with torch.no_grad():
    ref = hf_mixtral(input_ids=ids, output_router_logits=True)
    our_mixtral(ids)
layers = our_mixtral.moe_layers()
for m, logits in zip(layers, ref.router_logits):
    assert abs(m.last_aux_loss.item() - load_balancing_loss_func((logits,), 8, 2).item()) < 1e-5
pooled, summed = ref.aux_loss.item(), our_mixtral.last_aux_loss.item()
assert abs(summed - sum(m.last_aux_loss.item() for m in layers)) < 1e-6
assert abs(len(layers) * pooled - summed) > 1e-3
print(f"each of the {len(layers)} layers: ours = transformers' (< 1e-5); all layers: ours is the "
      f"sum, transformers' the pooled product (they differ)")

# %% [markdown]
# Now the measurement. A router skewed on purpose (experts 0 and 1 favoured by every token), 60
# batches of 256 tokens, E = 8, k = 2, three ways: no balancing; the aux loss alone driving SGD
# on the router; DeepSeek-V3's bias with γ = 0.01 (larger than 0.001, as this run has 60 steps,
# not a whole pretraining run). `balancing_run` records the load of every step:

# %%
show(moe.balancing_run)

# %% tags=["nbval-ignore-output"]
def skewed(routing, seed=0):
    torch.manual_seed(seed)
    layer = moe.MoE(32, 16, 8, 2, routing=routing).double()
    g = torch.Generator().manual_seed(1)
    u = torch.nn.functional.normalize(torch.randn(32, generator=g, dtype=torch.float64), dim=0)
    with torch.no_grad():
        layer.gate.weight.normal_(0, 0.3, generator=g)
        layer.gate.weight[:2] += 2.0 * u  # experts 0 and 1 lean towards the tokens' mean
    tokens = torch.randn(60, 256, 32, generator=g, dtype=torch.float64) + u
    return layer, tokens

runs = {}
for name, routing, lr in [("no balancing", moe.Routing("sigmoid"), 0.0),
                          ("aux loss", moe.Routing("sigmoid"), 0.5),
                          ("bias (γ = 0.01)", moe.Routing("sigmoid", bias_update_speed=0.01), 0.0)]:
    layer, tokens = skewed(routing)
    w0 = layer.gate.weight.detach().clone()
    loads = moe.balancing_run(layer, tokens, aux_lr=lr)
    moved = (layer.gate.weight - w0).norm().item()
    runs[name] = [moe.imbalance(l) for l in loads]
    last = moe.imbalance(loads[-10:].sum(0))
    print(f"{name:<16} imbalance (max/mean) step 1: {runs[name][0]:.2f}, last 10 steps: {last:.2f}; "
          f"router weights moved {moved:.2f}")
    if name == "no balancing":
        assert last > 2.0
    elif name == "aux loss":
        assert 1.0 < last < 2.0 and moved > 0.5  # balances by changing the scores themselves
    else:
        assert last < 1.2 and moved == 0.0  # balances without touching a weight

fig, ax = plt.subplots(figsize=(6, 3))
for name, ys in runs.items():
    ax.plot(range(1, len(ys) + 1), ys, label=name)
ax.axhline(1.0, color="gray", lw=0.8)
ax.set(xlabel="step", ylabel="max load / mean load", ylim=(0.9, 4.1))
ax.legend()
plt.show()

# %% [markdown]
# The bias balances within a few steps and leaves the router's weights, and so the gating values
# the model learns from, untouched; the aux loss narrows the gap only partly, and only by moving the
# router's weights. In training, that gradient competes with the language-model loss's: "too large
# an auxiliary loss will impair the model performance" (DeepSeek-V3, §2.1.2). Perfect balance (a ratio of 1) is never
# reached: with a sign rule every expert keeps oscillating around the mean.
#
# **Exercise · 练习.** With E = 8 experts and k = 2, what is the largest imbalance (max load / mean
# load) a router can produce? And with DeepSeek-V3's 256 experts and k = 8?
#
# <details><summary>Answer · 答案</summary>
#
# Every token on the same k experts: each of them gets all n tokens, the mean is n·k/E, so the
# imbalance is E/k: 4 for Mixtral's 8 and 2, 32 for DeepSeek-V3's 256 and 8. The next cell
# computes both from a collapsed load.
# </details>

# %%
for E, k in [(8, 2), (256, 8)]:
    load = torch.zeros(E, dtype=torch.long)
    load[:k] = 1000  # 1000 tokens, all on experts 0..k-1
    print(f"E={E}, k={k}: largest imbalance = {moe.imbalance(load):.0f} (= E/k)")

# %% [markdown]
# ## 4. Expert parallelism · 专家并行
#
# A MoE layer holds $E$ experts but each token uses only $k$ of them. Expert parallelism (EP)
# puts the experts on different ranks: rank $r$ of an ep group of size $ep$ holds experts
# $[r\cdot E/ep,\ (r+1)\cdot E/ep)$ and nothing else of them, while the router, attention and
# the shared expert stay replicated. DeepSeek-V3 trains with "16-way Pipeline Parallelism (PP),
# 64-way Expert Parallelism (EP) spanning 8 nodes, and ZeRO-1 Data Parallelism (DP)"
# (DeepSeek-V3 §3.2).
#
# Every rank still routes its own tokens. A token whose expert lives on another rank must travel
# there and its expert's output must travel back: two **all-to-alls** per MoE layer, each rank
# sending a different number of rows to each other rank:
#
# 1. **route**: top-$k$ experts and their weights for each of the rank's $n$ tokens;
# 2. **sort** the $n\cdot k$ (token, slot) rows by expert, so rows for rank 0's experts come first;
# 3. **counts**: an all-to-all of the $E$ row counts, so each rank knows how many rows it receives;
# 4. **dispatch**: the all-to-all of the rows themselves;
# 5. **experts**: each local expert on its rows;
# 6. **combine**: the all-to-all back, the splits reversed;
# 7. **sum**: each token adds its $k$ expert outputs, weighted (plus the shared expert, computed locally).
#
# `llmtrain.parallel.expert_parallel` does exactly that; `shard(moe, group)` installs it as the
# layer's forward (parameter names unchanged):

# %%
from llmtrain.cost import moe_comm
from llmtrain.parallel import expert_parallel
from llmtrain.parallel.demos import expert_parallel as ep_demo

show(expert_parallel.ExpertParallel.__call__)

# %% [markdown]
# The two all-to-alls are `autograd.Function`s whose backward is the same all-to-all reversed:
# the gradient of a dispatched row goes back to the rank the token came from, the gradient of a
# combined output goes to the expert again.

# %%
show(expert_parallel._AllToAll)

# %% [markdown]
# ### 4.1 On two real ranks · 两个真实进程
#
# One MoE layer (`ep_demo.moe_layer`: 4 experts of width 6, top-2, one shared expert, hidden 8,
# float64) on 2 ranks, 12 tokens each; the loss weights every output row by its own random
# number, so every row gets its own gradient. The oracle is one process running the whole layer
# on all 24 tokens. The same launch also computes one training step's loss and gradients of a MoE LLaMA (the tiny LLaMA with 4
# experts per layer, the balancing loss added with α = 0.01) on `ParallelDims(dp=2, ep=2)`: the
# ep group is the 2 dp ranks.

# %%
TOKENS = 12
runs = launch(ep_demo.section, 2, TOKENS, 1.0)
layer = [r["layer"][0] for r in runs]  # no capacity limit
one = ep_demo.one_process(ep_demo.moe_layer, TOKENS, 2)


def gap(a, b):
    return (a - b).abs().max().item()


assert gap(torch.cat([r["out"] for r in layer]), one["out"]) < 1e-12
assert gap(torch.cat([r["x_grad"] for r in layer]), one["x_grad"]) < 1e-12
for name, g in one["grads"].items():
    if expert_parallel.expert_parameter(name):  # on its owner only
        (owner,) = [r for r in layer if name in r["grads"]]
        assert gap(owner["grads"][name], g) < 1e-12, name
    else:  # router and shared expert: each rank has its tokens' share
        assert gap(sum(r["grads"][name] for r in layer), g) < 1e-12, name
for rank, r in enumerate(layer):
    print(f"rank {rank} holds experts {r['experts']}, routes its tokens to experts 0-3: "
          f"{r['routed']} rows")
assert torch.equal(sum(r["load"] for r in layer), one["load"])
print(f"load summed over the ranks {one['load'].tolist()} = one process's load on all 24 tokens")
print("outputs, input gradients, each expert's gradient (on its owner), router and shared-expert "
      "gradients (summed over ranks): equal to one process, max |Δ| < 1e-12")

# %%
ref = ep_demo.llama_one_process(ep_demo.moe_llama(), 2, routing=ep_demo.AUX)
steps = [r["llama"] for r in runs]
assert abs(sum(s["loss"] for s in steps) / 2 - ref["loss"]) < 1e-12
for s in steps:
    for name, g in s["grads"].items():
        assert gap(g, ref["grads"][name]) < 1e-12, name
    n_exp = sum(expert_parallel.expert_parameter(n) for n in s["grads"])
    print(f"rank {s['place'][1]} (dp index): experts {s['experts']} of each MoE layer, "
          f"{n_exp} expert tensors of {sum(expert_parallel.expert_parameter(n) for n in ref['grads'])}")
for s in steps:
    assert torch.equal(s["load"], ref["load"])
print("MoE LLaMA on dp=2, ep=2: mean loss (LM + balancing), load per expert and every gradient "
      "after the dp/edp averaging equal one process, max |Δ| < 1e-12")

# %% [markdown]
# Two things make the step equal to one process. The load statistics must be the whole batch's:
# `apply(model, g.ep, balance_group=g.dp)` sums each layer's routed counts over dp in forward, so
# the balancing loss $E\sum_i f_i P_i$ uses the batch's $f_i$ with the rank's own $P_i$ and the
# mean of the ranks' losses is one process's loss. And after backward, a replicated weight's
# gradient is averaged over dp as in notebook 05, while an expert's gradient already holds the
# gradients of every token its ep group sent it: it is summed over the edp group (the copies of
# that expert, one per ep group) and divided by dp:

# %%
show(expert_parallel.reduce_gradients)

# %% [markdown]
# ### 4.2 Who sends what · 谁发给谁
#
# The counts the ranks exchanged, drawn: each row of the grid is a rank's tokens, each column an
# expert; the shaded blocks are the experts a rank holds itself (those rows never leave it).

# %%
kept = [r["kept"] for r in layer]
fig, ax = plt.subplots(figsize=(6.4, 2.8))
ax.imshow([[0.25 if e // 2 == s else 0.0 for e in range(4)] for s in range(2)], cmap="Greys",
          vmin=0, vmax=1, aspect="auto")
for s in range(2):
    for e in range(4):
        where = "stay" if e // 2 == s else f"→ rank {e // 2}"
        tokens = (layer[s]["indices"] == e).any(1).nonzero().flatten().tolist()
        ax.text(e, s - 0.12, f"{kept[s][e]} rows {where}", ha="center", va="center", fontsize=9)
        ax.text(e, s + 0.22, "tokens " + " ".join(map(str, tokens)), ha="center", va="center",
                fontsize=6.5, wrap=True)
ax.set_xticks(range(4), [f"expert {e}\n(rank {e // 2})" for e in range(4)])
ax.set_yticks(range(2), [f"rank {s}'s\ntokens" for s in range(2)])
ax.grid(False)
ax.set_title("dispatch: which of each rank's tokens go to which expert (counted)", fontsize=10)
fig.tight_layout()
plots.save(fig, "14_ep_dispatch")
plt.show()
for s in range(2):
    print(f"rank {s}: keeps {sum(kept[s][2 * s:2 * s + 2])} rows, sends "
          f"{moe_comm.rows_sent(kept, 2, s)}, receives {moe_comm.rows_received(kept, 2, s)}")

# %% [markdown]
# ### 4.3 Bytes = formula · 字节数等于公式
#
# A row that stays costs nothing. Per MoE layer and step, rank $r$'s dispatch sends
# $\sum_{e\ \text{not on}\ r} \text{rows}_{r,e}\cdot H\cdot\text{bytes}$, its combine sends back
# what it received, and backward repeats both the other way round (`cost.moe_comm.layer_bytes`).
# Every all-to-all the ranks made, counted by `comm`, against it:

# %%
for rank, r in enumerate(layer):
    want = moe_comm.layer_bytes(kept, 2, rank, hidden=8, dtype_bytes=8)
    for rec in r["records"]:
        assert (rec.sent_bytes, rec.received_bytes) == want[rec.tag], (rank, rec.tag)
    print(f"rank {rank}: " + ", ".join(f"{rec.tag} {rec.sent_bytes} B" for rec in r["records"]))
print("every counted all-to-all (sent and received bytes) = moe_comm.layer_bytes, exactly")

# %% [markdown]
# With perfectly even routing each expert gets $k\,n/E$ rows from each rank, and $E - E/ep$ of the
# experts live elsewhere:

# %%
n, k, E, ep = sp.symbols("n k E ep", positive=True)
uniform = sp.simplify((E - E / ep) * k * n / E)
print("rows each rank sends each way:", uniform)
assert moe_comm.uniform_rows(12, 2, 2) == uniform.subs({n: 12, k: 2, ep: 2})
print(f"here: {moe_comm.uniform_rows(TOKENS, 2, 2)} rows if even; counted: "
      f"{[moe_comm.rows_sent(kept, 2, s) for s in range(2)]}")

# %% [markdown]
# ### 4.4 Load imbalance · 负载不均
#
# A rank computes every row its experts received, its own included, and no rank can finish the
# combine before the busiest one has computed its rows. If compute time is proportional to rows,
# max/mean of the rows per rank is how much longer the experts take than on a perfectly
# balanced layer:

# %%
work = [sum(map(sum, r["received"])) for r in layer]
print(f"rows computed per rank: {work}, mean {sum(work) / len(work)}, "
      f"max/mean = {moe_comm.load_imbalance(work)} = {float(moe_comm.load_imbalance(work)):.3f}")
print(f"per expert: {one['load'].tolist()}, max/mean = "
      f"{moe_comm.load_imbalance(one['load'].tolist())}")

# %% [markdown]
# ### 4.5 Capacity and dropped tokens · 容量与被丢弃的词元
#
# To bound the busiest rank, Switch Transformer (Fedus et al. 2022) gives each expert a
# capacity: at most $\lceil c\cdot k\cdot n/E\rceil$ rows from a rank's $n$ tokens (capacity
# factor $c$; Megatron-Core's `get_capacity` computes it from a rank's local tokens). Rows past
# it are **dropped**: they are not sent, and their token gets nothing from that expert (the
# residual connection carries it on). Here the first rows in token order are kept (Megatron's
# "position" policy). The same launch ran with $c = 1$:

# %%
capped = [r["layer"][1] for r in runs]
for rank, r in enumerate(capped):
    cap = moe_comm.capacity(TOKENS, 2, 4, 1.0)
    assert r["capacity"] == cap
    assert r["dropped"].sum() == moe_comm.dropped_rows(r["routed"], cap)
    print(f"rank {rank}: capacity {cap}, routed {r['routed']} → kept {r['kept']}: "
          f"{moe_comm.dropped_rows(r['routed'], cap)} dropped = Σ max(0, load − {cap}); "
          f"(token, expert) dropped: "
          f"{[(t, int(r['indices'][t, s])) for t, s in r['dropped'].nonzero().tolist()]}")

# %% [markdown]
# The run then differs from one process exactly at the tokens that lost a row, and by exactly the
# weighted outputs of the dropped experts:

# %%
full = ep_demo.build(ep_demo.moe_layer, 0)
x_all, _ = ep_demo.batch(TOKENS, 8, 2)
for rank, r in enumerate(capped):
    xs = x_all[rank * TOKENS:(rank + 1) * TOKENS]
    ref_out = one["out"][rank * TOKENS:(rank + 1) * TOKENS]
    hit = r["dropped"].any(1)
    missing = torch.zeros_like(xs)
    with torch.no_grad():
        for t, s in r["dropped"].nonzero().tolist():
            missing[t] += r["weights"][t, s] * full.experts[int(r["indices"][t, s])](xs[t:t + 1])[0]
    assert gap(r["out"][~hit], ref_out[~hit]) < 1e-12
    assert gap(r["out"] + missing, ref_out) < 1e-12
    assert (r["out"][hit] - ref_out[hit]).abs().amax(1).min() > 1e-6
    print(f"rank {rank}: tokens {hit.nonzero().flatten().tolist()} differ from one process; the "
          f"other {int((~hit).sum())} are equal (< 1e-12); adding back the dropped rows' weighted "
          "expert outputs gives one process's output everywhere (< 1e-12)")

# %% [markdown]
# Dropping trades model quality for a bounded step time. DeepSeek-V3 balances its experts instead,
# with a per-expert bias on the routing scores, and "does not drop any tokens during training"
# (DeepSeek-V3 §2.1.2).
#
# ### 4.6 At DeepSeek-V3's scale · DeepSeek-V3 的规模
#
# DeepSeek-V3's hidden size is 7168 and each token activates 8 of 256 routed experts
# (DeepSeek-V3 §4.2). Sent to each expert separately, one token's dispatch per MoE layer would
# be 8 copies of its hidden vector. The report instead limits "each token to be dispatched to
# at most 4 nodes, thereby reducing IB traffic": a token crosses InfiniBand once per target node
# and is forwarded inside the node over NVLink (DeepSeek-V3 §3.2.2). Counting 2 bytes per number
# (BF16; the report's own dispatch format is not modelled here):

# %%
v3 = moe_comm.DEEPSEEK_V3
per_expert = moe_comm.token_dispatch_bytes(v3.hidden, v3.top_k, 2)
per_node = moe_comm.token_dispatch_bytes(v3.hidden, v3.max_nodes, 2)
print(f"hidden {v3.hidden}, top-{v3.top_k} of {v3.routed_experts}: {v3.top_k} copies = "
      f"{per_expert:,} B per token per MoE layer")
print(f"at most {v3.max_nodes} nodes: ≤ {per_node:,} B over InfiniBand, "
      f"at most 1/{per_expert // per_node} of the {v3.top_k} copies")

# %% [markdown]
# **Exercise · 练习.** An ep group of 4 ranks holds $E$ = 8 experts; each rank routes $n$ = 1024 tokens
# top-2, perfectly evenly; hidden size 4096, BF16. How many bytes does each rank's dispatch send
# per MoE layer forward? And all four row all-to-alls of forward and backward together?
#
# <details><summary>Answer · 答案</summary>
#
# $k\,n\,\frac{ep-1}{ep} = 2\cdot 1024\cdot\frac34$ = 1536 rows of $4096\cdot 2$ bytes:
# 12,582,912 B. Dispatch, combine and their two backward all-to-alls each move as much:
# 50,331,648 B (plus 48 B of counts). The next cell computes it.
# </details>

# %%
print("ep 4, E 8, n 1024, top-2, hidden 4096, 2 bytes")
rows = moe_comm.uniform_rows(1024, 2, 4)
loads = [[1024 * 2 // 8] * 8 for _ in range(4)]
b = moe_comm.layer_bytes(loads, 4, 0, hidden=4096, dtype_bytes=2)
print(f"rows sent: {rows}; dispatch: {int(b['dispatch'].sent):,} B; four row all-to-alls: "
      f"{int(sum(b[t].sent for t in moe_comm.TAGS if t != 'counts')):,} B; "
      f"counts: {int(b['counts'].sent)} B")

# %% [markdown]
# ## 5. The 5D layout of DeepSeek-V3 and Llama 3 · DeepSeek-V3 与 Llama 3 的五维并行
#
# Two runs of the chapter's era went past 3D, each adding the axis its model needed.
#
# - **Llama 3 405B** (arXiv 2407.21783, Table 4) trained at 8K tokens per sequence on TP 8, CP 1,
#   PP 16 and DP 128 (16,384 GPUs), then at 128K tokens on TP 8, **CP 16**, PP 16 and DP 8: the
#   same GPUs, the same 16M tokens per step. (Version 3 of the paper prints DP 8 in that row;
#   earlier versions print DP 4, which would multiply out to half the GPUs of the same row.)
#   Its DP is FSDP, which shards optimizer states and gradients but keeps the weights gathered
#   after forward (Llama 3, §3.3.2): ZeRO-2 in the chapter's terms.
# - **DeepSeek-V3** (arXiv 2412.19437, §3.1 and §3.2) trained on 2,048 H800 GPUs with PP 16,
#   **EP 64** spanning 8 nodes and ZeRO-1 DP, and no tensor parallelism at all, on 4K-token
#   sequences (§4.2). With PP 16 every stage has 2,048/16 = 128 data-parallel ranks; EP 64 is
#   carved out of them, so each expert has 128/64 = 2 copies (its expert-data-parallel group, edp).
#
# The records, as `llmtrain.cost.published_runs` keeps them:

# %%
from llmtrain.cost import experts, memory, params, plan, states
from llmtrain.cost import published_runs as pr
from llmtrain.cost.layout import ParallelDims
from llmtrain.units import GB, GIB

L3_8K, L3_128K, DSV3 = pr.LLAMA3_405B[1], pr.LLAMA3_405B_LONG_CONTEXT, pr.DEEPSEEK_V3
for name, r in (("Llama 3 405B, 8K", L3_8K), ("Llama 3 405B, 128K", L3_128K),
                ("DeepSeek-V3", DSV3)):
    d = ParallelDims(dp=r["dp"], tp=r["tp"], pp=r["pp"], cp=r.get("cp", 1), ep=r.get("ep", 1))
    assert d.world_size == r["gpus"]
    ep_note = f" (EP {d.ep}, EDP {d.edp})" if d.ep > 1 else ""
    print(f"{name:<19} TP {d.tp} · CP {d.cp} · PP {d.pp} · DP {d.dp:>3}{ep_note} "
          f"= {d.world_size:,} GPUs, seq {r['seq']:,}, ZeRO-{r['zero']}")

# %% [markdown]
# ### 5.1 What one GPU holds · 每张 GPU 上有什么
#
# `memory.estimate` takes the two new axes from `ParallelDims`:
#
# - **cp** splits every sequence, so each rank keeps the activations of seq/cp tokens. Ring
#   attention adds the next K/V block in flight (the rank's own block is among the saved
#   activations); Llama 3's CP instead all-gathers K and V (Llama 3, §3.3.2), so while a layer
#   attends a rank briefly holds the whole sequence's K and V (`cp_method="all-gather"`). The cp
#   ranks hold the same weights and reduce their gradients together with dp, so ZeRO
#   (Megatron-Core's distributed optimizer too) shards the states over dp·cp (for Llama 3 our
#   assumption: its paper does not say whether FSDP shards across CP).
# - **ep** gives each rank E/ep of the routed experts of every MoE layer of its stage; attention,
#   norms, router, shared expert and embeddings stay whole. The expert states are then sharded
#   over the dp·cp/ep ranks holding the same experts, as Megatron-Core's expert optimizer group.
#   Memory counts the **total** parameters a GPU holds, not the 37B a token activates.

# %%
show(states.zero_groups)

# %%
show(experts.stage_params)

# %% [markdown]
# The sources give the layouts, not everything memory depends on; what is ours is stated
# (`published_runs.MEMORY_ASSUMPTIONS`): one sequence per micro-batch and 1F1B's in-flight count;
# for Llama 3 FlashAttention (no scores kept) and sequence parallelism in the TP group; for
# DeepSeek-V3 each layer's input only, a lower bound (it recomputes only RMSNorm and the MLA
# up-projections, §3.2.3), its FP32 master weights and gradients with BF16 AdamW moments
# (§3.3.3) and a 16-bit working copy of the weights. Not modelled: DualPipe's second copy of the
# parameters and its extra micro-batch (§3.2.1, Table 2), the MTP module, FP8 activation caches.

# %%
runs = {"Llama 3 8K": pr.per_gpu_memory(L3_8K),
        "Llama 3 128K, CP 16": pr.per_gpu_memory(L3_128K),
        "DeepSeek-V3, EP 64": pr.per_gpu_memory(DSV3)}
rows = {k: {**e.details["model states"], **{p: v for p, v in e.parts.items() if p != "model states"}}
        for k, e in runs.items()}
parts = list(dict.fromkeys(p for r in rows.values() for p in r))
print(f"{'GB per GPU':<24}" + "".join(f"{k:>22}" for k in rows))
for p in parts:
    print(f"{p:<24}" + "".join(f"{r.get(p, 0) / GB:>22.2f}" for r in rows.values()))
print(f"{'total':<24}" + "".join(f"{e.total / GB:>22.2f}" for e in runs.values()))
card = plan.cluster("h100-80g").memory_bytes
print(f"an H100's 80 GiB = {card:,} bytes = {card / GB:.2f} GB")

# %%
fig, ax = plt.subplots(figsize=(7.0, 4.2))
bottom = [0.0] * len(rows)
for i, p in enumerate(parts):
    vals = [r.get(p, 0) / GB for r in rows.values()]
    ax.bar(list(rows), vals, bottom=bottom, label=p, color=plots.PALETTE[i % len(plots.PALETTE)])
    bottom = [b + v for b, v in zip(bottom, vals)]
ax.axhline(card / GB, color="black", linestyle="--", linewidth=1)
ax.text(2.45, card / GB + 1, "80 GiB (H100)", ha="right", va="bottom", fontsize=9)
ax.set_ylabel("GB per GPU (10⁹ bytes)")
ax.set_title("One first-stage GPU: a lower bound (DualPipe doubles DeepSeek-V3's weights)")
ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 0.92))
plots.save(fig, "14_layouts")
plt.show()

# %% [markdown]
# ### 5.2 Why each axis is there · 每个维度为何存在
#
# **CP 16 is what makes 128K fit.** With 16 ranks per sequence each GPU keeps 131,072/16 = 8,192
# tokens of it: exactly the 8K stage's load, so the 128K stage holds the same activations per GPU
# as the 8K one, and the two stages fit in the same 80 GB. Without CP (the same TP, PP and DP, so
# 16 times fewer GPUs) one 128K micro-batch alone would need more than the card:

# %%
no_cp = pr.per_gpu_memory(L3_128K, cp=1)
same = runs["Llama 3 128K, CP 16"].parts["activations"] == runs["Llama 3 8K"].parts["activations"]
assert same and runs["Llama 3 128K, CP 16"].total <= card
assert no_cp.parts["activations"] == 16 * runs["Llama 3 8K"].parts["activations"]
assert no_cp.parts["model states"] + no_cp.parts["activations"] > card
print(f"128K, CP 16: one micro-batch's activations {runs['Llama 3 128K, CP 16'].parts['activations']:,} "
      f"bytes (= the 8K stage's: {same}); total {runs['Llama 3 128K, CP 16'].total / GB:.2f} GB, fits")
kv_width = SHAPE_405B.num_kv_heads * SHAPE_405B.d_head  # GQA: 8 key/value heads
gathered = runs['Llama 3 128K, CP 16'].parts['gathered K/V']
assert gathered == 2 * 2 * L3_128K["seq"] * kv_width // L3_128K["tp"]
print(f"128K, CP 16: K and V all-gathered for one layer {gathered:,} bytes (2 · 2 bytes · "
      f"{L3_128K['seq']:,} tokens · {kv_width:,} K/V width / TP {L3_128K['tp']}: small, thanks to GQA)")
print(f"128K, CP 1:  one micro-batch's activations {no_cp.parts['activations']:,} bytes "
      f"({no_cp.parts['activations'] / GB:.2f} GB, 16×); with the pipeline's 15 others in flight "
      f"{no_cp.total / GB:,.0f} GB")

# %% [markdown]
# **EP 64 is what makes the experts fit.** The routed experts are nearly all of DeepSeek-V3's
# parameters. Without EP, every GPU of a middle stage (four MoE layers) would hold all 256 experts
# of each; with EP 64 it holds 4 of each, and ZeRO-1 over only the 2 copies of an expert still
# halves their optimizer states:

# %%
shape = shapes.resolve("deepseek-v3")
b = params.breakdown(shape)
print(f"{shape.num_experts} routed experts per MoE layer, {shape.moe_layers} MoE layers of "
      f"{shape.num_layers}; Llama 3 405B has {shapes.resolve('llama3-405b').num_layers} layers")
print(f"routed experts: {b['experts']:,} of {params.count(shape):,} parameters "
      f"({100 * b['experts'] / params.count(shape):.1f} %)")
for ep in (1, 64):
    h = states.held_params(shape, ParallelDims(dp=128, pp=16, ep=ep), rank=5 * 128)  # stage 5
    print(f"EP {ep:>2}: a stage-5 GPU holds {h['non-expert']:,} non-expert and "
          f"{h['experts']:,} expert parameters; 16-bit weights {2 * sum(h.values()) / GB:.2f} GB")
dsv3 = runs["DeepSeek-V3, EP 64"].details["model states"]
print(f"EP 64, first stage: FP32 gradients {dsv3['gradients'] / GB:.2f} GB (ZeRO-1 does not shard "
      f"them), master weights and moments {(dsv3['master'] + dsv3['optimizer']) / GB:.2f} GB")

# %% [markdown]
# **The rest.** TP 8 is one node's NVLink (its all-reduces run twice per layer, notebook 06);
# PP 16 cuts Llama 3's 126 layers and DeepSeek-V3's 61 into stages; DP (FSDP or ZeRO-1) multiplies
# throughput and shards what the others replicate. DeepSeek-V3 needs no TP because EP, ZeRO-1 and
# recomputation already fit a stage in memory (§3.2), and TP's per-layer all-reduces are the
# costliest traffic. The tools: `memory.estimate` and `llmtrain memory --cp --ep` count both axes;
# `plan.layout(..., cp=)` and `plan.evaluate` time context parallelism (each rank does 1/cp of a
# micro-batch; the K/V traffic is exposed, as Llama 3 says its all-gather is), while
# `plan.search` keeps cp = 1 and the planner has no expert parallelism (no all-to-all in its
# step time).
#
# **Exercise · 练习.** Llama 3 could have run its 128K stage with CP 8 and DP 16 (still 16,384 GPUs).
# Would it fit in 80 GiB under the same assumptions, and what would it cost? And how much of
# DeepSeek-V3's first-stage memory would EP 128 (every dp rank of a stage its own experts, no
# copies) save?
#
# <details><summary>Answer · 答案</summary>
#
# The activations in flight do not change: each rank keeps 16,384 tokens of each sequence, twice
# the activations of one micro-batch under CP 16, but with 16 DP groups each gets 8 sequences per
# step instead of 16, so the first stage holds 8 micro-batches, not 16 (8 × 2 = 16 × 1). Under
# these assumptions it fits, by a margin smaller than what they leave out (the CUDA context,
# communication buffers, fragmentation): call it a draw. The price is the pipeline: 1F1B's bubble
# (p − 1)/(m + p − 1) grows from 15/31 to 15/23 of the step (Llama 3 ran an interleaved schedule,
# whose bubble is smaller; the ratio is the point). EP 128 halves the routed experts a GPU
# holds, but the first stage has one MoE layer and three dense ones: the saving is small (below).
# </details>

# %%
from llmtrain.cost import pp_schedule

cp8 = pr.per_gpu_memory(L3_128K, cp=8, dp=16)
cp16 = runs["Llama 3 128K, CP 16"]
assert cp8.parts["activations"] > cp16.parts["activations"] and cp8.total <= card
ep128 = pr.per_gpu_memory(DSV3, ep=128)
print(f"CP 8, DP 16: {131072 // 8:,} tokens per rank, {cp8.details['in_flight']} micro-batches "
      f"in flight, {cp8.total / GB:.2f} GB per GPU (<= {card / GB:.2f}: fits)")
print(f"1F1B bubble: CP 16 {pp_schedule.bubble_formula(16, 16, 1)}, "
      f"CP 8 {pp_schedule.bubble_formula(16, 8, 1)} of the step")
print(f"EP 128: {(runs['DeepSeek-V3, EP 64'].total - ep128.total) / GB:.2f} GB less per GPU "
      f"({runs['DeepSeek-V3, EP 64'].total / GB:.2f} -> {ep128.total / GB:.2f} GB)")

# %% [markdown]
# ## 要点 · Key points
#
# - 长序列需要自己的并行维度：Llama 3 405B 的一层（bf16、融合注意力、批次 1）在 8K 词元时保存 6.3 GiB 激活值，128K 时 100.1 GiB，整个模型 12,686.7 GiB；显式 softmax 的分数随 T² 增长，词元多 16 倍，分数多 256 倍。数据、张量、流水线并行都不切分序列；CP 16 让每个进程只保存 8,192 个词元，正好是 8K 阶段的量。
# - 环形注意力让 K/V 绕环传递，用在线 softmax（按 log-sum-exp）合并各块，结果精确等于整行 softmax；zig-zag 布局让因果注意力的工作量在各进程间相等（T = 16、cp = 4 时连续布局为 [10, 26, 42, 58]，zig-zag 每个进程都是 34）。Ulysses 用两次全对全通信在“序列切分”和“头切分”之间转换。
# - 两种方法、两种布局在 2 个真实进程上与单进程完全相等（logits、损失、每个梯度，max |Δ| < 1e-12），发送的字节数和每个进程保存的激活值都与闭式公式逐字节相等。对 Llama 3 405B（8 个 KV 头），cp = 2、4 时环形注意力发送更少，cp = 8 时 Ulysses 更少，cp = 16 时 Ulysses 不可行。PyTorch 自带的上下文并行在 CPU 上不能运行。
# - 混合专家层由路由器选出 top-k 个专家并按权重求和；我们的 MoE LLaMA 与 Hugging Face 的 Mixtral、Qwen2-MoE 以及 DeepSeek-V3 的 MoE 块输出相同。DeepSeek-V3 总参数量 671,026,404,352，每个词元只激活 37,552,282,624（报告中的 671B / 37B），其中路由专家占 97%；Mixtral 8x7B 为 46.7B / 12.9B。
# - 负载均衡：辅助损失要改变路由器的权重，与语言模型损失相互竞争；DeepSeek-V3 的偏置只影响选择、不改变权重，几步之内就让负载接近均衡。
# - 专家并行用两次全对全通信把词元送到持有专家的进程并取回结果；在 2 个进程上与单进程完全相等，每次通信的字节数等于公式。设置容量后超出的行被丢弃，结果只在这些词元上与单进程不同。DeepSeek-V3 每个词元每个 MoE 层若给每个专家各发一份需 114,688 字节，限定至多 4 个节点后经 InfiniBand 至多 57,344 字节。
# - 五维布局：Llama 3 在 128K 阶段用 TP 8 × CP 16 × PP 16 × DP 8，每张 GPU 约 80.95 GB，在这些假设下刚好放得进 80 GiB；不用 CP 时一个微批次的激活值就要 82.49 GB。DeepSeek-V3 用 PP 16、EP 64、ZeRO-1 DP、不用 TP，第一级的一张 GPU 至少约 25.28 GB（下界：DualPipe 让每张 GPU 持有两份流水级的参数，这里没有计入）；不用 EP 时第 5 级的 16 位权重就要 92.06 GB。
