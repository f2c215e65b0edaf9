"""The peak of one training step (llmtrain.cost.step_peak) against the exact CPU tracker.

Every test runs real training steps of small reference LLaMAs and measures them with
``tracker.measure_peak`` (model, optimizer and ids included), so the whole file stays under a
minute on two cores.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from llmtrain.cost import activations as activation_formulas, memory, step_peak
from llmtrain.model import recompute as rc
from llmtrain.precision.amp import MixedPrecisionTrainer
from llmtrain.model.llama import Llama
from llmtrain.model.shapes import ModelShape
from llmtrain.measure import tracker
from llmtrain.cost import slides as slides_formulas

OPT_KW = {"single-tensor": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def measured_peak(shape, batch, seq, *, mode="fp32", set_to_none=True, attention="sdpa",
                  recompute="none", optimizer_impl="single-tensor"):
    """Peak bytes of the second training step (the first creates AdamW's states)."""
    torch.manual_seed(0)
    net = rc.apply(Llama(shape, attn_impl=attention), recompute)
    ids = torch.randint(0, shape.vocab_size, (batch, seq))
    if mode == "mixed":
        trainer = MixedPrecisionTrainer(net, torch.bfloat16, lr=1e-3)
        include = [net, trainer.optimizer, trainer.master, ids]

        def step():
            trainer.step(ids, ids)
    else:
        if mode == "bf16":
            net = net.to(torch.bfloat16)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, **OPT_KW[optimizer_impl])

        def step():
            net(ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=set_to_none)

        include = [net, opt, ids]
    step()
    return tracker.measure_peak(step, include=include).peak_bytes


def estimated(shape, batch, seq, *, mode="fp32", set_to_none=True, attention="sdpa",
              recompute="none", optimizer_impl="single-tensor"):
    return memory.step_peak(shape, batch, seq, dtype="fp32" if mode == "fp32" else "bf16",
                            precision=mode, set_to_none=set_to_none, attention=attention,
                            recompute=recompute, optimizer_impl=optimizer_impl)


def shape_of(V, H, L, N, kv, Hf, **kw):
    return ModelShape(vocab_size=V, hidden_size=H, num_layers=L, num_heads=N, num_kv_heads=kv,
                      intermediate_size=Hf, max_seq_len=256, **kw)


# an embedding-heavy model, and one case per named moment (notebook 11 checks its small model)
CASES = [
    (shape_of(1000, 64, 2, 4, 2, 172), 2, 32, dict(set_to_none=False), "forward"),
    (shape_of(16000, 64, 2, 4, 4, 192), 2, 16, {}, "optimizer step"),
    (shape_of(16000, 64, 2, 4, 4, 192), 2, 16, dict(optimizer_impl="foreach"), "optimizer step"),
    (shape_of(4000, 32, 2, 2, 1, 47), 4, 24, dict(mode="bf16"), "backward: loss"),
    (shape_of(64, 128, 1, 4, 2, 46), 2, 24, dict(mode="bf16", set_to_none=False),
     "backward: final norm"),
    (shape_of(16, 8, 3, 2, 1, 85, tie_embeddings=True), 2, 6, dict(mode="bf16", set_to_none=False),
     "backward: top layer MLP"),
    (shape_of(16, 8, 2, 1, 1, 3), 4, 13, dict(mode="bf16", recompute="full"),
     "backward: top layer norm"),
    (shape_of(16, 16, 1, 4, 2, 4), 2, 40, dict(attention="eager"), "backward: top layer attention"),
    (shape_of(4000, 16, 2, 2, 2, 52), 3, 20, dict(mode="mixed"), "backward: loss"),
    (shape_of(1000, 16, 1, 2, 2, 71), 2, 2, dict(mode="mixed"), "optimizer step"),
]


@pytest.mark.parametrize("shape,batch,seq,kw,phase", CASES)
def test_step_peak_named_cases(shape, batch, seq, kw, phase):
    est = estimated(shape, batch, seq, **kw)
    got = measured_peak(shape, batch, seq, **kw)
    assert est.phase == phase
    if kw.get("mode") == "mixed":  # MixedPrecisionTrainer.step keeps its 4-byte loss alive
        assert est.peak_bytes <= got <= est.peak_bytes + 4
    else:
        assert est.peak_bytes == got


@pytest.mark.parametrize("impl,dtype", [("hf-sdpa", "fp32"), ("hf-eager", "bf16")])
def test_transformers_llama(impl, dtype):
    from llmtrain.measure.activations import build

    shape, B, T = shape_of(1000, 32, 2, 4, 2, 40, tie_embeddings=True), 2, 12
    torch.manual_seed(0)
    net = build(shape, dtype=dtype, impl=impl)  # transformers' LlamaForCausalLM
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    ids = torch.randint(0, shape.vocab_size, (B, T))

    def step():
        net(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)

    step()
    got = tracker.measure_peak(step, include=[net, opt, ids]).peak_bytes
    assert step_peak.param_sizes(shape, "hf") == [p.numel() for p in net.parameters()]
    est = memory.step_peak(shape, B, T, impl=impl, dtype=dtype, precision=dtype,
                           set_to_none=False)
    assert est.peak_bytes == got


def test_embedding_heavy_peak_is_in_the_optimizer_step():
    # notebook 11's reading (the peak at the start of backward: total − gradients) misses the
    # optimizer step, where every state is live plus AdamW's temporaries (2VH for the embedding)
    shape, B, T = shape_of(16000, 64, 2, 4, 4, 192), 2, 16
    est = memory.estimate(shape, batch=B, seq=T, zero=0, recompute="none", dtype="fp32",
                          impl="reference", precision="fp32", overheads=False)
    got = measured_peak(shape, B, T)
    old_reading = est.total - est.details["model states"]["gradients"]
    assert old_reading / got - 1 < -0.2  # -24.4 % on this shape
    assert est.peak_bytes == got and est.step_peak.phase == "optimizer step"
    parts = est.step_peak.parts
    # lm_head's two temporaries beside the final norm's denom (or the embedding's, first): 2VH + H
    assert parts["optimizer temporaries"] == 4 * (2 * 16000 * 64 + 64)
    assert parts["gradients"] == parts["weights"] and "activations" not in parts


@pytest.mark.parametrize("impl", ["single-tensor", "foreach", "fused"])
def test_adamw_temporaries(impl):
    # what torch's AdamW allocates inside step(), measured, against the formula
    shape = shape_of(300, 32, 2, 4, 2, 50, attention_bias=True, mlp_bias=True)
    torch.manual_seed(0)
    net = Llama(shape)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, **OPT_KW[impl])
    ids = torch.randint(0, 300, (2, 8))
    for _ in range(2):
        net(ids, labels=ids).loss.backward()
        if not opt.state:
            opt.step()
    peak = tracker.measure_peak(opt.step, include=[net, opt])
    sizes = step_peak.param_sizes(shape)
    assert sizes == [p.numel() for p in net.parameters()]
    assert peak.peak_bytes - peak.start_bytes == step_peak.optimizer_temporary_bytes(sizes, 4, impl)
    assert peak.end_bytes == peak.start_bytes


def test_cpu_default_is_the_single_tensor_loop():
    from torch.optim.optimizer import _default_to_fused_or_foreach

    params = list(Llama(shape_of(16, 8, 1, 2, 1, 8)).parameters())
    fused, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    assert (fused, foreach) == (False, False)


@st.composite
def step_cases(draw):
    N = draw(st.sampled_from([1, 2, 4]))
    kv = draw(st.sampled_from([k for k in (1, 2, 4) if N % k == 0]))
    H = N * draw(st.sampled_from([4, 8, 16])) * draw(st.sampled_from([1, 2]))
    heavy = draw(st.booleans())  # embedding-heavy: a large vocabulary on a narrow model
    V = draw(st.integers(2000, 6000)) if heavy else draw(st.sampled_from([16, 64, 300, 1000]))
    shape = shape_of(V, H, draw(st.integers(1, 3)), N, kv, draw(st.integers(1, 100)),
                     tie_embeddings=draw(st.booleans()), attention_bias=draw(st.booleans()),
                     mlp_bias=draw(st.booleans()))
    kw = dict(mode=draw(st.sampled_from(["fp32", "bf16"])), set_to_none=draw(st.booleans()),
              attention=draw(st.sampled_from(["sdpa", "eager"])),
              recompute=draw(st.sampled_from(["none", "full"])))
    return shape, draw(st.integers(1, 4)), draw(st.integers(2, 24)), kw


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=step_cases())
def test_step_peak_random_shapes(case):
    shape, batch, seq, kw = case
    est = estimated(shape, batch, seq, **kw).peak_bytes
    got = measured_peak(shape, batch, seq, **kw)
    assert abs(est / got - 1) <= 0.05  # the bar; by hand, 85 of 95 random shapes exact


def test_set_to_none_false_keeps_the_gradients_in_every_phase():
    shape = shape_of(2048, 256, 4, 8, 4, 688)
    a = memory.step_peak(shape, 4, 256)
    b = memory.step_peak(shape, 4, 256, set_to_none=False)
    grads = memory.model_state_bytes(shape, precision="fp32")["gradients"]
    assert b.totals["forward"] - a.totals["forward"] == grads
    assert b.totals["optimizer step"] == a.totals["optimizer step"]


def test_estimate_carries_the_step_peak():
    shape = shape_of(2048, 256, 4, 8, 4, 688)
    est = memory.estimate(shape, batch=4, seq=256, zero=0, recompute="none", dtype="fp32",
                          impl="reference", precision="fp32", overheads=False)
    direct = memory.step_peak(shape, 4, 256)
    assert est.peak_bytes == est.step_peak.peak_bytes == direct.peak_bytes
    assert set(est.step_peak.phases) <= set(step_peak.PHASES)
    assert est.step_peak.phase in est.step_peak.table()
    assert slides_formulas.slides_formula(10**9, 1, 1, 1, 1, 1, 1).peak_bytes is None
    # the defaults (slides' setup) and every impl give a step peak
    for impl in activation_formulas.IMPLS:
        kw = {} if impl == "textbook" else {"recompute": "none"}
        tiny = shape_of(256, 64, 2, 4, 2, 172)
        assert memory.estimate(tiny, batch=2, seq=16, impl=impl, **kw).peak_bytes > 0


def test_step_peak_takes_the_layout():
    # dims divides the states as model_state_bytes does: tp·pp the parameters, ZeRO by dp
    from llmtrain.cost.layout import ParallelDims

    shape = shape_of(2048, 256, 4, 8, 4, 688)
    dims = ParallelDims(dp=4, tp=2, pp=2)
    kw = dict(zero=1, impl="textbook", recompute="full", dtype="bf16", precision="mixed")
    peak = memory.step_peak(shape, 4, 256, dims=dims, **kw)  # the exact impls are for tp = 1
    P = memory.params_per_gpu(shape, dims)
    assert P < memory.params_per_gpu(shape) // 3  # tp·pp = 4 splits, norms and a stage's extra
    opt = peak.phases["optimizer step"]
    assert opt["weights"] == 2 * P and opt["optimizer states"] == 8 * P // 4
    assert peak.phases == memory.estimate(shape, dims, 4, 256, overheads=False,
                                          **kw).step_peak.phases
    with pytest.raises(ValueError, match=r"^tp must divide num_heads=8, got tp=3$"):
        memory.step_peak(shape, 4, 256, dims=ParallelDims(tp=3), **kw)


@pytest.mark.parametrize("kw,message", [
    (dict(set_to_none=1), "set_to_none must be True or False, got 1"),
    (dict(set_to_none=None), "set_to_none must be True or False"),
    (dict(optimizer_impl="apex"), "optimizer_impl must be one of"),
])
def test_bad_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        memory.estimate(shape_of(64, 16, 1, 2, 1, 8), **kw)
    with pytest.raises(ValueError, match=message):
        memory.step_peak(shape_of(64, 16, 1, 2, 1, 8), 1, 8, **kw)
