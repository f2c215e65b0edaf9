"""Loss spikes and what gradient clipping, warmup and β₂ do to them (notebook 13, section 3).

- Scenarios on the tiny Llama, the way spikes happen in practice: a rare bad batch
  (``bad_batch``: one batch of a single repeated token, of zeros, or of uniformly random tokens,
  swapped in at chosen steps through ``train``'s ``batch_transform``), and a learning rate too
  high for the warmup (``warmup_schedule`` with ``warmup_steps=0``). ``spike_run`` trains one;
  runs are in float64 by default, so that they agree across CPUs to many digits.
- Metrics, pure functions of ``History`` lists (tested on hand-made histories with exact
  answers): ``clipped_steps``, ``loss_excess``, ``recovery_steps``, and ``spike_stats``, which
  gathers them in a ``SpikeStats``.
- ``REPORTED``: which of the table's runs reported spikes or divergences and what they did, each
  record with its source (registered in ``llmtrain.sources``) and the place read.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch

from .. import check
from ..model.llama import Llama
from ..model.shapes import ModelShape, resolve
from .train import History, train

__all__ = ["BAD_BATCHES", "bad_batch", "warmup_schedule", "spike_run", "clipped_steps",
           "loss_excess", "moving_mean", "recovery_steps", "SpikeStats", "spike_stats", "adam_spike_update",
           "adam_spike_displacement",
           "SpikeReport", "REPORTED"]

BAD_BATCHES = ("zeros", "repeat", "random")


# --- scenarios ------------------------------------------------------------------------------

def bad_batch(kind: str, at: int | Sequence[int], *, token: int = 7, vocab_size: int = 256,
              seed: int = 0) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """A ``batch_transform`` for ``train`` that replaces the batch of each step in ``at`` by a
    bad one of the same shape: ``"zeros"`` (every token 0), ``"repeat"`` (every token
    ``token``) or ``"random"`` (uniform over ``vocab_size``, seeded by ``seed`` and the step).
    Other steps' batches pass unchanged."""
    check.one_of("kind", kind, BAD_BATCHES)
    steps = {at} if isinstance(at, int) and not isinstance(at, bool) else set(at)
    if not steps:
        raise ValueError("at must name at least one step")
    for s in steps:
        check.integer("at", s, 0)
    check.integer("vocab_size", vocab_size, 1)
    check.integer("token", token, 0, vocab_size - 1)
    check.integer("seed", seed, 0)

    def transform(step: int, batch: torch.Tensor) -> torch.Tensor:
        if step not in steps:
            return batch
        if kind == "zeros":
            return torch.zeros_like(batch)
        if kind == "repeat":
            return torch.full_like(batch, token)
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return torch.randint(vocab_size, batch.shape, generator=g, dtype=batch.dtype)

    return transform


def warmup_schedule(peak_lr: float, warmup_steps: int) -> Callable[[int], float]:
    """lr(s) = peak_lr · min(1, (s + 1) / warmup_steps): a linear warmup to a constant peak
    (``warmup_steps=0``: the peak from the first step)."""
    check.positive_number("peak_lr", peak_lr)
    check.integer("warmup_steps", warmup_steps, 0)
    if warmup_steps == 0:
        return lambda s: peak_lr
    return lambda s: peak_lr * min(1.0, (s + 1) / warmup_steps)


def spike_run(*, steps: int, peak_lr: float = 3e-3, warmup_steps: int = 0,
              grad_clip: float | None = 1.0, beta2: float = 0.95,
              bad: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
              shape: ModelShape | str = "tiny", batch_size: int = 4, seq_len: int = 32,
              dtype: torch.dtype = torch.float64, seed: int = 0) -> History:
    """One run of the tiny Llama with AdamW (β₁ 0.9, ``beta2``, weight decay 0.1) on the
    Markov corpus: ``warmup_schedule(peak_lr, warmup_steps)``, clipping at ``grad_clip``
    (None: none), the batches changed by ``bad`` (a ``bad_batch``) if given. The weights are
    seeded by ``seed`` and cast to ``dtype`` (float64 by default: runs then agree across CPU
    kernels to many digits). Two runs that differ only in ``bad`` see the same batches at
    every other step, so their losses can be compared step by step (``loss_excess``)."""
    check.integer("steps", steps, 1)
    check.number("beta2", beta2, 0)
    if not beta2 < 1:
        raise ValueError(f"beta2 must be in [0, 1), got {beta2!r}")
    check.optional(check.function, "bad", bad)
    check.one_of("dtype", dtype, (torch.float32, torch.float64))
    check.integer("seed", seed, 0)
    schedule = warmup_schedule(peak_lr, warmup_steps)
    with torch.random.fork_rng(devices=[]):  # seed the weights, leave the global RNG alone
        torch.manual_seed(seed)
        model = Llama(resolve(shape, "shape")).to(dtype)
    return train(model, steps=steps, batch_size=batch_size, seq_len=seq_len,
                 lr_schedule=schedule, grad_clip=grad_clip, betas=(0.9, beta2),
                 batch_transform=bad, seed=seed)


# --- metrics (pure functions of History lists) ---------------------------------------------

def clipped_steps(grad_norms: Sequence[float], clip: float | None) -> int:
    """How many steps clipping acted on: the count of norms strictly above ``clip``
    (``torch.nn.utils.clip_grad_norm_`` scales by clip / (norm + 1e-6) only then; None: 0)."""
    check.sequence("grad_norms", grad_norms, item=check.number)
    check.optional(check.positive_number, "clip", clip)
    return 0 if clip is None else sum(1 for n in grad_norms if n > clip)


def loss_excess(loss: Sequence[float], reference: Sequence[float]) -> list[float]:
    """loss[s] − reference[s] at every step: how far a disturbed run is above the undisturbed
    one (the same batches except the bad ones, so the difference is the disturbance's)."""
    check.sequence("loss", loss, item=check.number)
    check.sequence("reference", reference, item=check.number)
    if len(loss) != len(reference):
        raise ValueError(f"loss and reference must have the same length, got {len(loss)} "
                         f"and {len(reference)}")
    return [a - b for a, b in zip(loss, reference)]


def moving_mean(values: Sequence[float], window: int) -> list[float]:
    """out[s] = the mean of values[max(0, s − window + 1) : s + 1]: a trailing mean over
    ``window`` steps (fewer at the start); window 1 returns the values."""
    check.sequence("values", values, item=check.number)
    check.integer("window", window, 1)
    out, total = [], 0.0
    for s, v in enumerate(values):
        total += v
        if s >= window:
            total -= values[s - window]
        out.append(total / min(s + 1, window))
    return out


def recovery_steps(excess: Sequence[float], after: int, tolerance: float) -> int | None:
    """The number of steps after step ``after`` until |excess| stays within ``tolerance`` for
    the rest of the run: the smallest k ≥ 1 with |excess[s]| ≤ tolerance for all s ≥ after + k
    (None if even the last step is outside; k = 1 if every step after ``after`` is inside)."""
    check.sequence("excess", excess, item=check.number)
    check.integer("after", after, 0)
    check.positive_number("tolerance", tolerance)
    if after >= len(excess) - 1:
        raise ValueError(f"after={after} must leave at least one step of the {len(excess)}")
    k = len(excess)
    while k > after + 1 and abs(excess[k - 1]) <= tolerance:
        k -= 1
    return None if k == len(excess) else k - after


@dataclass(frozen=True)
class SpikeStats:
    """What a disturbance did to a run, against the undisturbed reference run.

    typical_norm: median gradient norm of the reference (before clipping); peak_norm: the
    largest gradient norm of the run; clipped: steps clipped, of ``steps``; loss_peak: the
    largest loss excess after the disturbance (its own step excluded: the bad batch's loss is
    a different batch's); mean_excess: the mean excess over the ``window`` steps after it;
    recovery: ``recovery_steps`` of the excess averaged over ``window`` steps (trailing,
    ``moving_mean``), within ``tolerance`` (None: not recovered by the end of the run)."""

    typical_norm: float
    peak_norm: float
    clipped: int
    steps: int
    loss_peak: float
    mean_excess: float
    recovery: int | None
    tolerance: float
    window: int

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.steps


def spike_stats(run: History, reference: History, *, after: int, clip: float | None,
                tolerance: float = 0.03, window: int = 10) -> SpikeStats:
    """``SpikeStats`` of ``run`` against ``reference``; ``after``: the last disturbed step
    (excess counted from after + 1; the steps up to ``after`` count as 0 in the average);
    ``clip``: the run's threshold (for ``clipped``). Per-step excesses of two runs on the same
    batches wander by a few hundredths of a nat once the runs part (measured on the tiny
    model), hence the average over ``window`` steps for the recovery."""
    if not isinstance(run, History) or not isinstance(reference, History):
        raise ValueError("run and reference must be History objects (from train)")
    excess = loss_excess(run.loss, reference.loss)
    check.integer("after", after, 0)
    check.integer("window", window, 1)
    if after + window >= len(excess):
        raise ValueError(f"after={after} + window={window} must leave steps of the "
                         f"{len(excess)}")
    later = [0.0] * (after + 1) + excess[after + 1:]
    rec = recovery_steps(moving_mean(later, window), after, tolerance)
    return SpikeStats(statistics.median(reference.grad_norm), max(run.grad_norm),
                      clipped_steps(run.grad_norm, clip), len(run.grad_norm),
                      max(excess[after + 1:]), statistics.fmean(excess[after + 1:after + 1 + window]),
                      rec, tolerance, window)


def adam_spike_update(beta1: float, beta2: float, step: int | None = None) -> float:
    """|Δθ| / lr of one Adam step, per coordinate, when the gradient g at that step dwarfs all
    before it (|g| → ∞, moments from zero for earlier gradients): m ≈ (1−β₁)g, v ≈ (1−β₂)g², so
    Δθ/lr → (1−β₁)/√(1−β₂), or with bias correction at step t (counted from 1)
    (1−β₁)/(1−β₁ᵗ) · √((1−β₂ᵗ)/(1−β₂)). Adam (Kingma and Ba 2015, Algorithm 1); the limit is
    checked against torch.optim.Adam in tests/test_spikes.py."""
    check.number("beta1", beta1, 0)
    check.number("beta2", beta2, 0)
    if not (beta1 < 1 and beta2 < 1):
        raise ValueError(f"beta1 and beta2 must be in [0, 1), got {beta1!r}, {beta2!r}")
    check.optional(check.integer, "step", step, 1)
    if step is None:
        return (1 - beta1) / math.sqrt(1 - beta2)
    return (1 - beta1) / (1 - beta1**step) * math.sqrt((1 - beta2**step) / (1 - beta2))


def adam_spike_displacement(beta1: float, beta2: float) -> float:
    """Σ_k |Δθ_k| / lr: how far one huge gradient moves each weight in all, over its step and
    the steps after it, while its decaying moments dominate (later gradients negligible, bias
    corrections ≈ 1): m_k = β₁ᵏ(1−β₁)g, v_k = β₂ᵏ(1−β₂)g², so the k-th update is
    (1−β₁)/√(1−β₂) · (β₁/√β₂)ᵏ, a geometric series summing to
    (1−β₁)/√(1−β₂) / (1 − β₁/√β₂) (finite only for β₁ < √β₂). Checked against
    torch.optim.Adam in tests/test_spikes.py."""
    limit = adam_spike_update(beta1, beta2)
    if not beta1 < math.sqrt(beta2):
        raise ValueError(f"beta1 must be below sqrt(beta2) for a finite sum, got {beta1!r}, "
                         f"{beta2!r}")
    return limit / (1 - beta1 / math.sqrt(beta2))


# --- what the table's runs reported ---------------------------------------------------------

class SpikeReport(NamedTuple):
    model: str        # the table's row
    observed: str     # what the paper says happened
    remedy: str       # what they did
    source: str       # a key of llmtrain.sources.SOURCES
    place: str        # where in it (listed in that source's ``checked``)
    quote: str        # the words read there


REPORTED: tuple[SpikeReport, ...] = (
    SpikeReport("PaLM", "loss spikes roughly 20 times in the 540B run, despite gradient clipping; "
                "not in the smaller models",
                "restart from a checkpoint about 100 steps before the spike and skip about "
                "200-500 batches",
                "Chowdhery et al. 2022", "§5.1",
                "We re-started training from a checkpoint roughly 100 steps before the spike "
                "started, and skipped roughly 200–500 data batches"),
    SpikeReport("OPT", "loss divergences in the 175B run",
                "lower the learning rate and restart from an earlier checkpoint (Fig. 1's "
                "empirical schedule); early on, clipping lowered from 1.0 to 0.3",
                "Zhang et al. 2022", "§2.5",
                "When the loss diverged, we found that lowering the learning rate and "
                "restarting from an earlier checkpoint allowed for the job to recover"),
    SpikeReport("GLM-130B", "frequent loss spikes with FP16 mixed precision; a gradient-norm "
                "spike, mostly the embedding layer's, precedes a collapse by a few steps",
                "embedding layer gradient shrink (α = 0.1), shrunk further for three late "
                "divergences; DeepNorm Post-LN",
                "Zeng et al. 2022", "§3",
                "setting α = 0.1 wipes out most spikes we would have met, with negligible "
                "latency"),
    SpikeReport("BLOOM", "(reported by GLM-130B's paper, not read in BLOOM's own)",
                "an embedding norm (a LayerNorm after the embedding), with BF16",
                "Zeng et al. 2022", "§3",
                "BLOOM-176B did so via the embedding norm technique"),
)
