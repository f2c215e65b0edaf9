"""Number formats from their bits (slides: 混合精度训练): fp32, tf32, fp16, bf16, FP8 E4M3 / E5M2.

A binary float with E exponent bits and M mantissa bits stores sign s, biased exponent e and
mantissa m; its value is

    (-1)^s · 2^(e - bias) · (1 + m/2^M)     for 0 < e   (normal),   bias = 2^(E-1) - 1
    (-1)^s · 2^(1 - bias) · (m/2^M)         for e = 0   (subnormal)

so every property of a format (max, smallest normal, smallest subnormal, eps) follows from
(E, M) alone. ``format_info`` derives them exactly (``fractions.Fraction``); the tests
compare them with ``torch.finfo``. One format is not IEEE-like: FP8 E4M3 as
``torch.float8_e4m3fn`` (OCP FP8 spec; Micikevicius et al. 2022, arXiv 2209.05433) has no
infinity and uses the all-ones exponent for normal numbers, only mantissa all-ones being
NaN, so its max is 2^8 · 1.75 = 448 instead of 240. ``torch_dtype``, ``dtype_name`` and
``dtype_bytes`` read the dtypes a model trains in (fp32, bf16, fp16) from the same table, by
name: every module that takes ``dtype=`` ("bf16", "float16", torch.float32, ...) uses them
(``dtype_bytes`` is ``llmtrain.units.dtype_bytes``, torch-free, for ``llmtrain.cost``). FP8
quantisation with tile and block scales is in ``precision.fp8``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch

from .. import check
from ..units import dtype_bytes  # noqa: F401  (re-exported: one function, torch-free)

__all__ = ["FORMATS", "FormatInfo", "format_info", "DTYPES", "torch_dtype", "dtype_name",
           "dtype_bytes", "decode", "round_exact", "bits_of", "neighbours", "round_to"]

# name: (exponent bits, mantissa bits, IEEE-like?, torch dtype name or None)
_LAYOUTS = {
    "fp32": (8, 23, True, "float32"),
    "tf32": (8, 10, True, None),
    "fp16": (5, 10, True, "float16"),
    "bf16": (8, 7, True, "bfloat16"),
    "fp8_e4m3": (4, 3, False, "float8_e4m3fn"),
    "fp8_e5m2": (5, 2, True, "float8_e5m2"),
}
FORMATS = tuple(_LAYOUTS)


@dataclass(frozen=True)
class FormatInfo:
    """A float format's bit layout and the numbers derived from it (exact ``Fraction``s).

    ``max``, ``smallest_normal``, ``smallest_subnormal``, ``eps`` are floats; the same with
    ``_exact`` appended are ``Fraction``s. ``bits`` = 1 + E + M (tf32: 19 bits used, stored
    in ``storage_bits`` = 32). ``torch_dtype`` is None for tf32, which torch has no dtype for.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    ieee_like: bool          # False: no infinity, all-ones exponent holds normal numbers (E4M3fn)
    torch_dtype: torch.dtype | None
    storage_bits: int

    @property
    def bits(self) -> int:
        """1 + E + M."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        """2^(E-1) - 1."""
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def has_inf(self) -> bool:
        return self.ieee_like

    @property
    def max_exponent_field(self) -> int:
        """Largest biased exponent of a finite number: 2^E - 2 (IEEE; all-ones is inf/NaN), 2^E - 1 (E4M3fn)."""
        return 2 ** self.exponent_bits - (2 if self.ieee_like else 1)

    @property
    def max_mantissa_field(self) -> int:
        """Largest mantissa at the largest exponent: 2^M - 1 (IEEE), 2^M - 2 (E4M3fn: all-ones is NaN)."""
        return 2 ** self.mantissa_bits - (1 if self.ieee_like else 2)

    @property
    def max_magnitude_code(self) -> int:
        """The largest finite value's bits without the sign, as an integer (e << M | m)."""
        return (self.max_exponent_field << self.mantissa_bits) | self.max_mantissa_field

    @property
    def max_exact(self) -> Fraction:
        """2^(e_max - bias) · (1 + m_max/2^M); IEEE: (2 - 2^-M) · 2^bias; E4M3fn: 1.75 · 2^8 = 448."""
        return decode(self.max_magnitude_code, self)

    @property
    def smallest_normal_exact(self) -> Fraction:
        """2^(1 - bias)."""
        return Fraction(2) ** (1 - self.bias)

    @property
    def smallest_subnormal_exact(self) -> Fraction:
        """2^(1 - bias - M)."""
        return Fraction(2) ** (1 - self.bias - self.mantissa_bits)

    @property
    def eps_exact(self) -> Fraction:
        """2^-M: the gap between 1 and the next number (unit roundoff u = eps/2)."""
        return Fraction(1, 2 ** self.mantissa_bits)

    max = property(lambda self: float(self.max_exact))
    smallest_normal = property(lambda self: float(self.smallest_normal_exact))
    smallest_subnormal = property(lambda self: float(self.smallest_subnormal_exact))
    eps = property(lambda self: float(self.eps_exact))


def format_info(name: str) -> FormatInfo:
    """The ``FormatInfo`` of ``name``, one of ``FORMATS``, derived from (E, M) (IEEE 754-2019 §3.3; OCP FP8 v1.0)."""
    check.one_of("name", name, FORMATS)
    e, m, ieee, dt = _LAYOUTS[name]
    return FormatInfo(name, e, m, ieee, getattr(torch, dt) if dt else None,
                      32 if name == "tf32" else 1 + e + m)


def _info(name) -> FormatInfo:
    return name if isinstance(name, FormatInfo) else format_info(name)


# --- the dtypes a model trains in, by name (one table: the layouts above) ------------------

DTYPES = ("fp32", "bf16", "fp16")  # short names; torch's ("float32", ...) are accepted too


def torch_dtype(dtype: Any) -> torch.dtype:
    """torch.float32, bfloat16 or float16 from a torch dtype or a name ("fp32", "float32", "bf16", ...)."""
    names = {n: getattr(torch, _LAYOUTS[n][3]) for n in DTYPES}
    names.update({_LAYOUTS[n][3]: t for n, t in list(names.items())})
    if isinstance(dtype, torch.dtype) and dtype in names.values():
        return dtype
    if isinstance(dtype, str) and dtype in names:
        return names[dtype]
    check.fail("dtype", "fp32, bf16 or fp16 (or the torch dtype)", dtype)


def dtype_name(dtype: Any) -> str:
    """'fp32', 'bf16' or 'fp16' for a torch dtype or one of its names."""
    dt = torch_dtype(dtype)
    return next(n for n in DTYPES if getattr(torch, _LAYOUTS[n][3]) == dt)


def _real(name: str, value) -> None:
    """A real number (int, float, Fraction; NaN and ±inf allowed), not a bool or a string."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        check.fail(name, "a real number", value)


def decode(magnitude_code: int, name) -> Fraction:
    """Exact value of the bits e << M | m (sign dropped): 2^(e-bias)(1 + m/2^M), or 2^(1-bias) m/2^M if e = 0."""
    f = _info(name)
    check.integer("magnitude_code", magnitude_code, 0, 2 ** (f.exponent_bits + f.mantissa_bits) - 1)
    e, m = magnitude_code >> f.mantissa_bits, magnitude_code & (2 ** f.mantissa_bits - 1)
    if e == 0:
        return m * f.smallest_subnormal_exact
    return Fraction(2) ** (e - f.bias) * (1 + Fraction(m, 2 ** f.mantissa_bits))


def _encode_magnitude(v: Fraction, f: FormatInfo) -> int:
    """Magnitude code of v ≥ 0 rounded to nearest, ties to even; may exceed the max code (overflow)."""
    M = f.mantissa_bits
    if v < f.smallest_normal_exact:
        return round(v / f.smallest_subnormal_exact)            # round() on Fraction: ties to even
    e = v.numerator.bit_length() - v.denominator.bit_length()   # floor(log2 v), off by at most one
    if Fraction(2) ** e > v:
        e -= 1
    n = round(v / Fraction(2) ** (e - M))                       # in [2^M, 2^(M+1)]; 2^(M+1) carries
    return ((e + f.bias) << M) + (n - 2 ** M)


def round_exact(value: float | Fraction, name) -> tuple[int, int]:
    """(sign, magnitude code) of ``value`` rounded to nearest, ties to even (IEEE 754 §4.3.1).

    Overflow: IEEE-like formats go to infinity (magnitude code of inf); E4M3fn saturates to ±448,
    as torch's cast does, and NaN has code 0b1111111 in E4M3fn, the quiet NaN in the others.
    """
    f = _info(name)
    _real("value", value)
    inf_code = (2 ** f.exponent_bits - 1) << f.mantissa_bits
    nan_code = inf_code | (1 << (f.mantissa_bits - 1)) if f.ieee_like else (2 ** (f.bits - 1) - 1)
    if isinstance(value, float) and math.isnan(value):
        return 0, nan_code
    if isinstance(value, float) and math.isinf(value):
        return int(value < 0), inf_code if f.ieee_like else f.max_magnitude_code
    v = Fraction(value)
    sign = int(v < 0 or (v == 0 and math.copysign(1.0, float(value)) < 0))
    code = _encode_magnitude(abs(v), f)
    if code > f.max_magnitude_code:
        code = inf_code if f.ieee_like else f.max_magnitude_code
    return sign, code


def _torch_bits(value: float, f: FormatInfo) -> int:
    """Bits of ``value`` cast by torch (float64 → dtype, one rounding), as an unsigned int."""
    t = torch.tensor(value, dtype=torch.float64).to(f.torch_dtype)
    as_int = {8: torch.uint8, 16: torch.int16, 32: torch.int32}[f.bits]
    return int(t.reshape(1).view(as_int)[0]) & (2 ** f.bits - 1)


def bits_of(value: float, name: str) -> str:
    """'s|eeee|mmm': the bits of ``value`` rounded to ``name`` (torch's cast where torch has the dtype).

    tf32 (no torch dtype) is rounded exactly from the Python float, ties to even. Example:
    ``bits_of(1.0, "fp16") == "0|01111|0000000000"``.
    """
    f = format_info(name)
    _real("value", value)
    if f.torch_dtype is not None:
        code = _torch_bits(float(value), f)
    else:
        sign, mag = round_exact(float(value), f)
        code = (sign << (f.bits - 1)) | mag
    s = format(code, f"0{f.bits}b")
    return f"{s[0]}|{s[1:1 + f.exponent_bits]}|{s[1 + f.exponent_bits:]}"


def _value(sign: int, code: int, f: FormatInfo) -> float:
    if code > f.max_magnitude_code:   # only inf (IEEE) reaches here; NaN handled by callers
        return -math.inf if sign else math.inf
    v = float(decode(code, f))
    return -v if sign else v


def neighbours(value: float, name: str) -> tuple[float, float, float]:
    """(below, nearest, above): ``value`` rounded to ``name`` and the representable numbers either side.

    below < value < above whenever |value| < max; above the max the next number is ±inf
    (also for E4M3fn, which has none, to keep the tuple ordered). Exact: from ``round_exact``.
    """
    f = format_info(name)
    _real("value", value)
    if math.isnan(value):
        raise ValueError("value must not be NaN")
    sign, code = round_exact(float(value), f)
    nearest = _value(sign, code, f)
    # signed position on the number line: magnitude codes mirrored for negatives (-0 = +0)
    pos = -code if sign else code
    top = f.max_magnitude_code

    def at(p: int) -> float:
        if abs(p) > top:
            return math.copysign(math.inf, p)
        return _value(int(p < 0), abs(p), f)

    if code > top:   # rounded to ±inf
        return (at(top) if not sign else -math.inf, nearest, math.inf if not sign else at(-top))
    return at(pos - 1), nearest, at(pos + 1)


def _round_tf32(x: torch.Tensor) -> torch.Tensor:
    """fp32 → tf32: keep 10 of 23 mantissa bits, round to nearest even on the 13 dropped bits."""
    i = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    sign, mag = i & 0x80000000, i & 0x7FFFFFFF
    lsb = (mag >> 13) & 1
    mag = (mag + 0xFFF + lsb) & ~0x1FFF          # carries into the exponent; max + half ulp → inf
    out = sign | mag
    out = torch.where(out >= 2**31, out - 2**32, out).to(torch.int32).view(torch.float32)
    return torch.where(torch.isnan(x), x, out)


def round_to(x: torch.Tensor, name: str) -> torch.Tensor:
    """float32 ``x`` rounded to ``name`` (nearest, ties to even), returned as float32 values.

    torch dtypes: cast there and back. tf32: mantissa rounded to 10 bits in the integer view.
    """
    f = format_info(name)
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        raise ValueError(f"x must be a float32 tensor, got {getattr(x, 'dtype', type(x))}")
    if f.torch_dtype is None:
        return _round_tf32(x)
    return x.to(f.torch_dtype).to(torch.float32)
