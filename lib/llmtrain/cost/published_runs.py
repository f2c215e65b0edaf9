"""Published 3D-parallel training runs, as data with their sources, and the formulas of their
papers (what ``llmtrain.plan`` is checked against: tests/test_plan.py, notebook 08 §7).

- ``NARAYANAN_TABLE1``: Narayanan et al. 2021 (arXiv 2104.04473), Table 1, with their Eq. 2
  (parameters, ``narayanan_params``) and Eq. 3 (FLOPs with recomputation, ``narayanan_flops``;
  without, ``narayanan_model_flops``);
- ``BLOOM_176B``: the BigScience README's layout and size;
- ``LLAMA3_405B``: the Llama 3 paper's two 405B configurations of Table 4 at 8K context, and
  ``LLAMA3_405B_LONG_CONTEXT`` its third (context parallelism, 128K context);
- ``RUNS``: 69 published runs of 9 sources as ``Run`` records (layout as published, step time
  published or derived in the source's own FLOPs count, ``Run.convention``); ``predict`` the
  planner's plan for one, ``rank`` where its layout stands in the planner's list;
  ``NOT_FITTING`` and ``NOT_AMONG_THE_BEST`` the exceptions, with their reasons. Checked by
  tests/test_published_runs.py; the planner's rates are fitted on them by
  scripts/fit_planner.py.
"""

from __future__ import annotations

from typing import NamedTuple

from .plan import MI, MODELS

__all__ = ["NARAYANAN_V", "NARAYANAN_S", "A100_PEAK_TFLOPS", "NarayananRow", "NARAYANAN_TABLE1",
           "narayanan_params", "narayanan_flops", "narayanan_model_flops", "BLOOM_176B", "Run",
           "RUNS", "predict", "rank", "NOT_FITTING", "NOT_AMONG_THE_BEST", "tflops_per_gpu",
           "BLOOM_176B_PARAMS", "LLAMA3_405B", "LLAMA3_405B_LONG_CONTEXT"]


class NarayananRow(NamedTuple):
    params_b: float  # "Number of parameters (billion)"
    heads: int
    hidden: int
    layers: int
    tp: int
    pp: int
    gpus: int
    batch: int
    tflops_per_gpu: int  # "Achieved teraFLOP/s per GPU"
    percent_of_peak: int
    aggregate_pflops: float


# Narayanan et al. 2021, arXiv 2104.04473, Table 1 (GPT, V = 51,200, s = 2,048, A100 peak 312
# TFLOP/s). Read in three public transcriptions of the paper's table (GitHub notes found by the
# code search, ids 66890646596, 66766946069 and 55320678230: all ten rows agree), and checked
# against a full-text transcription (shared/reviews/chapter-review.md, finding A3). Each row is
# checked against the paper's own equations (Eq. 2 parameters, TFLOP/s / 312, TFLOP/s × GPUs):
# tests/test_plan.py.
NARAYANAN_TABLE1 = tuple(NarayananRow(*r) for r in [
    (1.7, 24, 2304, 24, 1, 1, 32, 512, 137, 44, 4.4),
    (3.6, 32, 3072, 30, 2, 1, 64, 512, 138, 44, 8.8),
    (7.5, 32, 4096, 36, 4, 1, 128, 512, 142, 46, 18.2),
    (18.4, 48, 6144, 40, 8, 1, 256, 1024, 135, 43, 34.6),
    (39.1, 64, 8192, 48, 8, 2, 512, 1536, 138, 44, 70.8),
    (76.1, 80, 10240, 60, 8, 4, 1024, 1792, 140, 45, 143.8),
    (145.6, 96, 12288, 80, 8, 8, 1536, 2304, 148, 47, 227.1),
    (310.1, 128, 16384, 96, 8, 16, 1920, 2160, 155, 50, 297.4),
    (529.6, 128, 20480, 105, 8, 35, 2520, 2520, 163, 52, 410.2),
    (1008.0, 160, 25600, 128, 8, 64, 3072, 3072, 163, 52, 502.0),
])
NARAYANAN_V, NARAYANAN_S, A100_PEAK_TFLOPS = 51200, 2048, 312


def narayanan_params(l: int, h: int, V: int = NARAYANAN_V, s: int = NARAYANAN_S) -> int:
    """Their Eq. 2: P = 12lh²(1 + 13/(12h) + (V + s)/(12lh)) = 12lh² + 13lh + (V + s)h."""
    return 12 * l * h * h + 13 * l * h + (V + s) * h


def narayanan_flops(B: int, l: int, h: int, V: int = NARAYANAN_V, s: int = NARAYANAN_S) -> int:
    """Their Eq. 3, FLOPs per iteration with activation recomputation (4 forward passes of
    the layers): F = 96Bslh²(1 + s/(6h) + V/(16lh)) = 96Bslh² + 16Bs²lh + 6BshV."""
    return 96 * B * s * l * h * h + 16 * B * s * s * l * h + 6 * B * s * h * V


def narayanan_model_flops(B: int, l: int, h: int, V: int = NARAYANAN_V,
                          s: int = NARAYANAN_S) -> int:
    """Eq. 3 without the recomputed forward (3 passes of the layers; the output layer is never
    recomputed): 72Bslh² + 12Bs²lh + 6BshV, a little over 3/4 of Eq. 3."""
    return 72 * B * s * l * h * h + 12 * B * s * s * l * h + 6 * B * s * h * V


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
# HTML transcription, show DP 4, which would make 8,192). ``llmtrain.plan`` has no context parallelism, so this row
# is data only (notebook 08 §7 prints its product), not a planner check.
LLAMA3_405B_LONG_CONTEXT = dict(model="llama3-405b", gpu="h100-80g", gpus=16384, tp=8, cp=16,
                                pp=16, dp=8, batch_tokens=16 * MI, seq=131072)


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


def _gpt(h, L, a, V, s, name, kv=None, bias=True, tie=True):
    from .plan import gpt_shape

    return gpt_shape(h, L, a, V, s, name=name, kv_heads=kv, biases=bias, tie_embeddings=tie)


def _derive(how, value, shape, batch, seq, gpus) -> tuple[float, str]:
    """(step time in s, how it follows) from what a source published: ``time`` an iteration time;
    ``eq3`` TFLOP/s per GPU in Narayanan et al.'s Eq. 3 (with recomputation); ``model``
    TFLOP/s per GPU in Eq. 3 without it (Megatron-Core r0.8.0's logged count); ``mfu`` an MFU
    of that count against the A100's 312 TFLOP/s (MegaScale); ``palm`` TFLOP/s per GPU in
    PaLM's 6N + 12LHQT (Llama 3: "MFU; Chowdhery et al."); ``tokens`` tokens/s per GPU."""
    from .params import count

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
    """TFLOP/s per GPU of a step of ``step_time_s`` in the count the run's source uses."""
    from . import flops

    f = flops.convention_flops(run.model, run.batch, run.seq, run.convention)
    return f / (step_time_s * run.gpus) / 1e12


# The runs the planner is checked against. Kept out (why, in notebook 08 §7): context-parallel
# rows (Llama 3 Table 4's third, dgxc-benchmarking's Llama 3.1 recipes: the planner has no
# context parallelism), FP8 rows, MT-NLG and Nemotron-4 340B (their papers were not read, only
# third-party copies), torchtitan's benchmarks (a 500 W, 96 GB H100 whose peak is not
# published), OPT-175B ("up to 147 TFLOP/s", no FLOPs count), GPT-NeoX-20B (throughput not
# read in the paper) and MegaScale's own rows (a parallel block and sliding-window attention).
_ROWS = [
    ('narayanan-t1-1.7b', 'Narayanan et al. 2021', 'Table 1; layout: Megatron-LM examples/sc21/run_table_1.sh @6985e589', '137 TFLOP/s per GPU (Eq. 3)',
     _gpt(2304, 24, 24, 51200, 2048, 'gpt-1.7b'), 'a100-80g', 32, 1, 1, 32, 512, 2048, 0, 'megatron-2021', ('eq3', 137),
     dict(micro_batch=16, virtual=1, sp=False, recompute='full')),
    ('narayanan-t1-3.6b', 'Narayanan et al. 2021', 'Table 1; layout: Megatron-LM examples/sc21/run_table_1.sh @6985e589', '138 TFLOP/s per GPU (Eq. 3)',
     _gpt(3072, 30, 32, 51200, 2048, 'gpt-3.6b'), 'a100-80g', 64, 2, 1, 32, 512, 2048, 0, 'megatron-2021', ('eq3', 138),
     dict(micro_batch=16, virtual=1, sp=False, recompute='full')),
    ('narayanan-t1-7.5b', 'Narayanan et al. 2021', 'Table 1; layout: Megatron-LM examples/sc21/run_table_1.sh @6985e589', '142 TFLOP/s per GPU (Eq. 3)',
     _gpt(4096, 36, 32, 51200, 2048, 'gpt-7.5b'), 'a100-80g', 128, 4, 1, 32, 512, 2048, 0, 'megatron-2021', ('eq3', 142),
     dict(micro_batch=16, virtual=1, sp=False, recompute='full')),
    ('narayanan-t1-18.4b', 'Narayanan et al. 2021', 'Table 1; layout: Megatron-LM examples/sc21/run_table_1.sh @6985e589', '135 TFLOP/s per GPU (Eq. 3)',
     _gpt(6144, 40, 48, 51200, 2048, 'gpt-18.4b'), 'a100-80g', 256, 8, 1, 32, 1024, 2048, 0, 'megatron-2021', ('eq3', 135),
     dict(micro_batch=8, virtual=1, sp=False, recompute='full')),
    ('narayanan-t1-39.1b', 'Narayanan et al. 2021', 'Table 1; layout: Megatron-LM examples/sc21/run_table_1.sh @6985e589', '138 TFLOP/s per GPU (Eq. 3)',
     _gpt(8192, 48, 64, 51200, 2048, 'gpt-39.1b'), 'a100-80g', 512, 8, 2, 32, 1536, 2048, 0, 'megatron-2021', ('eq3', 138),
     dict(micro_batch=4, virtual=1, sp=False, recompute='full')),
    ('narayanan-t1-76.1b', 'Narayanan et al. 2021', 'Table 1; layout: Megatron-LM examples/sc21/run_table_1.sh @6985e589', '140 TFLOP/s per GPU (Eq. 3)',
     _gpt(10240, 60, 80, 51200, 2048, 'gpt-76.1b'), 'a100-80g', 1024, 8, 4, 32, 1792, 2048, 0, 'megatron-2021', ('eq3', 140),
     dict(micro_batch=2, virtual=3, sp=False, recompute='full')),
    ('narayanan-t1-145.6b', 'Narayanan et al. 2021', 'Table 1; layout: Megatron-LM examples/sc21/run_table_1.sh @6985e589', '148 TFLOP/s per GPU (Eq. 3)',
     _gpt(12288, 80, 96, 51200, 2048, 'gpt-145.6b'), 'a100-80g', 1536, 8, 8, 24, 2304, 2048, 0, 'megatron-2021', ('eq3', 148),
     dict(micro_batch=2, virtual=2, sp=False, recompute='full')),
    ('narayanan-t1-310.1b', 'Narayanan et al. 2021', 'Table 1; layout: Megatron-LM examples/sc21/run_table_1.sh @6985e589', '155 TFLOP/s per GPU (Eq. 3)',
     _gpt(16384, 96, 128, 51200, 2048, 'gpt-310.1b'), 'a100-80g', 1920, 8, 16, 15, 2160, 2048, 0, 'megatron-2021', ('eq3', 155),
     dict(micro_batch=1, virtual=2, sp=False, recompute='full')),
    ('narayanan-t1-529.6b', 'Narayanan et al. 2021', 'Table 1; layout: Megatron-LM examples/sc21/run_table_1.sh @6985e589', '163 TFLOP/s per GPU (Eq. 3)',
     _gpt(20480, 105, 128, 51200, 2048, 'gpt-529.6b'), 'a100-80g', 2520, 8, 35, 9, 2520, 2048, 0, 'megatron-2021', ('eq3', 163),
     dict(micro_batch=1, virtual=3, sp=False, recompute='full')),
    ('narayanan-t1-1008b', 'Narayanan et al. 2021', 'Table 1; layout: Megatron-LM examples/sc21/run_table_1.sh @6985e589', '163 TFLOP/s per GPU (Eq. 3)',
     _gpt(25600, 128, 160, 51200, 2048, 'gpt-1008.0b'), 'a100-80g', 3072, 8, 64, 6, 3072, 2048, 0, 'megatron-2021', ('eq3', 163),
     dict(micro_batch=1, virtual=1, sp=False, recompute='full')),
    ('narayanan-t2-ptd-174.6b-384gpu', 'Narayanan et al. 2021', '§5.2, Table 2 (PTD Parallelism; model-parallel size only)', '153 TFLOP/s per GPU (Eq. 3)',
     _gpt(12288, 96, 96, 51200, 2048, 'gpt-174.6b'), 'a100-80g', 384, None, None, 4, 1536, 2048, 0, 'megatron-2021', ('eq3', 153),
     dict(micro_batch=1, virtual=None, sp=False, recompute='full', mp=96)),
    ('narayanan-t2-ptd-174.6b-768gpu', 'Narayanan et al. 2021', '§5.2, Table 2 (PTD Parallelism; model-parallel size only)', '149 TFLOP/s per GPU (Eq. 3)',
     _gpt(12288, 96, 96, 51200, 2048, 'gpt-174.6b'), 'a100-80g', 768, None, None, 8, 1536, 2048, 0, 'megatron-2021', ('eq3', 149),
     dict(micro_batch=1, virtual=None, sp=False, recompute='full', mp=96)),
    ('narayanan-t2-ptd-174.6b-1536gpu', 'Narayanan et al. 2021', '§5.2, Table 2 (PTD Parallelism; model-parallel size only)', '141 TFLOP/s per GPU (Eq. 3)',
     _gpt(12288, 96, 96, 51200, 2048, 'gpt-174.6b'), 'a100-80g', 1536, None, None, 16, 1536, 2048, 0, 'megatron-2021', ('eq3', 141),
     dict(micro_batch=1, virtual=None, sp=False, recompute='full', mp=96)),
    ('narayanan-t2-ptd-529.6b-560gpu', 'Narayanan et al. 2021', '§5.2, Table 2 (PTD Parallelism; model-parallel size only)', '171 TFLOP/s per GPU (Eq. 3)',
     _gpt(20480, 105, 128, 51200, 2048, 'gpt-529.6b'), 'a100-80g', 560, None, None, 2, 2240, 2048, 0, 'megatron-2021', ('eq3', 171),
     dict(micro_batch=1, virtual=None, sp=False, recompute='full', mp=280)),
    ('narayanan-t2-ptd-529.6b-1120gpu', 'Narayanan et al. 2021', '§5.2, Table 2 (PTD Parallelism; model-parallel size only)', '167 TFLOP/s per GPU (Eq. 3)',
     _gpt(20480, 105, 128, 51200, 2048, 'gpt-529.6b'), 'a100-80g', 1120, None, None, 4, 2240, 2048, 0, 'megatron-2021', ('eq3', 167),
     dict(micro_batch=1, virtual=None, sp=False, recompute='full', mp=280)),
    ('narayanan-t2-ptd-529.6b-2240gpu', 'Narayanan et al. 2021', '§5.2, Table 2 (PTD Parallelism; model-parallel size only)', '159 TFLOP/s per GPU (Eq. 3)',
     _gpt(20480, 105, 128, 51200, 2048, 'gpt-529.6b'), 'a100-80g', 2240, None, None, 8, 2240, 2048, 0, 'megatron-2021', ('eq3', 159),
     dict(micro_batch=1, virtual=None, sp=False, recompute='full', mp=280)),
    ('korthikanti-22b-sp-selective', 'Korthikanti et al. 2023', 'Table 3, Table 5', '1.1 s per iteration',
     _gpt(6144, 48, 64, 51200, 2048, 'gpt-22b'), 'a100-80g', 8, 8, 1, 1, 4, 2048, 0, 'megatron-2022', ('time', 1.1),
     dict(micro_batch=4, virtual=1, sp=True, recompute='selective')),
    ('korthikanti-22b-full-recompute', 'Korthikanti et al. 2023', 'Table 3, Table 5', '1.42 s per iteration',
     _gpt(6144, 48, 64, 51200, 2048, 'gpt-22b'), 'a100-80g', 8, 8, 1, 1, 4, 2048, 0, 'megatron-2022', ('time', 1.42),
     dict(micro_batch=4, virtual=1, sp=False, recompute='full')),
    ('korthikanti-175b-sp-selective', 'Korthikanti et al. 2023', 'Table 3, Table 5', '13.75 s per iteration',
     _gpt(12288, 96, 96, 51200, 2048, 'gpt-175b'), 'a100-80g', 64, 8, 8, 1, 64, 2048, 0, 'megatron-2022', ('time', 13.75),
     dict(micro_batch=1, virtual=3, sp=True, recompute='selective')),
    ('korthikanti-175b-full-recompute', 'Korthikanti et al. 2023', 'Table 3, Table 5', '18.13 s per iteration',
     _gpt(12288, 96, 96, 51200, 2048, 'gpt-175b'), 'a100-80g', 64, 8, 8, 1, 64, 2048, 0, 'megatron-2022', ('time', 18.13),
     dict(micro_batch=1, virtual=3, sp=False, recompute='full')),
    ('korthikanti-530b-sp-selective', 'Korthikanti et al. 2023', 'Table 3, Table 5', '37.83 s per iteration',
     _gpt(20480, 105, 128, 51200, 2048, 'gpt-530b'), 'a100-80g', 280, 8, 35, 1, 280, 2048, 0, 'megatron-2022', ('time', 37.83),
     dict(micro_batch=1, virtual=3, sp=True, recompute='selective')),
    ('korthikanti-530b-full-recompute', 'Korthikanti et al. 2023', 'Table 3, Table 5', '49.05 s per iteration',
     _gpt(20480, 105, 128, 51200, 2048, 'gpt-530b'), 'a100-80g', 280, 8, 35, 1, 280, 2048, 0, 'megatron-2022', ('time', 49.05),
     dict(micro_batch=1, virtual=3, sp=False, recompute='full')),
    ('korthikanti-1t-sp-selective', 'Korthikanti et al. 2023', 'Table 3, Table 5', '71.49 s per iteration',
     _gpt(25600, 128, 160, 51200, 2048, 'gpt-1t'), 'a100-80g', 512, 8, 64, 1, 512, 2048, 0, 'megatron-2022', ('time', 71.49),
     dict(micro_batch=1, virtual=None, sp=True, recompute='selective')),
    ('korthikanti-1t-full-recompute', 'Korthikanti et al. 2023', 'Table 3, Table 5', '94.42 s per iteration',
     _gpt(25600, 128, 160, 51200, 2048, 'gpt-1t'), 'a100-80g', 512, 8, 64, 1, 512, 2048, 0, 'megatron-2022', ('time', 94.42),
     dict(micro_batch=1, virtual=None, sp=False, recompute='full')),
    ('korthikanti-530b-dp8', 'Korthikanti et al. 2023', '§6.3', '39.15 s per iteration',
     _gpt(20480, 105, 128, 51200, 2048, 'gpt-530b'), 'a100-80g', 2240, 8, 35, 8, 2240, 2048, 0, 'megatron-2022', ('time', 39.15),
     dict(micro_batch=1, virtual=3, sp=True, recompute='selective')),
    ('megatron-readme-2024-1.7b', 'Megatron-LM README (2024)', 'README @f2e5db40, images/model_table.png (Megatron-Core r0.8.0)', '408.8 TFLOP/s per GPU, MFU 41 %',
     _gpt(2048, 24, 16, 131072, 4096, 'gpt-1.7b-2024', tie=False), 'h100-80g', 48, 1, 1, 48, 192, 4096, 1, 'megatron-core', ('model', 408.8),
     dict(micro_batch=None, virtual=None, sp=False, recompute=None)),
    ('megatron-readme-2024-7.1b', 'Megatron-LM README (2024)', 'README @f2e5db40, images/model_table.png (Megatron-Core r0.8.0)', '465.9 TFLOP/s per GPU, MFU 47 %',
     _gpt(4096, 30, 32, 131072, 4096, 'gpt-7.1b-2024', tie=False), 'h100-80g', 96, 2, 1, 48, 192, 4096, 1, 'megatron-core', ('model', 465.9),
     dict(micro_batch=None, virtual=None, sp=True, recompute=None)),
    ('megatron-readme-2024-16b', 'Megatron-LM README (2024)', 'README @f2e5db40, images/model_table.png (Megatron-Core r0.8.0)', '489.1 TFLOP/s per GPU, MFU 49 %',
     _gpt(6144, 32, 48, 131072, 4096, 'gpt-16.0b-2024', tie=False), 'h100-80g', 192, 4, 1, 48, 192, 4096, 1, 'megatron-core', ('model', 489.1),
     dict(micro_batch=None, virtual=None, sp=True, recompute=None)),
    ('megatron-readme-2024-32b', 'Megatron-LM README (2024)', 'README @f2e5db40, images/model_table.png (Megatron-Core r0.8.0)', '459.6 TFLOP/s per GPU, MFU 46 %',
     _gpt(7168, 48, 56, 131072, 4096, 'gpt-32.0b-2024', tie=False), 'h100-80g', 384, 8, 1, 48, 192, 4096, 1, 'megatron-core', ('model', 459.6),
     dict(micro_batch=None, virtual=None, sp=True, recompute=None)),
    ('megatron-readme-2024-70b', 'Megatron-LM README (2024)', 'README @f2e5db40, images/model_table.png (Megatron-Core r0.8.0)', '419.7 TFLOP/s per GPU, MFU 42 %',
     _gpt(8192, 84, 64, 131072, 4096, 'gpt-70.0b-2024', tie=False), 'h100-80g', 768, 8, 2, 48, 384, 4096, 1, 'megatron-core', ('model', 419.7),
     dict(micro_batch=None, virtual=None, sp=True, recompute=None)),
    ('megatron-readme-2024-119b', 'Megatron-LM README (2024)', 'README @f2e5db40, images/model_table.png (Megatron-Core r0.8.0)', '420.5 TFLOP/s per GPU, MFU 43 %',
     _gpt(10240, 92, 80, 131072, 4096, 'gpt-119.0b-2024', tie=False), 'h100-80g', 1536, 8, 4, 48, 768, 4096, 1, 'megatron-core', ('model', 420.5),
     dict(micro_batch=None, virtual=None, sp=True, recompute=None)),
    ('megatron-readme-2024-177b', 'Megatron-LM README (2024)', 'README @f2e5db40, images/model_table.png (Megatron-Core r0.8.0)', '432.8 TFLOP/s per GPU, MFU 44 %',
     _gpt(12288, 96, 96, 131072, 4096, 'gpt-177.0b-2024', tie=False), 'h100-80g', 2304, 8, 6, 48, 1152, 4096, 1, 'megatron-core', ('model', 432.8),
     dict(micro_batch=None, virtual=None, sp=True, recompute=None)),
    ('megatron-readme-2024-314b', 'Megatron-LM README (2024)', 'README @f2e5db40, images/model_table.png (Megatron-Core r0.8.0)', '474.4 TFLOP/s per GPU, MFU 48 %',
     _gpt(16384, 96, 128, 131072, 4096, 'gpt-314.0b-2024', tie=False), 'h100-80g', 3072, 8, 8, 48, 1536, 4096, 1, 'megatron-core', ('model', 474.4),
     dict(micro_batch=None, virtual=None, sp=True, recompute=None)),
    ('megatron-readme-2024-462b', 'Megatron-LM README (2024)', 'README @f2e5db40, images/model_table.png (Megatron-Core r0.8.0)', '459.9 TFLOP/s per GPU, MFU 47 %',
     _gpt(18432, 112, 144, 131072, 4096, 'gpt-462.0b-2024', tie=False), 'h100-80g', 6144, 8, 16, 48, 3072, 4096, 1, 'megatron-core', ('model', 459.9),
     dict(micro_batch=None, virtual=None, sp=True, recompute=None)),
    ('nemotron4-15b-dp96', 'Nemotron-4 15B', '§2, Table 1, Table 2', '0.57 s per iteration, MFU 34.3 %',
     _gpt(6144, 32, 48, 256000, 4096, 'nemotron4-15b', kv=8, bias=False, tie=False), 'h100-80g', 768, 8, 1, 96, 384, 4096, 1, 'megatron-core-2023', ('time', 0.57),
     dict(micro_batch=None, virtual=None, sp=None, recompute=None)),
    ('nemotron4-15b-dp192', 'Nemotron-4 15B', '§2, Table 1, Table 2', '0.58 s per iteration, MFU 33.3 %',
     _gpt(6144, 32, 48, 256000, 4096, 'nemotron4-15b', kv=8, bias=False, tie=False), 'h100-80g', 1536, 8, 1, 192, 768, 4096, 1, 'megatron-core-2023', ('time', 0.58),
     dict(micro_batch=None, virtual=None, sp=None, recompute=None)),
    ('nemotron4-15b-dp288', 'Nemotron-4 15B', '§2, Table 1, Table 2', '0.64 s per iteration, MFU 30.5 %',
     _gpt(6144, 32, 48, 256000, 4096, 'nemotron4-15b', kv=8, bias=False, tie=False), 'h100-80g', 2304, 8, 1, 288, 1152, 4096, 1, 'megatron-core-2023', ('time', 0.64),
     dict(micro_batch=None, virtual=None, sp=None, recompute=None)),
    ('dgxc-nemotron4-340b-bf16-128gpu', 'NVIDIA dgxc-benchmarking', '@35a9aec (v24.11.1) nemotron/README_340b.md', '4.61 s per step, MFU 55.38 %',
     _gpt(18432, 96, 96, 256000, 4096, 'nemotron4-340b', kv=8, bias=False, tie=False), 'h100-80g', 128, 8, 8, 2, 32, 4096, 1, 'nemo', ('time', 4.61),
     dict(micro_batch=1, virtual=12, sp=True, recompute='selective')),
    ('dgxc-nemotron4-340b-bf16-2048gpu', 'NVIDIA dgxc-benchmarking', '@35a9aec (v24.11.1) nemotron/README_340b.md', '4.84 s per step, MFU 52.75 %',
     _gpt(18432, 96, 96, 256000, 4096, 'nemotron4-340b', kv=8, bias=False, tie=False), 'h100-80g', 2048, 8, 8, 32, 512, 4096, 1, 'nemo', ('time', 4.84),
     dict(micro_batch=1, virtual=12, sp=True, recompute='selective')),
    ('dgxc-nemotron4-15b-bf16-16gpu', 'NVIDIA dgxc-benchmarking', '@35a9aec (v24.11.1) nemotron/README_15b.md', '2.83 s per step, MFU 62.10 %',
     _gpt(6144, 32, 48, 256000, 4096, 'nemotron4-15b', kv=8, bias=False, tie=False), 'h100-80g', 16, 4, 1, 4, 64, 4096, 1, 'nemo', ('time', 2.83),
     dict(micro_batch=4, virtual=1, sp=True, recompute='none')),
    ('dgxc-nemotron4-15b-bf16-2048gpu', 'NVIDIA dgxc-benchmarking', '@35a9aec (v24.11.1) nemotron/README_15b.md', '2.96 s per step, MFU 59.37 %',
     _gpt(6144, 32, 48, 256000, 4096, 'nemotron4-15b', kv=8, bias=False, tie=False), 'h100-80g', 2048, 4, 1, 512, 8192, 4096, 1, 'nemo', ('time', 2.96),
     dict(micro_batch=4, virtual=1, sp=True, recompute='none')),
    ('dgxc-gpt3-175b-bf16-128gpu', 'NVIDIA dgxc-benchmarking', '@35a9aec (v24.11.1) nemo_megatron/README_175b.md', '8.91 s per step, MFU 49.93 %',
     _gpt(12288, 96, 96, 51200, 2048, 'gpt3-175b'), 'h100-80g', 128, 4, 8, 4, 256, 2048, 1, 'nemo', ('time', 8.91),
     dict(micro_batch=1, virtual=12, sp=True, recompute='none')),
    ('dgxc-gpt3-175b-bf16-2048gpu', 'NVIDIA dgxc-benchmarking', '@35a9aec (v24.11.1) nemo_megatron/README_175b.md', '9.02 s per step, MFU 49.32 %',
     _gpt(12288, 96, 96, 51200, 2048, 'gpt3-175b'), 'h100-80g', 2048, 4, 8, 64, 4096, 2048, 1, 'nemo', ('time', 9.02),
     dict(micro_batch=1, virtual=12, sp=True, recompute='none')),
    ('bloom-176b-tr11', 'BLOOM-176B README', 'bigscience @9e64edec train/tr11-176B-ml/README.md (log at iteration 85376)', '104.70 s per iteration, 149.77 TFLOPs',
     MODELS['bloom-176b'], 'a100-80g-opa', 384, 4, 12, 8, 2048, 2048, 1, 'megatron-deepspeed', ('time', 104.7),
     dict(micro_batch=2, virtual=1, sp=False, recompute='full')),
    ('llama3-405b-t4-8192gpu-cp1', 'Llama 3', '§3.3.2, Table 4', '430 TFLOPs/GPU, BF16 MFU 43 %',
     MODELS['llama3-405b'], 'h100-80g', 8192, 8, 16, 64, 2048, 8192, None, 'fsdp-llama3', ('palm', 430),
     dict(micro_batch=None, virtual=(2, 4, 8), sp=None, recompute='none')),
    ('llama3-405b-t4-16384gpu-cp1', 'Llama 3', '§3.3.2, Table 4', '400 TFLOPs/GPU, BF16 MFU 41 %',
     MODELS['llama3-405b'], 'h100-80g', 16384, 8, 16, 128, 2048, 8192, None, 'fsdp-llama3', ('palm', 400),
     dict(micro_batch=None, virtual=(2, 4, 8), sp=None, recompute='none')),
    ('megascale-175b-megatron-256gpu-bs768', 'MegaScale', '§6.1, Table 1, Table 2', '40.0 s per iteration, MFU 53.0 %',
     _gpt(12288, 96, 128, 64000, 2048, 'gpt-175b-megascale'), 'a100-80g', 256, 8, 8, 4, 768, 2048, None, 'megatron-2023', ('time', 40.0),
     dict(micro_batch=None, virtual=6, sp=None, recompute=None)),
    ('megascale-175b-megatron-512gpu-bs768', 'MegaScale', '§6.1, Table 1, Table 2', '21.2 s per iteration, MFU 49.9 %',
     _gpt(12288, 96, 128, 64000, 2048, 'gpt-175b-megascale'), 'a100-80g', 512, 8, 8, 8, 768, 2048, None, 'megatron-2023', ('time', 21.2),
     dict(micro_batch=None, virtual=6, sp=None, recompute=None)),
    ('megascale-175b-megatron-768gpu-bs768', 'MegaScale', '§6.1, Table 1, Table 2', '15.2 s per iteration, MFU 46.7 %',
     _gpt(12288, 96, 128, 64000, 2048, 'gpt-175b-megascale'), 'a100-80g', 768, 8, 8, 12, 768, 2048, None, 'megatron-2023', ('time', 15.2),
     dict(micro_batch=None, virtual=6, sp=None, recompute=None)),
    ('megascale-175b-megatron-1024gpu-bs768', 'MegaScale', '§6.1, Table 1, Table 2', '11.9 s per iteration, MFU 44.7 %',
     _gpt(12288, 96, 128, 64000, 2048, 'gpt-175b-megascale'), 'a100-80g', 1024, 8, 8, 16, 768, 2048, None, 'megatron-2023', ('time', 11.9),
     dict(micro_batch=None, virtual=6, sp=None, recompute=None)),
    ('megascale-175b-megatron-3072gpu-bs6144', 'MegaScale', '§6.1, Table 1, Table 2', '29.02 s per iteration, MFU 48.7 %',
     _gpt(12288, 96, 128, 64000, 2048, 'gpt-175b-megascale'), 'a100-80g', 3072, 8, 8, 48, 6144, 2048, None, 'megatron-2023', ('time', 29.02),
     dict(micro_batch=None, virtual=6, sp=None, recompute=None)),
    ('megascale-175b-megatron-6144gpu-bs6144', 'MegaScale', '§6.1, Table 1, Table 2', '14.78 s per iteration, MFU 47.8 %',
     _gpt(12288, 96, 128, 64000, 2048, 'gpt-175b-megascale'), 'a100-80g', 6144, 8, 8, 96, 6144, 2048, None, 'megatron-2023', ('time', 14.78),
     dict(micro_batch=None, virtual=6, sp=None, recompute=None)),
    ('megascale-175b-megatron-8192gpu-bs6144', 'MegaScale', '§6.1, Table 1, Table 2', '12.24 s per iteration, MFU 43.3 %',
     _gpt(12288, 96, 128, 64000, 2048, 'gpt-175b-megascale'), 'a100-80g', 8192, 8, 8, 128, 6144, 2048, None, 'megatron-2023', ('time', 12.24),
     dict(micro_batch=None, virtual=6, sp=None, recompute=None)),
    ('megascale-175b-megatron-12288gpu-bs6144', 'MegaScale', '§6.1, Table 1, Table 2', '8.57 s per iteration, MFU 41.2 %',
     _gpt(12288, 96, 128, 64000, 2048, 'gpt-175b-megascale'), 'a100-80g', 12288, 8, 8, 192, 6144, 2048, None, 'megatron-2023', ('time', 8.57),
     dict(micro_batch=None, virtual=6, sp=None, recompute=None)),
    ('megascale-175b-megatron-256gpu-bs256-ablation-baseline', 'MegaScale', '§6.1, Table 1, Table 3', 'MFU 47.7 %',
     _gpt(12288, 96, 128, 64000, 2048, 'gpt-175b-megascale'), 'a100-80g', 256, 8, 8, 4, 256, 2048, None, 'megatron-2023', ('mfu', 0.477),
     dict(micro_batch=None, virtual=6, sp=None, recompute=None)),
    ('megascale-530b-megatron-2240gpu', 'MegaScale', '§6.1, Table 1, Fig. 9', 'MFU 49.2 %',
     _gpt(20480, 105, 160, 64000, 2048, 'gpt-530b-megascale'), 'a100-80g', 2240, 8, 35, 8, 2240, 2048, None, 'megatron-2023', ('mfu', 0.492),
     dict(micro_batch=None, virtual=3, sp=None, recompute=None)),
    ('megascale-530b-megatron-4480gpu', 'MegaScale', '§6.1, Table 1, Fig. 9', 'MFU 48.8 %',
     _gpt(20480, 105, 160, 64000, 2048, 'gpt-530b-megascale'), 'a100-80g', 4480, 8, 35, 16, 4480, 2048, None, 'megatron-2023', ('mfu', 0.488),
     dict(micro_batch=None, virtual=3, sp=None, recompute=None)),
    ('megascale-530b-megatron-11200gpu', 'MegaScale', '§6.1, Table 1, Fig. 9', 'MFU 48.2 %',
     _gpt(20480, 105, 160, 64000, 2048, 'gpt-530b-megascale'), 'a100-80g', 11200, 8, 35, 40, 11200, 2048, None, 'megatron-2023', ('mfu', 0.482),
     dict(micro_batch=None, virtual=3, sp=None, recompute=None)),
    ('mpt-70b-h100-512gpu', 'llm-foundry benchmarks', '@8c8dd48f scripts/train/benchmarking/README.md', '1007 tokens/s per GPU, MFU 41.25 %',
     _gpt(8192, 80, 64, 50368, 2048, 'mpt-70b', bias=False), 'h100-80g', 512, 1, 1, 512, 4096, 2048, 3, 'fsdp', ('tokens', 1007),
     dict(micro_batch=8, virtual=1, sp=False, recompute='full')),
    ('mpt-70b-h100-128gpu', 'llm-foundry benchmarks', '@8c8dd48f scripts/train/benchmarking/README.md', '1058 tokens/s per GPU, MFU 43.36 %',
     _gpt(8192, 80, 64, 50368, 2048, 'mpt-70b', bias=False), 'h100-80g', 128, 1, 1, 128, 1024, 2048, 3, 'fsdp', ('tokens', 1058),
     dict(micro_batch=8, virtual=1, sp=False, recompute='full')),
    ('mpt-30b-h100-512gpu', 'llm-foundry benchmarks', '@8c8dd48f scripts/train/benchmarking/README.md', '2115 tokens/s per GPU, MFU 40.27 %',
     _gpt(7168, 48, 56, 50368, 2048, 'mpt-30b', bias=False), 'h100-80g', 512, 1, 1, 512, 4096, 2048, 3, 'fsdp', ('tokens', 2115),
     dict(micro_batch=8, virtual=1, sp=False, recompute='full')),
    ('mpt-30b-h100-128gpu', 'llm-foundry benchmarks', '@8c8dd48f scripts/train/benchmarking/README.md', '2199 tokens/s per GPU, MFU 41.85 %',
     _gpt(7168, 48, 56, 50368, 2048, 'mpt-30b', bias=False), 'h100-80g', 128, 1, 1, 128, 1024, 2048, 3, 'fsdp', ('tokens', 2199),
     dict(micro_batch=8, virtual=1, sp=False, recompute='full')),
    ('mpt-13b-h100-512gpu', 'llm-foundry benchmarks', '@8c8dd48f scripts/train/benchmarking/README.md', '4952 tokens/s per GPU, MFU 41.12 %',
     _gpt(5120, 40, 40, 50368, 2048, 'mpt-13b', bias=False), 'h100-80g', 512, 1, 1, 512, 8192, 2048, 3, 'fsdp', ('tokens', 4952),
     dict(micro_batch=16, virtual=1, sp=False, recompute='full')),
    ('mpt-13b-h100-128gpu', 'llm-foundry benchmarks', '@8c8dd48f scripts/train/benchmarking/README.md', '5080 tokens/s per GPU, MFU 42.18 %',
     _gpt(5120, 40, 40, 50368, 2048, 'mpt-13b', bias=False), 'h100-80g', 128, 1, 1, 128, 2048, 2048, 3, 'fsdp', ('tokens', 5080),
     dict(micro_batch=16, virtual=1, sp=False, recompute='full')),
    ('mpt-7b-h100-512gpu', 'llm-foundry benchmarks', '@8c8dd48f scripts/train/benchmarking/README.md', '9670 tokens/s per GPU, MFU 42.20 %',
     _gpt(4096, 32, 32, 50368, 2048, 'mpt-7b', bias=False), 'h100-80g', 512, 1, 1, 512, 3072, 2048, 3, 'fsdp', ('tokens', 9670),
     dict(micro_batch=6, virtual=1, sp=False, recompute='none')),
    ('mpt-7b-h100-128gpu', 'llm-foundry benchmarks', '@8c8dd48f scripts/train/benchmarking/README.md', '10475 tokens/s per GPU, MFU 45.71 %',
     _gpt(4096, 32, 32, 50368, 2048, 'mpt-7b', bias=False), 'h100-80g', 128, 1, 1, 128, 768, 2048, 3, 'fsdp', ('tokens', 10475),
     dict(micro_batch=6, virtual=1, sp=False, recompute='none')),
    ('mpt-70b-a100-64gpu', 'llm-foundry benchmarks', '@8c8dd48f scripts/train/benchmarking/README.md', '410 tokens/s per GPU, MFU 53.33 %',
     _gpt(8192, 80, 64, 50368, 2048, 'mpt-70b', bias=False), 'a100-80g', 64, 1, 1, 64, 2048, 2048, 3, 'fsdp', ('tokens', 410),
     dict(micro_batch=8, virtual=1, sp=False, recompute='full')),
    ('mpt-30b-a100-8gpu', 'llm-foundry benchmarks', '@8c8dd48f scripts/train/benchmarking/README.md', '916 tokens/s per GPU, MFU 55.30 %',
     _gpt(7168, 48, 56, 50368, 2048, 'mpt-30b', bias=False), 'a100-80g', 8, 1, 1, 8, 504, 2048, 3, 'fsdp', ('tokens', 916),
     dict(micro_batch=3, virtual=1, sp=False, recompute='full')),
    ('mpt-7b-a100-8gpu', 'llm-foundry benchmarks', '@8c8dd48f scripts/train/benchmarking/README.md', '4641 tokens/s per GPU, MFU 64.23 %',
     _gpt(4096, 32, 32, 50368, 2048, 'mpt-7b', bias=False), 'a100-80g', 8, 1, 1, 8, 96, 2048, 3, 'fsdp', ('tokens', 4641),
     dict(micro_batch=6, virtual=1, sp=False, recompute='none')),

]
RUNS: tuple[Run, ...] = tuple(_run(*r) for r in _ROWS)


def _choices(run: Run, shape) -> list[dict]:
    """The layouts the run may have used: its published knobs, every choice of the others."""
    import itertools
    import math

    from .plan import FRAMEWORK_OPTIONS

    opts = FRAMEWORK_OPTIONS[run.framework]
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
    many choices were open)."""
    from . import plan

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
    step time over the fastest's, the fastest plan)."""
    from . import plan

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
