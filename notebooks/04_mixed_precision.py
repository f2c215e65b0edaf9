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
# halve, measure the speed-up on the machine in front of you, and compare FP8 scaling schemes.
# The code is `llmtrain.precision` (formats, FP8) and `llmtrain.amp` (loss scaling, mixed-precision step).

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

from llmtrain import amp, memory, plots, precision, shapes, show, train
from llmtrain.device import choose
from llmtrain.llama import Llama

plots.use_style()
torch.manual_seed(0)

# %% [markdown]
# ## 1. The formats, from their bits
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
    lo, mid, hi = (torch.tensor(float(v)).log10().item() for v in (f.smallest_subnormal, f.smallest_normal, f.max))
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
# ## 2. Where fp16 underflows
#
# Gradients of a real model are small, and many are far smaller than the typical one. The gradients of
# the tiny reference LLaMA after 100 steps of training, with the smallest positive numbers of fp16
# and bf16 marked:

# %%
shape = shapes.get("tiny")
tokens = train.corpus(2**16, shape.vocab_size, seed=0)
torch.manual_seed(0)
net = Llama(shape)
train.train(net, steps=100, batch_size=8, seq_len=64, peak_lr=3e-3, seed=0)
x = next(train.batches(tokens, 8, 64, seed=7))
net.zero_grad()
net(x, labels=x).loss.backward()
grads = [p.grad.detach().clone() for p in net.parameters()]
flat = torch.cat([g.flatten() for g in grads])
mags = flat[flat != 0].abs()

fig, ax = plt.subplots(figsize=(7, 3.6))
ax.hist(torch.log10(mags).numpy(), bins=80, color=plots.PALETTE[0])
for name, colour in [("fp16", plots.PALETTE[3]), ("bf16", plots.PALETTE[2])]:
    info = precision.format_info(name)
    for value, style in [(info.smallest_subnormal, ":"), (info.smallest_normal, "--")]:
        if value > mags.min() / 1e3:
            ax.axvline(torch.tensor(float(value)).log10().item(), color=colour, ls=style,
                       label=f"{name} smallest {'subnormal' if style == ':' else 'normal'}")
ax.set(xlabel="log₁₀ |gradient|", ylabel="elements", title="gradients of the tiny LLaMA")
ax.legend(fontsize=8)
plots.save(fig, "04_gradient_underflow")
plt.show()

# %%
fp16 = precision.format_info("fp16")
print(f"smallest nonzero |gradient| {mags.min().item():.3g}; fp16's smallest subnormal {fp16.smallest_subnormal:.3g}")
for scale in (1.0, 2.0**8, 2.0**16):
    sub = (mags * scale < fp16.smallest_normal).float().mean().item()
    print(f"scale {scale:>8g}: fp16 flushes {amp.gradient_underflow(grads, torch.float16, scale):.4%} to 0, "
          f"keeps {sub:.2%} only as subnormals (fewer than 11 significant bits); "
          f"bf16 flushes {amp.gradient_underflow(grads, torch.bfloat16, scale):.2%}")

# %% [markdown]
# In this small model only a tiny share of the gradients falls all the way to zero in fp16, but a
# sizeable share lands in fp16's subnormal range, where precision thins out bit by bit; a scale of 2⁸
# lifts nearly all of them back into the normal range (numbers above). Larger models and longer sequences push gradients lower — activation gradients of a
# mean loss shrink with the number of tokens — and Micikevicius et al. (2018) found a large part of
# the activation gradients of real networks below fp16's range. bf16's range is fp32's: it needs no
# scaling.

# %% [markdown]
# ## 3. Loss scaling, static and dynamic
#
# Multiplying the loss by $s$ multiplies every gradient by $s$ (the chain rule is linear), lifting
# them above fp16's floor; the optimizer step divides by $s$ again. Too large a scale overflows
# (fp16's max is 65504) and the step must be skipped. A *dynamic* scaler starts high, halves the scale
# on every overflow and doubles it after `growth_interval` clean steps — `llmtrain.amp.LossScaler`,
# written from scratch and tested to take exactly the same scales and skipped steps as
# `torch.amp.GradScaler` on random gradient sequences:

# %%
show(amp.LossScaler.update)

# %%
torch.manual_seed(0)
fp16_net = Llama(shape)
scaler = amp.LossScaler(init_scale=2.0**24, growth_interval=20)
trainer = amp.MixedPrecisionTrainer(fp16_net, torch.float16, lr=1e-3, scaler=scaler)
fp16_losses = [trainer.step(b, b) for _, b in zip(range(120), train.batches(tokens, 8, 64, seed=0))]
print(f"fp16 with dynamic loss scaling: {scaler.skipped_steps} of 120 steps skipped; "
      f"scale {2.0**24:g} → {scaler.get_scale():g}; final loss {sum(fp16_losses[-10:]) / 10:.3f}")

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.step(range(1, len(scaler.scales) + 1), scaler.scales, where="post")
ax.set(yscale="log", xlabel="step", ylabel="loss scale", title="dynamic loss scale during fp16 training")
plots.save(fig, "04_loss_scale")
plt.show()

# %% [markdown]
# ## 4. Why the optimizer keeps fp32 master weights
#
# A bf16 number has 8 significant bits: next to 1.0 the representable numbers are $2^{-7} \approx 0.0078$
# apart. An update smaller than half of that rounds away:

# %%
w = torch.ones(4, dtype=torch.bfloat16)
for u in (1e-2, 2.0**-7, 2.0**-8, 1e-3):
    lost = amp.lost_update_fraction(w, torch.full((4,), u))
    print(f"1.0 + {u:<10.6g} in bf16 = {(w + u)[0].item():<10.6g} update {'LOST' if lost == 1 else 'kept'}")

# %% [markdown]
# Adam's updates are about lr in size: with lr = 10⁻³ and weights near 1 (RMSNorm gains start at 1)
# most updates vanish in pure bf16. Mixed precision applies them to an fp32 master copy instead and
# rounds only the copy used for compute. The same run, 150 steps at lr 10⁻³:

# %%
def run_16bit(master, steps=150):
    torch.manual_seed(0)
    t = amp.MixedPrecisionTrainer(Llama(shape), torch.bfloat16, lr=1e-3, master_weights=master)
    return [t.step(b, b) for _, b in zip(range(steps), train.batches(tokens, 8, 64, seed=0))]


mixed_losses, pure_losses = run_16bit(True), run_16bit(False)
print(f"final loss (mean of last 10): mixed {sum(mixed_losses[-10:]) / 10:.3f}, "
      f"pure bf16 {sum(pure_losses[-10:]) / 10:.3f}")
fig, ax = plt.subplots(figsize=(7, 3.4))
ax.plot(mixed_losses, label="bf16 compute, fp32 master weights")
ax.plot(pure_losses, label="pure bf16 (weights and Adam states)")
ax.set(xlabel="step", ylabel="training loss", title="master weights keep small updates")
ax.legend()
plots.save(fig, "04_master_weights")
plt.show()

# %% [markdown]
# The step that does it, from `llmtrain.amp`:

# %%
show(amp.MixedPrecisionTrainer.step)

# %% [markdown]
# ## 5. Memory: which bytes halve
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
from llmtrain import activation_formulas

S7 = shapes.get("llama-7b")
a32 = activation_formulas.saved_bytes(S7, 1, 2048, dtype="fp32", impl="hf-sdpa")
a16 = activation_formulas.saved_bytes(S7, 1, 2048, dtype="bf16", impl="hf-sdpa")
print(f"activations fp32 {a32 / 1e9:.2f} GB, bf16 {a16 / 1e9:.2f} GB: ratio {a16 / a32:.3f}")

# %% [markdown]
# Measured on this machine with the exact tracker (`memory.measure_peak`): one forward and backward of
# a small reference LLaMA in fp32 and in bf16 (weights, gradients and activations all 16-bit here):

# %%
small = shapes.ModelShape(vocab_size=1024, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=8,
                          intermediate_size=688, max_seq_len=256, name="small")
ids = torch.randint(0, small.vocab_size, (4, 256))
peaks = {}
for dtype in (torch.float32, torch.bfloat16):
    torch.manual_seed(0)
    net = Llama(small).to(dtype)
    peaks[dtype] = memory.measure_peak(lambda: net(ids, labels=ids).loss.backward(), include=net)
    print(f"{str(dtype):<15} weights {peaks[dtype].start_bytes:>11,} B   peak {peaks[dtype].peak_bytes:>11,} B")
print(f"peak ratio bf16/fp32: {peaks[torch.bfloat16].peak_bytes / peaks[torch.float32].peak_bytes:.3f}")

# %% [markdown]
# > **Erratum — 显存减半.** "Mixed precision halves memory" holds for the 16-bit weights, gradients
# > and (roughly) the activations, not for the model states as a whole: with Adam, mixed precision
# > keeps 16 bytes per parameter, exactly as many as fp32 training (2 + 2 + 4 master + 4 + 4). The
# > slides' own 16P (训练显存估计) is this mixed-precision count. Evidence: the cells above.
#
# ## 6. Speed: what "efficiency doubles" means on this machine
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

# %% [markdown]
# For comparison, the dense tensor-core peaks NVIDIA publishes (TFLOP/s; datasheets of the A100 SXM,
# H100 SXM and T4): on GPUs "efficiency doubles" is an understatement for matmuls — 16 to 30× fp32 —
# while a whole training step gains less, since not everything is a matmul. On a CPU it depends on
# the instruction set: some have bf16 matrix units (Intel AMX, AVX512-BF16), many have none, and
# fp16 matmuls on a CPU without fp16 kernels can be *far slower* than fp32.

# %%
published = {  # dense TFLOP/s: fp32 (no tensor cores), tf32, bf16, fp16, fp8
    "A100 SXM": {"fp32": 19.5, "tf32": 156, "bf16": 312, "fp16": 312, "fp8": None},
    "H100 SXM": {"fp32": 67, "tf32": 495, "bf16": 989, "fp16": 989, "fp8": 1979},
    "T4": {"fp32": 8.1, "tf32": None, "bf16": None, "fp16": 65, "fp8": None},
}
for card, row in published.items():
    ratios = ", ".join(f"{k} {v / row['fp32']:.0f}×" for k, v in row.items() if v and k != "fp32")
    print(f"{card:<9} {ratios}")

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

# %% [markdown]
# ## 7. FP8 and fine-grained scaling (DeepSeek-V3)
#
# FP8 has 3 or 2 mantissa bits and a narrow range, so every tensor is stored with a *scale*: the
# largest magnitude maps to the format's max (448 for E4M3). One scale per tensor lets a single outlier
# squeeze everything else towards zero. DeepSeek-V3 (arXiv 2412.19437, §3.3) scales activations per
# 1×128 tile and weights per 128×128 block. On activations with a few outlier channels:

# %%
rows = []
for outlier_scale in (1e2, 1e4):
    acts = precision.realistic_activations((256, 1024), outlier_scale=outlier_scale, seed=0)
    for fmt in ("fp8_e4m3", "fp8_e5m2"):
        errs = {g: precision.quantization_error(acts, fmt, granularity=g) for g in ("tensor", "tile", "block")}
        rows.append((outlier_scale, fmt, errs))
print(f"{'outliers ×':>10} {'format':<9} {'per tensor':>10} {'1×128 tile':>10} {'128×128 block':>14}")
for outlier_scale, fmt, errs in rows:
    print(f"{outlier_scale:>10g} {fmt:<9} {errs['tensor']:>10.4f} {errs['tile']:>10.4f} {errs['block']:>14.4f}")

# %% [markdown]
# Tiles win for activations: an outlier is usually the largest value of its own tile, so it costs
# only its tile's precision; a 128×128 block holds whole outlier columns and behaves like one scale
# per tensor. Weights have no such outlier channels, and blocks let the scale follow magnitudes that
# differ across the matrix. An FP8 matrix product, emulated (quantise, then multiply in fp32):

# %%
acts = precision.realistic_activations((256, 1024), outlier_scale=1e2, seed=0)
weights = torch.randn(1024, 512, generator=torch.Generator().manual_seed(1)) / 32
exact = acts @ weights
for fmt in ("fp8_e4m3", "fp8_e5m2"):
    for g in ("tensor", "fine"):
        approx = precision.fp8_matmul(acts, weights, fmt, granularity=g)
        print(f"{fmt:<9} {g:<7} relative error {((approx - exact).norm() / exact.norm()).item():.4f}")

# %% tags=["nbval-ignore-output"]
# the real FP8 matmul exists only on GPUs with FP8 tensor cores (H100/H200, RTX 40xx): measure it there
if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9) and hasattr(torch, "_scaled_mm"):
    a8 = acts[:, :1024].cuda().to(torch.float8_e4m3fn)
    b8 = weights.cuda().t().contiguous().to(torch.float8_e4m3fn).t()
    one = torch.tensor(1.0, device="cuda")
    out = torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    print("torch._scaled_mm ran on", torch.cuda.get_device_name(), "output", tuple(out.shape))
else:
    print("skipped: torch._scaled_mm needs a GPU with FP8 tensor cores (compute capability 8.9+)")

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
