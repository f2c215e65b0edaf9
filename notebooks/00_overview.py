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
# > 本笔记本先给出章节地图：课件的每一节由哪个笔记本讲解，下面的表格显示 14 个笔记本全部已完成，其中 13、14 号笔记本是课件之外的延伸。
# > 术语表把课件中的中文术语对应到笔记本使用的英文术语，并注明出现在哪个笔记本；记号对照表把课件的 B、T、H、N、P 对应到论文中的 b、s、h、a、Ψ。
# > 另一张表列出正文常用、课件里没有的英文术语及其中文译法；代码打印的文字和图中的标签一律用英文。
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
# Every technical term of the slides, with the English term the notebooks use. The notebooks'
# prose, printed output and figure labels are in English; the 导读, 要点 and headings are also in
# Chinese.
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
# | 优化器 | optimizer (Adam, AdamW, Adafactor) | 01, 13 |
# | 精度类型 | numeric precision (FP16, BF16, FP8) | 04 |
# | 权重衰减 | weight decay | 01, 13 |
# | 梯度裁剪 | gradient clipping (max global norm) | 01, 13 |
# | 混合精度训练 | mixed-precision training | 04 |
# | 3D 并行训练 | 3D parallelism (data × tensor × pipeline) | 08, 14 |
# | 数据并行 | data parallelism (DP) | 05 |
# | 零冗余优化器 (ZeRO) | Zero Redundancy Optimizer (ZeRO-1/2/3, FSDP) | 05 |
# | 张量并行 | tensor parallelism (TP, Megatron-style) | 06, 08 |
# | 流水线并行 | pipeline parallelism (PP) | 07, 08 |
# | GPipe | GPipe: all forward passes, then all backward passes (Huang et al. 2019) | 07 |
# | 梯度累积 | gradient accumulation (micro-batches) | 02, 05, 07, 12 |
# | 激活值 | activations (tensors saved for the backward pass) | 06–09, 11 |
# | 激活重计算 | activation recomputation (gradient checkpointing) | 09 |
# | 前向传播 / 反向传播 | forward pass / backward pass | 09 |
# | 显存 | GPU memory (device memory) | 04, 05, 07, 11, 12 |
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
# | 单卡 / 每卡 | per GPU | 05, 11, 12 |
# | 全参数微调 / 全量微调 | full-parameter fine-tuning | 12 |
# | 低比特量化训练 / 4 比特优化器 | low-bit training / 4-bit (8-bit) optimizer states, block-wise quantisation | 12 |
# | 梯度低秩投影 (GaLore) | gradient low-rank projection | 12 |
# | 融合梯度计算与参数更新 (LOMO) | fused gradient computation and update (optimizer step in backward) | 12 |
#
# Units: the notebooks say **GB** for 10⁹ bytes and **GiB** for 2³⁰ bytes, always. The slides
# write "GB" for both (see notebook 11).
#
# ### Terms the notebooks use that the slides do not · 正文术语（英 → 中）
#
# | English | 中文 | where |
# |---|---|---|
# | token | 词元（token） | all |
# | micro-batch | 微批次 | 02, 05–08 |
# | pipeline stage | 流水级（ZeRO 的 stage 仍称“阶段”） | 07, 08 |
# | bubble, bubble fraction | 气泡、气泡占比 | 07, 08 |
# | 1F1B (one forward, one backward) | 1F1B（一前一后）调度 | 07, 08 |
# | interleaved 1F1B, virtual stages | 交错 1F1B、虚拟流水级 | 07 |
# | zero bubble | 零气泡调度 | 07 |
# | step time | 单步耗时 | 07, 08 |
# | rank | 进程编号（rank） | 05–08, 11, 12 |
# | process group | 进程组 | 08 |
# | node | 节点 | 05–08 |
# | all-reduce | 全归约 | 05–08, 12 |
# | reduce-scatter | 归约散射 | 05, 06, 08 |
# | all-gather | 全收集 | 05, 06, 08 |
# | all-to-all | 全对全通信 | 14 |
# | sequence parallelism | 序列并行 | 06, 08 |
# | context parallelism (CP), ring attention | 上下文并行、环形注意力 | 14 |
# | mixture of experts (MoE), router, expert | 混合专家、路由器、专家 | 14 |
# | expert parallelism (EP) | 专家并行 | 14 |
# | total / active parameters | 总参数量 / 激活参数量 | 14 |
# | master weights | 主权重 | 04, 05, 11, 12 |
# | loss scaling | 损失缩放 | 04 |
# | subnormal, flush to zero | 次正规数、下溢为零 | 04 |
# | selective / full recomputation | 选择性 / 完全重计算 | 08, 09, 11 |
# | checkpoint (of activations) | 检查点 | 09 |
# | MFU / HFU | 模型 / 硬件 FLOPs 利用率 | 08 |
# | closed form | 闭式公式 | 06, 07, 09, 11 |
# | gradient noise scale | 梯度噪声尺度 | 02 |
# | WSD (warmup–stable–decay) | 预热–稳定–衰减 | 03 |
# | GQA (grouped-query attention) | 分组查询注意力 | 06, 10, 12 |
# | tied embeddings | 共享词嵌入 | 10, 12 |
#
# ### Notation · 记号对照
#
# The slides write $B, T, H, N, P$; the papers the notebooks follow (Megatron-LM, ZeRO) and the
# code write other letters. Each notebook says which it uses; this is the whole map.
#
# | slides · 课件 | papers, code · 论文与代码 | 含义 | meaning |
# |---|---|---|---|
# | $B$ | $b$ | 批次大小（序列数）；在流水线中 $b$ 是微批次大小 | batch size in sequences; $b$ is the micro-batch in 06–08 |
# | $T$ | $s$ | 上下文窗口长度 | sequence length |
# | $H$ | $h$ | 隐含层维度 | hidden size |
# | $H'$ | `intermediate_size` | 中间状态维度 | FFN intermediate size |
# | $N$（头数） | $a$; `num_heads` | 注意力头数 | attention heads |
# | — | $N_{kv}$; `num_kv_heads` | KV 头数（GQA） | key/value heads (GQA, notebook 10) |
# | $L$ | $l$, $L$ | Transformer 层数 | layers |
# | $V$ | $v$ | 词表大小 | vocabulary size |
# | $P$ | $\Psi$（ZeRO 论文） | 模型参数量 | parameters |
# | $N$（$16P/N$ 中） | $N_d$, $d$ | GPU 数（数据并行度） | GPUs (data-parallel degree) |
# | — | $t$, $p$, $d$ | 张量、流水线、数据并行度 | tensor-, pipeline-, data-parallel degrees |
# | — | $m$ | 每步的微批次数 | micro-batches per step (07) |
# | — | $v$（07） | 交错调度的虚拟流水级数 | virtual stages of interleaving (07) |
#
# Two letters clash: the slides' $N$ is the number of heads in the parameter count and the
# number of GPUs in $16P/N$; and $t$ (tensor-parallel degree) is not the slides' $T$ (context
# length).

# %% [markdown]
# ## 3. Running the notebooks · 如何运行
#
# **On a laptop or server (CPU is enough).** With a recent Python (`python >= 3.10`):
#
# ```
# make run     # set up .venv, execute every notebook into build/, write build/html/index.html
# make test    # every test: library, cross-checks with transformers, CLI, nbval on the notebooks
# make test-portable  # nbval again with the kernels of two other CPUs (AVX2, SSE4)
# make lab     # JupyterLab on notebooks/ (adds --allow-root when run as root)
# ```
#
# Most notebooks run top to bottom in a minute or two on a 2-core CPU; those that train a
# model (02, 03) or start several processes take a few minutes. Parts that need a GPU
# (timings, CUDA memory, FP8 matmuls) run when one is present and otherwise print one line
# saying what was skipped.
#
# **On Colab.** Click the badge at the top of a notebook. Its setup cell installs `llmtrain` from
# the repository and keeps Colab's own PyTorch. Choose *Runtime → Change runtime type → GPU* for
# the GPU parts; on a T4 (no fast bf16) the notebooks use fp16 with loss scaling.
#
# **In JupyterLab each notebook is listed twice**, as `NN_topic.ipynb` and `NN_topic.py`. They are
# one notebook (a jupytext pair): open the `.ipynb`, which holds the outputs. The `.py` is the same
# notebook as plain text, the source that reviewers diff; jupytext keeps the two in step when you
# save.
#
# **The library.** Everything a notebook runs lives in the package `llmtrain` (`lib/llmtrain/`),
# with tests in `tests/`. Notebooks import it and show its code with `llmtrain.show`, so what
# you read is what runs and what is tested:

# %%
from llmtrain import show
from llmtrain.cost import params
from llmtrain.model import shapes

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
# - 课件 11 节共对应 12 个笔记本（“训练显存估计”一节对应 11、12 两个），另有 13 号笔记本解释表格中设置的来由、14 号笔记本讲解 3D 之外的上下文并行与专家并行，全部已完成；章节地图随 `llmtrain` 软件包安装，在 Colab 上同样正确。
# - 术语表给出课件术语的英文和正文术语的中文；记号对照表说明课件的 B、T、H、N、P 就是论文中的 b、s、h、a、Ψ。单位一律区分 GB（10⁹ 字节）和 GiB（2³⁰ 字节）。
# - 笔记本运行的代码都在 `llmtrain` 软件包中并有测试，笔记本用 `llmtrain.show` 展示源码：例如 `params.count` 算出 LLaMA-7B 的参数量为 6,738,415,616。
# - `make run` 执行全部笔记本，`make test` 运行全部测试；`make test-portable` 再在 AVX2、SSE4 两种指令集的计算内核下各跑一遍 nbval，检验存储的输出在不同 CPU 上是否一致。
