"""Batch-size schedules, gradient accumulation and the gradient noise scale (llmtrain.recipes.batch)."""

import math

import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmtrain.recipes import batch
from llmtrain.recipes.batch import (PALM_STAGES, PALM_TOTAL_TOKENS, accumulate_gradients,
    accumulation_steps, linear_ramp, noise_scale, noise_scale_from_norms, noise_terms,
    noise_terms_from_norms, per_example_grads, linear_ramp_steps, steps_and_tokens, stepwise)
from llmtrain.model.llama import Llama
from llmtrain.model.shapes import get

GPT3 = dict(start_tokens=32_768, end_tokens=3_145_728, ramp_tokens=4_000_000_000)


# --- schedules ------------------------------------------------------------------------------

def test_linear_ramp_start_middle_end():
    assert linear_ramp(0, **GPT3) == 32_768
    assert linear_ramp(2_000_000_000, **GPT3) == (32_768 + 3_145_728) // 2
    assert linear_ramp(4_000_000_000, **GPT3) == 3_145_728
    assert linear_ramp(10**13, **GPT3) == 3_145_728
    assert linear_ramp(5, start_tokens=1, end_tokens=9, ramp_tokens=0) == 9  # no ramp


@settings(max_examples=50, deadline=None)
@given(start=st.integers(1, 10**6), extra=st.integers(0, 10**7), ramp=st.integers(1, 10**10),
       m=st.integers(1, 10**5), t1=st.integers(0, 2 * 10**10), t2=st.integers(0, 2 * 10**10))
def test_linear_ramp_monotone_and_multiple_of_micro_batch(start, extra, ramp, m, t1, t2):
    kw = dict(start_tokens=start, end_tokens=start + extra, ramp_tokens=ramp)
    t1, t2 = sorted((t1, t2))
    assert start <= linear_ramp(t1, **kw) <= linear_ramp(t2, **kw) <= start + extra
    b1, b2 = (linear_ramp(t, **kw, micro_batch_tokens=m) for t in (t1, t2))
    assert b1 % m == 0 and b2 % m == 0 and m <= b1 <= b2
    assert b2 == max(m, linear_ramp(t2, **kw) // m * m)  # the floor, at least one micro-batch


def test_palm_stages():
    # PaLM §5: 512, 1024, 2048 sequences of 2048 tokens, switching after steps 50k and 115k
    assert [b for _, b in PALM_STAGES] == [2**20, 2**21, 2**22]
    assert stepwise(0, stages=PALM_STAGES) == 2**20
    assert stepwise(PALM_STAGES[1][0] - 1, stages=PALM_STAGES) == 2**20
    assert stepwise(PALM_STAGES[1][0], stages=PALM_STAGES) == 2**21
    assert stepwise(PALM_STAGES[2][0], stages=PALM_STAGES) == 2**22
    run = steps_and_tokens(lambda t: stepwise(t, stages=PALM_STAGES), PALM_TOTAL_TOKENS)
    assert len(run) == 255_000  # "training is complete at step 255k"
    assert run[49_999].batch_tokens == 2**20 and run[50_000].batch_tokens == 2**21
    assert run[114_999].batch_tokens == 2**21 and run[115_000].batch_tokens == 2**22
    assert run[-1].tokens_seen + run[-1].batch_tokens == PALM_TOTAL_TOKENS == 775_946_240_000


def test_steps_and_tokens_counts_the_ramp():
    ramp = dict(start_tokens=100, end_tokens=1000, ramp_tokens=10_000, micro_batch_tokens=100)
    run = steps_and_tokens(lambda t: linear_ramp(t, **ramp), 20_000)
    assert run[0] == (0, 100, 0)
    assert all(b.tokens_seen == a.tokens_seen + a.batch_tokens for a, b in zip(run, run[1:]))
    assert run[-2].tokens_seen < 20_000 <= run[-1].tokens_seen + run[-1].batch_tokens
    in_ramp = sum(s.tokens_seen < 10_000 for s in run)
    after = len(run) - in_ramp
    assert after == 10  # 10,000 tokens at the full 1000 per step
    assert in_ramp < 10_000 // 100  # the ramp takes fewer steps than at the start batch


def test_schedule_validation():
    with pytest.raises(ValueError, match="end_tokens"):
        linear_ramp(0, start_tokens=10, end_tokens=5, ramp_tokens=1)
    with pytest.raises(ValueError, match="ramp_tokens"):
        linear_ramp(0, start_tokens=1, end_tokens=5, ramp_tokens=-1)
    with pytest.raises(ValueError, match="tokens_seen"):
        linear_ramp(-1, start_tokens=1, end_tokens=5, ramp_tokens=1)
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        linear_ramp(0, start_tokens=1, end_tokens=5, ramp_tokens=1, micro_batch_tokens=0)
    with pytest.raises(ValueError, match=r"stages\[0\]"):
        stepwise(0, stages=[(5, 10)])
    with pytest.raises(ValueError, match="sorted"):
        stepwise(0, stages=[(0, 10), (9, 20), (9, 30)])
    with pytest.raises(ValueError, match="schedule"):
        steps_and_tokens(lambda t: 0, 10)


def test_accumulation_steps():
    assert accumulation_steps(4 * 2**20, 8 * 2048) == 256
    with pytest.raises(ValueError, match="batch_tokens=1000 must be a multiple of "
                                         "micro_batch_tokens=300"):
        accumulation_steps(1000, 300)
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        accumulation_steps(1000, 0)


# --- steps under a linear ramp (continuum) --------------------------------------------------

GPT3_RAMP = dict(start_tokens=32 * 1024, end_tokens=3_200_000)


def test_linear_ramp_steps_gpt3_warmup():
    # notebook 03's exercise: 375M warmup tokens inside a 4B (12B) ramp; 300B tokens in all
    b_warm = linear_ramp(375 * 10**6, ramp_tokens=4 * 10**9, **GPT3_RAMP)
    assert b_warm == 329_696  # about 0.33M, a tenth of the full 3.2M
    warm4 = linear_ramp_steps(375 * 10**6, ramp_tokens=4 * 10**9, **GPT3_RAMP)
    warm12 = linear_ramp_steps(375 * 10**6, ramp_tokens=12 * 10**9, **GPT3_RAMP)
    total4 = linear_ramp_steps(300 * 10**9, ramp_tokens=4 * 10**9, **GPT3_RAMP)
    # by hand: 4e9/3,167,232 · ln(329,696/32,768) = 1262.93 · 2.30869 = 2915.8
    assert warm4 == pytest.approx(2915.8, abs=0.1)
    assert warm12 == pytest.approx(5271.8, abs=0.1)  # 3788.81 · ln(131,744/32,768)
    # 4.6289 × the 1,250 full-batch steps of the ramp, then 296e9/3.2e6 = 92,500
    assert total4 == pytest.approx(1250 * 4.6289 + 92_500, abs=0.5)
    assert 0.029 < warm4 / total4 < 0.030  # about 3 %, not 375M/3.2M / 81k ≈ 0.1 %


def test_linear_ramp_steps_is_the_integral():
    tau, R, b0, b1 = sp.symbols("tau R b_0 b_1", positive=True)
    x = sp.symbols("x", positive=True)
    S = sp.integrate(1 / (b0 + (b1 - b0) * x / R), (x, 0, tau))
    vals = {tau: 3_000, R: 10_000, b0: 100, b1: 1_000}
    kw = dict(start_tokens=100, end_tokens=1_000, ramp_tokens=10_000)
    assert linear_ramp_steps(3_000, **kw) == pytest.approx(float(S.subs(vals)), rel=1e-12)
    assert linear_ramp_steps(10_000, **kw) == pytest.approx(10_000 * math.log(10) / 900, rel=1e-12)
    assert linear_ramp_steps(25_000, **kw) == pytest.approx(10_000 * math.log(10) / 900 + 15,
                                                            rel=1e-12)
    assert linear_ramp_steps(0, **kw) == 0
    assert linear_ramp_steps(700, start_tokens=7, end_tokens=7, ramp_tokens=50) == 100
    assert linear_ramp_steps(700, start_tokens=7, end_tokens=70, ramp_tokens=0) == 10


@settings(max_examples=40, deadline=None)
@given(b0=st.integers(1, 500), extra=st.integers(0, 5_000), ramp=st.integers(1, 200_000),
       total=st.integers(0, 400_000))
def test_linear_ramp_steps_bounds_the_replay(b0, extra, ramp, total):
    kw = dict(start_tokens=b0, end_tokens=b0 + extra, ramp_tokens=ramp)
    n = len(steps_and_tokens(lambda t: linear_ramp(t, **kw), total))
    s = linear_ramp_steps(total, **kw)
    k = extra / ramp  # a step of b tokens grows the batch by at most the factor 1 + k
    assert s <= n + 1e-9 * max(1, n)
    if b0 > 1:
        assert n < 1 + s * (1 + k) / (1 - 1 / b0) + 1e-9 * max(1, n)


def test_linear_ramp_steps_validation():
    with pytest.raises(ValueError, match="tokens"):
        linear_ramp_steps(-1, start_tokens=1, end_tokens=5, ramp_tokens=1)
    with pytest.raises(ValueError, match="end_tokens"):
        linear_ramp_steps(1, start_tokens=10, end_tokens=5, ramp_tokens=1)
    with pytest.raises(ValueError, match="start_tokens"):
        linear_ramp_steps(1, start_tokens=0, end_tokens=5, ramp_tokens=1)
    with pytest.raises(ValueError, match="ramp_tokens"):
        linear_ramp_steps(1, start_tokens=1, end_tokens=5, ramp_tokens=1.5)


# --- gradient accumulation ------------------------------------------------------------------

def _model(dtype=torch.float64, attn_impl="sdpa"):
    torch.manual_seed(0)
    return Llama(get("tiny"), attn_impl=attn_impl).to(dtype)


def _grad(model):
    g = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return g


def test_accumulation_equals_one_big_batch():
    # float64 weights: k micro-batches differ from one batch only in the order in which the
    # per-sequence terms are summed, so the gradients agree to ~1e-16 relative (measured
    # 6e-16). (The reference Llama computes RMSNorm and the loss in fp32 even for float64
    # weights, but on bit-identical inputs in both runs, so that rounding is the same.)
    model = _model()
    ids = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(1))
    model(ids, labels=ids).loss.backward()
    big = _grad(model)
    for k in (2, 4, 8):
        for reduction in batch.REDUCTIONS:  # equal micro-batches, nothing ignored: the same
            accumulate_gradients(model, list(ids.split(8 // k)), reduction=reduction)
            assert torch.allclose(_grad(model), big, rtol=0, atol=1e-12 * big.abs().max())


def test_accumulation_with_ignored_labels():
    # micro-batches with different numbers of counted labels: weighting by token counts is
    # the big batch's mean over tokens; the mean of micro-batch means is not.
    model = _model()
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[:2, 4:] = -100  # the first micro-batch counts 2·3 labels, the second 2·31
    loss = model(ids, labels=labels).loss
    loss.backward()
    big = _grad(model)
    pairs = list(zip(ids.split(2), labels.split(2)))
    acc_loss = accumulate_gradients(model, pairs, reduction="tokens")
    assert acc_loss == pytest.approx(loss.item(), rel=1e-6)  # the loss itself is fp32
    assert torch.allclose(_grad(model), big, rtol=0, atol=1e-12 * big.abs().max())
    accumulate_gradients(model, pairs, reduction="micro_batches")
    assert (_grad(model) - big).norm() > 0.1 * big.norm()
    with pytest.raises(ValueError, match="reduction"):
        accumulate_gradients(model, pairs, reduction="mean")


# --- per-example gradients and the noise scale ---------------------------------------------

@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
def test_per_example_grads_vmap_equals_loop(attn_impl):
    model = _model(torch.float32, attn_impl)
    ids = torch.randint(0, 256, (5, 32), generator=torch.Generator().manual_seed(3))
    g = per_example_grads(model, ids)
    loop = per_example_grads(model, ids, method="loop")
    assert g.shape == (5, sum(p.numel() for p in model.parameters()))
    assert torch.allclose(g, loop, rtol=1e-4, atol=1e-6)  # fp32, different kernels
    # every sequence counts 31 labels, so the batch gradient is the mean of the rows
    model(ids, labels=ids).loss.backward()
    assert torch.allclose(g.mean(0), _grad(model), rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())  # left .grad alone


def _synthetic(B, P=20, seed=0):
    """B samples g_i ~ N(G, Σ), G = (1, ..., 1), Σ diagonal with tr Σ = 2P: for P = 20,
    |G|² = 20, tr Σ = 40 and B_simple = 2."""
    gen = torch.Generator().manual_seed(seed)
    G = torch.ones(P, dtype=torch.float64)
    std = torch.linspace(0.5, 2.0, P, dtype=torch.float64)
    std *= math.sqrt(2 * P / float((std ** 2).sum()))  # tr Σ = Σ std² = 2P
    return G + std * torch.randn(B, P, generator=gen, dtype=torch.float64)


def test_noise_scale_converges_on_synthetic_gradients():
    errors = [abs(noise_scale(_synthetic(B)) - 2.0) for B in (100, 10_000, 300_000)]
    assert errors[-1] < 0.01 and errors[-1] < errors[0]
    g2, trace = noise_terms(_synthetic(300_000))
    assert g2 == pytest.approx(20, rel=0.01) and trace == pytest.approx(40, rel=0.01)


def test_noise_terms_are_unbiased_at_small_batch():
    # at B = 4, |ḡ|² alone overestimates |G|² by tr Σ / B = 10; the corrected terms do not
    runs = [noise_terms(_synthetic(4, seed=s)) for s in range(4000)]
    assert sum(g2 for g2, _ in runs) / len(runs) == pytest.approx(20, abs=0.5)
    assert sum(t for _, t in runs) / len(runs) == pytest.approx(40, abs=1.0)


def test_noise_scale_from_norms():
    # App. A estimator, from norms of mean gradients over batches of B_small and B_big
    g = _synthetic(2**19)
    small = (g.view(-1, 8, g.shape[1]).mean(1) ** 2).sum(1).mean().item()  # E|G_8|²
    big = (g.view(-1, 512, g.shape[1]).mean(1) ** 2).sum(1).mean().item()  # E|G_512|²
    g2, trace = noise_terms_from_norms(b_small=8, sq_norm_small=small, b_big=512,
                                       sq_norm_big=big)
    assert g2 == pytest.approx(20, rel=0.02) and trace == pytest.approx(40, rel=0.02)
    assert noise_scale_from_norms(b_small=8, sq_norm_small=small, b_big=512,
                                  sq_norm_big=big) == pytest.approx(2.0, rel=0.03)
    with pytest.raises(ValueError, match="b_big"):
        noise_scale_from_norms(b_small=8, sq_norm_small=1.0, b_big=8, sq_norm_big=1.0)


@settings(max_examples=30, deadline=None)
@given(B=st.integers(2, 50), seed=st.integers(0, 1000))
def test_per_example_estimator_is_the_two_batch_one_with_b_small_1(B, seed):
    g = _synthetic(B, P=7, seed=seed)
    mean_sq_small = float((g ** 2).sum(1).mean())  # |G_1|², averaged over the B examples
    sq_big = float((g.mean(0) ** 2).sum())  # |G_B|²
    ref = noise_terms_from_norms(b_small=1, sq_norm_small=mean_sq_small, b_big=B,
                                 sq_norm_big=sq_big)
    assert noise_terms(g) == pytest.approx(ref, rel=1e-9, abs=1e-9)


def test_noise_scale_on_the_model():
    model = _model(torch.float32)
    ids = torch.randint(0, 256, (16, 32), generator=torch.Generator().manual_seed(4))
    b = noise_scale(per_example_grads(model, ids))
    assert math.isfinite(b)
    with pytest.raises(ValueError, match="per_example_grads"):
        noise_scale(torch.zeros(1, 3))
