"""Float formats derived from their bit layout, checked against torch; FP8 quantisation."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmtrain.precision import formats as P
from llmtrain.precision import fp8

TORCH_FORMATS = [n for n in P.FORMATS if P.format_info(n).torch_dtype is not None]
UINT = {8: torch.uint8, 16: torch.int16, 32: torch.int32}


def torch_value_of_code(code: int, f: P.FormatInfo) -> float:
    """The value torch gives the bit pattern ``code`` of format f."""
    t = torch.tensor([code - (2**f.bits if code >= 2 ** (f.bits - 1) and f.bits > 8 else 0)],
                     dtype=UINT[f.bits])
    return float(t.view(f.torch_dtype).double())


def torch_round(values, f: P.FormatInfo) -> list[float]:
    return torch.tensor(values, dtype=torch.float64).to(f.torch_dtype).double().tolist()


def exact_round(v: float, f: P.FormatInfo) -> float:
    sign, code = P.round_exact(v, f)
    if code > f.max_magnitude_code:
        return -math.inf if sign else math.inf
    return (-1.0 if sign else 1.0) * float(P.decode(code, f))


# ------------------------------------------------------------------ formats


@pytest.mark.parametrize("name", TORCH_FORMATS)
def test_format_info_equals_torch_finfo(name):
    f = P.format_info(name)
    fi = torch.finfo(f.torch_dtype)
    assert (f.max, -f.max, f.smallest_normal, f.eps, f.bits) == (fi.max, fi.min, fi.tiny, fi.eps, fi.bits)
    # torch.finfo (2.13) has no smallest_subnormal: ask torch for the value of bit pattern 0...01
    assert f.smallest_subnormal == torch_value_of_code(1, f)


def test_tf32_by_hand():
    f = P.format_info("tf32")
    assert (f.bits, f.storage_bits, f.bias, f.torch_dtype) == (19, 32, 127, None)
    assert f.eps_exact == Fraction(1, 2**10)
    assert f.smallest_normal == torch.finfo(torch.float32).tiny            # same range as fp32
    assert f.smallest_subnormal_exact == Fraction(1, 2**136)
    assert f.max_exact == (2 - Fraction(1, 2**10)) * 2**127
    assert f.max_exact.numerator.bit_length() - 1 == 127                    # same top binade as fp32


def test_exact_values_from_the_chapter():
    """facts §7: fp16 65504, 2^-14, 2^-24; bf16 2^-126; E4M3 448; E5M2 57344."""
    fp16, bf16 = P.format_info("fp16"), P.format_info("bf16")
    assert (fp16.max_exact, fp16.smallest_normal_exact, fp16.smallest_subnormal_exact) == (
        65504, Fraction(1, 2**14), Fraction(1, 2**24))
    assert bf16.smallest_normal_exact == Fraction(1, 2**126) and bf16.mantissa_bits == 7
    assert P.format_info("fp8_e4m3").max_exact == 448 and not P.format_info("fp8_e4m3").has_inf
    assert P.format_info("fp8_e5m2").max_exact == 57344 and P.format_info("fp8_e5m2").has_inf


def test_unknown_format_lists_the_formats():
    with pytest.raises(ValueError, match=r"name must be one of .*fp8_e4m3"):
        P.format_info("fp4")


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2"])
def test_decode_equals_torch_for_every_finite_code(name):
    f = P.format_info(name)
    codes = torch.arange(f.max_magnitude_code + 1, dtype=torch.int32)
    ours = torch.tensor([float(P.decode(c, f)) for c in range(f.max_magnitude_code + 1)], dtype=torch.float64)
    theirs = codes.to(UINT[f.bits]).view(f.torch_dtype).double()
    assert torch.equal(ours, theirs)
    # the code after the max is inf (IEEE-like) or NaN (E4M3fn: mantissa all ones)
    nxt = torch_value_of_code(f.max_magnitude_code + 1, f)
    assert math.isinf(nxt) if f.has_inf else math.isnan(nxt)


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2"])
def test_round_exact_equals_torch_cast_including_ties(name):
    """Every grid value, every midpoint (a tie), quarter points, overflow, both signs."""
    f = P.format_info(name)
    step = 1 if f.bits == 8 else 37                # a sample of the 2^15 codes of 16-bit formats
    grid = [float(P.decode(c, f)) for c in range(0, f.max_magnitude_code + 1, step)]
    grid += [float(P.decode(c, f)) for c in range(f.max_magnitude_code - 3, f.max_magnitude_code + 1)]
    grid = sorted(set(grid))
    mids = [(a + b) / 2 for a, b in zip(grid, grid[1:])]
    quarters = [(3 * a + b) / 4 for a, b in zip(grid, grid[1:])]
    top = f.max + f.eps * 2.0 ** (f.max_exponent_field - f.bias) / 2     # max + half an ulp
    values = grid + mids + quarters + [top, top * 0.999999, f.max * 2, 1e300]
    values += [-v for v in values]
    ours = [exact_round(v, f) for v in values]
    assert ours == torch_round(values, f)


def test_round_exact_equals_torch_fp32_on_random_doubles():
    f = P.format_info("fp32")
    g = torch.Generator().manual_seed(0)
    values = (torch.randn(2000, generator=g, dtype=torch.float64)
              * torch.exp2(torch.randint(-140, 120, (2000,), generator=g).double())).tolist()
    assert [exact_round(v, f) for v in values] == torch_round(values, f)


@pytest.mark.parametrize("name", P.FORMATS)
def test_round_to_equals_exact_rounding(name):
    f = P.format_info(name)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3000, generator=g) * torch.exp2(torch.randint(-20, 20, (3000,), generator=g).float())
    if f.torch_dtype is not None:
        assert torch.equal(P.round_to(x, name), x.to(f.torch_dtype).float())
    in_range = x[x.abs() <= f.max]
    expected = torch.tensor([exact_round(v, f) for v in in_range.tolist()], dtype=torch.float32)
    assert torch.equal(P.round_to(in_range, name), expected)


def test_tf32_rounding_by_hand():
    u = 2.0**-11                                        # half of tf32's ulp at 1
    x = torch.tensor([1 + u, 1 + 3 * u, 1 + u + 2.0**-23, 1 + u - 2.0**-23, -(1 + 3 * u),
                      float("inf"), -float("inf"), 0.0, 2.0**-149, 2.0**-136 * 1.5])
    want = torch.tensor([1.0, 1 + 4 * u, 1 + 2 * u, 1.0, -(1 + 4 * u),
                         float("inf"), -float("inf"), 0.0, 0.0, 2.0**-135])   # subnormal tie → even
    assert torch.equal(P.round_to(x, "tf32"), want)
    assert torch.isinf(P.round_to(torch.tensor([torch.finfo(torch.float32).max]), "tf32")).all()  # max+half ulp
    assert torch.isnan(P.round_to(torch.tensor([float("nan")]), "tf32")).all()


@pytest.mark.parametrize("value, name, bits", [
    (1.0, "fp16", "0|01111|0000000000"),
    (-2.0, "fp16", "1|10000|0000000000"),
    (65504.0, "fp16", "0|11110|1111111111"),
    (2.0**-24, "fp16", "0|00000|0000000001"),
    (1e6, "fp16", "0|11111|0000000000"),                  # overflow → inf
    (1.0, "bf16", "0|01111111|0000000"),
    (1.0, "fp32", "0|01111111|00000000000000000000000"),
    (1 + 2.0**-10, "tf32", "0|01111111|0000000001"),
    (1 + 2.0**-11, "tf32", "0|01111111|0000000000"),      # tie → even
    (448.0, "fp8_e4m3", "0|1111|110"),
    (1e6, "fp8_e4m3", "0|1111|110"),                      # E4M3fn saturates (torch's cast)
    (-1.0, "fp8_e4m3", "1|0111|000"),
    (57344.0, "fp8_e5m2", "0|11110|11"),
    (0.1, "fp8_e5m2", "0|01011|10"),                       # 0.09375 = 1.5 · 2^-4
])
def test_bits_of_known_values(value, name, bits):
    assert P.bits_of(value, name) == bits


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2"])
def test_bits_of_torch_equals_exact_encoding(name):
    f = P.format_info(name)
    for v in [0.1, -0.3, 3.14159, 1e-6, 12345.678, -7e-3]:
        s, code = P.round_exact(v, f)
        expected = format(s << (f.bits - 1) | code, f"0{f.bits}b")
        assert P.bits_of(v, name).replace("|", "") == expected


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(P.FORMATS), st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_neighbours_bracket_the_value(name, value):
    f = P.format_info(name)
    if abs(value) > f.max:
        return
    below, nearest, above = P.neighbours(value, name)
    assert below < value < above and below < nearest < above
    assert abs(value - nearest) <= min(nearest - below, above - nearest)    # nearest is nearest
    if f.torch_dtype is not None:
        assert nearest == torch_round([value], f)[0]


def test_neighbours_examples():
    assert P.neighbours(1.0, "fp16") == (1 - 2.0**-11, 1.0, 1 + 2.0**-10)
    assert P.neighbours(0.1, "bf16") == (0.099609375, 0.10009765625, 0.1005859375)
    assert P.neighbours(448.0, "fp8_e4m3") == (416.0, 448.0, math.inf)
    with pytest.raises(ValueError, match="value"):
        P.neighbours(float("nan"), "fp16")


# ------------------------------------------------------------------ FP8 quantisation


def group_amax(t, granularity):
    g = fp8._grouped(t.float().abs(), granularity, 128)
    return g.amax(dim={"tensor": tuple(range(t.dim())), "tile": (-1,), "block": (-3, -1)}[granularity])


@pytest.mark.parametrize("granularity, scale_shape", [("tensor", ()), ("tile", (256, 2)), ("block", (2, 2))])
@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2"])
def test_quantize_scales_map_absmax_to_format_max(name, granularity, scale_shape):
    x = fp8.realistic_activations((256, 256), seed=3)
    q, s = fp8.quantize(x, name, granularity)
    assert q.dtype == P.format_info(name).torch_dtype and tuple(s.shape) == scale_shape
    assert (s > 0).all()
    assert (group_amax(q, granularity) == P.format_info(name).max).all()
    assert torch.allclose(s, group_amax(x, granularity) / P.format_info(name).max)


def test_zero_group_gets_scale_one():
    x = torch.zeros(2, 256)
    x[1, :128] = 1.0
    q, s = fp8.quantize(x, granularity="tile")
    assert torch.equal(s, torch.tensor([[1.0, 1.0], [1 / 448, 1.0]]))
    assert torch.equal(fp8.dequantize(q, s, "tile"), x)


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2"])
def test_round_trip_exact_for_representable_values(name):
    f = P.format_info(name)
    g = torch.Generator().manual_seed(0)
    grid = torch.tensor([float(P.decode(c, f)) for c in range(f.max_magnitude_code + 1)])
    x = grid[torch.randint(len(grid), (128, 256), generator=g)]
    x = x * torch.where(torch.rand(x.shape, generator=g) < 0.5, -1.0, 1.0)
    x[:, ::128] = f.max                                    # every tile and block holds the max: scale 1
    for granularity in fp8.GRANULARITIES:
        q, s = fp8.quantize(x, name, granularity)
        assert (s == 1).all() and torch.equal(fp8.dequantize(q, s, granularity), x)
    # power-of-two scales are exact for any power-of-two multiple (no subnormals lost)
    y = x * 2.0**-20
    q, s = fp8.quantize(y, name, "tile", pow2_scales=True)
    assert torch.equal(fp8.dequantize(q, s, "tile"), y)


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2"])
def test_fine_grained_scaling_beats_per_tensor_on_outliers(name):
    x = fp8.realistic_activations((256, 1024), outlier_fraction=0.01, outlier_scale=1e3)
    assert fp8.quantization_error(x, name, "tile") < 0.6 * fp8.quantization_error(x, name, "tensor")
    # weights whose 128×128 blocks differ in magnitude by up to 2^±12
    g = torch.Generator().manual_seed(0)
    mags = torch.exp2(torch.randint(-12, 13, (4, 4), generator=g).float())
    w = torch.randn(512, 512, generator=g) * mags.repeat_interleave(128, 0).repeat_interleave(128, 1)
    def worst_block_error(granularity):          # Frobenius error hides small blocks: look at each
        q, s = fp8.quantize(w, name, granularity)
        err = fp8._grouped(fp8.dequantize(q, s, granularity) - w, "block", 128).norm(dim=(-3, -1))
        return (err / fp8._grouped(w, "block", 128).norm(dim=(-3, -1))).max().item()

    assert worst_block_error("block") < P.format_info(name).eps
    if name == "fp8_e4m3":    # range 2^-9..448 (~2^18) < the blocks' 2^24 spread: small blocks vanish
        assert worst_block_error("tensor") > 0.5
    else:                     # E5M2 spans 2^-16..57344 (~2^32): one scale suffices, at 2 bits of mantissa
        assert worst_block_error("tensor") < P.format_info(name).eps
    # E4M3 (3 mantissa bits) is about twice as precise as E5M2 where nothing underflows
    if name == "fp8_e4m3":
        assert fp8.quantization_error(x, "fp8_e4m3", "tile") < 0.6 * fp8.quantization_error(x, "fp8_e5m2", "tile")


def elementwise_error_bound(x, name, granularity):
    """|x − x̂| ≤ u|x| + s·subnormal/2 for round-to-nearest (u = eps/2), plus fp32 scaling slack."""
    f = P.format_info(name)
    _, s = fp8.quantize(x, name, granularity)
    s = fp8._expand(s, x.shape, granularity, 128).double()
    return (f.eps / 2 + 2.0**-20) * x.abs().double() + s * f.smallest_subnormal / 2 * (1 + 2.0**-20)


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2"])
def test_quantization_error_within_rounding_bound(name):
    x = fp8.realistic_activations((128, 512), outlier_scale=1e4)
    for granularity in fp8.GRANULARITIES:
        q, s = fp8.quantize(x, name, granularity)
        err = (fp8.dequantize(q, s, granularity) - x).abs().double()
        assert (err <= elementwise_error_bound(x, name, granularity)).all()


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_matmul_error_bound_and_fine_beats_tensor(name):
    """|AB − ÂB̂| ≤ E_A|B| + |A|E_B + E_A E_B + γ_K |Â||B̂| elementwise (E: the bound above, γ_K = K·2^-24 fp32)."""
    a = fp8.realistic_activations((256, 512), outlier_scale=1e3, seed=1)
    b = torch.randn(512, 256, generator=torch.Generator().manual_seed(2)) / 512**0.5
    exact = a.double() @ b.double()
    for granularity, (ga, gb) in {"fine": ("tile", "block"), "tensor": ("tensor", "tensor")}.items():
        c = fp8.fp8_matmul(a, b, name, granularity).double()
        ea, eb = elementwise_error_bound(a, name, ga), elementwise_error_bound(b, name, gb)
        abs_a, abs_b = a.abs().double(), b.abs().double()
        bound = ea @ abs_b + abs_a @ eb + ea @ eb + 512 * 2.0**-23 * (abs_a + ea) @ (abs_b + eb)
        assert ((c - exact).abs() <= bound).all()
    u = P.format_info(name).eps / 2
    rel = {g: ((fp8.fp8_matmul(a, b, name, g).double() - exact).norm() / exact.norm()).item()
           for g in ("fine", "tensor")}
    assert rel["fine"] < rel["tensor"] < 2 * u        # random rounding errors add like √K, not K


# ------------------------------------------------------------------ validation


def test_validation_errors_name_the_argument():
    x = torch.randn(4, 100)
    with pytest.raises(ValueError, match=r"^x: last dimension .* tile=128"):
        fp8.quantize(x, granularity="tile")
    with pytest.raises(ValueError, match=r"^x: last two dimensions"):
        fp8.quantize(torch.randn(128, 256)[:100], granularity="block")
    with pytest.raises(ValueError, match="^granularity"):
        fp8.quantize(x, granularity="row")
    with pytest.raises(ValueError, match="^tile"):
        fp8.quantize(x, granularity="tile", tile=0)
    with pytest.raises(ValueError, match="^name"):
        fp8.quantize(x, name="int8")
    with pytest.raises(ValueError, match="^x must be finite"):
        fp8.quantize(torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="^x must be a float32"):
        P.round_to(torch.ones(2, dtype=torch.float64), "bf16")
    with pytest.raises(ValueError, match="^a, b"):
        fp8.fp8_matmul(torch.ones(2, 128), torch.ones(64, 128))
    with pytest.raises(ValueError, match="^granularity"):
        fp8.fp8_matmul(torch.ones(128, 128), torch.ones(128, 128), granularity="tile")
    with pytest.raises(ValueError, match="^outlier_fraction"):
        fp8.realistic_activations((4, 8), outlier_fraction=2)
    with pytest.raises(ValueError, match="^outlier_scale"):
        fp8.realistic_activations((4, 8), outlier_scale=0)
    with pytest.raises(ValueError, match="^shape"):
        fp8.realistic_activations((4, 0))


def test_realistic_activations_has_outlier_channels():
    x = fp8.realistic_activations((512, 1000), outlier_fraction=0.01, outlier_scale=100.0, seed=5)
    std = x.std(dim=0)
    assert ((std > 20).sum().item(), x.dtype) == (10, torch.float32)
    assert torch.equal(x, fp8.realistic_activations((512, 1000), 0.01, 100.0, seed=5))


def test_realistic_activations_outlier_scale_one_is_the_same_draw():
    x = fp8.realistic_activations((64, 256), outlier_fraction=0.05, outlier_scale=1e3, seed=2)
    base = fp8.realistic_activations((64, 256), outlier_fraction=0.05, outlier_scale=1.0, seed=2)
    outlier = (x != base).any(dim=0)
    assert outlier.sum().item() == round(0.05 * 256)
    assert torch.equal(x[:, ~outlier], base[:, ~outlier])
    assert torch.allclose(x[:, outlier], 1e3 * base[:, outlier])
    # drawn in float64, then rounded: the values torch's float64 sampler gives on any CPU
    g = torch.Generator().manual_seed(2)
    assert torch.equal(base, torch.randn((64, 256), generator=g, dtype=torch.float64).float())


def test_quantization_stats_by_hand():
    # E4M3 per tensor, amax 448: scale 1. 2⁻¹⁰ is a tie between 0 and the smallest subnormal
    # 2⁻⁹ (rounds to even: 0), 2⁻¹¹ flushes, 1.0 and 448 are exact.
    x = torch.tensor([[448.0, 1.0, 2.0**-10, 2.0**-11, 0.0]])
    s = fp8.quantization_stats(x, "fp8_e4m3")
    assert (s.flushed, s.nonzero, s.flushed_fraction) == (2, 4, Fraction(1, 2))
    expected = math.sqrt(2.0**-20 + 2.0**-22) / math.sqrt(448.0**2 + 1 + 2.0**-20 + 2.0**-22)
    assert s.error == pytest.approx(expected, rel=1e-12)
    ordinary = torch.tensor([False, True, True, True, True])  # a mask of the last dim
    s = fp8.quantization_stats(x, "fp8_e4m3", where=ordinary)
    assert (s.flushed, s.nonzero) == (2, 3)
    assert s.error == pytest.approx(math.sqrt(2.0**-20 + 2.0**-22) / math.sqrt(1 + 2.0**-20 + 2.0**-22))
    assert fp8.quantization_stats(torch.zeros(3), "fp8_e4m3") == (0.0, 0, 0)
    assert fp8.quantization_stats(torch.zeros(3), "fp8_e4m3").flushed_fraction == 0
    with pytest.raises(ValueError, match="^where must be broadcastable"):
        fp8.quantization_stats(x, where=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="^where must be a bool tensor"):
        fp8.quantization_stats(x, where=ordinary.float())


def test_quantization_stats_agrees_with_quantization_error_and_shows_the_squeeze():
    """On the whole tensor the error equals quantization_error; on the ordinary channels one
    scale per tensor flushes many values once the outliers are 10⁴× larger, 1×128 tiles few."""
    x = fp8.realistic_activations((128, 512), outlier_scale=1e4, seed=0)
    ordinary = (x == fp8.realistic_activations((128, 512), outlier_scale=1.0, seed=0)).all(dim=0)
    for g in fp8.GRANULARITIES:
        whole = fp8.quantization_stats(x, "fp8_e4m3", g)
        assert whole.error == pytest.approx(fp8.quantization_error(x, "fp8_e4m3", g), rel=1e-5)
    tensor = fp8.quantization_stats(x, "fp8_e4m3", "tensor", where=ordinary)
    tile = fp8.quantization_stats(x, "fp8_e4m3", "tile", where=ordinary)
    assert tensor.flushed_fraction > 0.05 > 0.02 > tile.flushed_fraction
    assert tensor.error > 1.5 * tile.error


# --- limited-precision accumulation inside an FP8 GEMM (DeepSeek-V3 §3.3.2) -------------------

@pytest.mark.parametrize("bits", [8, 11, 24])
def test_round_significand_to_nearest_equals_torch_casts(bits):
    """Rounding to 8, 11 and 24 significant bits is what bf16, fp16 and fp32 casts do to
    normal numbers (their exponent range is not reached here); random doubles hit no ties."""
    dtype = {8: torch.bfloat16, 11: torch.float16, 24: torch.float32}[bits]
    x = torch.randn(4096, generator=torch.Generator().manual_seed(bits), dtype=torch.float64) * 100
    assert torch.equal(fp8.round_significand(x, bits), x.to(dtype).double())


@pytest.mark.parametrize("bits", [1, 2, 8, 14, 24, 52])
def test_round_significand_toward_zero_truncates_the_significand(bits):
    """Oracle: x = m·2^e (frexp) becomes trunc(m·2^bits)·2^(e−bits)."""
    x = torch.randn(4096, generator=torch.Generator().manual_seed(bits), dtype=torch.float64) * 1e3
    m, e = torch.frexp(x)
    expected = torch.trunc(m * 2.0**bits) * torch.exp2(e.double() - bits)
    assert torch.equal(fp8.round_significand(x, bits, "toward_zero"), expected)


def test_round_significand_by_hand():
    x = torch.tensor([1 + 2.0**-3 + 2.0**-5, -(1 + 2.0**-3 + 2.0**-5), 7.0, 0.0], dtype=torch.float64)
    # 4 significant bits: 1.001|01 → 1.001 (nearest and toward zero), 7 = 111 stays
    assert fp8.round_significand(x, 4).tolist() == [1.125, -1.125, 7.0, 0.0]
    assert fp8.round_significand(torch.tensor([1 + 2.0**-3 + 2.0**-4], dtype=torch.float64), 4).item() == 1.25
    assert fp8.round_significand(torch.tensor([1 + 2.0**-3 + 2.0**-4 + 2.0**-6], dtype=torch.float64), 4,
                               "toward_zero").item() == 1.125
    assert fp8.round_significand(torch.tensor([-7.5], dtype=torch.float64), 2, "toward_zero").item() == -6.0


def _gemm_inputs(k, seed=0, m=8, n=128):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, k, generator=g, dtype=torch.float64).float(),
            torch.randn(k, n, generator=g, dtype=torch.float64).float())


def test_fp8_gemm_with_a_wide_accumulator_is_the_dequantised_product():
    """52 significant bits and promotion: the oracle is the float64 product of the dequantised
    inputs (what fp8_matmul multiplies), up to the fp32 rounding of the promotion."""
    a, b = _gemm_inputs(512)
    for g in ("tensor", "fine"):
        ga, gb = ("tile", "block") if g == "fine" else ("tensor", "tensor")
        qa, sa = fp8.quantize(a, "fp8_e4m3", ga)
        qb, sb = fp8.quantize(b, "fp8_e4m3", gb)
        oracle = fp8.dequantize(qa, sa, ga).double() @ fp8.dequantize(qb, sb, gb).double()
        got = fp8.fp8_gemm_accumulated(a, b, granularity=g, accumulator_bits=52)
        assert ((got - oracle).abs().max() / oracle.abs().max()).item() < 1e-6
        assert torch.allclose(got.float(), fp8.fp8_matmul(a, b, granularity=g), rtol=1e-5, atol=1e-4)


def test_promotion_every_128_bounds_the_accumulation_error_and_long_sums_grow_it():
    """DeepSeek-V3 §3.3.2: limited accumulation precision hurts more as K grows; promoting to
    fp32 every N_C = 128 elements fixes it. Errors against the product of the quantised inputs."""
    def acc_error(k, **kw):
        a, b = _gemm_inputs(k)
        wide = fp8.fp8_gemm_accumulated(a, b, granularity="tensor", accumulator_bits=52, promote_every=128)
        got = fp8.fp8_gemm_accumulated(a, b, granularity="tensor", **kw)
        return ((got - wide).abs().max() / wide.abs().max()).item()
    for rounding in fp8.ROUNDINGS:
        long512 = acc_error(512, promote_every=None, rounding=rounding)
        long4096 = acc_error(4096, promote_every=None, rounding=rounding)
        promoted = acc_error(4096, promote_every=128, rounding=rounding)
        assert long4096 > 2 * long512
        assert promoted < long4096 / 10
    assert acc_error(4096, promote_every=None, rounding="toward_zero") > 0.01  # the paper's order (≈ 2 %)


def test_fp8_gemm_accumulated_rejects_what_it_cannot_model():
    a, b = _gemm_inputs(256)
    with pytest.raises(ValueError, match="promote_every=None needs granularity='tensor'"):
        fp8.fp8_gemm_accumulated(a, b, granularity="fine", promote_every=None)
    with pytest.raises(ValueError, match="promote_every must divide K = 256 and tile = 128"):
        fp8.fp8_gemm_accumulated(a, b, promote_every=96)
    with pytest.raises(ValueError, match="rounding"):
        fp8.fp8_gemm_accumulated(a, b, rounding="up")
    with pytest.raises(ValueError, match="bits"):
        fp8.round_significand(torch.ones(2, dtype=torch.float64), 0)


def test_deepseek_v3_table_cites_only_checked_places_of_the_report():
    from llmtrain import sources
    checked = sources.find("DeepSeek-V3").checked
    for what, fmt, places in fp8.DEEPSEEK_V3_FP8:
        assert what and fmt
        for place in places.split(", "):
            assert place in checked, (what, place)
