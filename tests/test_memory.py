"""Training-memory estimators and the CPU peak tracker."""

import json
import re
from fractions import Fraction

import pytest
import torch
from hypothesis import given, strategies as st

from llmtrain.cost import memory, params
from llmtrain.model import shapes
from llmtrain.model.llama import Llama
from llmtrain.cost.memory import GB, GIB
from llmtrain.cost.layout import ParallelDims
from llmtrain.measure import tracker
from llmtrain.cost import slides as slides_formulas

S7 = shapes.get("llama-7b")


@pytest.mark.parametrize("precision,optimizer,total", [
    ("mixed", "adamw", 16), ("fp32", "adamw", 16), ("bf16", "adamw", 8),
    ("mixed", "sgd", 12), ("mixed", "adamw8bit", 10 + 1 / 32), ("mixed", "adamw4bit", 9 + 1 / 16),
    ("mixed", "fp8-lm", 7), ("fp32", "sgd", 12)])
def test_bytes_per_param(precision, optimizer, total):
    assert sum(memory.state_bytes_per_param(precision, optimizer).values()) == total


def test_slides_112_gb():
    # the slides: 16 * 7B = 112 GB, with a nominal 7e9 and decimal GB
    assert sum(memory.model_state_bytes(7 * 10**9).values()) / GB == 112


def test_zero_paper_numbers():
    # Rajbhandari et al. SC'20, Fig. 1: 7.5B parameters, N_d = 64, K = 12
    P = 7_500_000_000
    got = [sum(memory.model_state_bytes(P, zero=z, dims=ParallelDims(dp=64)).values()) / GB for z in range(4)]
    assert [round(g, 1) for g in got] == [120.0, 31.4, 16.6, 1.9]


@given(P=st.integers(1, 10**6), N=st.integers(1, 64))
def test_zero_stage_formulas(P, N):
    P *= N  # divisible: the formulas are then exact
    total = [sum(memory.model_state_bytes(P, zero=z, dims=N).values()) for z in range(4)]  # int: dp
    assert total == [16 * P, 4 * P + 12 * P // N, 2 * P + 14 * P // N, 16 * P // N]


def test_real_optimizer_states_match():
    # AdamW keeps m and v (fp32, 8 bytes per parameter); Adafactor factors matrices
    torch.manual_seed(0)
    shape = shapes.get("tiny")
    for opt_cls, name in [(torch.optim.AdamW, "adamw"), (torch.optim.Adafactor, "adafactor"),
                          (torch.optim.SGD, "sgd")]:
        model = Llama(shape)
        kw = {"momentum": 0.9} if name == "sgd" else {}
        opt = opt_cls(model.parameters(), lr=1e-3, **kw)
        x = torch.randint(0, shape.vocab_size, (1, 8))
        model(x, labels=x).loss.backward()
        opt.step()
        state = sum(v.numel() * v.element_size() for s in opt.state.values()
                    for k, v in s.items() if k != "step")
        expected = memory.model_state_bytes(shape, precision="fp32", optimizer=name)["optimizer"]
        assert state == expected, name


def test_params_per_gpu():
    assert memory.params_per_gpu(S7) == params.count(S7)
    b = params.breakdown(S7)
    tp8 = memory.params_per_gpu(S7, ParallelDims(tp=8))
    assert tp8 == (b["attention"] + b["mlp"] + b["embedding"] + b["lm_head"]) // 8 + b["norms"]
    # pipeline: every stage holds ceil(L/pp) layers; the last also the head and final norm
    per_layer = (b["attention"] + b["mlp"]) // 32 + 2 * 4096
    assert memory.params_per_gpu(S7, ParallelDims(pp=4)) == 8 * per_layer + b["lm_head"] + 4096
    # data parallelism replicates: dp changes nothing here
    assert memory.params_per_gpu(S7, ParallelDims(dp=8, tp=8)) == tp8
    with pytest.raises(ValueError, match=r"^tp must divide num_heads=32, got tp=3$"):
        memory.params_per_gpu(S7, ParallelDims(tp=3))
    with pytest.raises(ValueError, match=r"^pp must be at most num_layers=32, got pp=33$"):
        memory.params_per_gpu(S7, ParallelDims(pp=33))


def test_model_state_bytes_by_layout():
    # TP 2 × PP 2 × DP 4 (notebook 11): tp·pp split the parameters, ZeRO shards over dp only
    s8 = shapes.get("llama3-8b")
    dims = ParallelDims(dp=4, tp=2, pp=2)
    P = memory.params_per_gpu(s8, dims)
    parts = memory.model_state_bytes(s8, zero=1, dims=dims)
    assert parts == {"weights": 2 * P, "gradients": 2 * P, "master": -(-4 * P // 4),
                     "optimizer": -(-8 * P // 4)}
    # a count is split evenly by tp·pp; an int dims is the data-parallel degree
    assert memory.model_state_bytes(10**9, zero=3, dims=ParallelDims(dp=2, tp=5)) == \
        memory.model_state_bytes(2 * 10**8, zero=3, dims=2)
    with pytest.raises(ValueError, match=r"^dims must be a ParallelDims or a positive integer"):
        memory.model_state_bytes(10**9, dims=(4, 2, 2))
    # a vocabulary tp does not divide is split unevenly (parallel.mesh.shard_sizes): the
    # busiest rank holds ceil(255/2) = 128 rows, as many as of tiny's 256
    odd_vocab = shapes.get("tiny").replace(vocab_size=255)
    tp2 = ParallelDims(tp=2)
    assert memory.params_per_gpu(odd_vocab, tp2) == memory.params_per_gpu("tiny", tp2)
    assert memory.model_state_bytes(odd_vocab, dims=tp2)["weights"] == \
        2 * memory.params_per_gpu(odd_vocab, tp2)


def test_textbook_activations():
    B, T, H, L, V = 8, 2048, 4096, 32, 32000
    assert memory.activation_bytes(S7, B, T) == 2 * L * B * T * H + 4 * B * T * V
    assert memory.activation_bytes(S7, B, T, dtype=torch.float32) == 4 * L * B * T * H + 4 * B * T * V
    with pytest.raises(ValueError, match="recompute='full'"):
        memory.activation_bytes(S7, B, T, impl="textbook", recompute="none")


def test_korthikanti_family():
    s, b, h, a, L, v = 2048, 1, 4096, 32, 32, 32000
    sbh = s * b * h
    out = 4 * sbh * (1 + v / h)
    none = memory.activation_bytes(S7, b, s, impl="korthikanti")
    assert none == round(L * sbh * (34 + 5 * a * s / h) + out)
    sel = memory.activation_bytes(S7, b, s, impl="korthikanti", recompute="selective")
    assert sel == round(L * 34 * sbh + out)
    t = 4
    tp = memory.activation_bytes(S7, b, s, impl="korthikanti", tp=t)
    assert tp == round(L * sbh * (10 + 24 / t + 5 * a * s / (h * t)) + out / t)
    sp = memory.activation_bytes(S7, b, s, impl="korthikanti", tp=t, sp=True)
    assert sp == round(L * sbh / t * (34 + 5 * a * s / h) + out / t)
    full = memory.activation_bytes(S7, b, s, impl="korthikanti", recompute="full")
    assert full == round(L * 2 * sbh + out)
    with pytest.raises(ValueError, match="16-bit"):
        memory.activation_bytes(S7, b, s, impl="korthikanti", dtype="fp32")


def test_slides_worked_example():
    # 2×A100-80G, LLaMA-7B, B=8: 模型与优化器 50GB, 激活值 6.2GB, 其他 10GB, 单卡总计 66GB
    est = memory.estimate(S7, ParallelDims(dp=2), batch=8, seq=2048, zero=3)
    assert est.total == memory.estimate(S7, 2, batch=8, seq=2048, zero=3).total  # int = dp
    gib = est.gib
    assert round(gib["model states"]) == 50            # 53.9 GB: the slide's "GB" is GiB here
    assert round(gib["activations"], 2) == 5.95        # not 6.2 in any unit (6.39 in GB)
    assert round(est.gb["activations"], 2) == 6.39
    other = gib["softmax extra"] + gib["framework"] + gib["ZeRO runtime"] + gib["fragmentation"]
    assert round(other) == 10                          # 6 + 8BTV (3.91 GiB)
    assert round(gib["total"]) == 66


def test_slides_formula_as_written():
    P = params.count(S7)
    f = slides_formulas.slides_formula(P, 2, 32, 8, 2048, 4096, 32000)
    assert f.parts == {"model states": 8 * P, "activations": 2 * 32 * 8 * 2048 * 4096 + 12 * 8 * 2048 * 32000,
                       "other": 6 * GB}
    assert slides_formulas.slides_formula(P, 2, 32, 8, 2048, 4096, 32000, other_unit=GIB).parts["other"] == 6 * GIB


@pytest.mark.parametrize("kw,message", [
    (dict(dims=0), "dims must be a ParallelDims or a positive integer"),
    (dict(dims=ParallelDims(tp=3)), "tp must divide num_heads=32, got tp=3"),
    (dict(zero=4), r"zero must be one of \(0, 1, 2, 3\), got 4"),
    (dict(batch=-1), "batch must be a positive integer"),
    (dict(dtype="int8"), "dtype must be fp32, bf16 or fp16"),
    (dict(impl="magic"), "impl must be one of"),
    (dict(recompute="some"), "recompute must be"),
    (dict(precision="fp8"), "precision must be one of"),
    (dict(optimizer="lion"), "optimizer must be one of"),
    (dict(sp=True), "sp=True"),
])
def test_estimate_validation(kw, message):
    with pytest.raises(ValueError, match=message):
        memory.estimate(S7, **kw)


def test_parallel_dims_from_a_gpu_count():
    assert memory.parallel_dims(16, 2, 2) == ParallelDims(dp=4, tp=2, pp=2)
    assert memory.parallel_dims(3) == ParallelDims(dp=3)
    with pytest.raises(ValueError, match=r"^gpus must be a multiple of tp·pp=4, got 6$"):
        memory.parallel_dims(6, 2, 2)
    with pytest.raises(ValueError, match=r"^pp must be a positive integer, got 0$"):
        memory.parallel_dims(6, 2, 0)


def test_adafactor_needs_a_shape():
    with pytest.raises(ValueError, match="adafactor.*ModelShape"):
        memory.model_state_bytes(10**9, optimizer="adafactor")


# --- the CPU tracker -----------------------------------------------------------------

def test_measure_peak_sees_allocations_and_frees():
    def fn():
        a = torch.ones(1000)            # 4000 B
        b = torch.ones(500)             # +2000 B -> 6000 B
        v = a[10:20]                    # a view: no new storage
        del a, b, v
        c = torch.ones(100, dtype=torch.float64)  # 800 B after the others are freed
        return c.sum()

    peak = tracker.measure_peak(fn)
    assert peak.peak_bytes == 6000  # later c (800 B) and its sum (8 B) never reach it
    assert peak.start_bytes == 0 and peak.end_bytes == 0


def test_measure_peak_keeps_live_tensors():
    kept = []

    def fn():
        kept.append(torch.zeros(256))  # 1024 B that outlives fn
        torch.zeros(1024)              # 4096 B temporary

    peak = tracker.measure_peak(fn)
    assert peak.peak_bytes == 1024 + 4096 and peak.end_bytes == 1024


def test_measure_peak_include_and_training_step():
    torch.manual_seed(0)
    model = Llama(shapes.get("tiny"))
    P = params.count(shapes.get("tiny"))
    x = torch.randint(0, 256, (2, 16))
    peak = tracker.measure_peak(lambda: model(x, labels=x).loss.backward(), include=model)
    assert peak.start_bytes == 4 * P + 4 * (shapes.get("tiny").d_head // 2)  # weights + inv_freq
    assert peak.end_bytes == peak.start_bytes + 4 * P  # gradients stay
    assert peak.peak_bytes > peak.end_bytes
    with pytest.raises(ValueError, match="include"):
        tracker.measure_peak(lambda: None, include=[42])


def test_measure_peak_ignores_views_and_in_place_ops_on_outside_tensors():
    outside = torch.zeros(1000)

    def fn():
        outside[1:5].add_(1.0)       # a view and an in-place op: no allocation
        outside.mul_(2.0)
        return outside.view(10, 100)

    assert tracker.measure_peak(fn).peak_bytes == 0


def test_galore_rank_needs_a_galore_optimizer():
    """A rank for AdamW was ignored without a word (issue 21 §5)."""
    s = shapes.get("tiny")
    with pytest.raises(ValueError, match=r"^galore_rank is only used by optimizer 'galore' or "
                                         r"'galore8bit', got galore_rank=8 with optimizer='adamw'$"):
        memory.model_state_bytes(s, galore_rank=8)
    with pytest.raises(ValueError, match="optimizer='lomo'"):
        memory.estimate(s, optimizer="lomo", galore_rank=8)
    assert memory.model_state_bytes(s, optimizer="galore", galore_rank=8) != \
        memory.model_state_bytes(s, optimizer="galore", galore_rank=16)


# --- the pipeline's micro-batches in flight (issue 22, bug 2) ---------------------------------

L70 = shapes.get("llama3-70b")


def test_llama3_70b_first_stage_holds_two_microbatches():
    # tp8 pp2 dp4, selective, Korthikanti with SP, b1 s8192: the first stage of 1F1B holds pp = 2
    # micro-batches of its 40 layers; the external review (shared/reviews/external-calculators.md
    # §1d) found 11.15 GiB here and 11.15 + 10.63 in plan.memory_parts and the cookbook's 21.25
    dims = ParallelDims(dp=4, tp=8, pp=2)
    est = memory.estimate(L70, dims, 1, 8192, zero=1, recompute="selective", impl="korthikanti",
                          sp=True)
    assert est.details["in_flight"] == 2 and est.details["schedule"] == "1f1b"
    assert est.parts["activations"] == 11_967_397_888  # one micro-batch, 11.15 GiB
    assert est.parts["in-flight activations"] == 11_408_506_880  # the other one's 40 layers
    assert round((est.parts["activations"] + est.parts["in-flight activations"]) / GIB, 1) == 21.8


def test_without_a_pipeline_nothing_is_in_flight():
    est = memory.estimate(L70, ParallelDims(dp=8, tp=8), 1, 8192, zero=1, recompute="selective",
                          impl="korthikanti", sp=True, microbatches=16)
    assert "in-flight activations" not in est.parts and est.details["in_flight"] == 1
    assert est.details["schedule"] is None
    assert list(est.parts) == ["model states", "activations", "softmax extra", "framework",
                               "ZeRO runtime", "fragmentation"]


@pytest.mark.parametrize("pp,m,v,held", [
    (2, None, 1, 2), (4, 2, 1, 2), (4, 16, 1, 4), (8, None, 1, 8),
    # interleaved on rank 0: min(2(p − 1) + (v − 1)p + 1, m·v)/v; large m: p + (p − 1)/v
    (8, None, 2, 8 + Fraction(7, 2)), (4, 4, 2, Fraction(8, 2)), (4, 8, 3, Fraction(15, 3)),
    (2, 2, 3, Fraction(6, 3)), (1, 5, 1, 1)])
def test_in_flight_microbatches(pp, m, v, held):
    assert memory.in_flight_microbatches(pp, m, v) == held


@given(pp=st.integers(2, 6), groups=st.integers(1, 4), v=st.integers(1, 4))
def test_in_flight_is_the_schedules_peak(pp, groups, v):
    # oracle: the schedule as data, replayed (pp_schedule.in_flight counts (micro-batch, chunk)
    # pairs; a chunk is 1/v of a micro-batch's activations)
    from llmtrain.cost import pp_schedule

    m = groups * pp
    name = "1f1b" if v == 1 else "interleaved"
    replayed = Fraction(pp_schedule.in_flight(pp_schedule.schedule(name, pp, m, 0, v)), v)
    assert memory.in_flight_microbatches(pp, m, v) == replayed
    big = Fraction(pp_schedule.in_flight(pp_schedule.schedule(name, pp, 4 * pp, 0, v)), v)
    assert memory.in_flight_microbatches(pp, None, v) == big  # None: m past the warm-up


@pytest.mark.parametrize("tp,pp,m,v,recompute,sp", [
    (8, 2, 8, 1, "selective", True), (8, 4, 2, 1, "selective", False), (4, 8, 16, 1, "full", True),
    (8, 4, 8, 2, "selective", True), (2, 4, 4, 3, "full", False), (8, 8, 64, 2, "full", False)])
def test_in_flight_equals_plan_memory_parts(tp, pp, m, v, recompute, sp):
    # the planner and memory.estimate must agree (issue 22): same layout, same activations
    # (selective and full: the planner may assume a kernel that changes what "none" saves)
    from llmtrain.cost import plan

    dims = ParallelDims(dp=2, tp=tp, pp=pp)
    lay = plan.Layout(dims, 1, recompute, 1, m, v, sp)
    want = plan.memory_parts(L70, lay, 4096)
    est = memory.estimate(L70, dims, 1, 4096, zero=1, recompute=recompute, impl="korthikanti",
                          sp=sp, microbatches=m, virtual=v)
    for part in ("activations", "in-flight activations"):
        assert est.parts[part] == want[part]
    one, extra, count = memory.pipeline_activation_bytes(
        L70, dims, 1, 4096, recompute=recompute, sp=sp, microbatches=m, virtual=v)
    assert (one, extra) == (want["activations"], want["in-flight activations"])
    assert count == est.details["in_flight"] == memory.in_flight_microbatches(pp, m, v)


def test_in_flight_activations_live_until_the_optimizer_step():
    dims = ParallelDims(dp=2, tp=1, pp=4)
    est = memory.estimate(S7, dims, 1, 512, zero=1, recompute="full", microbatches=8)
    extra = est.parts["in-flight activations"]
    assert extra > 0 and est.details["in_flight"] == 4
    phases = est.step_peak.phases
    assert all(p["in-flight activations"] == extra for k, p in phases.items() if k != "optimizer step")
    assert "in-flight activations" not in phases["optimizer step"]
    one = memory.estimate(S7, dims, 1, 512, zero=1, recompute="full", microbatches=1)
    assert one.parts["in-flight activations"] == 0 and one.details["in_flight"] == 1
    assert est.step_peak.totals["forward"] == one.step_peak.totals["forward"] + extra


@pytest.mark.parametrize("kw,message", [
    (dict(virtual=2), "virtual must be 1 without pipeline parallelism (pp = 1), got 2"),
    (dict(dims=ParallelDims(dp=1, pp=2), virtual=2, microbatches=3),
     "microbatches must be a multiple of the 2 stages for schedule='interleaved'"),
    (dict(dims=ParallelDims(dp=1, pp=2), microbatches=0), "microbatches must be a positive integer"),
    (dict(dims=ParallelDims(dp=1, pp=2), virtual=0), "virtual must be a positive integer"),
])
def test_in_flight_arguments_are_checked(kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        memory.estimate(S7, **{"dims": ParallelDims(), **kw})


# --- the command line: llmtrain memory --pp (it must agree with estimate and name the count) --

def cli(*args):
    """(exit status, stdout, stderr) of ``llmtrain memory ...`` in this process."""
    import contextlib
    import io

    from llmtrain import cli as _cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _cli.main(["memory", *args])
    return code, out.getvalue(), err.getvalue()


LAYOUT_70B = ("llama3-70b", "--gpus", "64", "--tp", "8", "--pp", "2", "--zero", "1", "--seq",
              "8192", "--impl", "korthikanti", "--recompute", "selective", "--sp")


def test_cli_pp_prints_the_microbatches_in_flight():
    code, out, err = cli(*LAYOUT_70B)
    assert code == 0, err
    assert "in-flight activations     11,408,506,880     11.41     10.62" in out
    assert out.rstrip().endswith("in flight: 2 micro-batches' activations on the first stage "
                                 "(1F1B, pp = 2; m assumed at least the warm-up; --microbatches "
                                 "M sets it)")
    code, out, err = cli(*LAYOUT_70B, "--virtual", "3", "--microbatches", "4")
    assert code == 0, err
    assert ("in flight: 7/3 = 2.33 micro-batches' activations on the first stage (interleaved "
            "1F1B, 3 chunks per rank, pp = 2; m = 4)") in out
    code, out, err = cli("llama-7b", "--gpus", "2")  # no pipeline: the table alone, as before
    assert code == 0 and "in flight" not in out and "in-flight" not in out


def test_cli_pp_json_equals_estimate():
    code, out, err = cli(*LAYOUT_70B, "--virtual", "2", "--microbatches", "8", "--json")
    assert code == 0, err
    got = json.loads(out)
    est = memory.estimate(L70, ParallelDims(dp=4, tp=8, pp=2), 1, 8192, zero=1,
                          recompute="selective", impl="korthikanti", sp=True, microbatches=8,
                          virtual=2)
    assert got["parts"] == est.parts and got["total"] == est.total
    assert got["pipeline"] == {"pp": 2, "schedule": "interleaved", "virtual": 2,
                               "microbatches": 8, "in_flight": 2.5, "in_flight_fraction": "5/2"}
    assert got["framework"] == "slides"


@pytest.mark.parametrize("args,needle", [
    (["--virtual", "2"], "--virtual is only used with --pp > 1 (a pipeline), got --virtual 2 "
                         "with --pp 1"),
    (["--microbatches", "8"], "--microbatches is only used with --pp > 1"),
    (["--pp", "2", "--gpus", "2", "--microbatches", "0"],
     "argument --microbatches: microbatches must be a positive integer, got 0"),
    (["--pp", "2", "--gpus", "2", "--virtual", "x"],
     "argument --virtual: virtual must be a positive integer, got 'x'"),
    (["--pp", "2", "--gpus", "2", "--virtual", "2", "--microbatches", "3"],
     "microbatches must be a multiple of the 2 stages for schedule='interleaved'"),
])
def test_cli_pipeline_flags_bad_input(args, needle):
    code, out, err = cli("llama-7b", *args)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and needle in lines[0], err
