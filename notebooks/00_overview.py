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
# # Overview · 预训练之训练技术
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llmtrain/llmtrain/blob/main/notebooks/00_overview.ipynb)
#
# This is the runnable companion to the lecture "预训练之训练技术" (training techniques for
# pretraining) of the textbook 《大语言模型》. Each topic of the slides has a notebook in which
# its numbers are computed, its formulas derived (with SymPy where the slides give a formula),
# checked against real implementations where one exists (Hugging Face `transformers`, PyTorch's
# own schedulers, `GradScaler`, `FlopCounterMode`, DDP and FSDP2) and drawn. Where the slides are
# wrong or ambiguous, the notebook shows the evidence and says so in a boxed **Erratum**.
#
# After this notebook you know which notebook covers which slide, what the slides' Chinese terms
# mean in English, and how to run everything on a laptop, on a GPU machine, or on Colab.

# %% [markdown]
# > **导读**
# > 这是《大语言模型》教材“预训练之训练技术”一章的配套笔记本的总览。
# > 本笔记给出章节地图：幻灯片的每一节由哪个笔记本讲解，哪些已经完成、哪些还在计划中。
# > 术语表把幻灯片中的中文术语对应到笔记本使用的英文术语，并注明在哪个笔记本出现。
# > 最后说明如何在笔记本电脑、GPU 服务器或 Colab 上运行全部笔记本，以及本机将使用的设备。

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

# %% [markdown]
# ## 1. The chapter, slide by slide · 章节地图
#
# The slides' sections, in their order, and the notebook for each (`llmtrain.chapter`). Which
# notebooks exist is shipped inside the package (written by `scripts/notebooks.py sync`, checked
# against `notebooks/` by the tests), so the map is right in a clone and on Colab alike.

# %%
from llmtrain import chapter

print(chapter.table())
ready = [stem for stem, _, _ in chapter.CHAPTER_MAP if chapter.status(stem) == "ready"]
print(f"\n{len(ready)} of {len(chapter.CHAPTER_MAP)} sections have their notebook")

# %% [markdown]
# ## 2. Glossary · 术语表
#
# Every technical term of the slides, with the English term the notebooks use.
#
# | 中文 (slides) | English | where |
# |---|---|---|
# | 预训练 | pretraining | all |
# | 批次大小 | batch size (tokens per optimizer step, e.g. "4M") | 01, 02 |
# | 动态批次调整 | dynamic batch size (batch-size warmup / ramp-up) | 02 |
# | 学习率 | learning rate | 03 |
# | 预热 → 峰值 → 衰减 | warmup → peak → decay | 03 |
# | 余弦 (衰减) | cosine (decay) | 03 |
# | 平方根倒数 | inverse square root (decay) | 03 |
# | 手动 (调整) | manual (schedule adjusted by hand) | 01, 03 |
# | 优化器 | optimizer (Adam, AdamW, Adafactor) | 01 |
# | 精度类型 | numeric precision (FP16, BF16, FP8) | 04 |
# | 权重衰减 | weight decay | 01 |
# | 梯度裁剪 | gradient clipping (max global norm) | 01 |
# | 混合精度训练 | mixed-precision training | 04 |
# | 3D 并行训练 | 3D parallelism (data × tensor × pipeline) | 08 |
# | 数据并行 | data parallelism (DP) | 05 |
# | 零冗余优化器 (ZeRO) | Zero Redundancy Optimizer (ZeRO-1/2/3, FSDP) | 05 |
# | 张量并行 | tensor parallelism (TP, Megatron-style) | 06, 08 |
# | 流水线并行 | pipeline parallelism (PP) | 07, 08 |
# | 梯度累积 | gradient accumulation (micro-batches) | 02, 05 |
# | 激活值 | activations (tensors saved for the backward pass) | 09, 11 |
# | 激活重计算 | activation recomputation (gradient checkpointing) | 09 |
# | 前向传播 / 反向传播 | forward pass / backward pass | 09 |
# | 显存 | GPU memory (device memory) | 04, 05, 11 |
# | 模型参数量估计 | parameter-count estimation | 10 |
# | 输入词嵌入层 | input embedding layer | 10 |
# | 输出层 | output layer (LM head) | 10 |
# | 归一化层 | normalisation layer (RMSNorm) | 10 |
# | 多头注意力层 | multi-head attention (MHA) layer | 10 |
# | 前馈网络层 | feed-forward network (FFN, here SwiGLU) | 10 |
# | Transformer 层数 $L$ | number of layers | 10, 11 |
# | 隐含层维度 $H$ | hidden size | 10, 11 |
# | 中间状态维度 $H'$ | intermediate (FFN) size | 10 |
# | 注意力头数 $N$ | number of attention heads | 10 |
# | 上下文窗口长度 $T$ | context length (sequence length) | 10, 11 |
# | 词表大小 $V$ | vocabulary size | 10, 11 |
# | 训练显存估计 | training-memory estimation | 11 |
# | 模型参数与优化器的显存占用 | memory for parameters, gradients and optimizer states | 05, 11 |
# | 代码库内核 | framework runtime (CUDA context, kernels) | 11 |
# | 中间结果 | intermediate results (temporary buffers) | 11 |
# | 显存碎片 | memory fragmentation | 11 |
# | 单卡 | per GPU | 05, 11, 12 |
# | 全参数微调 / 全量微调 | full-parameter fine-tuning | 12 |
# | 低比特量化训练 / 4 比特优化器 | low-bit training / 4-bit (8-bit) optimizer states, block-wise quantisation | 12 |
# | 梯度低秩投影 (GaLore) | gradient low-rank projection | 12 |
# | 融合梯度计算与参数更新 (LOMO) | fused gradient computation and update (optimizer step in backward) | 12 |
#
# Units: the notebooks say **GB** for 10⁹ bytes and **GiB** for 2³⁰ bytes, always. The slides
# write "GB" for both (see notebook 11).

# %% [markdown]
# ## 3. Running the notebooks · 如何运行
#
# **On a laptop or server (CPU is enough).** With Python ≥ 3.10:
#
# ```
# make run     # set up .venv, execute every notebook into build/, write build/html/index.html
# make test    # every test: library, cross-checks with transformers, CLI, nbval on the notebooks
# make test-portable  # nbval again with the kernels of two other CPUs (AVX2, SSE4)
# make lab     # JupyterLab on notebooks/ (adds --allow-root when run as root)
# ```
#
# Every notebook runs top to bottom in about a minute on a 2-core CPU. Parts that need a GPU
# (timings, CUDA memory, FP8 matmuls) run when one is present and otherwise print one line
# saying what was skipped.
#
# **On Colab.** Click the badge at the top of a notebook. Its setup cell installs `llmtrain` from
# the repository and keeps Colab's own PyTorch. Choose *Runtime → Change runtime type → GPU* for
# the GPU parts; on a T4 (no fast bf16) the notebooks use fp16 with loss scaling.
#
# **The library.** Everything a notebook runs lives in the package `llmtrain` (`lib/llmtrain/`),
# with tests in `tests/`. Notebooks import it and show its code with `llmtrain.show`, so what
# you read is what runs and what is tested:

# %%
from llmtrain import params, shapes, show

show(params.count)

# %%
print(f"LLaMA-7B: {params.count(shapes.get('llama-7b')):,} parameters")

# %% [markdown]
# The same from a shell: `llmtrain params llama-7b` (or `python -m llmtrain params llama-7b`).
#
# ## 4. This machine · 本机环境
#
# Which device the notebooks will use, and the 16-bit format they pick for it
# (`llmtrain.device.choose`; set `LLMTRAIN_DEVICE=cpu` to force the CPU).

# %% tags=["nbval-ignore-output"]
import os

import torch

from llmtrain.device import choose

choice = choose()
print("device     :", choice.device, f"({choice.name})")
print("16-bit     :", choice.dtype, "-", choice.note)
print("torch      :", torch.__version__, "| CUDA build:", torch.version.cuda or "none")
print("CPU threads:", torch.get_num_threads(), "of", os.cpu_count(), "cores")
if choice.device.type == "cuda":
    free, total = torch.cuda.mem_get_info()
    print(f"GPU memory : {total / 2**30:.1f} GiB total, {free / 2**30:.1f} GiB free")
else:
    print("GPU        : none found; GPU-only parts of the notebooks will be skipped with a note")

# %% [markdown]
# ## 要点 · Key points
#
# - 章节地图来自 `llmtrain.chapter`：幻灯片的 11 节中，上面的表格列出了哪些已有笔记本（ready）、哪些还在计划中（planned）；这份清单随软件包一起安装，所以在 Colab 上同样正确。
# - 术语表把幻灯片的中文术语对应到英文术语；单位一律区分 GB（10⁹ 字节）和 GiB（2³⁰ 字节）。
# - 笔记本运行的代码都在 `llmtrain` 软件包中并有测试，笔记本用 `llmtrain.show` 展示源码：例如 LLaMA-7B 的参数量 `params.count` 算出 6,738,415,616。
# - `make run` 执行全部笔记本，`make test` 运行全部测试；`make test-portable` 再用 AVX2 和 SSE4 两种 CPU 内核各跑一遍 nbval，保证存储的输出在任何 CPU 上都成立。
