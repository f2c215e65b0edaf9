"""Adam's update and weight decay, written out and measured (notebook 13, §2).

- ``adam_update``: one Adam step in SymPy, with the decay λw added to the gradient (Adam + L2,
  ``torch.optim.Adam(weight_decay=λ)``) or applied to the weight outside m̂/√v̂ (AdamW,
  Loshchilov and Hutter 2019; ``torch.optim.AdamW``). tests/test_optimizers.py evaluates both
  against torch's optimizers over several steps.
- A weight whose loss gradient is zero: AdamW multiplies it by (1 − ηλ) per step, exactly
  (``decay_factor``); Adam + L2 normalises the decay gradient λw to a step of about η whatever
  λ (``adam_l2_shrunk_norm``). ``unused_rows`` measures both on the embedding rows of tokens a
  corpus never uses.
- β₂'s memory: ``adam_updates`` is Adam's update m̂_t/(√v̂_t + ε) in closed form for a gradient
  stream made of constant pieces (a spike is three pieces, a jump two); ``adam_updates_measured``
  runs ``torch.optim.Adam`` on the same stream (float64: equal to rounding).
  ``recovery_steps`` and ``half_life_steps`` are the long-run formulas read off it.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import sympy as sp
import torch

from .. import check
from ..model.llama import Llama
from ..model.shapes import get as get_shape
from .train import corpus, train

__all__ = ["adam_update", "decay_factor", "half_life_steps", "adam_l2_shrunk_norm", "RowsTrace",
           "unused_rows", "adam_updates", "adam_updates_measured", "recovery_steps"]


def _beta(name: str, value) -> float:
    check.number(name, value, 0)
    if not value < 1:
        check.fail(name, "a number in [0, 1)", value)
    return float(value)


# --- the update, symbolic -------------------------------------------------------------------

def adam_update(decoupled: bool) -> dict:
    """Step t of Adam on one weight w with loss gradient g and state (m_{t−1}, v_{t−1}):

        ĝ = g + λw (L2; ``decoupled=False``)  or  ĝ = g (AdamW; ``decoupled=True``)
        m = β₁m_{t−1} + (1−β₁)ĝ,   v = β₂v_{t−1} + (1−β₂)ĝ²
        Δw = −η·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)   [− ηλw for AdamW]

    Returns {"m", "v", "update"} (SymPy expressions) and "symbols" (name -> Symbol: w, g,
    m_prev, v_prev, t, eta, lam, beta1, beta2, eps). Kingma & Ba 2015 with the
    decay as torch applies it (arXiv 1412.6980); checked step by step against torch.optim.Adam(weight_decay=λ)
    and torch.optim.AdamW: tests/test_optimizers.py::test_symbolic_update_is_torchs."""
    check.boolean("decoupled", decoupled)
    w, g = sp.symbols("w g", real=True)
    m_prev = sp.Symbol("m_{t-1}", real=True)
    v_prev = sp.Symbol("v_{t-1}", nonnegative=True)
    t = sp.Symbol("t", positive=True, integer=True)
    eta, lam, b1, b2, eps = sp.symbols("eta lambda beta_1 beta_2 epsilon", positive=True)
    grad = g if decoupled else g + lam * w
    m = b1 * m_prev + (1 - b1) * grad
    v = b2 * v_prev + (1 - b2) * grad**2
    update = -eta * (m / (1 - b1**t)) / (sp.sqrt(v / (1 - b2**t)) + eps)
    if decoupled:
        update = -eta * lam * w + update
    names = dict(w=w, g=g, m_prev=m_prev, v_prev=v_prev, t=t, eta=eta, lam=lam, beta1=b1,
                 beta2=b2, eps=eps)
    return {"m": m, "v": v, "update": update, "symbols": names}


# --- weights the loss does not touch --------------------------------------------------------

def decay_factor(lr: float, weight_decay: float, steps: int = 1) -> float:
    """(1 − ηλ)^steps: what AdamW leaves of a weight whose loss gradient is zero after
    ``steps`` steps at learning rate η (its m and v stay 0, so the update is the decay alone).
    Exact for torch.optim.AdamW: tests/test_optimizers.py::test_adamw_decays_an_untouched_weight_exactly."""
    check.positive_number("lr", lr)
    check.number("weight_decay", weight_decay, 0)
    check.integer("steps", steps, 0)
    if lr * weight_decay >= 1:
        check.fail("lr·weight_decay", "below 1 (else the weight changes sign every step)",
                   lr * weight_decay)
    return (1 - lr * weight_decay) ** steps


def half_life_steps(factor: float) -> float:
    """ln 2 / (−ln factor): steps after which factor^k = 1/2. A decay per step (1 − ηλ), or
    β₂: the weight of a gradient in v halves every half_life_steps(β₂) steps (13.5 at 0.95,
    692.8 at 0.999). Closed form."""
    check.number("factor", factor, 0, positive=True)
    if not factor < 1:
        check.fail("factor", "a number in (0, 1)", factor)
    return math.log(2) / -math.log(factor)


def adam_l2_shrunk_norm(w0: torch.Tensor, lr: float, steps: int) -> float:
    """‖max(|w₀| − η·steps, 0)‖₂: the norm Adam + L2 leaves of weights w₀ whose loss gradient
    is zero, in the approximation that each step moves each weight by η towards 0 (the decay
    gradient λw is the only gradient, so m̂/√v̂ = sign(w) at step 1, and stays near it while w
    changes slowly). λ drops out. Near 0 the weights oscillate with an amplitude about η (not
    modelled). Measured: tests/test_optimizers.py::test_adam_l2_moves_an_untouched_weight_by_lr."""
    check.tensor("w0", w0, floating=True)
    check.positive_number("lr", lr)
    check.integer("steps", steps, 0)
    return float((w0.double().abs() - lr * steps).clamp(min=0).norm())


class RowsTrace(NamedTuple):
    """``unused_rows``' record: per step s = 0..steps (s = weights after s updates; the loss
    of step s, 0-based, has ``steps`` entries), the norm of the embedding rows of tokens the
    corpus never uses and of those it uses; their initial values ``w0_unused``."""

    unused_norm: list[float]
    used_norm: list[float]
    loss: list[float]
    w0_unused: torch.Tensor


def unused_rows(optimizer: str, *, steps: int, lr: float, used_vocab: int = 192,
                weight_decay: float = 0.1, batch_size: int = 4, seq_len: int = 32,
                seed: int = 0) -> RowsTrace:
    """Train the ``tiny`` Llama (V = 256, untied input embedding) with ``train`` on
    ``corpus(2**15, vocab_size=used_vocab, seed)``: tokens used_vocab..V−1 never occur, so their
    input-embedding rows get a zero loss gradient and only the weight decay moves them.
    ``optimizer``: "adamw" or "adam_l2"; constant ``lr``. Records the rows' norms before every
    step (``batch_transform`` is called before each step's forward) and after the last."""
    check.one_of("optimizer", optimizer, ("adamw", "adam_l2"))
    check.integer("steps", steps, 1)
    shape = get_shape("tiny")
    check.integer("used_vocab", used_vocab, 4, shape.vocab_size - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Llama(shape)
    assert not shape.tie_embeddings  # the output layer would give every row a gradient
    emb = model.model.embed_tokens.weight
    w0 = emb.detach()[used_vocab:].clone()
    unused, used = [], []

    def record():
        with torch.no_grad():
            unused.append(float(emb[used_vocab:].norm()))
            used.append(float(emb[:used_vocab].norm()))

    def hook(step, batch):
        record()
        return batch

    tokens = corpus(2**15, vocab_size=used_vocab, seed=seed)
    hist = train(model, steps=steps, batch_size=batch_size, seq_len=seq_len, peak_lr=lr,
                 optimizer=optimizer, weight_decay=weight_decay, tokens=tokens, seed=seed,
                 batch_transform=hook)
    record()
    return RowsTrace(unused, used, hist.loss, w0)


# --- β₂: the second moment's memory ---------------------------------------------------------

def _pieces(pieces) -> list[tuple[float, int]]:
    def piece(name, p):
        if not (isinstance(p, (tuple, list)) and len(p) == 2):
            check.fail(name, "a (gradient, steps) pair", p)
        check.number(f"{name}[0]", p[0])
        check.integer(f"{name}[1]", p[1], 1)
        return float(p[0]), int(p[1])
    return [piece(f"pieces[{i}]", p) for i, p in
            enumerate(check.sequence("pieces", pieces, nonempty=True))]


def adam_updates(pieces: Sequence[tuple[float, int]], beta1: float = 0.9, beta2: float = 0.95,
                 eps: float = 0.0) -> list[float]:
    """Adam's update m̂_t/(√v̂_t + ε) (lr 1, no decay) at every step t = 1..n of a gradient
    stream of constant pieces [(c₁, n₁), (c₂, n₂), ...], in closed form: a piece c over steps
    a..b contributes c·(β₁^(t−min(t,b)) − β₁^(t−a+1)) to m_t (t ≥ a; the geometric sum of
    (1−β₁)β₁^(t−i)c), and c² with β₂ to v_t; m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ) (Kingma & Ba 2015,
    arXiv 1412.6980). Equal to torch.optim.Adam to rounding:
    tests/test_optimizers.py::test_closed_form_updates_equal_torch_adam."""
    ps = _pieces(pieces)
    b1, b2 = _beta("beta1", beta1), _beta("beta2", beta2)
    check.number("eps", eps, 0)
    spans, a = [], 1
    for c, n in ps:
        spans.append((c, a, a + n - 1))
        a += n
    out = []
    for t in range(1, a):
        m = v = 0.0
        for c, lo, hi in spans:
            if lo > t:
                break
            top = min(t, hi)
            m += c * (b1 ** (t - top) - b1 ** (t - lo + 1))
            v += c * c * (b2 ** (t - top) - b2 ** (t - lo + 1))
        out.append((m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps))
    return out


def adam_updates_measured(pieces: Sequence[tuple[float, int]], beta1: float = 0.9,
                          beta2: float = 0.95, eps: float = 0.0) -> list[float]:
    """The same updates measured: ``torch.optim.Adam`` (lr 1, float64) on one weight fed the
    stream's gradients; entry t−1 is θ_{t−1} − θ_t."""
    ps = _pieces(pieces)
    b1, b2 = _beta("beta1", beta1), _beta("beta2", beta2)
    check.number("eps", eps, 0)
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.Adam([p], lr=1.0, betas=(b1, b2), eps=eps)
    out = []
    for c, n in ps:
        grad = torch.full((1,), c, dtype=torch.float64)
        for _ in range(n):
            before = float(p.detach())
            p.grad = grad.clone()
            opt.step()
            out.append(before - float(p.detach()))
    return out


def recovery_steps(beta2: float, ratio: float, fraction: float) -> float:
    """Steps k after one gradient ``ratio`` times the usual size g until the update is back to
    ``fraction`` of its usual size, in the long run (bias corrections 1) and once m has
    forgotten the spike (β₁ᵏ ≪ 1): the spike leaves (1−β₂)β₂ᵏ(r²−1)g² in v, so the update is
    1/√(1 + (1−β₂)β₂ᵏ(r²−1)) and k = ln[(1/f² − 1)/((1−β₂)(r²−1))] / ln β₂ (0 if the update
    never falls that low). Checked against ``adam_updates``: tests/test_optimizers.py."""
    b2 = _beta("beta2", beta2)
    check.number("ratio", ratio, 1, finite=True)
    check.number("fraction", fraction, 0, 1, positive=True)
    if fraction >= 1 or b2 == 0 or ratio == 1:
        if fraction >= 1:
            check.fail("fraction", "a number in (0, 1)", fraction)
        return 0.0
    k = math.log((1 / fraction**2 - 1) / ((1 - b2) * (ratio**2 - 1))) / math.log(b2)
    return max(k, 0.0)
