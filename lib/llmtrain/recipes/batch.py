"""Batch size during pretraining (slides: 动态批次调整, dynamic batch size).

Three pieces:

- **Schedules**: the batch size, in tokens, as a function of the tokens consumed so far.
  GPT-3 ramps it linearly (``linear_ramp``); PaLM doubles it twice (``stepwise``,
  ``PALM_STAGES``). ``steps_and_tokens`` replays a schedule step by step, so one can count
  the optimizer steps a ramp takes.
- **Gradient accumulation**: a batch larger than fits in memory is run as k micro-batches
  whose gradients add up in ``.grad`` (``accumulation_steps``, ``accumulate_gradients``).
- **Gradient noise scale** (McCandlish et al. 2018, "An Empirical Model of Large-Batch
  Training", arXiv 1812.06162): B_simple = tr(Σ)/|G|², the batch size above which a larger
  batch stops buying a proportionally larger step — the argument for growing the batch as
  training proceeds (the noise scale grows as the loss falls).
  ``per_example_grads``, ``noise_scale``, ``noise_scale_from_norms``.

Tested in tests/test_batch.py.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from .. import check

__all__ = ["linear_ramp", "stepwise", "PALM_SEQ_LEN", "PALM_STAGES", "PALM_TOTAL_TOKENS",
           "Step", "steps_and_tokens", "linear_ramp_steps", "accumulation_steps",
           "accumulate_gradients", "per_example_grads", "noise_terms", "noise_scale",
           "noise_terms_from_norms", "noise_scale_from_norms"]


# --- schedules: tokens seen -> batch size in tokens ----------------------------------------

def linear_ramp(tokens_seen: int, *, start_tokens: int, end_tokens: int, ramp_tokens: int,
                micro_batch_tokens: int | None = None) -> int:
    """Batch size in tokens: start + (end - start)·min(tokens_seen/ramp, 1), floored to an int.

    Source: GPT-3 (Brown et al. 2020, arXiv 2005.14165, App. B): "gradually increase the batch
    size linearly from a small value (32k tokens) to the full value over the first 4-12
    billion tokens of training".

    With ``micro_batch_tokens`` = m the value is floored to a multiple of m, and is at least m:
    max(m, ⌊b/m⌋·m), a batch that gradient accumulation of whole micro-batches realises. (So
    the ramp becomes a staircase, and an ``end_tokens`` that is not a multiple of m is never
    reached: the batch stays at ⌊end/m⌋·m.) ``ramp_tokens=0`` means no ramp: always end.
    """
    check.integer("tokens_seen", tokens_seen, 0)
    check.integer("start_tokens", start_tokens, 1)
    check.integer("end_tokens", end_tokens, 1)
    check.integer("ramp_tokens", ramp_tokens, 0)
    if end_tokens < start_tokens:
        raise ValueError(f"end_tokens={end_tokens} must be >= start_tokens={start_tokens} "
                         "(the ramp grows the batch)")
    if ramp_tokens == 0 or tokens_seen >= ramp_tokens:
        b = end_tokens
    else:  # exact integer arithmetic: no float rounding at 10^12 tokens
        b = start_tokens + (end_tokens - start_tokens) * tokens_seen // ramp_tokens
    if micro_batch_tokens is not None:
        check.integer("micro_batch_tokens", micro_batch_tokens, 1)
        b = max(micro_batch_tokens, b // micro_batch_tokens * micro_batch_tokens)
    return b


def stepwise(tokens_seen: int, *, stages: Sequence[tuple[int, int]]) -> int:
    """Batch size in tokens: the batch_tokens of the last stage (from_tokens, batch_tokens)
    with from_tokens <= tokens_seen. Stages are sorted by from_tokens and the first starts at 0.

    Source: PaLM (Chowdhery et al. 2022, arXiv 2204.02311, §5), see ``PALM_STAGES``.
    """
    check.integer("tokens_seen", tokens_seen, 0)
    _check_stages(stages)
    b = stages[0][1]
    for start, tokens in stages:
        if start > tokens_seen:
            break
        b = tokens
    return b


# PaLM §5: "a batch size of 512 (1M tokens) until step 50k, then doubled it to 1024 (2M tokens)
# until step 115k, and finally doubled again to 2048 (4M tokens) until training is complete at
# step 255k", sequences of 2048 tokens. "1M" is 512·2048 = 2^20 tokens. PALM_STAGES is in
# tokens: a stage starts at the tokens consumed by the steps before it,
#   50k·2^20 = 52,428,800,000 and that + 65k·2^21 = 188,743,680,000;
# the run ends at that + 140k·2^22 = 775,946,240,000 tokens (the paper's "780 billion").
PALM_SEQ_LEN = 2048
PALM_STAGES: tuple[tuple[int, int], ...] = (
    (0, 512 * PALM_SEQ_LEN),
    (50_000 * 512 * PALM_SEQ_LEN, 1024 * PALM_SEQ_LEN),
    (50_000 * 512 * PALM_SEQ_LEN + 65_000 * 1024 * PALM_SEQ_LEN, 2048 * PALM_SEQ_LEN),
)
PALM_TOTAL_TOKENS = PALM_STAGES[2][0] + 140_000 * 2048 * PALM_SEQ_LEN


class Step(NamedTuple):
    """One optimizer step of a simulated run: its index (from 0), its batch in tokens, and the
    tokens consumed before it (the argument the schedule was called with)."""

    step: int
    batch_tokens: int
    tokens_seen: int


def steps_and_tokens(schedule: Callable[[int], int], total_tokens: int) -> list[Step]:
    """Replay a batch schedule: step s uses b_s = schedule(t_s) tokens, t_{s+1} = t_s + b_s,
    from t_0 = 0 while t_s < total_tokens (the last step may overshoot total_tokens)."""
    check.function("schedule", schedule)
    check.integer("total_tokens", total_tokens, 0)
    steps, seen = [], 0
    while seen < total_tokens:
        b = check.integer(f"schedule({seen})", schedule(seen), 1)  # tokens in the batch
        steps.append(Step(len(steps), b, seen))
        seen += b
    return steps


def linear_ramp_steps(tokens: int, *, start_tokens: int, end_tokens: int,
                      ramp_tokens: int) -> float:
    """S(τ) = ∫₀^τ dτ'/b(τ'): the optimizer steps that the first τ = ``tokens`` tokens take
    under ``linear_ramp`` (each step consumes b tokens, so dS/dτ = 1/b), in the continuum
    limit (no micro-batch flooring):

        τ <= R:  S = R/(b1 − b0) · ln(b(τ)/b0),  b(τ) = b0 + (b1 − b0)·τ/R   (τ/b0 if b1 = b0)
        τ >  R:  S = S(R) + (τ − R)/b1

    with b0 = start_tokens, b1 = end_tokens, R = ramp_tokens (R = 0: no ramp, τ/b1). The
    first line is the integral notebook 02 derives with SymPy. The replay
    ``steps_and_tokens(lambda t: linear_ramp(t, ...), τ)`` counts whole steps, N of them:
    S ≤ N < 1 + S·(1 + k)/(1 − 1/b0) with k = (b1 − b0)/R, the batch's relative growth
    over one step (tests/test_batch.py::test_linear_ramp_steps_bounds_the_replay).
    Example: GPT-3's warmup, its first 375M tokens, inside a 4B-token ramp from 32K to 3.2M
    takes about 2,900 steps, not 375M/3.2M ≈ 117 (notebook 03).
    """
    check.integer("tokens", tokens, 0)
    check.integer("start_tokens", start_tokens, 1)
    check.integer("end_tokens", end_tokens, 1)
    check.integer("ramp_tokens", ramp_tokens, 0)
    if end_tokens < start_tokens:
        raise ValueError(f"end_tokens={end_tokens} must be >= start_tokens={start_tokens} "
                         "(the ramp grows the batch)")
    b0, b1, R = start_tokens, end_tokens, ramp_tokens
    in_ramp = min(tokens, R)
    if b1 == b0:
        s = in_ramp / b0
    else:  # log1p: accurate for small τ/R; ln(b(τ)/b0) = ln(1 + (b1 − b0)τ/(R·b0))
        s = R / (b1 - b0) * math.log1p((b1 - b0) * in_ramp / (R * b0)) if R else 0.0
    return s + (tokens - in_ramp) / b1


# --- gradient accumulation ----------------------------------------------------------------

def accumulation_steps(batch_tokens: int, micro_batch_tokens: int) -> int:
    """k = batch_tokens / micro_batch_tokens micro-batches per optimizer step; must divide."""
    check.integer("batch_tokens", batch_tokens, 1)
    check.integer("micro_batch_tokens", micro_batch_tokens, 1)
    if batch_tokens % micro_batch_tokens:
        raise ValueError(f"batch_tokens={batch_tokens} must be a multiple of "
                         f"micro_batch_tokens={micro_batch_tokens} to be realised by "
                         "gradient accumulation")
    return batch_tokens // micro_batch_tokens


REDUCTIONS = ("tokens", "micro_batches")


def accumulate_gradients(model: nn.Module, batches: Sequence, *,
                         reduction: str = "tokens") -> float:
    """Run forward and backward on each micro-batch, adding the gradients into ``.grad``
    (call ``optimizer.zero_grad()`` first); return the loss of the whole batch.

    ``batches`` holds input_ids (labels = input_ids) or (input_ids, labels) pairs for a model
    whose ``forward(input_ids, labels).loss`` is the mean over the n_j counted labels of
    micro-batch j (labels[:, 1:] != -100, the reference Llama's shift). Then

    - ``"tokens"``: loss_j is scaled by n_j / Σn: the gradient of the mean over *all* tokens,
      the same as one forward of the concatenated batch, whatever the n_j;
    - ``"micro_batches"``: loss_j is scaled by 1/k: the mean of micro-batch means. Equal to
      the above only when every n_j is the same (equal shapes, nothing ignored).

    Checked: tests/test_batch.py::test_accumulation_equals_one_big_batch.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    check.module("model", model)
    batches = check.sequence("batches", batches, nonempty=True, item=_micro_batch)
    pairs = [(b, b) if isinstance(b, torch.Tensor) else tuple(b) for b in batches]
    if not pairs:
        raise ValueError("batches must hold at least one micro-batch")
    counts = [int((labels[:, 1:] != -100).sum()) for _, labels in pairs]
    total = sum(counts)
    if total == 0:
        raise ValueError("batches have no labels other than -100: nothing to learn from")
    loss_sum = 0.0
    for (ids, labels), n in zip(pairs, counts):
        if n == 0 and reduction == "tokens":
            continue  # weight 0 (and its mean would be 0/0)
        loss = model(ids, labels=labels).loss
        scale = n / total if reduction == "tokens" else 1 / len(pairs)
        (loss * scale).backward()
        loss_sum += loss.item() * scale
    return loss_sum


# --- gradient noise scale -----------------------------------------------------------------

def per_example_grads(model: nn.Module, input_ids: torch.Tensor,
                      labels: torch.Tensor | None = None, *, method: str = "vmap"
                      ) -> torch.Tensor:
    """The gradient of each sequence's own loss, one row per sequence: (B, P), the columns in
    the order of ``model.parameters()`` flattened. Leaves ``.grad`` untouched.

    ``method="vmap"``: torch.func, vmap(grad(loss)) over the batch with functional_call —
    one batched backward. ``method="loop"``: B separate backwards, for checking the former
    (tests/test_batch.py::test_per_example_grads_vmap_equals_loop).
    """
    check.module("model", model)
    check.one_of("method", method, ("vmap", "loop"))
    check.tensor("input_ids", input_ids, dim=2, floating=False)
    if labels is None:
        labels = input_ids
    check.tensor("labels", labels, dim=2, floating=False)
    if labels.shape != input_ids.shape:
        raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, "
                         f"got {tuple(labels.shape)}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if method == "loop":
        rows = []
        for i in range(input_ids.shape[0]):
            loss = model(input_ids[i:i + 1], labels=labels[i:i + 1]).loss
            grads = torch.autograd.grad(loss, [p for _, p in named])
            rows.append(torch.cat([g.flatten() for g in grads]))
        return torch.stack(rows)
    if method != "vmap":
        raise ValueError(f"method must be 'vmap' or 'loop', got {method!r}")
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in named}

    def loss_one(params, ids, lab):  # one sequence, seen by the model as a batch of 1
        return functional_call(model, params, (ids[None],), {"labels": lab[None]}).loss

    with warnings.catch_warnings():  # CPU sdpa has no vmap batching rule: torch loops, warns
        warnings.filterwarnings("ignore", message="There is a performance drop")
        grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, input_ids, labels)
    return torch.cat([grads[n].flatten(1) for n, _ in named], dim=1)


def noise_terms(per_example_grads: torch.Tensor) -> tuple[float, float]:
    """Unbiased estimates (|G|², tr Σ) from B per-example gradients g_i (rows of a (B, P) tensor):

        tr Σ ≈ S = 1/(B-1) · Σ_i |g_i - ḡ|²      (the unbiased sample covariance's trace)
        |G|² ≈ |ḡ|² - S/B                          (E|ḡ|² = |G|² + tr Σ / B)

    McCandlish et al. 2018 (arXiv 1812.06162), §2.2 and App. A. This is App. A's
    two-batch-size estimator with B_small = 1 and B_big = B (see ``noise_terms_from_norms``).
    """
    g = _as_matrix(per_example_grads).double()
    B = g.shape[0]
    if B < 2:
        raise ValueError(f"per_example_grads needs at least 2 rows (examples), got {B}")
    mean = g.mean(0)
    trace = float(((g - mean) ** 2).sum() / (B - 1))
    return float(mean @ mean) - trace / B, trace


def noise_scale(per_example_grads: torch.Tensor) -> float:
    """B_simple = tr(Σ) / |G|², in examples (here sequences), from per-example gradients.

    McCandlish et al. 2018, eq. 2.8; both terms estimated without bias by ``noise_terms``
    (their ratio still has an O(1/B) bias: average each term over batches before dividing).
    """
    g2, trace = noise_terms(per_example_grads)
    return trace / g2


def noise_terms_from_norms(*, b_small: int, sq_norm_small: float, b_big: int,
                           sq_norm_big: float) -> tuple[float, float]:
    """Unbiased (|G|², tr Σ) from the squared norms of mean gradients at two batch sizes:

        |G|² ≈ (B_big |G_big|² - B_small |G_small|²) / (B_big - B_small)
        tr Σ ≈ (|G_small|² - |G_big|²) / (1/B_small - 1/B_big)

    McCandlish et al. 2018, App. A (from E|G_B|² = |G|² + tr Σ / B). Data-parallel training
    gets both for free: the per-rank gradient (B_small) and the all-reduced one (B_big).
    """
    check.integer("b_small", b_small, 1)
    check.integer("b_big", b_big, 1)
    check.number("sq_norm_small", sq_norm_small, 0)
    check.number("sq_norm_big", sq_norm_big, 0)
    if b_big <= b_small:
        raise ValueError(f"b_big={b_big} must be larger than b_small={b_small}")
    g2 = (b_big * sq_norm_big - b_small * sq_norm_small) / (b_big - b_small)
    trace = (sq_norm_small - sq_norm_big) / (1 / b_small - 1 / b_big)
    return g2, trace


def noise_scale_from_norms(*, b_small: int, sq_norm_small: float, b_big: int,
                           sq_norm_big: float) -> float:
    """B_simple = tr Σ / |G|² from ``noise_terms_from_norms`` (McCandlish et al. 2018, App. A)."""
    g2, trace = noise_terms_from_norms(b_small=b_small, sq_norm_small=sq_norm_small,
                                       b_big=b_big, sq_norm_big=sq_norm_big)
    return trace / g2


# --- checks ---------------------------------------------------------------------------------

def _micro_batch(name: str, b):
    """A micro-batch of ``accumulate_gradients``: input_ids, or an (input_ids, labels) pair."""
    if isinstance(b, torch.Tensor):
        return check.tensor(name, b, dim=2, floating=False)
    if not isinstance(b, (tuple, list)) or len(b) != 2:
        check.fail(name, "a 2-D tensor of token ids or an (input_ids, labels) pair", b)
    return (check.tensor(f"{name}[0] (input_ids)", b[0], dim=2, floating=False),
            check.tensor(f"{name}[1] (labels)", b[1], dim=2, floating=False))


def _check_stages(stages) -> None:
    if not stages:
        raise ValueError("stages must hold at least one (from_tokens, batch_tokens) pair")
    check.sequence("stages", stages)
    for i, stage in enumerate(stages):
        if not isinstance(stage, (tuple, list)) or len(stage) != 2:
            raise ValueError(f"stages[{i}] must be a (from_tokens, batch_tokens) pair, "
                             f"got {stage!r}")
        check.integer(f"stages[{i}] from_tokens", stage[0], 0)
        check.integer(f"stages[{i}] batch_tokens", stage[1], 1)
    if stages[0][0] != 0:
        raise ValueError(f"stages[0] must start at 0 tokens, got {stages[0][0]}")
    if any(a[0] >= b[0] for a, b in zip(stages, stages[1:])):
        raise ValueError("stages must be sorted by strictly increasing from_tokens")


def _as_matrix(g) -> torch.Tensor:
    if isinstance(g, Mapping):  # {name: (B, ...)} as torch.func returns them
        g = torch.cat([v.flatten(1) for v in g.values()], dim=1)
    if not isinstance(g, torch.Tensor) or g.dim() != 2:
        raise ValueError("per_example_grads must be a (B, P) tensor, one row per example")
    return g
