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
# # Parameter count · 模型参数量估计
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/llmtrain/llmtrain/blob/main/notebooks/10_parameter_count.ipynb)
#
# After this notebook you can
#
# - derive the chapter's parameter formula for LLaMA term by term, and reproduce its two numbers
#   (7B → 6,738,415,616; 65B → 65,285,660,672);
# - say exactly where the formula stops being right (grouped-query attention, tied embeddings,
#   biases) and correct it;
# - count any Llama, Mistral or Qwen2 model from its `config.json` (`llmtrain params --hf-config`)
#   and know the answer matches what Hugging Face `transformers` builds.
#
# Every number below is computed by `llmtrain.cost.params` and checked against two real
# implementations: `transformers`' `LlamaForCausalLM` and our from-scratch `llmtrain.model.llama.Llama`,
# both built on PyTorch's *meta* device (shapes only, no memory, no download).

# %% [markdown]
# > **导读**
# > 本笔记本逐项推导课件中 LLaMA 的参数量公式 $2VH + H + L(4H^2 + 3HH' + 2H)$，并复现课件中的两个数字（7B 为 6,738,415,616，65B 为 65,285,660,672）。
# > 每个数字都由 `llmtrain.cost.params` 计算，并与 Hugging Face `transformers` 的 `LlamaForCausalLM` 和我们从零实现的参考模型逐一对照（在 meta 设备上构建，不占内存、无需下载）。
# > 这个公式只适用于多头注意力（MHA）：对采用分组查询注意力（GQA）的 Llama-2 70B 和 Llama-3，它会多算 10%–14%，本笔记本给出一般公式。
# > 最后处理共享词嵌入与偏置（以 Qwen2.5-0.5B 为例），并比较 Llama 系列各部分参数的占比。

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
import sympy as sp
import torch

from llmtrain import plots, show
from llmtrain.cost import params
from llmtrain.model import shapes
from llmtrain.model.llama import Llama

plots.use_style()
torch.manual_seed(0)
sym = params.symbols()
V, H, Hp, L, N, N_kv = (sym[k] for k in ("V", "H", "Hp", "L", "N", "N_kv"))

# %% [markdown]
# ## 1. The chapter's formula, term by term · 课件中的公式，逐项推导
#
# The slides list the symbols — Transformer 层数 $L$ (layers), 隐含层维度 $H$ (hidden size),
# 中间状态维度 $H'$ (FFN intermediate size), 注意力头数 $N$ (heads), 上下文窗口长度 $T$
# (context length), 词表大小 $V$ (vocabulary) — and then count each kind of layer:
#
# | slide | gloss | parameters |
# |---|---|---|
# | 输入词嵌入层 $E \in \mathbb{R}^{V\times H}$ | input embedding | $VH$ |
# | 输出层 $W \in \mathbb{R}^{H\times V}$ | output layer (`lm_head`) | $VH$ |
# | 归一化层 (2L+1层), $\gamma \in \mathbb{R}^H$ | RMSNorm, two per layer plus a final one | $(2L+1)H$ |
# | 多头注意力层 (L层), $W^Q, W^K, W^V, W^O \in \mathbb{R}^{H\times H}$ | multi-head attention | $4LH^2$ |
# | 前馈网络层 (L层), $W^G, W^U \in \mathbb{R}^{H\times H'}$, $W^D \in \mathbb{R}^{H'\times H}$ | SwiGLU FFN | $3LHH'$ |
#
# We build each term from the matrix shapes, as the slides do, and add them up.

# %%
def numel(*dims):
    """Number of entries of a matrix (or vector) of the given shape."""
    return sp.Mul(*dims)


slide_terms = {
    "input embedding E (V×H)": numel(V, H),
    "output layer W (H×V)": numel(H, V),
    "RMSNorm γ (H), 2L+1 of them": (2 * L + 1) * numel(H),
    "attention W^Q,W^K,W^V,W^O (H×H), L layers": L * 4 * numel(H, H),
    "FFN W^G,W^U (H×H'), W^D (H'×H), L layers": L * (2 * numel(H, Hp) + numel(Hp, H)),
}
for name, term in slide_terms.items():
    print(f"{name:<45} {sp.sstr(term)}")
P_slides = sum(slide_terms.values())
P_slides

# %% [markdown]
# The slides write the sum as $2VH + H + L(4H^2 + 3HH' + 2H)$. Same polynomial?

# %%
as_printed = 2 * V * H + H + L * (4 * H**2 + 3 * H * Hp + 2 * H)
print("sum of terms − slide formula =", sp.simplify(P_slides - as_printed))
print("llmtrain.cost.params.formula()   − slide formula =", sp.simplify(params.formula() - as_printed))

# %% [markdown]
# `llmtrain.cost.params` holds the same terms (with switches for what the slides leave out); this is
# the code that runs in every count below:

# %%
show(params.terms)

# %% [markdown]
# ## 2. The chapter's two numbers · 课件中的两个数字
#
# > LLaMA 7B: $V = 32000, L = 32, H = 4096, H' = 11008$ → 参数量为 6,738,415,616
# >
# > LLaMA 65B: $V = 32000, L = 80, H = 8192, H' = 22016$ → 参数量为 65,285,660,672

# %%
chapter_says = {"llama-7b": 6_738_415_616, "llama-65b": 65_285_660_672}  # quoted from the slides
for name, claimed in chapter_says.items():
    shape = shapes.get(name)
    value = int(as_printed.subs(params.subs(shape)))
    print(f"{name}: formula gives {value:,}; slides say {claimed:,}; "
          f"{'match' if value == claimed else 'MISMATCH'}")

# %% [markdown]
# Where do the 6.74 B parameters live? Almost two thirds in the FFN, one third in attention;
# embeddings and norms are small at this vocabulary.

# %%
print(params.describe(shapes.get("llama-7b")))

# %% [markdown]
# ## 3. Checked against real implementations · 与真实实现对照
#
# A formula is only as good as its agreement with the code people train. For every preset we
# build two models on the meta device and count `numel()` of their parameters:
#
# - `transformers.LlamaForCausalLM` from a config (nothing downloaded);
# - `llmtrain.model.llama.Llama`, our from-scratch reference model (its `state_dict` loads into
#   `LlamaForCausalLM`; the tests check their logits agree to 1e-5).
#
# $T$ never appears: RoPE has no parameters (its `inv_freq` is a buffer, not a parameter).

# %%
from transformers import LlamaForCausalLM


def numel_of(model):
    return sum(p.numel() for p in model.parameters())


print(f"{'model':<11} {'slides':>16} {'llmtrain':>16} {'transformers':>16} {'reference':>16}")
for name in shapes.names():
    shape = shapes.get(name)
    with torch.device("meta"):
        hf = numel_of(LlamaForCausalLM(shape.to_hf_config()))
        ref = numel_of(Llama(shape))
    ours, slides = params.count(shape), params.slides_count(shape)
    assert ours == hf == ref, name
    flag = "" if slides == ours else f"  ← slides {100 * (slides - ours) / ours:+.1f} %"
    print(f"{name:<11} {slides:>16,} {ours:>16,} {hf:>16,} {ref:>16,}{flag}")

# %% [markdown]
# In the reference model the attention term is four `nn.Linear`s — $W^Q, W^K, W^V, W^O$ —
# whose output widths already allow GQA (`kv_size` = $N_{kv} d$):

# %%
from llmtrain.model.llama import Attention

show(Attention.__init__)

# %% [markdown]
# Three columns of the table agree everywhere. The slides' formula agrees for LLaMA-1 and Llama-2 7B/13B —
# and overcounts Llama-2 70B and both Llama-3 models by 10–14 %.
#
# ## 4. Where the formula fails: grouped-query attention (GQA) · 公式失效之处：分组查询注意力
#
# The slides' own table lists `# kv heads` = 8 for Llama-2 70B and Llama-3 (GQA), but the
# formula assumes $W^K, W^V \in \mathbb{R}^{H\times H}$. With GQA, the $N$ query heads share
# $N_{kv}$ key/value heads of width $d = H/N$, so
# $W^K, W^V \in \mathbb{R}^{H\times d N_{kv}}$:

# %%
d = H / N
attn_gqa = numel(H, H) + 2 * numel(H, d * N_kv) + numel(H, H)  # W^Q, W^K, W^V, W^O
print("attention per layer, GQA:", sp.factor(attn_gqa))
overcount = sp.factor(sp.simplify(params.formula() - params.formula(gqa=True)))
print("slides − GQA-correct total:", overcount)
print("check: equals 2·L·(H² − H·d·N_kv):", sp.simplify(overcount - 2 * L * (H**2 - H * d * N_kv)) == 0)

# %%
for name in ["llama2-70b", "llama3-8b", "llama3-70b"]:
    shape = shapes.get(name)
    extra = int(overcount.subs(params.subs(shape)))
    assert extra == params.slides_count(shape) - params.count(shape)
    print(f"{name}: N={shape.num_heads}, N_kv={shape.num_kv_heads}: the slides' formula counts "
          f"{extra:,} parameters too many (the K and V matrices are {shape.num_heads // shape.num_kv_heads}× smaller)")

# %% [markdown]
# > **补充说明 · Note — the formula is for multi-head attention.** The slides give the LLaMA
# > parameter count as $2VH + H + L(4H^2 + 3HH' + 2H)$ and apply it to LLaMA 7B and 65B, for which
# > it is exact (section 2). Their table also lists Llama-2 70B and Llama-3, which use GQA; for those
# > the formula holds only with $N_{kv} = N$. In general (untied embeddings, no biases, $d = H/N$):
# >
# > $$P = 2VH + H + L\left(2H^2 + 2H\,d\,N_{kv} + 3HH' + 2H\right)$$
# >
# > Evidence: the table above (transformers and the reference model agree with this formula on all
# > presets; the slides' version is 13.6 % high for Llama-2 70B).
# > 课件的公式对 LLaMA 7B、65B 完全正确；用于 GQA 模型时，要把注意力项换成上面的一般形式。
#
# ## 5. Tied embeddings and biases · 共享词嵌入与偏置
#
# Small models often *tie* the output layer to the input embedding (one $V\times H$ matrix
# used twice), and Qwen2 adds biases to $W^Q, W^K, W^V$. `params.formula` has a switch for each:

# %%
for flags in [dict(), dict(gqa=True), dict(gqa=True, tied=True), dict(gqa=True, tied=True, bias=True)]:
    print(f"{str(flags):<42} P = {sp.expand(params.formula(**flags))}")

# %% [markdown]
# A Qwen2-style small model, from a config written here as a dict (the values of the published
# Qwen2.5-0.5B `config.json`): tied embeddings, GQA with 2 KV heads, q/k/v biases. With its large
# vocabulary the embedding is over a quarter of the model — the slides' $2VH$ would count it twice.

# %%
from transformers import Qwen2Config, Qwen2ForCausalLM

qwen_cfg = {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "max_position_embeddings": 32768, "tie_word_embeddings": True}
qwen = shapes.ModelShape.from_hf_config(qwen_cfg, name="qwen2.5-0.5b-like")
with torch.device("meta"):
    hf_count = numel_of(Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in qwen_cfg.items() if k != "model_type"})))
print(f"vocabulary V = {qwen.vocab_size:,}, hidden size H = {qwen.hidden_size}")
print(params.describe(qwen))
print(f"transformers Qwen2ForCausalLM: {hf_count:,}  (equal: {hf_count == params.count(qwen)})")

# %% [markdown]
# The same count is one command away for any Llama, Mistral or Qwen2 `config.json`:
#
# ```
# llmtrain params llama3-8b
# llmtrain params --hf-config path/to/config.json --json
# ```

# %%
from llmtrain.cli import main as llmtrain_cli

exit_status = llmtrain_cli(["params", "llama2-70b"])

# %% [markdown]
# ## 6. Where the parameters live, across the Llama family · Llama 系列的参数分布

# %%
import matplotlib.pyplot as plt

family = [n for n in shapes.names() if n != "tiny"]
parts = {n: params.breakdown(shapes.get(n)) for n in family}
totals = {n: sum(parts[n].values()) for n in family}
fig, (ax_abs, ax_rel) = plt.subplots(1, 2, figsize=(11, 4.2))
for ax, scale, ylabel in [(ax_abs, lambda n: 1e9, "parameters (billions, 10⁹)"),
                          (ax_rel, lambda n: totals[n] / 100, "share of the model (%)")]:
    bottom = [0.0] * len(family)
    for comp in params.COMPONENTS:
        vals = [parts[n][comp] / scale(n) for n in family]
        ax.bar(family, vals, bottom=bottom, label=comp, width=0.7)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel(ylabel)
    ax.set_axisbelow(True)
    ax.tick_params(axis="x", rotation=40)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
for i, n in enumerate(family):
    ax_abs.text(i, totals[n] / 1e9 + 0.8, f"{totals[n] / 1e9:.1f}", ha="center", fontsize=8)
ax_abs.set_title("parameters by component")
ax_rel.set_title("the same, as shares")
ax_rel.set_ylim(0, 100)
handles, labels = ax_abs.get_legend_handles_labels()
fig.legend(handles, labels, ncols=5, loc="lower center", bbox_to_anchor=(0.5, -0.04))
fig.tight_layout(rect=(0, 0.06, 1, 1))
plots.save(fig, "10_params_by_component")
plt.show()

# %%
for n in family:
    p = parts[n]
    total = sum(p.values())
    print(f"{n:<11} FFN {100 * p['mlp'] / total:4.1f} %  attention {100 * p['attention'] / total:4.1f} %  "
          f"embedding+head {100 * (p['embedding'] + p['lm_head']) / total:4.1f} %")

# %% [markdown]
# Llama-3's vocabulary of 128,256 (4× Llama-2's) puts 13 % of the 8B model in the embedding and
# output layer; GQA moved parameters from attention into a wider FFN (14,336 instead of 11,008).
#
# ## 7. Explore · 动手探索
#
# Move the sliders: $H$, $L$, $H'$, $N$, $N_{kv}$, $V$ (the defaults are LLaMA-7B). The bar is
# `params.breakdown` by component, the dashed line the slides' formula, which leaves the bar once
# $N_{kv} < N$. Impossible shapes (heads not dividing $H$, KV heads not dividing heads) are
# rejected with the message `ModelShape` gives. The widget is `llmtrain.widgets.ParamsExplorer`:

# %%
from llmtrain import widgets

show(widgets.ParamsExplorer.compute)

# %% tags=["nbval-ignore-output"]
# The live widget. Its stored output is widget state (random ids), so nbval does not compare it.
explorer = widgets.ParamsExplorer()
explorer.widget()

# %% [markdown]
# Without a running kernel (on GitHub, in the HTML pages) the widget above is empty. Its default
# state, LLaMA-7B, drawn once:

# %%
from IPython.display import Image

view = widgets.ParamsExplorer.static()
png, svg = plots.save(view.fig, "10_explore_default")
print(view.text)
Image(filename=png, width=650)  # the saved figure, as in figures/10_explore_default.png

# %% [markdown]
# **Exercise.** Llama-3 70B has $N = 64$ query heads and $N_{kv} = 8$. How many parameters would
# it have with ordinary multi-head attention ($N_{kv} = 64$), everything else equal?
#
# <details><summary>Answer</summary>
#
# `params.count(shapes.get("llama3-70b").replace(num_kv_heads=64))` = 79,948,947,456, which is
# exactly what the slides' formula gives for Llama-3 70B: the formula silently assumes MHA.
# The next cell checks it.
# </details>

# %%
mha = shapes.get("llama3-70b").replace(num_kv_heads=64)
print(f"{params.count(mha):,}", params.count(mha) == params.slides_count(shapes.get("llama3-70b")))

# %% [markdown]
# > **勘误 · Erratum — “nlp intermediate size” in the Llama table.**
# > 课件原文：“nlp intermediate size”
# > The row gives $H'$, the intermediate size of the feed-forward (MLP) layers: its values are the
# > `intermediate_size` of the models' configurations, from which `transformers` builds $W^G, W^U, W^D$
# > (section 3 counts them). "nlp" is a typo for "MLP".
# > **更正：** 该行应为 “MLP intermediate size”，即前馈网络的中间状态维度 $H'$。
#
# > **补充说明 · Note — the rest of the table.** The Llama-2 34B column is empty: that model was
# > described in the Llama-2 paper but never released, so it has no published configuration. The
# > table's `# kv heads` row (8 for Llama-2 70B and Llama-3) is why the formula needs the GQA form
# > of section 4 for those models.

# %% [markdown]
# ## 要点 · Key points
#
# - 按矩阵形状逐项相加（SymPy），正好得到课件的公式 $2VH + H + L(4H^2 + 3HH' + 2H)$；代入后得到 LLaMA-7B 的 6,738,415,616 和 65B 的 65,285,660,672，与课件一致。
# - 三方独立核对：`llmtrain.cost.params`、`transformers` 的 `LlamaForCausalLM` 与参考模型数出的参数量逐个相等。RoPE 没有参数，所以上下文长度 $T$ 不出现在公式里。
# - 课件的公式假设多头注意力（$N_{kv} = N$）。对分组查询注意力（GQA），它多算 $2LH^2(N - N_{kv})/N$：Llama-2 70B 多算 13.6%，Llama-3 8B 多算 10.0%。
# - 一般公式为 $P = 2VH + H + L(2H^2 + 2H\,d\,N_{kv} + 3HH' + 2H)$，$d = H/N$。Llama-3 70B 若改用多头注意力，会有 79,948,947,456 个参数，恰是课件公式给出的值。
# - 小模型常共享词嵌入：按 Qwen2.5-0.5B 配置构建的模型有 494,032,768 个参数，词嵌入占 27.6%；课件公式会给出 663,169,920。
# - 参数主要在前馈网络：LLaMA-7B 的参数 64.2% 在前馈网络，31.9% 在注意力。
# - 勘误：课件 Llama 表中的 “nlp intermediate size” 应为 “MLP intermediate size”（前馈网络的中间状态维度 $H'$）。
