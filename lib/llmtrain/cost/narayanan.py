"""Narayanan et al. 2021 (arXiv 2104.04473), Table 1 as printed, with their Eq. 2 (parameters,
``narayanan_params``) and Eq. 3 (FLOPs with recomputation, ``narayanan_flops``; without,
``narayanan_model_flops``). Checked: tests/test_published_runs.py, tests/test_plan.py.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["NARAYANAN_V", "NARAYANAN_S", "A100_PEAK_TFLOPS", "NarayananRow", "NARAYANAN_TABLE1",
           "narayanan_params", "narayanan_flops", "narayanan_model_flops"]


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
