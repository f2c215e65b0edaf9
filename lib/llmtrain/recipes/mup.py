"""The maximal-update parametrisation (μP) of the reference Llama trained with Adam, beside the
standard parametrisation (SP) it is compared with (notebook 13, §5).

Yang et al. 2022, "Tensor Programs V" (arXiv 2203.03466), as the ``mup`` package implements it
for Adam (microsoft/mup: ``MuReadout`` in mup/layer.py, ``MuAdam`` in mup/optim.py,
``constant_std_init_`` in mup/init.py). Width multiplier m = d_model / base_d_model; the base
model (m = 1) is the SP model itself, exactly.

    parameter                      init std            Adam lr     weight decay   output
    embedding, norm gains, biases  as SP (0.02; γ=1)   lr          as SP          -
    hidden matrices (q k v o,      0.02 / √m           lr / m      wd · m         -
      gate up down)
    readout (lm_head)              as SP (0.02)        lr          as SP          logits · 1/m

- Hidden matrices: every fan-in grows with m, so their init std falls as 1/√fan_in relative to
  the base (mup's ``constant_std_init_``: std · width_mult^-1/2) and their Adam lr as 1/m
  (``MuAdam``: lr / width_mult). Their weight decay is multiplied by m, as ``MuAdam`` does
  unless ``decoupled_wd``: with torch's AdamW the step's shrink lr·wd is then unchanged.
- Readout: ``MuReadout`` multiplies its input by 1/m (here the logits, the same for a layer
  without bias), keeps a width-independent init (our 0.02 already is) and, being vector-like
  (one infinite dimension), keeps the lr. We keep the Llama's random readout rather than mup's
  optional zero init so that μP at m = 1 is the SP model bit for bit
  (tests/test_mup.py::test_mup_at_base_width_trains_exactly_like_sp).
- Attention: the head width d_head stays fixed and the number of heads grows with the width
  (``width_shape``), so the 1/√d_head scale of the scores never changes; μP's 1/d_head rule is
  about growing d_head and does not arise.

``coord_check`` runs the package's coordinate check; ``transfer_sweep`` the learning-rate grid
(scripts/sweep_mup.py writes it to results/mup_transfer.json).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .. import check
from ..model.llama import Llama
from ..model.shapes import ModelShape, resolve
from .train import batches, corpus, train

__all__ = ["PARAMETRISATIONS", "INIT_STD", "width_shape", "rules", "build", "param_groups",
           "readout_mult", "coord_check", "heldout_loss", "transfer_sweep", "best_lrs",
           "TRANSFER_FILE", "load_transfer"]

PARAMETRISATIONS = ("sp", "mup")
INIT_STD = 0.02  # the Llama's init_weights default (transformers' initializer_range)
# what scripts/sweep_mup.py writes, in a clone of the repository (not installed with the package)
TRANSFER_FILE = Path(__file__).resolve().parents[3] / "results" / "mup_transfer.json"
HIDDEN = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def width_shape(d_model: int, base: ModelShape | str = "tiny") -> ModelShape:
    """``base`` at width d_model: heads = d_model / d_head (d_head fixed), key/value heads and
    the MLP width scaled by the same m = d_model / base.hidden_size; depth, vocabulary and
    context unchanged. Each of these must come out a whole number."""
    base = resolve(base, "base")
    check.integer("d_model", d_model, 1)
    if base.tie_embeddings:
        raise ValueError("base must have untied embeddings (a tied readout needs mup's "
                         "MuSharedReadout; not implemented)")
    d = base.d_head
    sizes = {"num_heads": (d_model, d),
             "num_kv_heads": (d_model * base.num_kv_heads, d * base.num_heads),
             "intermediate_size": (d_model * base.intermediate_size, base.hidden_size)}
    for field, (num, den) in sizes.items():
        if num % den:
            raise ValueError(f"d_model={d_model} gives a fractional {field} ({num}/{den}) for "
                             f"base {base.name!r} (d_head={d}): take a multiple of "
                             f"{_multiple(base)}")
    return base.replace(hidden_size=d_model, num_heads=d_model // d,
                        num_kv_heads=sizes["num_kv_heads"][0] // sizes["num_kv_heads"][1],
                        intermediate_size=sizes["intermediate_size"][0] // base.hidden_size,
                        head_dim=d, name=f"{base.name}-d{d_model}")


def _multiple(base: ModelShape) -> int:
    out = base.d_head * base.num_heads // base.num_kv_heads
    return math.lcm(out, base.hidden_size // math.gcd(base.hidden_size, base.intermediate_size))


def rules(m: float, parametrisation: str = "mup", std: float = INIT_STD) -> dict[str, dict]:
    """Per kind of parameter ("embedding", "hidden", "norm", "readout"): init std (None for
    norm gains, which start at 1), Adam lr multiplier, weight-decay multiplier, and the
    readout's output multiplier, at width multiplier m. SP: all as at m = 1. μP: the table of
    the module docstring (the mup package: MuReadout, MuAdam, constant_std_init_)."""
    check.positive_number("m", m)
    check.one_of("parametrisation", parametrisation, PARAMETRISATIONS)
    check.positive_number("std", std)
    mu = parametrisation == "mup"
    one = {"lr_scale": 1.0, "wd_scale": 1.0}
    return {"embedding": {"init_std": std, **one},
            "hidden": {"init_std": std / math.sqrt(m) if mu else std,
                       "lr_scale": 1 / m if mu else 1.0, "wd_scale": m if mu else 1.0},
            "norm": {"init_std": None, **one},
            "readout": {"init_std": std, **one, "output_mult": 1 / m if mu else 1.0}}


def _kind(name: str, p: nn.Parameter) -> str:
    if name.startswith("model.embed_tokens"):
        return "embedding"
    if name.startswith("lm_head"):
        return "readout"
    if p.dim() >= 2 and name.split(".")[-2] in HIDDEN:
        return "hidden"
    if p.dim() == 1:
        return "norm"  # norm gains and (if any) biases: vector-like, as mup treats them
    raise ValueError(f"parameter {name!r} of shape {tuple(p.shape)} is not one of the Llama's")


class _ReadoutMult:
    """Forward hook: logits · mult (mup's MuReadout, applied to the output)."""

    def __init__(self, mult: float):
        self.mult = mult

    def __call__(self, module, inputs, output):
        return output * self.mult


def readout_mult(model: nn.Module) -> float | None:
    """The μP output multiplier on ``model.lm_head`` set by ``build`` (None for an SP model)."""
    check.module("model", model, Llama)
    return getattr(model.lm_head, "mup_output_mult", None)


def build(d_model: int, parametrisation: str = "mup", base: ModelShape | str = "tiny",
          seed: int = 0) -> Llama:
    """A Llama of ``width_shape(d_model, base)``, weights seeded by ``seed`` (the global RNG is
    left alone). "sp": the Llama as it is. "mup": the same draws with the hidden matrices
    multiplied by 1/√m and the logits by 1/m (a forward hook on lm_head); train it with
    ``param_groups``."""
    check.one_of("parametrisation", parametrisation, PARAMETRISATIONS)
    check.integer("seed", seed, 0)
    base = resolve(base, "base")
    shape = width_shape(d_model, base)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Llama(shape)
    if parametrisation == "mup":
        r = rules(d_model / base.hidden_size, "mup")
        with torch.no_grad():
            for name, p in model.named_parameters():
                if _kind(name, p) == "hidden":
                    p.mul_(r["hidden"]["init_std"] / INIT_STD)
        mult = r["readout"]["output_mult"]
        model.lm_head.mup_output_mult = mult
        model.lm_head.register_forward_hook(_ReadoutMult(mult))
    return model


def param_groups(model: nn.Module, base_d_model: int, weight_decay: float = 0.0) -> list[dict]:
    """μP's Adam parameter groups for ``train(param_groups=...)`` (use functools.partial):
    hidden matrices lr_scale 1/m and weight decay wd·m; embedding and readout lr_scale 1 and
    wd; norm gains lr_scale 1, no decay (as ``train``'s default). m = d_model / base_d_model.
    The model must come from ``build(..., "mup")`` with that base (its readout multiplier 1/m)."""
    check.module("model", model, Llama)
    check.integer("base_d_model", base_d_model, 1)
    check.number("weight_decay", weight_decay, 0)
    m = model.shape.hidden_size / base_d_model
    mult = readout_mult(model)
    if mult is None or not math.isclose(mult, 1 / m):
        raise ValueError(f"model must be a μP model of base_d_model={base_d_model} from "
                         f"mup.build (readout multiplier 1/m = {1 / m:g}), got {mult}")
    r = rules(m, "mup")
    groups = {k: {"params": [], "lr_scale": r[k]["lr_scale"],
                  "weight_decay": 0.0 if k == "norm" else weight_decay * r[k]["wd_scale"]}
              for k in ("embedding", "hidden", "norm", "readout")}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[_kind(name, p)]["params"].append(p)
    return [dict(g, kind=k) for k, g in groups.items() if g["params"]]


# --- the coordinate check --------------------------------------------------------------------

def coord_check(widths: Sequence[int], parametrisation: str, *, lr: float = 1e-2,
                steps: int = 4, batch_size: int = 4, seq_len: int = 32,
                base: ModelShape | str = "tiny", seed: int = 0) -> list[dict]:
    """mup's coordinate check: for each width, train ``steps`` Adam steps at the constant ``lr``
    (no clipping, no decay) and measure, before each step and after the last (step 0 .. steps),
    the RMS of the embedding output, of each block's output and of the logits on one fixed
    probe batch. Records {"width", "step", "where", "rms"}; where is "embedding", "block i" or
    "logits". Under SP the logits and blocks grow with width after a step or two; under μP
    they do not."""
    check.sequence("widths", widths, nonempty=True, item=check.positive_int)
    check.one_of("parametrisation", parametrisation, PARAMETRISATIONS)
    check.positive_number("lr", lr)
    check.integer("steps", steps, 1)
    base = resolve(base, "base")
    out = []
    for width in widths:
        model = build(width, parametrisation, base, seed)
        tokens = corpus(2**14, base.vocab_size, seed)
        probe = next(batches(tokens, batch_size, seq_len, seed + 1))

        def measure(step):
            out.extend({"width": width, "step": step, "where": w, "rms": r}
                       for w, r in _rms(model, probe).items())

        def before_step(step, batch):
            measure(step)
            return batch

        groups = None if parametrisation == "sp" else (
            lambda mdl: param_groups(mdl, base.hidden_size, 0.0))
        train(model, steps=steps, batch_size=batch_size, seq_len=seq_len, peak_lr=lr,
              weight_decay=0.0, grad_clip=None, param_groups=groups, seed=seed, tokens=tokens,
              batch_transform=before_step)
        measure(steps)
    return out


@torch.no_grad()
def _rms(model: Llama, ids: torch.Tensor) -> dict[str, float]:
    seen: dict[str, float] = {}

    def hook(name):
        return lambda mod, inp, out: seen.__setitem__(name, float(out.pow(2).mean().sqrt()))

    handles = [model.model.embed_tokens.register_forward_hook(hook("embedding"))]
    handles += [layer.register_forward_hook(hook(f"block {i}"))
                for i, layer in enumerate(model.model.layers)]
    try:
        logits = model(ids).logits
    finally:
        for h in handles:
            h.remove()
    seen["logits"] = float(logits.pow(2).mean().sqrt())
    return seen


# --- learning-rate transfer --------------------------------------------------------------------

@torch.no_grad()
def heldout_loss(model: Llama, tokens: torch.Tensor, batch_size: int = 16, seq_len: int = 64,
                 n_batches: int = 4, seed: int = 1) -> float:
    """Mean next-token loss of ``model`` on ``n_batches`` windows of ``tokens`` (held out)."""
    check.module("model", model, Llama)
    check.integer("n_batches", n_batches, 1)
    data = batches(tokens, batch_size, seq_len, seed)
    return sum(float(model(b, labels=b).loss) for b in (next(data) for _ in range(n_batches))
               ) / n_batches


def transfer_sweep(widths: Sequence[int], lrs: Sequence[float],
                   parametrisations: Sequence[str] = PARAMETRISATIONS, *, steps: int = 200,
                   batch_size: int = 8, seq_len: int = 64, base: ModelShape | str = "tiny",
                   seed: int = 0, n_tokens: int = 2**18, progress: bool = False) -> list[dict]:
    """For each parametrisation × width × lr: train ``build(width, p, base, seed)`` for
    ``steps`` AdamW steps at the constant lr (weight decay 0, clipping at 1.0) on the first 7/8
    of ``corpus(n_tokens)``, then ``heldout_loss`` on the last 1/8. Records
    {"parametrisation", "width", "lr", "train_loss" (last 10 steps' mean), "heldout_loss"};
    a run that diverges records None for its loss (a non-finite loss)."""
    check.sequence("widths", widths, nonempty=True, item=check.positive_int)
    check.sequence("lrs", lrs, nonempty=True, item=check.positive_number)
    check.sequence("parametrisations", parametrisations, nonempty=True)
    for p in parametrisations:
        check.one_of("parametrisations", p, PARAMETRISATIONS)
    check.integer("steps", steps, 1)
    check.integer("n_tokens", n_tokens, 64)
    base = resolve(base, "base")
    tokens = corpus(n_tokens, base.vocab_size, seed)
    cut = n_tokens * 7 // 8
    train_tokens, held = tokens[:cut], tokens[cut:]
    out = []
    for p in parametrisations:
        for width in widths:
            for lr in lrs:
                model = build(width, p, base, seed)
                groups = None if p == "sp" else (
                    lambda mdl: param_groups(mdl, base.hidden_size, 0.0))
                hist = train(model, steps=steps, batch_size=batch_size, seq_len=seq_len,
                             peak_lr=lr, weight_decay=0.0, param_groups=groups, seed=seed,
                             tokens=train_tokens)
                last = hist.loss[-10:]
                rec = {"parametrisation": p, "width": width, "lr": lr,
                       "train_loss": _finite(sum(last) / len(last)),
                       "heldout_loss": _finite(heldout_loss(model, held, seq_len=seq_len))}
                out.append(rec)
                if progress:
                    print(f"{p:>3} width {width:>4} lr {lr:.2e}: held-out loss "
                          f"{rec['heldout_loss']:.4f}", flush=True)
    return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def best_lrs(records: Sequence[dict]) -> dict[tuple[str, int], float]:
    """{(parametrisation, width): the lr of the lowest held-out loss} from ``transfer_sweep``
    records (ties: the smaller lr; diverged runs, loss None, never win)."""
    check.sequence("records", records, nonempty=True)
    best: dict[tuple[str, int], tuple[float, float]] = {}
    for r in records:
        if r["heldout_loss"] is None:
            continue
        key = (r["parametrisation"], r["width"])
        cand = (r["heldout_loss"], r["lr"])
        if key not in best or cand < best[key]:
            best[key] = cand
    return {k: lr for k, (_, lr) in best.items()}


def load_transfer(path: str | Path | None = None) -> dict:
    """The sweep's JSON (default ``TRANSFER_FILE``): grid, records, seconds, cpu, torch,
    command, seed. FileNotFoundError, saying how to make it, if there is none."""
    path = TRANSFER_FILE if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: it is in a clone of the repository, or run "
                                "python scripts/sweep_mup.py (minutes) to write it")
    return json.loads(path.read_text(encoding="utf-8"))
