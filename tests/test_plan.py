"""The planner (llmtrain.cost.plan): its memory equals memory.estimate's, its time parts equal the
formulas they cite, and the published runs: Narayanan et al. 2021 Table 1 (Eq. 2, Eq. 3, the
fraction of peak), BLOOM-176B and Llama 3 405B (fit, rank)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from llmtrain import cli
from llmtrain.cost import flops, memory, params, plan, plan_explain, published_runs, step_time
from llmtrain.model import shapes
from llmtrain.cost import pp_schedule
from llmtrain.cost.layout import ParallelDims
from llmtrain.cost import stage

GIB = 2**30


# --- Narayanan et al. 2021, Table 1 ------------------------------------------------------------

@pytest.mark.parametrize("row", published_runs.NARAYANAN_TABLE1, ids=lambda r: f"{r.params_b}B")
def test_narayanan_row_is_consistent_with_their_equations(row):
    # Eq. 2 gives the row's stated size (their table rounds to 0.1 B)
    assert round(published_runs.narayanan_params(row.layers, row.hidden) / 1e9, 1) == row.params_b
    # the fraction of peak is the TFLOP/s over the A100's 312
    assert round(100 * row.tflops_per_gpu / published_runs.A100_PEAK_TFLOPS) == row.percent_of_peak
    # the aggregate is TFLOP/s × GPUs (the per-GPU figure rounded to a whole TFLOP/s)
    assert abs(1000 * row.aggregate_pflops / row.gpus - row.tflops_per_gpu) <= 0.5
    # the layout: t·p divides n; the batch splits over the dp = n/(t·p) replicas
    assert row.gpus % (row.tp * row.pp) == 0 and row.batch % (row.gpus // (row.tp * row.pp)) == 0
    assert row.hidden % row.heads == 0 and row.tp <= 8  # TP inside one DGX A100


@pytest.mark.parametrize("row", published_runs.NARAYANAN_TABLE1, ids=lambda r: f"{r.params_b}B")
def test_narayanan_model_flops_utilisation(row):
    """Eq. 3 counts the recomputed forward: the model FLOPs are a little over 3/4 of it (the
    output layer is not recomputed), so MFU = their % of peak × that ratio."""
    B, l, h = row.batch, row.layers, row.hidden
    ratio = Fraction(published_runs.narayanan_model_flops(B, l, h), published_runs.narayanan_flops(B, l, h))
    assert Fraction(3, 4) < ratio < Fraction(77, 100)  # 0.762 at 1.7B, 0.750 at 1T
    mfu = row.tflops_per_gpu / published_runs.A100_PEAK_TFLOPS * ratio
    assert 0.32 < mfu < 0.40


@pytest.mark.parametrize("row", [r for r in published_runs.NARAYANAN_TABLE1 if 8 * r.hidden % 3 == 0],
                         ids=lambda r: f"{r.params_b}B")
def test_eq3_is_our_flops_count(row):
    """A LLaMA-form shape with the GPT's matmul weights (3hH' = 8h², so H' = 8h/3) gives,
    exactly, their Eq. 3 with full recomputation (no early stop) and its 3/4 part without."""
    h, l, B, s = row.hidden, row.layers, 2, published_runs.NARAYANAN_S
    shape = shapes.ModelShape(vocab_size=published_runs.NARAYANAN_V, hidden_size=h, num_layers=l,
                              num_heads=row.heads, num_kv_heads=row.heads,
                              intermediate_size=8 * h // 3, max_seq_len=s)
    assert flops.training_flops(shape, B, s, recompute="full",
                                early_stop=False) == published_runs.narayanan_flops(B, l, h)
    assert flops.training_flops(shape, B, s) == published_runs.narayanan_model_flops(B, l, h)


# --- BLOOM-176B --------------------------------------------------------------------------------

def test_bloom_approximation():
    shape = shapes.resolve("bloom-176b")
    assert published_runs.BLOOM_176B_PARAMS == 176_247_271_424
    err = Fraction(params.count(shape) - published_runs.BLOOM_176B_PARAMS, published_runs.BLOOM_176B_PARAMS)
    assert abs(err) < Fraction(2, 100_000)  # -0.00097 %
    # the MLP's matmul weights: 3hH' versus BLOOM's 8h², short by h per layer
    h = shape.hidden_size
    assert 8 * h * h - 3 * h * shape.intermediate_size == h


# --- Llama 3 405B -----

@pytest.mark.parametrize("run", published_runs.LLAMA3_405B, ids=lambda r: str(r["gpus"]))
def test_llama3_table4_arithmetic(run):
    assert run["tp"] * run["pp"] * run["dp"] == run["gpus"]
    assert run["batch_tokens"] == 2**24  # "16M": (seqs per DP group) × 8,192 × DP
    assert run["batch_tokens"] // (run["seq"] * run["dp"]) in (32, 16)
    # their MFU against the H100's 989 TFLOPS: 43.5 % → "43 %", 40.4 % → "41 %" (rounded)
    assert abs(100 * run["tflops_per_gpu"] / 989 - run["mfu_percent"]) < 1


# --- memory: memory.estimate's parts + the pipeline's in-flight micro-batches ----------------

@settings(max_examples=12, deadline=None)
@given(st.sampled_from(["llama-7b", "llama2-70b", "llama3-8b"]), st.sampled_from([1, 2, 4, 8]),
       st.sampled_from([1, 2, 4]), st.sampled_from([0, 1, 2, 3]),
       st.sampled_from(["none", "selective", "full"]), st.sampled_from([1, 2]), st.booleans(),
       st.sampled_from(["slides", "fsdp"]))
def test_memory_parts_are_estimates(name, tp, pp, zero, recompute, b, sp, framework):
    """plan.memory_parts = memory.estimate's parts (pp divides L here), the in-flight
    micro-batches included; with FlashAttention, no recomputation saves what selective does."""
    shape, gpus, seq = shapes.get(name), 32, 2048
    sp = sp and tp > 1
    lay = plan.layout(shape, gpus, 512 * seq, seq, tp=tp, pp=pp, zero=zero,
                      recompute=recompute, micro_batch=b, sp=sp)
    a = plan.Assumptions(memory_framework=framework)
    parts = plan.memory_parts(shape, lay, seq, a)
    saved = "selective" if recompute == "none" else recompute
    est = memory.estimate(shape, lay.dims, b, seq, zero=zero, recompute=saved,
                          impl="korthikanti", sp=sp, microbatches=lay.microbatches,
                          framework=framework)
    assert parts == est.parts
    materialized = plan.memory_parts(shape, lay, seq, plan.Assumptions(
        memory_framework=framework, attention_kernel="materialized"))
    assert (materialized["activations"] > parts["activations"]) == (recompute == "none")


def test_stage_layers():
    """Llama 3 405B: 126 layers on 16 stages, 7 + 14 × 8 + 7; BLOOM: 70 on 12, 5 + 10 × 6 + 5
    (its README: rank 0 = [embed | 5 blocks], ranks 1-10 = 6 blocks, rank 11 = [5 | embed])."""
    assert plan.stage_layers(126, 16) == (7, 8, 7)
    assert plan.stage_layers(70, 12) == (5, 6, 5)
    assert plan.stage_layers(80, 8) == (10, 10, 10) and plan.stage_layers(80, 1) == (80, 80, 80)
    assert plan.stage_layers(105, 64) == (2, 2, 2)  # short by 23: every stage counted at 2


def test_the_fuller_second_stage_holds_the_most():
    """With 7 layers on the first stage and 8 on the second, rank 1's 15 micro-batches of 8
    layers outweigh rank 0's 16 of 7 (1F1B)."""
    shape = shapes.resolve("llama3-405b")
    lay = plan.layout(shape, 8192, 2**24, 8192, tp=8, pp=16, zero=1, recompute="selective",
                      sp=True)
    parts = plan.memory_parts(shape, lay, 8192, plan.Assumptions(memory_framework="fsdp"))
    kw = dict(impl="korthikanti", recompute="selective", tp=8, sp=True)
    layer = (memory.activation_bytes(shape.replace(num_layers=9), 1, 8192, **kw)
             - memory.activation_bytes(shape.replace(num_layers=8), 1, 8192, **kw))
    assert parts["activations"] == 8 * layer
    assert parts["activations"] + parts["in-flight activations"] == 15 * 8 * layer


def test_interleaved_holds_more_chunks():
    shape = shapes.resolve("llama3-405b")
    lays = [plan.layout(shape, 16384, 2**24, 8192, tp=8, pp=16, zero=2, recompute="full",
                        virtual=v, sp=True) for v in (1, 2)]
    p1, p2 = (plan.evaluate(shape, "h100-80g", lay, 8192) for lay in lays)
    ops = pp_schedule.interleaved(16, 16, 0, 2)
    assert p2.details["in_flight"] == pp_schedule.in_flight(ops) > 16 == p1.details["in_flight"]
    # m = p = 16: every micro-batch is in flight either way; chunks of n/v layers
    assert p2.memory_bytes == p1.memory_bytes and p2.step_time_s < p1.step_time_s


# --- time: the parts equal the formulas ----------------------------------------------------

def test_time_parts_are_the_terms():
    """Each time part is its step_time term: m micro-batches of the busiest stage, the bubble
    (p − 1)/(m + p − 1) of the pipeline, the ring bytes of TP, DP and PP over their links."""
    shape, c, seq = shapes.get("llama2-70b"), plan.cluster("h100-80g"), 4096
    lay = plan.layout(shape, 64, 4 * plan.MI, seq, tp=8, pp=4, zero=1, recompute="selective")
    a = plan.Assumptions(overlap=step_time.Overlap(dp=False))
    p, k = plan.evaluate(shape, c, lay, seq, a), step_time.KERNELS["hopper"]
    t, d, m, b = 8, lay.dims, lay.microbatches, 1
    assert (d.dp, m) == (2, 512)
    n, h = 20, shape.hidden_size
    bsh2 = 2 * b * seq * h  # bytes of one b·s·h activation in bf16
    ring = Fraction(2 * (t - 1), t)
    tp_bytes = ring * (4 * n * bsh2 + bsh2 + 3 * 2 * b * (seq - 1))
    assert p.details["tp_bytes"] == tp_bytes  # 4 per layer, lm_head (not the embedding), loss
    mb = step_time.micro_batch(shape, n, True, t, False, b, seq, "selective", "flash", k,
                               c.peak_flops, c.hbm_bytes_per_s)
    assert p.time_parts["compute"] == pytest.approx(m * sum(mb.values()), rel=1e-12)
    assert p.time_parts["TP comm"] == pytest.approx(
        m * float(tp_bytes) / (450e9 * k.nvlink), rel=1e-12)
    bubble = p.time_parts["bubble"] / (p.time_parts["bubble"] + p.time_parts["compute"]
                                       + p.time_parts["TP comm"])
    assert bubble == pytest.approx(float(pp_schedule.bubble_formula(4, m)), rel=1e-9)
    params_gpu = memory.params_per_gpu(shape, d)  # tp·dp = 16 spans 2 nodes: the network
    r = params_gpu * 2 / 2  # (d − 1)/d of the bf16 gradients (reduce-scatter) or weights
    assert p.time_parts["DP comm"] == pytest.approx(2 * r / (50e9 * k.network), rel=1e-9)
    # the pipeline spans 8 nodes: 2(m + p − 1) messages of b·s·h/t (scatter/gather) on the
    # network, each all-gathered again on NVLink
    msgs = 2 * (m + 3)
    assert p.time_parts["PP p2p"] == pytest.approx(
        msgs * bsh2 / t / (50e9 * k.network) + msgs * bsh2 / t * 7 / (450e9 * k.nvlink),
        rel=1e-9)
    assert p.time_parts["optimizer"] == pytest.approx(
        params_gpu // 2 * step_time.OPTIMIZER_BYTES / (c.hbm_bytes_per_s * k.hbm))
    assert p.model_flops == flops.training_flops(shape, 1024, seq)
    assert p.tokens == 4 * plan.MI and 0 < p.mfu < p.hfu < k.gemm


@settings(max_examples=10, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.sampled_from([1, 2, 8]), st.sampled_from([0, 1, 2, 3]),
       st.sampled_from(["none", "selective", "full"]), st.sampled_from(["a100-40g", "h100-80g"]))
def test_utilisation_is_below_the_gemm_share(tp, pp, zero, recompute, gpu):
    shape = shapes.get("llama-13b")
    lay = plan.layout(shape, 64, 2**21, 2048, tp=tp, pp=pp, zero=zero, recompute=recompute)
    p = plan.evaluate(shape, gpu, lay, 2048)
    k = step_time.KERNELS[plan.cluster(gpu).generation]
    assert all(v >= 0 for v in p.time_parts.values())
    assert p.mfu <= p.hfu <= k.gemm * (1 + 1e-12)
    assert (p.mfu == p.hfu) == (recompute == "none")
    if pp == 1:
        assert p.time_parts["bubble"] == 0 == p.time_parts["PP p2p"]


def test_search_is_sorted_and_fits():
    plans = plan.search("llama-7b", "a100-80g", 2, 16 * 2048, 2048)
    assert plans and all(p.fits for p in plans)
    times = [p.step_time_s for p in plans]
    assert times == sorted(times) and plan.rank_of(plans, plans[0]) == 1
    every = plan.search("llama-7b", "a100-80g", 2, 16 * 2048, 2048, feasible_only=False)
    assert len(every) > len(plans) and any(not p.fits for p in every)


# --- input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, tokens", [("4M", 4 * 2**20), ("512K", 2**19), ("1G", 2**30),
                                          ("32768", 32768), ("16m", 2**24), (4096, 4096)])
def test_parse_tokens(text, tokens):
    assert plan.parse_tokens(text) == tokens


def test_names():
    assert shapes.resolve("llama-70b") == shapes.get("llama2-70b")
    assert shapes.resolve("llama3-405b").num_layers == 126
    assert set(shapes.names()) < set(shapes.all_names())
    assert "llama3-405b" not in shapes.PRESETS  # the presets are unchanged


@pytest.mark.parametrize("call, message", [
    (lambda: plan.parse_tokens("4Q"), "batch_tokens must be a positive count of tokens"),
    (lambda: plan.parse_tokens("0"), "batch_tokens must be a positive count"),
    (lambda: shapes.resolve("llama-8b"), "model: unknown model name"),
    (lambda: plan.cluster("v100"), "gpu must be one of"),
    (lambda: plan.layout("llama-7b", 6, 2**20, 2048, tp=4), "gpus must be a multiple of tp·pp=4"),
    (lambda: plan.layout("llama-7b", 8, 2**20, 2048, tp=3, pp=1),
     "gpus must be a multiple of tp·pp=3"),
    (lambda: plan.layout("llama-7b", 6, 2**20, 2048, tp=3), "tp must divide num_heads=32"),
    (lambda: plan.layout("llama-7b", 8, 3 * 2048, 2048), "batch must be a multiple of dp·"),
    (lambda: plan.layout("llama-7b", 8, 1000, 2048), "batch_tokens must be a positive multiple"),
    (lambda: plan.layout("tiny", 4, 2**12, 64, pp=4), "pp must be at most num_layers=2"),
    (lambda: plan.layout("llama-7b", 8, 2**20, 2048, zero=4), "zero must be one of"),
    (lambda: plan.layout("llama-7b", 8, 2**20, 2048, sp=True), "sp needs tp > 1"),
    (lambda: plan.layout("llama-7b", 8, 2**20, 2048, pp=2, virtual=2, micro_batch=128),
     "microbatches must be a multiple of the 2 stages"),
    (lambda: plan.search("llama-7b", "a100-80g", 12, 2**20), "gpus must be a multiple of the 8"),
    (lambda: plan.Assumptions(memory_framework="jax"), "memory_framework must be one of"),
    (lambda: plan.search("llama-7b", "a100-80g", 8, 2**20, stages="odd"), "stages must be one of"),
])
def test_bad_input_names_the_field(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("·", ".")):
        call()


# --- the command line ----------------------------------------------------------------------

def test_cli_json_is_the_search():
    r = subprocess.run([sys.executable, "-m", "llmtrain", "plan", "llama-70b", "--gpus", "64",
                        "--gpu", "h100-80g", "--batch-tokens", "4M", "--top", "3", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    plans = plan.search("llama2-70b", "h100-80g", 64, 4 * 2**20, 4096, virtuals=range(1, 9))
    assert out["batch_tokens"] == 4 * 2**20 and out["seq"] == 4096
    assert out["feasible"] == len(plans) and len(out["layouts"]) == 3
    for got, p in zip(out["layouts"], plans):
        assert (got["tp"], got["pp"], got["dp"], got["zero"], got["recompute"]) == (
            p.layout.dims.tp, p.layout.dims.pp, p.layout.dims.dp, p.layout.zero,
            p.layout.recompute)
        assert got["memory_bytes"] == p.memory_bytes and got["step_time_s"] == p.step_time_s


def test_cli_table(capsys):
    assert cli.main(["plan", "llama-7b", "--gpus", "2", "--gpu", "a100-80g",
                     "--batch-tokens", "32K", "--seq", "2048", "--top", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    best = plan.search("llama-7b", "a100-80g", 2, 32768, 2048, virtuals=range(1, 9))[0]
    assert out[0].startswith("llama-7b on 2 × a100-80g, 32,768 tokens per step (16 × 2048)")
    assert best.layout.label() in out[2] and f"{best.step_time_s:.3f}" in out[2]
    assert len(out) == 5


@pytest.mark.parametrize("args, needle", [
    (["llama-8b", "--gpus", "8", "--gpu", "a100-80g", "--batch-tokens", "4M"],
     "model: unknown model name"),
    (["llama-7b", "--gpus", "8", "--gpu", "v100", "--batch-tokens", "4M"], "gpu must be one of"),
    (["llama-7b", "--gpus", "12", "--gpu", "a100-80g", "--batch-tokens", "4M"],
     "gpus must be a multiple of the 8 GPUs of a node"),
    (["llama-7b", "--gpus", "8", "--gpu", "a100-80g", "--batch-tokens", "4Q"],
     "batch_tokens must be a positive count of tokens like 4M"),
    (["llama-7b", "--gpus", "8", "--gpu", "a100-80g", "--batch-tokens", "1K"],
     "batch_tokens must be a positive multiple of seq=2048"),
    (["llama-7b", "--gpus", "0", "--gpu", "a100-80g", "--batch-tokens", "4M"],
     "argument --gpus: gpus must be a positive integer, got 0"),
    (["llama2-70b", "--gpus", "1", "--gpu", "a100-40g", "--batch-tokens", "4M"],
     "no layout of llama2-70b on 1 a100-40g fits in 40 GiB per GPU"),
    (["llama-7b", "--gpu", "a100-80g", "--batch-tokens", "4M"], "required: --gpus"),
])
def test_cli_bad_input_one_line_exit_2(args, needle, capsys):
    assert cli.main(["plan", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1, captured.err
    assert lines[0].startswith("llmtrain: error:") and needle in lines[0], lines[0]


# --- cost independent of the batch; why no layout (issue 21 §5; newcomer review B35, B41, B74) --

@pytest.mark.parametrize("p", range(1, 9))
@pytest.mark.parametrize("v", [1, 2, 3, 4])
def test_in_flight_of_a_short_schedule_is_the_full_schedules(p, v):
    """The search replays min(m, 2p) micro-batches: the first stage's peak is the same as with
    all m (oracle: pp_schedule.in_flight of the whole schedule)."""
    name = "1f1b" if v == 1 else "interleaved"
    for m in range(p if v > 1 else 1, 6 * p + 1, p if v > 1 else 1):
        full = pp_schedule.in_flight(pp_schedule.schedule(name, p, m, 0, v))
        assert stage.in_flight(p, m, v) == full, (p, m, v)


@pytest.mark.parametrize("n", [1, 2, 12, 64, 97, 1024, 10**6, 2 * 3 * 5 * 7 * 11 * 13])
def test_divisors(n):
    assert plan._divisors(n) == [k for k in range(1, n + 1) if n % k == 0]


def test_huge_batch_takes_as_long_as_a_small_one():
    """10³⁰ tokens per step never ended before (the schedule of every layout was built for all
    its micro-batches); now the same layouts, ranked the same, in seconds."""
    small = plan.search("llama2-70b", "h100-80g", 64, 4 * 2**20, 4096, virtuals=range(1, 9))
    r = subprocess.run([sys.executable, "-m", "llmtrain", "plan", "llama-70b", "--gpus", "64",
                        "--gpu", "h100-80g", "--batch-tokens", str(10**30), "--top", "1",
                        "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["batch_tokens"] == 10**30 and out["feasible"] == len(small)
    assert out["layouts"][0]["microbatches"] == 10**30 // 4096 // out["layouts"][0]["dp"]
    note = r.stderr.strip().splitlines()
    assert len(note) == 1 and "not the total training tokens" in note[0], r.stderr


def test_no_note_for_a_usual_batch(capsys):
    assert cli.main(["plan", "llama-7b", "--gpus", "8", "--gpu", "a100-80g",
                     "--batch-tokens", "4M", "--top", "1"]) == 0
    assert capsys.readouterr().err == ""


def test_too_many_gpus_names_the_sequences_not_memory(capsys):
    assert cli.main(["plan", "llama-70b", "--gpus", "1000000", "--gpu", "h100-80g",
                     "--batch-tokens", "4M"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fits" not in err[0], err
    # 10⁶ GPUs: tp ≤ 8 (kv heads), pp ≤ 80 dividing 10⁶/tp, so dp ≥ 10⁶/(8·50) = 2,500
    assert ("no layout of llama2-70b on 1,000,000 h100-80g: the batch has 1,024 sequences "
            "(4,194,304 tokens / seq 4,096)") in err[0]
    assert "dp = gpus/(tp·pp) is at least 2,500" in err[0]


def test_too_little_memory_says_how_much_the_smallest_needs(capsys):
    assert cli.main(["plan", "llama2-70b", "--gpus", "1", "--gpu", "a100-40g",
                     "--batch-tokens", "4M"]) == 2
    err = capsys.readouterr().err.strip()
    least = min(p.memory_bytes for p in plan.search("llama2-70b", "a100-40g", 1, 4 * 2**20,
                                                     feasible_only=False))
    assert "(the smallest of the " in err and f"needs {least / GIB:.1f} GiB)" in err


# --- issue 22: interleaving searched, --explain, --framework --------------------------------

def test_cli_searches_interleaving_and_explains(capsys):
    assert cli.main(["plan", "llama-70b", "--gpus", "64", "--gpu", "h100-80g",
                     "--batch-tokens", "4M", "--top", "3", "--explain"]) == 0
    out = capsys.readouterr().out.splitlines()
    plans = plan.search("llama2-70b", "h100-80g", 64, 4 * 2**20, 4096, virtuals=range(1, 9))
    assert any(p.layout.virtual > 1 for p in plans)  # interleaving is in the list
    assert out[2].split()[1:3] == plans[0].layout.label().split()[:2]
    why = out.index(f"why #1 ({plans[0].layout.label()}) wins:")
    assert out[why + 1].startswith("  memory per GPU: ") and out[why + 2].startswith("  time per")
    rivals = plan_explain.rivals(plans)
    assert len(out) == why + 3 + len(rivals) + 1
    for (what, q), line in zip(rivals.items(), out[why + 3:]):
        assert line.startswith(f"  best with {what}: {q.layout.label()}, {q.step_time_s:.3f} s")
        assert q.step_time_s >= plans[0].step_time_s


def test_rivals_differ_where_they_say():
    plans = plan.search("llama2-70b", "h100-80g", 64, 4 * 2**20, 4096, virtuals=(1, 2, 4))
    best = plans[0].layout
    for what, q in plan_explain.rivals(plans).items():
        lay = q.layout
        if what.startswith("tp"):
            assert lay.dims.tp != best.dims.tp
        elif what.startswith("pp"):
            assert lay.dims.pp != best.dims.pp
        elif what.startswith("recompute"):
            assert lay.recompute != best.recompute
        # the fastest with that difference: every faster plan has #1's tp, pp and recompute
        faster = plans[1:plans.index(q)]
        key = {"tp": lambda lay: lay.dims.tp, "pp": lambda lay: lay.dims.pp,
               "recompute": lambda lay: lay.recompute}.get(what.split()[0])
        if key:
            assert all(key(p.layout) == key(best) for p in faster), what
    with pytest.raises(ValueError, match="plans must hold at least one plan"):
        plan_explain.explain([])


def test_cli_framework_changes_the_assumptions(capsys):
    args = ["plan", "llama-7b", "--gpus", "8", "--gpu", "a100-80g", "--batch-tokens", "1M",
            "--top", "1", "--json"]
    assert cli.main(args) == 0
    default = json.loads(capsys.readouterr().out)["layouts"][0]
    assert cli.main([*args, "--framework", "megatron-2021"]) == 0
    old = json.loads(capsys.readouterr().out)["layouts"][0]
    # Megatron-LM 2021: full recomputation, no ZeRO, the fused softmax: slower
    assert (old["recompute"], old["zero"]) == ("full", 0) != (default["recompute"],
                                                              default["zero"])
    assert old["step_time_s"] > default["step_time_s"]


@pytest.mark.parametrize("text, virtuals", [("1-4", (1, 2, 3, 4)), ("1,2,8", (1, 2, 8)),
                                            ("3", (3,))])
def test_virtual_flag(text, virtuals):
    assert cli._virtuals(text) == virtuals


@pytest.mark.parametrize("text", ["0", "a", "1-", "2,-1", ""])
def test_virtual_flag_bad(text, capsys):
    assert cli.main(["plan", "llama-7b", "--gpus", "8", "--gpu", "a100-80g",
                     "--batch-tokens", "4M", "--virtual", text]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "virtual must be positive counts like 1,2,4" in err[0], err


def test_search_refuses_moe_and_mla_models_and_the_planner_widget_offers_none():
    """plan.search has no expert parallelism and no MLA step time: a MoE model is refused by name
    (not planned as if every GPU held all experts), and the planner widget lists dense models."""
    from llmtrain.widgets.planner_explorer import dense_names

    for name in ("mixtral-8x7b", "deepseek-v3", "qwen1.5-moe-a2.7b"):
        with pytest.raises(ValueError, match=f"plan searches dense models, '{name}' is MoE"):
            plan.search(name, "h100-80g", 64, 4 * 2**20)
        assert name not in dense_names()
    assert {"llama-7b", "llama3-405b", "bloom-176b"} <= set(dense_names())
