"""FP8 quantisation with tensor, tile and block scales, as DeepSeek-V3 trains (slides: 混合精度训练).

DeepSeek-V3 (arXiv 2412.19437 §3.3): a scale per group maps the group's absolute maximum onto
the format's max, with groups of 1×128 elements (a tile, for activations) or 128×128 (a block,
for weights), so that one outlier only costs precision to the 128 or 16384 values that share
its scale. The formats themselves (max, eps, rounding) are ``precision.formats``'. Checked in
tests/test_precision.py.
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

import torch

from .. import check
from .formats import format_info, round_to

__all__ = ["GRANULARITIES", "quantize", "dequantize", "quantization_error", "fp8_matmul",
           "DEEPSEEK_V3_FP8", "ROUNDINGS", "round_significand", "fp8_gemm_accumulated",
           "realistic_activations", "QuantStats", "quantization_stats"]

GRANULARITIES = ("tensor", "tile", "block")


def _check_groups(x: torch.Tensor, granularity: str, tile: int) -> None:
    check.one_of("granularity", granularity, GRANULARITIES)
    check.positive_int("tile", tile)
    if granularity == "tile" and (x.dim() < 1 or x.shape[-1] % tile):
        raise ValueError(f"x: last dimension must be divisible by tile={tile} for 1×{tile} tiles, "
                         f"got shape {tuple(x.shape)} (pad it first)")
    if granularity == "block" and (x.dim() < 2 or x.shape[-1] % tile or x.shape[-2] % tile):
        raise ValueError(f"x: last two dimensions must be divisible by tile={tile} for {tile}×{tile} "
                         f"blocks, got shape {tuple(x.shape)} (pad it first)")


def _grouped(x: torch.Tensor, granularity: str, tile: int) -> torch.Tensor:
    """View with the group's elements on dims that ``_amax`` reduces."""
    if granularity == "tile":
        return x.reshape(*x.shape[:-1], x.shape[-1] // tile, tile)
    if granularity == "block":
        *lead, m, n = x.shape
        return x.reshape(*lead, m // tile, tile, n // tile, tile)
    return x


def _expand(scales: torch.Tensor, shape: torch.Size, granularity: str, tile: int) -> torch.Tensor:
    """Scales broadcast back to ``shape``: one per element."""
    if granularity == "tensor":
        return scales
    if granularity == "tile":
        return scales.repeat_interleave(tile, dim=-1)
    return scales.repeat_interleave(tile, dim=-1).repeat_interleave(tile, dim=-2)


def quantize(x: torch.Tensor, name: str = "fp8_e4m3", granularity: str = "tensor", tile: int = 128,
             pow2_scales: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scales) with x ≈ q · scale per group, scale = amax(|group|) / format max.

    Groups: the whole tensor ("tensor"), 1×``tile`` along the last dim ("tile": DeepSeek-V3's
    activations), ``tile``×``tile`` over the last two dims ("block": its weights) (arXiv
    2412.19437 §3.3). q is in the format's torch dtype (float32 on the tf32 grid for tf32);
    scales are float32 of shape () / (..., K/tile) / (..., M/tile, N/tile). An all-zero
    group gets scale 1. ``pow2_scales`` rounds each scale up to a power of two, so that
    scaling is exact (as MX formats do). Shapes not divisible by ``tile`` raise: pad first.
    """
    f = format_info(name)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {type(x).__name__}")
    _check_groups(x, granularity, tile)
    check.boolean("pow2_scales", pow2_scales)
    x = x.to(torch.float32)
    g = _grouped(x, granularity, tile)
    dims = {"tensor": tuple(range(x.dim())), "tile": (-1,), "block": (-3, -1)}[granularity]
    amax = g.abs().amax(dim=dims) if x.numel() else torch.zeros(())
    if not torch.isfinite(amax).all():
        raise ValueError("x must be finite")
    scales = torch.where(amax > 0, amax / f.max, torch.ones_like(amax))
    if pow2_scales:
        scales = torch.exp2(torch.ceil(torch.log2(scales)))
    scaled = (x / _expand(scales, x.shape, granularity, tile)).clamp(-f.max, f.max)
    q = round_to(scaled, name) if f.torch_dtype is None else scaled.to(f.torch_dtype)
    return q, scales


def dequantize(q: torch.Tensor, scales: torch.Tensor, granularity: str = "tensor",
               tile: int = 128) -> torch.Tensor:
    """float32 q · scale, each element times its group's scale (inverse of ``quantize``)."""
    check.tensor("q", q)
    check.tensor("scales", scales)
    _check_groups(q, granularity, tile)
    return q.to(torch.float32) * _expand(scales, q.shape, granularity, tile)


def quantization_error(x: torch.Tensor, name: str = "fp8_e4m3", granularity: str = "tensor",
                       tile: int = 128, pow2_scales: bool = False) -> float:
    """‖x − dequantize(quantize(x))‖_F / ‖x‖_F (0 for x = 0)."""
    q, s = quantize(x, name, granularity, tile, pow2_scales)
    x = x.to(torch.float32)
    norm = x.norm().item()
    return (x - dequantize(q, s, granularity, tile)).norm().item() / norm if norm else 0.0


def _check_gemm(a: torch.Tensor, b: torch.Tensor, granularity: str) -> None:
    """The arguments of an emulated FP8 GEMM: float (M, K) and (K, N), a known granularity."""
    check.tensor("a", a, floating=True)
    check.tensor("b", b, floating=True)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"a, b must be (M, K) and (K, N), got {tuple(a.shape)} and {tuple(b.shape)}")
    if granularity not in ("fine", "tensor"):
        raise ValueError(f"granularity must be 'fine' or 'tensor', got {granularity!r}")


def fp8_matmul(a: torch.Tensor, b: torch.Tensor, name: str = "fp8_e4m3", granularity: str = "fine",
               tile: int = 128) -> torch.Tensor:
    """Emulated FP8 GEMM a @ b: quantise, dequantise, multiply in fp32.

    granularity "fine": a (M, K) by 1×tile tiles, b (K, N) by tile×tile blocks (DeepSeek-V3,
    arXiv 2412.19437 §3.3, Fig. 7); "tensor": one scale each. Real kernels multiply the FP8
    values on tensor cores, accumulate in limited precision (~14 bits on H800 per the paper)
    and promote partial sums to fp32 CUDA-core registers every N_C = 128 elements, applying
    the scales there; mathematically that is Σ_k (s_a q_a)(s_b q_b), which we compute in fp32.
    """
    _check_gemm(a, b, granularity)
    ga, gb = ("tile", "block") if granularity == "fine" else ("tensor", "tensor")
    qa, sa = quantize(a, name, ga, tile)
    qb, sb = quantize(b, name, gb, tile)
    return dequantize(qa, sa, ga, tile) @ dequantize(qb, sb, gb, tile)


def round_significand(x: torch.Tensor, bits: int, rounding: str = "nearest") -> torch.Tensor:
    """float64 x rounded to ``bits`` significant bits, exponent unlimited.

    "nearest": Veltkamp's splitting, c = x·(2^(53−bits) + 1), result c − (c − x) (Dekker 1971);
    "toward_zero": the low 53 − bits bits of x's significand cleared (x = m·2^e with
    0.5 ≤ |m| < 1 becomes trunc(m·2^bits)·2^(e−bits); normal numbers). Both are exact
    float64 or integer operations only: the same result on every CPU.
    """
    check.tensor("x", x, dtype=torch.float64)
    check.integer("bits", bits, 1, 52)
    check.one_of("rounding", rounding, ROUNDINGS)
    return _round_significand(x, bits, rounding)


ROUNDINGS = ("nearest", "toward_zero")


def _round_significand(x: torch.Tensor, bits: int, rounding: str) -> torch.Tensor:
    if rounding == "nearest":
        c = x * (2.0 ** (53 - bits) + 1)
        return c - (c - x)
    # toward zero: clear the low 53 − bits bits of the significand (sign and exponent untouched)
    return (x.view(torch.int64) & -(1 << (53 - bits))).view(torch.float64)


def fp8_gemm_accumulated(a: torch.Tensor, b: torch.Tensor, name: str = "fp8_e4m3",
                         granularity: str = "fine", *, accumulator_bits: int = 14,
                         rounding: str = "nearest", promote_every: int | None = 128,
                         tile: int = 128) -> torch.Tensor:
    """An FP8 GEMM a @ b whose sums run in a limited-precision accumulator (float64 result).

    A model of DeepSeek-V3's GEMM (arXiv 2412.19437 §3.3.2, Fig. 7): a and b are quantised
    (``quantize``; "fine" = 1×tile tiles for a, tile×tile blocks for b, "tensor" = one scale
    each); the products of two FP8 values are exact; the tensor cores add them one by one
    into an accumulator that keeps ``accumulator_bits`` significant bits (the paper measures
    "around 14 bits" on H800; the hardware's rounding rule is not public: ``rounding`` after
    every addition, "nearest" or "toward_zero", exponent unlimited; ``round_significand``). With ``promote_every`` = N_C, every N_C
    elements of K the partial sum is multiplied by its scales and added to an fp32
    accumulator (the CUDA cores' registers), and the tensor-core accumulator restarts; with
    None it runs over all of K (only possible with one scale per tensor: scales that change
    along K cannot be applied inside the tensor core). Fine scales need N_C | tile.
    """
    _check_gemm(a, b, granularity)
    check.integer("accumulator_bits", accumulator_bits, 1, 52)
    check.one_of("rounding", rounding, ROUNDINGS)
    k = a.shape[1]
    if promote_every is None:
        if granularity != "tensor":
            raise ValueError("promote_every=None needs granularity='tensor': per-group scales along K "
                             "are applied at promotion")
        promote_every = k
    else:
        check.positive_int("promote_every", promote_every)
        if k % promote_every or (granularity == "fine" and tile % promote_every):
            raise ValueError(f"promote_every must divide K = {k}" + (f" and tile = {tile}" if granularity == "fine"
                                                                      else "") + f", got {promote_every}")
    ga, gb = ("tile", "block") if granularity == "fine" else ("tensor", "tensor")
    qa, sa = quantize(a, name, ga, tile)
    qb, sb = quantize(b, name, gb, tile)
    qa, qb = qa.double(), qb.double()
    sa = torch.broadcast_to(_expand(sa, qa.shape, ga, tile), qa.shape).double()  # per element, fp32 values
    sb = torch.broadcast_to(_expand(sb, qb.shape, gb, tile), qb.shape).double()
    m, n, chunks = a.shape[0], b.shape[1], k // promote_every
    # products of two FP8 values are exact in float64; chunk c holds K indices c·N_C … (c+1)·N_C − 1
    products = (qa.t()[:, :, None] * qb[:, None, :]).reshape(chunks, promote_every, m, n)
    partial = torch.zeros(chunks, m, n, dtype=torch.float64)
    for j in range(promote_every):  # the tensor cores: all chunks side by side, one addition each
        partial = _round_significand(partial + products[:, j], accumulator_bits, rounding)
    starts = torch.arange(0, k, promote_every)
    # promotion, in order along K: fp32 registers, the chunk's scales applied there (float64
    # products of fp32 values rounded to fp32 are the correctly rounded fp32 operations)
    out = torch.zeros(m, n, dtype=torch.float64)
    for c, start in enumerate(starts.tolist()):
        scaled = (partial[c].float().double() * sa[:, start:start + 1]).float().double() * sb[start:start + 1, :]
        out = (out + scaled.float().double()).float().double()
    return out


# What DeepSeek-V3 trains in which format (arXiv 2412.19437, the places named; read in the
# report's text): (what, format, where in the report). Data, printed by notebook 04 §7.
DEEPSEEK_V3_FP8 = (
    ("Linear GEMMs: Fprop (forward), Dgrad (activation grad), Wgrad (weight grad)",
     "FP8 E4M3 inputs, BF16 or FP32 outputs", "§3.3.1, §3.3.2, Fig. 6"),
    ("activations cached for Wgrad (inputs of Linear)", "FP8", "§3.3.1, §3.3.3"),
    ("  inputs of the Linear after attention", "E5M6 (custom), power-of-2 scales", "§3.3.3"),
    ("embedding, output head, MoE gating, normalisation, attention",
     "original precision (BF16 or FP32)", "§3.3.1"),
    ("master weights; weight gradients (batch accumulation)", "FP32", "§3.3.3"),
    ("AdamW first and second moments", "BF16", "§3.3.3"),
    ("scales: per 1×128 activation tile, per 128×128 weight block", "online amax", "§3.3.2, Fig. 7"),
    ("GEMM accumulation: tensor cores, ~14 bits on H800", "promoted to FP32 every N_C = 128",
     "§3.3.2, Fig. 7"),
    ("MoE dispatch (before up-projection) / combine", "FP8 / BF16", "§3.3.3"),
)


def realistic_activations(shape: tuple[int, ...], outlier_fraction: float = 0.01,
                          outlier_scale: float = 100.0, seed: int = 0) -> torch.Tensor:
    """float32 N(0, 1) activations whose few outlier channels (last dim) are ``outlier_scale`` times larger.

    A fraction ``outlier_fraction`` of the channels (at least one if > 0) is scaled, as the
    systematic large-magnitude feature dimensions of LLM activations (Dettmers et al. 2022,
    LLM.int8(), arXiv 2208.07339 §4; Xiao et al. 2023, SmoothQuant, arXiv 2211.10438).
    ``outlier_scale`` only multiplies those channels: the same ``seed`` with outlier_scale=1
    gives the same numbers without outliers, so ``x != that`` marks the outlier channels.
    The normals are drawn in float64 and rounded to float32: the same numbers on every CPU
    (torch's float32 sampler takes another path on CPUs without AVX2 and draws others).
    """
    shape = tuple(check.sequence("shape", shape, nonempty=True, item=check.positive_int))
    check.number("outlier_fraction", outlier_fraction, 0, 1)
    check.positive_number("outlier_scale", outlier_scale)
    check.integer("seed", seed, 0)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).float()
    channels = shape[-1]
    n = 0 if outlier_fraction == 0 else max(1, round(outlier_fraction * channels))
    idx = torch.randperm(channels, generator=gen)[:n]
    x[..., idx] *= outlier_scale
    return x


class QuantStats(NamedTuple):
    """What quantising a tensor does to the elements ``quantization_stats`` looked at."""

    error: float  # ‖x − x̂‖_F / ‖x‖_F over those elements (0 if they are all 0)
    flushed: int  # nonzero elements that quantise to 0
    nonzero: int  # nonzero elements looked at

    @property
    def flushed_fraction(self) -> Fraction:
        """flushed / nonzero, exact (0 if there are none)."""
        return Fraction(self.flushed, self.nonzero) if self.nonzero else Fraction(0)


def quantization_stats(x: torch.Tensor, name: str = "fp8_e4m3", granularity: str = "tensor",
                       tile: int = 128, *, where: torch.Tensor | None = None) -> QuantStats:
    """Relative error and flush-to-zero count of ``dequantize(quantize(x))``, over the elements
    ``where`` selects (a bool tensor broadcastable to x, e.g. a mask of the last dim's
    channels; default: all).

    Unlike ``quantization_error`` on the whole tensor, which a few outliers dominate (their
    error is most of ‖x − x̂‖ and their size most of ‖x‖), this can look at the ordinary
    elements alone: what one shared scale does to them. The norms are summed in float64, so
    the error does not depend on the CPU's summation order beyond ~1e-15; the counts are exact.
    """
    check.tensor("x", x, floating=True)
    if where is not None:
        check.tensor("where", where, dtype=torch.bool)
        try:
            where = torch.broadcast_to(where, x.shape)
        except RuntimeError:
            raise ValueError(f"where must be broadcastable to x's shape {tuple(x.shape)}, "
                             f"got shape {tuple(where.shape)}") from None
    q, s = quantize(x, name, granularity, tile)
    x64 = x.to(torch.float32).double()
    xhat = dequantize(q, s, granularity, tile).double()
    if where is not None:
        x64, xhat = x64[where], xhat[where]
    norm = float(torch.linalg.vector_norm(x64))
    error = float(torch.linalg.vector_norm(x64 - xhat)) / norm if norm else 0.0
    nz = x64 != 0
    return QuantStats(error, int((xhat[nz] == 0).sum()), int(nz.sum()))
