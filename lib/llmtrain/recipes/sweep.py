"""DeepSeek's batch-size and learning-rate sweep in miniature (DeepSeek-AI 2024, §3.1).

A grid of (batch size, peak learning rate) at several compute budgets C = M·D on the tiny
LLaMA, each run trained on ``train.corpus`` and scored on held-out tokens of the same Markov
chain that no run ever trained on. The records are plain dicts; ``cost.hparam_laws`` finds
each budget's near-optimal region and fits the power laws (no torch there).

- Compute: M = ``hparam_laws.non_embedding_flops_per_token`` of the model at ``seq_len``,
  D = the budget's training tokens (steps × batch × seq_len, the same D for every cell of a
  budget's grid), C = M·D.
- Schedule: linear warmup over the first 10 % of the steps (at least one), then cosine decay
  to 10 % of the peak at the last step (``schedules.warmup_cosine``, GPT-3's and LLaMA's shape),
  AdamW (β 0.9, 0.95, weight decay 0.1, clipping 1.0) as in the table.
- Held-out loss: the mean next-token loss over the last ``EVAL_TOKENS`` tokens of the corpus,
  cut into windows of ``seq_len``; training windows are drawn from the tokens before them.

``FULL`` and ``SMALL`` are the grids of ``scripts/sweep_batch_lr.py`` (``--small``: CI).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from .. import check
from ..cost import hparam_laws
from ..model.llama import Llama
from ..model.shapes import ModelShape, resolve
from . import schedules, settings, train

__all__ = ["EVAL_TOKENS", "FULL", "SMALL", "DATA", "held_out_loss", "run", "sweep", "load",
           "place_table"]

DATA = Path(__file__).resolve().parents[3] / "results" / "batch_lr_sweep.json"  # the full sweep
EVAL_TOKENS = 2**14  # held-out tokens: 256 windows of 64

# The grids. Budgets are training tokens D (C = M·D); batches in sequences of seq_len tokens.
FULL = {"shape": "tiny", "seq_len": 64, "budgets_tokens": (2**14, 2**15, 2**16, 2**17),
        "batch_sizes": (2, 4, 8, 16, 32), "peak_lrs": (2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2),
        "seed": 0}
SMALL = {"shape": "tiny", "seq_len": 32, "budgets_tokens": (2**11, 2**12),
         "batch_sizes": (4, 8), "peak_lrs": (4e-3, 1.6e-2), "seed": 0}


def held_out_loss(model: torch.nn.Module, tokens: torch.Tensor, seq_len: int) -> float:
    """Mean next-token loss (nats) of ``model`` over ``tokens`` cut into windows of seq_len
    (the remainder dropped), without gradients."""
    check.module("model", model)
    check.tensor("tokens", tokens, dim=1, floating=False)
    check.integer("seq_len", seq_len, 2)
    n = tokens.numel() // seq_len
    if n < 1:
        raise ValueError(f"tokens: need at least seq_len={seq_len} tokens, got {tokens.numel()}")
    ids = tokens[: n * seq_len].view(n, seq_len)
    was = model.training
    model.eval()
    with torch.no_grad():
        loss = float(model(ids, labels=ids).loss)
    model.train(was)
    return loss


def run(shape: ModelShape | str, *, budget_tokens: int, batch_size: int, peak_lr: float,
        seq_len: int, tokens: torch.Tensor, eval_tokens: torch.Tensor, seed: int = 0) -> dict:
    """One cell of the grid: train ``shape`` on ``tokens`` for budget_tokens // (batch·seq_len)
    steps (warmup 10 %, cosine to peak/10), then score it on ``eval_tokens``. Returns a plain
    dict: budget_tokens, seq_len, batch_size, batch_tokens, peak_lr, steps, flops_per_token,
    compute_flops, eval_loss, train_loss (mean of the last 10 % of steps), seconds."""
    shape = resolve(shape, "shape")
    check.integer("budget_tokens", budget_tokens, 1)
    check.integer("batch_size", batch_size, 1)
    check.positive_number("peak_lr", peak_lr)
    check.integer("seq_len", seq_len, 2)
    steps = budget_tokens // (batch_size * seq_len)
    if steps < 2 or steps * batch_size * seq_len != budget_tokens:
        raise ValueError(f"budget_tokens={budget_tokens} must be a multiple of batch_size × seq_len "
                         f"= {batch_size * seq_len}, at least 2 steps of it")
    warmup = max(1, steps // 10)

    def lr(step: int) -> float:
        return schedules.warmup_cosine(step, peak_lr=peak_lr, warmup_steps=warmup,
                                       total_steps=steps - 1, min_lr=peak_lr / 10)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Llama(shape)
    start = time.perf_counter()
    hist = train.train(model, steps=steps, batch_size=batch_size, seq_len=seq_len,
                       lr_schedule=lr, tokens=tokens, seed=seed)
    loss = held_out_loss(model, eval_tokens, seq_len)
    seconds = time.perf_counter() - start
    m = hparam_laws.non_embedding_flops_per_token(shape.num_layers, shape.hidden_size, seq_len)
    tail = hist.loss[-max(1, steps // 10):]
    return {"budget_tokens": budget_tokens, "seq_len": seq_len, "batch_size": batch_size,
            "batch_tokens": batch_size * seq_len, "peak_lr": peak_lr, "steps": steps,
            "flops_per_token": m, "compute_flops": float(m * budget_tokens),
            "eval_loss": loss if math.isfinite(loss) else float("inf"),
            "train_loss": sum(tail) / len(tail), "seconds": round(seconds, 3)}


def sweep(shape: ModelShape | str = "tiny", *, budgets_tokens: Sequence[int],
          batch_sizes: Sequence[int], peak_lrs: Sequence[float], seq_len: int = 64,
          seed: int = 0, progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Every (budget, batch, lr) of the grid, budgets outer, one ``run`` each, on one corpus
    (``train.corpus`` of max budget + EVAL_TOKENS tokens, seeded; its last EVAL_TOKENS held
    out). ``progress(record)`` is called after each run. Returns the records in order."""
    shape = resolve(shape, "shape")
    budgets = check.sequence("budgets_tokens", budgets_tokens, nonempty=True,
                             item=check.positive_int)
    batches = check.sequence("batch_sizes", batch_sizes, nonempty=True, item=check.positive_int)
    lrs = check.sequence("peak_lrs", peak_lrs, nonempty=True, item=check.positive_number)
    check.integer("seq_len", seq_len, 2)
    check.integer("seed", seed, 0)
    check.optional(check.function, "progress", progress)
    n_train = max(max(budgets), 64 * seq_len)
    tokens = train.corpus(n_train + EVAL_TOKENS, shape.vocab_size, seed)
    train_tokens, eval_tokens = tokens[:n_train], tokens[n_train:]
    records = []
    for d in budgets:
        for b in batches:
            for lr in lrs:
                r = run(shape, budget_tokens=d, batch_size=b, peak_lr=lr, seq_len=seq_len,
                        tokens=train_tokens, eval_tokens=eval_tokens, seed=seed)
                records.append(r)
                if progress is not None:
                    progress(r)
    return records


def load(path: str | Path | None = None) -> dict:
    """The sweep written by scripts/sweep_batch_lr.py (default ``DATA``, the committed full
    grid): its provenance (command, seed, torch, cpu, seconds, ...) and ``records``."""
    path = DATA if path is None else path
    if not isinstance(path, (str, Path)):
        check.fail("path", "a path to a .json file", path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"path: cannot read a sweep from {str(path)!r}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise ValueError(f"path: {str(path)!r} holds no 'records' list")
    return data


def place_table(table: Sequence[settings.Setting] = settings.TABLE) -> list[dict]:
    """The slides' LLMs on DeepSeek's curves: ``hparam_laws.place`` for every row of ``table``
    that ``hparam_laws.TRAINING_RUNS`` sizes, with the row's final batch (the paper's
    sequences × length where the settings record it, else the slide's tokens) and peak lr."""
    runs = {r.model: r for r in hparam_laws.TRAINING_RUNS}
    out = []
    for s in table:
        if not isinstance(s, settings.Setting):
            check.fail("table", "a sequence of settings.Setting rows", s)
        r = runs.get(s.model)
        if r is None or s.peak_lr is None or s.batch_tokens_end is None:
            continue
        batch = s.paper_batch_tokens or s.batch_tokens_end
        out.append(hparam_laws.place(r, batch, s.peak_lr))
    return out
