"""The slides' memory formula and LLMBox's calculator, reproduced exactly as written.

Not the house model (``memory.estimate``): other people's formulas, kept to compare with it
(notebook 11). Checked: tests/test_memory.py (slides), tests/test_memory_llmbox.py (LLMBox).
"""

from __future__ import annotations

import math
from fractions import Fraction

from .. import check
from ..units import GB, GIB
from .memory import Estimate

__all__ = ["slides_formula", "llmbox_activation_bytes", "llmbox_memory_bytes", "llmbox_gpus_needed",
           "LLMBOX_WEIGHT_BYTES"]


def slides_formula(num_params: int, gpus: int, L: int, B: int, T: int, H: int, V: int, *,
                   other_unit: int = GB) -> Estimate:
    """The slides' per-GPU formula exactly as written: 16P/N + 2LBTH + 12BTV + 6.

    The first terms are bytes; the "+6" is in the slide's unit, GB — pass other_unit=GIB
    to read it as GiB (which is how the slides' worked example adds up; notebook 11).
    """
    for name, v in dict(num_params=num_params, gpus=gpus, L=L, B=B, T=T, H=H, V=V,
                        other_unit=other_unit).items():
        check.positive_int(name, v)
    return Estimate({"model states": math.ceil(16 * num_params / gpus),
                     "activations": 2 * L * B * T * H + 12 * B * T * V,
                     "other": 6 * other_unit})


def llmbox_activation_bytes(L: int, B: int, T: int, H: int, V: int) -> int:
    """The book authors' own calculator (RUCAIBox/LLMBox, training/gpu_calculator.py):
    (12 + 2L)·BTH + 12·BTV bytes of activations — the slides' 2LBTH + 12BTV plus 12BTH."""
    for name, v in dict(L=L, B=B, T=T, H=H, V=V).items():
        check.positive_int(name, v)
    return (12 + 2 * L) * B * T * H + 12 * B * T * V


LLMBOX_WEIGHT_BYTES = {"bf16": 2, "fp16": 2, "int8": 1, "fp8": 1, "int4": 0.5}


def llmbox_memory_bytes(num_params: int, gpus: int, L: int, B: int, T: int, H: int, V: int, *,
                        zero: int = 3, model_dtype: str = "bf16") -> int:
    """Per-GPU bytes, end to end, as the book authors' calculator computes them
    (RUCAIBox/LLMBox, training/gpu_calculator.py, full-parameter training, no offload).

    Weights w·P (w = 2 bytes for bf16/fp16) and 14 bytes per parameter (16-bit gradients 2,
    fp32 master weights and Adam's m, v 12) split as ZeRO splits them, plus the **larger** of
    the activations A = (12 + 2L)BTH + 12BTV and a 16-bit gradient buffer G, not their sum:

    - ZeRO-0: wP + 14P + max(2P, A)
    - ZeRO-1: wP + 2P + 12P/N + max(2P + 2P/N, A)
    - ZeRO-2: wP + 14P/N + max(2P + 2P/N, A)
    - ZeRO-3: wP/N + 14P/N + max(2P/N, A)

    No framework constants (the slides' "+6"). Exact rational, rounded up to whole bytes.
    """
    from fractions import Fraction

    for name, v in dict(num_params=num_params, gpus=gpus, L=L, B=B, T=T, H=H, V=V).items():
        check.positive_int(name, v)
    check.one_of("zero", zero, (0, 1, 2, 3))
    check.one_of("model_dtype", model_dtype, tuple(LLMBOX_WEIGHT_BYTES))
    P, N = num_params, gpus
    w = Fraction(LLMBOX_WEIGHT_BYTES[model_dtype])
    A = llmbox_activation_bytes(L, B, T, H, V)
    if zero == 0:
        total = w * P + 14 * P + max(2 * P, A)
    elif zero == 1:
        total = w * P + 2 * P + Fraction(12 * P, N) + max(2 * P + Fraction(2 * P, N), A)
    elif zero == 2:
        total = w * P + Fraction(14 * P, N) + max(2 * P + Fraction(2 * P, N), A)
    else:
        total = w * P / N + Fraction(14 * P, N) + max(Fraction(2 * P, N), A)
    return math.ceil(total)


def llmbox_gpus_needed(num_params: int, L: int, B: int, T: int, H: int, V: int, *,
                       zero: int = 3, model_dtype: str = "bf16", card_bytes: int = 80 * GIB,
                       usable: float = 0.95, max_gpus: int = 99) -> tuple[int, int]:
    """The LLMBox calculator's answer: the fewest GPUs N (1 to ``max_gpus``) with
    ``llmbox_memory_bytes(..., N) <= usable · card_bytes``, and that memory.

    Its defaults: an A100/H100 card is 80·2³⁰ bytes (80 GiB), of which 95 % is usable.
    """
    check.positive_int("card_bytes", card_bytes)
    check.positive_int("max_gpus", max_gpus)
    check.number("usable", usable, maximum=1, positive=True)
    for n in range(1, max_gpus + 1):
        need = llmbox_memory_bytes(num_params, n, L, B, T, H, V, zero=zero, model_dtype=model_dtype)
        if need <= usable * card_bytes:
            return n, need
    raise ValueError(f"max_gpus={max_gpus} GPUs of card_bytes={card_bytes:,} are not enough "
                     f"(usable={usable}): the setup does not fit")
