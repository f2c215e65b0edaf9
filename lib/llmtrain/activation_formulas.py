"""Exact closed forms for the bytes a LLaMA keeps for backward (激活值, 训练显存估计).

``saved_bytes(shape, batch, seq, ...)`` is, to the byte, what ``llmtrain.activations.measure``
counts for one ``model(ids, labels=ids)`` of our reference LLaMA (``llmtrain.llama``) or of
transformers' LlamaForCausalLM / Qwen2ForCausalLM (eager or SDPA attention), in fp32, bf16 or
fp16, with or without recomputation. Each term names the tensor it counts; the quirks of real
kernels (which copies exist, which are views) are measured facts of the pinned torch and
transformers releases, checked in tests/test_activations.py on random shapes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import check
from .activations import Saved, measure
from .memory import torch_dtype

__all__ = ["saved_bytes", "saved_bytes_terms", "build", "measure_shape", "IMPLS", "RECOMPUTE"]


IMPLS = ("reference", "hf-eager", "hf-sdpa")
RECOMPUTE = ("none", "full", "selective")


def saved_bytes(shape, batch: int, seq: int, *, dtype: Any = "bf16", impl: str = "reference",
                recompute: str = "none", attention: str | None = None) -> int:
    """Bytes saved for backward by ``model(ids, labels=ids)``, ids of shape (batch, seq), exact.

    = embedding indices + RoPE cos/sin + L·(one decoder layer) + final norm + lm_head input
    + loss; each term is in ``saved_bytes_terms``. Measured: see
    tests/test_activations.py::test_closed_form_equals_measure.

    ``impl``: ``"reference"`` (``llmtrain.llama.Llama``; ``attention`` is its ``attn_impl``,
    ``"sdpa"`` by default), ``"hf-eager"`` or ``"hf-sdpa"`` (transformers' LlamaForCausalLM /
    Qwen2ForCausalLM, ``attn_implementation`` eager or sdpa). ``dtype``: weights and
    activations (``model.to(dtype)``, no autocast): a torch dtype or "fp32", "bf16", "fp16".
    ``recompute``: "none", "full" (every decoder layer checkpointed) or, for the reference,
    "selective" (only the attention core). SDPA is torch's CPU flash kernel (fake CPU tensors
    in ``measure``); other kernels save other tensors.
    """
    return sum(v for k, v in saved_bytes_terms(shape, batch, seq, dtype=dtype, impl=impl,
                                               recompute=recompute, attention=attention).items()
               if k != "one layer")


def saved_bytes_terms(shape, batch: int, seq: int, *, dtype: Any = "bf16",
                      impl: str = "reference", recompute: str = "none",
                      attention: str | None = None) -> dict[str, int]:
    """The terms of ``saved_bytes``: ``"one layer"`` (each decoder layer), ``"layers"`` (L of
    them) and the once-per-model terms; all but ``"one layer"`` add up to ``saved_bytes``.

    b = bytes per element of ``dtype``, BT = batch·seq tokens, q = N·d, kv = N_kv·d.
    """
    shape = _check_sizes(batch, seq, shape)
    b = torch_dtype(dtype).itemsize
    attention = _check_impl(impl, recompute, attention)
    B, T, H, Hf, V = batch, seq, shape.hidden_size, shape.intermediate_size, shape.vocab_size
    N, d, q, kv = shape.num_heads, shape.d_head, shape.q_size, shape.kv_size
    BT = B * T

    rmsnorm = (4 * BT * H  # x.float(): fp32 copy of the input (the input itself in fp32), by pow
               + 4 * BT  # rsqrt(mean(x²) + eps), fp32, by the product x·rsqrt
               + b * BT * H)  # x̂ in the model dtype, saved by γ·x̂
    if recompute == "full":  # each checkpointed layer keeps only its input
        layer = b * BT * H
    else:
        layer = (2 * rmsnorm
                 + 2 * b * BT * H  # γ·x̂ of both norms: input of q/k/v_proj, of gate/up_proj
                 + 4 * b * BT * Hf  # SwiGLU: gate out, silu out, up out, their product
                 + b * BT * q)  # o_proj input: the heads concatenated
        if recompute == "selective":  # the core's checkpoint keeps q and k after RoPE, and v
            layer += b * BT * (q + 2 * kv)
        elif impl == "hf-sdpa":  # CPU flash kernel with enable_gqa: q, k, v, logsumexp;
            # its output is the o_proj input (same storage). GQA with d > 256 and T > 1 repeats
            # k and v (repeat_kv copies, except for N_kv = 1 where it is a stride-0 view).
            kv_saved = q if (kv != q and d > 256 and shape.num_kv_heads > 1 and T > 1) else kv
            layer += b * BT * (q + 2 * kv_saved) + 4 * B * N * T
        elif attention == "sdpa":  # reference: k, v repeated to N heads before the kernel
            layer += 3 * b * BT * q + 4 * B * N * T
        else:  # eager: q and kᵀ (by QKᵀ), v (by PV), all N heads after repeat
            kv_saved = q
            if impl == "hf-eager" and shape.num_kv_heads == 1 and B == 1:
                kv_saved = kv  # repeat_kv of one head is a stride-0 view, and so is its bmm input
            layer += b * BT * (q + 2 * kv_saved) + 4 * B * N * T * T  # + fp32 softmax output
            if b < 4:  # softmax(..., dtype=float32).to(dtype): the cast-back copy, saved by PV
                layer += b * B * N * T * T
            if impl == "reference":  # its causal mask (bool T×T), built per layer, by masked_fill
                layer += T * T

    ref = impl == "reference"
    if ref:  # F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        log_softmax = 4 * B * (T - 1) * V
        # a copy when B > 1 and T > 2; else labels[:, 1:].flatten() is a view of labels =
        # input_ids, counted already with the embedding indices
        target = 8 * B * (T - 1) if (B > 1 and T > 2) else 0
    else:  # ForCausalLMLoss: logits.float(), labels padded by one then shifted
        log_softmax = 4 * BT * V
        target = 8 * BT if B > 1 else 8 * (T + 1)  # B = 1: a view into the padded labels
    return {
        "embedding indices": 8 * BT,  # int64 input_ids, by the embedding
        # cos and sin (T, d) in the model dtype, by RoPE; HF's checkpoint gets them as keyword
        # arguments and does not keep them, the reference's segments do.
        "rope cos/sin": 0 if (recompute == "full" and not ref) else 2 * T * d * b,
        "one layer": layer,
        "layers": shape.num_layers * layer,
        "final norm": rmsnorm,
        "lm_head input": b * BT * H,
        "loss": log_softmax + target + 4,  # fp32 log-softmax output, target, total weight
    }


def _check_sizes(batch: Any, seq: Any, shape: Any):
    """The shape (a preset name resolved), after checking batch and seq."""
    shape = check.shape("shape", shape)
    check.positive_int("batch", batch)
    check.positive_int("seq", seq)
    return shape


def _check_impl(impl: str, recompute: str, attention: str | None) -> str:
    """The reference's attention kernel after checking impl, recompute and attention."""
    check.one_of("impl", impl, IMPLS)
    check.one_of("recompute", recompute, RECOMPUTE)
    if impl != "reference":
        if recompute == "selective":
            raise ValueError(f"recompute='selective' needs impl='reference', got impl={impl!r}")
        if attention is not None:
            raise ValueError(f"attention is only for impl='reference' (impl={impl!r} fixes it)")
        return impl[3:]
    if attention is None:
        return "sdpa"
    check.one_of("attention", attention, ("sdpa", "eager"))
    return attention


def build(shape, *, dtype: Any = "bf16", impl: str = "reference", recompute: str = "none",
          attention: str | None = None, device: Any = None) -> nn.Module:
    """The model ``saved_bytes`` describes, in ``dtype``, recomputation set, in train mode.

    ``device="meta"`` builds it without memory (for ``measure(..., fake=True)``).
    """
    shape = check.shape("shape", shape)
    attention = _check_impl(impl, recompute, attention)
    dt = torch_dtype(dtype)
    with torch.device(device if device is not None else "cpu"):
        if impl == "reference":
            from . import recompute as rc
            from .llama import Llama

            model = rc.apply(Llama(shape, attn_impl=attention), recompute)
        else:
            import transformers

            config = shape.to_hf_config(attn_implementation=attention)
            model = transformers.AutoModelForCausalLM.from_config(config)
            if recompute == "full":
                enable = getattr(model, "activation_checkpointing_enable", None)
                if enable is None:  # transformers < 5.24
                    enable = model.gradient_checkpointing_enable
                enable()  # torch.utils.checkpoint, use_reentrant=False by default
    return model.to(dt).train()  # HF checkpoints only in train mode


def measure_shape(shape, batch: int, seq: int, *, dtype: Any = "bf16", impl: str = "reference",
                  recompute: str = "none", attention: str | None = None,
                  fake: bool = True) -> Saved:
    """``measure`` the model ``saved_bytes`` describes on ``model(ids, labels=ids)``.

    ``fake=True`` (default) builds it on the meta device and measures with fake tensors;
    ``fake=False`` builds real weights and runs real arithmetic (small shapes only). A seq
    longer than ``shape.max_seq_len`` raises that limit (it changes no saved tensor).
    """
    shape = _check_sizes(batch, seq, shape)
    check.boolean("fake", fake)
    if seq > shape.max_seq_len:
        shape = shape.replace(max_seq_len=seq)
    model = build(shape, dtype=dtype, impl=impl, recompute=recompute, attention=attention,
                  device="meta" if fake else None)
    ids = torch.zeros(batch, seq, dtype=torch.long, device="meta" if fake else None)
    if not fake:
        ids = torch.randint(0, shape.vocab_size, (batch, seq))
    if impl == "reference":
        return measure(model, ids, labels=ids, fake=fake)
    return measure(model, input_ids=ids, labels=ids, fake=fake)
