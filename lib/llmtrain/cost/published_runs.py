"""Published 3D-parallel training runs, as data with their sources, and the formulas of their
papers (what ``llmtrain.plan`` is checked against: tests/test_plan.py, notebook 08 §7).

- ``NARAYANAN_TABLE1``: Narayanan et al. 2021 (arXiv 2104.04473), Table 1, with their Eq. 2
  (parameters, ``narayanan_params``) and Eq. 3 (FLOPs with recomputation, ``narayanan_flops``;
  without, ``narayanan_model_flops``);
- ``BLOOM_176B``: the BigScience README's layout and size;
- ``LLAMA3_405B``: the Llama 3 paper's two 405B configurations of Table 4 at 8K context, and
  ``LLAMA3_405B_LONG_CONTEXT`` its third (context parallelism, 128K context); ``DEEPSEEK_V3``
  its layout (PP 16, EP 64, ZeRO-1 DP); ``per_gpu_memory`` what one GPU of each holds;
- ``RUNS``: 69 published runs of 9 sources as ``Run`` records (layout as published, step time
  published or derived in the source's own FLOPs count, ``Run.convention``); ``predict`` the
  planner's plan for one, ``rank`` where its layout stands in the planner's list;
  ``NOT_FITTING`` and ``NOT_AMONG_THE_BEST`` the exceptions, with their reasons. Checked by
  tests/test_published_runs.py; the planner's rates are fitted on them by
  scripts/fit_planner.py.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

from .. import check
from . import flops, memory, plan
from .layout import ParallelDims
from .narayanan import (A100_PEAK_TFLOPS, NARAYANAN_S, NARAYANAN_TABLE1, NARAYANAN_V, NarayananRow,
                        narayanan_flops, narayanan_model_flops, narayanan_params)
from .params import count
from .published_rows import ROWS
from .plan import MI

# Narayanan et al.'s table and equations live in ``narayanan`` (re-exported here).
__all__ = ["NARAYANAN_V", "NARAYANAN_S", "A100_PEAK_TFLOPS", "NarayananRow", "NARAYANAN_TABLE1",
           "narayanan_params", "narayanan_flops", "narayanan_model_flops", "BLOOM_176B", "Run",
           "RUNS", "predict", "rank", "NOT_FITTING", "NOT_AMONG_THE_BEST", "tflops_per_gpu",
           "BLOOM_176B_PARAMS", "LLAMA3_405B", "LLAMA3_405B_LONG_CONTEXT", "DEEPSEEK_V3",
           "MEMORY_ASSUMPTIONS", "per_gpu_memory"]


# BLOOM-176B (bigscience-workshop/bigscience, train/tr11-176B-ml/README.md): 384 A100 80GB
# (48 nodes of 8), TP=4, PP=12, DP=8, MBS=2, GBS=2048 of seq 2048 ("4.2M tokens/step"),
# "ZeRO-1 sharding", activation checkpointing ("hardware TFLOPs ... 4*2"). Its size from the
# README: one layer 12h² + 13h = 2,466,437,120, embedding v·h = 250,880 × 14,336 =
# 3,596,615,680, plus the embedding and final LayerNorms 4h.
BLOOM_176B = dict(model="bloom-176b", gpu="a100-80g", gpus=384, tp=4, pp=12, dp=8, zero=1,
                  recompute="full", micro_batch=2, batch_tokens=2048 * 2048, seq=2048)
_BLOOM_H, _BLOOM_V, _BLOOM_L = 14336, 250880, 70
BLOOM_176B_PARAMS = (_BLOOM_L * (12 * _BLOOM_H**2 + 13 * _BLOOM_H)  # per layer: 12h² + 13h
                     + _BLOOM_V * _BLOOM_H + 4 * _BLOOM_H)  # embedding, two LayerNorms (γ, β)

# Llama 3 405B (arXiv 2407.21783, §3.3.2 and Table 4; version read: v3 of Nov 2024, p. 10): TP 8,
# CP 1, PP 16, seq 8,192, 16M tokens per batch, on 8,192 GPUs (DP 64, 32 seqs per DP group, 430
# TFLOPs/GPU, 43 % BF16 MFU) and 16,384 GPUs (DP 128, 16 seqs, 400 TFLOPs, 41 %). FSDP shards
# optimizer states and gradients, not the weights after forward: ZeRO-2 here. 8K sequences were
# trained without activation checkpointing (§3.3.2); the micro-batch is not stated (1 here).
LLAMA3_405B = (
    dict(model="llama3-405b", gpu="h100-80g", gpus=8192, tp=8, pp=16, dp=64, zero=2,
         recompute="none", micro_batch=1, batch_tokens=16 * MI, seq=8192,
         tflops_per_gpu=430, mfu_percent=43),
    dict(model="llama3-405b", gpu="h100-80g", gpus=16384, tp=8, pp=16, dp=128, zero=2,
         recompute="none", micro_batch=1, batch_tokens=16 * MI, seq=8192,
         tflops_per_gpu=400, mfu_percent=41),
)
# Table 4's third row, the long-context stage: context parallelism CP 16 with seq 131,072 on
# 16,384 GPUs. v3 lists DP 8 (8 · 16 · 16 · 8 = 16,384; some renderings, e.g. an arxiv.org
# HTML transcription, show DP 4, which would make 8,192). Not a planner check (``plan.search``
# keeps cp = 1; notebook 08 §7 prints its product); ``per_gpu_memory`` counts what a GPU holds.
# FSDP as ZeRO-2, as the 8K rows.
LLAMA3_405B_LONG_CONTEXT = dict(model="llama3-405b", gpu="h100-80g", gpus=16384, tp=8, cp=16,
                                pp=16, dp=8, batch_tokens=16 * MI, seq=131072, zero=2)

# DeepSeek-V3 (arXiv 2412.19437, read in full-text transcriptions): 2,048 H800 GPUs (§3.1), "16-way
# Pipeline Parallelism (PP), 64-way Expert Parallelism (EP) spanning 8 nodes, and ZeRO-1 Data
# Parallelism (DP)" (§3.2), no tensor parallelism (§3.2), 4K sequences in pre-training (§4.2).
# dp = 2,048/16 = 128 ranks per stage, experts over ep = 64 of them: edp = 2 copies of each expert.
# Precision (§3.3.3): FP32 master weights and gradients ("used for batch size accumulation"), BF16
# AdamW moments (2 + 2 bytes); the 16-bit working copy of the weights is our assumption (GEMMs run
# in FP8, §3.3.1). Not modelled: DualPipe's two copies of the parameters (§3.2.1, Table 2), its
# PP + 1 micro-batches of activations (1F1B's PP here), the MTP module, FP8 activation caching.
DEEPSEEK_V3 = dict(model="deepseek-v3", gpu="h800", gpus=2048, tp=1, cp=1, pp=16, dp=128, ep=64,
                   zero=1, seq=4096,
                   bytes_per_param={"weights": 2, "gradients": 4, "master": 4, "optimizer": 4})

# What the sources leave open, for ``per_gpu_memory`` (our assumptions, not theirs): one sequence
# per micro-batch; Llama 3: FlashAttention (no scores kept: Korthikanti et al.'s selective count,
# as ``plan`` counts it), sequence parallelism in the TP group, 1F1B with the micro-batches of
# Table 4's "Batch size/DP", and its all-gather CP (§3.3.2: K and V gathered, not passed around a
# ring); DeepSeek-V3: each layer's input only (the slides' count, a lower
# bound: it recomputes only RMSNorm and the MLA up-projections, §3.2.3), the large-m 1F1B count.
MEMORY_ASSUMPTIONS = {
    "llama3-405b": dict(micro_batch=1, impl="korthikanti", recompute="selective", sp=True,
                        cp_method="all-gather"),
    "deepseek-v3": dict(micro_batch=1, impl="textbook", recompute="full", sp=False,
                        cp_method="ring"),
}


def per_gpu_memory(run: dict, **layout):
    """What one GPU of a published layout holds (``memory.Estimate``, the busiest stage): its
    model states (TOTAL parameters of its stage, experts over ep, ZeRO over dp·cp and dp·cp/ep)
    and activations, by ``memory.estimate`` under ``MEMORY_ASSUMPTIONS`` (no framework
    constants, no softmax copy). ``layout``: dp, tp, pp, cp or ep replacing the run's (what if
    Llama 3's 128K ran with cp = 1?). tests/test_memory_5d.py::test_llama3_cp16_fits_128k and
    ::test_deepseek_v3_per_gpu."""
    for k in layout:
        check.one_of("layout key", k, ("dp", "tp", "pp", "cp", "ep"))
    knobs = {k: run.get(k, 1) for k in ("dp", "tp", "pp", "cp", "ep")} | layout
    dims = ParallelDims(**knobs)
    a = MEMORY_ASSUMPTIONS[run["model"]]
    m = run["batch_tokens"] // (run["seq"] * dims.dp * a["micro_batch"]) if "batch_tokens" in run \
        else None
    return memory.estimate(run["model"], dims, a["micro_batch"], run["seq"], zero=run["zero"],
                           recompute=a["recompute"], impl=a["impl"], sp=a["sp"],
                           microbatches=m or None, overheads=False, softmax_extra=False,
                           bytes_per_param=run.get("bytes_per_param"), cp_method=a["cp_method"])


# --- every run as one record, and the planner's prediction of it ------------------------------

class Run(NamedTuple):
    """A published training run: its layout as published (None where the source does not say)
    and its step time, published or derived from its published throughput (``derived``)."""

    key: str
    source: str        # a key of llmtrain.sources
    where: str         # the places read
    published: str     # the published numbers, as words
    model: object      # a ModelShape
    gpu: str           # a plan.CLUSTERS name
    gpus: int
    tp: int | None
    pp: int | None
    dp: int
    batch: int         # global batch, sequences
    seq: int
    zero: int | None   # 1: ZeRO-1 or Megatron's distributed optimizer; None: not published
    framework: str     # a key of plan.FRAMEWORKS
    step_time_s: float
    derived: str       # how step_time_s follows from what was published
    micro_batch: int | None = None
    virtual: int | tuple | None = None  # a tuple: the choices the source leaves open
    sp: bool | None = None
    recompute: str | None = None
    mp: int | None = None  # tp·pp where only the model-parallel size is published
    convention: str = ""   # the flops.CONVENTIONS count its source's throughput and MFU use


def _derive(how, value, shape, batch, seq, gpus) -> tuple[float, str]:
    """(step time in s, how it follows) from what a source published: ``time`` an iteration time;
    ``eq3`` TFLOP/s per GPU in Narayanan et al.'s Eq. 3 (with recomputation); ``model``
    TFLOP/s per GPU in Eq. 3 without it (Megatron-Core r0.8.0's logged count); ``mfu`` an MFU
    of that count against the A100's 312 TFLOP/s (MegaScale); ``palm`` TFLOP/s per GPU in
    PaLM's 6N + 12LHQT (Llama 3: "MFU; Chowdhery et al."); ``tokens`` tokens/s per GPU."""
    h, L, V = shape.hidden_size, shape.num_layers, shape.vocab_size
    if how == "time":
        return value, "published"
    if how == "eq3":
        f = narayanan_flops(batch, L, h, V, seq)
        return f / (gpus * value * 1e12), f"Eq. 3 FLOPs {f:.4g} / ({gpus} GPUs × {value} TFLOP/s)"
    if how in ("model", "mfu"):
        f = narayanan_model_flops(batch, L, h, V, seq)
        rate = value * 1e12 if how == "model" else value * A100_PEAK_TFLOPS * 1e12
        return f / (gpus * rate), f"model FLOPs {f:.4g} / ({gpus} GPUs × {rate / 1e12:.4g} TFLOP/s)"
    if how == "palm":
        f = (6 * count(shape) + 12 * L * shape.q_size * seq) * batch * seq
        return f / (gpus * value * 1e12), f"6N + 12LHQT: {f:.4g} / ({gpus} GPUs × {value} TFLOP/s)"
    assert how == "tokens"
    return batch * seq / (value * gpus), f"{batch * seq:,} tokens / ({gpus} GPUs × {value} tokens/s)"


# The FLOPs count each source quotes its throughput or MFU in (``flops.CONVENTIONS``): Eq. 3
# with recomputation (Narayanan; BLOOM's log, math/README.md), without it (Korthikanti's Eq. 7,
# MegaScale, Megatron-Core r0.8's logged count; dgxc-benchmarking's seq × (attention + MLP +
# 6Vh), which sizes the attention projections as multi-head even for Nemotron's 8 KV groups),
# PaLM's 6N + 12LHQT (Llama 3; llm-foundry's (6N·s + 12·L·d·s²) per sequence), and the
# generalised Narayanan count, 6·(matmul weights) + 12·L·s·h per token (Nemotron-4 15B's 6N +
# 12Lhs with N the non-embedding weights and the output layer, which gives its MFU).
_CONVENTIONS = {"Narayanan et al. 2021": "narayanan", "BLOOM-176B README": "narayanan",
                "Korthikanti et al. 2023": "narayanan-model", "MegaScale": "narayanan-model",
                "Megatron-LM README (2024)": "narayanan-model", "Llama 3": "palm",
                "llm-foundry benchmarks": "palm", "Nemotron-4 15B": "megatron-generalised",
                "NVIDIA dgxc-benchmarking": "narayanan-model"}


def _run(key, source, where, published, shape, gpu, gpus, tp, pp, dp, batch, seq, zero, framework,
         derive, knobs) -> Run:
    step, derived = _derive(*derive, shape, batch, seq, gpus)
    return Run(key, source, where, published, shape, gpu, gpus, tp, pp, dp, batch, seq, zero,
               framework, step, derived, **knobs, convention=_CONVENTIONS[source])


def tflops_per_gpu(run: Run, step_time_s: float) -> float:
    """TFLOP/s per GPU of a step of ``step_time_s`` in the count the run's source uses.

    Checked: tests/test_published_runs.py::test_each_source_convention_gives_its_mfu."""
    f = flops.convention_flops(run.model, run.batch, run.seq, run.convention)
    return f / (step_time_s * run.gpus) / 1e12


RUNS: tuple[Run, ...] = tuple(_run(*r) for r in ROWS)


def _choices(run: Run, shape) -> list[dict]:
    """The layouts the run may have used: its published knobs, every choice of the others."""
    opts = plan.FRAMEWORK_OPTIONS[run.framework]
    if run.tp:
        splits = [(run.tp, run.pp)]
    else:  # only tp·pp = mp published
        splits = [(t, run.mp // t) for t in (1, 2, 4, 8) if run.mp % t == 0
                  and shape.num_heads % t == 0 and run.mp // t <= shape.num_layers]
    out = []
    for tp, pp in splits:
        m_seqs = run.batch // run.dp
        bs = ([run.micro_batch] if run.micro_batch else
              [b for b in (1, 2, 4, 8) if m_seqs % b == 0])
        layers = math.ceil(shape.num_layers / pp)
        vs = ([run.virtual] if isinstance(run.virtual, int) else
              [v for v in (run.virtual or range(1, layers + 1))
               if v == 1 or (pp > 1 and layers % v == 0)])
        sps = ([run.sp] if run.sp is not None else
               [x for x in opts["sps"] if tp > 1 or not x])
        rs = [run.recompute] if run.recompute else list(opts["recomputes"])
        zs = [run.zero] if run.zero is not None else list(opts["zeros"])
        for b, v, sp, r, z in itertools.product(bs, vs, sps, rs, zs):
            if v > 1 and (m_seqs // b) % pp:
                continue
            out.append(dict(tp=tp, pp=pp, micro_batch=b, virtual=v, sp=sp, recompute=r, zero=z))
    return out


def predict(run: Run, assumptions=None):
    """The planner's plan for the run's published layout: where the source leaves a knob open
    (micro-batch, interleaving, sequence parallelism, recomputation, ZeRO stage, the split of
    tp·pp), the fastest choice that fits (the fastest of all if none fits). Returns (plan, how
    many choices were open). Checked: tests/test_published_runs.py::test_step_time_within_15_percent
    and tests/test_published_runs.py::test_published_knobs_are_kept."""
    a = assumptions or plan.framework_assumptions(run.framework)
    shape = run.model
    plans = []
    for c in _choices(run, shape):
        lay = plan.layout(shape, run.gpus, run.batch * run.seq, run.seq, **c)
        plans.append(plan.evaluate(shape, run.gpu, lay, run.seq, a))
    fit = [p for p in plans if p.fits] or plans
    return min(fit, key=lambda p: (p.step_time_s, p.memory_bytes)), len(plans)


def rank(run: Run, assumptions=None, predicted=None):
    """Where the published layout stands among every layout the run's framework could have
    used on the same GPUs, batch and sequence (``plan.FRAMEWORK_OPTIONS``), with its published
    recomputation and sequence parallelism: (its rank among those that fit, how many fit, its
    step time over the fastest's, the fastest plan).

    Checked: tests/test_published_runs.py::test_published_layout_is_among_the_best."""
    a = assumptions or plan.framework_assumptions(run.framework)
    mine = predicted or predict(run, a)[0]
    opts = plan.FRAMEWORK_OPTIONS[run.framework]
    # the methods a run chose as its experiment (recomputation, sequence parallelism) stay as
    # published; the layout (tp, pp, dp, micro-batch, interleaving, ZeRO stage) is searched
    plans = plan.search(run.model, run.gpu, run.gpus, run.batch * run.seq, run.seq,
                        zeros=opts["zeros"], virtuals=opts["virtuals"], stages=opts["stages"],
                        recomputes=(run.recompute,) if run.recompute else opts["recomputes"],
                        sps=(run.sp,) if run.sp is not None else opts["sps"],
                        tps=opts.get("tps"), pps=opts.get("pps"),
                        micro_batches=tuple(sorted({1, 2, 4, 8, 16, mine.layout.micro_batch})),
                        assumptions=a)
    if not plans:
        return None, 0, None, None
    return (plan.rank_of(plans, mine), len(plans), mine.step_time_s / plans[0].step_time_s,
            plans[0])


# Where the check does not hold, and why (notebook 08 §7 shows each).
NOT_FITTING = {
    "llama3-405b-t4-8192gpu-cp1":
        "no recomputation with interleaving holds p + (p − 1)/v micro-batches on a stage by "
        "the standard schedule (notebook 08 §7.5 prints it); Llama 3 says its own schedule, with a "
        "tunable number of micro-batches per round (§3.3.2), fits 8K sequences without "
        "activation checkpointing, but publishes neither that number nor its memory",
}
NOT_AMONG_THE_BEST = {
    **{k: "a miss of the planner: Narayanan et al. 2021 recommend, from their experiments "
          "(§3), tensor parallelism up to the GPUs of a node; the planner prefers less of it "
          "and a deeper, interleaved pipeline, so it likely underprices the pipeline (its "
          "flushes, its many small p2p messages) or overprices TP = 8"
       for k in ("narayanan-t1-18.4b", "narayanan-t1-39.1b", "narayanan-t1-145.6b",
                 "narayanan-t2-ptd-174.6b-384gpu")},
    **{k: "the experiment fixes t = 8 for every model (Korthikanti et al. 2023, §6: tensor "
          "parallelism with sequence parallelism and selective recomputation is what it "
          "measures); the planner would pipeline instead"
       for k in ("korthikanti-22b-sp-selective", "korthikanti-22b-full-recompute",
                 "korthikanti-175b-full-recompute")},
    **{k: "llm-foundry ran FSDP's FULL_SHARD (ZeRO-3) for every model; the planner leaves "
          "part of FULL_SHARD's extra weight all-gathers exposed at 7B on H100 and prefers "
          "SHARD_GRAD_OP (ZeRO-2); it also predicts these runs slow, so it likely "
          "overcharges those gathers"
       for k in ("mpt-7b-h100-128gpu", "mpt-7b-h100-512gpu")},
}
