"""Training memory (slides: 训练显存估计): model states, activations, the rest, and measuring.

Per GPU, the slides write

    16P/N  +  2LBTH + 12BTV  +  6        (模型与优化器 + 激活值 + 其他, "GB")

Here each part is a function with its assumptions as arguments: precision and optimizer
(the 16 of 16P), the ZeRO stage and data-parallel degree (the /N), tensor and pipeline
parallel degrees, and several activation models, from the slides' to exact ones.
Everything is in bytes (ints); ``Estimate`` converts to GB (10⁹) or GiB (2³⁰) for display.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import check
from . import params as _params
from .check import positive_int as _check_pos  # _check_pos(name, value)
from .shapes import ModelShape

__all__ = ["GB", "GIB", "torch_dtype", "dtype_bytes", "dtype_name", "state_bytes_per_param", "params_per_gpu",
           "model_state_bytes", "activation_bytes", "Estimate", "estimate", "slides_formula",
           "llmbox_activation_bytes", "llmbox_memory_bytes", "llmbox_gpus_needed",
           "Peak", "measure_peak", "PRECISIONS", "OPTIMIZERS", "ACTIVATION_IMPLS"]

GB, GIB = 10**9, 2**30

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def torch_dtype(dtype: Any) -> torch.dtype:
    """torch.float32, bfloat16 or float16 from a torch dtype or a name ("fp32", "bf16", ...)."""
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype must be fp32, bf16 or fp16 (or the torch dtype), got {dtype!r}")


def dtype_name(dtype: Any) -> str:
    """'fp32', 'bf16' or 'fp16' for a torch dtype or one of its names."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[torch_dtype(dtype)]


def dtype_bytes(dtype: Any) -> int:
    """Bytes per element: 4 for fp32, 2 for bf16/fp16."""
    return torch_dtype(dtype).itemsize


# --- model states: weights, gradients, master weights, optimizer states ---------------

PRECISIONS = ("mixed", "fp32", "bf16")
OPTIMIZERS = ("adamw", "adam", "sgd", "adamw8bit", "adafactor")


def state_bytes_per_param(precision: str = "mixed", optimizer: str = "adamw") -> dict[str, float]:
    """Bytes per parameter for each model state (the 16 in 16P, and its variants).

    mixed (Micikevicius et al. 2018): 16-bit weights 2 + 16-bit grads 2 + fp32 master 4 +
    Adam m 4 + v 4 = 16. fp32: 4 + 4 + Adam 8 = 16, no master copy. bf16 (pure): 2 + 2 +
    states in bf16. sgd: one momentum buffer. adamw8bit (Dettmers et al. 2022): m, v in
    1 byte each (block scales ignored). adafactor is per matrix, see ``model_state_bytes``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    w = 4 if precision == "fp32" else 2
    state = 2 if precision == "bf16" else 4  # bytes per optimizer-state element
    n_states = {"adamw": 2, "adam": 2, "sgd": 1, "adamw8bit": 2, "adafactor": 1}[optimizer]
    if optimizer == "adamw8bit":
        state = 1
    return {"weights": w, "gradients": w, "master": 4 if precision == "mixed" else 0,
            "optimizer": float(n_states * state)}


def params_per_gpu(shape: ModelShape, tp: int = 1, pp: int = 1) -> int:
    """Parameters held by the busiest GPU of a tp × pp model-parallel group.

    TP (Megatron) splits every matrix, the embedding and the output layer by tp and keeps
    the RMSNorm weights whole; PP gives each stage ⌈L/pp⌉ layers, the embedding to the first
    stage and the output layer and final norm to the last. Returns the larger stage.
    """
    shape = check.shape("shape", shape)
    _check_pos("tp", tp)
    _check_pos("pp", pp)
    if shape.num_heads % tp or shape.num_kv_heads % tp:
        raise ValueError(f"tp={tp} must divide num_heads={shape.num_heads} and "
                         f"num_kv_heads={shape.num_kv_heads}")
    if pp > shape.num_layers:
        raise ValueError(f"pp={pp} must not exceed num_layers={shape.num_layers}")
    b = _params.breakdown(shape)
    H, L = shape.hidden_size, shape.num_layers
    per_layer = (b["attention"] + b["mlp"]) // L
    layer = math.ceil(per_layer / tp) + 2 * H  # two norms, replicated
    n = math.ceil(L / pp)
    emb, head = math.ceil(b["embedding"] / tp), math.ceil(b["lm_head"] / tp)
    if pp == 1:
        return n * layer + emb + head + H
    return max(n * layer + emb, n * layer + head + H)


def model_state_bytes(num_params: int | ModelShape, *, precision: str = "mixed",
                      optimizer: str = "adamw", zero: int = 0, dp: int = 1, tp: int = 1,
                      pp: int = 1) -> dict[str, int]:
    """Bytes per GPU of weights, gradients, master weights and optimizer states.

    ZeRO (Rajbhandari et al., SC'20) partitions over the dp data-parallel ranks:
    stage 1 the optimizer states (and master weights), stage 2 also the gradients,
    stage 3 also the weights: with mixed AdamW 4P + 12P/N, 2P + 14P/N, 16P/N.
    ``num_params`` is a count (tp·pp then split it evenly) or a ModelShape (then
    ``params_per_gpu`` splits it exactly; needed for adafactor's factored states).
    """
    if isinstance(zero, bool) or zero not in (0, 1, 2, 3):
        raise ValueError(f"zero must be 0, 1, 2 or 3, got {zero!r}")
    _check_pos("dp", dp)
    _check_pos("tp", tp)
    _check_pos("pp", pp)
    per = state_bytes_per_param(precision, optimizer)
    if isinstance(num_params, str):  # a preset name
        num_params = check.shape("num_params", num_params)
    if isinstance(num_params, ModelShape):
        P = params_per_gpu(num_params, tp, pp)
        shape = num_params
    else:
        _check_pos("num_params", num_params)
        _check_pos("tp", tp)
        _check_pos("pp", pp)
        P, shape = math.ceil(num_params / (tp * pp)), None
    state_elems = P
    if optimizer == "adafactor":
        if shape is None:
            raise ValueError("optimizer='adafactor' needs a ModelShape: its second moment is "
                             "factored per matrix (rows + columns)")
        if tp != 1 or pp != 1:
            raise ValueError("optimizer='adafactor' is modelled for tp=1, pp=1 only")
        state_elems = _adafactor_elements(shape)
    parts = {"weights": P * per["weights"], "gradients": P * per["gradients"],
             "master": P * per["master"], "optimizer": math.ceil(state_elems * per["optimizer"])}
    shard = {"weights": zero >= 3, "gradients": zero >= 2, "master": zero >= 1, "optimizer": zero >= 1}
    return {k: math.ceil(v / dp) if shard[k] else int(v) for k, v in parts.items()}


def _adafactor_elements(shape: ModelShape) -> int:
    """Adafactor without momentum (Shazeer & Stern 2018): a row and a column accumulator per
    matrix, a full accumulator per vector."""
    H, Hff, V, L = shape.hidden_size, shape.intermediate_size, shape.vocab_size, shape.num_layers
    q, kv = shape.q_size, shape.kv_size
    mats = [(H, q), (H, kv), (H, kv), (q, H), (H, Hff), (H, Hff), (Hff, H)]
    per_layer = sum(r + c for r, c in mats) + 2 * H
    b = _params.breakdown(shape)
    per_layer += (b["attention"] + b["mlp"]) // L - sum(r * c for r, c in mats)  # biases
    head = (V + H) if not shape.tie_embeddings else 0
    return L * per_layer + (V + H) + head + H


# --- activations ------------------------------------------------------------------------

ACTIVATION_IMPLS = ("textbook", "korthikanti", "reference", "hf-eager", "hf-sdpa")


def activation_bytes(shape: ModelShape, batch: int, seq: int, *, dtype: Any = "bf16",
                     impl: str = "textbook", recompute: str | None = None, tp: int = 1,
                     sp: bool = False, attention: str = "sdpa") -> int:
    """Bytes of activations kept for backward in one forward pass (with the loss).

    impl:
    - "textbook" (the slides): each layer keeps its input, b·BTH (2BTH in 16-bit), plus
      4BTV for the fp32 softmax input: L·b·BTH + 4BTV. It *is* full recomputation, so
      recompute must be "full" (the default for this impl).
    - "korthikanti" (Korthikanti et al., MLSys 2023, arXiv 2205.05198; GPT layer, 16-bit,
      4h MLP, dropout):
      none: sbh(34 + 5as/h) per layer; with TP t: sbh(10 + 24/t + 5as/(ht)); with SP all /t;
      selective drops the 5as²b term; full keeps 2sbh (/t with SP). Output layer and
      cross entropy: 4sbh(1 + v/h)/t.
    - "reference", "hf-eager", "hf-sdpa": exact closed forms for ``llmtrain.llama.Llama``
      (``attention`` picks its kernel) and transformers' LlamaForCausalLM at the pinned
      release; see ``llmtrain.activation_formulas.saved_bytes``. tp must be 1.
    recompute: "none", "full" or "selective"; None means the impl's own default.
    """
    shape = check.shape("shape", shape)
    if impl not in ACTIVATION_IMPLS:
        raise ValueError(f"impl must be one of {ACTIVATION_IMPLS}, got {impl!r}")
    check.boolean("sp", sp)
    check.one_of("attention", attention, ("sdpa", "eager"))
    _check_pos("batch", batch)
    _check_pos("seq", seq)
    _check_pos("tp", tp)
    b = dtype_bytes(dtype)
    if recompute is None:
        recompute = "full" if impl == "textbook" else "none"
    if recompute not in ("none", "full", "selective"):
        raise ValueError(f"recompute must be 'none', 'full' or 'selective', got {recompute!r}")
    if shape.num_heads % tp:
        raise ValueError(f"tp={tp} must divide num_heads={shape.num_heads}")
    if sp and tp == 1:
        raise ValueError("sp=True (sequence parallel) needs tp > 1")
    B, T, H, L, V = batch, seq, shape.hidden_size, shape.num_layers, shape.vocab_size
    if impl == "textbook":
        if recompute != "full":
            raise ValueError("impl='textbook' keeps each layer's input, i.e. recompute='full'; "
                             f"got recompute={recompute!r}")
        layer_input = b * B * T * H // (tp if sp else 1)
        return L * layer_input + 4 * B * T * V // tp
    if impl == "korthikanti":
        if b != 2:
            raise ValueError("impl='korthikanti' counts 16-bit activations: dtype must be bf16 or fp16")
        a, s, h, t = shape.num_heads, T, H, tp
        sbh = s * B * h
        if recompute == "full":
            layer = 2 * sbh / (t if sp else 1)
        else:
            attn_scores = 5 * a * s * s * B / t if recompute == "none" else 0
            layer = (34 * sbh / t if sp else sbh * (10 + 24 / t)) + attn_scores
        output = 4 * sbh * (1 + V / h) / t
        return round(L * layer + output)
    if tp != 1 or sp:
        raise ValueError(f"impl={impl!r} is exact for one device: tp must be 1 and sp False")
    from .activation_formulas import saved_bytes

    kw = {"attention": attention} if impl == "reference" else {}
    return saved_bytes(shape, batch, seq, dtype=dtype, impl=impl, recompute=recompute, **kw)


# --- the whole estimate -------------------------------------------------------------------

# The slides' "其他" (other), per GPU: PyTorch runtime ~1 GB, DeepSpeed 1-4 GB, fragmentation ~1 GB.
FRAMEWORK_BYTES = 1 * GIB
ZERO_RUNTIME_BYTES = 4 * GIB
FRAGMENTATION_BYTES = 1 * GIB


@dataclass(frozen=True)
class Estimate:
    """Per-GPU memory by part, in bytes, with GB (10⁹) and GiB (2³⁰) views."""

    parts: dict[str, int]
    details: dict[str, Any] = field(default_factory=dict)
    # the peak of one training step, phase by phase (llmtrain.step_peak.StepPeak); None for
    # slides_formula. ``total`` is the sum of every part, an upper bound of that peak.
    step_peak: Any = None

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def peak_bytes(self) -> int | None:
        """The peak of one training step (``step_peak.peak_bytes``), or None."""
        return None if self.step_peak is None else self.step_peak.peak_bytes

    @property
    def gb(self) -> dict[str, float]:
        return {**{k: v / GB for k, v in self.parts.items()}, "total": self.total / GB}

    @property
    def gib(self) -> dict[str, float]:
        return {**{k: v / GIB for k, v in self.parts.items()}, "total": self.total / GIB}

    def table(self) -> str:
        rows = [f"{'part':<16} {'bytes':>18} {'GB':>9} {'GiB':>9}"]
        for k, v in {**self.parts, "total": self.total}.items():
            rows.append(f"{k:<16} {v:>18,} {v / GB:>9.2f} {v / GIB:>9.2f}")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def estimate(shape: ModelShape, gpus: int = 1, batch: int = 1, seq: int | None = None, *,
             zero: int = 3, recompute: str | None = "full", dtype: Any = "bf16",
             impl: str = "textbook", precision: str = "mixed", optimizer: str = "adamw",
             tp: int = 1, pp: int = 1, sp: bool = False, attention: str = "sdpa",
             softmax_extra: bool = True, overheads: bool = True, set_to_none: bool = True,
             optimizer_impl: str = "single-tensor") -> Estimate:
    """Per-GPU training memory: model states + activations + other.

    ``gpus`` = dp·tp·pp; the data-parallel degree dp = gpus/(tp·pp) is what ZeRO divides by.
    batch is the micro-batch per GPU. Activations of a pipeline stage: its ⌈L/pp⌉ layers
    (one micro-batch in flight; 1F1B keeps up to pp of them, see notebook 07).
    Other: transformers' extra 8BTV in the softmax (``softmax_extra``), and the slides'
    framework (1 GiB), ZeRO runtime (4 GiB) and fragmentation (1 GiB) (``overheads``).
    ``.step_peak``: the peak of one training step, which phase, what is live then
    (``llmtrain.step_peak``; ``set_to_none`` of ``zero_grad``, ``optimizer_impl`` of AdamW).
    """
    shape = check.shape("shape", shape)
    for name, value in (("gpus", gpus), ("batch", batch), ("tp", tp), ("pp", pp)):
        _check_pos(name, value)  # before gpus % (tp·pp): a zero degree is named, not divided by
    check.optional(_check_pos, "seq", seq)
    for name, value in (("sp", sp), ("softmax_extra", softmax_extra), ("overheads", overheads)):
        check.boolean(name, value)
    seq = shape.max_seq_len if seq is None else seq
    if gpus % (tp * pp):
        raise ValueError(f"gpus={gpus} must be a multiple of tp·pp={tp * pp}")
    dp = gpus // (tp * pp)
    states = model_state_bytes(shape, precision=precision, optimizer=optimizer, zero=zero,
                               dp=dp, tp=tp, pp=pp)
    stage_shape = shape if pp == 1 else shape.replace(num_layers=math.ceil(shape.num_layers / pp))
    act = activation_bytes(stage_shape, batch, seq, dtype=dtype, impl=impl, recompute=recompute,
                           tp=tp, sp=sp, attention=attention)
    parts = {"model states": sum(states.values()), "activations": act}
    if softmax_extra:
        parts["softmax extra"] = 8 * batch * seq * shape.vocab_size // tp
    if overheads:
        parts["framework"] = FRAMEWORK_BYTES
        if zero:
            parts["ZeRO runtime"] = ZERO_RUNTIME_BYTES
        parts["fragmentation"] = FRAGMENTATION_BYTES
    from . import step_peak as _sp

    peak = _sp.phases(shape, batch, seq, states=states,
                      activations=act, dp=dp, zero=zero, recompute=recompute, dtype=dtype,
                      impl=impl, precision=precision, optimizer=optimizer, tp=tp, pp=pp, sp=sp,
                      attention=attention, set_to_none=set_to_none, optimizer_impl=optimizer_impl,
                      other={k: v for k, v in parts.items()
                             if k not in ("model states", "activations", "softmax extra")})
    return Estimate(parts, {"model states": states, "dp": dp}, peak)


def slides_formula(num_params: int, gpus: int, L: int, B: int, T: int, H: int, V: int, *,
                   other_unit: int = GB) -> Estimate:
    """The slides' per-GPU formula exactly as written: 16P/N + 2LBTH + 12BTV + 6.

    The first terms are bytes; the "+6" is in the slide's unit, GB — pass other_unit=GIB
    to read it as GiB (which is how the slides' worked example adds up; notebook 11).
    """
    for name, v in dict(num_params=num_params, gpus=gpus, L=L, B=B, T=T, H=H, V=V,
                        other_unit=other_unit).items():
        _check_pos(name, v)
    return Estimate({"model states": math.ceil(16 * num_params / gpus),
                     "activations": 2 * L * B * T * H + 12 * B * T * V,
                     "other": 6 * other_unit})


def llmbox_activation_bytes(L: int, B: int, T: int, H: int, V: int) -> int:
    """The book authors' own calculator (RUCAIBox/LLMBox, training/gpu_calculator.py):
    (12 + 2L)·BTH + 12·BTV bytes of activations — the slides' 2LBTH + 12BTV plus 12BTH."""
    for name, v in dict(L=L, B=B, T=T, H=H, V=V).items():
        _check_pos(name, v)
    return (12 + 2 * L) * B * T * H + 12 * B * T * V


LLMBOX_WEIGHT_BYTES = {"bf16": 2, "fp16": 2, "int8": 1, "fp8": 1, "int4": 0.5}


def llmbox_memory_bytes(num_params: int, gpus: int, L: int, B: int, T: int, H: int, V: int, *,
                        zero: int = 3, model_dtype: str = "bf16") -> int:
    """Per-GPU bytes, end to end, as the book authors' calculator computes them
    (RUCAIBox/LLMBox, training/gpu_calculator.py, full-parameter training, no offload).

    Weights w·P (w = 2 bytes for bf16/fp16) and 14 bytes per parameter (16-bit gradients 2,
    fp32 master weights and Adam's m, v 12) split as ZeRO splits them, plus the **larger** of
    the activations A = (12 + 2L)BTH + 12BTV and a 16-bit gradient buffer G, not their sum:

    - ZeRO-0: wP + 14P + max(2P, A)
    - ZeRO-1: wP + 2P + 12P/N + max(2P + 2P/N, A)
    - ZeRO-2: wP + 14P/N + max(2P + 2P/N, A)
    - ZeRO-3: wP/N + 14P/N + max(2P/N, A)

    No framework constants (the slides' "+6"). Exact rational, rounded up to whole bytes.
    """
    from fractions import Fraction

    for name, v in dict(num_params=num_params, gpus=gpus, L=L, B=B, T=T, H=H, V=V).items():
        _check_pos(name, v)
    check.one_of("zero", zero, (0, 1, 2, 3))
    check.one_of("model_dtype", model_dtype, tuple(LLMBOX_WEIGHT_BYTES))
    P, N = num_params, gpus
    w = Fraction(LLMBOX_WEIGHT_BYTES[model_dtype])
    A = llmbox_activation_bytes(L, B, T, H, V)
    if zero == 0:
        total = w * P + 14 * P + max(2 * P, A)
    elif zero == 1:
        total = w * P + 2 * P + Fraction(12 * P, N) + max(2 * P + Fraction(2 * P, N), A)
    elif zero == 2:
        total = w * P + Fraction(14 * P, N) + max(2 * P + Fraction(2 * P, N), A)
    else:
        total = w * P / N + Fraction(14 * P, N) + max(Fraction(2 * P, N), A)
    return math.ceil(total)


def llmbox_gpus_needed(num_params: int, L: int, B: int, T: int, H: int, V: int, *,
                       zero: int = 3, model_dtype: str = "bf16", card_bytes: int = 80 * GIB,
                       usable: float = 0.95, max_gpus: int = 99) -> tuple[int, int]:
    """The LLMBox calculator's answer: the fewest GPUs N (1 to ``max_gpus``) with
    ``llmbox_memory_bytes(..., N) <= usable · card_bytes``, and that memory.

    Its defaults: an A100/H100 card is 80·2³⁰ bytes (80 GiB), of which 95 % is usable.
    """
    _check_pos("card_bytes", card_bytes)
    _check_pos("max_gpus", max_gpus)
    check.number("usable", usable, maximum=1, positive=True)
    for n in range(1, max_gpus + 1):
        need = llmbox_memory_bytes(num_params, n, L, B, T, H, V, zero=zero, model_dtype=model_dtype)
        if need <= usable * card_bytes:
            return n, need
    raise ValueError(f"max_gpus={max_gpus} GPUs of card_bytes={card_bytes:,} are not enough "
                     f"(usable={usable}): the setup does not fit")


# --- measuring ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Peak:
    """Peak bytes allocated while a function ran."""

    peak_bytes: int
    start_bytes: int  # live when it started (CPU: the storages of ``include``)
    end_bytes: int
    device: str
    method: str


def measure_peak(fn: Callable[[], Any], *, device: Any = None, include: Any = ()) -> Peak:
    """Run ``fn()`` and return the peak bytes allocated meanwhile.

    CUDA: ``torch.cuda.max_memory_allocated`` (everything allocated on the device).
    CPU: an exact tracker: a TorchDispatchMode sees every tensor an op creates and a weak
    reference on its storage sees it freed (views counted once). Tensors that exist before
    ``fn`` runs are counted only if passed in ``include`` (modules, optimizers, tensors).
    """
    check.function("fn", fn)
    try:
        dev = torch.device(device) if device is not None else torch.device("cpu")
    except (RuntimeError, TypeError):
        check.fail("device", "a device name (cpu, cuda, cuda:1) or a torch.device", device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        start = torch.cuda.memory_allocated(dev)
        fn()
        torch.cuda.synchronize(dev)
        return Peak(torch.cuda.max_memory_allocated(dev), start, torch.cuda.memory_allocated(dev),
                    str(dev), "torch.cuda.max_memory_allocated")
    if dev.type != "cpu":
        raise ValueError(f"device must be cpu or cuda, got {dev}")
    tracker = _LiveStorages()
    for t in _tensors_of(include):
        tracker.add(t)
    start = tracker.live
    with tracker:
        fn()
    return Peak(tracker.peak, start, tracker.live, "cpu", "TorchDispatchMode storage tracker")


class _LiveStorages(torch.utils._python_dispatch.TorchDispatchMode):
    """Live bytes of the CPU storages created by ops (and of any added by hand)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def add(self, t: torch.Tensor) -> None:
        if t.device.type != "cpu":
            return
        st = t.untyped_storage()
        key = st._cdata
        if key in self._refs and self._refs[key]() is not None:
            return
        nbytes = st.nbytes()
        self._refs[key] = weakref.ref(st, lambda _, key=key, n=nbytes: self._free(key, n))
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def _free(self, key: int, nbytes: int) -> None:
        self._refs.pop(key, None)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:  # a view allocates nothing: its storage is its base's
            return out
        leaves = torch.utils._pytree.tree_leaves
        inputs = {t.untyped_storage()._cdata for t in leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in leaves(out):  # new storages only: in-place and out= ops reuse an input's
            if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in inputs:
                self.add(t)
        return out


def _tensors_of(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, torch.nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()
        for p in obj.parameters():
            if p.grad is not None:
                yield p.grad
    elif isinstance(obj, torch.optim.Optimizer):
        for state in obj.state.values():
            yield from (v for v in state.values() if isinstance(v, torch.Tensor))
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors_of(o)
    else:
        raise ValueError(f"include must hold tensors, modules or optimizers, got {type(obj).__name__}")
