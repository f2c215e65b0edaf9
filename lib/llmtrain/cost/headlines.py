"""The six memory-saving headlines of the slides' 训练显存估计 section, each recomputed.

Each ``Headline`` quotes the slide, names the method and its source, and states the setting we
check it in (model, card, batch, sequence, recomputation): the assumptions are data, so a
reader can change them. ``fit`` adds up one GPU's memory for a setting with
``methods.method_state_bytes`` (exact for the model's tensors) and
``memory.activation_bytes`` (Korthikanti et al.'s 16-bit activations), plus the slides'
~1 GiB for the framework. Notebook 12 shows every row; tests/test_headlines.py checks them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from .. import check
from . import frameworks, memory
from . import methods as mm
from ..model.shapes import resolve
from ..units import GIB

__all__ = ["Setting", "Headline", "HEADLINES", "fit", "describe", "verdict", "verdicts",
           "fp8_lm_arithmetic"]

CARD_24G = 24 * GIB  # RTX 3090 / 4090: 24 GiB of GDDR6X


@dataclass(frozen=True)
class Setting:
    """One GPU's share of a training run, as ``fit`` adds it up.

    method: a ``methods.METHODS`` name, or "adamw" (the 16P baseline). gpus > 1 splits
    the model states evenly over them (ZeRO-3 / FSDP) and adds one decoder layer's gathered
    16-bit weights. recompute: "full" keeps each layer's input only (activation checkpointing).
    """

    model: str
    method: str
    card_bytes: int = CARD_24G
    gpus: int = 1
    batch: int = 1
    seq: int = 512
    recompute: str = "full"
    precision: str = "mixed"
    rank: int | None = None
    in_backward: bool = False
    weight_bits: float | None = None  # weights stored quantised (low-bit training), else w bytes
    master: bool = True  # False: no fp32 master copy (16-bit weights updated in place)


@dataclass(frozen=True)
class Headline:
    slide: str  # as on the slide
    method: str
    source: str
    claim: str  # what the headline claims, in English
    setting: Setting  # where we check it
    baseline: Setting  # the same run with plain AdamW (``describe`` names it)
    note: str = ""
    identified: bool = True  # False: the article does not name its method; ours is a guess
    gpu_claim: str = ""  # a part of the claim only a GPU can check
    checked: str = ""  # set when the setting is not the claim's own: what is checked instead


def fit(s: Setting) -> dict[str, Any]:
    """Per-GPU bytes of ``s`` by part, their total (+1 GiB framework, the slides') and whether
    it fits. Checked: tests/test_headlines.py."""
    shape = resolve(s.model, "model")
    check.positive_int("gpus", s.gpus)
    if s.method == "adamw":
        states = memory.model_state_bytes(shape, precision=s.precision)
        if s.in_backward:
            states["gradients"] = mm.method_state_bytes(shape, "adamw-in-backward",
                                                        precision=s.precision)["gradients"]
    else:
        states = mm.method_state_bytes(shape, s.method, precision=s.precision, rank=s.rank,
                                       in_backward=s.in_backward)
    if not s.master:
        states["master"] = 0
    if s.weight_bits is not None:
        states["weights"] = math.ceil(memory.params_per_gpu(shape) * s.weight_bits / 8)
    parts = {k: math.ceil(v / s.gpus) for k, v in states.items()}
    if s.gpus > 1:  # ZeRO-3 gathers one layer's 16-bit weights at a time
        layer = sum(math.prod(d) for n, d in mm.param_shapes(shape) if ".layers.0." in n)
        parts["gathered layer"] = 2 * layer
    parts["activations"] = memory.activation_bytes(shape, s.batch, s.seq, impl="korthikanti",
                                                   recompute=s.recompute)
    parts["framework"] = frameworks.FRAMEWORK_BYTES
    total = sum(parts.values())
    return {"parts": parts, "total": total, "fits": total <= s.card_bytes,
            "card_bytes": s.card_bytes, "gib": total / GIB}


def describe(s: Setting) -> str:
    """A baseline's name from what it keeps, with its bytes per parameter (weights + gradients
    + master + m and v): mixed-precision AdamW only with its fp32 master copy (16), 16-bit AdamW
    with fp32 states and no master (12), pure-bf16 AdamW (8), fp32 AdamW (16): Micikevicius
    et al. 2018's counts (tests/test_headlines.py)."""
    if s.method != "adamw":
        return s.method
    w, master, state = mm.precision_bytes(s.precision)
    master = master if s.master else 0
    name = {("mixed", True): "mixed-precision AdamW",
            ("mixed", False): "16-bit AdamW, fp32 m and v, no master copy",
            ("bf16", False): "pure-bf16 AdamW", ("fp32", False): "fp32 AdamW"}[
        (s.precision, master > 0)]
    over = f", split over {s.gpus} GPUs" if s.gpus > 1 else ""
    return f"{name} ({2 * w + master + 2 * state} B/param){over}"


def _h(slide, method, source, claim, setting, note="", identified=True, gpu_claim="",
       checked="", **baseline):
    base = replace(setting, method="adamw", rank=None, in_backward=False, weight_bits=None,
                   master=setting.master, **baseline)
    return Headline(slide, method, source, claim, setting, base, note, identified, gpu_claim,
                    checked)


HEADLINES: list[Headline] = [
    _h("田渊栋等人新作：突破内存瓶颈，让一块4090预训练7B大模型", "galore8bit",
       "Zhao et al. 2024, GaLore, arXiv 2403.03507",
       "pre-train LLaMA-7B on one 24 GB RTX 4090",
       Setting("llama-7b", "galore8bit", batch=1, seq=256, recompute="none", precision="bf16",
               rank=1024, in_backward=True),
       "GaLore's own 7B setting: bf16 weights, 8-bit GaLore at rank 1024, per-layer weight "
       "updates (gradients never all alive), 256 tokens per step, no checkpointing"),
    _h("24GB单卡全量微调Llama 3-8B，仅需添加一行代码", "badam",
       "most likely BAdam (Luo, Yu, Li 2024, arXiv 2404.02827; LLaMA-Factory's use_badam)",
       "full fine-tuning of Llama 3-8B on one 24 GB card",
       Setting("llama3-8b", "badam", batch=2, seq=1024, recompute="full"),
       "the slides give the headline only; BAdam is the method whose paper fine-tunes "
       "Llama 3-8B on one RTX3090-24GB (one decoder layer per block, checkpointing)",
       identified=False),
    _h("只需单卡RTX 3090，低比特量化训练就能实现LLaMA-3 8B全参微调", "galore8bit",
       "not identified (a third-party page describes GreenBitAI's green-bit-llm recipe)",
       "full fine-tuning of a low-bit LLaMA-3 8B on one 24 GB RTX 3090",
       Setting("llama3-8b", "galore8bit", batch=1, seq=96, recompute="full", rank=64,
               in_backward=True, weight_bits=2.2, master=False),
       "the recipe as that page gives it: weights at 2.2 bits, 8-bit AdamW with GaLore rank "
       "64, batch 1, 96 tokens", identified=False),
    _h("LLaMA微调显存需求减半，清华提出4比特优化器", "adamw4bit",
       "Li, Chen, Zhu 2023, 4-bit optimizer states, arXiv 2309.01507",
       "halve the memory of fine-tuning LLaMA(-7B)",
       Setting("llama-7b", "adamw4bit", card_bytes=80 * GIB, batch=1, seq=512, recompute="full",
               master=False),
       "16-bit weights and gradients, fp32 (baseline) or 4-bit AdamW states, no fp32 master "
       "copy; with one, the saving is 16 → 9.06 bytes per parameter"),
    _h("用FP8训练大模型有多香？微软：比BF16快64%，省42%内存", "fp8-lm",
       "Peng et al. 2023, FP8-LM, arXiv 2310.18313 (v1: 64 % / 42 %; later versions 75 % / 39 %)",
       "64 % faster and 42 % less memory than BF16 (Megatron-LM) for GPT-175B on H100",
       Setting("llama-65b", "fp8-lm", card_bytes=80 * GIB, gpus=8, batch=1, seq=2048),
       "FP8 weights and gradients, FP16 master and v, FP8 m, split over 8 GPUs",
       gpu_claim="64 % faster: an H100 measurement",
       checked="LLaMA-65B fits on 8 × 80 GiB, and a 42 % saving is arithmetically possible "
       "(model states ≥ 42 % / 62.5 % of the memory: fp8_lm_arithmetic); the 42 % measured "
       "for GPT-175B is not recomputed"),
    _h("650亿参数，8块GPU就能全参数微调：邱锡鹏团队把大模型门槛打下来了", "lomo",
       "Lv et al. 2023, LOMO, arXiv 2306.09782",
       "full fine-tuning of a 65B model on 8 × 24 GB RTX 3090",
       Setting("llama-65b", "lomo", gpus=8, batch=1, seq=512, recompute="full", precision="bf16"),
       "16-bit weights split over the 8 GPUs, one parameter's gradient alive, checkpointing"),
]


def verdict(h: Headline, fits: bool) -> str:
    """✓ the setting fits the card, ✗ it does not, ? the method is not identified here;
    "consistent" where the setting is not the claim's own (``checked`` says what is) and fits;
    a GPU-only part of the claim adds ", ? speed". Checked: tests/test_headlines.py."""
    if not h.identified:
        mark = "?"
    elif not fits:
        mark = "✗"
    else:
        mark = "consistent" if h.checked else "✓"
    return mark + (" (memory), ? speed" if h.gpu_claim else "")


def verdicts() -> list[dict[str, Any]]:
    """One row per headline: the method's and the baseline's per-GPU GiB, whether each fits,
    the baseline's name (``describe``), the fraction saved against it, and the verdict
    (tests/test_headlines.py)."""
    rows = []
    for h in HEADLINES:
        a, b = fit(h.setting), fit(h.baseline)
        rows.append({"headline": h.slide, "method": h.method, "gib": a["gib"],
                     "fits": a["fits"], "baseline": describe(h.baseline),
                     "baseline_gib": b["gib"], "baseline_fits": b["fits"],
                     "saved": 1 - a["total"] / b["total"], "card_gib": h.setting.card_bytes / GIB,
                     "identified": h.identified, "verdict": verdict(h, a["fits"])})
    return rows


def fp8_lm_arithmetic() -> dict[str, Any]:
    """FP8-LM's byte arithmetic: the optimizer side 4+4+4+4 → 2+1+1+2 bytes per parameter
    (master, gradient, m, v; −62.5 %, MS-AMP's O2), and the share f of memory the model states
    must have for that to give the headline's 42 % end to end: f = 0.42 / 0.625 (Peng et al.
    2023, arXiv 2310.18313)."""
    from fractions import Fraction

    before, after = {"master": 4, "gradient": 4, "m": 4, "v": 4}, {"master": 2, "gradient": 1,
                                                                 "m": 1, "v": 2}
    saved = Fraction(sum(before.values()) - sum(after.values()), sum(before.values()))
    return {"before": before, "after": after, "saved": saved,
            "share_needed_for_42": Fraction(42, 100) / saved}
