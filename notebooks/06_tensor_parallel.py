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
# # Tensor parallelism · 张量并行
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llmtrain/llmtrain/blob/main/notebooks/06_tensor_parallel.ipynb)
#
# > **张量并行**：将模型参数 $W$ 拆分为 $W_1$ 和 $W_2$，在两张卡并行计算 $XW_i$ 后拼接得到输出 —
# > split the model's parameter $W$ into $W_1$ and $W_2$, compute $XW_i$ on two cards in
# > parallel, then concatenate to get the output.
#
# After this notebook you can split a matrix product by columns or by rows and say which
# collective each split needs; explain why a transformer layer splits its MLP and its attention
# column-then-row so that forward needs only two all-reduces; run a LLaMA tensor parallel on real
# processes of this computer and prove it computes what one process computes (and what PyTorch's
# DTensor computes); count the bytes each rank holds and sends, with and without sequence
# parallelism, against the formulas; and say why tensor parallelism stays inside one NVLink node.
# Every rank here is a real process talking over gloo (CPU); the same code runs on GPUs (NCCL).

# %% [markdown]
# > **导读**
# > 本笔记本从课件中的一句话出发：把参数 $W$ 拆成 $W_1$、$W_2$，两张卡分别计算 $XW_i$ 后拼接。
# > 先用 SymPy 证明按列切分（拼接输出）和按行切分（输出求和）都等于原来的矩阵乘法，并说明 MLP 和注意力为什么先按列、再按行切分，前向只需两次 all-reduce。
# > 然后在 2 个真实进程上运行手写的切分和整个张量并行的 LLaMA（Megatron 的 f 与 g 通信算子），与单进程和 PyTorch 的 DTensor 对照，并逐字节统计每个进程的参数、激活值和通信量，与公式核对（包括序列并行）。
# > 最后用 FLOPs 与通信字节之比和厂商公布的带宽说明：张量并行每层都要通信，所以只适合放在同一个 NVLink 节点内部。

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
from matplotlib.patches import FancyBboxPatch

from llmtrain import plots, show
from llmtrain.cost import activations as activation_formulas, flops, memory
from llmtrain.cost.layout import ParallelDims
from llmtrain.model import shapes
from llmtrain.parallel import comm, launch, tensor_parallel, tp_comm
from llmtrain.parallel.demos import tensor_parallel as demos

plots.use_style()
_ = torch.manual_seed(0)
RANKS = 2  # tensor-parallel degree t of every demo (the tiny LLaMA has 2 key/value heads: t = 1 or 2)

# %% [markdown]
# ## 1. Two ways to split a product · 矩阵乘法的两种切分
#
# Notation (Megatron's): $b$ micro-batch size, $s$ sequence length, $h$ hidden size — the slides'
# $B$, $T$, $H$ — and $t$ the tensor-parallel degree (the number of ranks a layer is split over;
# not the slides' $T$).
#
# Take $Y = XW$ with $X$ of $b\cdot s$ rows (tokens) and $h$ columns, $W$ of $h \times h$. The slide
# splits $W$ **by columns**, $W = [W_1\; W_2]$: card $i$ holds $W_i$ and the whole $X$, computes
# $XW_i$ — half of $Y$'s columns — and the halves are concatenated. One can also split **by
# rows**: $X = [X_1\; X_2]$ by columns and $W = \begin{bmatrix}W_1\\W_2\end{bmatrix}$ by rows;
# card $i$ computes $X_iW_i$, a full-size matrix that is only a *partial sum*, and
# $Y = X_1W_1 + X_2W_2$. In SymPy, entry by entry:

# %%
X = sp.Matrix(2, 4, lambda i, j: sp.Symbol(f"x_{i}{j}"))
W = sp.Matrix(4, 4, lambda i, j: sp.Symbol(f"w_{i}{j}"))
column = (X * W[:, :2]).row_join(X * W[:, 2:])  # [X W₁, X W₂]
row = X[:, :2] * W[:2, :] + X[:, 2:] * W[2:, :]  # X₁W₁ + X₂W₂
print("column split: [X W₁, X W₂] − X W = 0:", (column - X * W).expand().is_zero_matrix)
print("row split:    X₁W₁ + X₂W₂ − X W = 0:", (row - X * W).expand().is_zero_matrix)
print("(X W)[0, 0]   =", (X * W)[0, 0])
print("(X₁W₁)[0, 0]  =", (X[:, :2] * W[:2, :])[0, 0], "  ← card 1: half of the sum")
print("(X₂W₂)[0, 0]  =", (X[:, 2:] * W[2:, :])[0, 0], "  ← card 2: the other half")

# %% [markdown]
# Both are exact. What differs is the communication: the column split leaves each card with
# *different columns* of $Y$ (to be concatenated: an **all-gather**, or nothing, if the next
# operation can work on columns), the row split leaves each card with a *partial sum* of all of
# $Y$ (to be added: an **all-reduce**).
#
# ### 1.1 The MLP: columns, then rows · MLP：先按列、再按行
#
# LLaMA's SwiGLU MLP is $Y = \big(\mathrm{SiLU}(XG) \odot XU\big)D$ with $G, U$ of $h\times h'$
# and $D$ of $h' \times h$. Split $G$ and $U$ by the **same** columns and $D$ by the matching rows.
# SiLU and $\odot$ act element by element, so card $i$'s $Z_i = \mathrm{SiLU}(XG_i)\odot XU_i$ is
# exactly the $i$-th block of columns of $Z$ — no communication — and $Z_iD_i$ is a partial sum:

# %%
def silu(z):
    return z / (1 + sp.exp(-z))  # SiLU(z) = z·σ(z)


def swiglu_z(X, G, U):  # Z = SiLU(XG) ⊙ XU, element by element
    return (X * G).applyfunc(silu).multiply_elementwise(X * U)


h, h_ff = 2, 4
X = sp.Matrix(1, h, lambda i, j: sp.Symbol(f"x_{j}"))
G, U = (sp.Matrix(h, h_ff, lambda i, j, c=c: sp.Symbol(f"{c}_{i}{j}")) for c in "gu")
D = sp.Matrix(h_ff, h, lambda i, j: sp.Symbol(f"d_{i}{j}"))
Z = swiglu_z(X, G, U)
cols = [slice(0, h_ff // 2), slice(h_ff // 2, h_ff)]  # card 1's columns, card 2's
Z_cards = [swiglu_z(X, G[:, c], U[:, c]) for c in cols]
print("Z_i is block i of Z's columns:", all(Z_cards[i] == Z[:, c] for i, c in enumerate(cols)))
print("Z₁D₁ + Z₂D₂ − Z D = 0:",
      (Z_cards[0] * D[cols[0], :] + Z_cards[1] * D[cols[1], :] - Z * D).expand().is_zero_matrix)

# %% [markdown]
# So the whole MLP costs **one** all-reduce, at its end. The other order would not work: split
# $G$ by rows and each card holds a partial sum $P_i$ of $XG$, but SiLU is not additive —

# %%
a, b = sp.symbols("a b")
gap = silu(a + b) - silu(a) - silu(b)
print("SiLU(a + b) − SiLU(a) − SiLU(b) at a = b = 1:", sp.N(gap.subs({a: 1, b: 1}), 6))

# %% [markdown]
# — so the partial sums would have to be all-reduced *before* the nonlinearity, and again after
# $D$. Column-then-row needs one collective per MLP in forward; the same argument holds for any
# elementwise activation (GeLU in GPT, Megatron's case: Shoeybi et al. 2019, arXiv 1909.08053, §3).
#
# ### 1.2 Attention: whole heads per card · 注意力：按头切分
#
# Attention is column-then-row as well: the columns of $W^Q, W^K, W^V$ come in heads, and heads
# never mix until $W^O$. Card $i$ takes $N/t$ query heads and $N_{kv}/t$ key/value heads (whole
# heads: $t$ must divide $N_{kv}$ as well as $N$ under GQA), computes its heads' attention alone,
# and multiplies by its rows of $W^O$: a partial sum, one all-reduce. A layer of the tiny LLaMA
# (notebook 05's model) on $t$ = `RANKS` cards:

# %%
tiny = shapes.get("tiny")
print(f"N = {tiny.num_heads} heads, N_kv = {tiny.num_kv_heads}, h = {tiny.hidden_size}, "
      f"h' = {tiny.intermediate_size}, V = {tiny.vocab_size}; each of t = {RANKS} cards: "
      f"{tiny.num_heads // RANKS} query heads, {tiny.num_kv_heads // RANKS} key/value head(s), "
      f"{tiny.intermediate_size // RANKS} of the h' columns, {tiny.vocab_size // RANKS} of the V rows")
try:
    ParallelDims(tp=4).check(tiny)
except ValueError as e:
    print("t = 4:", e)

# %% [markdown]
# ## 2. On two real ranks · 在两个真实进程上运行
#
# The same splits with `torch.distributed`, each rank holding only its block of each matrix and
# calling `comm` (which counts every collective): the column split all-gathers, the row split
# all-reduces, the MLP runs column-then-row with its one all-reduce. The rank function is
# `demos.split_matmul`; `demos.split_inputs` draws the same float64 $X, W, G, U, D$ on every
# rank and here:

# %%
show(demos.split_matmul)

# %%
runs = launch(demos.split_matmul, RANKS)
x = demos.split_inputs()
one = {"column": x["X"] @ x["W"], "row": x["X"] @ x["W"],
       "mlp": demos.mlp_reference(x["X"], x["G"], x["U"], x["D"])}
for name, shp in runs[0]["shapes"].items():
    print(f"rank 0 holds {name:24s} {shp}")
for res in runs:
    for k, want in one.items():
        gap = (res[k] - want).abs().max().item()
        assert gap < 1e-12, (res["rank"], k, gap)
    print(f"rank {res['rank']}: column, row and MLP results equal one process's "
          "(max |Δ| < 1e-12: equal up to rounding)")
partial_gap = (runs[0]["partial"] - one["row"]).abs().max().item()
print(f"rank 0's partial sum X₁W₁ alone is off by up to {partial_gap:.2f}: the all-reduce is needed")
for rec in runs[0]["comm"]:
    print(f"{rec.tag:6s}: {rec.op:10s} of {rec.buffer_bytes // 8} float64 elements "
          f"(b·s·h = {x['X'].numel()}), rank 0 sends {rec.sent_bytes} B")

# %% [markdown]
# The row split and the MLP add their partial sums in a different order from one process's
# matmul, so their last bits may differ (float addition is not associative): hence "up to
# rounding". One collective of $b\cdot s\cdot h$ elements each; an all-reduce sends
# $2\frac{t-1}{t}$ of its buffer per rank (notebook 05 §2), an all-gather $\frac{t-1}{t}$.
#
# ## 3. Megatron's f and g · 通信算子 f 与 g
#
# Training also needs the backward pass. Megatron-LM writes the communication of a
# column-then-row block as two conjugate operators (Shoeybi et al. 2019, Fig. 3):
# **f** before the column-parallel matmul (identity in forward; in backward the input's gradient
# is a partial sum from each card's columns: all-reduce) and **g** after the row-parallel one
# (all-reduce in forward; identity in backward, the gradient of a sum goes to every term):

# %%
def box(ax, x, y, text, color, w=1.5, h=0.62):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.04",
                                facecolor=color, edgecolor="black", linewidth=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=9)


def arrow(ax, x0, y0, x1, y1):
    ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="->", lw=0.9, color="black"))


def block(ax, title, inner):
    box(ax, 0, 0, "X\n(b, s, h)", "white", w=1.1)
    box(ax, 1.7, 0, "f", plots.PALETTE[1], w=0.7)
    for r, y in enumerate((1.1, -1.1)):
        box(ax, 3.6, y, inner[0].format(r=r), plots.PALETTE[5], w=2.1)
        box(ax, 5.9, y, inner[1].format(r=r), plots.PALETTE[5], w=1.9)
        arrow(ax, 2.05, 0, 2.55, y)
        arrow(ax, 4.65, y, 4.95, y)
        arrow(ax, 6.85, y, 7.65, 0)
        ax.text(2.55, y + 0.45, f"rank {r}", fontsize=8, color="0.3")
    box(ax, 8.0, 0, "g", plots.PALETTE[2], w=0.7)
    box(ax, 9.5, 0, "Y\n(b, s, h)", "white", w=1.1)
    arrow(ax, 0.55, 0, 1.35, 0)
    arrow(ax, 8.35, 0, 8.95, 0)
    ax.text(4.75, 0, "f: forward identity, backward all-reduce (sum)\n"
            "g: forward all-reduce (sum), backward identity", ha="center", va="center", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_xlim(-0.7, 10.2)
    ax.set_ylim(-1.9, 1.9)
    ax.axis("off")


fig, axes = plt.subplots(2, 1, figsize=(8, 5.4))
block(axes[0], "MLP (SwiGLU): gate and up by columns, down by rows",
      ["SiLU(X G{r}) ⊙ X U{r}\n(b, s, h'/t)", "Z{r} D{r}\n(b, s, h) partial"])
block(axes[1], "Attention: q, k, v by columns (whole heads), o_proj by rows",
      ["heads of rank {r}\nN/t query, N_kv/t key/value", "O{r} W{r}ᴼ\n(b, s, h) partial"])
fig.tight_layout()
plots.save(fig, "06_f_and_g")
plt.show()

# %% [markdown]
# In `llmtrain.parallel.tp_comm` (what tensor parallelism sends; the layers that call it are in
# `llmtrain.parallel.tensor_parallel`) they are `autograd.Function`s, forward and backward side
# by side, every collective through `comm` on the tensor-parallel `group`, tagged by direction:

# %%
show(tp_comm._CopyToTP)

# %%
show(tp_comm._ReduceFromTP)

# %% [markdown]
# A layer has two such blocks, so **2 all-reduces of $b\cdot s\cdot h$ in forward and 2 in
# backward**, whatever $t$. This holds because q, k, v are *one* fused column-parallel matmul
# (rank $r$'s rows of the fused weight are $[W^Q_r; W^K_r; W^V_r]$), and gate and up another: one
# f each. With five separate column-parallel projections, each input's gradient is all-reduced on
# its own: 5 in backward (§6). `ColumnParallelLinear.forward` is f then the local matmul;
# `RowParallelLinear.forward` the local matmul then g:

# %%
show(tensor_parallel.ColumnParallelLinear.forward)

# %%
show(tensor_parallel.RowParallelLinear.forward)

# %% [markdown]
# The embedding and the output layer are split by vocabulary: rank $r$ holds rows
# $[rV/t, (r+1)V/t)$ of each when $t$ divides $V$; otherwise the first $V \bmod t$ ranks hold
# one row more (`mesh.shard_range`, `torch.tensor_split`'s rule). A token outside a rank's rows
# looks up zeros, and g sums the ranks' lookups. The logits stay split: the cross entropy
# (Megatron's vocab-parallel loss) all-reduces three numbers per token — the max logit, the
# target's logit and $\sum e^{z}$ — and never gathers the $b\cdot s\cdot V$ logits.
# `tensor_parallel.apply(model, group)` puts all of this into the reference LLaMA in place
# (RMSNorm weights stay whole on every rank).
#
# ### 3.1 Sequence parallelism · 序列并行
#
# Between the blocks, everything (RMSNorm, the residual additions) is replicated: $t$ ranks do
# the same work on the same $b\cdot s\cdot h$ activations and each keeps a copy. Korthikanti et
# al. (MLSys 2023, arXiv 2205.05198, §4.2.2) split those along the **sequence**: g becomes a
# reduce-scatter (sum, then keep $s/t$ tokens), f an all-gather of the tokens. An all-reduce *is*
# a reduce-scatter plus an all-gather, so the bytes are the same; the norms now work on $s/t$
# tokens, and their weights' gradients (each rank sees only its tokens) are all-reduced:

# %%
show(tp_comm._GatherFromSP)

# %%
show(tp_comm._ReduceScatterToSP)

# %% [markdown]
# ## 4. The whole LLaMA in TP, against one process and DTensor · 整个 LLaMA：与单进程和 DTensor 对照
#
# One launch (`demos.llama_tp`) runs, on each of `RANKS` ranks, one forward and backward of the
# tiny LLaMA in float64 (batch 2, 16 tokens), from the same full state_dict, five ways: one
# process on the whole model; ours (`tensor_parallel.apply`) without and with sequence
# parallelism; PyTorch's DTensor (`parallelize_module` with `ColwiseParallel` /
# `RowwiseParallel` / `SequenceParallel`, and `loss_parallel`) without and with. Each TP model is
# loaded with `tensor_parallel.load_full_state_dict` (each rank cuts out its shard) and its
# gradients gathered back with `tensor_parallel.full_grads`:

# %%
show(tensor_parallel.apply)

# %%
tp_runs = launch(demos.llama_tp, RANKS, "tiny", 2, 16, timeout=300)
ref = tp_runs[0]["single"]
V = tiny.vocab_size
TOL = 1e-12  # float64 end to end: the ranks' other order of additions stays far below this
ways = {"tp": "ours, TP", "sp": "ours, TP + SP", "dtensor": "DTensor, TP", "dtensor-sp": "DTensor, TP + SP"}
for key, label in ways.items():
    worst = {"loss": 0.0, "logits": 0.0, "grads": 0.0}
    for r, run in enumerate(tp_runs):
        got = run[key]
        worst["loss"] = max(worst["loss"], abs(got["loss"].item() - ref["loss"].item()))
        shard = ref["logits"][..., r * V // RANKS:(r + 1) * V // RANKS]  # rank r's vocabulary rows
        worst["logits"] = max(worst["logits"], (got["logits"] - shard).abs().max().item())
        worst["grads"] = max(worst["grads"], max((got["grads"][k] - g).abs().max().item()
                                                 for k, g in ref["grads"].items()))
        assert got["grads"].keys() == ref["grads"].keys()
    assert all(v < TOL for v in worst.values()), (key, worst)
    print(f"{label:17s}: loss, this rank's logits and all {len(ref['grads'])} gradients "
          f"within {TOL:.0e} of one process on every rank (equal up to rounding)")
for mine, theirs in (("tp", "dtensor"), ("sp", "dtensor-sp")):
    gap = max((run[mine]["grads"][k] - run[theirs]["grads"][k]).abs().max().item()
              for run in tp_runs for k in ref["grads"])
    assert gap < TOL, (mine, gap)
    print(f"{ways[mine]} vs {ways[theirs]}: every gradient within {TOL:.0e}")

# %% [markdown]
# Equal to one process, and to DTensor, up to rounding: the ranks add their partial sums in
# another order than one process's matmuls (and DTensor's in yet another), which moves the last
# bits. In float64 — the reference LLaMA computes its norms, softmax and loss in float64 for a
# float64 model — that stays many orders of magnitude below the asserted $10^{-12}$, on any CPU.
# `tests/test_tensor_parallel.py` checks the same equalities on an odd GQA shape, on 2 and 4
# ranks, and after SGD steps.
#
# ## 5. Bytes per rank · 每个进程的字节数
#
# ### 5.1 Parameters · 参数
#
# Every matrix, the embedding and the output layer are split by $t$; the RMSNorm weights
# ($2h$ per layer and $h$ at the end) stay whole. That is `memory.params_per_gpu`'s TP division
# (notebook 11). Measured on each rank, in bf16:

# %%
full_bytes = ref["param_bytes"]
print(f"one process: {full_bytes:,} B of bf16 parameters ({full_bytes // 2:,} parameters)")
for key in ways:
    per_rank = {run[key]["param_bytes"] for run in tp_runs}
    formula = 2 * memory.params_per_gpu(tiny, ParallelDims(tp=RANKS))
    assert per_rank == {formula}, (key, per_rank, formula)
    print(f"{ways[key]:17s}: {formula:,} B on every rank = 2 B × params_per_gpu(tiny, tp={RANKS})")
norms = (2 * tiny.num_layers + 1) * tiny.hidden_size
print(f"= ({full_bytes // 2:,} − {norms} norm weights) / {RANKS} + {norms}, times 2 B")

# %% [markdown]
# ### 5.2 Activations · 激活值
#
# What autograd keeps for backward, measured exactly on each rank (`activations.measure`, as in
# notebook 09; weights in bf16, batch 2, 16 tokens), against the closed form
# `activation_formulas.tp_saved_bytes`. It sorts every saved tensor into three kinds: **sharded**
# (inside a block, split by heads or columns: divided by $t$), **replicated** (between the
# blocks, every rank keeps it whole: the norms' inputs and outputs, which the column-parallel
# matmuls save as their input; divided by $t$ only with sequence parallelism) and **whole**
# (token ids, RoPE tables: never divided):

# %%
show(activation_formulas.tp_split_bytes)

# %%
terms = activation_formulas.tp_saved_bytes_terms(tiny, 2, 16, RANKS, dtype="bf16")
print(f"{'one decoder layer of the tiny LLaMA, bf16, b = 2, s = 16':52s} {'kind':>10s} "
      f"{'one device':>10s} {'TP':>7s} {'TP + SP':>8s}")
for name, (kind, nbytes_) in terms.items():
    if name.startswith("layer: "):
        per = [activation_formulas.tp_split_bytes({name: (kind, nbytes_)}, RANKS, sp_) for sp_ in (False, True)]
        print(f"{name[7:]:52s} {kind:>10s} {nbytes_:>10,} {per[0]:>7,} {per[1]:>8,}")

# %%
saved = {"one process": (ref["saved_bytes"], activation_formulas.saved_bytes(tiny, 2, 16, dtype="bf16"))}
for key, sp_ in (("tp", False), ("sp", True)):
    got = {run[key]["saved_bytes"] for run in tp_runs}
    assert len(got) == 1, got  # the same on every rank
    saved[ways[key]] = (got.pop(), activation_formulas.tp_saved_bytes(
        tiny, 2, 16, RANKS, sequence_parallel=sp_, dtype="bf16"))
for label, (got, formula) in saved.items():
    print(f"{label:15s}: measured {got:>9,} B on every rank, formula {formula:>9,} B")
    assert got == formula, (label, got, formula)

# %% [markdown]
# Equal to the byte. The same split applied to Korthikanti et al.'s GPT layer (LayerNorm, a 4h
# GeLU MLP, dropout masks, 16-bit; `activation_formulas.korthikanti_layer_terms`, their §4.1)
# gives their two formulas: $sbh\left(10 + \frac{24}{t} + \frac{5as}{ht}\right)$ with tensor
# parallelism, $\frac{sbh}{t}\left(34 + \frac{5as}{h}\right)$ with sequence parallelism too —
# the 10 undivided $sbh$ are their replicated terms. In SymPy ($a$ heads, $s$ tokens, $b$
# sequences, $h$ hidden):

# %%
s_, b_, h_, a_, t_ = sp.symbols("s b h a t", positive=True)
gpt = activation_formulas.korthikanti_layer_terms(s_, b_, h_, a_)
paper = {False: s_ * b_ * h_ * (10 + 24 / t_ + 5 * a_ * s_ / (h_ * t_)),
         True: s_ * b_ * h_ / t_ * (34 + 5 * a_ * s_ / h_)}
for sp_, theirs in paper.items():
    split = activation_formulas.tp_split_bytes(gpt, t_, sp_)
    print(f"{'TP + SP' if sp_ else 'TP':7s}: {sp.factor(split)}   − paper = {sp.simplify(split - theirs)}")
print("replicated terms of their layer:", sp.factor(sum(v for k, v in gpt.values() if k == "replicated")))

# %% [markdown]
# LLaMA's layer differs from their GPT layer in its terms, not in this structure: RMSNorm keeps
# an fp32 copy of its input and its rsqrt, SwiGLU four tensors of $h'$, SDPA a logsumexp instead
# of the $5as^2b$ softmax and its dropout, and there are no dropout masks
# (`tp_saved_bytes_terms`'s docstring). For the tiny model, per rank:

# %%
labels = ["one process", f"TP, t = {RANKS}", f"TP + SP, t = {RANKS}"]
activ = [saved[k][0] for k in saved]  # measured (= formula, asserted above)
param = [full_bytes] + [2 * memory.params_per_gpu(tiny, ParallelDims(tp=RANKS))] * 2
fig, ax = plt.subplots(figsize=(7, 3.0))
y = range(len(labels))
ax.barh([i - 0.2 for i in y], [p / 1e3 for p in param], 0.4, color=plots.PALETTE[1],
        label="parameters (bf16)")
ax.barh([i + 0.2 for i in y], [a / 1e3 for a in activ], 0.4, color=plots.PALETTE[0],
        label="saved activations (bf16, b = 2, s = 16)")
ax.set_yticks(list(y), labels)
ax.invert_yaxis()
ax.set_xlabel("kB held by one rank (measured = formula)")
ax.set_title("Tiny LLaMA: bytes per rank")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2)
plots.save(fig, "06_bytes_per_rank")
plt.show()

# %% [markdown]
# ## 6. Communication per layer · 每层的通信量
#
# The collectives of that one forward + backward, counted by `comm` on rank 0, against
# `tp_comm.comm_per_model` (the per-layer formula `comm_per_layer` times $L$, plus the
# embedding, the output layer's input and the cross entropy):

# %%
show(tp_comm.comm_per_layer)

# %%
B_, S_ = 2, 16
L = tiny.num_layers
bsh = B_ * S_ * tiny.hidden_size
direction = {tp_comm.FORWARD: "forward", tp_comm.BACKWARD: "backward"}


def add(table, key, calls, elements):
    c, e = table.get(key, (0, 0))
    table[key] = (c + calls, e + elements)


for key, sp_ in (("tp", False), ("sp", True)):
    counted, formula, once = {}, {}, {}
    for rec in tp_runs[0][key]["comm"]:  # float64: 8 B per element
        add(counted, (rec.op, direction[rec.tag]), 1, rec.buffer_bytes // 8)
    for (op, d, part), tr in tp_comm.comm_per_model(tiny, RANKS, sp_, B_, S_).items():
        add(formula, (op, d), tr.calls, tr.calls * tr.elements)
        if part != "layers":
            add(once, (op, d), tr.calls, tr.calls * tr.elements)
    assert counted == formula, (key, counted, formula)
    layer = tp_comm.comm_per_layer(RANKS, sp_, B_, S_, tiny.hidden_size)
    print(f"{ways[key]} (b·s·h = {bsh:,} elements): counted on rank 0 = comm_per_model")
    print(f"   {'':8s} {'':14s} {'whole model':>22s}   per layer: (counted − once-per-model) / L")
    for (op, d), (calls, elems) in counted.items():
        c0, e0 = once.get((op, d), (0, 0))
        per = (Fraction(calls - c0, L), Fraction(elems - e0, L))
        want = layer.get((op, d), tp_comm.Traffic(0, 0))
        assert per == (want.calls, want.calls * want.elements), (key, op, d, per, want)
        per_text = f"{per[0]} × {want.elements:,} elements" if want.calls else "none: once per model only"
        print(f"   {d:8s} {op:14s} {calls:>2} calls, {elems:>7,} el.   {per_text} = comm_per_layer")

# %% [markdown]
# The once-per-model terms are the embedding's g, the output layer's f (SP: its gather) and the
# three cross-entropy all-reduces of $b(s-1)$ numbers. Per layer, the formula and the bytes one
# rank sends under the ring model (`comm.ring_bytes`), in bf16 (2 B per element):

# %%
def nbytes(x: Fraction) -> str:
    """An exact byte count, with thousands separators (a Fraction when not whole)."""
    return f"{int(x):,}" if x.denominator == 1 else str(x)


print(f"{'':16s} {'op':15s} {'dir':8s} {'calls':>5} {'elements':>9}   bytes sent per rank (bf16)")
per_layer_sent = {}
for label, sp_, fused in (("TP, fused", False, True), ("TP, separate", False, False), ("TP + SP", True, True)):
    total = Fraction(0)
    for (op, d), tr in tp_comm.comm_per_layer(RANKS, sp_, B_, S_, tiny.hidden_size,
                                              fused=fused).items():
        sent = tp_comm.sent_bytes(op, tr, RANKS, 2)
        total += sent
        print(f"{label:16s} {op:15s} {d:8s} {tr.calls:>5} {tr.elements:>9,}   {nbytes(sent)}")
    per_layer_sent[label] = total
    print(f"{'':16s} total per layer: {nbytes(total)} B = {total / (2 * bsh)} × b·s·h·2 B")

# %% [markdown]
# TP and TP + SP send the same $b\cdot s\cdot h$ traffic in forward (an all-reduce is a
# reduce-scatter plus an all-gather); in backward SP also re-gathers the two column-parallel
# inputs it did not keep (that is what divides *all* its activations by $t$) and all-reduces the
# norms' $h$ weights. "Separate" is the count with unfused q, k, v and gate, up projections —
# DTensor's plan. DTensor's own counts (`CommDebugMode`) in the same run, against ours:

# %%
ours = {}
for key in ("tp", "sp"):
    c = {"forward": {}, "backward": {}}
    for rec in tp_runs[0][key]["comm"]:
        d = c[direction[rec.tag]]
        d[rec.op] = d.get(rec.op, 0) + 1
    ours[key] = c
for mine, theirs in (("tp", "dtensor"), ("sp", "dtensor-sp")):
    for d in ("forward", "backward"):
        print(f"{'TP + SP' if mine == 'sp' else 'TP':7s} {d:8s} ours {ours[mine][d]}   "
              f"DTensor {tp_runs[0][theirs]['counts'][d]}")
dt_bwd = tp_runs[0]["dtensor"]["counts"]["backward"]
assert dt_bwd["all_reduce"] - ours["tp"]["backward"]["all_reduce"] == 3 * L  # 5 instead of 2 per layer
print(f"DTensor, TP: {dt_bwd['all_reduce']} all-reduces in backward = 5 per layer × {L} + 1 (the output "
      f"layer's input); ours {ours['tp']['backward']['all_reduce']} = 2 × {L} + 1")
dt_sp, our_sp = tp_runs[0]["dtensor-sp"]["counts"]["backward"], ours["sp"]["backward"]
assert dt_sp["reduce_scatter"] == our_sp["reduce_scatter"]
assert our_sp["all_gather"] - dt_sp.get("all_gather", 0) == 2 * L + 1  # our re-gathers
assert "all_reduce" not in dt_sp and our_sp["all_reduce"] == 2 * L + 1  # norm weights' gradients
print(f"DTensor, TP + SP, backward: the same {dt_sp['reduce_scatter']} reduce-scatters; "
      f"{2 * L + 1} all-gathers fewer (no re-gathers) and no all-reduce of the norms' weights")

# %% [markdown]
# Same forward counts. In backward, DTensor with this plan all-reduces each of the five
# column-parallel inputs' gradients separately (5 per layer instead of 2: fusing the
# projections is what gives Megatron's count). With sequence parallelism the plan is
# torchtitan's: each block's input is gathered once as a DTensor, so the gradients of the
# separate projections add up as one *partial* DTensor and are reduce-scattered once, like ours.
# It does not re-gather: it keeps the whole gathered input of each block ($b\cdot s\cdot h$),
# where Megatron (and we) keep its $1/t$ sequence shard and pay two all-gathers per layer in
# backward (that is what divides every activation by $t$ in §5.2). And its norm weights' gradients stay partial
# DTensors, summed only when read (here by `full_tensor()`, after the count), where ours are
# all-reduced during backward. All four equal one process (§4).
#
# ## 7. What it costs: why TP stays inside one node · 代价：为什么张量并行只在一个节点内
#
# Per layer and step, each rank sends $4\cdot 2\frac{t-1}{t}\, b s h \cdot 2$ bytes (bf16, TP),
# and computes $1/t$ of the layer's FLOPs. Both grow with $b\cdot s$, so their ratio — FLOPs per
# byte sent — depends only on the shape and $t$. For LLaMA-7B ($s$ = 2048, $t$ = 8), with the
# layer's training FLOPs from `llmtrain.cost.flops` (notebook 11: forward + backward, SDPA):

# %%
big, t8, S = shapes.get("llama-7b"), 8, 2048
layer_flops = (flops.training_flops(big.replace(num_layers=2), 1, S, attention="sdpa")
               - flops.training_flops(big.replace(num_layers=1), 1, S, attention="sdpa"))
sent_per_layer = sum(tp_comm.sent_bytes(op, tr, t8, 2) for (op, d), tr in
                     tp_comm.comm_per_layer(t8, False, 1, S, big.hidden_size).items())
per_byte = Fraction(layer_flops, t8) / sent_per_layer
print(f"one layer, one sequence of {S} tokens: {layer_flops:,} FLOPs; each of {t8} ranks does "
      f"{layer_flops // t8:,} and sends {nbytes(sent_per_layer)} B")
print(f"→ {float(per_byte):,.0f} FLOPs per byte sent, at any batch size")

# %% [markdown]
# To hide the communication behind the compute, a link must move a byte in the time the GPU does
# that many FLOPs. Vendor peak numbers (what the spec sheets promise; measured all-reduce
# bandwidth and achieved FLOPs are lower):
#
# - **NVIDIA H100 Tensor Core GPU datasheet** (H100 SXM5): BF16 dense Tensor Core 989.5 TFLOPS
#   (the sheet prints 1,979 "with sparsity"); NVLink 4: 900 GB/s per GPU, counting both
#   directions (18 links), so 450 GB/s each way; its host link PCIe Gen5: 128 GB/s, both directions.
# - **PCI Express Base Specification 5.0** (PCI-SIG, 2019): 32 GT/s per lane, 128b/130b encoding:
#   a x16 link moves $32\cdot16\cdot\frac{128}{130}/8 \approx 63$ GB/s per direction.
# - **NVIDIA ConnectX-7 adapter datasheet** / Quantum-2 InfiniBand: NDR, 400 Gb/s per port =
#   50 GB/s per direction (a DGX H100 has eight such ports, one per GPU, for the network
#   between nodes).

# %%
# the published numbers (data, with their sources above), and what each means per direction
peak_flops = 989.5e12  # H100 SXM5 datasheet: BF16 dense Tensor Core
nvlink_both = 900e9    # H100 SXM5 datasheet: NVLink 4, both directions
ndr_port = 400e9       # ConnectX-7 datasheet: InfiniBand NDR, bits per second per port
links = {"NVLink 4 (one node)": nvlink_both / 2, "PCIe Gen5 x16": 32e9 * 16 * 128 / 130 / 8,
         "InfiniBand NDR (between nodes)": ndr_port / 8}
print(f"H100 SXM5 datasheet: BF16 dense {peak_flops / 1e12:.1f} TFLOP/s; NVLink 4 {nvlink_both / 1e9:.0f} GB/s "
      f"both directions = {links['NVLink 4 (one node)'] / 1e9:.0f} GB/s each way; "
      f"NDR {ndr_port / 1e9:.0f} Gb/s = {ndr_port / 8e9:.0f} GB/s per direction")
compute_s = layer_flops / t8 / peak_flops
print(f"one layer on one H100 at peak: {compute_s * 1e3:.3f} ms of compute per sequence of {S} tokens")
ratio = {}
for name, bw in links.items():
    comm_s = float(sent_per_layer) / bw
    ratio[name] = comm_s / compute_s
    print(f"{name:31s} {bw / 1e9:6.1f} GB/s: {comm_s * 1e3:.3f} ms sending = "
          f"{ratio[name]:4.2f} × the compute")

# %% [markdown]
# At peak FLOPs, inside an NVLink node the all-reduces take about three quarters of the layer's
# compute. No training run computes at peak, though: large runs report a model FLOPs utilisation
# (MFU) around 40 % (Llama 3 405B: 41–43 %, notebook 08). At 40–50 % MFU the compute takes 2 to 2.5
# times as long, while the bytes to send stay the same. The same ratios at a realistic MFU:

# %%
for mfu in (0.4, 0.5):
    print(f"at MFU {mfu:.0%}: " + ", ".join(f"{name.split(' (')[0]} {r * mfu:.2f} ×" for name, r in ratio.items()))
assert 0.3 <= ratio["NVLink 4 (one node)"] * 0.4 and ratio["NVLink 4 (one node)"] * 0.5 <= 0.4

# %% [markdown]
# Inside an NVLink node the all-reduces then take about a third of the compute time: affordable,
# and real systems hide part of it by overlapping them with the matmuls (cutting them in chunks).
# Over PCIe or InfiniBand the GPU would still wait two to three times longer than it computes, at
# every layer, in forward and backward: the communication of tensor parallelism is on the
# critical path (each layer needs the result before the next can start), unlike data
# parallelism's gradient all-reduce, which overlaps with backward (notebook 05). Across nodes one
# uses pipeline parallelism (notebook 07), which sends one activation per micro-batch to a
# neighbour, and data parallelism; TP stays inside the node, which is why $t$ rarely exceeds the 8
# GPUs of a node (notebook 08 combines the three).
#
# TP has a second cost that no byte count shows: each rank multiplies matrices $t$ times smaller, and
# "for insufficiently-large layers, modern GPUs might not perform these sub-matrix computations with
# peak efficiency" (Narayanan et al. 2021, §3.3.2). Its MFU drops as $t$ grows, which raises the ratio
# above again. And $t$ has an upper limit: here, as in Megatron-LM (which requires the number of
# query groups to be a multiple of the tensor-parallel size), each rank holds whole key/value heads,
# so $t$ must divide $N_{kv}$. Inference engines such as vLLM and SGLang (`QKVParallelLinear`) go
# further: when $t$ exceeds $N_{kv}$ they give each rank one key/value head and replicate every head
# on $t/N_{kv}$ ranks, at the cost of holding and computing those heads several times.
#
# **Exercise.** Llama-2 70B ($h$ = 8192, $N$ = 64, $N_{kv}$ = 8) trains with $t$ = 8, one sequence
# of 4096 tokens, bf16. How many bytes does each rank send per layer in forward, with and without
# sequence parallelism? And what is the largest $t$ this model takes?
#
# <details><summary>Answer</summary>
#
# Without SP: 2 all-reduces of $b\cdot s\cdot h$ elements ($1\cdot 4096\cdot 8192$, 2 bytes each),
# each sending $2\cdot\frac{7}{8}$ of it: 234,881,024 B per layer (80 layers: 18.8 GB per forward).
# With SP: 2 all-gathers + 2 reduce-scatters, each $\frac{7}{8}$: the same 234,881,024 B. The largest
# $t$ is 8: $t$ must divide $N_{kv}$ = 8 (whole key/value heads per rank);
# `ParallelDims(tp=16).check` says so. The next cell computes it.
# </details>

# %%
l70 = shapes.get("llama2-70b")
print(f"b·s·h = 1·4096·{l70.hidden_size} = {4096 * l70.hidden_size:,} elements = {2 * 4096 * l70.hidden_size:,} B in bf16")
for sp_ in (False, True):
    fwd = {op: tr for (op, d), tr in tp_comm.comm_per_layer(8, sp_, 1, 4096, l70.hidden_size).items()
           if d == "forward"}
    sent = sum(tp_comm.sent_bytes(op, tr, 8, 2) for op, tr in fwd.items())
    print(f"{'TP + SP' if sp_ else 'TP':7s}: {', '.join(f'{tr.calls} × {op}' for op, tr in fwd.items())}"
          f" → {nbytes(sent)} B per layer forward, {float(sent * l70.num_layers) / 1e9:.1f} GB for 80 layers")
try:
    ParallelDims(tp=16).check(l70)
except ValueError as e:
    print("t = 16:", e)

# %% [markdown]
# ## 要点 · Key points
#
# - 按列切分：$[XW_1, XW_2] = XW$，各卡得到输出的不同列，需要拼接（all-gather）；按行切分：$X_1W_1 + X_2W_2 = XW$，各卡得到部分和，需要求和（all-reduce）。SymPy 证明两者都精确成立。
# - MLP 先按列（gate、up 用相同的列）、再按行（down）切分：SiLU 和 ⊙ 逐元素计算，各卡的 $Z_i$ 正好是 $Z$ 的第 $i$ 个列块，整个 MLP 前向只需一次 all-reduce。若先按行切分就不行：SiLU(a+b) ≠ SiLU(a)+SiLU(b)（a = b = 1 时相差 0.299477）。
# - 注意力按头切分，张量并行度 $t$ 必须整除头数 $N$ 和键值头数 $N_{kv}$（本实现与 Megatron-LM 相同；vLLM 等推理引擎在 $t > N_{kv}$ 时复制键值头）。
# - Megatron 的 f（前向恒等、反向 all-reduce）和 g（前向 all-reduce、反向恒等）：融合 qkv 和 gate/up 后，每层前向、反向各 2 次 all-reduce，每次 $b\cdot s\cdot h$ 个元素。
# - 在 2 个进程上，整个小型 LLaMA 的张量并行（含序列并行）与单进程、DTensor 的损失和全部梯度相差小于 1e-12，只是舍入误差。
# - 每个进程的参数字节和保存的激活值都与公式逐字节相等：$t$ = 2 时参数从 250,496 B 降到每进程 125,568 B（RMSNorm 权重不切分）；激活值从 238,708 B 降到 161,492 B，加上序列并行降到 120,212 B。
# - 序列并行把块与块之间原本在各卡上复制（replicated）的部分也按 $t$ 切分，正好得到 Korthikanti 等人的 $(sbh/t)(34 + 5as/h)$；前向通信字节不变。
# - LLaMA-7B、$t$ = 8、$s$ = 2048 时，每发送 1 字节只做 2,903 次浮点运算。按峰值算力，NVLink 上的通信时间是计算的 0.76 倍；按 40–50% 的 MFU 只有 0.30–0.38 倍，而跨节点的 InfiniBand 是它的 9 倍。张量并行每层都要通信，所以只放在同一个 NVLink 节点内。
# - 张量并行的第二个代价是每卡的矩阵乘法变小，GPU 难以跑满（Narayanan et al. 2021, §3.3.2）。
