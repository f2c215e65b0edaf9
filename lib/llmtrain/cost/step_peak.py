"""The peak of one training step (单步训练的显存峰值): which phase, what is live, how many bytes.

``memory.estimate(...).total`` adds up every part: an upper bound that no moment reaches.
One step

    loss = model(ids, labels=ids).loss; loss.backward(); opt.step(); opt.zero_grad(set_to_none=...)

is a sequence of moments; ``memory.estimate(...).step_peak`` (or ``memory.step_peak(...)``, the
same with a CPU-like device's defaults) names each candidate high, lists what is live there
(bytes per part), and the step's peak is the largest:

- ``forward``, at the loss: weights, master weights, optimizer states, every saved activation,
  the logits and the loss's fp32 copy of them;
- ``backward: loss``: the log-probabilities' gradient and their input's (fp32, B(T−1)V each);
- ``backward: output layer``: the logits' gradient, lm_head's weight and input gradients;
- ``backward: final norm`` and, in the top and bottom decoder layers, ``… MLP`` (SwiGLU's
  gradients), ``… norm`` (RMSNorm's five fp32 BT×H temporaries) and, for eager attention,
  ``… attention`` (the softmax's two fp32 B·N·T² gradients): activations freed so far, gradients
  made so far, the temporaries of that moment;
- ``backward: embedding``: all gradients (with tied embeddings autograd holds lm_head's share
  until the embedding's arrives, then adds the two);
- ``optimizer step``: weights, gradients, master weights, optimizer states and the update's
  temporaries.

With ``set_to_none=False`` the previous step's gradients stay allocated (zeroed in place) through
forward and backward, so every phase carries them, and a new weight gradient is a temporary
until it is added in. The activations and the ids (int64, the labels being the same tensor)
are counted as ``memory.activation_bytes`` counts them.

This module is the phase model only: ``phases`` takes the parts ``memory.estimate`` computed
(states, activations, the layout), so it imports neither ``memory`` nor anything that does.

Optimizer temporaries: torch 2.13's ``AdamW``/``Adam``, read from torch/optim/adam.py. On CPU
the default is the single-tensor loop (``foreach`` is the default only for CUDA/XPU/MTIA
tensors): per parameter ``denom = (exp_avg_sq.sqrt() / c).add_(eps)`` holds two tensors of that
parameter's size while the previous parameter's ``denom`` is still bound, so the high is
max_i (2·n_i + n_(i−1)) elements in parameter order (2VH for the embedding, first). ``foreach``
(the CUDA default) takes ``_foreach_sqrt`` of all second moments at once: P elements. ``fused``:
none. SGD and Adafactor: none modelled (not measured).

Mixed precision (``precision="mixed"``, ``dtype="bf16"``) is modelled as
``llmtrain.amp.MixedPrecisionTrainer`` runs it (and as Megatron's fp32 ``main_grad``): the
optimizer steps the fp32 master weights with fp32 gradients, so during the step the gradients
take 4 bytes per parameter, not the 2 of the 16P count — 2 + 4 + 4 + 8 = 18 bytes per
parameter, plus fp32 temporaries. (That trainer also keeps the 4-byte loss through the step.)

Measured (tests/test_step_peak.py, the exact CPU tracker ``memory.measure_peak`` with the model,
optimizer and ids included) for ``llmtrain.llama.Llama`` (``impl="reference"``) and
transformers' LlamaForCausalLM (``hf-eager``, ``hf-sdpa``: the same moments with its loss,
logits.float() over all BT positions, and its parameter order) on one device, AdamW
single-tensor, foreach or fused: on 95 random shapes (fp32, bf16 or mixed; sdpa or eager; no,
full or selective recomputation; tied or not; either ``set_to_none``) 85 equal to the byte, the
8 mixed-precision ones 4 B low (the trainer's loss), and two within −0.44 % and +0.68 % (a
recomputed layer's high between the named moments: selective recomputation's core, the
gate/up projections' backward). Not measured: the slides' models (``textbook``,
``korthikanti``: their activations split evenly over the layers, a layer recomputed as the
reference's), and ZeRO, TP and PP (each part divided as ``model_state_bytes`` divides it;
ZeRO-3's gathered weights are in its runtime constant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import check
from ..model.shapes import ModelShape, resolve
from ..units import dtype_bytes
from . import methods
from .activations import MODELS, saved_bytes_terms
from .layout import ParallelDims

__all__ = ["StepPeak", "phases", "param_sizes", "optimizer_temporary_bytes", "OPTIMIZER_IMPLS",
           "PHASES"]

OPTIMIZER_IMPLS = ("single-tensor", "foreach", "fused")
PHASES = ("forward", "backward: loss", "backward: output layer", "backward: final norm",
          "backward: top layer MLP", "backward: top layer norm", "backward: top layer attention",
          "backward: bottom layer MLP", "backward: bottom layer norm",
          "backward: bottom layer attention", "backward: embedding", "optimizer step")


@dataclass(frozen=True)
class StepPeak:
    """Bytes live at the high point of each phase of one training step, part by part
    (measured to the byte: tests/test_step_peak.py)."""

    phases: dict[str, dict[str, int]]
    set_to_none: bool = True
    optimizer_impl: str = "single-tensor"

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
        """Each phase's total (MiB = 2²⁰ B), the peak marked, then what is live at the peak."""
        rows = [f"{'phase':<34} {'bytes':>16} {'MiB':>10}"]
        for k, v in self.totals.items():
            mark = "  <- peak" if k == self.phase else ""
            rows.append(f"{k:<34} {v:>16,} {v / 2**20:>10.2f}{mark}")
        rows.append(f"\nlive at the peak ({self.phase}; zero_grad(set_to_none={self.set_to_none}), "
                    f"AdamW {self.optimizer_impl}):")
        rows += [f"  {k:<32} {v:>16,}" for k, v in self.parts.items() if v]
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def param_sizes(shape: ModelShape, impl: str = "reference") -> list[int]:
    """Elements of each parameter tensor, in ``model.parameters()`` order.

    Reference (``llmtrain.llama``): embedding, then per layer input norm, q, k, v, o (each weight,
    then its bias), post-attention norm, gate, up, down; final norm; lm_head (absent when tied).
    transformers' decoder layer registers attention and MLP before the two norms.
    """
    shape = resolve(shape, "shape")
    check.one_of("impl", impl, ("reference", "hf", "hf-eager", "hf-sdpa"))
    V, H = shape.vocab_size, shape.hidden_size
    sizes = [V * H] + _layer_sizes(shape, impl) * shape.num_layers + [H]
    return sizes if shape.tie_embeddings else sizes + [V * H]


def _layer_sizes(shape: ModelShape, impl: str = "reference") -> list[int]:
    """Elements of one decoder layer's parameter tensors, in registration order."""
    H, Hf, q, kv = shape.hidden_size, shape.intermediate_size, shape.q_size, shape.kv_size
    ab, ob, mb = shape.attention_bias, shape.o_bias, shape.mlp_bias

    def lin(i, o, bias):
        return [i * o] + ([o] if bias else [])

    attn = lin(H, q, ab) + lin(H, kv, ab) + lin(H, kv, ab) + lin(q, H, ob)
    mlp = lin(H, Hf, mb) + lin(H, Hf, mb) + lin(Hf, H, mb)
    return [H] + attn + [H] + mlp if impl == "reference" else attn + mlp + [H, H]


def optimizer_temporary_bytes(sizes: list[int], element_bytes: int = 4,
                              impl: str = "single-tensor") -> int:
    """High-water bytes of AdamW's temporaries in one ``step()`` (torch 2.13).

    single-tensor: max_i (2·n_i + n_(i−1))·b (sqrt and the division, beside the previous
    parameter's denom); foreach: Σ n_i·b (one sqrt of every second moment); fused: 0.
    Measured: see tests/test_step_peak.py::test_adamw_temporaries.
    """
    sizes = check.sequence("sizes", sizes, item=lambda n, v: check.integer(n, v, 0))
    check.positive_int("element_bytes", element_bytes)
    check.one_of("impl", impl, OPTIMIZER_IMPLS)
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
            "loss output": 4, "log-prob gradients": 2 * 4 * n // tp,
            "logits gradient": b * B * T * V // tp}


def phases(shape: ModelShape, batch: int, seq: int, *, dims: ParallelDims, params_per_gpu: int,
           states: dict[str, int], activations: int, other: dict[str, int], zero: int,
           recompute: str | None, dtype, impl: str, precision: str, optimizer: str, sp: bool,
           attention: str, set_to_none: bool, optimizer_impl: str) -> StepPeak:
    """The ``StepPeak`` of the parts ``memory.estimate`` computed (called by it, with the
    layout ``dims``, ``memory.params_per_gpu`` and ``memory.model_state_bytes``); what the
    optimizer adds (step counters, Adam's temporaries) is its ``methods.OPTIMIZERS`` entry's.
    Measured: tests/test_step_peak.py."""
    check.boolean("set_to_none", set_to_none)
    check.one_of("optimizer_impl", optimizer_impl, OPTIMIZER_IMPLS)
    spec = methods.OPTIMIZERS[check.one_of("optimizer", optimizer, tuple(methods.OPTIMIZERS))]
    B, T, H, V = batch, seq, shape.hidden_size, shape.vocab_size
    b = dtype_bytes(dtype)
    dp, tp, p_gpu = dims.dp, dims.tp, params_per_gpu
    exact_impl = impl in MODELS
    shard = dp if zero >= 1 else 1  # ZeRO-1+ steps a 1/dp shard of every tensor

    sizes = param_sizes(shape, "reference" if impl == "reference" else "hf")
    total = sum(sizes)
    if p_gpu != total or shard > 1:  # per-GPU shards, approximately: split every tensor
        sizes = [max(1, math.ceil(n * p_gpu / total / shard)) for n in sizes]
    base = {"weights": states["weights"], "master weights": states["master"],
            "optimizer states": states["optimizer"],
            # torch's Adam/AdamW/Adafactor: a float32 scalar tensor "step" per parameter tensor
            "step counters": 4 * len(sizes) if spec.step_counters else 0,
            # RoPE's inv_freq (d/2 elements; transformers also keeps original_inv_freq), fp32
            # unless the whole model is bf16
            "buffers": shape.d_head // 2 * (2 if precision == "bf16" else 4)
            * (2 if impl in ("hf-eager", "hf-sdpa") else 1),
            "input ids": 8 * B * T}  # int64; the labels are the same tensor
    acts = activations - (8 * B * T if exact_impl else 0)  # the ids are counted in base
    loss = _loss_bytes("reference" if impl == "reference" else "hf", B, T, V, b, tp)
    t = _saved_terms(shape, B, T, dtype, impl, recompute, attention, tp, sp, acts)
    kept = {} if set_to_none else {"gradients": states["gradients"]}
    g = 4 if precision == "fp32" else 2  # bytes per gradient element, as the model computes it
    grads = states["gradients"]
    L, Hf = shape.num_layers, shape.intermediate_size
    N, q = shape.num_heads // tp, shape.q_size // tp
    per_layer = sum(_layer_sizes(shape)) // tp  # parameters of one decoder layer
    down = H * Hf + (H if shape.mlp_bias else 0)  # W^D
    mlp = down + 2 * H * Hf + (2 * Hf if shape.mlp_bias else 0)  # W^G, W^U, W^D
    o = q * H + (H if shape.o_bias else 0)  # W^O
    gshard = dp if zero >= 2 else 1  # ZeRO-2/3 keep a 1/dp shard of each gradient once reduced
    head_grad = g * V * H // tp // gshard
    # tied: autograd holds lm_head's share of the shared gradient until the embedding's arrives
    tied_buffer = head_grad if shape.tie_embeddings else 0
    X, F = b * B * T * H, b * B * T * Hf // tp  # one BT×H and one BT×H' tensor in the model dtype

    def layer(j: int, grads_done: int, freed: int, temporaries: int) -> dict[str, int]:
        """Inside the backward of the j-th decoder layer from the top: the activations of the
        loss, final norm, output layer and the j layers above are freed, and ``freed`` more."""
        live = acts - t["loss"] - t["final norm"] - t["lm_head input"] - j * t["layer"] - freed
        if t["recomputed layer"]:  # its activations are back; in fp32 the recomputed norm's
            live += t["recomputed layer"] - (t["layer"] if b == 4 else 0)  # x.float() is its input
        done = (g * (V * H // tp + H + j * per_layer + grads_done) // gshard if set_to_none
                else grads + tied_buffer)
        return {**base, "activations": live, "gradients": done, "loss and its gradient": 8,
                "backward temporaries": temporaries, **other}

    def layer_mlp(j: int) -> dict[str, int]:
        # at the SwiGLU product's backward: its two gradients beside the gradient of its output
        # (W^D's input, F, is freed by then), and the residual's gradient X; with
        # set_to_none=False W^D's new gradient (before it is added into .grad) can weigh more
        new_dw = g * down // tp
        if not set_to_none and new_dw > F:
            return layer(j, down // tp, 0, X + F + new_dw)
        return layer(j, down // tp, F, X + 3 * F)

    def layer_norm(j: int) -> dict[str, int]:
        # the post-attention RMSNorm, in fp32: five BT×H fp32 temporaries at the x² term; the
        # MLP's saved tensors and the norm's own are freed, but its fp32 input
        return layer(j, mlp // tp + H, 4 * B * T + 2 * X + 4 * F, 5 * 4 * B * T * H + X)

    def layer_attention(j: int) -> dict[str, int]:
        # eager attention at the softmax's backward: dP and dS (fp32, B·N·T² each) beside dV;
        # freed: the MLP's and norm's activations, W^O's input, v (N heads), the 16-bit copy of P
        freed = 4 * B * T + 2 * X + 4 * F + 4 * B * T * H + 2 * b * B * T * q \
            + (b * B * N * T * T if b < 4 else 0)
        if (recompute or "none") == "selective":  # the core ran again: kᵀ, v (N heads), P, mask
            freed -= (2 * b * B * T * q + 4 * B * N * T * T + T * T
                      + (b * B * N * T * T if b < 4 else 0))
        return layer(j, mlp // tp + H + o, freed, X + b * B * T * q + 2 * 4 * B * N * T * T)

    out: dict[str, dict[str, int]] = {
        "forward": {**base, **kept, "activations": acts, "logits": loss["logits"],
                    "loss input (fp32)": loss["loss input (fp32)"],
                    "loss output": loss["loss output"], **other},
        # the NLL node has freed its target and total weight; log_softmax's output is still saved
        "backward: loss": {
            **base, **kept, "activations": acts - t["loss"] + loss["log-prob gradients"] // 2,
            "loss and its gradient": 8, "log-prob gradients": loss["log-prob gradients"], **other},
        "backward: output layer": {
            **base, **kept, "activations": acts - t["loss"], "loss and its gradient": 8,
            "logits gradient": loss["logits gradient"], "output-layer weight gradient": head_grad,
            "output-layer input gradient": X, **other},
        # RMSNorm's backward in fp32: five BT×H temporaries beside its fp32 input, at the x² term
        "backward: final norm": {
            **base, "activations": acts - t["loss"] - t["lm_head input"] - t["final norm"]
            + 4 * B * T * H, "loss and its gradient": 8,
            "gradients": (head_grad + g * H // gshard) if set_to_none else grads + tied_buffer,
            "backward temporaries": 5 * 4 * B * T * H, **other},
    }
    for where, j in (("top", 0), ("bottom", L - 1)) if L > 1 else (("top", 0),):
        out[f"backward: {where} layer MLP"] = layer_mlp(j)
        out[f"backward: {where} layer norm"] = layer_norm(j)
        if attention == "eager" or impl == "hf-eager":
            out[f"backward: {where} layer attention"] = layer_attention(j)
    emb = g * V * H // tp
    # the embedding's gradient beside the gradient of its output; when tied, then the sum of
    # that gradient and lm_head's (held by autograd since the output layer)
    out["backward: embedding"] = {
        **base, "gradients": grads - (emb // gshard if set_to_none else 0) + tied_buffer,
        "loss and its gradient": 8, "embedding gradient": emb,
        "backward temporaries": max(b * B * T * H, emb) if shape.tie_embeddings else b * B * T * H,
        **other}
    if precision == "mixed":  # fp32 master gradients replace the 16-bit ones for the step
        grads = math.ceil(4 * p_gpu / shard)
    temps = 0
    if spec.adam_temporaries:
        temps = optimizer_temporary_bytes(sizes, 2 if precision == "bf16" else 4, optimizer_impl)
    out["optimizer step"] = {**base, "gradients": grads, "optimizer temporaries": temps, **other}
    return StepPeak(out, set_to_none, optimizer_impl)


def _saved_terms(shape, B, T, dtype, impl, recompute, attention, tp, sp, acts) -> dict[str, int]:
    """Saved-activation terms the backward frees in order: the loss's, the final norm's, the
    output layer's input, one decoder layer's, and a layer's when recomputed in backward."""
    L = shape.num_layers
    exact = impl in MODELS and tp == 1 and not sp
    rc = recompute or ("full" if impl == "textbook" else "none")
    ref_impl = impl if exact else "reference"
    kw = {"attention": attention} if ref_impl == "reference" else {}
    if rc == "selective" and ref_impl != "reference":
        rc = "none"
    none = saved_bytes_terms(shape, B, T, dtype=dtype, impl=ref_impl, recompute="none", **kw)
    if exact:
        terms = saved_bytes_terms(shape, B, T, dtype=dtype, impl=impl, recompute=rc, **kw)
        out = {"loss": terms["loss"], "final norm": terms["final norm"],
               "lm_head input": terms["lm_head input"], "layer": terms["one layer"]}
    else:  # textbook/korthikanti: their loss term (4BTV) and L equal layers, nothing else
        loss = 4 * B * T * shape.vocab_size // tp
        out = {"loss": loss, "final norm": 0, "lm_head input": 0,
               "layer": (acts - loss) // L if L else 0}
    # a checkpointed layer runs forward again in backward: its full activations come back
    # (selective recomputation redoes only the attention core, after the MLP's backward)
    out["recomputed layer"] = none["one layer"] // tp if rc == "full" else 0
    return out
