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

from llmtrain import memory, params, plots, shapes, show
from llmtrain.dist import comm, data_parallel, demos, launch, zero

plots.use_style()
_ = torch.manual_seed(0)
RANKS = 2  # processes per demo; set 4 (or 8: the batch of 8 must split evenly) to see more

# %% [markdown]
# ## 1. Why averaging gradients is the same as one big batch
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
# ## 2. The collectives, one by one
#
# Data parallelism and ZeRO need four collective operations. `llmtrain.dist.comm` calls
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
# ## 3. Data parallelism by hand, and DDP
#
# The whole of `llmtrain.dist.data_parallel.wrap`: broadcast rank 0's weights, then during backward
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
# of one per micro-batch, same result (`tests/test_dist.py` checks both).
#
# Now train the tiny LLaMA for 5 AdamW steps: one process on the whole batch
# of 8 sequences, then on `RANKS` ranks with an equal share each — by hand, with DDP, with ZeRO
# 0–3 and with FSDP2.
# One launch runs them all (`demos.train_all`); each returns its losses, its final weights, the
# bytes it held and what it sent.

# %%
cfg = dict(model="tiny", optimizer="adamw", lr=1e-2, steps=5)
strategies = ["dp", "ddp", "zero0", "zero1", "zero2", "zero3", "fsdp2"]
single = demos.train("single", **cfg)
runs = launch(demos.train_all, RANKS, strategies, cfg)
rank0 = runs[0]

max_diff = demos.max_weight_diff  # largest |a − b| over all weights

print(f"{'step':>4} {'one process':>12} " + " ".join(f"{s:>9}" for s in strategies))
for i, loss in enumerate(single["losses"]):
    print(f"{i:>4} {loss:12.6f} " + " ".join(f"{rank0[s]['losses'][i]:9.6f}" for s in strategies))
for s in strategies:
    same = all(max_diff(run_[s]["weights"], rank0[s]["weights"]) == 0 for run_ in runs)
    print(f"{s:6s}: largest weight difference from one process {max_diff(rank0[s]['weights'], single['weights']):.1e}"
          f"; all {RANKS} ranks hold identical weights: {same}")

# %% [markdown]
# Equal to one process up to float rounding: the ranks sum their gradients in another order
# (floating-point addition is not associative), and AdamW's division by $\sqrt{v}$ amplifies such
# differences on near-zero gradients. With SGD in float64 the tests (`tests/test_dist.py`) get
# $< 10^{-13}$ for every strategy on 2, 3 and 4 ranks. Against PyTorch's own engines the largest
# difference after 5 steps is:

# %%
print("hand-written DP vs DDP:   ", max_diff(rank0["dp"]["weights"], rank0["ddp"]["weights"]))
print("hand-written ZeRO-3 vs FSDP2:", max_diff(rank0["zero3"]["weights"], rank0["fsdp2"]["weights"]))

# %% [markdown]
# Zero on this CPU: the hand-written versions do the same arithmetic as PyTorch's engines, on the
# same numbers (averaging two gradients is exact in either order); the engines do it faster.
#
# ## 4. ZeRO: what each rank keeps
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
# Stage 3's $16\Psi/N$ is the slides' $\frac{16P}{N}$. How `llmtrain.dist.zero` does it: each
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
phase = {z: launch(demos.phases, RANKS, z)[0] for z in range(4)}

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
# ## 5. Bytes per rank against the formula, N = 1, 2, 4
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
        assert got == formula == sum(memory.model_state_bytes(psi, zero=z, dp=N_).values())
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
# notebook 11 draws it against $N$ and reproduces the ZeRO paper's 120 → 31.4 → 16.6 → 1.9 GB.
#
# ## 6. What each stage sends
#
# The collectives of the first training step of §3, counted on rank 0 (fp32, so $4\Psi$ bytes of
# weights, N = `RANKS`):

# %%
bytes_ = 4 * psi
ring = Fraction(RANKS - 1, RANKS)
print(f"{'strategy':8s} {'op':15s} {'for':9s} {'calls':>5} {'sent by rank 0':>15}")
for s in ["dp", "zero0", "zero1", "zero2", "zero3"]:
    log = comm.Log(rank0[s]["comm"])
    for (op, tag), row in log.summary().items():
        print(f"{s:8s} {op:15s} {tag:9s} {row['calls']:>5} {float(row['sent_bytes']):>15,.0f}")
    ratio = log.sent_bytes() / (ring * bytes_)
    print(f"{'':8s} total {float(log.sent_bytes()):,.0f} bytes = {ratio} × (N−1)/N · 4Ψ")

# %% [markdown]
# Per rank, with $\Psi$ the bytes of the weights:
#
# | strategy | collectives per step | bytes sent per rank |
# |---|---|---|
# | DP, ZeRO-0 | all-reduce of the gradients | $2\frac{N-1}{N}\Psi$ |
# | ZeRO-1, ZeRO-2 | reduce-scatter gradients + all-gather weights | $2\frac{N-1}{N}\Psi$: the same |
# | ZeRO-3 | all-gather (forward) + all-gather (backward) + reduce-scatter | $3\frac{N-1}{N}\Psi$: **1.5×** |
#
# The printed totals say the same (2, 2, 2, 2 and 3 × $\frac{N-1}{N}\cdot 4\Psi$): ZeRO-1 and -2
# save memory for free, ZeRO-3 pays 50 % more traffic for its weights (the ZeRO paper, §7). The
# hand-written DP sends one bucket (the tiny model's gradients fit in DDP's 25 MiB default); ZeRO
# here sends one collective per tensor — real implementations group them into buckets too, which
# changes the count of calls, not the bytes. (With a world size that does not divide every tensor,
# ZeRO's collectives also carry the padding.)
# `tests/test_dist.py::test_communication_equals_the_formulas` asserts these equalities.
#
# ## 7. FSDP2: the real engine
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
# ## 8. The same code on GPUs and across machines: `torchrun`
#
# `launch` is for notebooks and tests. With real GPUs use PyTorch's launcher: every demo is also an
# entry point. `torchrun` starts the ranks, sets `RANK`, `WORLD_SIZE`, `MASTER_ADDR`…, and the demo
# joins with `llmtrain.dist.init_from_env()` — NCCL when each rank has a GPU, gloo otherwise.
#
# ```bash
# torchrun --nproc-per-node=8 -m llmtrain.dist.zero --stage 3             # one machine, 8 GPUs
# torchrun --nnodes=2 --nproc-per-node=8 --node-rank=0 \
#          --rdzv-endpoint=host0:29500 -m llmtrain.dist.zero --stage 3    # and node-rank=1 on host1
# python -m llmtrain.dist.data_parallel --nproc 4                         # no torchrun: uses launch
# ```
#
# Here, on this CPU, with `RANKS` ranks (its output is rank 0's report):

# %%
torchrun = [sys.executable, "-m", "torch.distributed.run"]  # what the `torchrun` command runs
run = subprocess.run([*torchrun, f"--nproc-per-node={RANKS}", "-m", "llmtrain.dist.zero", "--stage", "3",
                      "--steps", "3"], capture_output=True, text=True, timeout=300)
if run.returncode:  # a failed `!torchrun` would not stop a notebook: make it
    raise RuntimeError(f"torchrun failed:\n{run.stderr[-3000:]}")
print(run.stdout)

# %% [markdown]
# ## 9. When things go wrong
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
# **Exercise.** A 7B model trained with mixed-precision AdamW on 8 GPUs of 80 GB. Which ZeRO stages
# fit the model states (weights, gradients, optimizer) in 80 GB, and how much does each leave for
# activations?
#
# <details><summary>Answer</summary>
#
# $\Psi = 7\cdot10^9$: plain DP $16\Psi$ = 112 GB (does not fit); ZeRO-1 $4\Psi + 12\Psi/8$ = 38.5 GB
# (41.5 GB left); ZeRO-2 $2\Psi + 14\Psi/8$ = 26.25 GB (53.75 GB left); ZeRO-3 $16\Psi/8$ = 14 GB
# (66 GB left), at 1.5× the communication. The next cell computes it.
# </details>

# %%
for z in range(4):
    gb = float(held[z].subs({K: 12, n: 8, Psi: 7e9})) / 1e9
    print(f"ZeRO-{z}: {gb:6.2f} GB of model states, {80 - gb:6.2f} GB left" if gb < 80
          else f"ZeRO-{z}: {gb:6.2f} GB: does not fit")
