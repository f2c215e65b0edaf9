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
# # 3D parallelism · 3D 并行训练
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llmtrain/llmtrain/blob/main/notebooks/08_3d_parallel.ipynb)
#
# > **3D 并行训练**：数据并行（将模型复制、数据平均分配）、张量并行（将模型参数 $W$ 拆分到
# > 多张卡）与流水线并行（将连续的层分配到不同卡）组合使用 — the slides' section title: data,
# > tensor and pipeline parallelism, combined.
#
# After this notebook you can say which of $dp \cdot tp \cdot pp$ ranks holds which layers, which
# shard of each matrix and which part of the batch; build the three kinds of process groups by
# hand and check them against `init_device_mesh`; run one training step of a LLaMA on **8 real
# processes** (dp 2 × tp 2 × pp 2) and prove it computes what one process computes, with our
# hand-written pieces and with PyTorch's own engines; account for every byte each rank holds
# and sends along each axis, the optimizer's step included; explain why tensor parallelism stays
# inside a node and what decides whether pipeline or data parallelism is outermost (Megatron-LM
# puts pp outermost, Llama 3 dp); and use a planner that, for a model and a cluster, ranks the
# layouts that fit — set beside runs that were published, with what it does not reproduce.

# %% [markdown]
# > **导读**
# > 本笔记本把前面三种并行组合成课件中的“3D 并行训练”。先画出 2×2×2 的进程立方体，说明每个进程持有哪几层、每个矩阵的哪一块、批次的哪一部分；再手工构建数据并行、张量并行、流水线并行三类进程组，与 PyTorch 的 `init_device_mesh` 逐一核对。
# > 然后在本机 8 个真实进程上（dp 2 × tp 2 × pp 2）训练一步：手写实现（流水线切分 → 张量并行 → 重计算 → ZeRO）和 PyTorch 自己的引擎（DTensor、`fully_shard`、`torch.distributed.pipelining`）都与单进程结果一致，每个进程持有的字节数、每个维度发送的字节数（包括优化器更新时 ZeRO 的通信）都与公式逐字节相等。
# > 接着用每个维度的通信量说明为什么张量并行放在节点内，以及流水线和数据并行谁放在最外层（Megatron-LM 与 Llama 3 的两种顺序）。
# > 最后用规划器在几种集群上为 LLaMA-7B 到 70B 挑选布局（第一行是课件中 2 张 A100 80G 训练 LLaMA-7B 的例子），并与三组公开的训练配置对照：Megatron-LM 论文的 Table 1、BLOOM-176B 和 Llama 3 405B，说明规划器复现了什么、没有复现什么。

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
import matplotlib.pyplot as plt

from llmtrain import memory, plots, shapes, show
from llmtrain.parallel import launch, parallelize as parallelize_module
from llmtrain.parallel.demos import three_d
from llmtrain.parallel.mesh import AXES, ParallelDims
from llmtrain.parallel.pipeline_parallel import stage_layers

plots.use_style()
DIMS = ParallelDims(dp=2, tp=2, pp=2)  # 8 ranks; try (dp=1, tp=2, pp=4) or (dp=4, tp=2, pp=1)
SHAPE = shapes.get("tiny").replace(num_layers=4, name="tiny-4")  # two layers per stage
B, S = 8, 16  # the global batch: 8 sequences of 16 tokens
print(f"{DIMS}: {DIMS.world_size} ranks; model: {SHAPE.num_layers} layers, h = "
      f"{SHAPE.hidden_size}, {SHAPE.num_heads} heads ({SHAPE.num_kv_heads} kv), V = "
      f"{SHAPE.vocab_size}; global batch {B} × {S} tokens")

# %% [markdown]
# ## 1. Three axes, one cube of ranks · 三个维度，一个进程立方体
#
# `ParallelDims(dp, tp, pp)` is the one description of the layout. A global rank sits at
# coordinates (pp, dp, tp) with
#
# $$\text{rank} = (pp_i \cdot dp + dp_i)\cdot tp + tp_i ,$$
#
# tp innermost (ranks $0, 1$ are one tensor-parallel pair: in a real cluster, two GPUs of one
# NVLink node), then dp, then pp outermost — the row-major order of
# `init_device_mesh(("pp", "dp", "tp"))` and Megatron-LM's default (Llama 3 puts dp outermost
# instead; this notebook's §5 compares the two). What each rank holds follows
# from its coordinates: stage $pp_i$'s consecutive layers (`stage_layers`), shard $tp_i$ of each
# of their matrices, and share $dp_i$ of every batch.

# %%
show(ParallelDims.coords)

# %%
layers = stage_layers(SHAPE.num_layers, DIMS.pp)
holds = {}
for r in range(DIMS.world_size):
    c = DIMS.coords(r)
    stage = layers[c.pp]
    holds[r] = (f"layers {stage.start}–{stage.stop - 1}\nshard {c.tp} of each matrix\n"
                f"sequences {c.dp * B // DIMS.dp}–{(c.dp + 1) * B // DIMS.dp - 1}")
    print(f"rank {r}: (pp, dp, tp) = {tuple(c)}:", holds[r].replace("\n", ", "))
fig, ax = plt.subplots(figsize=(7, 4.6))
plots.rank_cube(ax, DIMS, holds, title=f"dp {DIMS.dp} × tp {DIMS.tp} × pp {DIMS.pp}: who holds what")
plots.save(fig, "08_rank_cube")
plt.show()

# %% [markdown]
# Blue boxes are stage 0 (the embedding and the first layers), orange ones stage 1 (the last
# layers, the output layer and the loss); solid lines join ranks of one tp or dp group, dashed
# ones the two stages of one pipeline.
#
# ## 2. The groups, by hand and by `init_device_mesh` · 进程组：手工构建与 `init_device_mesh`
#
# Each rank belongs to exactly one group per axis: the ranks that differ from it only in that
# coordinate. A **tp group** holds the same layers and data, different shards (it all-reduces
# activations inside every layer); a **dp group** the same layers and shards, different data
# (it averages gradients once per step); a **pp group** the same shard and data, different
# layers (its stages pass one activation forward and one gradient back per micro-batch).

# %%
for axis in AXES:
    print(f"{axis} groups: {DIMS.group_ranks(axis)}")

# %% [markdown]
# `ParallelDims.build()` creates these groups with `torch.distributed.new_group` on every rank;
# `ParallelDims.device_mesh()` asks PyTorch for `init_device_mesh("cpu", (pp, dp, tp),
# mesh_dim_names=("pp", "dp", "tp"))`. One launch of 8 processes (gloo on this CPU) builds both,
# and runs the training steps of §3 (a launch costs seconds; everything shares one):

# %%
show(three_d.groups)

# %%
HAND = dict(dims=(DIMS.dp, DIMS.tp, DIMS.pp), shape=SHAPE, batch=B, seq=S, zero=1,
            recompute="full", microbatches=4, engines=("ours",))
TORCH = dict(dims=(DIMS.dp, DIMS.tp, DIMS.pp), shape=SHAPE, batch=B, seq=S, zero=3,
             microbatches=4, engines=("torch",))
runs = launch(three_d.notebook, DIMS.world_size, [DIMS.shape], [HAND, TORCH], timeout=600)
for r, out in enumerate(runs):
    g = out["groups"][0]
    assert g["ours"] == g["torch"] and g["coords"] == g["mesh_coords"] == tuple(DIMS.coords(r))
    assert all(g["ours"][a] == DIMS.group_of(r, a) for a in AXES)
print(f"{len(runs)} ranks: every rank's dp, tp and pp group built by hand equals "
      "init_device_mesh's, and its mesh coordinates are its (pp, dp, tp)")

# %% [markdown]
# ## 3. One training step on 8 processes equals one process · 8 个进程上的一步训练等于单进程
#
# `parallelize(model, dims, zero=…, recompute=…)` is called on every rank with the same full
# model and applies the four steps in a fixed order, each one a module of `llmtrain.parallel`:

# %%
print(" → ".join(parallelize_module.ORDER))
show(parallelize_module.parallelize)

# %% [markdown]
# Its `step` takes the **global** batch on every rank; dp rank $d$ runs its share of the
# sequences through its pipeline in $m$ micro-batches. Each micro-batch's summed token loss is
# divided by (labelled tokens of the global batch)/dp, so that after the dp average the gradients
# are exactly those of the global mean loss, however the batch was split:

# %%
show(parallelize_module.Parallel.step)

# %% [markdown]
# Two runs of one step each, in the launch above, on the same weights and global batch:
# **ours** with ZeRO-1 and full recomputation (BLOOM-176B's choice), 1F1B with 4 micro-batches;
# **torch** with PyTorch's engines — DTensor tensor parallelism, `fully_shard` over the dp group
# (FSDP2: ZeRO-3) and `torch.distributed.pipelining`'s `Schedule1F1B`. Everything in float64,
# against one process's `loss.backward()` and one SGD step (lr 0.1):

# %%
TOL = 1e-12
print(f"{'rank':>4} {'(pp,dp,tp)':>11}  {'engine':<6} {'loss':>8}  gradients and weights vs one process")
for engine in ("ours", "torch"):
    i = 0 if engine == "ours" else 1
    for r, out in enumerate(runs):
        res = out["compare"][i][engine]
        last = out["compare"][i]["coords"][0] == DIMS.pp - 1
        assert (res["loss"] is not None) == last
        if last:
            assert abs(res["loss"] - out["compare"][i]["single_loss"]) < TOL
        assert res["grad_diff"] < TOL and res["weight_diff"] < TOL
        loss = f"{res['loss']:.4f}" if last else "—"
        print(f"{r:>4} {str(out['compare'][i]['coords']):>11}  {engine:<6} {loss:>8}  "
              f"equal up to rounding (< {TOL:.0e})")
print(f"one process: loss {runs[0]['compare'][0]['single_loss']:.4f}")

# %% [markdown]
# Only the last stage's ranks see the loss (ranks 4–7); all four report the global batch's mean,
# and every gradient of the full model (the TP shards gathered, both stages together) and every
# weight after the step equal one process's up to float rounding — for both engines.
#
# ## 4. Memory per rank, bytes per axis · 每个进程的显存，每个维度的通信量
#
# **What each rank holds.** `memory.model_state_bytes(shape, dims=…, zero=…, rank=r)` counts the
# weights and gradients of rank $r$'s stage and shards (`params_per_gpu(shape, dims, rank)`:
# uneven vocabulary, MLP and layer splits included); ZeRO-1 divides only the optimizer states,
# which SGD does not have. Measured: the storage behind every tensor of the rank after the step
# (`zero.memory_report`). The toy runs in float64, 8 bytes per number:

# %%
print(f"{'rank':>4} {'stage':>5} {'params':>8} {'weights B':>10} {'grads B':>9}  = formula")
for r, out in enumerate(runs):
    res = out["compare"][0]["ours"]
    n = memory.params_per_gpu(SHAPE, DIMS, r)
    for part in ("weights", "gradients"):
        assert res["states"][part] == res["states_formula"][part]
    print(f"{r:>4} {DIMS.coords(r).pp:>5} {n:>8,} {res['states']['weights']:>10,} "
          f"{res['states']['gradients']:>9,}  yes")
print(f"the whole model: {memory.params_per_gpu(SHAPE):,} parameters; "
      f"the busiest rank holds {max(memory.params_per_gpu(SHAPE, DIMS, r) for r in range(8)):,}")

# %% [markdown]
# **What each axis carries.** `comm` counts every collective and message with its group's axis;
# `parallelize.axis_bytes` gives the same from the formulas: TP's all-reduces of $b\cdot s\cdot h$
# per layer and micro-batch (ring factor $2(t-1)/t$), the pipeline's activations and gradients
# ($b \cdot s \cdot h$ each per micro-batch and cut), and DP's gradient traffic — none before the
# optimizer's step under ZeRO-1 (it reduce-scatters the gradients in `optimizer.step()`), plus the
# loss's average over dp on the last stage (one number):

# %%
show(parallelize_module.axis_bytes)

# %%
print(f"{'rank':>4} {'dp B':>7} {'tp B':>9} {'pp B':>7}  counted = formula")
for r, out in enumerate(runs):
    res = out["compare"][0]["ours"]
    assert res["sent"] == res["formula"]
    print(f"{r:>4} {int(res['sent']['dp']):>7,} {int(res['sent']['tp']):>9,} "
          f"{int(res['sent']['pp']):>7,}  yes")

# %% [markdown]
# One thing the formulas had to learn from the measurement: with full recomputation each
# layer's forward runs again in backward, and its TP all-reduces with it — but only **one** of
# its two: `torch.utils.checkpoint` (non-reentrant) stops recomputing as soon as it has every
# tensor backward needs, and nothing needs the output of a segment's last all-reduce. A segment
# of $k$ layers repeats $2k-1$ of its $2k$ forward all-reduces:

# %%
from llmtrain import recompute
from llmtrain.parallel.pipeline_parallel import cut_segments

share = (B // DIMS.dp) * S * SHAPE.hidden_size * 8  # rank 0's b·s·h over its 4 micro-batches
one = 2 * (DIMS.tp - 1) * share // DIMS.tp  # sent for one forward all-reduce of all of them
base = parallelize_module.axis_bytes(SHAPE, DIMS, 0, B, S, microbatches=4, zero=1,
                                     dtype_bytes=8)["tp"]
print(f"rank 0, layers {list(layers[0])}: tp bytes per step without recomputation {int(base):,}")
for rc in ("selective", "full", "sqrt"):
    tp_bytes = parallelize_module.axis_bytes(SHAPE, DIMS, 0, B, S, microbatches=4, zero=1,
                                             recompute=rc, dtype_bytes=8)["tp"]
    segs = cut_segments(recompute.segments(SHAPE.num_layers, rc), layers[0])
    again = sum(2 * len(g) - 1 for g in segs)
    assert tp_bytes - base == again * one
    print(f"  {rc:<9}: segments {[list(g) for g in segs]} → {again} forward all-reduces again: "
          f"+{int(tp_bytes - base):,} B")
print(f"measured (the ours run above, recompute='full'): "
      f"{int(runs[0]['compare'][0]['ours']['sent']['tp']):,} B")
assert runs[0]["compare"][0]["ours"]["sent"]["tp"] == parallelize_module.axis_bytes(
    SHAPE, DIMS, 0, B, S, microbatches=4, zero=1, recompute="full", dtype_bytes=8)["tp"]

# %% [markdown]
# **The optimizer's step sends too.** `axis_bytes` stops before `optimizer.step()`. Under ZeRO-1
# the step reduce-scatters the gradients and, after updating its shard, each rank all-gathers the
# updated weights; under ZeRO-2 the gradients are already reduce-scattered, but the all-gather of
# the weights remains. The same launch counted the step of the ZeRO-1 run on its own
# (`comm.counting()` around `optimizer.step()`): per rank, $(d-1)/d$ of the padded parameter
# bytes $\tilde P e$ twice, one reduce-scatter and one all-gather per parameter:

# %%
from llmtrain.parallel import comm


def step_dp_bytes(rank, zero, dtype_bytes, dims=DIMS):
    """Bytes ``rank`` sends on dp in ``optimizer.step()``: ZeRO-1 reduce-scatters the gradients
    and all-gathers the updated weights, ZeRO-2 only all-gathers, ZeRO-0/3 send nothing there."""
    d = dims.dp
    padded = sum(-(-n // d) * d for n in memory.param_numels(SHAPE, dims, rank)) * dtype_bytes
    rs, ag = (comm.ring_bytes(op, padded, d)[0] for op in ("reduce_scatter", "all_gather"))
    return {0: 0, 1: rs + ag, 2: ag, 3: 0}[zero]


print(f"{'rank':>4} {'dp B in optimizer.step()':>25}  reduce-scatters  all-gathers  = formula")
for r, out in enumerate(runs):
    res = out["compare"][0]["ours"]
    assert res["step_sent"]["dp"] == step_dp_bytes(r, 1, 8)
    assert res["step_sent"]["tp"] == res["step_sent"]["pp"] == 0
    calls = res["step_calls"]
    print(f"{r:>4} {int(res['step_sent']['dp']):>25,}  {calls['reduce_scatter']:>15}  "
          f"{calls['all_gather']:>11}  yes")

# %% [markdown]
# **What ZeRO costs under a pipeline.** Now the whole step, before and in the optimizer's step,
# for rank 0 with $m$ = 8 micro-batches in 16-bit (formulas; the step column is the one just
# counted, the rest `axis_bytes`, counted in the run above for ZeRO-1). ZeRO-0 all-reduces the
# gradients once after the last micro-batch; ZeRO-1 moves the same bytes into the step; ZeRO-2
# reduce-scatters every micro-batch's gradients as soon as backward makes them, then all-gathers
# the weights after the step; ZeRO-3 all-gathers the weights before every micro-batch's forward
# and backward and keeps only shards, so its step sends nothing:

# %%
m = 8
totals = {}
print(f"rank 0, m = {m}, 16-bit: dp bytes per step")
print(f"{'':8} {'before the step':>16} {'in the step':>12} {'in all':>10} {'× ZeRO-0':>9}")
for z in range(4):
    before = parallelize_module.axis_bytes(SHAPE, DIMS, 0, 16, S, microbatches=m, zero=z,
                                           dtype_bytes=2)["dp"]
    totals[z] = before + step_dp_bytes(0, z, 2)
    print(f"  ZeRO-{z}: {int(before):>16,} {int(step_dp_bytes(0, z, 2)):>12,} {int(totals[z]):>10,} "
          f"{float(totals[z] / totals[0]):>9.2f}")
print(f"ZeRO-2: (m + 1)/2 = {(m + 1) / 2} times ZeRO-0; ZeRO-3: 3m/2 = {3 * m // 2} times "
      "(the small rest: ZeRO pads each parameter to a multiple of dp)")

# %% [markdown]
# ZeRO-1 sends what plain data parallelism sends; ZeRO-2 $(m+1)/2$ times as much and ZeRO-3 $3m/2$
# times, and $m$ is large exactly when the pipeline keeps its bubble small. (`llmtrain.plan`
# charges the same $(m+1)/2$ for ZeRO-2.) That is a price, not a prohibition; systems choose
# differently:
#
# - DeepSpeed's pipeline engine refuses ZeRO-2/3 with pipeline parallelism ("ZeRO-2 and ZeRO-3 are
#   incompatible with pipeline parallelism"); BLOOM-176B ran ZeRO-1 on it, and Megatron-LM's
#   distributed optimizer shards only the optimizer states.
# - Llama 3 405B shards optimizer states and gradients with FSDP under PP 16 (ZeRO-2
#   as this notebook counts it, §7): it accepts more dp traffic for less memory.
# - The torch run of §3 is FSDP2 (ZeRO-3) with `Schedule1F1B`: correct (it equals one process),
#   with $3m/2$ times the dp traffic of ZeRO-1.
#
# So pipelines usually pair with ZeRO-1 when the dp traffic must stay that of plain data
# parallelism; ZeRO-2/3 trade dp bytes for memory.

# %% [markdown]
# ## 5. Which axis goes where · 张量并行在节点内，哪个维度放在最外层
#
# 三个维度每一步要传的字节数相差几个数量级（the three axes move very different amounts of data
# per step）。取一个布局：Llama-2 70B 在 64 张 H100 上（8 个节点），TP 8 × PP 4 × DP 2，全局
# 批次 4M（$4 \cdot 2^{20}$）个词元（token），序列长度 4,096，微批次 1，选择性重计算，ZeRO-1。
# 下面按 `llmtrain.plan` 的计数给出每张卡每步发送的字节数（环形算法），以及它们在节点内 NVLink
# 与节点间 InfiniBand 上各需多久（带宽见输出）。1 GB = $10^9$ 字节。最后一行是 Megatron-LM 的
# scatter/gather 优化（Narayanan et al. 2021, §4.1）：同一流水级的 $t$ 张卡各发激活值的 $1/t$，
# 即每卡 $b\cdot s\cdot h/t$，接收方再在 NVLink 上 all-gather 拼回完整的激活值。

# %%
from llmtrain import plan

shape, card, seq = plan.model("llama2-70b"), plan.cluster("h100-80g"), 4096
lay = plan.layout(shape, 64, 4 * plan.MI, seq, tp=8, pp=4, zero=1, recompute="selective")
p = plan.evaluate(shape, card, lay, seq)
m, b, h, t = lay.microbatches, lay.micro_batch, shape.hidden_size, lay.dims.tp
pp_bytes = 2 * m * b * seq * h * 2  # one b·s·h activation forward, one gradient back, bf16
per_axis = {  # bytes one GPU sends in one step
    "TP (all-reduce, 4 per layer per micro-batch)": m * p.details["tp_bytes"],
    "DP (gradient all-reduce, once per step)": p.details["dp_bytes"],
    "PP (one b·s·h activation and one gradient per micro-batch)": pp_bytes,
    "PP with scatter/gather (b·s·h/t per GPU)": pp_bytes / t,
}
print(f"{lay.label()}, m = {m} micro-batches of {b} × {seq} tokens")
print(f"NVLink {card.intra_node_bytes_per_s / 1e9:.0f} GB/s per direction; InfiniBand "
      f"{8 * card.inter_node_bytes_per_s / 1e9:.0f} Gb/s = {card.inter_node_bytes_per_s / 1e9:.0f} GB/s per GPU")
print(f"{'axis':<60} {'GB/step':>9} {'on NVLink':>10} {'on IB':>8}")
for axis, nbytes in per_axis.items():
    print(f"{axis:<60} {float(nbytes) / 1e9:>9.1f} {float(nbytes) / card.intra_node_bytes_per_s:>9.2f}s"
          f" {float(nbytes) / card.inter_node_bytes_per_s:>7.2f}s")
print(f"compute of the busiest stage: {p.time_parts['compute']:.1f} s per step "
      f"(efficiency {plan.Assumptions().efficiency} of {card.peak_flops / 1e12:.0f} TFLOP/s)")
print(f"PP with scatter/gather: {float(pp_bytes / t) / 1e9:.1f} GB on IB per GPU, then an all-gather "
      f"of {float(comm.ring_bytes('all_gather', pp_bytes, t)[0]) / 1e9:.1f} GB per GPU on NVLink; "
      f"PP / DP bytes: {float(pp_bytes / per_axis['DP (gradient all-reduce, once per step)']):.0f}× "
      f"without, {float(pp_bytes / t / per_axis['DP (gradient all-reduce, once per step)']):.0f}× with it")

# %% [markdown]
# **张量并行留在节点内。** TP 每步每卡要发约 4.9 TB：在 NVLink 上约 11 秒，放到网络上约 99 秒，
# 是计算（约 50 秒）的两倍，而且它在关键路径上（Megatron 的 f/g 是同步的）。所以 tp ≤ 8，
# 一个 TP 组正好是一个节点的 8 张卡。这与 Narayanan et al. 2021, §3 的几条结论一致：张量并行
# 最多用到一个节点内的 GPU 数，再用流水线并行跨节点放下更大的模型；模型并行（$t \cdot p$）只用到
# 放得下模型为止，其余的 GPU 用数据并行来扩展；微批次大小则要在 GEMM 效率、流水线气泡和显存之间权衡。
#
# **流水线与数据并行：两种顺序。** tp 占满节点之后，dp 和 pp 都要跨节点；进程编号（rank）的
# 排列顺序决定哪一个维度的组由相邻的节点组成（在大集群里，相邻节点在同一个交换机下，链路更近）。
#
# - **Megatron-LM**：rank = (pp_i·dp + dp_i)·tp + tp_i，即 tp → dp → pp，pp 在最外层。这正是
#   本笔记本 `ParallelDims` 的顺序（§1）。一个 dp 组由相邻的节点组成，每步一次的梯度 all-reduce
#   留在近处；流水线相邻的两级相隔 dp·tp 个 rank。
# - **Llama 3**：按 [TP, CP, PP, DP] 排列（Llama 3, §3.3.2 与 Fig. 5），dp 在最外层：流水线相邻的
#   两级在相邻的节点上，数据并行跨得最远。
#
# 上面的字节数支持 Llama 3 的顺序：不用 scatter/gather 时 PP 每卡每步约 69 GB，是 DP（约 4.3 GB）
# 的 16 倍；即使用了 scatter/gather（约 8.6 GB），PP 仍是 DP 的 2 倍，而且每个微批次的激活值都在
# 关键路径上等待，DP 的 all-reduce 每步只有一次，还能与反向传播重叠。Megatron 的顺序把近处的链路
# 留给 DP；它用 scatter/gather 把跨节点的 PP 流量降到 $1/t$。
# (TP moves the most bytes, synchronously: keep it on NVLink. PP and DP both cross nodes; Megatron
# numbers pp outermost, Llama 3 dp outermost, and the bytes here favour the latter.)

# %% [markdown]
# ## 6. The planner · 规划器：哪种切分放得下、跑得最快
#
# `plan.search` 枚举一个集群上的所有布局（tp 整除头数，pp ≤ L，dp = GPU 数/(tp·pp)，ZeRO 0–3，
# 不重计算 / 选择性 / 完全重计算，微批次 1/2/4，可选序列并行），用 `memory.estimate` 的各部分
# 加上流水线在途的微批次算每卡显存，用 `flops`、TP/DP/PP 的通信量（环形系数）与气泡
# （`pp_schedule.bubble_formula`）算每步时间，按时间排序。所有假设都是 `plan.Assumptions` 的
# 字段（算力效率 0.6、DP 通信一半与反向重叠……）。这些数值来自模型估算，并非实测。
# 第一行是课件的例子“以 2 张 A100 80G 训练 LLaMA 7B 为例（B=8）”：每卡 8 条长度为 2,048 的序列，
# 即每步 32K 个词元。其余各行：每步 4M 个词元（课件里的“4M”是词元数，这里取 $4\cdot2^{20}$）。

# %%
GIB = 2**30
rows = [("llama-7b", 2, "a100-80g", 2 * 8 * 2048, 2048)]  # the slides' example first
rows += [(name, gpus, gpu, 4 * plan.MI, None)
         for gpus, gpu in ((8, "a100-80g"), (64, "h100-80g"))
         for name in ("llama-7b", "llama-13b", "llama-65b", "llama2-70b")]
print(f"{'model':<11} {'GPUs':>13} {'tokens':>9} {'fit':>4}  {'fastest layout':<38} {'GiB':>5} "
      f"{'s/step':>7} {'MFU':>6}")
for name, gpus, gpu, tokens, seq in rows:
    plans = plan.search(name, gpu, gpus, tokens, seq)
    if not plans:
        print(f"{name:<11} {gpus:>4} × {gpu} {tokens:>9,} {0:>4}  nothing fits")
        continue
    best = plans[0]
    print(f"{name:<11} {gpus:>4} × {gpu} {tokens:>9,} {len(plans):>4}  {best.layout.label():<38} "
          f"{best.memory_bytes / GIB:>5.1f} {best.step_time_s:>7.2f} {100 * best.mfu:>5.1f}%")

# %% [markdown]
# 读表（how to read it）：2 张卡的 7B 例子里，最快的是纯数据并行 + ZeRO-1 + 选择性重计算
# （78.0 GiB，刚好放进 80 GiB）；模型越大，可行的布局越少，最快的布局开始用 TP（不超过 8，
# 不出节点）和 PP。8 张 A100 放不下 65B/70B 的任何布局（每卡的模型状态 16P/8 ≈ 130 GB）。

# %% [markdown]
# ## 7. The published runs, checked · 与公开的训练配置对照
#
# **Narayanan et al. 2021**（arXiv 2104.04473，“Efficient Large-Scale Language Model Training
# on GPU Clusters Using Megatron-LM”）的 Table 1：十行 GPT，从 1.7B 到 1T。数据取自论文正文
# （Table 1，三份公开转录逐行一致），并用论文自己的公式逐行核对：参数量用
# Eq. 2 $P = 12lh^2(1 + \frac{13}{12h} + \frac{V+s}{12lh})$（$V$、$s$ 见输出），
# 峰值比例 = TFLOP/s ÷ 312。注意 Eq. 3 的 FLOPs 含激活重计算（层的前向算两次：相当于 4 次前向
# 计算，而不是 3 次），所以他们的 “% of peak” 是硬件利用率（HFU）；去掉重计算的模型 FLOPs 利用率
# （MFU）约为其 3/4（输出层不重算，所以略高于 3/4）。这里只核对表中数据自洽，没有用规划器重跑这些行。

# %%
from fractions import Fraction

from llmtrain import published_runs

print(f"V = {published_runs.NARAYANAN_V:,}, s = {published_runs.NARAYANAN_S:,}, "
      f"A100 peak {published_runs.A100_PEAK_TFLOPS} TFLOP/s")
print(f"{'params':>7} {'Eq. 2':>8} {'t':>2} {'p':>3} {'GPUs':>5} {'TFLOP/s':>8} {'% peak':>7} "
      f"{'312·%':>6} {'MFU':>6}  match")
for r in published_runs.NARAYANAN_TABLE1:
    P = published_runs.narayanan_params(r.layers, r.hidden)
    share = Fraction(r.tflops_per_gpu, published_runs.A100_PEAK_TFLOPS)
    ratio = Fraction(published_runs.narayanan_model_flops(r.batch, r.layers, r.hidden),
                     published_runs.narayanan_flops(r.batch, r.layers, r.hidden))
    ok = round(P / 1e9, 1) == r.params_b and round(100 * share) == r.percent_of_peak
    print(f"{r.params_b:>6}B {P / 1e9:>7.2f}B {r.tp:>2} {r.pp:>3} {r.gpus:>5} "
          f"{r.tflops_per_gpu:>8} {r.percent_of_peak:>6}% {float(100 * share):>5.1f}% "
          f"{float(100 * share * ratio):>5.1f}%  {'match' if ok else 'MISMATCH'}")

# %% [markdown]
# 十行全部一致（all ten rows match）：Eq. 2 给出每行的参数量，TFLOP/s ÷ 312 给出每行的峰值比例。
# 去掉重计算后的 MFU 约为 33%–39%（model FLOPs utilisation without the recomputed forward）。
#
# **BLOOM-176B**（bigscience-workshop/bigscience，`train/tr11-176B-ml/README.md`）：384 张
# A100 80GB，TP 4 × PP 12 × DP 8，微批次 2，全局批次 2,048 条 × 2,048（“4.2M tokens”，即
# $4\cdot2^{20}$），ZeRO-1，激活检查点（完全重计算）。BLOOM 不是 LLaMA（ALiBi、LayerNorm、
# 4h 的 GeLU MLP），这里把它近似成 `ModelShape`：SwiGLU 的 $H' = \lfloor 8h/3 \rfloor$
# （MLP 矩阵参数 $3hH' = 8h^2 - h$），q/k/v、o 与 MLP 带偏置，嵌入共享（$H'$ 与词表大小见输出）。
#
# **Llama 3 405B**（arXiv 2407.21783，§3.3.2 与 Table 4；读的是 v3，2024 年 11 月版，第 10 页）：
# TP 8、PP 16、序列长度 8,192、每批 16M（$2^{24}$）个词元；8,192 张 H100（DP 64）与 16,384 张
# （DP 128），每卡 TFLOPs 与 BF16 MFU 见输出。FSDP 切分优化器状态与梯度（这里记作 ZeRO-2）。
# 论文没有给出微批次、重计算方式和交错调度每卡的块数 $v$：下面取微批次 1、序列并行，列出完全
# 重计算时最快的 $v$。Table 4 的第三行是 128K 长上下文阶段（CP 16）：v3 写的是 DP 8，
# 8 × 16 × 16 × 8 正好是 16,384 张卡（有些转录，如 arxiv.org 的 HTML 版，写作 DP 4）。规划器不建模上下文并行，
# 所以这一行只作为数据列出。

# %%
from llmtrain import params


def published(run, recompute, virtuals=(1,), sp=False):
    shape = plan.model(run["model"])
    plans = plan.search(shape, run["gpu"], run["gpus"], run["batch_tokens"], run["seq"],
                        virtuals=(1, 2, 4, 8) if max(virtuals) > 1 else (1,))
    mine = [plan.evaluate(shape, run["gpu"], plan.layout(
        shape, run["gpus"], run["batch_tokens"], run["seq"], tp=run["tp"], pp=run["pp"],
        zero=run["zero"], recompute=recompute, micro_batch=run["micro_batch"], virtual=v, sp=sp),
        run["seq"]) for v in virtuals]
    p = min(mine, key=lambda q: q.step_time_s)
    print(f"{run['model']} on {run['gpus']:,} × {run['gpu']}: {p.layout.label()}")
    print(f"  {p.memory_bytes / GIB:.1f} GiB per GPU: {'fits' if p.fits else 'does NOT fit'} "
          f"in {p.card_bytes / GIB:.0f} GiB; rank {plan.rank_of(plans, p)} of {len(plans)} "
          f"layouts that fit, {p.step_time_s / plans[0].step_time_s:.2f} × the fastest "
          f"({plans[0].layout.label()})")
    return p, plans


bloom = plan.model("bloom-176b")
err = (params.count(bloom) - published_runs.BLOOM_176B_PARAMS) / published_runs.BLOOM_176B_PARAMS
print(f"BLOOM-176B: {published_runs.BLOOM_176B_PARAMS:,} parameters (README's layer and embedding sizes); "
      f"the approximation {params.count(bloom):,} ({100 * err:+.4f} %)")
print(f"  approximation: H' = {bloom.intermediate_size:,}, vocabulary {bloom.vocab_size:,}")
p, plans = published(published_runs.BLOOM_176B, "full")
same = [q for q in plans if q.layout.recompute == "full" and not q.layout.sp]
print(f"  among the {len(same)} layouts with full recomputation and no sequence parallelism "
      f"(what BLOOM's Megatron-DeepSpeed ran): rank {plan.rank_of(same, p)}, "
      f"{p.step_time_s / same[0].step_time_s:.2f} × their fastest ({same[0].layout.label()})")
for run in published_runs.LLAMA3_405B:
    print(f"Llama 3, Table 4: {run['gpus']:,} GPUs, TP {run['tp']} PP {run['pp']} DP {run['dp']}, "
          f"seq {run['seq']:,}: {run['tflops_per_gpu']} TFLOPs/GPU, BF16 MFU {run['mfu_percent']} %")
    p, plans = published(run, "full", virtuals=(1, 2, 4, 8), sp=True)
    print(f"  MFU: published {run['mfu_percent']} %, this model {100 * p.mfu:.1f} % "
          f"(fastest layout {100 * plans[0].mfu:.1f} %); efficiency assumed "
          f"{plan.Assumptions().efficiency}")
    print("  step time by part: " + ", ".join(f"{k} {v:.2f} s" for k, v in p.time_parts.items())
          + f"; in all {p.step_time_s:.2f} s")
    shape = plan.model(run["model"])
    for overheads in (True, False):
        sel = [plan.evaluate(shape, run["gpu"], plan.layout(
            shape, run["gpus"], run["batch_tokens"], run["seq"], tp=8, pp=16, zero=2,
            recompute="selective", virtual=v, sp=True), run["seq"],
            plan.Assumptions(overheads=overheads)) for v in (1, 2, 4, 8)]
        gib = sorted(q.memory_bytes / GIB for q in sel)
        print(f"  selective recomputation, {'with' if overheads else 'without'} the slides' "
              f"overheads: {gib[0]:.1f} to {gib[-1]:.1f} GiB for v = 1, 2, 4, 8; "
              f"{sum(q.fits for q in sel)} of 4 fit")
        if overheads:
            print("    v = 1 by part (GiB): " + ", ".join(
                f"{k} {v / GIB:.2f}" for k, v in sel[0].memory_parts.items()))
long = published_runs.LLAMA3_405B_LONG_CONTEXT
print(f"Llama 3, Table 4, third row (v3): TP {long['tp']} × CP {long['cp']} × PP {long['pp']} × "
      f"DP {long['dp']} = {long['tp'] * long['cp'] * long['pp'] * long['dp']:,} GPUs "
      f"(the row: {long['gpus']:,}), seq {long['seq']:,}: context parallelism, not in the planner")

# %% [markdown]
# 结论（what matches, what does not）：
#
# - BLOOM 的布局放得下（约 40 GiB / 80 GiB）。它不在总排名的最前面：规划器更喜欢选择性重计算
#   （BLOOM 开训时 Megatron-DeepSpeed 还没有），而且规划器的代价模型不会因微批次增大而提高计算
#   效率（BLOOM 的 README 说 MBS=2 最快：GEMM 越大效率越高，规划器的效率是常数）。在 BLOOM 能用的
#   完全重计算布局里，它排在前四分之一，比其中最快的慢约 19%。
# - Llama 3 405B 的 TP 8 × PP 16 在完全重计算下放得下（约 19 GiB），排在可行布局的前四分之一，
#   比最快的慢约 28%（规划器更愿意用更少的流水级、更多的数据并行）。
# - 规划器没有复现 Llama 3 的显存，也没有复现它 41%–43% 的 MFU，模型给出的只有约 26%–28%。原因不是
#   效率假设保守：假设的效率 0.6 高于 Llama 3 实际的 MFU。差距来自规划器没有建模的东西。第一，
#   它的显存模型让选择性重计算需要 82–115 GiB（16 个微批次在途的激活值占大头，另有课件里
#   DeepSpeed/PyTorch 的框架常数 6 GiB，而 Llama 3 用的是 FSDP），放不下，于是只能完全重计算，
#   每步多算一次前向。第二，它把 ZeRO-2 算成每个微批次一次 reduce-scatter，点对点通信也不与计算
#   重叠；上面按部分列出了这些时间。Llama 3 自己的显存与重叠方式，论文没有给出到能逐项核对的程度。

# %% [markdown]
# ## 8. Planner widget · 规划器小组件
#
# 选一个模型、GPU 数量与型号、每步 token 数；条形图是最快的几个布局每步的时间（计算、TP 通信、
# 气泡、DP 通信、点对点），标签给出布局和每卡显存。组件是 `llmtrain.widgets.PlannerExplorer`：

# %%
from llmtrain import widgets

show(widgets.PlannerExplorer.compute)

# %% tags=["nbval-ignore-output"]
# The live widget. Its stored output is widget state (random ids), so nbval does not compare it.
planner = widgets.PlannerExplorer()
planner.widget()

# %% [markdown]
# 没有运行中的 Jupyter 内核（运行时）时（GitHub、HTML 页面），上面的组件是空的。下面给出其默认
# 状态（课件中 2 张 A100 80G、LLaMA-7B、B = 8 的例子）的静态图：

# %%
from IPython.display import Image

view = widgets.PlannerExplorer.static()
png, svg = plots.save(view.fig, "08_planner_default")
print(view.headline)
print(view.text)
Image(filename=png, width=650)  # the saved figure, as in figures/08_planner_default.png

# %% [markdown]
# ## 要点 · Key points
#
# - 一个布局对象 `ParallelDims(dp, tp, pp)` 描述全部进程：进程编号 rank = (pp·dp + dp_i)·tp + tp_i，tp 在最内层、pp 在最外层（Megatron-LM 的顺序）。手工构建的 dp、tp、pp 进程组与 `init_device_mesh` 的完全相同。
# - 8 个真实进程上的一步训练（手写：ZeRO-1 + 完全重计算 + 1F1B；PyTorch：DTensor + `fully_shard` + `Schedule1F1B`）的损失（5.5599）、全部梯度和更新后的权重都与单进程相差小于 1e-12。
# - 每个进程持有的参数和发送的字节数都与公式逐字节相等：第一个流水级 54,528 个参数，最后一个流水级 54,592 个；张量并行在流水级 0 的每个进程上每步发送 360,448 B，流水线 32,768 B。
# - 完全重计算会把前向中的张量并行 all-reduce 再做一遍，但每段只重做 $2k-1$ 次：每层一段时多 65,536 B。
# - ZeRO-1 并不省通信，只是把梯度的通信移到优化器更新里：先 reduce-scatter 梯度，更新后再 all-gather 权重，合计与普通数据并行相同。
# - 流水线需要很多微批次（$m$ = 8），ZeRO-2 的数据并行通信是 ZeRO-0 的 $(m+1)/2$ = 4.5 倍，ZeRO-3 是 $3m/2$ = 12 倍。所以 DeepSpeed 与 BLOOM 让流水线配 ZeRO-1；Llama 3 用 FSDP 切分梯度，是用更多通信换显存。
# - 张量并行留在节点内：Llama-2 70B 在 64 张 H100 上（tp 8 × pp 4 × dp 2），每张卡每步 TP 要发约 4.9 TB，在 InfiniBand 上需要 98.61 s，是计算时间的两倍。
# - 流水线和数据并行谁在最外层有两种做法：Megatron-LM 让 pp 在最外层，Llama 3 让 dp 在最外层。同一例子中 PP 每卡每步 68.7 GB、DP 4.3 GB，支持 Llama 3 的顺序；Megatron 的 scatter/gather 优化把跨节点的 PP 流量降到 $1/t$（8.6 GB）。
# - 规划器：课件的例子“2 张 A100 80G 训练 LLaMA 7B（B=8）”有 89 个布局放得下，最快的是纯数据并行 + ZeRO-1 + 选择性重计算（每卡 78.0 GiB）。
# - 公开配置：Narayanan et al. 2021 的 Table 1 十行数据与论文公式自洽；BLOOM-176B 与 Llama 3 405B 的布局在规划器里都放得下。但规划器没有复现 Llama 3 的显存和 41%–43% 的 MFU（只给出约 26%–28%）：它的显存模型迫使完全重计算，且不建模通信与计算的重叠。
