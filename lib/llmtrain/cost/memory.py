"""Training memory per GPU (slides: 训练显存估计): model states + activations + the rest.

Per GPU, the slides write

    16P/N  +  2LBTH + 12BTV  +  6        (模型与优化器 + 激活值 + 其他, "GB")

Here each part is a function with its assumptions as arguments: precision and optimizer
(the 16 of 16P), the ZeRO stage, the layout of the GPUs as one
``llmtrain.cost.layout.ParallelDims(dp, tp, pp)`` (``dims=``; the /N is dp), and several
activation models, from the slides' to exact ones (``llmtrain.cost.activations``).
Everything is in bytes (ints); ``Estimate`` converts to GB (10⁹) or GiB (2³⁰) for display.
``estimate(...).step_peak`` follows one training step phase by phase (``llmtrain.cost.step_peak``).

With a pipeline (pp > 1) the first stage holds several micro-batches' activations at once:
``estimate`` counts them for its schedule (1F1B or interleaved, ``pipeline_activation_bytes``),
as the planner does. Whose bytes: ``FRAMEWORKS`` names each framework's accounting, every
constant with its source: the slides' (16P, DeepSpeed's runtime, transformers' softmax copy),
DeepSpeed's own estimator (18 bytes per partitioned parameter), Megatron-LM's distributed
optimizer (6 + 12/d) and FSDP2 as torchtitan runs it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .. import check
from ..model.recompute import MODELLED
from ..model.shapes import ATTN_IMPLS, ModelShape
from ..units import GB, GIB, dtype_bytes
from . import activations as _af
from . import context as _ctx
from . import methods as _ms
from . import pp_schedule as _pp
from . import step_peak as _step_peak
from .frameworks import FRAMEWORKS, Framework, framework_of
from .layout import ParallelDims
from .states import (NO_STEP_PEAK, OPTIMIZERS, PER_TENSOR, PRECISIONS, as_dims, largest_layer_params,
                     model_state_bytes, param_numels, parallel_dims, params_per_gpu,
                     state_bytes_per_param)
from ..model.shapes import resolve

# The estimate is this module's; the parts it adds up have their own homes (re-exported here
# because ``memory.estimate``'s readers look for them here): model states in ``states``, whose
# bytes in ``frameworks``; the slides' and LLMBox's formulas in ``slides``; measuring in
# ``llmtrain.measure.tracker``.
__all__ = ["GB", "GIB", "CP_METHODS", "activation_bytes", "Estimate", "estimate", "step_peak",
           "pipeline_schedule", "in_flight_microbatches", "pipeline_activation_bytes",
           "state_bytes_per_param", "parallel_dims", "params_per_gpu", "param_numels",
           "model_state_bytes", "PRECISIONS", "OPTIMIZERS", "PER_TENSOR", "NO_STEP_PEAK",
           "Framework", "FRAMEWORKS", "framework_of", "largest_layer_params"]


# --- activations ------------------------------------------------------------------------

CP_METHODS = ("ring", "all-gather")  # how a cp rank gets the other ranks' K and V

def activation_bytes(shape: ModelShape, batch: int, seq: int, *, dtype: Any = "bf16",
                     impl: str = "textbook", recompute: str | None = None, tp: int = 1,
                     sp: bool = False, attention: str = "sdpa", cp: int = 1) -> int:
    """Bytes of activations kept for backward in one forward pass (with the loss), by the
    activation model ``impl`` (one of ``activation_formulas.IMPLS``):

    - "textbook" (the slides): ``activation_formulas.textbook_bytes``, L·b·BTH + 4BTV. It *is*
      full recomputation, so recompute must be "full" (the default for this impl).
    - "korthikanti" (Korthikanti et al., MLSys 2023): ``activation_formulas.korthikanti_bytes``,
      sbh(34 + 5as/h) per layer and its TP/SP/recomputation variants; 16-bit only.
    - "reference", "hf-eager", "hf-sdpa": ``activation_formulas.saved_bytes``, exact for
      ``llmtrain.llama.Llama`` (``attention`` picks its kernel) and transformers'
      LlamaForCausalLM at the pinned release. tp must be 1.
    recompute: one of ``recompute.MODELLED`` ("none", "full", "selective"); None means the
    impl's own default. tp: the tensor-parallel degree, sp: sequence parallel. cp: context
    parallelism, seq/cp tokens of each sequence per rank ("textbook", "korthikanti", and
    "reference" as ``parallel.context_parallel`` runs it: ``context.cp_saved_bytes``, ring).
    A MoE shape is counted by "textbook" only (each layer's input: the FFN's kind does not
    matter there).
    """
    shape = resolve(shape, "shape")
    check.one_of("impl", impl, _af.IMPLS)
    check.boolean("sp", sp)
    check.one_of("attention", attention, ATTN_IMPLS)
    check.positive_int("batch", batch)
    check.positive_int("seq", seq)
    check.positive_int("tp", tp)
    _af.check_cp(cp, seq)
    b = dtype_bytes(dtype)
    if impl != "textbook" and (shape.is_moe or shape.is_mla):
        raise ValueError(f"impl={impl!r} counts a dense LLaMA/GPT layer: a MoE or MLA shape "
                         f"({shape.name!r}) needs impl='textbook'")
    if cp > 1 and impl not in ("textbook", "korthikanti", "reference"):
        raise ValueError(f"cp > 1 is counted by impl='textbook', 'korthikanti' or 'reference', "
                         f"got impl={impl!r}")
    if recompute is None:
        recompute = "full" if impl == "textbook" else "none"
    check.one_of("recompute", recompute, MODELLED)
    if impl == "textbook":
        if recompute != "full":
            raise ValueError("impl='textbook' keeps each layer's input, i.e. recompute='full'; "
                             f"got recompute={recompute!r}")
        return _af.textbook_bytes(shape, batch, seq, dtype=dtype, tp=tp, sp=sp, cp=cp)
    if impl == "korthikanti":
        if b != 2:
            raise ValueError("impl='korthikanti' counts 16-bit activations: dtype must be bf16 or fp16")
        return _af.korthikanti_bytes(shape, batch, seq, recompute=recompute, tp=tp, sp=sp, cp=cp)
    if tp != 1 or sp:
        raise ValueError(f"impl={impl!r} is exact for one device: tp must be 1 and sp False")
    if cp > 1:  # the reference LLaMA under parallel.context_parallel (ring, zigzag), measured
        if recompute != "none" or attention != "sdpa":
            raise ValueError("impl='reference' with cp > 1 is counted for recompute='none' and "
                             f"attention='sdpa', got recompute={recompute!r}, "
                             f"attention={attention!r}")
        return _ctx.cp_saved_bytes(shape, batch, seq, cp, dtype=dtype)
    kw = {"attention": attention} if impl == "reference" else {}
    return _af.saved_bytes(shape, batch, seq, dtype=dtype, impl=impl, recompute=recompute, **kw)


# --- a pipeline's micro-batches in flight ---------------------------------------------------

def pipeline_schedule(pp: int, virtual: int = 1) -> str | None:
    """The schedule ``estimate`` assumes: None for pp = 1, "1f1b" (PipeDream-Flush, Megatron's
    default), or "interleaved" with ``virtual`` > 1 chunks per rank."""
    check.positive_int("pp", pp)
    check.positive_int("virtual", virtual)
    if pp == 1:
        if virtual != 1:
            check.fail("virtual", "1 without pipeline parallelism (pp = 1)", virtual)
        return None
    return "1f1b" if virtual == 1 else "interleaved"


def in_flight_microbatches(pp: int, microbatches: int | None = None,
                           virtual: int = 1) -> Fraction:
    """Micro-batches' worth of activations the first stage holds at its peak (rank 0 holds the
    most): ``pp_schedule.held_microbatches(schedule, pp, m, 0, v)``. 1F1B: min(pp, m);
    interleaved: min(2(pp − 1) + (v − 1)·pp + 1, m·v)/v; pp = 1: 1 (accumulated micro-batches
    run one after another). ``microbatches=None``: m at least the warm-up, the large-m limit
    (1F1B: pp; interleaved: pp + (pp − 1)/v).

    Checked against the replayed schedule:
    tests/test_memory.py::test_in_flight_is_the_schedules_peak."""
    name = pipeline_schedule(pp, virtual)
    check.optional(check.positive_int, "microbatches", microbatches)
    if name is None:
        return Fraction(1)
    m = 2 * pp if microbatches is None else microbatches  # 2·pp·v > the warm-up + 1
    return _pp.held_microbatches(name, pp, m, 0, virtual)


def pipeline_activation_bytes(shape: ModelShape, dims: ParallelDims | int, micro_batch: int,
                              seq: int, *, recompute: str | None = None, sp: bool = False,
                              impl: str = "korthikanti", microbatches: int | None = None,
                              virtual: int = 1, dtype: Any = "bf16",
                              attention: str = "sdpa") -> tuple[int, int, Fraction]:
    """(one micro-batch's activations of the first stage's ⌈L/pp⌉ layers, the bytes of the
    other micro-batches in flight, how many are in flight) under the pipeline schedule.

    One micro-batch: ``activation_bytes`` of the stage (its layers, with the loss, as
    ``estimate`` always counted). In flight: c = ``in_flight_microbatches(pp, microbatches,
    virtual)``; the others add ⌈(c − 1)·n·a⌉, with n = ⌈L/pp⌉ and a one layer's activations
    (``activation_bytes`` of n + 1 layers minus of n). So the first stage of 1F1B keeps pp
    micro-batches of L/pp layers: as much as the whole model's L layers for one (notebook 07,
    where the memory tracker measures it). Cached: the planner calls it for every layout.
    Checked: tests/test_memory.py::test_in_flight_equals_plan_memory_parts and (through
    ``estimate``) tests/test_memory.py::test_llama3_70b_first_stage_holds_two_microbatches.
    """
    shape = resolve(shape, "shape")
    dims = as_dims(dims)
    check.positive_int("micro_batch", micro_batch)
    check.positive_int("seq", seq)
    check.one_of("impl", impl, _af.IMPLS)  # before the cache, which needs hashable arguments
    check.optional(check.one_of, "recompute", recompute, MODELLED)
    check.boolean("sp", sp)
    check.one_of("attention", attention, ATTN_IMPLS)
    dtype_bytes(dtype)
    count = in_flight_microbatches(dims.pp, microbatches, virtual)
    one, extra = _pipeline_activations(shape, dims.pp, dims.tp, micro_batch, seq, recompute, sp,
                                       impl, dtype, attention, count, dims.cp)
    return one, extra, count


@functools.lru_cache(maxsize=4096)
def _pipeline_activations(shape, pp, tp, b, seq, recompute, sp, impl, dtype, attention,
                          count, cp=1) -> tuple[int, int]:
    n = math.ceil(shape.num_layers / pp)
    kw = dict(dtype=dtype, impl=impl, recompute=recompute, tp=tp, sp=sp, attention=attention,
              cp=cp)
    def layers(k):  # the shape cut to k layers (textbook counts a MoE layer as any layer)
        return shape.replace(num_layers=k, first_dense_layers=min(shape.first_dense_layers, k))
    one = activation_bytes(shape if pp == 1 else layers(n), b, seq, **kw)
    if count == 1:
        return one, 0
    layer = activation_bytes(layers(n + 1), b, seq, **kw) - one
    return one, math.ceil((count - 1) * n * layer)


# --- the whole estimate -------------------------------------------------------------------



@dataclass(frozen=True)
class Estimate:
    """Per-GPU memory by part, in bytes, with GB (10⁹) and GiB (2³⁰) views.

    Checked: tests/test_memory.py::test_slides_worked_example (the slides' totals, both views)."""

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
        w = max(16, *map(len, self.parts))
        rows = [f"{'part':<{w}} {'bytes':>18} {'GB':>9} {'GiB':>9}"]
        for k, v in {**self.parts, "total": self.total}.items():
            rows.append(f"{k:<{w}} {v:>18,} {v / GB:>9.2f} {v / GIB:>9.2f}")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def estimate(shape: ModelShape, dims: ParallelDims | int = ParallelDims(), batch: int = 1,
             seq: int | None = None, *, zero: int = 3, recompute: str | None = "full",
             dtype: Any = "bf16", impl: str = "textbook", precision: str = "mixed",
             optimizer: str = "adamw", sp: bool = False, attention: str = "sdpa",
             softmax_extra: bool = True, overheads: bool = True, set_to_none: bool = True,
             optimizer_impl: str = "single-tensor", galore_rank: int | None = None,
             microbatches: int | None = None, virtual: int = 1,
             framework: str | Framework = "slides",
             bytes_per_param: dict[str, float] | None = None, cp_method: str = "ring") -> Estimate:
    """Per-GPU training memory: model states + activations + other.

    ``dims``: the layout, a ``ParallelDims(dp, tp, pp)`` (``parallel_dims(gpus, tp, pp)``
    builds it from a GPU count), or an int n = ParallelDims(dp=n), n data-parallel GPUs.
    ZeRO divides by dp; sp (sequence parallel) is an option of tp > 1. batch is the
    micro-batch per GPU. Activations of the first pipeline stage (the busiest): "activations"
    are one micro-batch's through its ⌈L/pp⌉ layers; with pp > 1 "in-flight activations" are
    the schedule's other micro-batches (``pipeline_activation_bytes``: 1F1B holds min(pp, m),
    interleaved with ``virtual`` chunks more; ``microbatches`` m per step, None = at least
    the warm-up). ``.details["in_flight"]`` is that count, ``["schedule"]`` the schedule.
    Other, by ``framework`` (one of ``FRAMEWORKS``, each constant sourced there): "slides"
    (the default) adds transformers' extra 8BTV in the softmax (``softmax_extra``), and the
    slides' framework (1 GiB), ZeRO runtime (4 GiB) and fragmentation (1 GiB)
    (``overheads``); "deepspeed" counts its model states as DeepSpeed's estimator does;
    "megatron" its distributed optimizer's 6 + 12/d, no softmax extra and no ZeRO runtime;
    "fsdp" 16P split as ZeRO, no softmax extra and no ZeRO runtime.
    ``.step_peak``: the peak of one training step, which phase, what is live then
    (``llmtrain.step_peak``; ``set_to_none`` of ``zero_grad``, ``optimizer_impl`` of AdamW);
    the other micro-batches in flight are live in every phase but the optimizer step. It
    models PyTorch's mixed-precision states: None for "deepspeed" and "megatron" (their fp32
    gradient buffers are not modelled phase by phase), and None beyond 3D (cp, ep, a MoE shape
    or ``bytes_per_param``).
    Beyond 3D (notebook 14): ``dims.cp`` splits every sequence, so the activations (and the
    softmax extra) are counted at seq/cp, and with cp > 1 "ring K/V in flight" adds the next
    K and V block a rank receives while it attends to the current one (ring attention: one
    block of B·(seq/cp)·kv/tp each, 2·b·B·(seq/cp)·kv/tp bytes; the rank's own K/V are among
    the saved activations), or with ``cp_method="all-gather"`` (Llama 3's CP, §3.3.2) "gathered
    K/V": the whole sequence's K and V while a layer attends, 2·b·B·seq·kv/tp; ``dims.ep`` shards a MoE shape's routed experts; the model states
    hold TOTAL parameters (``states.held_params``), ZeRO divides the non-expert states by dp·cp
    and the expert states by dp·cp/ep (``states.zero_groups``). ``bytes_per_param``: see
    ``model_state_bytes``. Checked: tests/test_memory_5d.py.
    ``optimizer``: one of ``OPTIMIZERS``, the memory-saving methods of notebook 12 included
    (``galore_rank`` for galore/galore8bit); for ``NO_STEP_PEAK`` ones ``.step_peak`` is None.
    """
    shape = resolve(shape, "shape")
    dims = as_dims(dims)
    check.positive_int("batch", batch)
    check.optional(check.positive_int, "seq", seq)
    for name, value in (("sp", sp), ("softmax_extra", softmax_extra), ("overheads", overheads)):
        check.boolean(name, value)
    fw = framework_of(framework)
    seq = shape.max_seq_len if seq is None else seq
    tp, pp = dims.tp, dims.pp
    states = model_state_bytes(shape, dims=dims, zero=zero, precision=precision,
                               optimizer=optimizer, galore_rank=galore_rank, framework=fw,
                               bytes_per_param=bytes_per_param)
    act, in_flight, count = pipeline_activation_bytes(
        shape, dims, batch, seq, recompute=recompute, sp=sp, impl=impl,
        microbatches=microbatches, virtual=virtual, dtype=dtype, attention=attention)
    parts = {"model states": sum(states.values()), "activations": act}
    if pp > 1:
        parts["in-flight activations"] = in_flight
    check.one_of("cp_method", cp_method, CP_METHODS)
    if dims.cp > 1:
        tokens = seq // dims.cp if cp_method == "ring" else seq
        name = "ring K/V in flight" if cp_method == "ring" else "gathered K/V"
        parts[name] = 2 * dtype_bytes(dtype) * batch * tokens * (shape.kv_size // tp)
    if softmax_extra and fw.softmax_extra:
        parts["softmax extra"] = (fw.softmax_extra * batch * (seq // dims.cp) * shape.vocab_size
                                  // tp)
    if overheads:
        parts["framework"] = fw.framework_bytes
        if zero and fw.zero_runtime_bytes:
            parts["ZeRO runtime"] = fw.zero_runtime_bytes
        parts["fragmentation"] = fw.fragmentation_bytes
    details = {"model states": states, "dp": dims.dp, "dims": dims, "in_flight": count,
               "schedule": pipeline_schedule(pp, virtual), "microbatches": microbatches,
               "virtual": virtual, "framework": fw.name}
    # step_peak models an optimizer step after backward, with PyTorch's mixed-precision states
    beyond_3d = dims.cp > 1 or dims.ep > 1 or shape.is_moe or bytes_per_param is not None
    if not _ms.OPTIMIZERS[optimizer].step_phases or fw.state_bytes is not None or beyond_3d:
        return Estimate(parts, details, None)
    peak = _step_peak.phases(
        shape, batch, seq, dims=dims, params_per_gpu=params_per_gpu(shape, dims), states=states,
        activations=act, zero=zero, recompute=recompute, dtype=dtype, impl=impl,
        precision=precision, optimizer=optimizer, sp=sp, attention=attention,
        set_to_none=set_to_none, optimizer_impl=optimizer_impl,
        other={k: v for k, v in parts.items()
               if k not in ("model states", "activations", "in-flight activations",
                            "softmax extra")})
    if in_flight:  # the other micro-batches wait through forward and backward, not the step
        peak = _step_peak.StepPeak(
            {k: v if k == "optimizer step" else {**v, "in-flight activations": in_flight}
             for k, v in peak.phases.items()}, peak.set_to_none, peak.optimizer_impl)
    return Estimate(parts, details, peak)


def step_peak(shape: ModelShape, batch: int = 1, seq: int | None = None, *,
              dims: ParallelDims | int = ParallelDims(), zero: int = 0,
              recompute: str | None = "none", dtype: Any = "fp32", impl: str = "reference",
              precision: str = "fp32", optimizer: str = "adamw", sp: bool = False,
              attention: str = "sdpa", set_to_none: bool = True,
              optimizer_impl: str = "single-tensor", overheads: bool = False):
    """The peak of one training step, phase by phase (a ``step_peak.StepPeak``):
    ``estimate(shape, dims, batch, seq, ...).step_peak`` with a CPU-like device's defaults
    (fp32, no recomputation, the reference model, no framework constants).

    ``set_to_none``: the previous step's ``optimizer.zero_grad(set_to_none=...)``; False keeps
    the gradients allocated through the next forward and backward. ``optimizer_impl``: which
    AdamW loop runs: ``"single-tensor"`` (the CPU default), ``"foreach"`` (the CUDA default) or
    ``"fused"``. Measured: see tests/test_step_peak.py.
    """
    return estimate(shape, dims, batch, seq, zero=zero, recompute=recompute, dtype=dtype,
                    impl=impl, precision=precision, optimizer=optimizer, sp=sp,
                    attention=attention, overheads=overheads, set_to_none=set_to_none,
                    optimizer_impl=optimizer_impl).step_peak
