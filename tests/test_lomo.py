"""Tests for llmtrain.optim.lomo: the optimizer step in backward and LOMO against torch.optim.SGD /
AdamW run the ordinary way and against lomo-optim's Lomo (weights), and the peak of live
gradient bytes measured at every hook against the formula (sum for plain, max with the step in
backward) and the whole-step peak of the exact CPU tracker.

Bitwise comparisons: both sides run the same kernels in the same order on the same machine
(torch's for-loop optimizers, ``foreach=False``; the gradients come from the same backward,
and a parameter is only updated after the last backward op that reads it), so they hold on
any CPU (ATEN_CPU_CAPABILITY=default too)."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from llmtrain.optim import lomo
from llmtrain.model.llama import Llama

lomo_optim = pytest.importorskip("lomo_optim")


def _tiny(seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    return Llama("tiny")  # 125,248 parameters, untied embeddings


def _batches(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(256, (2, 16), generator=g) for _ in range(n)]


def _loss(model, x):
    return model(x, labels=x).loss


def _plain(model, opt_cls, xs, **kw):
    opt = opt_cls(model.parameters(), foreach=False, **kw)
    for x in xs:
        _loss(model, x).backward()
        opt.step()
        opt.zero_grad()
    return model


def _equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def _mlp(widths, seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(a, b, bias=False) for a, b in zip(widths, widths[1:])])


# --- the updates: equal to the ordinary loop ---------------------------------------------------

@pytest.mark.parametrize("opt_cls, kw", [
    (torch.optim.SGD, dict(lr=0.1)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01)),  # state works too
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
])
def test_step_in_backward_equals_plain_optimizer(opt_cls, kw):
    xs = _batches(3)
    plain = _plain(_tiny(), opt_cls, xs, **kw)
    model = _tiny()
    fused = lomo.step_in_backward(model, opt_cls, foreach=False, **kw)
    assert len(fused.optimizers) == len(fused.handles) == len(list(model.parameters()))
    for x in xs:
        _loss(model, x).backward()  # the whole training step
        assert all(p.grad is None for p in model.parameters())  # each freed in backward
    assert not _equal(model, _tiny())  # it did train
    assert _equal(model, plain)  # bit for bit: same kernels in the same order (module doc)


def test_remove_unhooks():
    model = _tiny()
    before = copy.deepcopy(model)
    lomo.step_in_backward(model, torch.optim.SGD, lr=0.1).remove()
    ours = lomo.LOMO(model, lr=0.1)
    ours.remove()
    _loss(model, _batches(1)[0]).backward()
    assert _equal(model, before)  # no update
    assert all(p.grad is not None for p in model.parameters())  # plain gradients again


def test_lomo_equals_sgd_and_lomo_optim():
    xs, lr = _batches(4), 0.1
    plain = _plain(_tiny(), torch.optim.SGD, xs, lr=lr)
    ours_model, theirs_model = _tiny(), _tiny()
    ours = lomo.LOMO(ours_model, lr=lr)
    theirs = lomo_optim.Lomo(theirs_model, lr=lr)  # clip_grad_norm=None, weight_decay=0
    for x in xs:
        ours.backward(_loss(ours_model, x))
        theirs.fused_backward(_loss(theirs_model, x), lr)
        assert all(p.grad is None for p in ours_model.parameters())
    assert not _equal(ours_model, _tiny())
    assert _equal(ours_model, plain)  # p.add_(g, alpha=-lr), as torch.optim.SGD
    assert _equal(ours_model, theirs_model)  # lomo-optim: the same op (p.data.to(fp32) is p)


def test_lomo_clipping_two_passes():
    xs, lr, c = _batches(3), 0.1, 0.05  # c well below the gradient norm (~3): clipping is on
    clipped, unclipped, theirs_model, sgd_model = _tiny(), _tiny(), _tiny(), _tiny()
    count = lomo.LiveGrads(clipped)  # sees every gradient arrive
    ours = lomo.LOMO(clipped, lr=lr, clip_grad_norm=c)
    plain = lomo.LOMO(unclipped, lr=lr)
    theirs = lomo_optim.Lomo(theirs_model, lr=lr, clip_grad_norm=c)
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=lr, foreach=False)
    for x in xs:
        ours.backward(_loss(clipped, x))
        plain.backward(_loss(unclipped, x))
        loss = _loss(theirs_model, x)
        theirs.grad_norm(loss)  # lomo-optim: the norm pass, then the update pass
        theirs.fused_backward(loss, lr)
        _loss(sgd_model, x).backward()
        torch.nn.utils.clip_grad_norm_(sgd_model.parameters(), c, foreach=False)
        sgd.step()
        sgd.zero_grad()
    n = len(list(clipped.parameters()))
    assert len(count.order) == 2 * n * len(xs)  # two backward passes per step
    assert not _equal(clipped, unclipped)
    # lomo-optim: the same ops (per-tensor 2-norms, the norm of their stack, clamp, mul_, add_)
    assert _equal(clipped, theirs_model)
    # clip_grad_norm_ stacks the norms in parameter order, LOMO in backward order: the total
    # norm differs by a few ulps (relative ~n·2^-24 ≈ 1e-6), the updates (≤ lr·c = 5e-3 a
    # step) by ~5e-9; 1e-6 leaves room and still catches a missing or doubled clip (≫ 1e-4)
    for p, q in zip(clipped.parameters(), sgd_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


# --- live gradient bytes: measured against the formula -----------------------------------------

def test_live_gradient_peak_on_llama():
    model = _tiny()
    sizes = [p.nbytes for p in model.parameters()]
    x = _batches(1)[0]
    peaks = {m: lomo.measure_step(model, lambda mm: _loss(mm, x), m) for m in lomo.METHODS}
    for m in ("sgd", "adamw"):
        assert peaks[m].grad_bytes == sum(sizes) == 500_992
    for m in ("lomo", "sgd in backward", "adamw in backward"):
        assert peaks[m].grad_bytes == max(sizes) == 65_536  # embed_tokens / lm_head: 256 × 64 fp32
        assert peaks[m].step_bytes < peaks[lomo.PLAIN[m]].step_bytes
    assert _equal(model, _tiny())  # measured on a copy


def test_lomo_optim_keeps_two_gradients():
    """lomo-optim hooks with Tensor.register_hook, which runs *before* the gradient is
    accumulated: each hook updates (and frees) the previous parameter, so the gradient
    arriving and the previous one are alive together: the peak is the largest sum of two
    parameters next to each other in backward order."""
    model = _tiny()
    count = lomo.LiveGrads(model)
    theirs = lomo_optim.Lomo(model, lr=0.1)
    theirs.fused_backward(_loss(model, _batches(1)[0]), 0.1)
    size = [count.params[i].nbytes for i in count.order]
    assert sorted(count.order) == list(range(len(count.params)))
    assert count.peak_bytes == max(a + b for a, b in zip(size, size[1:])) == 90_112
    assert count.peak_bytes > max(size)


@settings(max_examples=12, deadline=None)
@given(widths=st.lists(st.integers(1, 48), min_size=2, max_size=6),
       method=st.sampled_from(["sgd", "lomo", "sgd in backward", "adamw in backward"]))
def test_formula_equals_measurement(widths, method):
    model = _mlp(widths)
    x = torch.randn(3, widths[0], generator=torch.Generator().manual_seed(0))
    measured = lomo.measure_step(model, lambda m: m(x).square().sum(), method).grad_bytes
    kind = {"sgd": "plain", "lomo": "lomo"}.get(method, "in-backward")
    numels = [p.numel() for p in model.parameters()]
    assert measured == lomo.grad_peak_bytes(numels, 4, kind)


@pytest.mark.parametrize("widths", [(64, 256, 256, 128, 8), (32, 512, 64, 300, 16)])
def test_whole_step_peak_drops_by_all_but_the_largest_gradient(widths):
    """The tracker's peak of a whole (second) step, batch 1: weights dominate, activations are
    a few vectors of a layer's width. Fusing the step into backward saves Σ − max gradient bytes,
    up to the activations alive at the two peaks (each ≤ 4 bytes · width, at most two a layer
    alive: bound 2·4·Σ widths). AdamW's plain loop saves 1 previous ``denom`` more: its
    Python for-loop keeps the last parameter's denom alive while computing the next one."""
    model = _mlp(widths)
    x = torch.randn(1, widths[0], generator=torch.Generator().manual_seed(0))
    peak = {m: lomo.measure_step(model, lambda mm: mm(x).square().sum(), m).step_bytes
            for m in ("sgd", "lomo", "sgd in backward", "adamw", "adamw in backward")}
    sizes = [p.nbytes for p in model.parameters()]
    saved, slack = sum(sizes) - max(sizes), 2 * 4 * sum(widths)
    assert peak["lomo"] == peak["sgd in backward"]
    assert saved - slack <= peak["sgd"] - peak["lomo"] <= saved
    # adamw: the largest parameter comes after another in the plain loop, so one more
    # denom (the previous parameter's) was alive at its peak
    largest = sizes.index(max(sizes))
    assert largest > 0
    extra = sizes[largest - 1]
    assert saved + extra - slack <= peak["adamw"] - peak["adamw in backward"] <= saved + extra


def test_grad_peak_bytes_values():
    assert lomo.grad_peak_bytes([3, 10, 5], 2, "plain") == 36
    assert lomo.grad_peak_bytes([3, 10, 5], 2, "lomo") == 20
    assert lomo.grad_peak_bytes([3, 10, 5], 4, "in-backward") == 40


# --- the notebook's demo -----------------------------------------------------------------------

def test_compare_run():
    r = lomo.compare_run(steps=3)
    assert r["num_params"] == 125_248
    assert r["sum_param_bytes"] == 4 * 125_248 and r["max_param_bytes"] == 65_536
    assert set(r["methods"]) == set(lomo.METHODS)
    for name, m in r["methods"].items():
        assert m["against"] == lomo.PLAIN[name]
        assert m["max_weight_diff"] == 0.0  # bit for bit (module doc)
        plain = r["methods"][m["against"]]
        if name in ("sgd", "adamw"):
            assert m["grad_peak_bytes"] == r["sum_param_bytes"]
        elif name == "lomo-optim":
            assert r["max_param_bytes"] < m["grad_peak_bytes"] < r["sum_param_bytes"]
        else:
            assert m["grad_peak_bytes"] == r["max_param_bytes"]
            assert m["step_peak_bytes"] < plain["step_peak_bytes"]


# --- bad input ---------------------------------------------------------------------------------

def test_bad_input():
    model = _mlp((4, 4))
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        lomo.step_in_backward(list(model.parameters()), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="make_optimizer must be callable"):
        lomo.step_in_backward(model, "sgd")
    with pytest.raises(ValueError, match="lr must be a positive finite number, got 0"):
        lomo.LOMO(model, lr=0)
    with pytest.raises(ValueError, match="clip_grad_norm must be a positive finite number"):
        lomo.LOMO(model, lr=0.1, clip_grad_norm=-1.0)
    with pytest.raises(ValueError, match="loss must be a 0-D floating-point tensor"):
        lomo.LOMO(model, lr=0.1).backward(model(torch.ones(2, 4)))
    with pytest.raises(ValueError, match="method must be one of"):
        lomo.make_step(model, "sgdd", 0.1)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        lomo.LiveGrads("model")
    with pytest.raises(ValueError, match="loss_fn must be callable"):
        lomo.measure_step(model, 3, "sgd")
    with pytest.raises(ValueError, match=r"numels\[1\] must be a positive integer, got 0"):
        lomo.grad_peak_bytes([3, 0], 4, "plain")
    with pytest.raises(ValueError, match="numels must be a non-empty list or tuple"):
        lomo.grad_peak_bytes([], 4, "plain")
    with pytest.raises(ValueError, match="dtype_bytes must be a positive integer, got -1"):
        lomo.grad_peak_bytes([3], -1, "plain")
    with pytest.raises(ValueError, match="method must be one of"):
        lomo.grad_peak_bytes([3], 4, "sgd")
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        lomo.compare_run(steps=0)
    with pytest.raises(ValueError, match="seq_len must be an integer in"):
        lomo.compare_run(seq_len=65)
