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
# its formulas are derived (SymPy), its numbers computed, checked against real implementations
# (Hugging Face `transformers`, PyTorch's own engines) and drawn. Where the slides are wrong or
# ambiguous, the notebook shows the evidence and says so in a boxed **Erratum**.
#
# After this notebook you know which notebook covers which slide, what the slides' Chinese terms
# mean in English, and how to run everything on a laptop, on a GPU machine, or on Colab.

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
# ## 1. The chapter, slide by slide
#
# The slides' sections, in their order, and the notebook for each. The table is computed from
# the files in `notebooks/`, so it says which notebooks exist in this copy of the repository.

# %%
from pathlib import Path

CHAPTER_MAP = [
    # (notebook, slide section, English topic)
    ("01_pretraining_settings", "现有大语言模型的预训练优化设置", "optimisation settings of real LLMs"),
    ("02_batch_schedules", "动态批次调整", "batch-size schedules"),
    ("03_lr_schedules", "学习率预热与衰减", "learning-rate warmup and decay"),
    ("04_mixed_precision", "混合精度训练", "mixed precision, loss scaling, FP8"),
    ("05_data_parallel_zero", "数据并行 · 零冗余优化器 (ZeRO)", "data parallel and ZeRO-1/2/3"),
    ("06_tensor_parallel", "张量并行", "tensor parallel"),
    ("07_pipeline_parallel", "流水线并行", "pipeline parallel, GPipe and 1F1B"),
    ("08_3d_parallel", "3D 并行训练", "combining data, tensor and pipeline parallel"),
    ("09_activation_recomputation", "激活重计算", "activation recomputation"),
    ("10_parameter_count", "模型参数量估计", "parameter count"),
    ("11_memory_estimation", "训练显存估计", "training memory"),
]
here = Path.cwd()
print(f"{'notebook':<30} {'status':<9} slide section · topic")
for stem, section, topic in CHAPTER_MAP:
    status = "ready" if (here / f"{stem}.ipynb").exists() else "planned"
    print(f"{stem:<30} {status:<9} {section} · {topic}")

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
# | 张量并行 | tensor parallelism (TP, Megatron-style) | 06 |
# | 流水线并行 | pipeline parallelism (PP) | 07 |
# | 梯度累积 | gradient accumulation (micro-batches) | 07 |
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
# | 单卡 | per GPU | 05, 11 |
#
# Units: the notebooks say **GB** for 10⁹ bytes and **GiB** for 2³⁰ bytes, always. The slides
# write "GB" for both (see notebook 11).

# %% [markdown]
# ## 3. Running the notebooks
#
# **On a laptop or server (CPU is enough).** With Python ≥ 3.10:
#
# ```
# make run     # set up .venv, execute every notebook into build/, write build/html/index.html
# make test    # every test: library, cross-checks with transformers, CLI, nbval on the notebooks
# make lab     # JupyterLab on notebooks/
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
# ## 4. This machine
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
