"""Batch size and learning rate as power laws of compute: DeepSeek LLM's scaling laws of
hyperparameters (DeepSeek-AI 2024, arXiv 2401.02954, §3.1), as arithmetic a reader can redo.

- Compute: ``C = M·D`` FLOPs, where D is the number of training tokens and M the
  non-embedding FLOPs per token, ``M = 72·n_layer·d_model² + 12·n_layer·d_model·l_seq``
  (§3.2, Eq. 2; it counts attention's cost, not the vocabulary's).
- The laws (§3.1, Eq. 1): ``η_opt = 0.3118·C^−0.1250`` and ``B_opt = 0.2920·C^0.3271``
  (B in tokens), fitted to the "near-optimal" runs of a grid: those whose generalization error
  exceeded the minimum by no more than 0.25 % (§3.1, Fig. 3's caption).
- ``fit_power_law``: least squares in log space, pure Python; ``near_optimal`` and
  ``fit_hparam_laws``: DeepSeek's method applied to a grid of runs (plain dicts).
- ``TRAINING_RUNS``: the shapes and training tokens of some of the slides' LLMs, each with the
  place it was read, to put them on DeepSeek's curves (``place``).

No torch: the records come from ``llmtrain.recipes.sweep`` (or ``results/batch_lr_sweep.json``).
"""

from __future__ import annotations

import math
from typing import Iterable, NamedTuple, Sequence

from .. import check
from ..model import shapes

__all__ = ["DEEPSEEK_LAWS", "NEAR_OPTIMAL_TOLERANCE", "PowerLaw", "non_embedding_flops_per_token",
           "compute_flops", "deepseek_lr", "deepseek_batch_tokens", "fit_power_law",
           "near_optimal", "fit_hparam_laws", "TrainingRun", "TRAINING_RUNS", "place"]


class PowerLaw(NamedTuple):
    """y = coefficient · x^exponent, with where it comes from."""

    coefficient: float
    exponent: float
    source: str = ""

    def __call__(self, x: float) -> float:
        """The law's value at x (x > 0)."""
        check.positive_number("x", x)
        return self.coefficient * x ** self.exponent


# DeepSeek-AI 2024, §3.1, Eq. 1 (read in two transcriptions of arXiv 2401.02954v1).
DEEPSEEK_LAWS: dict[str, PowerLaw] = {
    "lr": PowerLaw(0.3118, -0.1250, "DeepSeek-AI 2024, §3.1, Eq. 1: η_opt = 0.3118·C^−0.1250"),
    "batch_tokens": PowerLaw(0.2920, 0.3271,
                             "DeepSeek-AI 2024, §3.1, Eq. 1: B_opt = 0.2920·C^0.3271 (tokens)"),
}
# DeepSeek-AI 2024, §3.1 and Fig. 3's caption: near-optimal = generalization error within 0.25 %
# of the minimum.
NEAR_OPTIMAL_TOLERANCE = 0.0025


def non_embedding_flops_per_token(n_layer: int, d_model: int, seq_len: int) -> int:
    """M = 72·n_layer·d_model² + 12·n_layer·d_model·l_seq, DeepSeek's model scale in FLOPs per
    token (forward and backward, attention included, vocabulary excluded).

    Source: DeepSeek-AI 2024, §3.2, Eq. 2; Table 3 lists M = 9.66B for 24 layers of 2048 at
    l_seq 4096 (tests/test_hparam_laws.py checks all seven rows of Table 3)."""
    check.integer("n_layer", n_layer, 1)
    check.integer("d_model", d_model, 1)
    check.integer("seq_len", seq_len, 1)
    return 72 * n_layer * d_model**2 + 12 * n_layer * d_model * seq_len


def compute_flops(flops_per_token: float, tokens: float) -> float:
    """C = M·D: compute budget in FLOPs. Source: DeepSeek-AI 2024, §3.2 ("C = MD")."""
    check.positive_number("flops_per_token", flops_per_token)
    check.positive_number("tokens", tokens)
    return flops_per_token * tokens


def deepseek_lr(compute: float) -> float:
    """η_opt = 0.3118·C^−0.1250. Source: DeepSeek-AI 2024, §3.1, Eq. 1."""
    check.positive_number("compute", compute)
    return DEEPSEEK_LAWS["lr"](compute)


def deepseek_batch_tokens(compute: float) -> float:
    """B_opt = 0.2920·C^0.3271 tokens per step. Source: DeepSeek-AI 2024, §3.1, Eq. 1."""
    check.positive_number("compute", compute)
    return DEEPSEEK_LAWS["batch_tokens"](compute)


def fit_power_law(xs: Sequence[float], ys: Sequence[float]) -> PowerLaw:
    """Least-squares line through (ln x, ln y): ln y = ln a + b·ln x, returned as a·x^b.

    Ordinary least squares in closed form (slope = cov/var). Checked on exact synthetic data
    (tests/test_hparam_laws.py::test_fit_power_law_recovers_an_exact_law)."""
    xs = check.sequence("xs", xs, item=check.positive_number)
    ys = check.sequence("ys", ys, item=check.positive_number)
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys must have the same length, got {len(xs)} and {len(ys)}")
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    if len(set(lx)) < 2:
        raise ValueError("xs must hold at least two different values to fit a power law")
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    slope = (sum((a - mx) * (b - my) for a, b in zip(lx, ly))
             / sum((a - mx) ** 2 for a in lx))
    return PowerLaw(math.exp(my - slope * mx), slope, "least squares in log space")


def _records(records) -> list[dict]:
    def record(name, r):
        if not isinstance(r, dict):
            check.fail(name, "a dict (a run of the sweep)", r)
        return r
    return list(check.sequence("records", records, nonempty=True, item=record))


def near_optimal(records: Iterable[dict], tolerance: float = NEAR_OPTIMAL_TOLERANCE, *,
                 key: str = "eval_loss") -> list[dict]:
    """The runs whose ``key`` is at most (1 + tolerance) × the smallest finite one: DeepSeek's
    near-optimal region of one compute budget's grid (runs with a non-finite loss never are).

    Source: DeepSeek-AI 2024, §3.1 (tolerance 0.25 %)."""
    records = _records(records)
    check.number("tolerance", tolerance, 0)
    losses = [r.get(key) for r in records]
    if not all(isinstance(v, (int, float)) for v in losses):
        raise ValueError(f"key: every record must hold a number under {key!r}")
    finite = [v for v in losses if math.isfinite(v)]
    if not finite:
        raise ValueError(f"records: no run has a finite {key!r}")
    bound = min(finite) * (1 + tolerance)
    return [r for r, v in zip(records, losses) if math.isfinite(v) and v <= bound]


def fit_hparam_laws(records: Iterable[dict], tolerance: float = NEAR_OPTIMAL_TOLERANCE, *,
                    key: str = "eval_loss") -> dict:
    """DeepSeek's method on a grid of runs: group by ``compute_flops``, keep each budget's
    near-optimal runs, fit ``batch_tokens`` and ``peak_lr`` against compute through all of
    them (the grey circles of their Fig. 3), and return
    {"lr": PowerLaw, "batch_tokens": PowerLaw, "near_optimal": {C: [runs]}}.

    Source: DeepSeek-AI 2024, §3.1; tests/test_hparam_laws.py::test_fit_hparam_laws_on_a_grid."""
    records = _records(records)
    budgets: dict[float, list[dict]] = {}
    for r in records:
        if "compute_flops" not in r:
            raise ValueError("records: every run must hold 'compute_flops'")
        budgets.setdefault(r["compute_flops"], []).append(r)
    if len(budgets) < 2:
        raise ValueError(f"records must span at least two compute budgets, got {len(budgets)}")
    near = {c: near_optimal(rs, tolerance, key=key) for c, rs in sorted(budgets.items())}
    cs = [c for c, rs in near.items() for _ in rs]
    return {"lr": fit_power_law(cs, [r["peak_lr"] for rs in near.values() for r in rs]),
            "batch_tokens": fit_power_law(cs, [r["batch_tokens"] for rs in near.values()
                                               for r in rs]),
            "near_optimal": near}


class TrainingRun(NamedTuple):
    """The size of one trained LLM of the slides' table: enough for M and C."""

    model: str  # the name in llmtrain.recipes.settings.TABLE
    n_layer: int
    d_model: int
    seq_len: int
    tokens: float  # training tokens
    shape: str | None  # the llmtrain.model.shapes name, where the registry has it
    source: str  # where n_layer, d_model, seq_len and tokens were read


def _registry(name: str) -> tuple[int, int, int]:
    s = shapes.resolve(name)
    return s.num_layers, s.hidden_size, s.max_seq_len


TRAINING_RUNS: tuple[TrainingRun, ...] = (
    TrainingRun("GPT-3", 96, 12288, 2048, 300e9, None,
                "Brown et al. 2020, Table 2.1 (GPT-3 175B: n_layers 96, d_model 12288; caption: "
                "'All models were trained for a total of 300 billion tokens') and §2.1 (context "
                "window of 2048 tokens)"),
    TrainingRun("LLaMA-2", *_registry("llama2-70b"), 2.0e12, "llama2-70b",
                "shape: the registry's llama2-70b (80 layers, 8192, context 4096); tokens: "
                "github.com/meta-llama/llama MODEL_CARD.md (Llama 2 70B: 2.0T tokens, 'global "
                "batch-size of 4M tokens')"),
    TrainingRun("DeepSeek", 95, 8192, 4096, 2.0e12, None,
                "DeepSeek-AI 2024, Table 2 (67B: 95 layers, d_model 8192, context 4096, "
                "2.0T tokens)"),
)


def place(run: TrainingRun, batch_tokens: float, peak_lr: float) -> dict:
    """One trained LLM on DeepSeek's curves: M, C = M·D, the laws' B_opt and η_opt, and the
    ratios of the run's own batch (tokens) and peak learning rate to them.

    Source: DeepSeek-AI 2024, §3.1 Eq. 1 and §3.2 Eq. 2; DeepSeek 67B's own point is checked
    in tests/test_hparam_laws.py::test_deepseek_67b_lies_near_its_own_law."""
    if not isinstance(run, TrainingRun):
        check.fail("run", "a TrainingRun", run)
    check.positive_number("batch_tokens", batch_tokens)
    check.positive_number("peak_lr", peak_lr)
    m = non_embedding_flops_per_token(run.n_layer, run.d_model, run.seq_len)
    c = compute_flops(m, run.tokens)
    b_opt, lr_opt = deepseek_batch_tokens(c), deepseek_lr(c)
    return {"model": run.model, "flops_per_token": m, "tokens": run.tokens, "compute_flops": c,
            "batch_tokens": batch_tokens, "peak_lr": peak_lr, "batch_opt_tokens": b_opt,
            "lr_opt": lr_opt, "batch_ratio": batch_tokens / b_opt, "lr_ratio": peak_lr / lr_opt}
