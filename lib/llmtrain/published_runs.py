"""Published 3D-parallel training runs, as data with their sources, and the formulas of their
papers (what ``llmtrain.plan`` is checked against: tests/test_plan.py, notebook 08 §7).

- ``NARAYANAN_TABLE1``: Narayanan et al. 2021 (arXiv 2104.04473), Table 1, with their Eq. 2
  (parameters, ``narayanan_params``) and Eq. 3 (FLOPs with recomputation, ``narayanan_flops``;
  without, ``narayanan_model_flops``);
- ``BLOOM_176B``: the BigScience README's layout and size;
- ``LLAMA3_405B``: the Llama 3 paper's two 405B configurations of Table 4 at 8K context, and
  ``LLAMA3_405B_LONG_CONTEXT`` its third (context parallelism, 128K context).
"""

from __future__ import annotations

from typing import NamedTuple

from .plan import MI

__all__ = ["NARAYANAN_V", "NARAYANAN_S", "A100_PEAK_TFLOPS", "NarayananRow", "NARAYANAN_TABLE1",
           "narayanan_params", "narayanan_flops", "narayanan_model_flops", "BLOOM_176B",
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
# optimizer states and gradients, not the weights after forward: ZeRO-2 here. Micro-batch and
# recomputation are not stated: micro-batch 1, selective recomputation are ours.
LLAMA3_405B = (
    dict(model="llama3-405b", gpu="h100-80g", gpus=8192, tp=8, pp=16, dp=64, zero=2,
         recompute="selective", micro_batch=1, batch_tokens=16 * MI, seq=8192,
         tflops_per_gpu=430, mfu_percent=43),
    dict(model="llama3-405b", gpu="h100-80g", gpus=16384, tp=8, pp=16, dp=128, zero=2,
         recompute="selective", micro_batch=1, batch_tokens=16 * MI, seq=8192,
         tflops_per_gpu=400, mfu_percent=41),
)
# Table 4's third row, the long-context stage: context parallelism CP 16 with seq 131,072 on
# 16,384 GPUs. v3 lists DP 8 (8 · 16 · 16 · 8 = 16,384; some renderings, e.g. an arxiv.org
# HTML transcription, show DP 4, which would make 8,192). ``llmtrain.plan`` has no context parallelism, so this row
# is data only (notebook 08 §7 prints its product), not a planner check.
LLAMA3_405B_LONG_CONTEXT = dict(model="llama3-405b", gpu="h100-80g", gpus=16384, tp=8, cp=16,
                                pp=16, dp=8, batch_tokens=16 * MI, seq=131072)
