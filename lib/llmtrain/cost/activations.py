"""Closed forms for the bytes kept for backward (激活值, 训练显存估计), from the slides' to exact.

Three models of one forward pass ``model(ids, labels=ids)`` of batch B, sequence T:

- ``textbook_bytes`` (the slides): each layer keeps only its input, b·BTH, plus 4BTV for the
  fp32 softmax input of the loss: L·b·BTH + 4BTV; it *is* full recomputation.
- ``korthikanti_bytes`` (Korthikanti et al., MLSys 2023, arXiv 2205.05198): their GPT layer
  in 16-bit, with tensor parallelism t and sequence parallelism.
- ``saved_bytes`` (exact): to the byte, what ``llmtrain.activations.measure`` counts for our
  reference LLaMA (``llmtrain.llama``) or transformers' LlamaForCausalLM / Qwen2ForCausalLM
  (eager or SDPA attention; ``activations.MODELS``, built by ``activations.build``), in fp32,
  bf16 or fp16, with or without recomputation. Each term names the tensor it counts; the
  quirks of real kernels (which copies exist, which are views) are measured facts of the
  pinned torch and transformers releases, checked in tests/test_activations.py on random
  shapes.

``memory.activation_bytes(shape, batch, seq, impl=...)`` picks one of them by name (``IMPLS``).
"""

from __future__ import annotations

from typing import Any

from .. import check
from ..model.recompute import MODELLED
from ..model.shapes import ATTN_IMPLS, resolve
from ..units import dtype_bytes

__all__ = ["textbook_bytes", "korthikanti_bytes", "check_cp", "saved_bytes", "saved_bytes_terms", "IMPLS",
           "MODELS"]

MODELS = ("reference", "hf-eager", "hf-sdpa")  # llmtrain.llama.Llama; transformers' LLaMA


def check_model(impl: str, recompute: str = "none", attention: str | None = None) -> str:
    """The attention kernel of model ``impl`` (one of ``MODELS``), after checking ``impl``,
    ``recompute`` (one of ``recompute.MODELLED``; "selective" only for the reference) and
    ``attention`` (the reference's ``attn_impl``, "sdpa" by default; None for transformers',
    whose impl names it)."""
    check.one_of("impl", impl, MODELS)
    check.one_of("recompute", recompute, MODELLED)
    if impl != "reference":
        if recompute == "selective":
            raise ValueError(f"recompute='selective' needs impl='reference', got impl={impl!r}")
        if attention is not None:
            raise ValueError(f"attention is only for impl='reference' (impl={impl!r} fixes it)")
        return impl[3:]
    if attention is None:
        return "sdpa"
    return check.one_of("attention", attention, ATTN_IMPLS)


IMPLS = ("textbook", "korthikanti", *MODELS)  # every activation model, by name


def textbook_bytes(shape, batch: int, seq: int, *, dtype: Any = "bf16", tp: int = 1,
                   sp: bool = False, cp: int = 1) -> int:
    """The slides' count: L·b·BTH + 4BTV (b bytes per element of ``dtype``).

    Each layer keeps its input (full recomputation), the loss the fp32 softmax input. With
    tensor parallelism tp the logits are split: 4BTV/tp; sequence parallelism (``sp``) also
    splits each layer's input: L·b·BTH/tp. Context parallelism ``cp`` gives each rank T/cp of
    every sequence: the same count at T/cp (tests/test_memory_5d.py).
    """
    shape = _check_sizes(batch, seq, shape)
    _check_tp(shape, tp, sp)
    T = seq // check_cp(cp, seq)
    b = dtype_bytes(dtype)
    B, H, L, V = batch, shape.hidden_size, shape.num_layers, shape.vocab_size
    return L * (b * B * T * H // (tp if sp else 1)) + 4 * B * T * V // tp


def check_cp(cp: Any, seq: int) -> int:
    """cp, a positive integer dividing ``seq`` (each context-parallel rank holds seq/cp):
    tests/test_memory_5d.py::test_bad_cp_and_ep_are_named."""
    check.positive_int("cp", cp)
    if seq % cp:
        raise ValueError(f"cp must divide seq={seq} (each rank holds seq/cp tokens), got cp={cp}")
    return cp


def korthikanti_bytes(shape, batch: int, seq: int, *, recompute: str = "none", tp: int = 1,
                      sp: bool = False, cp: int = 1) -> int:
    """Korthikanti et al. (MLSys 2023, arXiv 2205.05198, Table 2 and §4): a GPT layer in 16-bit
    (4h MLP, dropout), s = seq, b = batch, h = hidden, a = heads, t = tp, v = vocab.

    Per layer, recompute "none": sbh(34 + 5as/h); with TP: sbh(10 + 24/t + 5as/(ht)); with SP
    all of it /t: (sbh/t)(34 + 5as/h). "selective" drops the 5as²b attention term, "full"
    keeps the layer input 2sbh (/t with SP). Output layer and cross entropy: 4sbh(1 + v/h)/t.
    Context parallelism ``cp``: every term at s/cp tokens, except the scores, which pair the
    rank's s/cp queries with all s keys: 5a(s/cp)sb/t (tests/test_memory_5d.py). Rounded to
    whole bytes.
    """
    shape = _check_sizes(batch, seq, shape)
    check.one_of("recompute", recompute, MODELLED)
    _check_tp(shape, tp, sp)
    s = seq // check_cp(cp, seq)
    a, h, t, L, v = shape.num_heads, shape.hidden_size, tp, shape.num_layers, shape.vocab_size
    sbh = s * batch * h
    if recompute == "full":
        layer = 2 * sbh / (t if sp else 1)
    else:
        attn_scores = 5 * a * s * seq * batch / t if recompute == "none" else 0
        layer = (34 * sbh / t if sp else sbh * (10 + 24 / t)) + attn_scores
    return round(L * layer + 4 * sbh * (1 + v / h) / t)


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
    Checked term by term against the measured saved tensors:
    tests/test_activations.py::test_closed_form_equals_measure.
    """
    shape = _check_sizes(batch, seq, shape)
    b = dtype_bytes(dtype)
    attention = check_model(impl, recompute, attention)
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
    shape = resolve(shape, "shape")
    check.positive_int("batch", batch)
    check.positive_int("seq", seq)
    return shape


def _check_tp(shape, tp: Any, sp: Any) -> None:
    """tp a positive integer dividing the heads; sp a boolean, True only with tp > 1."""
    check.positive_int("tp", tp)
    check.boolean("sp", sp)
    if shape.num_heads % tp:
        raise ValueError(f"tp must divide num_heads={shape.num_heads}, got tp={tp}")
    if sp and tp == 1:
        raise ValueError("sp=True (sequence parallel) needs tp > 1")


# --- tensor parallel (张量并行) and sequence parallel, per rank ------------------------------

TP_KINDS = ("replicated", "sharded", "whole")


def tp_split_bytes(terms: dict[str, tuple[str, Any]], tp: Any, sequence_parallel: bool) -> Any:
    """Σ of ``terms`` {name: (kind, bytes on one device)} on one of tp ranks:

        whole + (replicated, or replicated/t with sequence parallel) + sharded/t

    "replicated": what every TP rank holds whole (norm inputs and outputs, column-parallel
    inputs, dropout masks): split only by sequence parallelism; "sharded": split by heads or
    columns (attention, MLP inside, logits); "whole": never split (indices, RoPE, a mask).
    Works on ints (exact: t must divide each split term) and on SymPy expressions.
    """
    out = 0
    for name, (kind, b) in terms.items():
        check.one_of(f"kind of {name}", kind, TP_KINDS)
        if kind == "whole" or (kind == "replicated" and not sequence_parallel):
            out += b
        elif isinstance(b, int) and isinstance(tp, int):
            if b % tp:
                raise ValueError(f"tp={tp} must divide the {name} term ({b} bytes)")
            out += b // tp
        else:
            out += b / tp
    return out


def korthikanti_layer_terms(s: Any, b: Any, h: Any, a: Any) -> dict[str, tuple[str, Any]]:
    """Korthikanti et al.'s GPT layer (MLSys 2023, arXiv 2205.05198, §4.1), 16-bit, bytes by
    tensor and kind (see ``tp_split_bytes``): sbh(34 + 5as/h) on one device."""
    sbh = s * b * h
    return {
        "LayerNorm inputs (2)": ("replicated", 4 * sbh),
        "QKV input": ("replicated", 2 * sbh),
        "MLP input": ("replicated", 2 * sbh),
        "dropout masks after attention and MLP (2)": ("replicated", 2 * sbh),
        "Q and K": ("sharded", 4 * sbh),
        "V": ("sharded", 2 * sbh),
        "softmax output": ("sharded", 2 * a * s * s * b),
        "softmax dropout mask": ("sharded", a * s * s * b),
        "softmax dropout output": ("sharded", 2 * a * s * s * b),
        "attention output (o-proj input)": ("sharded", 2 * sbh),
        "GeLU input": ("sharded", 8 * sbh),
        "GeLU output (second linear input)": ("sharded", 8 * sbh),
    }


def tp_saved_bytes_terms(shape, batch: int, seq: int, tp: int, sequence_parallel: bool = False,
                         dtype: Any = "bf16", attention: str = "sdpa") -> dict[str, tuple[str, int]]:
    """The terms of ``tp_saved_bytes`` as {name: (kind, bytes on one device)}: the layer's
    terms once each ("layer: ..."), then L × each of them is in "layers: ...".

    b = bytes of ``dtype``, c = bytes of promote(dtype, fp32) (norms, softmax and loss are
    computed in it), BT = batch·seq, q = N·d. Where LLaMA's layer differs from Korthikanti's
    GPT layer: RMSNorm keeps an upcast copy of its input (c·BTH: fp32 even in 16-bit) and its
    rsqrt (c·BT) besides x̂ (b·BTH), where LayerNorm keeps its 16-bit input; SwiGLU keeps 4
    tensors of H' (gate, SiLU out, up, product) instead of GeLU's 2 of 4h; SDPA keeps q, k and
    v repeated to N heads (GQA's N_kv heads are expanded before the kernel), its output and a
    logsumexp (c·BNT) instead of the s² softmax and its dropout; no dropout masks at all. Out
    of the layers: the embedding keeps local indices and a mask (9BT), the loss a c-byte
    softmax of its vocabulary shard, int64 targets, two bool masks and a count.
    """
    shape = resolve(shape, "shape")
    for name, v in (("batch", batch), ("seq", seq), ("tp", tp)):
        check.positive_int(name, v)
    check.boolean("sequence_parallel", sequence_parallel)
    check.one_of("attention", attention, ATTN_IMPLS)
    # Whole heads, as layout.ParallelDims.check; this closed form is also for even splits
    # of the MLP and the vocabulary (tensor_parallel shards them unevenly too: not modelled here).
    for field in ("num_heads", "num_kv_heads", "intermediate_size", "vocab_size"):
        if getattr(shape, field) % tp:
            raise ValueError(f"tp must divide {field}={getattr(shape, field)}, got tp={tp}")
    if sequence_parallel and seq % tp:
        raise ValueError(f"seq must be divisible by tp={tp} for sequence parallelism, got seq={seq}")
    # float64 too (tests compare in it); c: the bytes of the fp32 upcasts (float64 stays)
    b = 8 if str(dtype) == "torch.float64" else dtype_bytes(dtype)
    c = max(b, 4)
    B, T, H, Hf, V = batch, seq, shape.hidden_size, shape.intermediate_size, shape.vocab_size
    N, d, q, BT = shape.num_heads, shape.d_head, shape.q_size, batch * seq
    layer = {
        "norm upcast inputs (2)": ("replicated", 2 * c * BT * H),
        "norm rsqrt (2)": ("replicated", 2 * c * BT),
        "norm x̂ (2)": ("replicated", 2 * b * BT * H),
        "column-parallel inputs: qkv, gate/up": ("replicated", 2 * b * BT * H),
        "SwiGLU: gate, SiLU, up, product": ("sharded", 4 * b * BT * Hf),
        "attention: q, k, v (N heads), output": ("sharded", 4 * b * BT * q),
    }
    if attention == "sdpa":
        layer["SDPA logsumexp"] = ("sharded", c * B * N * T)
    else:
        layer["upcast softmax"] = ("sharded", c * B * N * T * T)
        if b < c:
            layer["softmax cast back"] = ("sharded", b * B * N * T * T)
        layer["causal mask (bool)"] = ("whole", T * T)
    terms = {f"layer: {k}": v for k, v in layer.items()}
    terms.update({f"layers: {k}": (kind, shape.num_layers * v) for k, (kind, v) in layer.items()})
    terms.update({
        "embedding: local indices and mask": ("whole", 9 * BT),
        "rope cos/sin": ("whole", 2 * T * d * b),
        "final norm": ("replicated", c * BT * H + c * BT + b * BT * H),
        "lm_head input": ("replicated", b * BT * H),
        "loss: softmax": ("sharded", c * B * (T - 1) * V),
        "loss: targets, masks, count": ("whole", 10 * B * (T - 1) + 8),
    })
    return terms


def tp_saved_bytes(shape, batch: int, seq: int, tp: int, sequence_parallel: bool = False,
                   dtype: Any = "bf16", attention: str = "sdpa") -> int:
    """Bytes one rank saves for backward in ``tensor_parallel.apply(Llama(shape))(ids, labels=ids)``,
    ids (batch, seq), exact (measured with ``activations.measure`` on every rank:
    tests/test_tensor_parallel.py::test_bytes_per_rank_equal_the_formulas):

        whole + replicated (÷t with sequence parallel) + sharded/t        (``tp_split_bytes``)

    per layer, replicated 2(c + b)·BTH + 2c·BT + 2b·BTH (two norms' upcast input, rsqrt and x̂;
    the fused qkv and gate/up inputs), sharded 4b·BTH' + 4b·BT·q + c·BNT (SDPA; eager: c·BNT²,
    plus b·BNT² in 16-bit, and a bool T² mask whole). In 16-bit (b = 2, c = 4) with q = h and
    H' = 8h/3 a layer is sbh(16 + 8/h + (88/3 + 4a/h)/t), with SP (sbh/t)(16 + 8/h + 88/3 +
    4a/h). Korthikanti et al.'s GPT terms (``korthikanti_layer_terms``) under the same split
    give their sbh(10 + 24/t + 5as/(ht)) and (sbh/t)(34 + 5as/h) (arXiv 2205.05198, §4.2;
    checked with SymPy in the same test file). ``dtype`` may be torch.float64 (c = b = 8).
    """
    terms = tp_saved_bytes_terms(shape, batch, seq, tp, sequence_parallel, dtype, attention)
    return tp_split_bytes({k: v for k, v in terms.items() if not k.startswith("layer: ")},
                          tp, sequence_parallel)


__all__ += ["TP_KINDS", "tp_split_bytes", "korthikanti_layer_terms", "tp_saved_bytes_terms",
            "tp_saved_bytes"]
