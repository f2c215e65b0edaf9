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
# # Mixed precision · 混合精度训练
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llmtrain/llmtrain/blob/main/notebooks/04_mixed_precision.ipynb)
#
# > - 同时使用 32 位浮点数和 16 位浮点数计算 — compute with 32-bit and 16-bit floats together;
# > - 显存减半、效率翻倍 — "memory halves, efficiency doubles";
# > - DeepSeek-V3 使用 FP8 混合训练，进一步减少密集型计算开销 — DeepSeek-V3 trains with FP8 to cut the
# >   cost of dense computation further.
#
# After this notebook you can read a float format off its bits, say where fp16 underflows and how loss
# scaling rescues it, explain why the optimizer keeps fp32 master weights, say exactly which bytes
# halve, measure the speed-up on the machine in front of you, compare FP8 scaling schemes, and say
# which parts of DeepSeek-V3's training run in FP8 and why its GEMMs promote their sums to FP32.
# The code is `llmtrain.precision` (`formats`, `fp8`) and `llmtrain.precision.amp` (loss scaling, mixed-precision step).

# %% [markdown]
# > **导读**
# > 本笔记本从比特位推导 fp32、tf32、fp16、bf16 与 FP8 各格式的取值范围和精度，并在小型 LLaMA 上展示 fp16 的梯度下溢，以及动态损失缩放（loss scaling）如何解决这个问题。
# > 接着用“float64 精确算术 + bf16 存储”的模拟实验说明优化器为什么要保留 fp32 主权重：不超过半个间距的更新，在 bf16 中会被舍入掉。
# > 然后逐项核对课件的“显存减半、效率翻倍”：使用 AdamW 时，混合精度的模型状态仍是每参数 16 字节，接近减半的是激活值；在张量核心上，bf16 的峰值算力恰为 TF32 的 2 倍。
# > 最后讲 DeepSeek-V3 的 FP8 训练：哪些矩阵乘法用 FP8、哪些部分保留 BF16/FP32，按 1×128 分块（tile）和 128×128 块（block）的细粒度缩放，以及每累加 128 个元素就提升到 FP32 的累加方式。

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
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from llmtrain import plots, show
from llmtrain.cost import memory
from llmtrain.device import choose
from llmtrain.measure import tracker
from llmtrain.model import shapes
from llmtrain.model.llama import Llama
from llmtrain.precision import amp
from llmtrain.precision import formats as precision, fp8
from llmtrain.recipes import train

plots.use_style()
_ = torch.manual_seed(0)


def llama64(shape):
    """A reference LLaMA built in float64: its initial weights are float64 draws, the same
    numbers on every CPU (torch's float32 sampler draws others on CPUs without AVX2)."""
    torch.set_default_dtype(torch.float64)
    try:
        return Llama(shape)
    finally:
        torch.set_default_dtype(torch.float32)


# %% [markdown]
# ## 1. The formats, from their bits · 从比特位看浮点格式
#
# A float is sign · 2^(exponent − bias) · 1.mantissa. Everything else — range, precision, the smallest
# numbers — follows from how many exponent and mantissa bits the format has. `precision.format_info`
# derives each value from the bit layout (exact fractions); the tests check them against `torch.finfo`:

# %%
print(f"{'format':<9} {'E':>2} {'M':>3} {'bias':>5} {'max':>11} {'smallest normal':>16} "
      f"{'smallest subnormal':>19} {'eps':>9}")
for name in precision.FORMATS:
    f = precision.format_info(name)
    print(f"{name:<9} {f.exponent_bits:>2} {f.mantissa_bits:>3} {f.bias:>5} {f.max:>11.4g} "
          f"{f.smallest_normal:>16.4g} {f.smallest_subnormal:>19.4g} {f.eps:>9.4g}")
fp16_max, bf16_eps = precision.format_info("fp16").max, precision.format_info("bf16").eps
print(f"exactly: fp16's max is {int(fp16_max):,}; bf16's eps is 2^{math.log2(bf16_eps):.0f} = {float(bf16_eps)}")

# %%
print("0.1 in each format, its bits, and the representable numbers around it:")
for name in ("fp32", "bf16", "fp16", "fp8_e4m3", "fp8_e5m2"):
    below, nearest, above = precision.neighbours(0.1, name)
    print(f"{name:<9} {precision.bits_of(0.1, name):<36} {float(below):.10g} < {float(nearest):.10g} < {float(above):.10g}")

# %%
fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.2), gridspec_kw={"height_ratios": [1, 1.2]})
names = list(precision.FORMATS)
for i, name in enumerate(names):
    f = precision.format_info(name)
    parts = [("sign", 1, plots.PALETTE[3]), ("exponent", f.exponent_bits, plots.PALETTE[0]),
             ("mantissa", f.mantissa_bits, plots.PALETTE[2])]
    left = 0
    for label, width, colour in parts:
        top.barh(i, width, left=left, color=colour, edgecolor="white", label=label if i == 0 else None)
        left += width
top.set_yticks(range(len(names)), names)
top.invert_yaxis()
top.set_xlabel("bits")
top.set_title("bit layouts")
top.legend(ncols=3, fontsize=8, loc="lower right")
for i, name in enumerate(names):
    f = precision.format_info(name)
    lo, mid, hi = (math.log10(v) for v in (f.smallest_subnormal, f.smallest_normal, f.max))
    bottom.plot([lo, mid], [i, i], color=plots.PALETTE[1], lw=3, solid_capstyle="butt")
    bottom.plot([mid, hi], [i, i], color=plots.PALETTE[0], lw=6, solid_capstyle="butt")
bottom.set_yticks(range(len(names)), names)
bottom.invert_yaxis()
bottom.set_xlabel("log₁₀ of the magnitude (thin: subnormal, thick: normal)")
bottom.set_title("representable range")
fig.tight_layout()
plots.save(fig, "04_formats")
plt.show()

# %% [markdown]
# bf16 keeps fp32's 8 exponent bits (its whole range) and gives up mantissa; fp16 keeps more mantissa
# but its range ends at 65504 and its smallest number is 6·10⁻⁸ — the source of both problems below.

# %% [markdown]
# ## 2. Where fp16 underflows · fp16 的梯度下溢
#
# Gradients of a real model are small, and many are far smaller than the typical one. The gradients of
# the tiny reference LLaMA after 100 steps of training, with the smallest positive numbers of fp16
# and bf16 marked. The model is trained in float64 and its gradients are rounded to fp32, as an fp32
# run would store them: fp32 kernels round differently on different CPUs, and after 100 steps of
# fp32 training the differences would move gradients across the histogram's bins and the thresholds
# counted below; float64 rounding is ~10⁹ times finer.

# %%
shape = shapes.get("tiny")
tokens = train.corpus(2**16, shape.vocab_size, seed=0)
torch.manual_seed(0)
net = llama64(shape)
train.train(net, steps=100, batch_size=8, seq_len=64, peak_lr=3e-3, seed=0)
x = next(train.batches(tokens, 8, 64, seed=7))
net.zero_grad()
net(x, labels=x).loss.backward()
grads = [p.grad.detach().float() for p in net.parameters()]  # fp32, as fp32 training keeps them
flat = torch.cat([g.flatten() for g in grads])
mags = flat[flat != 0].abs()
edges = np.arange(-12, 0.01, 0.125)  # log₁₀ bins of 1/8 decade, fixed: no edge depends on the data
assert 10.0 ** edges[0] < mags.min().item() and mags.max().item() < 10.0 ** edges[-1]
counts, _ = np.histogram(mags.double().numpy(), bins=10.0**edges)  # exact comparisons with the edges

fig, ax = plt.subplots(figsize=(7, 3.6))
ax.stairs(counts, edges, fill=True, color=plots.PALETTE[0])
for name, colour in [("fp16", plots.PALETTE[3]), ("bf16", plots.PALETTE[2])]:
    info = precision.format_info(name)
    for value, style in [(info.smallest_subnormal, ":"), (info.smallest_normal, "--")]:
        if value > 10.0 ** edges[0]:
            ax.axvline(math.log10(value), color=colour, ls=style,
                       label=f"{name} smallest {'subnormal' if style == ':' else 'normal'}")
ax.set(xlabel="log₁₀ |gradient|", ylabel="elements", title="gradients of the tiny LLaMA")
ax.legend(fontsize=8)
# The model is float64 end to end (llama.py upcasts norms and the loss to float64 for a float64
# model), so the counts per bin are the same on every CPU and the figure is saved.
plots.save(fig, "04_gradient_underflow")
plt.show()

# %%
fp16 = precision.format_info("fp16")
n = mags.numel()
print(f"{n:,} nonzero gradient elements; fp16's smallest subnormal {fp16.smallest_subnormal:.3g}, "
      f"smallest normal {fp16.smallest_normal:.3g}")
for scale in (1, 2**8, 2**16):
    h = (mags * scale).to(torch.float16)  # scale a power of 2: the product is exact
    zero16, sub = int((h == 0).sum()), int(((h != 0) & (h.abs() < fp16.smallest_normal)).sum())
    assert zero16 / n == amp.gradient_underflow(grads, torch.float16, scale)
    zero_bf16 = round(amp.gradient_underflow(grads, torch.bfloat16, scale) * n)
    print(f"scale 2^{scale.bit_length() - 1:<2}: fp16 flushes {zero16:>2} ({zero16 / n:.4%}) to 0 and keeps "
          f"{sub:>6,} ({sub / n:.2%}) only as subnormals (fewer than 11 significant bits); bf16 flushes {zero_bf16}")

# %% [markdown]
# In this small model only a tiny share of the gradients falls all the way to zero in fp16, but a
# sizeable share lands in fp16's subnormal range, where precision thins out bit by bit; a scale of 2⁸
# lifts nearly all of them back into the normal range (numbers above). Larger models and longer sequences push gradients lower — activation gradients of a
# mean loss shrink with the number of tokens — and Micikevicius et al. (2018) found a large part of
# the activation gradients of real networks below fp16's range. bf16's range is fp32's: it needs no
# scaling.

# %% [markdown]
# ## 3. Loss scaling, static and dynamic · 静态与动态损失缩放
#
# Multiplying the loss by $s$ multiplies every gradient by $s$ (the chain rule is linear), lifting
# them above fp16's floor; the optimizer step divides by $s$ again. Too large a scale overflows
# (fp16's max is 65504) and the step must be skipped. A *dynamic* scaler starts high, halves the scale
# on every overflow and doubles it after `growth_interval` clean steps — `llmtrain.precision.amp.LossScaler`,
# written from scratch and tested to take exactly the same scales and skipped steps as
# `torch.amp.GradScaler` on random gradient sequences:

# %%
show(amp.LossScaler.update)

# %% [markdown]
# 120 steps of fp16 training with `MixedPrecisionTrainer` (fp16 forward and backward, fp32 master
# weights), starting from a scale of $2^{24}$ that is far too large. Which steps overflow depends only
# on how far the largest scaled gradient is from 65504, so the skipped steps and the scales are the
# same on every CPU; the losses come from fp16 kernels, which round differently on different CPUs, so
# they are checked in the cell below, not printed digit for digit:

# %%
torch.manual_seed(0)
fp16_net = llama64(shape).float()  # the same initial weights on every CPU
scaler = amp.LossScaler(init_scale=2.0**24, growth_interval=20)
trainer = amp.MixedPrecisionTrainer(fp16_net, torch.float16, lr=1e-3, scaler=scaler)
fp16_losses = [trainer.step(b, b) for _, b in zip(range(120), train.batches(tokens, 8, 64, seed=0))]
skipped = [i + 1 for i, (before, after) in enumerate(zip([2.0**24] + scaler.scales, scaler.scales))
           if after < before]
print(f"fp16 with dynamic loss scaling: {scaler.skipped_steps} of 120 steps skipped (steps {skipped}); "
      f"scale 2^24 → 2^{math.log2(scaler.get_scale()):.0f}")

# %% tags=["nbval-ignore-output"]
# fp16 kernels: the digits differ from CPU to CPU; what the text claims is asserted
tail16 = sum(fp16_losses[-10:]) / 10
print(f"loss {fp16_losses[0]:.3f} at the first step, {tail16:.3f} over the last 10 steps")
assert all(math.isfinite(v) for v in fp16_losses) and tail16 < 0.5 * fp16_losses[0], "fp16 must train"

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.step(range(1, len(scaler.scales) + 1), scaler.scales, where="post")
ax.set(yscale="log", xlabel="step", ylabel="loss scale", title="dynamic loss scale during fp16 training")
plots.save(fig, "04_loss_scale")
plt.show()

# %% [markdown]
# ## 4. Why the optimizer keeps fp32 master weights · 为什么保留 fp32 主权重
#
# A bf16 number has 8 significant bits: just above 1.0 the representable numbers are
# $2^{-7} \approx 0.0078$ apart. An update of at most half of that rounds away — exactly half too:
# $1 + 2^{-8}$ is a tie, and ties round to the neighbour with an even last bit, which is 1.0. (Below 1
# the spacing is $2^{-8}$, so a decrease is lost up to $2^{-9}$; and a tie can also round *up*: next to
# $1 + 2^{-7}$, whose last bit is odd, the same $2^{-8}$ doubles.)

# %%
w = torch.ones(4, dtype=torch.bfloat16)
for u in (1e-2, 2.0**-7, 2.0**-8, 1e-3, -(2.0**-9), -(2.0**-8)):
    lost = amp.lost_update_fraction(w, torch.full((4,), u))
    print(f"1.0 + {u:<13.6g} in bf16 = {(w + u)[0].item():<10.8g} update {'LOST' if lost == 1 else 'kept'}")
odd = torch.tensor([1 + 2.0**-7], dtype=torch.bfloat16)
print(f"{odd.item():.8g} + 2^-8 in bf16 = {(odd + 2.0**-8).item():.8g}: the tie goes up, to the even neighbour")

# %% [markdown]
# Adam's updates are about lr in size: with lr = 10⁻³ and weights near 1 (RMSNorm gains start at 1)
# most updates vanish in pure bf16. Mixed precision applies them to an fp32 master copy instead and
# rounds only the copy used for compute. The same run twice, 150 steps at lr 10⁻³, with
# `amp.emulate_16bit_storage`: what is stored in 16 bits is rounded as in bf16 training (the model's
# weights and the gradients; in pure bf16 also Adam's moments), while the arithmetic runs in float64
# and the master copy and its moments stay float64 (fp32 in practice, whose rounding is far below
# the updates). That isolates what this section is about, the rounding of the weights,
# and gives the same curves on every CPU (real bf16 and fp32 kernels round differently from one
# instruction set to the next). `MixedPrecisionTrainer` with real bf16 kernels, from the same weights,
# ends within 0.1 % of the emulation (`tests/test_amp.py::test_emulated_storage_rounds_what_is_stored_and_master_weights_win`).

# %%
def run_16bit(master, steps=150):
    torch.manual_seed(0)
    return amp.emulate_16bit_storage(llama64(shape), train.batches(tokens, 8, 64, seed=0), steps=steps,
                                     dtype=torch.bfloat16, lr=1e-3, master_weights=master)


mixed_losses, pure_losses = run_16bit(True), run_16bit(False)
tail_mixed, tail_pure = sum(mixed_losses[-10:]) / 10, sum(pure_losses[-10:]) / 10
assert tail_pure > tail_mixed + 0.1
print(f"after {len(mixed_losses)} steps, final loss (mean of the last 10 steps): "
      f"fp32 master weights {tail_mixed:.2f}, pure bf16 {tail_pure:.2f}")
fig, ax = plt.subplots(figsize=(7, 3.4))
ax.plot(mixed_losses, label="fp32 master weights, bf16 copy for compute")
ax.plot(pure_losses, label="pure bf16 (weights and Adam moments)")
ax.set(xlabel="step", ylabel="training loss", title="master weights keep small updates (bf16 storage)")
ax.legend()
# Float64 arithmetic end to end (llama.py keeps a float64 model in float64): the losses differ from
# CPU to CPU only in their last bits (measured ≤ 3e-15 under AVX-512, AVX2 and SSE4 kernels), far
# below what the drawing resolves, so the figure is saved.
plots.save(fig, "04_master_weights")
plt.show()

# %% [markdown]
# The step that does it with real 16-bit kernels, from `llmtrain.precision.amp`:

# %%
show(amp.MixedPrecisionTrainer.step)

# %% [markdown]
# ## 5. Memory: which bytes halve · 显存：哪些字节减半
#
# Bytes per parameter of the model states (notebook 11), fp32 training against mixed precision with
# AdamW:

# %%
fp32 = memory.state_bytes_per_param("fp32", "adamw")
mixed = memory.state_bytes_per_param("mixed", "adamw")
print(f"{'state':<10} {'fp32':>5} {'mixed':>6}")
for k in fp32:
    print(f"{k:<10} {fp32[k]:>5.0f} {mixed[k]:>6.0f}")
print(f"{'total':<10} {sum(fp32.values()):>5.0f} {sum(mixed.values()):>6.0f}")

# %% [markdown]
# The weights and gradients used in forward and backward halve (4 → 2 bytes), but mixed precision
# *adds* an fp32 master copy (4) and keeps Adam's two fp32 moments (8): 16 bytes per parameter either
# way. What does halve is the activations — not exactly, because real implementations keep some of
# them in fp32 (RMSNorm's upcast, the softmax, the loss). For LLaMA-7B, $B = 1$, $T = 2048$, exact
# (transformers' SDPA model, notebook 11):

# %%
from llmtrain.cost import activations as activation_formulas

S7 = shapes.get("llama-7b")
a32 = activation_formulas.saved_bytes(S7, 1, 2048, dtype="fp32", impl="hf-sdpa")
a16 = activation_formulas.saved_bytes(S7, 1, 2048, dtype="bf16", impl="hf-sdpa")
print(f"activations fp32 {a32 / 1e9:.2f} GB, bf16 {a16 / 1e9:.2f} GB: ratio {a16 / a32:.3f} "
      f"(bf16: {a16 / 2**30:.2f} GiB, as notebook 11 prints it)")

# %% [markdown]
# Measured on this machine with the exact tracker (`tracker.measure_peak`): one forward and backward of
# a small reference LLaMA in fp32 and in bf16 (weights, gradients and activations all 16-bit here):

# %%
small = shapes.ModelShape(vocab_size=1024, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=8,
                          intermediate_size=688, max_seq_len=256, name="small")
ids = torch.randint(0, small.vocab_size, (4, 256))
peaks = {}
for dtype in (torch.float32, torch.bfloat16):
    torch.manual_seed(0)
    net = Llama(small).to(dtype)
    peaks[dtype] = tracker.measure_peak(lambda: net(ids, labels=ids).loss.backward(), include=net)
    print(f"{str(dtype):<15} weights {peaks[dtype].start_bytes:>11,} B   peak {peaks[dtype].peak_bytes:>11,} B")
print(f"peak ratio bf16/fp32: {peaks[torch.bfloat16].peak_bytes / peaks[torch.float32].peak_bytes:.3f}")

# %% [markdown]
# > **勘误 · Erratum — 显存减半.**
# > 课件原文：“显存减半”
# > "Mixed precision halves memory" holds for the 16-bit weights, gradients and (roughly) the
# > activations, not for the model states as a whole: with Adam, mixed precision keeps 16 bytes per
# > parameter, exactly as many as fp32 training (2 + 2 + 4 master + 4 + 4; the table of bytes per
# > parameter above). The slides' own 16P (训练显存估计) is this mixed-precision count. What comes
# > close to halving is the activations (the two cells above: ratio 0.554 for LLaMA-7B, and the
# > measured peak of the small model).
# > **更正：** 混合精度只让参与计算的 16 位权重、梯度和激活值减半；使用 AdamW 时，模型状态仍是每参数 16 字节，与 fp32 训练相同。省下的显存主要来自激活值，约为一半。

# %% [markdown]
# ## 6. Speed: what "efficiency doubles" means · 速度：“效率翻倍”指什么
#
# Matrix-multiply throughput per format on the device at hand (timings vary by machine):

# %% tags=["nbval-ignore-output"]
choice = choose()
dev = choice.device


def matmul_tflops(dtype, n=512, reps=3, tf32=False):
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
    a @ b  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


n = 4096 if dev.type == "cuda" else 512
speeds = {"fp32": matmul_tflops(torch.float32, n)}
if dev.type == "cuda":
    speeds["tf32"] = matmul_tflops(torch.float32, n, tf32=True)
    torch.backends.cuda.matmul.allow_tf32 = False
speeds["bf16"] = matmul_tflops(torch.bfloat16, n)
speeds["fp16"] = matmul_tflops(torch.float16, n)
print(f"{choice.name}, {n}×{n} matmul:")
for k, v in speeds.items():
    print(f"  {k:<5} {v * 1000:10.1f} GFLOP/s   ({v / speeds['fp32']:.2f}× fp32)")
if dev.type != "cuda":  # no GPU here: what scripts/gpu_check.py measured on one (results/gpu/)
    from llmtrain import gpu_results
    print("\n" + gpu_results.section("matmul"))

# %% [markdown]
# For comparison, the dense peaks NVIDIA publishes (TFLOP/s; datasheets of the A100 SXM, H100 SXM and
# T4), as ratios against two baselines: plain fp32 on the CUDA cores, and TF32 — fp32 inputs rounded to
# 10 mantissa bits on the tensor cores, what an fp32 matmul runs as when TF32 is allowed
# (`torch.backends.cuda.matmul.allow_tf32`). Which one "fp32 training" means decides the ratio:

# %%
published = {  # dense TFLOP/s: fp32 (no tensor cores), tf32, bf16, fp16, fp8
    "A100 SXM": {"fp32": 19.5, "tf32": 156, "bf16": 312, "fp16": 312, "fp8": None},
    "H100 SXM": {"fp32": 67, "tf32": 495, "bf16": 989, "fp16": 989, "fp8": 1979},
    "T4": {"fp32": 8.1, "tf32": None, "bf16": None, "fp16": 65, "fp8": None},
}
print(f"{'card':<9} {'format':<6} {'TFLOP/s':>8} {'vs fp32':>8} {'vs tf32':>8}")
for card, row in published.items():
    for k, v in row.items():
        if v is None or k in ("fp32", "tf32"):
            continue
        vs_tf32 = f"{v / row['tf32']:.2f}×" if row["tf32"] else "—"
        print(f"{card:<9} {k:<6} {v:>8g} {v / row['fp32']:>7.1f}× {vs_tf32:>8}")
sixteen = [(card, k, row[k] / row["fp32"]) for card, row in published.items() for k in ("bf16", "fp16") if row[k]]
lo, hi = min(sixteen, key=lambda r: r[2]), max(sixteen, key=lambda r: r[2])
print(f"16-bit tensor cores vs fp32: {lo[2]:.1f}× ({lo[0]} {lo[1]}) to {hi[2]:.1f}× ({hi[0]} {hi[1]})")
for card in ("A100 SXM", "H100 SXM"):
    row = published[card]
    print(f"{card} bf16 vs tf32: {row['bf16']:g}/{row['tf32']:g} = {row['bf16'] / row['tf32']:.3f}")

# %% [markdown]
# > **补充说明 · Note — 效率翻倍：相对哪个基线.** Against TF32, the tensor-core format fp32 training runs in on an A100
# > or H100, bf16 is twice as fast (312/156 = 2.000 on A100, 989/495 = 1.998 on H100 with the
# > datasheet's rounding, printed above): the slides' "efficiency doubles" is literally right. Against
# > plain fp32 on the CUDA cores the 16-bit tensor cores are 8.0× (T4, fp16) to 16.0× (A100) faster, and
# > H100's FP8 29.5×: there "doubles" is an understatement. A whole training step
# > gains less than a matmul, since not everything is a matmul. On a CPU it depends on the instruction
# > set: some have bf16 matrix units (Intel AMX, AVX512-BF16), many have none, and fp16 matmuls on a
# > CPU without fp16 kernels can be *far slower* than fp32.

# %% [markdown]
# A whole training step, fp32 against `torch.autocast` in the device's 16-bit format (fp16 with a
# GradScaler on a GPU without fast bf16, such as Colab's T4 — `llmtrain.device` picks it):

# %% tags=["nbval-ignore-output"]
def step_seconds(autocast, reps=3):
    torch.manual_seed(0)
    net = Llama(small).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(dev.type, enabled=autocast and choice.needs_loss_scaling)
    x = ids.to(dev)

    def step():
        with torch.autocast(dev.type, dtype=choice.dtype, enabled=autocast):
            loss = net(x, labels=x).loss
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


t32, t16 = step_seconds(False), step_seconds(True)
print(f"{choice.name}: fp32 step {t32 * 1000:.1f} ms, autocast {str(choice.dtype)[6:]} step "
      f"{t16 * 1000:.1f} ms: {t32 / t16:.2f}× faster")
if dev.type != "cuda":  # no GPU here: the same step measured by scripts/gpu_check.py on one
    from llmtrain import gpu_results
    print("\n" + gpu_results.section("autocast_step"))

# %% [markdown]
# ## 7. FP8 in DeepSeek-V3 · DeepSeek-V3 的 FP8 训练
#
# The slides: "DeepSeek-V3 使用 FP8 混合训练，进一步减少密集型计算开销". The DeepSeek-V3 technical report
# (arXiv 2412.19437, §3.3) describes it in three parts, one subsection each below: what runs in FP8,
# how FP8 tensors are scaled, and how the sums of an FP8 matrix product are kept accurate.
#
# ### 7.1 What runs in FP8 · 哪些计算用 FP8
#
# Not everything. DeepSeek-V3 §3.3.1 (and Fig. 6) runs the three GEMMs of every Linear layer in FP8:
# Fprop (forward, $Y = XW$), Dgrad (the activation gradient, $\partial X = \partial Y\, W^\top$) and
# Wgrad (the weight gradient, $\partial W = X^\top \partial Y$). They hold nearly all of a
# transformer's FLOPs, which is where the speed comes from; and since Wgrad reads the layer's input in
# FP8, the activations cached for backward are FP8 too. Components that are sensitive to precision or
# cheap keep their original precision, and §3.3.3 keeps the master weights and gradients in FP32
# while storing AdamW's moments in BF16. Each row with its place in the report
# (`fp8.DEEPSEEK_V3_FP8`):

# %%
print(f"{'component':<76} {'format':<40} report")
for what, fmt, where in fp8.DEEPSEEK_V3_FP8:
    print(f"{what:<76} {fmt:<40} {where}")

# %% [markdown]
# ### 7.2 Fine-grained scaling · 细粒度缩放
#
# FP8 has 3 or 2 mantissa bits and a narrow range, so every tensor is stored with a *scale*: the
# largest magnitude maps to the format's max (448 for E4M3). One scale per tensor lets a single outlier
# squeeze everything else towards zero. DeepSeek-V3 (§3.3.2, Fig. 7 (a)) scales activations per
# 1×128 tile (one token, 128 channels) and weights per 128×128 block, and uses E4M3 for all tensors.
# On activations (256 × 1024, N(0, 1)) with 10 outlier
# channels (1 %) 10² or 10⁴ times larger: the relative error of the whole tensor, then the error on the 99 %
# ordinary channels alone and the share of their values flushed to 0 (`fp8.quantization_stats`;
# the norms in float64, the counts exact):

# %%
GROUPS = ("tensor", "tile", "block")
stats = {}
for outlier_scale in (1e2, 1e4):
    acts = fp8.realistic_activations((256, 1024), outlier_scale=outlier_scale, seed=0)
    plain = fp8.realistic_activations((256, 1024), outlier_scale=1.0, seed=0)  # same draws
    ordinary = (acts == plain).all(dim=0)  # the channels outlier_scale did not touch
    assert int((~ordinary).sum()) == 10
    for fmt in ("fp8_e4m3", "fp8_e5m2"):
        for g in GROUPS:
            stats[outlier_scale, fmt, g] = (fp8.quantization_stats(acts, fmt, g),
                                            fp8.quantization_stats(acts, fmt, g, where=ordinary))
print(f"activations of shape {tuple(acts.shape)}, N(0, 1), {int((~ordinary).sum())} outlier channels")
print(f"{'outliers':>8} {'format':<9} {'scale per':<14} {'error, all':>10} {'error, ordinary':>15} "
      f"{'ordinary flushed to 0':>22}")
for (outlier_scale, fmt, g), (whole, part) in stats.items():
    per = {"tensor": "tensor", "tile": "1×128 tile", "block": "128×128 block"}[g]
    print(f"{outlier_scale:>7g}× {fmt:<9} {per:<14} {whole.error:>10.4f} {part.error:>15.4f} "
          f"{part.flushed:>8,} = {float(part.flushed_fraction):>6.2%}")
ordinary_stats = {k: part for k, (whole, part) in stats.items()}
e4 = {(x, g): ordinary_stats[x, "fp8_e4m3", g] for x in (1e2, 1e4) for g in GROUPS}
for g in GROUPS:  # what the text below says, checked
    assert abs(stats[1e2, "fp8_e4m3", g][0].error - stats[1e4, "fp8_e4m3", g][0].error) < 1e-3
assert e4[1e4, "tensor"].error > 1.5 * e4[1e2, "tensor"].error and e4[1e4, "tensor"].flushed_fraction > 0.05
assert e4[1e4, "tile"].error < 1.1 * e4[1e2, "tile"].error
assert e4[1e4, "tile"].flushed < e4[1e4, "block"].flushed < e4[1e4, "tensor"].flushed
assert e4[1e4, "tile"].error < e4[1e4, "block"].error < e4[1e4, "tensor"].error
assert all(ordinary_stats[x, "fp8_e5m2", g].flushed == 0 for x in (1e2, 1e4) for g in GROUPS)

# %% [markdown]
# The error of the whole tensor is the same at ×10² and ×10⁴ (first column): the outliers are most
# of $\lVert x\rVert$ and their rounding most of $\lVert x - \hat x\rVert$, and a float's relative
# precision is the same at every scale, so that ratio cannot show what happens to everything else.
# The ordinary channels do. Per tensor, ×10² leaves them in E4M3's normal range and costs nothing;
# ×10⁴ divides them by a scale so large that many fall below E4M3's smallest normal number (2⁻⁶):
# their error rises from 0.0265 to 0.0424 and 5.69 % of them flush to 0 — the squeeze. 1×128 tiles keep
# the error of the ordinary channels near its ×10² value, with far fewer flushed (most tiles hold no
# outlier); a 128×128 block holds whole outlier columns, so it lies in between. E5M2 has the range of
# fp16 (smallest normal 2⁻¹⁴) and flushes nothing here, but its 2 mantissa bits double the error
# everywhere. Weights have no such outlier channels, and blocks let the scale follow magnitudes that
# differ across the matrix. An FP8 matrix product, emulated (quantise, then multiply in fp32),
# against the exact product (float64):

# %%
acts = fp8.realistic_activations((256, 1024), outlier_scale=1e2, seed=0)
weights = torch.randn(1024, 512, generator=torch.Generator().manual_seed(1), dtype=torch.float64).float() / 32
exact = acts.double() @ weights.double()
for fmt in ("fp8_e4m3", "fp8_e5m2"):
    for g in ("tensor", "fine"):
        approx = fp8.fp8_matmul(acts, weights, fmt, granularity=g)
        err = (approx.double() - exact).norm() / exact.norm()
        print(f"{fmt:<9} {g:<7} relative error {err.item():.4f}")

# %% [markdown]
# ### 7.3 Accumulation: promote to FP32 every 128 elements · 累加：每 128 个元素提升到 FP32
#
# Fine-grained scales have a price: a scale that changes every 128 elements along the inner
# dimension K cannot be applied inside a standard FP8 GEMM. DeepSeek-V3 §3.3.2 solves this together
# with a second problem it measured: on H800 the tensor cores accumulate FP8 products keeping "around
# 14 bits", far below FP32, and for two random matrices with K = 4096 this alone gave "a maximum
# relative error of nearly 2%". The fix (Fig. 7 (b)): after every $N_C$ = 128 elements of K (4 WGMMA
# instructions) the partial sums are copied into FP32 registers on the CUDA cores, multiplied there by
# the tile's and the block's scales, and added in full FP32 precision.
#
# `fp8.fp8_gemm_accumulated` emulates it: the products of two FP8 values (exact), a running sum
# rounded to 14 significant bits after each addition, a promotion every $N_C$ elements. How the
# hardware rounds is not public, so both ends are shown: to nearest (unbiased) and toward zero
# (biased). The error is the largest over the output, relative to the output's largest value, against
# the same FP8 inputs summed with 52 bits, so that only the accumulation is measured:

# %%
gen = torch.Generator().manual_seed(0)
acc_err = {}
print(f"{'K':>5} {'accumulator (14 significant bits)':<40} {'rounding':<12} {'accumulation error':>18}")
for K in (512, 4096):
    a = torch.randn(8, K, generator=gen, dtype=torch.float64).float()
    b = torch.randn(K, 128, generator=gen, dtype=torch.float64).float()
    wide = fp8.fp8_gemm_accumulated(a, b, granularity="tensor", accumulator_bits=52)  # quantisation only
    for rounding in fp8.ROUNDINGS:
        for n_c in ((None, 128) if K == 4096 else (None,)):
            got = fp8.fp8_gemm_accumulated(a, b, granularity="tensor", rounding=rounding, promote_every=n_c)
            acc_err[K, rounding, n_c] = err = float((got - wide).abs().max() / wide.abs().max())
            how = f"over all K = {K}" if n_c is None else f"promoted to fp32 every N_C = {n_c}"
            print(f"{K:>5} {how:<40} {rounding:<12} {err:>17.3%}")
exact = a.double() @ b.double()
print(f"for scale: FP8 (E4M3) rounding of the inputs themselves, K = 4096: "
      f"{float((wide - exact).abs().max() / exact.abs().max()):.1%}")
for rounding in fp8.ROUNDINGS:
    assert acc_err[4096, rounding, None] > 2 * acc_err[512, rounding, None]    # longer sums, larger error
    assert acc_err[4096, rounding, 128] < acc_err[4096, rounding, None] / 10   # promotion: > 10× smaller
assert acc_err[4096, "nearest", None] < 0.01 < acc_err[4096, "toward_zero", None]

# %% [markdown]
# Longer sums lose more: from K = 512 to 4096 the error grows about fourfold when rounding to nearest
# (the rounding errors add like a random walk, on ever larger partial sums) and tenfold toward zero
# (every addition loses in the same direction). Promoting every 128 elements cuts it more than tenfold
# either way, far below the FP8 rounding of the inputs themselves (printed last). The report's
# measured "nearly 2%" lies between the two models' 0.197% and 4.477% (its error measure is not
# spelled out either). The emulation is float64 arithmetic only, so the table is the same on every CPU.

# %% tags=["nbval-ignore-output"]
# the real FP8 matmul exists only on GPUs with FP8 tensor cores (H100/H200, RTX 40xx): measure it there
if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9) and hasattr(torch, "_scaled_mm"):
    a8 = acts[:, :1024].cuda().to(torch.float8_e4m3fn)
    b8 = weights.cuda().t().contiguous().to(torch.float8_e4m3fn).t()
    one = torch.tensor(1.0, device="cuda")
    out = torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    print("torch._scaled_mm ran on", torch.cuda.get_device_name(), "output", tuple(out.shape))
else:
    from llmtrain import gpu_results
    print("skipped here: torch._scaled_mm needs a GPU with FP8 tensor cores (compute capability 8.9+)")
    print(gpu_results.section("matmul", only="fp8"))  # what scripts/gpu_check.py measured on one

# %% [markdown]
# **Exercise.** In E4M3, what is the relative spacing of numbers near 1, and how many distinct finite
# positive values does the format have?
#
# <details><summary>Answer</summary>
#
# 3 mantissa bits: spacing $2^{-3} = 0.125$ just above 1 (`format_info("fp8_e4m3").eps`). Positive
# finite codes: 2⁷ − 1 = 127 minus the one NaN code = 126, of which 7 are subnormal — checked below.
# </details>

# %%
f8 = precision.format_info("fp8_e4m3")
codes = range(1, f8.max_magnitude_code + 1)  # 0x01 .. 0x7E; 0x7F is NaN in E4M3fn
subnormal = [c for c in codes if c >> f8.mantissa_bits == 0]
print(f"eps {f8.eps}; {len(codes)} positive finite values, {len(subnormal)} subnormal; "
      f"largest {precision.decode(codes[-1], 'fp8_e4m3')}")

# %% [markdown]
# ## 要点 · Key points
#
# - 浮点格式的性质都由指数位和尾数位决定：fp16 最大只能表示 65504；bf16 的取值范围与 fp32 相同，但 eps 高达 0.0078（fp32 为 1.19e-07），精度粗得多。
# - fp16 的问题是下溢：训练 100 步后的小型 LLaMA 中，9.02% 的梯度只能以次正规数保存；损失缩放 2^8 之后只剩 0.04%。bf16 一个也不丢。
# - 动态损失缩放从过大的 2^24 开始，遇到溢出就把缩放减半并跳过这一步：120 步 fp16 训练中跳过了 9 步，最终稳定在 2^19。
# - bf16 在 1.0 附近的间距是 2^-7，不超过半个间距的更新都会被舍入掉，所以优化器要在 fp32 主权重上更新：150 步后，有主权重的损失为 1.85，纯 bf16 为 2.00。
# - “显存减半”不适用于模型状态：使用 AdamW 时，混合精度与 fp32 训练都是每参数 16 字节；接近减半的是激活值（LLaMA-7B：22.65 GB → 12.55 GB，即笔记本 11 中的 11.69 GiB）。
# - “效率翻倍”是相对 TF32 而言：A100 上 bf16 的峰值算力恰为 TF32 的 2 倍（312/156）；相对不用张量核心的 fp32，则是 8.0–16.0 倍。
# - FP8 整张量缩放时，少数离群通道会压垮其他值：离群值为 10^4 倍时，5.69% 的普通值下溢为 0；DeepSeek-V3 按 1×128 分块（tile）缩放后只有 1.16%。
# - DeepSeek-V3 只把线性层的三个矩阵乘法（Fprop、Dgrad、Wgrad）放到 FP8；嵌入层、输出层、MoE 门控、归一化和注意力保留原精度，主权重和梯度用 FP32，AdamW 的两个矩用 BF16。
# - 张量核心的 FP8 累加只保留约 14 位有效位：按本笔记本的模型，K = 4096 时累加误差为 0.197%（向最近舍入）到 4.477%（向零舍入）；每 128 个元素提升到 FP32 一次后，误差降到十分之一以下。
