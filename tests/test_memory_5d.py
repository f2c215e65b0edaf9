"""Memory beyond 3D: context parallelism (cp) and expert parallelism (ep) in ``memory.estimate``,
and what one GPU of Llama 3 405B's and DeepSeek-V3's published layouts holds.

Oracles: the 3D estimates as they were before cp and ep (numbers printed by the code of
commit e919c9e), closed forms written out term by term below, ``params.count`` (itself equal
to transformers' models on the meta device) and the published layouts' own numbers.
"""

import math

import pytest
from hypothesis import given, settings, strategies as st

from llmtrain.cost import activations as af
from llmtrain.cost import experts, memory, params, plan, states
from llmtrain.cost import published_runs as pr
from llmtrain.cost.layout import ParallelDims
from llmtrain.model import shapes

DSV3 = shapes.resolve("deepseek-v3")
L405 = shapes.resolve("llama3-405b")


# --- cp = ep = 1: the 3D estimate, unchanged -------------------------------------------------

@pytest.mark.parametrize("name, dims, kw, parts, peak", [
    ("llama-7b", ParallelDims(dp=8), dict(zero=3),
     {'model states': 13476831232, 'activations': 1598029824, 'softmax extra': 1048576000,
      'framework': 1073741824, 'ZeRO runtime': 4294967296, 'fragmentation': 1073741824},
     21734994316),
    ("llama2-70b", ParallelDims(dp=4, tp=4, pp=4),
     dict(zero=1, impl="korthikanti", recompute="selective", sp=True, microbatches=8),
     {'model states': 30408433664, 'activations': 5868879872,
      'in-flight activations': 17112760320, 'softmax extra': 262144000,
      'framework': 1073741824, 'ZeRO runtime': 4294967296, 'fragmentation': 1073741824},
     79998137050),
    ("llama3-8b", ParallelDims(dp=2, tp=2, pp=2),
     dict(zero=1, framework="megatron", impl="korthikanti", recompute="none"),
     {'model states': 24091607040, 'activations': 17727225856,
      'in-flight activations': 16642998272, 'framework': 1073741824,
      'fragmentation': 1073741824}, None)])
def test_cp_and_ep_of_one_give_the_3d_estimate(name, dims, kw, parts, peak):
    """The numbers the 3D code (commit e919c9e) printed for these layouts, to the byte."""
    for d in (dims, ParallelDims(dp=dims.dp, tp=dims.tp, pp=dims.pp, cp=1, ep=1)):
        est = memory.estimate(name, d, 2, 2048, **kw)
        assert est.parts == parts and est.peak_bytes == peak


# --- cp: every rank holds seq/cp of each sequence ---------------------------------------------

@pytest.mark.parametrize("cp", [1, 2, 4, 16])
def test_cp_divides_activations_as_stated(cp):
    """Oracle: each formula written out at s/cp (the scores: s/cp queries × s keys)."""
    shape, B, s, t = shapes.get("llama2-70b"), 2, 4096, 4
    a, h, L, V = shape.num_heads, shape.hidden_size, shape.num_layers, shape.vocab_size
    sl = s // cp
    assert memory.activation_bytes(shape, B, s, cp=cp, tp=t) == L * 2 * B * sl * h + 4 * B * sl * V // t
    assert memory.activation_bytes(shape, B, s, cp=cp, tp=t, sp=True) == \
        memory.activation_bytes(shape, B, sl, tp=t, sp=True)
    for rec in ("full", "selective"):  # no s² term: exactly the count at s/cp
        assert af.korthikanti_bytes(shape, B, s, recompute=rec, tp=t, cp=cp) == \
            af.korthikanti_bytes(shape, B, sl, recompute=rec, tp=t)
    sbh = sl * B * h
    none = L * (sbh * (10 + 24 / t) + 5 * a * sl * s * B / t) + 4 * sbh * (1 + V / h) / t
    assert af.korthikanti_bytes(shape, B, s, recompute="none", tp=t, cp=cp) == round(none)


def test_cp_reference_is_context_parallels_measured_count():
    """impl='reference' with cp > 1: the bytes ``parallel.context_parallel``'s ranks save
    (``context.cp_saved_bytes``, measured in tests/test_context_parallel.py)."""
    from llmtrain.cost import context
    for cp in (2, 4):
        assert memory.activation_bytes("tiny", 2, 64, cp=cp, impl="reference", dtype="fp32") == \
            context.cp_saved_bytes("tiny", 2, 64, cp, dtype="fp32")


def test_cp_adds_the_next_kv_block_and_shards_zero_over_dp_cp():
    """cp ranks hold the same weights: ZeRO-3 over dp = 2, cp = 4 is ZeRO-3 over 8 ranks; the
    activations are those of seq/cp; "ring K/V in flight" = 2·b·B·(s/cp)·kv/tp."""
    shape, s = shapes.get("llama3-8b"), 8192
    kw = dict(zero=3, impl="korthikanti", recompute="selective", overheads=False)
    cp = memory.estimate(shape, ParallelDims(dp=2, tp=2, cp=4), 1, s, **kw)
    flat = memory.estimate(shape, ParallelDims(dp=8, tp=2), 1, s // 4, **kw)
    assert cp.details["model states"] == flat.details["model states"]
    assert cp.parts["activations"] == flat.parts["activations"]
    assert cp.parts["softmax extra"] == flat.parts["softmax extra"]
    assert cp.parts["ring K/V in flight"] == 2 * 2 * 1 * (s // 4) * shape.kv_size // 2 == 4194304
    assert cp.step_peak is None and flat.step_peak is not None  # not modelled phase by phase
    assert states.zero_groups(ParallelDims(dp=2, tp=2, cp=4)) == (8, 8)


# --- ep: a MoE shape's routed experts over ep ranks --------------------------------------------

@pytest.mark.parametrize("name", ["deepseek-v3", "mixtral-8x7b", "qwen1.5-moe-a2.7b",
                                  "llama3-405b", "tiny"])
@pytest.mark.parametrize("pp", [1, 2, 16])
def test_stages_add_up_to_the_count(name, pp):
    """Σ over the pipeline stages (ep = 1) = params.count (a tied embedding's copy on the last
    stage aside): every parameter is placed once."""
    shape = shapes.resolve(name)
    if pp > shape.num_layers:
        pp = shape.num_layers
    held = [experts.stage_params(shape, pp, s) for s in range(pp)]
    copy = params.breakdown(shape)["embedding"] if shape.tie_embeddings and pp > 1 else 0
    assert sum(h["non-expert"] + h["experts"] for h in held) == params.count(shape) + copy
    if not shape.is_moe:  # the dense count of the 3D code, stage by stage
        assert [h["non-expert"] for h in held] == [
            states.params_per_gpu(shape, ParallelDims(pp=pp), s) for s in range(pp)]


@pytest.mark.parametrize("ep", [1, 2, 8, 64, 256])
def test_ep_divides_the_experts(ep):
    """DeepSeek-V3's middle stage (4 MoE layers): E/ep of each layer's 256 routed experts of
    3·7168·2048 parameters; attention, norms, router and shared expert stay whole."""
    mid = experts.stage_params(DSV3, 16, 5, ep)
    assert mid["experts"] == 4 * (256 // ep) * 3 * 7168 * 2048
    assert mid["non-expert"] == experts.stage_params(DSV3, 16, 5)["non-expert"]
    d = ParallelDims(dp=256, pp=16, ep=ep)
    assert states.held_params(DSV3, d, rank=5 * 256 + 3) == mid  # a rank of stage 5
    assert states.zero_groups(d) == (256, 256 // ep)
    st = states.model_state_bytes(DSV3, dims=d, zero=1)  # mixed AdamW: 2 + 2 + 4 + 8
    busiest = states.held_params(DSV3, d)
    ne, ex = busiest["non-expert"], busiest["experts"]
    assert st == {"weights": 2 * (ne + ex), "gradients": 2 * (ne + ex),
                  "master": math.ceil(4 * ne / 256) + math.ceil(4 * ex / (256 // ep)),
                  "optimizer": math.ceil(8 * ne / 256) + math.ceil(8 * ex / (256 // ep))}


@pytest.mark.parametrize("moe", [
    dict(num_experts=8, experts_per_token=2, moe_intermediate_size=32),
    dict(num_experts=8, experts_per_token=2, moe_intermediate_size=32, shared_expert_size=48,
         first_dense_layers=1),
    dict(num_experts=4, experts_per_token=1, moe_intermediate_size=16, shared_expert_size=32,
         shared_expert_gate=True)])
@pytest.mark.parametrize("ep", [1, 2, 4])
def test_held_params_are_the_moe_llamas(moe, ep):
    """Oracle: the real ``model.moe.MoELlama`` (meta device): its routed-expert parameters
    (``expert_parallel.expert_parameter``, what ``expert_parallel.shard`` splits over ep) and
    all the others, which every ep rank keeps."""
    import torch

    from llmtrain.model.moe import MoELlama
    from llmtrain.parallel.expert_parallel import expert_parameter
    shape = shapes.get("tiny").replace(num_layers=3, **moe)
    with torch.device("meta"):
        model = MoELlama(shape)
    routed = sum(p.numel() for n, p in model.named_parameters() if expert_parameter(n))
    rest = sum(p.numel() for n, p in model.named_parameters() if not expert_parameter(n))
    assert states.held_params(shape, ParallelDims(dp=4, ep=ep)) == {
        "non-expert": rest, "experts": routed // ep}


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.sampled_from([1, 2, 4, 8]), st.sampled_from([1, 2, 4]),
       st.integers(1, 4), st.sampled_from([0, 1, 2, 3]), st.integers(0, 2))
def test_every_expert_parameter_is_held_dp_cp_over_ep_times(layers, E, ep, cp, zero, dense):
    """Over all ranks of a layout, each routed-expert parameter sits on dp·cp/ep GPUs (its edp
    copies times cp) and each non-expert one on dp·cp; ZeRO splits each over exactly those."""
    if E % ep or dense > layers:
        return
    shape = shapes.get("tiny").replace(num_layers=layers, num_experts=E, experts_per_token=1,
                                       moe_intermediate_size=8, first_dense_layers=dense)
    pp = min(layers, 2)
    d = ParallelDims(dp=4, pp=pp, cp=cp, ep=ep)
    held = [states.held_params(shape, d, r) for r in range(d.world_size)]
    p = experts.layer_params(shape)
    assert sum(h["experts"] for h in held) == shape.moe_layers * p["routed experts"] * 4 * cp // ep
    assert sum(h["non-expert"] for h in held) == 4 * cp * (params.count(shape) - shape.moe_layers
                                                          * p["routed experts"])
    st_ = states.model_state_bytes(shape, dims=d, zero=zero, rank=0)
    h0, (g_dense, g_exp) = held[0], states.zero_groups(d)
    assert (g_dense, g_exp) == (4 * cp, 4 * cp // ep)
    shard = zero >= 1
    assert st_["optimizer"] == (math.ceil(8 * h0["non-expert"] / g_dense) if shard else
                                8 * h0["non-expert"]) + (math.ceil(8 * h0["experts"] / g_exp)
                                                         if shard else 8 * h0["experts"])


# --- the published layouts ----------------------------------------------------------------------

def test_llama3_cp16_fits_128k():
    """Table 4: 8K on TP 8, PP 16, DP 128; 128K on TP 8, CP 16, PP 16, DP 8 (16,384 GPUs each).
    Oracle, per GPU of the first stage: P = 3,450,617,856 parameters (TP 8 × PP 16), ZeRO-2
    over dp·cp = 128; Korthikanti's selective count with SP, 8 layers: 34·sbh/t each, plus the
    output layer 4sbh(1 + v/h)/t, at s = 8,192 tokens per rank in both stages; 16 in flight."""
    P = states.params_per_gpu(L405, ParallelDims(tp=8, pp=16))
    assert P == 3_450_617_856
    s, h, v, t = 8192, 16384, 128256, 8
    act = 8 * 34 * s * h // t + 4 * s * (h + v) // t
    short, long_ = pr.per_gpu_memory(pr.LLAMA3_405B[1]), pr.per_gpu_memory(pr.LLAMA3_405B_LONG_CONTEXT)
    for est in (short, long_):
        assert est.details["model states"] == {"weights": 2 * P, "gradients": 2 * P // 128,
                                               "master": 4 * P // 128, "optimizer": 8 * P // 128}
        assert est.parts["activations"] == act == 5_155_848_192
        assert est.parts["in-flight activations"] == 15 * 8 * 34 * s * h // t
        assert est.details["in_flight"] == 16  # 16 sequences per DP group, 1F1B on 16 stages
    # Llama 3's CP all-gathers K and V (§3.3.2): the whole 128K sequence's, while a layer attends
    assert long_.parts["gathered K/V"] == 2 * 2 * 131072 * 1024 // t == 67_108_864
    card = plan.cluster("h100-80g").memory_bytes
    assert long_.total == 80_885_536_512 + 67_108_864 <= card == 80 * 2**30
    no_cp = pr.per_gpu_memory(pr.LLAMA3_405B_LONG_CONTEXT, cp=1)  # 128K on one rank
    # one 128K micro-batch alone: 16× the 8K one (the scores are not kept: no s² term)
    assert no_cp.parts["activations"] == 82_493_571_072 == 16 * act
    assert no_cp.parts["model states"] + no_cp.parts["activations"] > card
    assert no_cp.total > 13 * card  # with the 15 others in flight


def test_deepseek_v3_per_gpu():
    """§3.2: PP 16, EP 64, ZeRO-1 DP over 2,048 GPUs (dp = 128, edp = 2); §3.3.3: FP32 master
    weights and gradients, BF16 moments. Oracle for the first stage (3 dense layers, 1 MoE
    layer, the embedding): parameters from the config, then bytes per state."""
    r = pr.DEEPSEEK_V3
    assert r["pp"] * r["dp"] == r["gpus"] == 2048 and r["dp"] % r["ep"] == 0
    attn_norms = 187_121_664  # MLA attention and the layer's norms
    ne = 4 * attn_norms + 3 * 3 * 7168 * 18432 + 45_875_200 + 129280 * 7168
    ex = 256 * 3 * 7168 * 2048 // 64
    assert experts.layer_params(DSV3)["attention and norms"] == attn_norms
    assert experts.layer_params(DSV3)["MoE block, non-expert"] == 45_875_200  # router + shared
    est = pr.per_gpu_memory(r)
    assert est.details["model states"] == {
        "weights": 2 * (ne + ex), "gradients": 4 * (ne + ex),
        "master": 4 * ne // 128 + 4 * ex // 2, "optimizer": 4 * ne // 128 + 4 * ex // 2}
    assert est.details["model states"]["gradients"] == 12_345_147_392
    assert est.parts["activations"] == 4 * 2 * 4096 * 7168 + 4 * 4096 * 129280 == 2_353_004_544
    assert est.parts["in-flight activations"] == 15 * 4 * 2 * 4096 * 7168
    assert est.total == 25_280_466_944
    one = pr.per_gpu_memory(r, ep=1)  # all 256 experts: a middle stage (4 MoE layers) is busiest
    mid = 4 * (attn_norms + 45_875_200 + 256 * 3 * 7168 * 2048)
    assert one.details["model states"]["weights"] == 2 * mid == 92_058_288_128


# --- bad arguments name themselves -------------------------------------------------------------

def test_bad_cp_and_ep_are_named():
    with pytest.raises(ValueError, match="cp must divide seq=100"):
        memory.estimate("tiny", ParallelDims(cp=3), 1, 100)
    with pytest.raises(ValueError, match="cp must be a positive integer"):
        memory.activation_bytes("tiny", 1, 64, cp=0)
    with pytest.raises(ValueError, match="cp > 1 is counted by impl='textbook', 'korthikanti'"):
        memory.activation_bytes("tiny", 1, 64, cp=2, impl="hf-sdpa")
    with pytest.raises(ValueError, match="impl='reference' with cp > 1 is counted for"):
        memory.activation_bytes("tiny", 1, 64, cp=2, impl="reference", recompute="full")
    with pytest.raises(ValueError, match="ep must divide dp=4"):
        ParallelDims(dp=4, ep=3)
    with pytest.raises(ValueError, match="ep=2 shards experts: the model has none"):
        memory.estimate("tiny", ParallelDims(dp=2, ep=2), 1, 64)
    with pytest.raises(ValueError, match="ep must divide num_experts=256"):
        experts.stage_params(DSV3, 16, 0, ep=3)
    with pytest.raises(ValueError, match="tp must be 1 for a MoE shape"):
        states.held_params(DSV3, ParallelDims(dp=2, tp=2))
    with pytest.raises(ValueError, match="needs impl='textbook'"):
        memory.estimate(DSV3, ParallelDims(dp=64, pp=16, ep=64), 1, 4096, impl="korthikanti",
                        recompute="selective")
    with pytest.raises(ValueError, match="bytes_per_param must be a dict with the keys"):
        memory.estimate("tiny", 1, 1, 64, bytes_per_param={"weights": 2})
    with pytest.raises(ValueError, match=r"bytes_per_param\['master'\] must be a finite number"):
        memory.estimate("tiny", 1, 1, 64, bytes_per_param=dict(
            weights=2, gradients=4, master=-1, optimizer=4))
    with pytest.raises(ValueError, match="cp_method must be one of"):
        memory.estimate("tiny", ParallelDims(cp=2), 1, 64, cp_method="ulysses")
    with pytest.raises(ValueError, match="layout key must be one of"):
        pr.per_gpu_memory(pr.DEEPSEEK_V3, zero=3)


# --- the command line ------------------------------------------------------------------------

def test_cli_memory_takes_cp_and_ep(capsys):
    """--cp and --ep reach memory.estimate: the JSON equals the estimate of the same layout."""
    import json

    from llmtrain import cli
    argv = ["memory", "deepseek-v3", "--gpus", "2048", "--pp", "16", "--ep", "64", "--zero", "1",
            "--seq", "4096", "--no-overheads", "--json"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    est = memory.estimate(DSV3, ParallelDims(dp=128, pp=16, ep=64), 1, 4096, zero=1,
                          overheads=False)
    assert out["parts"] == est.parts and (out["dp"], out["cp"], out["ep"]) == (128, 1, 64)
    assert cli.main(["memory", "llama3-8b", "--gpus", "8", "--cp", "4", "--seq", "8192",
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["parts"]["ring K/V in flight"] == 2 * 2 * 2048 * 1024 and out["dp"] == 2
    assert cli.main(["memory", "llama3-8b", "--gpus", "8", "--cp", "4", "--seq", "8192",
                     "--cp-method", "all-gather", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parts"]["gathered K/V"] == 2 * 2 * 8192 * 1024


@pytest.mark.parametrize("argv, message", [
    (["deepseek-v3", "--gpus", "2048", "--pp", "16", "--ep", "3"],
     "--ep must divide dp = gpus/(tp·cp·pp) = 128, got --ep 3"),
    (["llama3-8b", "--gpus", "4", "--cp", "3", "--seq", "100"],
     "--cp must divide the sequence length 100 (--seq), got --cp 3"),
    (["llama3-8b", "--cp", "0"], "argument --cp: cp must be a positive integer, got 0"),
    (["llama3-8b", "--ep", "x"], "argument --ep: ep must be a positive integer"),
    (["llama3-8b", "--gpus", "6", "--cp", "4"], "gpus must be a multiple of tp·cp·pp=4, got 6"),
])
def test_cli_bad_cp_and_ep_are_one_line_exit_2(capsys, argv, message):
    from llmtrain import cli
    assert cli.main(["memory", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


# --- the planner with cp ------------------------------------------------------------------------

def test_plan_with_cp_is_the_estimate_and_a_cp_share_of_the_work():
    """plan.memory_parts with cp = memory.estimate's parts; each cp rank computes 1/cp of a
    micro-batch (the cp = 1 layout's compute / cp, exact: cp is a power of 2); with tp = pp = 1
    the comm part is ring attention's bytes (context.sent_per_layer × L) on the cp group's link."""
    from llmtrain.cost import context, stage, step_time
    shape, seq, a = shapes.get("llama3-8b"), 8192, plan.Assumptions()
    for cp in (2, 4):
        lay = plan.layout(shape, 8 * cp, 64 * seq, seq, tp=2, pp=2, cp=cp, zero=1)
        assert lay.dims == ParallelDims(dp=2, tp=2, pp=2, cp=cp) and "cp" in lay.label()
        est = memory.estimate(shape, lay.dims, 1, seq, zero=1, recompute="selective",
                              impl="korthikanti", microbatches=lay.microbatches)
        assert plan.memory_parts(shape, lay, seq, a) == est.parts
        one = plan.evaluate(shape, "h100-80g", plan.layout(shape, 8, 64 * seq, seq, tp=2, pp=2,
                                                           zero=1), seq)
        mine = plan.evaluate(shape, "h100-80g", lay, seq)
        assert mine.time_parts["compute"] == one.time_parts["compute"] / cp
        assert mine.gpus == 8 * cp and mine.tokens == one.tokens
    lay = plan.layout(shape, 4, 4 * seq, seq, cp=4, zero=0)  # dp = 1, tp = pp = 1: CP comm only
    p, c = plan.evaluate(shape, "h100-80g", lay, seq), plan.cluster("h100-80g")
    per = context.sent_per_layer(shape, 1, seq, 4)
    sent = shape.num_layers * (per["forward"] + per["backward"])
    link = stage.link_bandwidth(c, 4, a.kernels_of(c))
    assert p.time_parts["TP + CP comm"] == lay.microbatches * step_time.link_seconds(sent, *link)


def test_plan_refuses_ep_and_bad_cp():
    shape = shapes.get("llama3-8b")
    with pytest.raises(ValueError, match="ep must be 1: the planner has no expert parallelism"):
        plan.layout(shape, 8, 8 * 4096, 4096, ep=2)
    with pytest.raises(ValueError, match="cp must divide seq=4100"):
        plan.layout(shape, 8, 8 * 4100, 4100, cp=8)
    lay = plan.layout(shape, 8, 8 * 4096, 4096, cp=2, recompute="none")
    with pytest.raises(ValueError, match="cp > 1 is planned with attention_kernel='flash'"):
        plan.memory_parts(shape, lay, 4096, plan.Assumptions(attention_kernel="materialized"))
