"""Mixed-precision training from scratch (混合精度训练).

Micikevicius et al., "Mixed Precision Training", ICLR 2018 (arXiv 1710.03740), three tricks:

1. fp32 master weights: forward and backward run on a 16-bit copy of the weights; the optimizer
   updates an fp32 copy, which is rounded back into the 16-bit model after every step (§3.1).
   Without it, updates of at most half a 16-bit ulp of the weight are lost, exactly half
   too: a tie rounds to the even neighbour (``lost_update_fraction``).
2. Loss scaling: multiply the loss by S before backward so small fp16 gradients do not flush
   to 0 (``gradient_underflow``); divide the gradients by S before the step (§3.2). ``LossScaler``
   picks S dynamically exactly as ``torch.amp.GradScaler`` does: halve S and skip the step on
   inf/NaN gradients, double S after ``growth_interval`` good steps in a row.
3. fp32 accumulation of products, reductions (norms, softmax, loss) — here done by the
   model itself (RMSNorm and the loss in fp32), as by ``torch.autocast``.

bf16 has fp32's exponent range, so it needs no loss scaling, but its 8-bit significand makes
the master copy even more necessary. Checked in tests/test_amp.py: ``LossScaler`` against
``torch.amp.GradScaler`` bit for bit, ``MixedPrecisionTrainer`` against ``torch.autocast``.
"""

from __future__ import annotations

import struct
from typing import Iterable

import torch
from torch import nn

from .. import check

__all__ = ["LossScaler", "MixedPrecisionTrainer", "lost_update_fraction", "gradient_underflow",
           "emulate_16bit_storage"]

HALF_DTYPES = (torch.float16, torch.bfloat16)


def _fp32(x: float) -> float:
    """x rounded to the nearest float32 (GradScaler keeps its scale in a float32 tensor)."""
    return struct.unpack("f", struct.pack("f", x))[0]


class LossScaler:
    """Dynamic loss scaling with the arguments and call pattern of ``torch.amp.GradScaler``:

        scaler.scale(loss).backward()
        scaler.unscale_(opt)        # optional: grads /= S, and look for inf/NaN
        scaler.step(opt)            # opt.step() unless an inf/NaN was found
        scaler.update()             # S *= backoff_factor on inf/NaN; S *= growth_factor after
                                    # growth_interval good steps in a row

    Same arithmetic as torch (S a float32, 1/S rounded to float32), so the two give the same
    scales, skips and parameters (tests/test_amp.py::test_loss_scaler_matches_grad_scaler).
    For teaching it also counts ``skipped_steps`` and records ``scales`` (S after each update).
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000, enabled: bool = True):
        check.boolean("enabled", enabled)
        check.positive_number("init_scale", init_scale)
        check.positive_number("growth_factor", growth_factor)
        check.positive_number("backoff_factor", backoff_factor)
        check.positive_int("growth_interval", growth_interval)
        if enabled and not growth_factor > 1.0:
            raise ValueError(f"growth_factor must be > 1.0, got {growth_factor}")
        if enabled and not backoff_factor < 1.0:
            raise ValueError(f"backoff_factor must be < 1.0, got {backoff_factor}")
        self.enabled = enabled
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval = growth_interval
        self._scale = _fp32(init_scale)
        self._good_steps = 0  # consecutive steps without inf/NaN (GradScaler's growth tracker)
        self._found_inf: dict[int, bool] = {}  # id(optimizer) -> inf/NaN seen, this iteration
        self._stepped: set[int] = set()
        self.skipped_steps = 0
        self.scales: list[float] = []

    def get_scale(self) -> float:
        """The current scale S (1.0 when disabled)."""
        return self._scale if self.enabled else 1.0

    def scale(self, outputs):
        """outputs · S: a tensor, or a list/tuple of tensors."""
        if not self.enabled:
            return outputs
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        return outputs * self._scale

    @torch.no_grad()
    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """grad /= S for every gradient of ``optimizer`` (once per step), noting any inf/NaN."""
        if not self.enabled:
            return
        key = id(optimizer)
        if key in self._stepped:
            raise RuntimeError("unscale_() is being called after step().")
        if key in self._found_inf:
            raise RuntimeError("unscale_() has already been called on this optimizer "
                               "since the last update().")
        inv_scale = _fp32(1.0 / self._scale)
        found_inf = False
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.dtype == torch.float16:  # as torch: unscale fp32 (master) grads
                    raise ValueError("Attempting to unscale FP16 gradients.")
                found_inf |= not bool(torch.isfinite(p.grad).all())
                p.grad.mul_(inv_scale)
        self._found_inf[key] = found_inf

    def step(self, optimizer: torch.optim.Optimizer, *args, **kwargs):
        """Unscale (unless done), then ``optimizer.step()`` unless an inf/NaN was found.
        Returns what ``optimizer.step`` returns, or None when the step is skipped (as torch)."""
        if not self.enabled:
            return optimizer.step(*args, **kwargs)
        key = id(optimizer)
        if key in self._stepped:
            raise RuntimeError("step() has already been called since the last update().")
        if key not in self._found_inf:
            self.unscale_(optimizer)
        self._stepped.add(key)
        if self._found_inf[key]:
            return None
        return optimizer.step(*args, **kwargs)

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        """Set S for the next iteration: ``new_scale`` if given (the good-step count is kept,
        as torch), else back off on any inf/NaN this iteration, or grow after
        ``growth_interval`` good steps in a row."""
        if not self.enabled:
            return
        if new_scale is not None:
            self._scale = _fp32(float(new_scale))
        elif not self._found_inf:
            raise RuntimeError("No inf checks were recorded prior to update().")
        elif any(self._found_inf.values()):
            self._scale = _fp32(self._scale * self.backoff_factor)
            self._good_steps = 0
            self.skipped_steps += 1
        else:
            self._good_steps += 1
            if self._good_steps == self.growth_interval:
                grown = _fp32(self._scale * self.growth_factor)
                if grown != float("inf"):  # torch keeps S if S·growth overflows float32
                    self._scale = grown
                self._good_steps = 0
        self._found_inf, self._stepped = {}, set()
        self.scales.append(self._scale)


class MixedPrecisionTrainer:
    """One training step = forward/backward in 16 bits, AdamW update in fp32 (§3 of the paper).

    ``model`` is converted in place to ``dtype`` (bf16 or fp16) and becomes the working copy;
    the trainer keeps fp32 master weights and fp32 AdamW states. A ``LossScaler`` scales the
    loss for fp16 (bf16 has fp32's exponent range and needs none); pass ``scaler`` to choose it.

    ``master_weights=False`` is pure 16-bit training: AdamW updates the 16-bit weights and keeps
    its moments in 16 bits, without loss scaling — what makes small updates vanish
    (see ``lost_update_fraction``).
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16, *,
                 lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0, grad_clip: float | None = None,
                 master_weights: bool = True, scaler: LossScaler | None = None):
        check.module("model", model)
        if dtype not in HALF_DTYPES:
            raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
        check.positive_number("lr", lr)
        check.sequence("betas", betas, item=lambda n, b: check.number(n, b, 0, 1))
        if len(betas) != 2 or not all(b < 1 for b in betas):
            check.fail("betas", "a pair (beta1, beta2) with 0 <= beta < 1", betas)
        check.positive_number("eps", eps)
        check.number("weight_decay", weight_decay, 0)
        check.optional(check.positive_number, "grad_clip", grad_clip)
        check.boolean("master_weights", master_weights)
        check.optional(check.module, "scaler", scaler, LossScaler, "a llmtrain.amp.LossScaler")
        self.model, self.dtype, self.grad_clip = model, dtype, grad_clip
        self.params16 = [p for p in model.parameters() if p.requires_grad]
        if master_weights:  # fp32 master copy, before rounding the model's weights
            self.master = [p.detach().float().clone().requires_grad_() for p in self.params16]
        for p in self.params16:  # parameters only: buffers (RoPE frequencies) stay fp32
            p.data = p.data.to(dtype)
        if not master_weights:
            self.master = self.params16  # the optimizer updates the 16-bit weights directly
        self.optimizer = torch.optim.AdamW(self.master, lr=lr, betas=betas, eps=eps,
                                           weight_decay=weight_decay)
        use_scaling = dtype == torch.float16 and master_weights
        self.scaler = scaler if scaler is not None else LossScaler(enabled=use_scaling)

    def step(self, input_ids: torch.Tensor, labels: torch.Tensor) -> float:
        """One optimizer step on a batch; returns the (unscaled) loss."""
        loss = self.model(input_ids, labels).loss
        self.scaler.scale(loss).backward()  # 16-bit gradients of S·loss
        if self.master is not self.params16:
            for m, p in zip(self.master, self.params16):
                m.grad = None if p.grad is None else p.grad.float()  # fp32 master grads
                p.grad = None
        self.scaler.unscale_(self.optimizer)  # master grads /= S, inf/NaN check
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.master, self.grad_clip)
        self.scaler.step(self.optimizer)  # skipped on inf/NaN
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.master is not self.params16:
            with torch.no_grad():
                for m, p in zip(self.master, self.params16):
                    p.copy_(m)  # round the fp32 master back into the 16-bit model
        return float(loss.detach())


def lost_update_fraction(weights: torch.Tensor, update: torch.Tensor) -> float:
    """Fraction of the nonzero updates u with round(w + u) == w in the weights' dtype (e.g.
    bf16): the update is lost. For w = 1 in bf16 the ulp above is 2⁻⁷, so any 0 < u ≤ 2⁻⁸ is
    lost (2⁻⁸ is a tie and 1.0 the even neighbour); below 1 the ulp is 2⁻⁸, so u ≥ -2⁻⁹.
    Source: Micikevicius et al. 2018, §3.1 (their fp16 example: updates < 2⁻¹¹·|w|)."""
    check.tensor("weights", weights, floating=True)
    check.tensor("update", update, floating=True)
    if weights.shape != update.shape:
        raise ValueError(f"weights {tuple(weights.shape)} and update {tuple(update.shape)} "
                         "must have the same shape")
    nonzero = update != 0
    if not nonzero.any():
        return 0.0
    new = (weights.float() + update.float()).to(weights.dtype)
    return float((new == weights)[nonzero].float().mean())


def gradient_underflow(grads: Iterable[torch.Tensor], dtype: torch.dtype,
                       scale: float = 1.0) -> float:
    """Fraction of the nonzero fp32 gradient elements g with (g·scale) cast to ``dtype`` == 0:
    flushed to zero. fp16's smallest subnormal is 2⁻²⁴ ≈ 6e-8; bf16's is 2⁻¹³³.
    Source: Micikevicius et al. 2018, §3.2 and Fig. 3 (loss scaling shifts grads up)."""
    if isinstance(grads, torch.Tensor):  # one gradient
        grads = [grads]
    if grads is None or isinstance(grads, (str, bytes)) or not hasattr(grads, "__iter__"):
        check.fail("grads", "an iterable of gradient tensors (e.g. a list)", grads)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        check.fail("dtype", "a floating-point torch dtype (torch.float16, torch.bfloat16)", dtype)
    check.positive_number("scale", scale)
    nonzero = lost = 0
    for i, g in enumerate(grads):
        g = check.tensor(f"grads[{i}]", g, floating=True).detach().float()
        nz = g != 0
        nonzero += int(nz.sum())
        lost += int(((g * scale).to(dtype) == 0)[nz].sum())
    return lost / nonzero if nonzero else 0.0


def emulate_16bit_storage(model: nn.Module, batches: Iterable[torch.Tensor], *, steps: int,
                          dtype: torch.dtype = torch.bfloat16, master_weights: bool = True,
                          lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.95),
                          eps: float = 1e-8) -> list[float]:
    """The losses of ``MixedPrecisionTrainer``'s experiment with exact arithmetic: every stored
    tensor is rounded to its format, every computation runs in float64.

    ``model`` must hold float64 parameters (build it under ``torch.set_default_dtype(
    torch.float64)``, so that the initial draws are float64 too); its weights are rounded to
    ``dtype`` in place. Each of ``steps`` steps, on the next batch b (``model(b, b)``):
    forward and backward in float64, gradients rounded to ``dtype`` (what a 16-bit backward
    stores), then AdamW, computed in float64:

    - ``master_weights=True``: AdamW updates a master copy, which is rounded to ``dtype`` into
      the model. Master and moments stay float64: real training keeps them in fp32, whose
      rounding (2⁻²⁴ relative) is far below the updates, and rounding them to fp32 would turn
      float64's CPU-dependent last bits into fp32 ulps and change the curves from CPU to CPU;
    - ``master_weights=False``: pure 16-bit training; AdamW updates the model's weights, which
      are rounded to ``dtype`` after the step, with its two moments.

    What it keeps of mixed precision is the rounding of what is stored, which is what loses
    small updates (``lost_update_fraction``); what it leaves out is the rounding inside the
    16-bit kernels and of the activations. In exchange the losses are the same on every CPU
    up to float64 rounding (~1e-12 after a few hundred steps), where 16-bit and fp32 kernels
    differ with the instruction set. No loss scaling: meant for bf16 (fp16 gradients below
    2⁻²⁴ flush to 0 here, as they would unscaled). Tested in tests/test_amp.py.
    """
    check.module("model", model)
    if dtype not in HALF_DTYPES:
        raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
    check.positive_int("steps", steps)
    check.boolean("master_weights", master_weights)
    check.positive_number("lr", lr)
    check.positive_number("eps", eps)
    if (not isinstance(betas, (tuple, list)) or len(betas) != 2
            or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
        check.fail("betas", "a pair (beta1, beta2) with 0 <= beta < 1", betas)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or any(p.dtype != torch.float64 for p in params):
        dtypes = sorted({str(p.dtype) for p in params})
        raise ValueError("model must have float64 parameters (build it under "
                         f"torch.set_default_dtype(torch.float64)), got {dtypes}")

    def rounded(t: torch.Tensor, to: torch.dtype) -> torch.Tensor:  # float64 → to → float64
        return t.float().to(to).double()

    with torch.no_grad():
        master = [p.detach().clone().requires_grad_() for p in params] if master_weights else params
        for p in params:
            p.copy_(rounded(p, dtype))
    optimizer = torch.optim.AdamW(master, lr=lr, betas=tuple(betas), eps=eps, weight_decay=0.0)
    storage = torch.float64 if master_weights else dtype  # what the optimizer's tensors are kept in
    losses, data = [], iter(batches)
    for _ in range(steps):
        batch = next(data)
        loss = model(batch, batch).loss
        loss.backward()
        with torch.no_grad():
            for m, p in zip(master, params):
                if p.grad is not None:
                    m.grad = rounded(p.grad, dtype)  # the 16-bit gradient (exact in fp32)
                if m is not p:
                    p.grad = None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for m, p in zip(master, params):
                if storage != torch.float64:  # pure 16-bit: weights and moments rounded
                    m.copy_(rounded(m, storage))
                    state = optimizer.state.get(m, {})
                    for key in ("exp_avg", "exp_avg_sq"):
                        if key in state:
                            state[key].copy_(rounded(state[key], storage))
                if m is not p:
                    p.copy_(rounded(m, dtype))
        losses.append(float(loss.detach()))
    return losses
