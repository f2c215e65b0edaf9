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
# # Data parallelism and ZeRO · 数据并行 · 零冗余优化器
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llmtrain/llmtrain/blob/main/notebooks/05_data_parallel_zero.ipynb)
#
# > **数据并行**：将模型复制、数据平均分配，分别计算后合并梯度，统一更新 — replicate the model,
# > split the data evenly, compute separately, merge the gradients, update identically.
# >
# > **零冗余优化器 (ZeRO)**：将模型均分到不同卡，缓解冗余；计算时动态从对应卡读取参数；划线部分不长期
# > 存储，需要时动态获取 — split the model evenly over the GPUs to remove redundancy; fetch
# > parameters from the GPU that holds them when computing; what is struck out is not kept, only
# > fetched when needed.
# >
# > N 张 GPU，使用 ZeRO-3 每张 GPU 显存占用 $\frac{16P}{N}$ — with ZeRO-3 each of N GPUs holds $16P/N$ bytes.
#
# After this notebook you can write data parallelism and ZeRO stage 1, 2 and 3 with
# `torch.distributed` yourself, run them on several processes of this computer, prove that they
# train exactly like one process on the whole batch and like PyTorch's own DDP and FSDP2, and
# measure the bytes each rank holds and sends — and check them against the formulas.
# Every rank here is a real process talking over gloo (CPU); the same code runs on GPUs (NCCL)
# and across machines under `torchrun` (§8).

# %% [markdown]
# > **导读**
# > 本笔记本用 `torch.distributed` 亲手实现数据并行和 ZeRO-1/2/3，在本机的多个真实进程（gloo）上运行，并证明它们与单进程在整批数据上的训练一致，也与 PyTorch 自带的 DDP 和 FSDP2 一致。
# > 先用 SymPy 说明为什么各进程梯度的平均等于整批数据的梯度，再逐个演示四种集合通信操作及其环形通信量。
# > 然后逐字节测量每个进程在一步训练的不同时刻保存的权重、梯度和优化器状态，与 ZeRO 的公式 $16\Psi$、$4\Psi + 12\Psi/N$、$2\Psi + 14\Psi/N$、$16\Psi/N$ 对照（$\Psi$ 是 ZeRO 论文的记号，即课件中的参数量 P），并统计各阶段发送的字节数（ZeRO-3 多 50%）。
# > 最后用 `torchrun` 运行同一段代码，它同样可以在多张 GPU 和多台机器上运行。

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
from fractions import Fraction

import matplotlib.pyplot as plt
import sympy as sp
import torch

from llmtrain import plots, show
from llmtrain.cost import memory, params
from llmtrain.cost.layout import ParallelDims
from llmtrain.model import shapes
from llmtrain.parallel import comm, data_parallel, launch, zero
from llmtrain.parallel.demos import data_parallel_zero as demos  # this notebook's rank functions
from llmtrain.parallel.demos.harness import max_weight_diff

plots.use_style()
_ = torch.manual_seed(0)
RANKS = 2  # processes per demo; set 4 (or 8: the batch of 8 must split evenly) to see more

# %% [markdown]
# ## 1. Why averaging gradients is the same as one big batch · 梯度平均为何等于一个大批次
#
# The loss of a batch of $B$ examples is the mean $\mathcal L = \frac1B\sum_i \ell_i$. Give each of
# $N$ ranks $B/N$ of them; rank $r$ computes the gradient of *its* mean. Averaging the $N$ results:

# %%
B, N = 8, 2
g = sp.symbols(f"g0:{B}")  # ∇ℓ_i, one per example
full_batch = sum(g) / B
per_rank = [sum(g[r * B // N:(r + 1) * B // N]) / (B // N) for r in range(N)]
print("rank gradients:", per_rank)
print("their average − full-batch gradient =", sp.simplify(sum(per_rank) / N - full_batch))

# %% [markdown]
# Zero, for any $B$ divisible by $N$: with an equal share per rank, **the average of the ranks'
# gradients is the full batch's gradient**, so one identical optimizer step on every rank keeps the
# replicas identical, and equal to a single process. (With unequal shares, or a loss averaged over
# a varying number of tokens, the plain average is biased: weight by the count instead.)
#
# ## 2. The collectives, one by one · 逐个看集合通信操作
#
# Data parallelism and ZeRO need four collective operations. `llmtrain.parallel.comm` calls
# `torch.distributed` and counts each call. Here they run on `RANKS` real processes, rank $r$
# starting with $[10r, 10r+1, …]$ (the rank function is `demos.collectives`):

# %%
for r, res in enumerate(launch(demos.collectives, RANKS)):
    print(f"rank {r}: " + "   ".join(f"{k}: {v.int().tolist()}" for k, v in res.items()))

# %% [markdown]
# An **all-reduce is a reduce-scatter followed by an all-gather**: rank $r$ first gets the sum of
# chunk $r$, then everyone collects all chunks. On a ring of $N$ ranks each step moves one chunk of
# $M/N$ bytes per rank, $N-1$ steps each, so per rank (Patarasuk & Yuan 2009):

# %%
M, n = sp.symbols("M N", positive=True)
sent = {"reduce_scatter": (n - 1) * M / n, "all_gather": (n - 1) * M / n}
sent["all_reduce"] = sp.simplify(sent["reduce_scatter"] + sent["all_gather"])
for op, expr in sent.items():
    print(f"{op:15s} sends {expr}   → {sp.limit(expr, n, sp.oo)} for large N")
assert all(comm.ring_bytes(op, 1200, 4)[0] == expr.subs({M: 1200, n: 4}) for op, expr in sent.items())

# %% [markdown]
# Almost $2M$ per rank for an all-reduce, *whatever the number of ranks*: that is why data
# parallelism scales. `comm.ring_bytes` is the same arithmetic (checked in the last line).
#
# ## 3. Data parallelism by hand, and DDP · 手写数据并行与 DDP
#
# The whole of `llmtrain.parallel.data_parallel.wrap`: broadcast rank 0's weights, then during backward
# average the gradients in buckets, each sent as soon as all of its gradients exist:

# %%
show(data_parallel.wrap)

# %% [markdown]
# `GradReducer` launches the buckets strictly in order (every rank must issue the same collectives
# in the same order) from `register_post_accumulate_grad_hook`, and waits for them in a callback at
# the end of backward. PyTorch's `DistributedDataParallel` does the same in C++, with 25 MiB buckets
# in reverse parameter order so that the last layers' gradients — produced first — are on the wire
# while backward still works on the first layers: communication overlaps computation. With
# gradient accumulation (notebook 02) only the last micro-batch needs to communicate: run the other
# backwards inside `data_parallel.no_sync(model)` (DDP's `no_sync`), one all-reduce per step instead
# of one per micro-batch, same result (`tests/test_parallel.py` checks both).
#
# Now train the tiny LLaMA in float64 for 5 AdamW steps: one process on the whole batch
# of 8 sequences, then on `RANKS` ranks with an equal share each — by hand, with DDP, with ZeRO
# 0–3 and with FSDP2.
# One launch runs them all (`demos.train_all`); each returns its losses, its final weights, the
# bytes it held and what it sent.

# %%
cfg = dict(model="tiny", dtype="float64", optimizer="adamw", lr=1e-2, steps=5)
strategies = ["dp", "ddp", "zero0", "zero1", "zero2", "zero3", "fsdp2"]
single = demos.train("single", **cfg)
runs = launch(demos.train_all, RANKS, strategies, cfg)
rank0 = runs[0]

max_diff = max_weight_diff  # largest |a − b| over all weights
TOL = 1e-10  # float64 rounding, amplified by 5 AdamW steps, stays far below this

print(f"{'step':>4} {'one process':>11} " + " ".join(f"{s:>6}" for s in strategies))
for i, loss in enumerate(single["losses"]):
    print(f"{i:>4} {loss:11.3f} " + " ".join(f"{rank0[s]['losses'][i]:6.3f}" for s in strategies))
for s in strategies:
    loss_gap = max(abs(a - b) for a, b in zip(rank0[s]["losses"], single["losses"]))
    weight_gap = max_diff(rank0[s]["weights"], single["weights"])
    same = all(max_diff(run_[s]["weights"], rank0[s]["weights"]) == 0 for run_ in runs)
    assert loss_gap < TOL and weight_gap < TOL and same, (s, loss_gap, weight_gap, same)
    print(f"{s:6s}: every loss and weight within {TOL:.0e} of one process (equal up to rounding); "
          f"all {RANKS} ranks hold identical weights: {same}")

# %% [markdown]
# Equal to one process up to float rounding: the ranks sum their gradients in another order
# (floating-point addition is not associative), and AdamW's division by $\sqrt{v}$ amplifies such
# differences on near-zero gradients; in float64 they stay below $10^{-10}$, the bound the cell
# asserts. With SGD
# in float64 the tests (`tests/test_parallel.py`) get $< 10^{-13}$ for every strategy on 2, 3 and 4
# ranks. The losses are printed to 3 decimals because their later digits belong to the CPU, not to
# the strategy: even in a float64 model, RMSNorm and the attention softmax compute in float32 (as
# in `transformers`), and CPUs with other vector units round those float32 kernels differently.
# On one CPU, every strategy agrees with one process to the bound above. Against PyTorch's own
# engines the largest difference after 5 steps is:

# %%
dp_vs_ddp = max_diff(rank0["dp"]["weights"], rank0["ddp"]["weights"])
zero3_vs_fsdp2 = max_diff(rank0["zero3"]["weights"], rank0["fsdp2"]["weights"])
print("hand-written DP vs DDP:      ", dp_vs_ddp)
print("hand-written ZeRO-3 vs FSDP2:", zero3_vs_fsdp2)
assert dp_vs_ddp == zero3_vs_fsdp2 == 0

# %% [markdown]
# Zero, on any CPU: the hand-written versions do the same arithmetic as PyTorch's engines, on the
# same numbers (averaging two gradients is exact in either order); the engines do it faster.
#
# ## 4. ZeRO: what each rank keeps · ZeRO：每个进程保存什么
#
# With mixed precision AdamW a replica holds $2\Psi$ bytes of bf16 weights, $2\Psi$ of bf16
# gradients and $K\Psi$ of fp32 optimizer state (master weights, momentum, variance: $K=12$).
# Only the weights and gradients are needed by forward and backward, and every rank holds the
# *same* copy of everything: ZeRO keeps $1/N$ of it per rank.

# %%
show(zero.formula)

# %%
Psi, K = sp.symbols("Psi K", positive=True)
held = {z: zero.formula(z, Psi, n, K) for z in range(4)}
for z, expr in held.items():
    print(f"ZeRO-{z}: {expr}   with K = 12: {sp.expand(expr.subs(K, 12))}")

# %% [markdown]
# Stage 3's $16\Psi/N$ is the slides' $\frac{16P}{N}$. How `llmtrain.parallel.zero` does it: each
# parameter is flattened, padded to a multiple of $N$ and cut in $N$ shards; rank $r$ owns shard
# $r$ of every parameter, and an optimizer over those shards only. The step:

# %%
show(zero.ZeroOptimizer.step)

# %% [markdown]
# Stage 3 keeps only its shards; a forward pre-hook all-gathers a unit's weights (here: each
# transformer layer, and the rest of the model as the root unit), a forward hook frees them
# (`untyped_storage().resize_(0)`) and registers a gradient hook on the unit's outputs that gathers
# them again when backward reaches the unit:

# %%
show(zero.ZeroOptimizer._gather)

# %%
show(zero.ZeroOptimizer._after_forward)

# %% [markdown]
# Which rank holds what, measured (`zero.memory_report` counts the storage behind every tensor a
# rank holds) on `RANKS` ranks at three moments of a step — inside the forward of layer 0, after
# backward, after the update — for the tiny LLaMA in bf16. A full bar is the whole of that state;
# 1/N is one shard:

# %%
numels = single["numels"]
whole = zero.expected_bytes(numels, 1, 0)  # one replica's bf16 weights, grads, fp32 master, m+v
kinds = ["weights", "gradients", "master", "optimizer"]
moments = {"forward": "inside layer 0's forward", "backward": "after backward", "step": "after the update"}
phase = launch(demos.phases_all, RANKS, range(4))[0]  # {stage: rank 0's reports}

fig, axes = plt.subplots(1, 4, figsize=(11, 3.2), sharey=True)
for z, ax in enumerate(axes):
    for j, (m, label) in enumerate(moments.items()):
        fractions = [phase[z][m][k] / whole[k] for k in kinds]
        ax.barh([y * 4 + j for y in range(4)], fractions, height=0.9,
                color=plots.PALETTE[j], label=label if z == 0 else None)
    ax.set_yticks([y * 4 + 1 for y in range(4)], ["bf16 weights", "bf16 grads", "fp32 master", "Adam m, v"])
    ax.set_xticks([0, 1 / RANKS, 1], ["0", f"1/{RANKS}", "1"])
    ax.set_title(f"ZeRO-{z}" if z else "plain DP (stage 0)")
axes[0].invert_yaxis()  # shared y axis: weights on top
axes[0].legend(loc="upper left", bbox_to_anchor=(0, -0.12), ncol=3, frameon=False)
fig.suptitle(f"Fraction of each model state held by one of {RANKS} ranks (measured)", y=1.06)
plots.save(fig, "05_zero_what_each_rank_holds")
plt.show()

# %%
for z in range(4):
    print(f"ZeRO-{z}: " + "; ".join(
        f"{m}: " + " ".join(f"{k} {phase[z][m][k] / whole[k]:.2f}" for k in kinds) for m in moments))

# %% [markdown]
# Read it column by column: stage 1 halves the fp32 master and Adam states; stage 2 also the
# gradients, once backward is done (each gradient is reduce-scattered the moment it exists and its
# full copy dropped), where stage 1 still holds them whole until the update; stage 3 also the
# weights — except while a unit computes. Inside layer 0's forward a stage-3 rank holds its shards
# *and* whole copies of layer 0 and of the root unit (embedding, final norm, output layer): more
# than one replica's weights in this toy, whose layers are few and small. The share of a whole
# model that is gathered at once, for the toy and for LLaMA-7B:

# %%
for name in ("tiny", "llama-7b"):
    shape = shapes.get(name)
    b, total = params.breakdown(shape), params.count(shape)
    root = b["embedding"] + b["lm_head"] + shape.hidden_size  # + the final norm's γ
    layer = (total - root) // shape.num_layers
    print(f"{name:9s}: one layer {layer / total:6.1%} of the weights, the root unit {root / total:6.1%}")

# %% [markdown]
# In a 32-layer 7B model one layer is a few per cent of the weights, so the transient is small:
# that is why the unit is a transformer layer.
#
# ## 5. Bytes per rank against the formula, N = 1, 2, 4 · 每个进程的字节数与公式对照
#
# The same tiny LLaMA in bf16 with AdamW, on 1, 2 and 4 ranks; `demos.memory_by_stage` reports
# after the first step, before `zero_grad()` (AdamW creates its states in its first step):

# %%
measured = {N_: launch(demos.memory_by_stage, N_)[0] for N_ in (1, 2, 4)}
psi = sum(numels)
print(f"Ψ = {psi:,} parameters; bytes held by rank 0 (weights + grads + master + Adam m, v)")
print(f"{'N':>2} {'stage':>5} {'measured':>12} {'formula':>12}  formula")
for N_, by_stage in measured.items():
    for z, rep in by_stage.items():
        got = rep["total"]
        formula = held[z].subs({K: 12, n: N_, Psi: psi})
        print(f"{N_:>2} {z:>5} {got:>12,} {int(formula):>12,}  {sp.expand(held[z].subs(K, 12))}")
        paper = sum(memory.model_state_bytes(psi, zero=z, dims=ParallelDims(dp=N_)).values())
        assert got == formula == paper
        assert rep["other"] == 4 * len(numels)

# %% [markdown]
# Equal to the byte (the tiny LLaMA's tensors all split evenly in 4; the tests also run 3 ranks,
# where each tensor is padded to a multiple of 3: `zero.expected_bytes` adds that padding, at most
# $N-1$ elements per tensor). Not in the formula, and reported apart from `total`: AdamW's step
# counter, one 4-byte fp32 scalar per tensor it steps (`other`):

# %%
print(f"{len(numels)} tensors → other = {measured[2][3]['other']} bytes on every rank and stage")

# %%
fig, ax = plt.subplots(figsize=(7, 3.6))
width = 0.25
for i, N_ in enumerate(measured):
    got = [measured[N_][z]["total"] / 1e6 for z in range(4)]
    ax.bar([z + (i - 1) * width for z in range(4)], got, width, label=f"N = {N_}", color=plots.PALETTE[i])
    ax.scatter([z + (i - 1) * width for z in range(4)],
               [float(held[z].subs({K: 12, n: N_, Psi: psi})) / 1e6 for z in range(4)],
               marker="_", s=200, color="black", zorder=3, label="formula" if i == 0 else None)
ax.set_xticks(range(4), ["plain DP\n16Ψ", "ZeRO-1\n4Ψ + 12Ψ/N", "ZeRO-2\n2Ψ + 14Ψ/N", "ZeRO-3\n16Ψ/N"])
ax.set_ylabel("MB held per rank")
ax.set_title(f"Tiny LLaMA (Ψ = {psi:,}), bf16 + fp32 AdamW: measured bars, formula ticks")
ax.set_ylim(0, 2.5)
ax.legend(ncol=4, loc="upper center")
plots.save(fig, "05_zero_bytes_per_rank")
plt.show()

# %% [markdown]
# At 7B the same formula gives the slides' $16P = 112$ GB for one replica and $16P/N$ with ZeRO-3;
# notebook 11 draws it against $N$ and reproduces the ZeRO paper's own example (a 7.5B model on 64
# GPUs), printing each number.
#
# ## 6. What each stage sends · 各阶段的通信量
#
# The collectives of the first training step of §3, counted on rank 0 (float64, so $8\Psi$ bytes
# of weights or of gradients, N = `RANKS`):

# %%
b = next(iter(single["weights"].values())).element_size()  # bytes per element: 8 in float64
bytes_ = b * psi
ring = Fraction(RANKS - 1, RANKS)
print(f"{'strategy':8s} {'op':15s} {'for':9s} {'calls':>5} {'sent by rank 0':>15}")
for s in ["dp", "zero0", "zero1", "zero2", "zero3"]:
    log = comm.Log(rank0[s]["comm"])
    for (op, tag), row in log.summary().items():
        print(f"{s:8s} {op:15s} {tag:9s} {row['calls']:>5} {float(row['sent_bytes']):>15,.0f}")
    ratio = log.sent_bytes() / (ring * bytes_)
    print(f"{'':8s} total {float(log.sent_bytes()):,.0f} bytes = {ratio} × (N−1)/N · {b}Ψ")
    assert ratio == (3 if s == "zero3" else 2)

# %% [markdown]
# Per rank, with $\Psi$ the number of parameters (as in §4 and §5) and $b$ the bytes of one
# communicated element ($b = 8$ here in float64, 4 in fp32, 2 for the bf16 gradients and weights
# of mixed precision):
#
# | strategy | collectives per step | bytes sent per rank |
# |---|---|---|
# | DP, ZeRO-0 | all-reduce of the gradients | $2\frac{N-1}{N}\,b\Psi$ |
# | ZeRO-1, ZeRO-2 | reduce-scatter gradients + all-gather weights | $2\frac{N-1}{N}\,b\Psi$: the same |
# | ZeRO-3 | all-gather (forward) + all-gather (backward) + reduce-scatter | $3\frac{N-1}{N}\,b\Psi$: **1.5×** |
#
# The printed totals say the same (2, 2, 2, 2 and 3 × $\frac{N-1}{N}\cdot 8\Psi$): ZeRO-1 and -2
# save memory for free, ZeRO-3 pays 50 % more traffic for its weights (as the ZeRO paper says). The
# hand-written DP sends one bucket (the tiny model's gradients fit in DDP's 25 MiB default); ZeRO
# here sends one collective per tensor — real implementations group them into buckets too, which
# changes the count of calls, not the bytes. (With a world size that does not divide every tensor,
# ZeRO's collectives also carry the padding.)
# `tests/test_parallel.py::test_communication_equals_the_formulas` asserts these equalities.
#
# ## 7. FSDP2: the real engine · FSDP2：PyTorch 的实现
#
# FSDP2 (`torch.distributed.fsdp.fully_shard`) is PyTorch's ZeRO-3: it shards each parameter
# (along its first dimension) into a `DTensor`, all-gathers per `fully_shard`ed module before its
# forward and backward and reduce-scatters the gradients. `demos.train("fsdp2")` does:
#
# ```python
# mesh = init_device_mesh("cpu", (world_size,))   # "cuda" on GPUs
# for layer in model.model.layers:
#     fully_shard(layer, mesh=mesh)
# fully_shard(model, mesh=mesh)
# optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
# ```
#
# Same units as our ZeRO-3, the same weights after 5 steps (§3), and the same bytes held per rank:

# %%
for s in ("zero3", "fsdp2"):
    print(f"{s:6s}", {k: v for k, v in rank0[s]["memory"].items()})
assert rank0["zero3"]["memory"] == rank0["fsdp2"]["memory"]

# %% [markdown]
# What FSDP2 adds over the hand-written version: prefetching the next unit's all-gather while the
# current one computes, mixed-precision policies (`MixedPrecisionPolicy`), CPU offload, state-dict
# and checkpoint support, and composition with tensor parallelism on a 2-D device mesh (notebook 08).
#
# ## 8. The same code on GPUs and across machines: `torchrun` · 多卡与多机：torchrun
#
# `launch` is for notebooks and tests. With real GPUs use PyTorch's launcher: every demo is also an
# entry point. `torchrun` starts the ranks, sets `RANK`, `WORLD_SIZE`, `MASTER_ADDR`…, and the demo
# joins with `llmtrain.parallel.init_from_env()` — NCCL when each rank has a GPU, gloo otherwise.
#
# ```bash
# torchrun --standalone --nproc-per-node=8 -m llmtrain.parallel.demos.zero --stage 3   # one machine, 8 GPUs
# torchrun --nnodes=2 --nproc-per-node=8 --node-rank=0 \
#          --rdzv-endpoint=host0:29500 -m llmtrain.parallel.demos.zero --stage 3    # and node-rank=1 on host1
# python -m llmtrain.parallel.demos.data_parallel --nproc 4                         # no torchrun: uses launch
# ```
#
# Here, on this CPU, with `RANKS` ranks and `--dtype float64` as in §3 (its output is rank 0's
# report). The report prints the losses to 6 decimals and the weight difference as measured, digits
# that depend on the CPU's kernels; so the cell's output is not compared by the tests, and the cell
# itself asserts what the report says: ZeRO-3's losses equal one process's, its weights within
# $10^{-10}$.

# %% tags=["nbval-ignore-output"]
import re

torchrun = [sys.executable, "-m", "torch.distributed.run"]  # what the `torchrun` command runs
# --standalone: torchrun picks a free port (not a fixed 29500 that another run may hold)
run = subprocess.run([*torchrun, "--standalone", f"--nproc-per-node={RANKS}", "-m", "llmtrain.parallel.demos.zero",
                      "--stage", "3", "--steps", "3", "--dtype", "float64"],
                     capture_output=True, text=True, timeout=600)
if run.returncode:  # a failed `!torchrun` would not stop a notebook: make it
    raise RuntimeError(f"torchrun failed:\n{run.stderr[-3000:]}")
print(run.stdout)

loss_rows = re.findall(r"^\s*\d+\s+(\d+\.\d+)\s+(\d+\.\d+)$", run.stdout, re.M)  # step, single, zero3
weight_gap = float(re.search(r"largest weight difference after 3 steps: (\S+)", run.stdout)[1])
assert len(loss_rows) == 3 and all(abs(float(a) - float(b)) < 1e-6 for a, b in loss_rows), loss_rows
assert weight_gap < TOL, weight_gap

# %% [markdown]
# ## 9. When things go wrong · 出错时会怎样
#
# A rank that raises comes back as `RankError` with that rank's traceback, in seconds (the other
# ranks, stuck waiting in a collective, are killed); a rank that hangs ends in `LaunchTimeout`; no
# process outlives the call. Functions defined in a notebook cannot be run on ranks: every rank is
# a new Python process that imports the function by name, so `launch` refuses them up front:

# %%
try:
    launch(lambda: 1, RANKS)
except ValueError as e:
    print("ValueError:", e)

# %% [markdown]
# **Exercise.** A 7B model trained with mixed-precision AdamW on 8 A100/H100 cards of "80 GB".
# Which ZeRO stages fit the model states (weights, gradients, optimizer) on one card, and how much
# does each leave for activations? (An "80 GB" card has 80 GiB: $80\cdot2^{30}$ B = 81,920 MiB, not
# $80\cdot10^9$ B.)
#
# <details><summary>Answer</summary>
#
# $\Psi = 7\cdot10^9$, card $80\cdot2^{30}$ B: plain DP $16\Psi$ = 112·10⁹ B = 104.31 GiB (does not
# fit); ZeRO-1 $4\Psi + 12\Psi/8$ = 35.86 GiB (44.14 GiB left); ZeRO-2 $2\Psi + 14\Psi/8$ = 24.45 GiB
# (55.55 GiB left); ZeRO-3 $16\Psi/8$ = 13.04 GiB (66.96 GiB left), at 1.5× the communication. The
# next cell computes it, in exact arithmetic.
# </details>

# %%
from llmtrain.units import GIB
card = 80 * GIB  # an "80 GB" A100/H100: 81,920 MiB
print(f"card: {card:,} B = {card // 2**20:,} MiB")
for z in range(4):
    need = held[z].subs({K: 12, n: 8, Psi: 7 * 10**9})  # bytes, an exact SymPy number
    print(f"ZeRO-{z}: {float(need / GIB):6.2f} GiB of model states, {float((card - need) / GIB):5.2f} GiB left"
          if need <= card else f"ZeRO-{z}: {float(need / GIB):6.2f} GiB of model states: does not fit")

# %% [markdown]
# ## 要点 · Key points
#
# - 每个进程分到同样多的样本时，各进程梯度的平均就是整批数据的梯度（SymPy 算出两者之差为 0）。所以数据并行与单进程整批训练是同一个算法。
# - 环形 all-reduce 等于 reduce-scatter 加 all-gather。每个进程发送 $2\frac{N-1}{N}M$ 字节，进程再多也不超过 $2M$。
# - 小型 LLaMA 用 float64 训练 5 步 AdamW：手写数据并行、DDP、ZeRO-0/1/2/3 和 FSDP2 在 2 个进程上都与单进程一致，损失和权重之差小于 1e-10，只是舍入误差。
# - 手写数据并行与 DDP、手写 ZeRO-3 与 FSDP2 训练出的权重完全相同（差为 0）。
# - 每个进程保存的字节数与 ZeRO 的公式逐字节相等（$\Psi$ = 125,248 个参数，$N$ = 1、2、4）；公式之外只有 AdamW 的步数计数器，共 84 字节。
# - ZeRO-3 计算某一层时，要临时收集这一层和根单元（词嵌入、最终归一化层和输出层）的完整权重。在 LLaMA-7B 中二者分别只占全部权重的 3.0% 和 3.9%，所以以 Transformer 层为单元。
# - 通信量：数据并行、ZeRO-1、ZeRO-2 每步每个进程发送 $2\frac{N-1}{N}b\Psi$ 字节（$b$ 为每个元素的字节数），ZeRO-3 为 $3\frac{N-1}{N}b\Psi$，多 50%。
# - 8 张 “80 GB”（实为 80 GiB）的卡训练 7B 模型：普通数据并行需要 104.31 GiB，放不下；ZeRO-3 只需 13.04 GiB，留给激活值 66.96 GiB。
