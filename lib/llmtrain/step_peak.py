"""The peak of one training step (单步训练的显存峰值): which phase, what is live, how many bytes.

``memory.estimate`` adds up every part (an upper bound: no moment holds them all). One step
``loss = model(ids, labels=ids).loss; loss.backward(); opt.step(); opt.zero_grad(set_to_none)``
has three candidate highs, and its peak is the largest:

- **forward**, at the loss: weights, master weights, optimizer states, all saved activations,
  the logits and the loss's fp32 copy of them (plus last step's gradients if
  ``set_to_none=False``: ``zero_grad`` then zeroes them in place and they stay allocated);
- **backward**, at its start (the gradient of the log-probabilities and of their input, both
  B(T−1)V in fp32, beside every activation) and at the output layer (the logits' gradient,
  the output layer's weight gradient and the gradient of its input, the loss's tensors freed);
- **optimizer step**: weights, gradients, master weights, optimizer states, plus the update's
  temporaries.

The temporaries are those of torch 2.13's ``AdamW`` (and ``Adam``) in fp32 (read from
torch/optim/adam.py, measured in tests/test_step_peak.py). On CPU the default is the
single-tensor loop (``foreach`` is the default only on CUDA/XPU/MTIA): per parameter it builds
``denom = (exp_avg_sq.sqrt() / c).add_(eps)``, two tensors of that parameter's size at once,
while the previous parameter's ``denom`` is still bound — so the high is
max_i (2·n_i + n_(i−1)) elements, in parameter order. ``foreach`` (the CUDA default) builds
``_foreach_sqrt`` of *all* second moments at once: P elements. ``fused`` builds none. SGD (with
momentum) and Adafactor are modelled without temporaries (not measured).

Mixed precision (``precision="mixed"``) is modelled as ``llmtrain.amp.MixedPrecisionTrainer``
does it (and Megatron's fp32 ``main_grad``): the optimizer steps the fp32 master weights with
fp32 gradients, so in the step the gradients take 4 bytes per parameter, not the 2 of the
16P count: 2 + 4 + 4 + 8 = 18 bytes per parameter, plus fp32 temporaries.

Exact (to the byte, tests/test_step_peak.py) for ``llmtrain.llama.Llama`` (``impl="reference"``)
in fp32 on one device with AdamW, with the input ids counted (pass them to ``measure_peak``'s
``include``); within ±5 % of the measured peak where the backward's high falls between those
named above. Other impls reuse the same phases with transformers' loss (logits.float() over
all BT positions); ZeRO, TP and PP divide each part as ``model_state_bytes`` does (not measured).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import memory as _memory
from .shapes import ModelShape

__all__ = ["StepPeak", "step_peak", "param_sizes", "optimizer_temporary_bytes", "OPTIMIZER_IMPLS",
           "PHASES"]

OPTIMIZER_IMPLS = ("single-tensor", "foreach", "fused")
PHASES = ("forward", "backward", "backward (output layer)", "optimizer step")


@dataclass(frozen=True)
class StepPeak:
    """Bytes live at the high point of each phase of one training step, part by part."""

    phases: dict[str, dict[str, int]]
    set_to_none: bool = True
    optimizer_impl: str = "single-tensor"
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def totals(self) -> dict[str, int]:
        """Phase -> bytes live at its high point."""
        return {k: sum(v.values()) for k, v in self.phases.items()}

    @property
    def phase(self) -> str:
        """The phase where the step's peak falls (the first of equal ones)."""
        totals = self.totals
        return max(totals, key=lambda k: totals[k])

    @property
    def peak_bytes(self) -> int:
        """The step's peak: the largest phase total."""
        return max(self.totals.values())

    @property
    def parts(self) -> dict[str, int]:
        """What is live at the peak."""
        return self.phases[self.phase]

    def table(self) -> str:
        names = list(dict.fromkeys(k for v in self.phases.values() for k in v))
        cols = list(self.phases)
        width = max(16, *(len(c) for c in cols))
        rows = [f"{'part':<24}" + "".join(f"{c:>{width + 2}}" for c in cols)]
        for n in names + ["total"]:
            vals = [self.totals[c] if n == "total" else self.phases[c].get(n) for c in cols]
            rows.append(f"{n:<24}" + "".join(f"{'' if v is None else f'{v:,}':>{width + 2}}"
                                             for v in vals))
        rows.append(f"peak: {self.peak_bytes:,} B in the {self.phase} phase "
                    f"(set_to_none={self.set_to_none}, AdamW {self.optimizer_impl})")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def param_sizes(shape: ModelShape, impl: str = "reference") -> list[int]:
    """Elements of each parameter tensor, in ``model.parameters()`` order.

    Reference (``llmtrain.llama``): embedding, then per layer input norm, q, k, v, o (each weight,
    then its bias), post-attention norm, gate, up, down; final norm; lm_head (absent when tied).
    transformers' decoder layer registers attention and MLP before the two norms.
    """
    H, Hf, V, q, kv = (shape.hidden_size, shape.intermediate_size, shape.vocab_size,
                       shape.q_size, shape.kv_size)
    ab, ob, mb = shape.attention_bias, shape.o_bias, shape.mlp_bias

    def lin(i, o, bias):
        return [i * o] + ([o] if bias else [])

    attn = lin(H, q, ab) + lin(H, kv, ab) + lin(H, kv, ab) + lin(q, H, ob)
    mlp = lin(H, Hf, mb) + lin(H, Hf, mb) + lin(Hf, H, mb)
    layer = [H] + attn + [H] + mlp if impl == "reference" else attn + mlp + [H, H]
    sizes = [V * H] + layer * shape.num_layers + [H]
    return sizes if shape.tie_embeddings else sizes + [V * H]


def optimizer_temporary_bytes(sizes: list[int], element_bytes: int = 4,
                              impl: str = "single-tensor") -> int:
    """High-water bytes of AdamW's temporaries in one ``step()`` (torch 2.13).

    single-tensor: max_i (2·n_i + n_(i−1))·b (sqrt and the division, beside the previous
    parameter's denom); foreach: Σ n_i·b (one sqrt of every second moment); fused: 0.
    Measured: see tests/test_step_peak.py::test_adamw_temporaries.
    """
    if impl not in OPTIMIZER_IMPLS:
        raise ValueError(f"optimizer_impl must be one of {OPTIMIZER_IMPLS}, got {impl!r}")
    if impl == "fused" or not sizes:
        return 0
    if impl == "foreach":
        return sum(sizes) * element_bytes
    return max(2 * n + (sizes[i - 1] if i else 0) for i, n in enumerate(sizes)) * element_bytes


def _loss_bytes(impl: str, B: int, T: int, V: int, b: int, tp: int) -> dict[str, int]:
    """Tensors of the loss beyond the saved activations, by phase (see the module docstring)."""
    if impl == "reference":  # cross_entropy(logits[:, :-1].flatten(0, 1).float(), ...)
        n = B * (T - 1) * V  # positions scored
        copy = 4 * n if (B > 1 or b < 4) else 0  # the flatten copies for B > 1; .float() for b < 4
    else:  # transformers' ForCausalLMLoss: logits.float(), all BT positions
        n = B * T * V
        copy = 4 * n if b < 4 else 0
    return {"logits": b * B * T * V // tp, "loss input (fp32)": copy // tp,
            "loss output": 4, "log-prob gradients": 2 * 4 * n // tp, "logits gradient": b * B * T * V // tp}


def step_peak(shape: ModelShape, batch: int = 1, seq: int | None = None, *, gpus: int = 1,
              zero: int = 0, recompute: str | None = "none", dtype="fp32", impl: str = "reference",
              precision: str = "fp32", optimizer: str = "adamw", tp: int = 1, pp: int = 1,
              sp: bool = False, attention: str = "sdpa", set_to_none: bool = True,
              optimizer_impl: str = "single-tensor", overheads: bool = False) -> StepPeak:
    """The peak of one training step, phase by phase: ``memory.estimate(...).step_peak``.

    Arguments as ``memory.estimate`` (defaults: one CPU-like device, fp32, no recomputation,
    the reference model, no framework constants). ``set_to_none``: the previous step's
    ``optimizer.zero_grad(set_to_none=...)``; False keeps the gradients allocated through the
    next forward and backward. ``optimizer_impl``: which AdamW loop runs: ``"single-tensor"``
    (the CPU default), ``"foreach"`` (the CUDA default) or ``"fused"``.
    Measured: see tests/test_step_peak.py.
    """
    return _memory.estimate(shape, gpus, batch, seq, zero=zero, recompute=recompute, dtype=dtype,
                            impl=impl, precision=precision, optimizer=optimizer, tp=tp, pp=pp,
                            sp=sp, attention=attention, overheads=overheads,
                            set_to_none=set_to_none, optimizer_impl=optimizer_impl).step_peak


def phases(shape: ModelShape, batch: int, seq: int, *, states: dict[str, int], activations: int,
           other: dict[str, int], dp: int, zero: int, recompute: str | None, dtype, impl: str,
           precision: str, optimizer: str, tp: int, pp: int, sp: bool, attention: str,
           set_to_none: bool, optimizer_impl: str) -> StepPeak:
    """The ``StepPeak`` of the parts ``memory.estimate`` computed (called by it)."""
    if not isinstance(set_to_none, bool):
        raise ValueError(f"set_to_none must be True or False, got {set_to_none!r}")
    if optimizer_impl not in OPTIMIZER_IMPLS:
        raise ValueError(f"optimizer_impl must be one of {OPTIMIZER_IMPLS}, got {optimizer_impl!r}")
    B, T, H, V = batch, seq, shape.hidden_size, shape.vocab_size
    b = _memory.dtype_bytes(dtype)
    exact_impl = impl in ("reference", "hf-eager", "hf-sdpa")
    shard = dp if zero >= 1 else 1  # ZeRO-1+ steps a 1/dp shard of every tensor
    p_gpu = _memory.params_per_gpu(shape, tp, pp)

    sizes = param_sizes(shape, "reference" if impl == "reference" else "hf")
    if p_gpu != sum(sizes) or shard > 1:  # per-GPU shards, approximately: split every tensor
        sizes = [max(1, math.ceil(n * p_gpu / sum(sizes) / shard)) for n in sizes]
    base = {"weights": states["weights"], "master weights": states["master"],
            "optimizer states": states["optimizer"],
            # torch's Adam/AdamW/Adafactor: a float32 scalar tensor "step" per parameter tensor
            "step counters": 4 * len(sizes) if optimizer in ("adam", "adamw", "adafactor") else 0,
            # RoPE's inv_freq (d/2 elements), fp32 unless the whole model is bf16
            "buffers": shape.d_head // 2 * (2 if precision == "bf16" else 4),
            "input ids": 8 * B * T}  # int64; the labels are the same tensor
    acts = activations - (8 * B * T if exact_impl else 0)  # the ids are counted in base
    loss = _loss_bytes("reference" if impl == "reference" else "hf", B, T, V, b, tp)
    if exact_impl and tp == 1 and not sp:
        from .activation_formulas import saved_bytes_terms

        kw = {"attention": attention} if impl == "reference" else {}
        loss_saved = saved_bytes_terms(shape, B, T, dtype=dtype, impl=impl,
                                       recompute=recompute or "none", **kw)["loss"]
    else:  # the fp32 log-softmax output
        loss_saved = 4 * B * T * V // tp
    kept = {} if set_to_none else {"gradients": states["gradients"]}

    out: dict[str, dict[str, int]] = {
        "forward": {**base, **kept, "activations": acts, "logits": loss["logits"],
                    "loss input (fp32)": loss["loss input (fp32)"],
                    "loss output": loss["loss output"], **other},
        "backward": {**base, **kept, "activations": acts,
                     "log-prob gradients": loss["log-prob gradients"], **other},
        "backward (output layer)": {
            **base, **kept, "activations": acts - loss_saved,
            "logits gradient": loss["logits gradient"],
            "output-layer weight gradient": b * V * H // tp,
            "output-layer input gradient": b * B * T * H, **other},
    }
    grads = states["gradients"]
    if precision == "mixed":  # fp32 master gradients replace the 16-bit ones for the step
        grads = math.ceil(4 * p_gpu / shard)
    temps = 0
    if optimizer in ("adam", "adamw"):
        temps = optimizer_temporary_bytes(sizes, 2 if precision == "bf16" else 4, optimizer_impl)
    out["optimizer step"] = {**base, "gradients": grads, "optimizer temporaries": temps, **other}
    return StepPeak(out, set_to_none, optimizer_impl)
