"""GaLore: gradient low-rank projection (梯度低秩投影).

Zhao et al. 2024, "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection"
(arXiv 2403.03507), Algorithm 2. For a weight W of shape (m, n) with gradient G:

1. every ``update_proj_gap`` steps (T, 200 in the paper) take the SVD G = U S Vᵀ and keep the
   top-r singular vectors of the smaller side: P = Vᵀ[:r] (r×n) when m >= n, P = U[:, :r]
   (m×r) when m < n (galore-torch's proj_type="std");
2. project: R = G Pᵀ (m×r) or R = Pᵀ G (r×n), and run Adam on R: its moments are r·max(m, n)
   numbers each, not m·n;
3. project Adam's update N = M / (√V + ε) back: α · N P or α · P N (α = ``scale``, 0.25 in
   the paper), and step the full weight with it.

The moments are not rotated when P changes: they keep their coordinates in the old subspace
(as in the paper and galore-torch). Checked in tests/test_galore.py against galore-torch 1.0
(``galore_torch.GaLoreAdamW``), whose AdamW is transformers' old one: ε is added to √V before
bias correction, and weight decay is p -= lr·wd·p *after* the update (torch.optim.AdamW
decays before it). We do the same, so the two agree. The byte rules (``state_numel``, which
matrices ``is_target``) have one home, ``llmtrain.cost.methods`` (torch-free, as
``galore_state_numel`` and ``galore_is_target``).
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch

from .. import check
from ..cost.methods import GALORE_TARGETS, galore_is_target
from ..cost.methods import galore_state_numel as state_numel

__all__ = ["Projector", "GaLoreAdamW", "state_numel", "state_bytes", "is_target", "compare_run"]


class Projector:
    """The projection of one (m, n) gradient onto its top-``rank`` singular vectors."""

    def __init__(self, rank: int, update_proj_gap: int = 200, scale: float = 0.25):
        self.rank = check.positive_int("rank", rank)
        self.update_proj_gap = check.positive_int("update_proj_gap", update_proj_gap)
        self.scale = check.positive_number("scale", scale)
        self.matrix: torch.Tensor | None = None  # P: r×n (right side) or m×r (left side)
        self.right = True  # m >= n: P holds right singular vectors

    def update(self, grad: torch.Tensor) -> None:
        """P from the SVD of G (16-bit G in fp32): a copy of the r kept vectors, not a view of
        U or Vᵀ, which would keep all min(m, n) of them alive (as galore-torch's does)."""
        U, S, Vh = torch.linalg.svd(grad.to(torch.promote_types(grad.dtype, torch.float32)),
                                    full_matrices=False)
        self.right = grad.shape[0] >= grad.shape[1]
        P = Vh[:self.rank] if self.right else U[:, :self.rank]
        self.matrix = P.clone().to(grad.dtype)

    def project(self, grad: torch.Tensor, step: int) -> torch.Tensor:
        """G (m, n) -> G Pᵀ (m, r) or Pᵀ G (r, n); P is refreshed at steps 0, T, 2T, ..."""
        check.tensor("grad", grad, dim=2, floating=True)
        if self.matrix is None or step % self.update_proj_gap == 0:
            self.update(grad)
        return grad @ self.matrix.t() if self.right else self.matrix.t() @ grad

    def project_back(self, low_rank: torch.Tensor) -> torch.Tensor:
        """N (m, r) or (r, n) -> α · N P or α · P N, of the weight's shape (m, n)."""
        if self.matrix is None:
            raise RuntimeError("project_back() before project(): no projection yet")
        full = low_rank @ self.matrix if self.right else self.matrix @ low_rank
        return full * self.scale


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW whose moments live in the projected space for the 2-D parameters of every group
    with a ``rank`` (default for all groups: the ``rank`` argument; None: plain AdamW).

    Param groups as galore-torch's: ``{"params": [...], "rank": 64, "update_proj_gap": 200,
    "scale": 0.25, "proj_type": "std"}`` gets GaLore, a group without rank plain AdamW. Unlike
    galore-torch, a 1-D parameter (bias, norm gain) in a GaLore group gets plain AdamW instead
    of an error. The update, as galore-torch's (transformers' old AdamW):

        R = project(G);  M = β₁M + (1-β₁)R;  V = β₂V + (1-β₂)R²
        W -= lr·√(1-β₂ᵗ)/(1-β₁ᵗ) · project_back(M / (√V + ε));  then W -= lr·wd·W
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, rank: int | None = None,
                 update_proj_gap: int = 200, scale: float = 0.25):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
                        update_proj_gap=update_proj_gap, scale=scale)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        """Fill the group's missing settings from the defaults, then check them."""
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        check.number("lr", g["lr"], 0)
        betas = check.sequence("betas", g["betas"])
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                      and 0 <= b < 1 for b in betas):
            check.fail("betas", "two numbers in [0, 1)", g["betas"])
        check.number("eps", g["eps"], 0)
        check.number("weight_decay", g["weight_decay"], 0)
        check.optional(check.positive_int, "rank", g["rank"])
        check.positive_int("update_proj_gap", g["update_proj_gap"])
        check.positive_number("scale", g["scale"])
        check.one_of("proj_type", g.get("proj_type", "std"), ("std",))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    if group["rank"] is not None and p.dim() == 2:
                        state["projector"] = Projector(group["rank"], group["update_proj_gap"],
                                                       group["scale"])
                grad = p.grad
                if "projector" in state:
                    grad = state["projector"].project(grad, state["step"])
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(grad)
                    state["exp_avg_sq"] = torch.zeros_like(grad)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                t = state["step"]
                m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                step_size = group["lr"] * math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
                update = m / v.sqrt().add_(group["eps"])
                if "projector" in state:
                    update = state["projector"].project_back(update)
                p.add_(update, alpha=-step_size)
                if group["weight_decay"] > 0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])
        return loss


# --- state memory -------------------------------------------------------------------------

def _shape(name: str, value: Any) -> tuple[int, ...]:
    return tuple(check.sequence(name, value, nonempty=True, item=check.positive_int))


def state_bytes(shapes: Sequence[Sequence[int]], rank: int, dtype_bytes: int = 4, *,
                full: Sequence[Sequence[int]] = (), galore_torch: bool = False) -> int:
    """Optimizer state bytes of a model: every 2-D shape in ``shapes`` with GaLore
    (``state_numel(m, n, rank)["total"]``), every other shape, and every shape in ``full``
    (embeddings, lm_head: the paper keeps them in AdamW), with AdamW's 2 moments (2·numel);
    all times ``dtype_bytes``. Measured: see tests/test_galore.py::test_state_bytes_*.
    """
    shapes = check.sequence("shapes", shapes, item=_shape)
    full = check.sequence("full", full, item=_shape)
    check.positive_int("rank", rank)
    check.positive_int("dtype_bytes", dtype_bytes)
    numel = sum(state_numel(*s, rank, galore_torch=galore_torch)["total"] if len(s) == 2
                else 2 * math.prod(s) for s in shapes)
    numel += sum(2 * math.prod(s) for s in full)
    return numel * dtype_bytes


# --- a small run for the notebook -------------------------------------------------------------

TARGETS = GALORE_TARGETS


def is_target(name: str, param: torch.Tensor, targets: str = "attn_mlp") -> bool:
    """Whether GaLore projects this parameter of ``model.llama.Llama``: the rule
    ``cost.methods.galore_is_target`` on the parameter's shape. "attn_mlp": the attention and
    MLP matrices, as in the paper's runs (embeddings, lm_head and norms keep AdamW); "all":
    every matrix."""
    return galore_is_target(name, tuple(param.shape), targets)


def _galore_groups(model: torch.nn.Module, rank: int | None, gap: int, scale: float,
                   targets: str) -> list:
    """The targets with GaLore, the rest plain AdamW, in galore-torch's group format."""
    named = list(model.named_parameters())
    low = [p for name, p in named if is_target(name, p, targets)]
    rest = [p for name, p in named if not is_target(name, p, targets)]
    if rank is None:
        return [{"params": rest + low}]
    return [{"params": rest},
            {"params": low, "rank": rank, "update_proj_gap": gap, "scale": scale,
             "proj_type": "std"}]


def compare_run(steps: int = 40, ranks: Sequence[int] = (4, 16), seed: int = 0, *,
                lr: float = 3e-3, update_proj_gap: int = 20, scale: float = 0.25,
                targets: str = "attn_mlp", package: bool | None = None) -> dict[str, dict]:
    """Full AdamW vs GaLore at each rank on the ``tiny`` Llama (H = 64, V = 256, 0.13M
    parameters) on ``train.corpus``, batches of 8×64 tokens: the same seed, data and
    hyper-parameters for every run; ``targets`` as in ``is_target``.

    Returns {run name: {"losses": [per step], "state_bytes_per_param": measured with
    ``measure.optimizer_state.measured_bytes_per_param``, "seconds": wall time}}; runs "AdamW" (ours with
    rank=None), "GaLore r=k" and, if galore-torch is installed (``package=None``) or
    ``package=True``, "galore-torch r=k" (equal to ours; its first import takes ~3 s).

    What the loss does at this scale (measured, 50 steps, lr 3e-3): with the paper's targets
    GaLore's curve is AdamW's (1.94 vs 2.04 at step 50, any rank 4-64): this task is a bigram
    table that the embeddings and lm_head learn, and they stay in AdamW. With targets="all"
    it stalls (5.32 / 4.87 / 4.17 at r = 4 / 16 / 64): a V×H table needs full-rank updates, and
    α = 0.25 shrinks every step. Bytes per parameter: AdamW 8.0; GaLore r=4 2.6, r=16 4.1
    (most of this model is embeddings); r=64 = min side: 9.4 > 8, the projector on top of
    full-size moments.
    """
    from ..model.llama import Llama
    from ..measure.optimizer_state import measured_bytes_per_param
    from ..recipes.train import batches, corpus

    check.positive_int("steps", steps)
    ranks = check.sequence("ranks", ranks, item=check.positive_int)
    check.integer("seed", seed, 0)
    check.positive_number("lr", lr)
    check.positive_int("update_proj_gap", update_proj_gap)
    check.positive_number("scale", scale)
    check.one_of("targets", targets, TARGETS)
    check.optional(check.boolean, "package", package)
    if package is None:
        import importlib.util
        package = importlib.util.find_spec("galore_torch") is not None
    if package:
        from galore_torch import GaLoreAdamW as PackageGaLore
    tokens = corpus(20_000, 256, seed)

    def run(make_opt, rank):
        torch.manual_seed(seed)
        model = Llama("tiny")
        opt = make_opt(_galore_groups(model, rank, update_proj_gap, scale, targets))
        data, losses, start = batches(tokens, 8, 64, seed), [], time.perf_counter()
        for _ in range(steps):
            ids = next(data)
            loss = model(ids, labels=ids).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return {"losses": losses, "state_bytes_per_param": measured_bytes_per_param(opt),
                "seconds": time.perf_counter() - start}

    out = {"AdamW": run(lambda g: GaLoreAdamW(g, lr=lr), None)}
    for r in ranks:
        out[f"GaLore r={r}"] = run(lambda g: GaLoreAdamW(g, lr=lr), r)
        if package:
            out[f"galore-torch r={r}"] = run(
                lambda g: PackageGaLore(g, lr=lr, no_deprecation_warning=True), r)
    return out
