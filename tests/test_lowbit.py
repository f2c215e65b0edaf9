"""Tests for llmtrain.optim.lowbit: the quantisation maps against torchao's and bitsandbytes' (exact), the
block-wise round trip's error bound (hypothesis), AdamWLowBit against torchao's AdamW8bit/AdamW4bit
(identical codes and scales after a step, close trajectories) and fp32 torch.optim.AdamW, and the
state bytes formula against the bytes measured on all four optimizers."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings, strategies as st

from llmtrain.optim import lowbit
from llmtrain.optim.lowbit import (AdamWLowBit, bytes_per_param, dequantize_blockwise,
    dynamic_map, linear_map, quantize_blockwise, state_bytes)
from llmtrain.measure.optimizer_state import state_tensor_bytes
from llmtrain.optim.packages import eager

ao = pytest.importorskip("torchao.optim")
bnb = pytest.importorskip("bitsandbytes")
from torchao.optim import quant_utils, subclass_4bit, subclass_8bit  # noqa: E402

FP32_EPS = 2.0 ** -23


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Matrices this small only contend for threads: one thread, ~10x faster on 2 busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _maps():
    """(bits, signed, our map, torchao's map): the four maps the two optimizers use."""
    t = lambda values: torch.tensor(values, dtype=torch.float32)  # noqa: E731
    return [(8, True, dynamic_map(True, 8), t(subclass_8bit.get_qmap_signed())),
            (8, False, dynamic_map(False, 8), t(subclass_8bit.get_qmap_unsigned())),
            (4, True, dynamic_map(True, 4), t(subclass_4bit.get_qmap_signed())),
            (4, False, linear_map(4), t(subclass_4bit.get_qmap_unsigned()))]


# --- the maps ---------------------------------------------------------------------------------

def test_maps_equal_the_packages():
    for bits, signed, ours, theirs in _maps():
        assert ours.dtype == torch.float32 and ours.shape == (2 ** bits,)
        assert torch.equal(ours, theirs), (bits, signed)
    for signed in (True, False):  # 8 bits: bitsandbytes' map is the same, value for value
        assert torch.equal(dynamic_map(signed, 8), bnb.functional.create_dynamic_map(signed))
    # 4 bits: bitsandbytes pads its map to 256 entries with zeros; its distinct values are ours
    padded = bnb.functional.create_dynamic_map(True, 3, 4)
    assert padded.shape == (256,) and int((padded == 0).sum()) == 241
    assert torch.equal(padded.unique(), dynamic_map(True, 4))


def test_map_shape_and_asymmetry():
    for bits in (4, 8):
        for signed in (True, False):
            q = dynamic_map(signed, bits)
            assert bool((q.diff() > 0).all())  # sorted, no repeated value
            assert q[-1] == 1.0 and 0.0 in q
            assert q[0] == (-q[-2] if signed else 0.0)  # -1 is not in a signed map: 1 is alone
    assert math.isclose(dynamic_map(True, 8)[0], -0.99296875, rel_tol=1e-6)
    assert math.isclose(dynamic_map(True, 4)[0], -0.8875, rel_tol=1e-6)
    assert torch.equal(linear_map(4), torch.arange(1, 17) / 16)  # no 0: v never decodes to 0


def _radius(qmap: torch.Tensor, signed: bool) -> float:
    """Largest distance from a point of [-1, 1] (or [0, 1]) to its nearest map value: half the
    largest gap, or the distance from an end of the interval to the map's extreme value."""
    low = -1.0 if signed else 0.0
    return max(float(qmap.diff().max()) / 2, float(qmap[0]) - low, 1.0 - float(qmap[-1]))


def test_radius_is_half_the_largest_gap_for_dynamic_maps():
    for bits, signed, q, _ in _maps():
        half_gap = float(q.diff().max()) / 2
        if bits == 4 and not signed:  # linear without 0: x near 0 decodes to 1/16
            assert _radius(q, signed) == 1 / 16 and half_gap == 1 / 32
        else:
            assert math.isclose(_radius(q, signed), half_gap, rel_tol=1e-6)


# --- block-wise quantisation ------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(which=st.integers(0, 3), blocks=st.integers(1, 6), seed=st.integers(0, 2 ** 16),
       spread=st.floats(0, 8), outlier=st.booleans())
def test_round_trip_error_bound(which, blocks, seed, spread, outlier):
    bits, signed, qmap, _ = _maps()[which]
    block = lowbit.BLOCK_SIZE[bits]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(blocks * block, generator=g) * 10 ** (spread * torch.rand(blocks * block,
                                                                             generator=g) - 4)
    if outlier:
        x[int(torch.randint(x.numel(), (1,), generator=g))] *= 1e4
    if not signed:
        x = x.abs()  # v = EMA of g²
    codes, scales = quantize_blockwise(x, qmap, block)
    assert codes.dtype == torch.uint8 and codes.numel() == x.numel() * bits // 8  # packed at 4
    assert scales.dtype == torch.float32 and scales.numel() == blocks
    y = dequantize_blockwise(codes, scales, qmap, x.shape)
    s = scales.repeat_interleave(block)
    # x/s and qmap·s each round once (relative error <= eps each): slack 4 eps·s
    assert bool(((x - y).abs() <= s * (_radius(qmap, signed) + 4 * FP32_EPS)).all())
    # the absmax element of each block is exactly ±1 after scaling; +1 decodes to itself,
    # -1 to the map's most negative value (-0.993 / -0.8875: the map has no -1)
    top = x.reshape(blocks, block).abs().argmax(dim=1) + torch.arange(blocks) * block
    want = torch.where(x[top] > 0, qmap[-1], qmap[0]) * scales
    assert torch.equal(y[top], want)
    # the same codes as torchao's quantiser (same comparisons: exact)
    scaled, ao_scales = quant_utils.scale_tensor(x, block)
    quant = {8: quant_utils.quantize_8bit_with_qmap, 4: quant_utils.quantize_4bit_with_qmap}[bits]
    ao_codes = quant(scaled, qmap)
    if bits == 4:
        ao_codes = ao_codes[::2] << 4 | ao_codes[1::2]
    assert torch.equal(codes, ao_codes) and torch.equal(scales, ao_scales)


def test_bitsandbytes_cpu_quantiser_is_nearly_nearest():
    """bitsandbytes' CPU kernel (C) picks a code other than the nearest for ~10 % of values, each
    within 3.1e-5·scale of the nearest's error (measured over 5 seeds); ours is never worse."""
    g = torch.Generator().manual_seed(0)
    for signed in (True, False):
        x = torch.randn(256 * 64, generator=g) * torch.rand(256 * 64, generator=g) ** 4
        x = x if signed else x.abs()
        q = dynamic_map(signed, 8)
        codes, scales = quantize_blockwise(x, q, 256)
        theirs, absmax = bnb.functional.quantize_blockwise(x, code=q, blocksize=256)
        assert torch.equal(absmax.absmax, scales)
        scaled = x / scales.repeat_interleave(256)
        ours_err = (q[codes.long()] - scaled).abs()
        their_err = (q[theirs.reshape(-1).long()] - scaled).abs()
        assert 0.05 < float((codes != theirs.reshape(-1)).float().mean()) < 0.2
        assert bool((ours_err <= their_err).all())  # nearest, exactly
        assert float((their_err - ours_err).max()) < 5e-5  # measured 3.0e-5


# --- the optimizer ----------------------------------------------------------------------------

def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.GELU(), torch.nn.Linear(512, 64))


def _train(make, steps):
    """lowbit.train_mlp's run (the same seeded MLP as _mlp) on fixed data; w0: its initial weights."""
    w0 = [p.detach().clone() for p in _mlp().parameters()]
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(128, 64, generator=g), torch.randn(128, 64, generator=g)
    model, opt, losses = lowbit.train_mlp(lambda ps, lr: make(ps), x, y, steps, seed=0)
    return model, opt, w0, losses


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("bits, theirs", [(8, ao.AdamW8bit), (4, ao.AdamW4bit)])
def test_same_codes_as_torchao_after_a_step(bits, theirs):
    ours, opt, _, _ = _train(lambda ps: AdamWLowBit(ps, bits=bits), 1)
    ref, ref_opt, _, _ = _train(theirs, 1)
    for p, q in zip(ours.parameters(), ref.parameters()):
        a, b = opt.state[p], ref_opt.state[q]
        if p.numel() < 4096:  # biases: plain fp32 moments, same ops
            assert torch.equal(a["exp_avg"], b["exp_avg"])
            continue
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(a[name]["codes"], b[name].codes.reshape(-1))
            assert torch.equal(a[name]["scales"], b[name].scale)
            assert torch.equal(a[name]["qmap"], b[name].qmap)
        # the update's arithmetic differs (torchao: lr and step as fp32 tensors): rounding only
        assert float((p - q).detach().abs().max()) < 1e-7  # measured 1.5e-8


@pytest.mark.parametrize("bits, theirs", [(8, ao.AdamW8bit), (4, ao.AdamW4bit)])
def test_trajectory_close_to_torchao(bits, theirs):
    """20 steps: the update's rounding differences flip a few codes from step 2 on, and a flipped
    code moves that weight's next steps by up to ~lr (an Adam step is ~lr): max |Δw| measured
    8.9e-4 (8-bit) and 2.0e-4 (4-bit, portable pass); in norm, relative to how far the weights
    moved, 1.3e-3 and 8e-5, against 0.033 and 0.42 between either and fp32 AdamW."""
    ours, _, w0, losses = _train(lambda ps: AdamWLowBit(ps, bits=bits), 20)
    ref, _, _, ref_losses = _train(theirs, 20)
    diff = _flat(ours) - _flat(ref)
    moved = float((_flat(ref) - torch.cat([w.reshape(-1) for w in w0])).norm())
    assert float(diff.abs().max()) < 2e-3  # 2 lr
    assert float(diff.norm()) / moved < 0.01
    assert max(abs(a - b) for a, b in zip(losses, ref_losses)) < 1e-4  # measured 2.6e-6


def test_trajectory_against_fp32_adamw():
    """20 steps, distance to fp32 AdamW's weights relative to how far fp32 AdamW moved them:
    measured 0.033 (8-bit) and 0.42 (4-bit, torchao's too: v's linear map rounds a small v up to
    absmax/16, so those weights take smaller steps); step 1 uses the unquantised moments: the
    same loss after it as fp32."""
    ref, _, w0, ref_losses = _train(torch.optim.AdamW, 20)
    moved = float((_flat(ref) - torch.cat([w.reshape(-1) for w in w0])).norm())
    for bits, bound, loss_ratio in [(8, 0.06, 1.01), (4, 0.6, 1.25)]:
        model, _, _, losses = _train(lambda ps: AdamWLowBit(ps, bits=bits), 20)
        assert float((_flat(model) - _flat(ref)).norm()) / moved < bound
        assert losses[1] == pytest.approx(ref_losses[1], rel=1e-5)  # after one step
        assert losses[-1] < 0.7 * losses[0]  # it trains: 1.05 -> 0.60 (8) / 0.68 (4)
        assert losses[-1] < loss_ratio * ref_losses[-1]  # measured 1.00 (8), 1.14 (4)


def test_small_or_ragged_tensors_stay_fp32():
    params = [torch.nn.Parameter(torch.randn(n)) for n in (4095, 4096, 5000, 8192)]
    opt = AdamWLowBit(params, bits=8)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    kinds = [type(opt.state[p]["exp_avg"]) for p in params]
    assert kinds == [torch.Tensor, dict, torch.Tensor, dict]  # 5000: not a multiple of 256


# --- state bytes ------------------------------------------------------------------------------

def _model_for_bytes():
    """Tensors below 4096 (biases, 3 000), at 4096, above but not a multiple of 256 or 128
    (5 000 = 100·50), and large ones."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 100),
                               torch.nn.Linear(100, 50), torch.nn.Linear(50, 60),
                               torch.nn.Linear(60, 1024), torch.nn.Linear(1024, 256))


@pytest.mark.parametrize("name", ["ours 8-bit", "ours 4-bit", "torchao 8-bit", "torchao 4-bit",
                                  "bitsandbytes 8-bit"])
def test_state_bytes_equal_measured(name):
    make, bits, layout = {
        "ours 8-bit": (lambda ps: AdamWLowBit(ps, bits=8), 8, "torchao"),
        "ours 4-bit": (lambda ps: AdamWLowBit(ps, bits=4), 4, "torchao"),
        "torchao 8-bit": (ao.AdamW8bit, 8, "torchao"),
        "torchao 4-bit": (ao.AdamW4bit, 4, "torchao"),
        "bitsandbytes 8-bit": (bnb.optim.AdamW8bit, 8, "bitsandbytes")}[name]
    model = _model_for_bytes()
    opt = make(model.parameters())
    model(torch.randn(2, 64)).square().sum().backward()
    with eager():
        opt.step()
    numels = [p.numel() for p in model.parameters()]
    assert state_tensor_bytes(opt) == sum(state_bytes(n, bits, layout=layout) for n in numels) + (
        2 * 256 * 4 if layout == "bitsandbytes" else 0)  # bnb: one map pair for all tensors
    assert bytes_per_param(numels, bits, layout=layout) == Fraction(state_tensor_bytes(opt),
                                                                    sum(numels))


def test_bytes_per_param_large_tensors():
    """2 + 8/256 (8-bit) and 1 + 8/128 (4-bit) plus a map per moment: facts §12's 2.03 / 1.06."""
    n = 2 ** 21
    assert bytes_per_param([n], 8) == Fraction(2 * (n + 4 * n // 256 + 1024), n)
    assert round(float(bytes_per_param([n], 8)), 2) == 2.03
    assert round(float(bytes_per_param([n], 4)), 2) == 1.06
    assert round(float(bytes_per_param([n], 8, layout="bitsandbytes")), 2) == 2.03
    assert state_bytes(100, 8) == state_bytes(100, 4) == 800  # small: fp32 m and v
    assert state_bytes(5000, 8) == 40000 and state_bytes(5000, 8, layout="bitsandbytes") == \
        2 * (5000 + 4 * 20)  # bnb quantises a last partial block, torchao keeps fp32


# --- the demo ---------------------------------------------------------------------------------

def test_compare_run():
    out = lowbit.compare_run(steps=5, seed=0)
    assert set(out) == {"fp32 AdamW", "ours 8-bit", "ours 4-bit", "torchao AdamW8bit",
                        "torchao AdamW4bit", "bitsandbytes AdamW8bit"}
    numels = [64 * 512, 512, 512 * 64, 64]
    for name, r in out.items():
        assert len(r["losses"]) == 5 and all(type(v) is float for v in r["losses"])
        assert type(r["state_bytes"]) is int and type(r["bytes_per_param"]) is float
        assert r["losses"][-1] < r["losses"][0]
    assert out["fp32 AdamW"]["state_bytes"] == 8 * sum(numels)
    for name, bits in [("ours 8-bit", 8), ("torchao AdamW8bit", 8), ("ours 4-bit", 4),
                       ("torchao AdamW4bit", 4)]:
        assert out[name]["bytes_per_param"] == float(bytes_per_param(numels, bits))
    assert out["bitsandbytes AdamW8bit"]["bytes_per_param"] == float(
        bytes_per_param(numels, 8, layout="bitsandbytes"))


# --- bad input --------------------------------------------------------------------------------

def test_bad_input():
    x, q = torch.zeros(256), dynamic_map(True, 8)
    cases = [
        (lambda: dynamic_map(True, 6), "bits must be one of (4, 8), got 6"),
        (lambda: dynamic_map(1, 8), "signed must be True or False, got 1"),
        (lambda: linear_map(2), "bits must be one of (4, 8), got 2"),
        (lambda: quantize_blockwise(x, q, 0), "block_size must be a positive integer, got 0"),
        (lambda: quantize_blockwise(x, q, 100), "x.numel() must be a multiple of block_size=100"),
        (lambda: quantize_blockwise(x, q[:10], 256), "len(qmap) must be one of (16, 256), got 10"),
        (lambda: dequantize_blockwise(*quantize_blockwise(x, q, 256), q, (2, 100)),
         "shape must be of 256 elements"),
        (lambda: AdamWLowBit([torch.nn.Parameter(x)], bits=3), "bits must be one of (4, 8)"),
        (lambda: AdamWLowBit([torch.nn.Parameter(x)], lr=-1), "lr must be a finite number >= 0"),
        (lambda: AdamWLowBit([torch.nn.Parameter(x)], betas=(0.9, 1.0)), "betas must be two"),
        (lambda: AdamWLowBit([torch.nn.Parameter(x)], block_size=0), "block_size must be a pos"),
        (lambda: state_bytes(-1, 8), "numel must be an integer >= 0, got -1"),
        (lambda: state_bytes(10, 4, layout="bitsandbytes"), "bits must be 8 with layout="),
        (lambda: state_bytes(10, 8, layout="bnb"), "layout must be one of"),
        (lambda: bytes_per_param([], 8), "numels must be a non-empty list or tuple"),
        (lambda: bytes_per_param([0], 8), "numels must be a list with a positive sum"),
        (lambda: lowbit.compare_run(steps=0), "steps must be a positive integer, got 0"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            call()
