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
# # Training memory · 训练显存估计
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llmtrain/llmtrain/blob/main/notebooks/11_memory_estimation.ipynb)
#
# The slides estimate the memory of each GPU while training as
#
# $$\underbrace{\frac{16P}{N}}_{\text{模型与优化器}} + \underbrace{2LBTH + 12BTV}_{\text{激活值}} + \underbrace{6}_{\text{其他}}$$
#
# and work one example: two A100-80G training LLaMA-7B with $B = 8$ need 50 + 6.2 + 10 = 66 GB
# per card. After this notebook you can
#
# - derive the 16 of $16P$ byte by byte, and change it (fp32, pure bf16, 8-bit optimizer states);
# - divide it the way ZeRO stages 1, 2, 3 do, and reproduce the ZeRO paper's numbers;
# - count activations four ways — the slides', Korthikanti et al.'s, and *exactly* what our reference
#   LLaMA and Hugging Face's `LlamaForCausalLM` keep — at 7B scale on a laptop;
# - redo the slides' worked example, and see which units make it add up;
# - check an estimate against the measured peak of a real training step.
#
# Units: **GB** = 10⁹ bytes, **GiB** = 2³⁰ bytes, always said. The code is `llmtrain.memory`.

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
import sympy as sp
import torch

from llmtrain import memory, params, plots, shapes, show
from llmtrain.dist import zero
from llmtrain.memory import GB, GIB

plots.use_style()
torch.manual_seed(0)
S7 = shapes.get("llama-7b")
P7 = params.count(S7)
print(f"LLaMA-7B: P = {P7:,} parameters (notebook 10)")

# %% [markdown]
# ## 1. Model states: where 16P comes from
#
# > 模型参数量为 $P$，模型、梯度、优化器共计需要 $16P$ 字节显存；例如 7B 模型需要 $16 \times 7B = 112GB$
#
# Mixed-precision training with Adam (Micikevicius et al., ICLR 2018) keeps, per parameter:
# 16-bit weights for the forward and backward passes, 16-bit gradients, an fp32 *master* copy of
# the weights that the optimizer updates, and Adam's two fp32 moments $m$ and $v$.

# %%
w16, g16, master, m, v = sp.symbols("w_16 g_16 master_32 m_32 v_32", positive=True)
bytes_per_param = {w16: 2, g16: 2, master: 4, m: 4, v: 4}
per_param = w16 + g16 + master + m + v
print("bytes per parameter:", per_param, "=", per_param.subs(bytes_per_param))
print("llmtrain.memory    :", memory.state_bytes_per_param("mixed", "adamw"))

# %% [markdown]
# The same bookkeeping for other recipes — pure fp32 (no master copy needed), pure bf16 (states in
# bf16 too), SGD with momentum (one state), and 8-bit Adam states (Dettmers et al. 2022; block
# scales ignored):

# %%
for precision, optimizer in [("mixed", "adamw"), ("fp32", "adamw"), ("bf16", "adamw"),
                             ("mixed", "sgd"), ("mixed", "adamw8bit")]:
    per = memory.state_bytes_per_param(precision, optimizer)
    total = sum(per.values())
    print(f"{precision:>5} + {optimizer:<9} {total:>4.0f} bytes/param  {per}")

# %% [markdown]
# The slides' 112 GB takes the nominal $P = 7 \times 10^9$ and decimal GB. With the true count
# (6.74 B) it is 107.8 GB, or 100.4 GiB:

# %%
nominal = sum(memory.model_state_bytes(7 * 10**9).values())
true = sum(memory.model_state_bytes(P7).values())
print(f"16 × 7e9      = {nominal / GB:.1f} GB")
print(f"16 × {P7:,} = {true / GB:.1f} GB = {true / GIB:.1f} GiB")

# %% [markdown]
# Adam's states are real tensors; the test `tests/test_memory.py::test_real_optimizer_states_match`
# checks these byte counts against `torch.optim.AdamW`, `SGD` and `Adafactor` (whose second moment
# is factored into a row and a column vector per matrix — the slides' table lists it for PaLM):

# %%
for opt in ["adamw", "adafactor"]:
    b = memory.model_state_bytes(S7, precision="mixed", optimizer=opt)["optimizer"]
    print(f"LLaMA-7B optimizer states, {opt:<9}: {b / GB:6.2f} GB")

# %% [markdown]
# ## 2. ZeRO: dividing the 16P
#
# > 配合 ZeRO 技术将模型参数与优化器占用分配到每个 GPU；N 张 GPU，使用 ZeRO-3 每张 GPU 显存占用 $\frac{16P}{N}$
#
# ZeRO (Rajbhandari et al., SC'20) partitions the model states over the $N$ data-parallel ranks in
# three stages: optimizer states (stage 1, $P_{os}$), then gradients (stage 2, $P_{os+g}$), then
# the weights themselves (stage 3, $P_{os+g+p}$). With $K = 12$ bytes of optimizer state (master
# copy + $m$ + $v$), `llmtrain.dist.zero.formula` (derived term by term in notebook 05, which also
# runs the stages on real processes and measures these bytes):

# %%
P, N = sp.symbols("P N", positive=True)
stages = {z: zero.formula(z, P, N) for z in range(4)}
for z, expr in stages.items():
    print(f"ZeRO-{z}: {sp.simplify(expr)}")

# %% [markdown]
# The ZeRO paper's Figure 1: a 7.5B model on $N_d = 64$ GPUs needs 120 GB, 31.4 GB, 16.6 GB and
# 1.9 GB per GPU:

# %%
for z in range(4):
    got = sum(memory.model_state_bytes(7_500_000_000, zero=z, dp=64).values())
    print(f"ZeRO-{z}: {got / GB:7.3f} GB   (formula {float(stages[z].subs({P: 7.5e9, N: 64})) / 1e9:7.3f})")

# %%
gpus = [1, 2, 4, 8, 16, 32, 64]
fig, ax = plt.subplots(figsize=(7, 4))
for z in range(4):
    ax.plot(gpus, [sum(memory.model_state_bytes(P7, zero=z, dp=n).values()) / GIB for n in gpus],
            marker="o", label=f"ZeRO-{z}" if z else "plain data parallel")
ax.axhline(80 * GB / GIB, color="gray", ls="--", lw=1)
ax.text(64, 80 * GB / GIB + 2, "A100/H100 80 GB", color="gray", fontsize=8, ha="right")
ax.set_xscale("log", base=2)
ax.set_xticks(gpus, [str(g) for g in gpus])
ax.set_xlabel("data-parallel GPUs N")
ax.set_ylabel("model states per GPU (GiB)")
ax.set_title("LLaMA-7B, mixed precision AdamW")
ax.legend()
plots.save(fig, "11_zero_stages")
plt.show()

# %% [markdown]
# ZeRO-1 and -2 level off at $4P$ and $2P$ (the replicated 16-bit weights and gradients); only
# stage 3 keeps falling like the slides' $16P/N$.

# %% [markdown]
# ## 3. Activations
#
# > 若保存所有激活值，7B 模型会产生 17GB 激活值占用（推导见教材）；Transformer训练常保留每一层的输入作为
# > 激活值，批次大小为B，则需要 $2BTH$ 字节保存每层输入；还需要 $4BTV$ 字节保存输出层 softmax 输入
#
# Four ways to count the activations of LLaMA-7B (bf16, $B = 1$, $T = 2048$), from the slides'
# to exact ones (`memory.activation_bytes`):
#
# - **textbook** — the slides: keep each layer's input, $L \cdot 2BTH + 4BTV$ (this *is* full
#   recomputation);
# - **korthikanti** — Korthikanti et al. (MLSys 2023), $sbh(34 + 5as/h)$ per layer, derived for a
#   GPT layer (LayerNorm, GeLU MLP of width $4h$, dropout), not for LLaMA;
# - **reference**, **hf-eager**, **hf-sdpa** — closed forms, exact to the byte, for our reference
#   LLaMA and for transformers' `LlamaForCausalLM` with eager or SDPA attention (notebook 09 lists
#   every tensor; `tests/test_activations.py` checks the closed forms against measurements on random
#   shapes). The `hf-*` forms were verified on transformers 5.24.0 with torch 2.13.0, the releases
#   pinned in `requirements/constraints.txt`; another release may save other tensors (re-run
#   `tests/test_activations.py` to find out).

# %%
import transformers

print("transformers", transformers.__version__)
B1, T1 = 1, 2048
cases = [("textbook", "full", {}), ("korthikanti", "none", {}), ("korthikanti", "selective", {}),
         ("korthikanti", "full", {}), ("reference", "none", {"attention": "eager"}),
         ("reference", "none", {"attention": "sdpa"}), ("reference", "selective", {"attention": "sdpa"}),
         ("reference", "full", {"attention": "sdpa"}), ("hf-eager", "none", {}), ("hf-sdpa", "none", {}),
         ("hf-sdpa", "full", {})]
print(f"{'model of activations':<34} {'GB':>7} {'GiB':>7}")
for impl, rc, kw in cases:
    b = memory.activation_bytes(S7, B1, T1, dtype="bf16", impl=impl, recompute=rc, **kw)
    name = f"{impl}{' ' + kw['attention'] if kw else ''}, recompute={rc}"
    print(f"{name:<34} {b / GB:7.2f} {b / GIB:7.2f}")

# %% [markdown]
# The closed forms are checked here at full 7B scale too: the models are built on the meta device and
# run under `FakeTensorMode` (fake CPU tensors: shapes and dtypes, no memory, no arithmetic), and
# `activations.measure` counts what autograd saves.

# %%
from transformers import LlamaForCausalLM

from llmtrain import activations
from llmtrain.llama import Llama

ids = torch.zeros(B1, T1, dtype=torch.long)
with torch.device("meta"):
    built = {"hf-eager": LlamaForCausalLM(S7.to_hf_config(attn_implementation="eager")),
             "hf-sdpa": LlamaForCausalLM(S7.to_hf_config(attn_implementation="sdpa")),
             "reference": Llama(S7, attn_impl="sdpa")}
for impl, m in built.items():
    m.to(torch.bfloat16)
    measured = activations.measure(m, ids, labels=ids, fake=True).total_bytes
    kw = {"attention": "sdpa"} if impl == "reference" else {}
    closed = memory.activation_bytes(S7, B1, T1, dtype="bf16", impl=impl, recompute="none", **kw)
    print(f"{impl:<10} measured {measured:>15,} B   closed form {closed:>15,} B   equal: {measured == closed}")

# %% [markdown]
# Where could "17 GB" come from? The slides defer to the textbook. What is certain is what it depends
# on: the batch $B$, the length $T$ (through the $T^2$ attention probabilities of an eager kernel),
# the dtype and the attention kernel. The same 7B model keeps 12.6 GB with SDPA and 38.3 GB with the
# eager kernel at $B = 1$, $T = 2048$; each curve crosses 17 GB somewhere:

# %%
Ts = [256 * i for i in range(1, 17)]
fig, ax = plt.subplots(figsize=(7, 4))
for impl, rc, kw in [("hf-eager", "none", {}), ("korthikanti", "none", {}), ("hf-sdpa", "none", {}),
                     ("korthikanti", "selective", {}), ("textbook", "full", {})]:
    ys = [memory.activation_bytes(S7, 1, t, impl=impl, recompute=rc, **kw) / GB for t in Ts]
    ax.plot(Ts, ys, marker=".", label=f"{impl} ({rc})")
ax.axhline(17, color="gray", ls="--", lw=1)
ax.text(Ts[0], 18, "the slides' 17 GB", color="gray", fontsize=8)
ax.set_xlabel("sequence length T (B = 1)")
ax.set_ylabel("activations (GB, 10⁹ B)")
ax.set_ylim(0, 80)
ax.set_title("LLaMA-7B, bf16: activations kept for backward")
ax.legend(fontsize=8)
plots.save(fig, "11_activations_vs_T")
plt.show()

# %%
for impl, rc in [("hf-sdpa", "none"), ("korthikanti", "selective"), ("korthikanti", "none"), ("hf-eager", "none")]:
    t17 = next((t for t in range(64, 32768, 64)
                if memory.activation_bytes(S7, 1, t, impl=impl, recompute=rc) >= 17 * GB), None)
    print(f"{impl:<12} {rc:<10} reaches 17 GB at T = {t17} (B = 1, bf16)")
print(f"17 GB is also 2^34 B = {2**34 / GB:.2f} GB = 64·L·T·H bytes at B = 1, T = 2048: "
      f"{64 * 32 * 2048 * 4096 == 2**34}")

# %% [markdown]
# > **Erratum (ambiguity) — 17GB.** "保存所有激活值，7B 模型会产生 17GB" states no batch size, sequence
# > length, dtype or attention kernel, and the number moves by 3× with the kernel alone (12.6 GB with
# > SDPA, 38.3 GB with eager attention, same model, $B = 1$, $T = 2048$, bf16). Read it as one point on
# > the curves above, e.g. "about 64 bytes per hidden unit per token per layer".

# %% [markdown]
# ## 4. The slides' worked example, cell by cell
#
# > 以 2 张 A100 80G 训练 LLaMA 7B 为例 (B=8)：模型与优化器 50GB；激活值 6.2GB；其他 10GB；单卡总计 66GB
#
# The slides do not say $T$; LLaMA-1's context, $T = 2048$, is the one that makes it come out.

# %%
B, T, H, L, V = 8, 2048, S7.hidden_size, S7.num_layers, S7.vocab_size
states = 16 * P7 / 2
print(f"模型与优化器 16P/N          = {states:,.0f} B = {states / GB:.2f} GB = {states / GIB:.2f} GiB   (slides: 50)")

# %%
layer_inputs = 2 * L * B * T * H
softmax_in = 4 * B * T * V
act = layer_inputs + softmax_in
print(f"2LBTH                      = {layer_inputs / GB:.2f} GB = {layer_inputs / GIB:.2f} GiB")
print(f"4BTV                       = {softmax_in / GB:.2f} GB = {softmax_in / GIB:.2f} GiB")
print(f"激活值 2LBTH + 4BTV          = {act / GB:.2f} GB = {act / GIB:.2f} GiB   (slides: 6.2)")
print(f"the formula's 2LBTH + 12BTV = {(layer_inputs + 12 * B * T * V) / GIB:.2f} GiB")

# %%
extra = 8 * B * T * V
other = 6 * GIB + extra
print(f"8BTV (transformers' softmax) = {extra / GIB:.2f} GiB")
print(f"其他 6 + 8BTV                 = {other / GIB:.2f} GiB   (slides: 10)")
print(f"total                        = {(states + act + other) / GIB:.2f} GiB = "
      f"{(states + act + other) / GB:.2f} GB   (slides: 66)")

# %% [markdown]
# `llmtrain.memory.estimate` builds the same sum from its parts (the slides' 6 GB of "other" is
# PyTorch ~1 + DeepSpeed up to 4 + fragmentation ~1):

# %%
est = memory.estimate(S7, gpus=2, batch=8, seq=2048, zero=3, recompute="full")
print(est)

# %% [markdown]
# One reading does give 6.2: the two activation terms added in *different* units.

# %%
print(f"2LBTH in GB + 4BTV in GiB = {layer_inputs / GB:.2f} + {softmax_in / GIB:.2f} = "
      f"{layer_inputs / GB + softmax_in / GIB:.2f}")

# %% [markdown]
# > **Erratum — 训练显存估计, worked example.** The example's parts are in mixed units:
# > - "模型与优化器 50GB" is $16P/N$ in **GiB** (50.2 GiB = 53.9 GB).
# > - "激活值 6.2GB" is neither $2LBTH + 4BTV$ in GiB (5.95) nor in GB (6.39); 6.24 comes out only
# >   when its two terms are added in different units.
# > - "其他 10GB" is the formula's 6 plus transformers' softmax extra $8BTV$ (3.91 GiB): the example
# >   moves the $8BTV$ of the formula's $12BTV$ from activations to "other".
# > - Read consistently in GiB, formula and example agree: 50.2 + 5.95 + 9.91 = 66.1 GiB
# >   (= 71.0 GB), the slides' "66GB".
# >
# > Evidence: the cells above.

# %% [markdown]
# ## 5. Other calculators on the same inputs
#
# The book's authors publish a calculator (RUCAIBox/LLMBox, `training/gpu_calculator.py`) whose
# activation term is $(12 + 2L)BTH + 12BTV$ — the slides' formula plus $12BTH$:

# %%
show(memory.llmbox_activation_bytes)

# %%
slides = memory.slides_formula(P7, 2, L, B, T, H, V, other_unit=GIB)
llmbox = memory.llmbox_activation_bytes(L, B, T, H, V)
print(f"slides 2LBTH + 12BTV        : {slides.parts['activations'] / GIB:6.2f} GiB")
print(f"LLMBox (12 + 2L)BTH + 12BTV : {llmbox / GIB:6.2f} GiB")

# %% [markdown]
# Two widely used public calculators have known slips (facts checked by hand against their code):
#
# - the Hugging Face *Ultra-Scale Playbook* memory widget never divides the weights by the TP degree,
#   and its "Llama 3" presets use $H' = 4H$ and $V = 30522$ (BERT's vocabulary) instead of
#   Llama-3's 14,336 and 128,256;
# - EleutherAI's cookbook `calc_transformer_mem.py` divides ZeRO's shards by the number of GPUs
#   instead of the data-parallel degree.
#
# On Llama-3 8B with 16 GPUs as TP 2 × PP 2 × DP 4, ZeRO-1:

# %%
s8 = shapes.get("llama3-8b")
ours = memory.model_state_bytes(s8, zero=1, dp=4, tp=2, pp=2)
eleuther_like = memory.model_state_bytes(s8, zero=1, dp=16, tp=2, pp=2)  # shards over all 16 GPUs
playbook_like = memory.model_state_bytes(s8.replace(intermediate_size=4 * 4096, vocab_size=30522),
                                         zero=1, dp=4, tp=1, pp=2)  # weights not split by TP
for name, parts in [("llmtrain (dp = 4)", ours), ("shards over all 16 GPUs", eleuther_like),
                    ("H'=4H, V=30522, no TP split", playbook_like)]:
    print(f"{name:<28} {sum(parts.values()) / GIB:6.2f} GiB per GPU")

# %% [markdown]
# ## 6. Measured against estimated
#
# A training step of a small reference LLaMA (fp32 AdamW on this CPU), with every tensor tracked:
# `memory.measure_peak` counts each storage an op creates and sees it freed (exact, repeatable).
# Adam's states exist after the first step, so we measure the second.

# %%
from llmtrain.shapes import ModelShape

small = ModelShape(vocab_size=2048, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4,
                   intermediate_size=688, max_seq_len=256, name="small")
B6, T6 = 4, 256
torch.manual_seed(0)
net = Llama(small, attn_impl="sdpa")
opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
batch = torch.randint(0, small.vocab_size, (B6, T6))


def train_step():
    net(batch, labels=batch).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


train_step()  # creates Adam's m and v
measured = memory.measure_peak(train_step, include=[net, opt])
print(measured)

# %% [markdown]
# The estimate, part by part: model states for fp32 AdamW ($4 + 4 + 8 = 16$ bytes per parameter),
# the exact activations of this model, and the logits with their gradient ($4BTV + 4BTV$, alive
# at the start of backward; the role of the slides' "8BTV"). No framework constants: the tracker sees
# tensors only.

# %%
est = memory.estimate(small, gpus=1, batch=B6, seq=T6, zero=0, recompute="none", dtype="fp32",
                      impl="reference", attention="sdpa", precision="fp32", overheads=False)
print(est)
print(f"\nmeasured peak {measured.peak_bytes:,} B; the sum of all parts {est.total:,} B "
      f"({est.total / measured.peak_bytes - 1:+.1%})")

# %% [markdown]
# The plain sum is an upper bound: it counts every gradient, but the peak comes at the start of
# backward, when the activations and the logits' gradient are all alive and no parameter gradient
# exists yet (`zero_grad(set_to_none=True)`). Leaving the gradients out of the peak:

# %%
at_backward_start = est.total - est.details["model states"]["gradients"]
error = at_backward_start / measured.peak_bytes - 1
print(f"weights + Adam states + activations + 8BTV = {at_backward_start:,} B: {error:+.2%} of the measured peak")
assert abs(error) < 0.05

# %% [markdown]
# Where the parts are exact, they match exactly. Before the step: the weights ($4P$), Adam's $m$ and
# $v$ ($8P$), Adam's scalar step counter (one fp32 per parameter tensor) and RoPE's small buffer.
# One forward pass then adds the saved activations — except the input ids, which existed before —
# plus the logits and the loss it returns.

# %%
P_small = params.count(small)
n_tensors = len(list(net.parameters()))
rope = net.model.rotary_emb.inv_freq.numel() * 4
before = 12 * P_small + 4 * n_tensors + rope
print(f"before the step: {measured.start_bytes:,} B; 12P + 4·{n_tensors} + {rope} = {before:,} B; "
      f"equal: {measured.start_bytes == before}")
kept = []
fwd = memory.measure_peak(lambda: kept.append(net(batch, labels=batch)), include=[net, opt])
acts = memory.activation_bytes(small, B6, T6, dtype="fp32", impl="reference", recompute="none",
                               attention="sdpa")
ids_bytes = batch.numel() * batch.element_size()
logits = 4 * B6 * T6 * small.vocab_size
added = fwd.end_bytes - fwd.start_bytes
print(f"after forward  : {added:,} B; activations − input ids + logits + loss = "
      f"{acts - ids_bytes + logits + 4:,} B; equal: {added == acts - ids_bytes + logits + 4}")
kept.clear()

# %% [markdown]
# On a GPU the same comparison uses `torch.cuda.max_memory_allocated` (which includes everything
# the CUDA caching allocator hands out). The next cell runs it when a GPU is present:

# %% tags=["nbval-ignore-output"]
if torch.cuda.is_available():
    torch.manual_seed(0)
    gnet = Llama(small, attn_impl="sdpa").cuda()
    gopt = torch.optim.AdamW(gnet.parameters(), lr=1e-3)
    gbatch = batch.cuda()

    def gpu_step():
        gnet(gbatch, labels=gbatch).loss.backward()
        gopt.step()
        gopt.zero_grad(set_to_none=True)

    gpu_step()
    g = memory.measure_peak(gpu_step, device="cuda")
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    print(f"max_memory_allocated {g.peak_bytes:,} B; CPU tracker {measured.peak_bytes:,} B; "
          f"estimate {at_backward_start:,} B ({at_backward_start / g.peak_bytes - 1:+.1%})")
else:
    print("skipped: no CUDA GPU here, so torch.cuda.max_memory_allocated cannot be compared")

# %% [markdown]
# ## 7. Calculator
#
# Pick a model and a setup; the bar shows each part per GPU (GiB).

# %% tags=["nbval-ignore-output"]
# widget output is routed through the front end, so its stored form depends on the runner
import time

import ipywidgets as widgets


def calculator(model="llama-7b", gpus=2, zero=3, batch=8, seq=2048, recompute="full",
               impl="textbook", dtype="bf16"):
    t0 = time.perf_counter()
    try:
        est = memory.estimate(shapes.get(model), gpus=gpus, batch=batch, seq=seq, zero=zero,
                              recompute=recompute, impl=impl, dtype=dtype)
    except ValueError as e:
        print("invalid setup:", e)
        return
    ms = 1000 * (time.perf_counter() - t0)
    fig, ax = plt.subplots(figsize=(7, 1.6))
    left = 0.0
    for part, value in est.gib.items():
        if part != "total":
            ax.barh([0], [value], left=left, label=part)
            left += value
    ax.axvline(80 * GB / GIB, color="gray", ls="--", lw=1)
    ax.set_yticks([])
    ax.set_xlabel("GiB per GPU (dashed: 80 GB card)")
    ax.legend(ncols=3, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.6))
    plt.show()
    print(est)
    print(f"(estimated in {ms:.2f} ms)")


widgets.interact(calculator, model=shapes.names(), gpus=widgets.IntSlider(2, 1, 64),
                 zero=[0, 1, 2, 3], batch=widgets.IntSlider(8, 1, 64),
                 seq=widgets.IntSlider(2048, 128, 8192, 128),
                 recompute=["full", "none", "selective"],
                 impl=list(memory.ACTIVATION_IMPLS), dtype=["bf16", "fp16", "fp32"]);
