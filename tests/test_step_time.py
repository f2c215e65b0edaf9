"""The planner's time model (llmtrain.cost.step_time): the FLOPs it times are flops.training_flops',
and every term moves the way its reason says."""

from __future__ import annotations

from fractions import Fraction

import pytest

from llmtrain.cost import flops, plan, step_time
from llmtrain.model import shapes
from llmtrain.cost import stage

K = step_time.KERNELS["ampere"]
A100 = plan.CLUSTERS["a100-80g"]


def mb(shape, *, layers=None, head=True, tp=1, sp=False, b=1, seq=2048, recompute="none",
       attention="flash", kernels=K, c=A100):
    layers = shape.num_layers if layers is None else layers
    return step_time.micro_batch(shape, layers, head, tp, sp, b, seq, recompute, attention,
                                 kernels, c.peak_flops, c.hbm_bytes_per_s)


@pytest.mark.parametrize("name", ["llama2-7b", "llama3-8b", "tiny"])
@pytest.mark.parametrize("tp", [1, 2])
def test_the_flops_timed_are_training_flops(name, tp):
    shape = shapes.get(name)
    seq = 1024
    got = mb(shape, tp=tp, b=2, seq=seq).flops * tp
    assert got == flops.training_flops(shape, 2, seq)  # eager: causal attention in full


def test_gemm_efficiency_grows_with_size_towards_the_peak_share():
    e = [step_time.gemm_efficiency(K, n, n, n) for n in (256, 1024, 4096, 2**20)]
    assert e == sorted(e) and e[-1] < K.gemm and e[-1] > 0.99 * K.gemm
    half = step_time.Kernels(gemm=0.8, gemm_half=64, rows_half=32, attention=0.5, hbm=0.8,
                             nvlink=0.8, network=0.8)
    assert step_time.gemm_efficiency(half, 32, 64, 64) == pytest.approx(0.8 / 8)


def test_tensor_parallelism_shrinks_the_gemms():
    """t GPUs each take 1/t of the FLOPs, but at a lower efficiency: more than 1/t of the
    time; the memory-bound norms and residuals are not split without sequence parallelism."""
    shape = shapes.OTHERS["llama3-405b"]
    one, eight = mb(shape, layers=8, head=False), mb(shape, layers=8, head=False, tp=8)
    assert eight["GEMMs"] > one["GEMMs"] / 8
    assert eight["memory-bound"] > one["memory-bound"] / 8
    sp = mb(shape, layers=8, head=False, tp=8, sp=True)
    assert sp["memory-bound"] < eight["memory-bound"] and sp["GEMMs"] == eight["GEMMs"]
    # a larger micro-batch: a larger M, a (slightly) higher efficiency per token
    two = mb(shape, layers=8, head=False, tp=8, b=2)
    assert two["GEMMs"] < 2 * eight["GEMMs"]


def test_flash_skips_the_masked_half():
    shape = shapes.get("llama2-7b")
    flash = mb(shape, seq=4096)
    full = mb(shape, seq=4096, attention="materialized")
    assert flash["attention"] < full["attention"] and flash["GEMMs"] == full["GEMMs"]
    # recomputation: full reruns every forward, selective only the attention core's
    none, sel, fullr = (mb(shape, recompute=r, head=False) for r in ("none", "selective", "full"))
    # every layer's forward once more: 4 passes instead of 3 (the output layer is not recomputed)
    assert none["GEMMs"] == sel["GEMMs"] < fullr["GEMMs"] == pytest.approx(4 / 3 * none["GEMMs"],
                                                                           rel=1e-12)
    assert none["attention"] < sel["attention"]


def test_exposed_communication():
    assert step_time.exposed(2.0, 1.5, True) == 0.5
    assert step_time.exposed(1.0, 1.5, True) == 0.0
    assert step_time.exposed(1.0, 1.5, False) == 1.0


def test_scatter_gather_sends_one_t_th():
    """Bug 1 of issue 22: pipeline messages are b·s·h/t per GPU with scatter/gather (Narayanan
    et al. 2021, §4.1) or sequence parallelism, b·s·h without."""
    shape = shapes.resolve("llama2-70b")
    lay = plan.layout(shape, 64, 4 * plan.MI, 4096, tp=8, pp=4, zero=1)
    on = plan.evaluate(shape, "h100-80g", lay, 4096)
    off = plan.evaluate(shape, "h100-80g", lay, 4096, plan.Assumptions(scatter_gather=False))
    assert off.details["pp_bytes"] == 8 * on.details["pp_bytes"]
    msgs = 2 * (lay.microbatches + 3)
    assert off.details["pp_bytes"] == msgs * 1 * 4096 * shape.hidden_size * 2
    assert on.time_parts["PP p2p"] < off.time_parts["PP p2p"]
    sp = plan.layout(shape, 64, 4 * plan.MI, 4096, tp=8, pp=4, zero=1, sp=True)
    assert plan.evaluate(shape, "h100-80g", sp, 4096, plan.Assumptions(
        scatter_gather=False)).details["pp_bytes"] == on.details["pp_bytes"]


def test_interleaving_can_win():
    """With scatter/gather the ×v messages of interleaving cost little, and its smaller bubble
    wins: Llama 3 405B on 8,192 GPUs, TP 8 PP 16 (the published run chose interleaving)."""
    shape = shapes.resolve("llama3-405b")
    t = [plan.evaluate(shape, "h100-80g", plan.layout(
        shape, 8192, 16 * plan.MI, 8192, tp=8, pp=16, zero=1, recompute="full", sp=True,
        virtual=v), 8192).step_time_s for v in (1, 2, 4)]
    assert t[1] < t[0] and t[2] < t[0]


def test_data_parallel_overlap():
    """Overlapped, the gradient all-reduce hides behind the last micro-batch's backward; not
    overlapped it costs 2(d − 1)/d of the gradients over the network; Megatron-LM 2021
    overlapped it only without a pipeline ("pp1")."""
    shape = shapes.get("llama2-7b")
    lay = plan.layout(shape, 64, 4 * plan.MI, 4096, tp=1, pp=1, zero=0, recompute="selective")
    hid = plan.evaluate(shape, "a100-80g", lay, 4096)
    bare = plan.evaluate(shape, "a100-80g", lay, 4096,
                         plan.Assumptions(overlap=step_time.Overlap(dp=False)))
    assert hid.time_parts["DP comm"] < bare.time_parts["DP comm"]
    r = Fraction(63 * stage.stage_states(shape, lay.dims, 0)[1] * 2, 64)
    assert bare.details["dp_bytes"] == 2 * r
    assert bare.time_parts["DP comm"] == pytest.approx(float(2 * r) / (25e9 * K.network))
    pp1 = plan.Assumptions(overlap=step_time.Overlap(dp="pp1"))
    assert plan.evaluate(shape, "a100-80g", lay, 4096, pp1).time_parts["DP comm"] == \
        hid.time_parts["DP comm"]
    piped = plan.layout(shape, 64, 4 * plan.MI, 4096, tp=1, pp=2, zero=0, recompute="selective")
    assert plan.evaluate(shape, "a100-80g", piped, 4096, pp1).time_parts["DP comm"] == \
        plan.evaluate(shape, "a100-80g", piped, 4096, plan.Assumptions(
            overlap=step_time.Overlap(dp=False))).time_parts["DP comm"]


def test_the_optimizer_step_is_memory_bound():
    shape = shapes.get("llama2-7b")
    lay = plan.layout(shape, 8, 8 * 4096, 4096, zero=1)
    p = plan.evaluate(shape, "a100-80g", lay, 4096)
    n = stage.stage_states(shape, lay.dims, 1)[1] // 8
    assert p.time_parts["optimizer"] == pytest.approx(
        n * step_time.OPTIMIZER_BYTES / (A100.hbm_bytes_per_s * K.hbm))


@pytest.mark.parametrize("call, message", [
    (lambda: step_time.Kernels(gemm=1.5, gemm_half=64, rows_half=64, attention=0.5, hbm=0.8,
                               nvlink=0.8, network=0.8), "gemm must be"),
    (lambda: step_time.Kernels(gemm=0.8, gemm_half=-1, rows_half=64, attention=0.5, hbm=0.8,
                               nvlink=0.8, network=0.8), "gemm_half must be"),
    (lambda: step_time.Kernels(gemm=0.8, gemm_half=64, rows_half=64, attention=0.5, hbm=0.8,
                               nvlink=0.8, network=0), "network must be"),
    (lambda: step_time.Overlap(dp="yes"), "dp must be"),
    (lambda: plan.Assumptions(attention_kernel="xformers"), "attention_kernel must be"),
    (lambda: plan.Assumptions(grad_bytes=3), "grad_bytes must be"),
    (lambda: plan.framework_assumptions("jax"), "framework must be"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
