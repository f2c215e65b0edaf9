"""Pretraining settings of real LLMs (slides: 现有大语言模型的预训练优化设置).

The slides' first table, one frozen ``Setting`` per row, in the slides' order:

    模型 | 批次大小 | 学习率 (预热 → 峰值 → 衰减) | 优化器 | 精度类型 | 权重衰减 | 梯度裁剪

Conventions (so that every value can be compared with the slide cell it came from):

- Batch sizes are tokens per optimizer step. The slides write "32K", "3.2M"; we read K and M
  as 10³ and 10⁶ tokens, nominal, as printed. The papers' batches are sequences × sequence
  length, and where a paper gives both they are in ``paper_batch``: then the "M" often turns
  out to be 2²⁰ (PaLM's "4M" is 2048 × 2048 = 4 × 2²⁰ tokens, DeepSeek's "18M" is
  4608 × 4096 = 18 × 2²⁰), a 4.9 % difference the slides' notation does not show.
  "a → b" is a batch-size ramp from a to b; "预热 → b" (warmup to b) a ramp whose start the
  slide does not give; "2M" a constant batch (start = end); "-" not given (both None).
- ``warmup``: True where the slide writes 预热 before the peak learning rate; False where the
  cell has no 预热 (PaLM only: its paper holds the rate at 10⁻² for the first 10k steps).
- ``None`` exactly where the slide has "-": never a guess.
- ``weight_decay`` is a float, or the string ``LR_SQUARED`` ("lr^2") for PaLM, whose decay
  rate is the square of the current learning rate (Chowdhery et al. 2022, §5).
- ``params_b`` is not in the slides: the size (10⁹ parameters) of the model whose numbers
  the row quotes, from the paper in ``source``; ``notes`` says how it was chosen and where
  the slide and that paper differ. The slides' values are kept as printed.
- Also not in the slides, each with the place it was read: ``paper_batch_start`` (the first
  batch of a ramp, as the paper gives it), ``paper_lr_steps`` (a multi-step decay: from which
  fraction of the training tokens which fraction of the peak holds), ``paper_optimizer`` and
  ``betas`` (the optimizer and Adam's (β1, β2) as the paper or training README states them),
  with ``optimizer_source`` saying where.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from .. import check

__all__ = ["Setting", "TABLE", "get", "names", "as_rows", "format_table", "parse_tokens",
           "parse_batch", "format_lr", "HEADER", "DECAYS", "LR_SQUARED"]

LR_SQUARED = "lr^2"  # PaLM: weight decay rate = (current learning rate)²

DECAYS = {"cosine": "余弦", "inverse_sqrt": "平方根倒数", "manual": "手动"}  # our name -> slide's

HEADER = ("model", "batch (tokens)", "learning rate (warmup → peak → decay)", "optimizer",
          "precision", "weight decay", "grad clip")

_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9}
_ARROW = re.compile(r"\s*(?:→|->)\s*")
_WARMUP_WORDS = ("预热", "warmup")


@dataclass(frozen=True)
class Setting:
    """One row of the slides' table (see the module docstring for the conventions)."""

    model: str  # as in the slides
    batch_tokens_start: int | None  # first batch of a ramp, or the constant batch
    batch_tokens_end: int | None  # final batch (= start when constant)
    batch_ramp: bool | None  # the batch grows during training ("a → b" or "预热 → b")
    warmup: bool | None  # 预热 before the peak learning rate
    peak_lr: float | None
    decay: str | None  # a key of DECAYS
    optimizer: str | None  # "Adam", "AdamW", "Adafactor", as printed
    precision: str | None  # "FP16", "BF16"; None where the slide says "-"
    weight_decay: float | str | None  # a float, or LR_SQUARED
    grad_clip: float | None  # max global gradient norm
    params_b: float | None  # NOT in the slides: billions of parameters, from `source`
    source: str  # the paper behind the row
    paper_batch: tuple[int, int] | None = None  # NOT in the slides: final batch as the paper
    #                                             gives it, (sequences, tokens per sequence)
    notes: str = ""  # how params_b was chosen; where the slide and the paper differ
    paper_batch_start: tuple[int, int] | None = None  # NOT in the slides: first batch of a
    #                                                   ramp, (sequences, tokens per sequence)
    paper_lr_steps: tuple[tuple[float, float], ...] | None = None  # NOT in the slides:
    #   multi-step decay, ((fraction of training tokens, lr / peak from there on), ...)
    paper_optimizer: str | None = None  # NOT in the slides: as the paper / README names it
    betas: tuple[float, float] | None = None  # NOT in the slides: Adam's (β1, β2)
    optimizer_source: str = ""  # where paper_optimizer and betas were read

    def __post_init__(self) -> None:
        if self.decay is not None and self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {tuple(DECAYS)} or None, got {self.decay!r}")
        if isinstance(self.weight_decay, str) and self.weight_decay != LR_SQUARED:
            raise ValueError(f"weight_decay must be a number, {LR_SQUARED!r} or None, "
                             f"got {self.weight_decay!r}")
        if self.betas is not None and not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if (self.batch_tokens_start is not None and self.batch_tokens_end is not None
                and self.batch_tokens_start > self.batch_tokens_end):
            raise ValueError(f"batch_tokens_start={self.batch_tokens_start} must not exceed "
                             f"batch_tokens_end={self.batch_tokens_end}")

    @property
    def paper_batch_tokens(self) -> int | None:
        """Final batch in tokens as the paper gives it: sequences × sequence length."""
        return None if self.paper_batch is None else self.paper_batch[0] * self.paper_batch[1]

    @property
    def paper_batch_start_tokens(self) -> int | None:
        """First batch of the ramp in tokens as the paper gives it: sequences × length."""
        return None if self.paper_batch_start is None else (
            self.paper_batch_start[0] * self.paper_batch_start[1])

    def paper_lr_factor(self, frac: float) -> float | None:
        """lr / peak after warmup at ``frac`` of the training tokens, for a multi-step decay
        (``paper_lr_steps``); None where the record has none."""
        check.number("frac", frac, 0, 1)
        if self.paper_lr_steps is None:
            return None
        factor = 1.0
        for start, f in self.paper_lr_steps:
            if frac >= start:
                factor = f
        return factor

    @property
    def batch_text(self) -> str:
        """The batch cell in the slides' notation: "32K → 3.2M", "warmup → 4M", "2M", "-"."""
        if self.batch_tokens_end is None:
            return "-"
        end = _format_tokens(self.batch_tokens_end)
        if not self.batch_ramp:
            return end
        start = "warmup" if self.batch_tokens_start is None else _format_tokens(self.batch_tokens_start)
        return f"{start} → {end}"

    @property
    def lr_text(self) -> str:
        """The learning-rate cell: "warmup → 6e-5 → cosine"."""
        parts = ["warmup"] if self.warmup else []
        parts.append("-" if self.peak_lr is None else format_lr(self.peak_lr))
        if self.decay is not None:
            parts.append(self.decay)
        return " → ".join(parts)

    def row(self) -> tuple[str, ...]:
        """The row as strings, in the order of ``HEADER``."""
        def cell(x):
            return "-" if x is None else str(x)
        return (self.model, self.batch_text, self.lr_text, cell(self.optimizer),
                cell(self.precision), cell(self.weight_decay), cell(self.grad_clip))


def parse_tokens(text: str) -> int:
    """A token count in the slides' notation to an int: "32K" -> 32_000, "3.2M" -> 3_200_000.

    K, M, B are 10³, 10⁶, 10⁹ (decimal; the slides write "M" for tokens). Exact: the
    mantissa is read as a decimal, so "8.25M" is 8_250_000, not a float rounding of it.
    """
    _text(text)
    s = text.strip().replace(",", "").replace("_", "")
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([KMB]?)", s, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"text must be a number with an optional K, M or B suffix, got {text!r}")
    try:
        value = Decimal(m.group(1)) * _UNITS[m.group(2).upper()]
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        raise ValueError(f"text must be a number, got {text!r}") from None
    if value != value.to_integral_value():
        raise ValueError(f"text must be a whole number of tokens, got {text!r} = {value}")
    return int(value)


def parse_batch(text: str) -> tuple[int | None, int | None]:
    """The slides' batch cell to (start, end) tokens.

    "32K → 3.2M" -> (32_000, 3_200_000); "2M" -> (2_000_000, 2_000_000);
    "预热 → 4M" (or "warmup -> 4M") -> (None, 4_000_000); "-" or "" -> (None, None).
    """
    _text(text)
    s = text.strip()
    if s in ("", "-"):
        return None, None
    parts = _ARROW.split(s)
    if len(parts) == 1:
        n = parse_tokens(parts[0])
        return n, n
    if len(parts) != 2:
        raise ValueError(f"text must be 'a → b', 'b' or '-', got {text!r}")
    start = None if parts[0].strip().lower() in _WARMUP_WORDS else parse_tokens(parts[0])
    end = parse_tokens(parts[1])
    if start is not None and start > end:
        raise ValueError(f"a batch ramp must not shrink, got {text!r}")
    return start, end


def format_lr(lr: float) -> str:
    """A learning rate the way the slides print it, in ASCII: 6e-5, 1.25e-4, 1e-2."""
    check.positive_number("lr", lr)
    mantissa, exponent = f"{lr:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _text(text) -> None:
    if not isinstance(text, str):
        check.fail("text", "a string such as '32K', '3.2M' or '32K → 3.2M'", text)


def _settings(settings) -> tuple:
    """A sequence of ``Setting`` rows (e.g. ``TABLE`` or a slice of it)."""
    def row(name, s):
        if not isinstance(s, Setting):
            check.fail(name, "a Setting", s)
        return s
    return tuple(check.sequence("settings", settings, item=row))


def _format_tokens(n: int) -> str:
    """Tokens in the slides' notation: 3_200_000 -> "3.2M", 400_000 -> "0.4M", 32_000 -> "32K"."""
    for suffix, unit in (("M", 10**6), ("K", 10**3)):
        if n >= unit // 10:
            text = f"{Decimal(n) / unit:f}"
            if "." in text:
                text = text.rstrip("0").rstrip(".")
            return text + suffix
    return str(n)


def _row(model, batch, warmup, peak_lr, decay, optimizer, precision, weight_decay, grad_clip,
         params_b, source, notes="", paper_batch=None, **paper):
    start, end = parse_batch(batch)
    ramp = None if end is None else "→" in batch or "->" in batch
    return Setting(model, start, end, ramp, warmup, peak_lr, decay, optimizer, precision,
                   weight_decay, grad_clip, params_b, source, paper_batch, notes, **paper)


# The slides' table, row by row. The batch column is the slides' text, parsed by parse_batch.
TABLE: tuple[Setting, ...] = (
    _row("GPT-3", "32K → 3.2M", True, 6e-5, "cosine", "Adam", "FP16", 0.1, 1.0, 175.0,
         "Brown et al. 2020, Language Models are Few-Shot Learners, arXiv 2005.14165",
         "GPT-3 175B (Table 2.1): lr 0.6e-4 and batch 3.2M are the 175B values; the smaller "
         "models use larger rates (6e-4 at 125M) and smaller batches. The batch ramps linearly "
         "from 32K tokens over the first 4-12B tokens; cosine decay to 10% of the peak (App. B).",
         paper_optimizer="Adam", betas=(0.9, 0.95),
         optimizer_source="Brown et al. 2020, Appendix B: 'we use Adam with β1 = 0.9, β2 = 0.95, "
         "and ε = 10^-8' (with weight decay 0.1; the paper does not say whether it is decoupled)"),
    _row("OPT", "2M", True, 1.2e-4, "manual", "AdamW", "FP16", 0.1, None, 175.0,
         "Zhang et al. 2022, OPT: Open Pre-trained Transformer Language Models, arXiv 2205.01068",
         "OPT-175B (Table 1). The planned schedule is linear decay to 10% of the peak; the "
         "learning rate was then lowered by hand mid-flight (§2.5), hence 'manual'. The slide "
         "gives no clipping; the paper clips gradient norms at 1.0, lowered to 0.3 mid-flight."),
    _row("PaLM", "1M → 4M", False, 1e-2, "inverse_sqrt", "Adafactor", "BF16", LR_SQUARED, 1.0,
         540.0,
         "Chowdhery et al. 2022, PaLM: Scaling Language Modeling with Pathways, arXiv 2204.02311",
         "PaLM 540B: batch 512 → 1024 → 2048 sequences of 2048 tokens (1M → 2M → 4M); lr 1e-2 "
         "for 10k steps, then 1/sqrt(step) (no warmup); weight decay lr^2 of the current lr. "
         "Adafactor is used *without factorization* and with momentum beta1 = 0.9 (§5), so its "
         "states are Adam-sized, not the factored ones of Shazeer & Stern 2018.",
         paper_batch=(2048, 2048)),
    _row("BLOOM", "4M", True, 6e-5, "cosine", "Adam", "BF16", 0.1, 1.0, 176.0,
         "BigScience 2022, BLOOM: A 176B-Parameter Open-Access Multilingual Language Model, "
         "arXiv 2211.05100",
         "BLOOM 176B: 2048 sequences of 2048 tokens; cosine decay to 6e-6 (10% of the peak).",
         paper_batch=(2048, 2048), paper_optimizer="AdamW", betas=(0.9, 0.95),
         optimizer_source="BigScience training README, github.com/bigscience-workshop/bigscience, "
         "train/tr11-176B-ml/README.md, section 'Optimizer': 'apex.optimizers.FusedAdam is used. "
         "AdamW, β1=0.9, β2=0.95, eps=1e−8'"),
    _row("LLaMA-2", "4M", True, 1.5e-4, "cosine", "AdamW", None, 0.1, 1.0, 70.0,
         "Touvron et al. 2023, Llama 2: Open Foundation and Fine-Tuned Chat Models, arXiv 2307.09288",
         "lr 1.5e-4 is the 34B/70B value (Table 1); Llama-2 7B and 13B use 3e-4. Warmup 2000 "
         "steps, cosine decay to 10% of the peak; the paper states no precision.",
         paper_optimizer="AdamW", betas=(0.9, 0.95),
         optimizer_source="Touvron et al. 2023 (Llama 2), pretraining 'Hyperparameters': "
         "'AdamW optimizer ..., with β1 = 0.9, β2 = 0.95, eps = 10−5'"),
    _row("Baichuan-2", "-", True, 1.5e-4, "cosine", "AdamW", "BF16", 0.1, 0.5, 13.0,
         "Yang et al. 2023, Baichuan 2: Open Large-scale Language Models, arXiv 2309.10305",
         "lr 1.5e-4 is the 13B value; Baichuan 2-7B uses 2e-4."),
    _row("Qwen-1.5", "4M", True, 3e-4, "cosine", "AdamW", "BF16", 0.1, 1.0, 14.0,
         "Bai et al. 2023, Qwen Technical Report, arXiv 2309.16609; Qwen1.5 blog (Feb 2024)",
         "Qwen1.5 was released with a blog post, no pretraining report; the values match the "
         "Qwen (1.0) report, where 1.8B, 7B and 14B share lr 3e-4 and batch 4M. params_b: "
         "14B, the largest model of that report."),
    _row("InternLM-2", "5M", True, 3e-4, "cosine", "AdamW", None, 0.1, None, 20.0,
         "Cai et al. 2024, InternLM2 Technical Report, arXiv 2403.17297",
         "params_b: 20B, the largest model of the report (1.8B, 7B, 20B)."),
    _row("Falcon", "预热 → 4M", True, 1.25e-4, "cosine", "AdamW", "BF16", 0.1, 0.4, 180.0,
         "Almazrouei et al. 2023, The Falcon Series of Open Language Models, arXiv 2311.16867",
         "lr 1.25e-4 and clip 0.4 are Falcon-180B's; the batch is ramped up (warmed up) to "
         "about 4M tokens. Falcon-40B used lr 1.85e-4."),
    _row("DeepSeek", "18M", True, 3.2e-4, "cosine", "AdamW", "BF16", 0.1, 1.0, 67.0,
         "DeepSeek-AI 2024, DeepSeek LLM: Scaling Open-Source Language Models with Longtermism, "
         "arXiv 2401.02954",
         "DeepSeek LLM 67B (Table 2): 4608 sequences of 4096 tokens = 18.9e6, lr 3.2e-4; the 7B "
         "model: 2304 sequences (9.4e6 tokens), lr 4.2e-4. Decay: the paper (§2.3) uses a multi-step "
         "scheduler *instead of* cosine: 2000 warmup steps, then 31.6% of the peak after 80% "
         "of the tokens and 10% after 90%. The slide's 'cosine' is wrong for this model.",
         paper_batch=(4608, 4096), paper_lr_steps=((0.8, 0.316), (0.9, 0.1)),
         paper_optimizer="AdamW", betas=(0.9, 0.95),
         optimizer_source="DeepSeek-AI 2024, §2.3 Hyperparameters: 'AdamW optimizer, with ... "
         "β1 = 0.9, β2 = 0.95, and weight_decay = 0.1'; the multi-step decay in the same section"),
    _row("YuLan", "4.5M", True, 3e-4, "cosine", "Adam", "BF16", 0.1, 1.0, 12.0,
         "Zhu et al. 2024, YuLan: An Open-source Large Language Model, arXiv 2406.19853",
         "YuLan-Base 12B, trained from scratch."),
    _row("GLM-130B", "0.4M → 8.25M", True, 8e-5, "cosine", "AdamW", "FP16", 0.1, 1.0, 130.0,
         "Zeng et al. 2022, GLM-130B: An Open Bilingual Pre-trained Model, arXiv 2210.02414",
         "GLM-130B: batch warmed up from 192 to 4224 sequences of 2048 tokens over the first "
         "2.5% of samples; FP16 mixed precision; cosine decay to 10% of the peak.",
         paper_batch=(4224, 2048), paper_batch_start=(192, 2048)),
)


def names() -> list[str]:
    """The models of the table, in the slides' order."""
    return [s.model for s in TABLE]


def get(name: str) -> Setting:
    """The row for ``name`` (case-insensitive: "llama-2" finds "LLaMA-2")."""
    if not isinstance(name, str):
        check.fail("name", f"a model name ({', '.join(names())})", name)
    for s in TABLE:
        if s.model.lower() == str(name).lower():
            return s
    raise ValueError(f"name: unknown model {name!r}; known: {', '.join(names())}")


def as_rows(settings: tuple[Setting, ...] = TABLE) -> list[tuple[str, ...]]:
    """The table as strings: ``HEADER`` first, then one row per setting."""
    settings = _settings(settings)
    return [HEADER] + [s.row() for s in settings]


def format_table(settings: tuple[Setting, ...] = TABLE) -> str:
    """An aligned plain-text table of ``as_rows``, for printing."""
    settings = _settings(settings)
    rows = as_rows(settings)
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
