"""LOMO: the optimizer step fused into backward (LOMO, 梯度计算与参数更新融合).

Lv et al. 2023, "Full Parameter Fine-tuning for Large Language Models with Limited Resources"
(arXiv 2306.09782): plain training keeps every gradient until ``optimizer.step()``;
LOMO updates each parameter as soon as its gradient is computed and frees that gradient at once,
so at most one parameter's gradient is alive (the largest one: ``grad_peak_bytes``). With plain
SGD (no momentum, no state) this also removes all optimizer state: 65B parameters in fp16 are
then weights + activations only, the headline's "8 GPUs".

PyTorch gives the same pattern for any optimizer (``step_in_backward``): one optimizer per
parameter, stepped in ``Tensor.register_post_accumulate_grad_hook``. The updates are those of
the ordinary loop, op for op; what cannot be done any more is anything that needs all gradients
first: gradient accumulation over micro-batches, and clipping by the global norm, which LOMO
gets with a second backward pass (``LOMO(clip_grad_norm=...)``).

lomo-optim 0.1.1 (the authors' package) hooks with ``Tensor.register_hook``, which runs before
a gradient is accumulated: each hook frees the *previous* parameter's gradient, so two are alive
at once (the largest neighbouring pair in backward order, measured). Its ``weight_decay`` is
decoupled (p ← p·(1 − lr·wd)), not SGD's L2 term.

Checked in tests/test_lomo.py: equal to ``torch.optim.SGD`` / ``AdamW`` run the ordinary way
and to lomo-optim's ``Lomo``; the peak of live gradient bytes measured at every hook.
"""

from __future__ import annotations

import copy
from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn

from .. import check
from ..measure.tracker import tracking

__all__ = ["step_in_backward", "InBackward", "LOMO", "METHODS", "make_step", "Step", "LiveGrads",
           "measure_step", "StepPeaks", "grad_peak_bytes", "compare_run"]


# --- the two ways of stepping inside backward ------------------------------------------------

class InBackward(NamedTuple):
    """What ``step_in_backward`` returns: the optimizer of each parameter and the hook handles."""

    optimizers: dict[nn.Parameter, torch.optim.Optimizer]
    handles: list

    def remove(self) -> None:
        """Unhook: ``loss.backward()`` only computes gradients again."""
        for h in self.handles:
            h.remove()


def step_in_backward(model: nn.Module, make_optimizer: Callable, **kw) -> InBackward:
    """One ``make_optimizer([p], **kw)`` per parameter, stepped as soon as p's gradient is
    accumulated, then ``p.grad = None``: after this, ``loss.backward()`` is the whole training step
    (PyTorch tutorial "How to save memory by fusing the optimizer step into the backward pass")."""
    check.module("model", model)
    check.function("make_optimizer", make_optimizer)
    optimizers = {p: make_optimizer([p], **kw) for p in model.parameters() if p.requires_grad}

    def hook(p: nn.Parameter) -> None:  # called by autograd once p.grad holds p's gradient
        optimizers[p].step()
        p.grad = None  # freed here, not after the whole backward

    handles = [p.register_post_accumulate_grad_hook(hook) for p in optimizers]
    return InBackward(optimizers, handles)


class LOMO:
    """SGD fused into backward: p ← p − lr·g as soon as g is accumulated, then g freed; no state
    (Lv et al. 2023). ``lomo.backward(loss)`` is the whole training step.

    ``clip_grad_norm=c``: the paper's clipping by the global norm. The norm needs every
    gradient before the first update, so ``backward`` runs twice: pass 1 only sums the squared
    norms (and frees each gradient), pass 2 updates with g·min(1, c / (‖g‖ + 1e-6)). Twice the
    backward compute; the graph is kept for pass 2 (``retain_graph``).
    """

    def __init__(self, model: nn.Module, lr: float, clip_grad_norm: float | None = None):
        check.module("model", model)
        self.lr = check.positive_number("lr", lr)
        self.clip_grad_norm = check.optional(check.positive_number, "clip_grad_norm",
                                             clip_grad_norm)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._norms: list[torch.Tensor] | None = None  # a list during the norm pass
        self._coef: torch.Tensor | None = None  # min(1, c / ‖g‖) during the update pass
        self.handles = [p.register_post_accumulate_grad_hook(self._hook) for p in self.params]

    @torch.no_grad()
    def _hook(self, p: nn.Parameter) -> None:
        if self._norms is not None:  # clipping, pass 1: only measure
            self._norms.append(torch.linalg.vector_norm(p.grad))
        else:
            if self._coef is not None:
                p.grad.mul_(self._coef)
            p.add_(p.grad, alpha=-self.lr)  # the SGD update, as torch.optim.SGD writes it
        p.grad = None

    def backward(self, loss: torch.Tensor) -> None:
        """Backward and update (two backward passes with clip_grad_norm)."""
        check.tensor("loss", loss, dim=0, floating=True)
        if self.clip_grad_norm is not None:
            self._norms = []
            loss.backward(retain_graph=True)
            total = torch.linalg.vector_norm(torch.stack(self._norms))
            self._norms = None
            self._coef = torch.clamp(self.clip_grad_norm / (total + 1e-6), max=1.0)
        try:
            loss.backward()
        finally:
            self._coef = None

    def remove(self) -> None:
        """Unhook the model."""
        for h in self.handles:
            h.remove()


# --- one training step by each method ----------------------------------------------------------

METHODS = ("sgd", "lomo", "sgd in backward", "lomo-optim", "adamw", "adamw in backward")
PLAIN = {"sgd": "sgd", "lomo": "sgd", "sgd in backward": "sgd", "lomo-optim": "sgd",
         "adamw": "adamw", "adamw in backward": "adamw"}  # the ordinary loop each one equals
_OPTIMIZERS = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}


class Step(NamedTuple):
    """What ``make_step`` returns: ``step(loss)`` and the optimizers whose state it keeps."""

    step: Callable[[torch.Tensor], None]
    optimizers: list


def make_step(model: nn.Module, method: str, lr: float) -> Step:
    """One training step of ``model`` by ``method`` (one of ``METHODS``), as ``step(loss)``;
    "lomo-optim" is lomo-optim's ``Lomo`` (its hooks stay on the model: give it a copy).
    ``foreach=False``: the for-loop kernels, the same in both loops (the CPU default anyway)."""
    check.module("model", model)
    check.one_of("method", method, METHODS)
    check.positive_number("lr", lr)
    if method in _OPTIMIZERS:  # the ordinary loop
        opt = _OPTIMIZERS[method](model.parameters(), lr=lr, foreach=False)

        def step(loss):
            loss.backward()
            opt.step()
            opt.zero_grad()
        return Step(step, [opt])
    if method.endswith(" in backward"):
        fused = step_in_backward(model, _OPTIMIZERS[method.split()[0]], lr=lr, foreach=False)
        return Step(lambda loss: loss.backward(), list(fused.optimizers.values()))
    if method == "lomo":
        return Step(LOMO(model, lr).backward, [])
    from lomo_optim import Lomo  # lomo-optim 0.1.1: hooks with Tensor.register_hook

    lomo = Lomo(model, lr=lr)
    return Step(lambda loss: lomo.fused_backward(loss, lr), [lomo])


# --- measuring ---------------------------------------------------------------------------------

class LiveGrads:
    """Counts the bytes of live gradients at every gradient hook: each p.grad that is not None,
    plus, when a parameter's gradient arrives (``register_hook``), that gradient itself.
    Register it before the method's hooks, so it sees each gradient before they free it.
    ``order``: the parameters' indices in the order their gradients arrived.

    Hooks see a gradient only once it is complete: a parameter used twice (tied embeddings)
    has its first partial gradient held by autograd until the second use, unseen here (the
    tracker of ``measure_step`` sees it)."""

    def __init__(self, model: nn.Module):
        check.module("model", model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.peak_bytes, self.order = 0, []
        self.handles = [h for p in self.params for h in (
            p.register_hook(self._arrived),                      # before accumulation
            p.register_post_accumulate_grad_hook(self._count))]  # after

    def live_bytes(self) -> int:
        return sum(p.grad.nbytes for p in self.params if p.grad is not None)

    def _arrived(self, grad: torch.Tensor) -> None:
        self.peak_bytes = max(self.peak_bytes, self.live_bytes() + grad.nbytes)

    def _count(self, p: nn.Parameter) -> None:
        self.order.append(next(i for i, q in enumerate(self.params) if q is p))
        self.peak_bytes = max(self.peak_bytes, self.live_bytes())

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class StepPeaks(NamedTuple):
    """What ``measure_step`` measured during one training step."""

    grad_bytes: int  # peak of live gradient bytes, counted at every hook (LiveGrads)
    step_bytes: int  # peak of everything (weights, gradients, activations, states): CPU tracker


def measure_step(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor], method: str,
                 lr: float = 1e-3) -> StepPeaks:
    """Measured: the second step of ``method`` on a copy of ``model`` (``model`` is left
    untouched; the first step creates the optimizer states), ``loss_fn(copy)`` its loss; live
    gradient bytes by ``LiveGrads``, the whole step by ``llmtrain.measure.tracker.tracking`` with the
    weights and optimizer states included. See tests/test_lomo.py."""
    check.module("model", model)
    check.function("loss_fn", loss_fn)
    model = copy.deepcopy(model)
    grads = LiveGrads(model)  # first, so its hooks run before the method's
    step, optimizers = make_step(model, method, lr)
    step(loss_fn(model))  # the states exist from now on, as in any later step
    grads.peak_bytes = 0
    with tracking(include=[model, *optimizers]) as tracker:
        step(loss_fn(model))
    return StepPeaks(grads.peak_bytes, tracker.peak)


def grad_peak_bytes(numels: Sequence[int], dtype_bytes: int, method: str) -> int:
    """Peak of live gradient bytes in one backward: "plain" b·Σ numel (all gradients until
    the step), "in-backward" and "lomo" b·max numel (each freed after its update)
    (Lv et al. 2023). Measured: see tests/test_lomo.py::test_formula_equals_measurement."""
    numels = check.sequence("numels", numels, nonempty=True, item=check.positive_int)
    check.positive_int("dtype_bytes", dtype_bytes)
    check.one_of("method", method, ("plain", "in-backward", "lomo"))
    return dtype_bytes * (sum(numels) if method == "plain" else max(numels))


# --- the demo for notebook 12 ----------------------------------------------------------------

DEMO_SHAPE = dict(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  intermediate_size=176, max_seq_len=64)  # the "tiny" preset: 125,248 parameters


def compare_run(steps: int = 5, seed: int = 0, lr: float = 1e-2, batch_size: int = 1,
                seq_len: int = 16) -> dict:
    """Every method of ``METHODS`` ("lomo-optim" if installed) for ``steps`` steps on one seeded
    tiny Llama (125,248 parameters): per method, the ordinary loop it equals (``PLAIN``), its
    largest weight difference from it after the run, and the peaks of one step measured by
    ``measure_step``; plus the sum and the largest of the parameters' bytes. A small batch, as
    in fine-tuning, where weights and gradients, not activations, fill the memory."""
    from ..model.llama import Llama
    from ..model.shapes import ModelShape
    from ..recipes.train import batches, corpus

    check.positive_int("steps", steps)
    check.integer("seed", seed, 0)
    check.positive_number("lr", lr)
    check.positive_int("batch_size", batch_size)
    check.integer("seq_len", seq_len, 2, DEMO_SHAPE["max_seq_len"])
    torch.manual_seed(seed)
    model = Llama(ModelShape(**DEMO_SHAPE, name="demo"))
    data = batches(corpus(4096, DEMO_SHAPE["vocab_size"], seed), batch_size, seq_len, seed)
    xs = [next(data) for _ in range(steps)]
    methods = [m for m in METHODS if m != "lomo-optim" or _has_lomo_optim()]
    weights, out = {}, {}
    for method in sorted(methods, key=lambda m: m not in _OPTIMIZERS):  # plain loops first
        m = copy.deepcopy(model)
        step = make_step(m, method, lr).step
        for x in xs:
            step(m(x, labels=x).loss)
        weights[method] = [p.detach() for p in m.parameters()]
        diff = max((a - b).abs().max().item()
                   for a, b in zip(weights[method], weights[PLAIN[method]]))
        peaks = measure_step(model, lambda m: m(xs[0], labels=xs[0]).loss, method, lr)
        out[method] = dict(against=PLAIN[method], max_weight_diff=diff,
                           grad_peak_bytes=peaks.grad_bytes, step_peak_bytes=peaks.step_bytes)
    sizes = [p.nbytes for p in model.parameters()]
    return dict(methods={k: out[k] for k in methods}, sum_param_bytes=sum(sizes),
                max_param_bytes=max(sizes), num_params=sum(p.numel() for p in model.parameters()))


def _has_lomo_optim() -> bool:
    try:
        import lomo_optim  # noqa: F401
    except ImportError:
        return False
    return True
