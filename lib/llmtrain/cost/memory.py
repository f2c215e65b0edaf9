"""Training memory (slides: 训练显存估计): model states, activations, the rest, and measuring.

Per GPU, the slides write

    16P/N  +  2LBTH + 12BTV  +  6        (模型与优化器 + 激活值 + 其他, "GB")

Here each part is a function with its assumptions as arguments: precision and optimizer
(the 16 of 16P), the ZeRO stage, the layout of the GPUs as one
``llmtrain.parallel.mesh.ParallelDims(dp, tp, pp)`` (``dims=``; the /N is dp), and several
activation models, from the slides' to exact ones (``llmtrain.activation_formulas``).
Everything is in bytes (ints); ``Estimate`` converts to GB (10⁹) or GiB (2³⁰) for display.
``estimate(...).step_peak`` follows one training step phase by phase (``llmtrain.step_peak``).

With a pipeline (pp > 1) the first stage holds several micro-batches' activations at once:
``estimate`` counts them for its schedule (1F1B or interleaved, ``pipeline_activation_bytes``),
as the planner does. Whose bytes: ``FRAMEWORKS`` names each framework's accounting, every
constant with its source: the slides' (16P, DeepSpeed's runtime, transformers' softmax copy),
DeepSpeed's own estimator (18 bytes per partitioned parameter), Megatron-LM's distributed
optimizer (6 + 12/d) and FSDP2 as torchtitan runs it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

import torch

from . import activations as _af
from .. import check
from . import methods as _ms
from . import params as _params
from . import step_peak as _step_peak
from ..model.shapes import ATTN_IMPLS
from . import pp_schedule as _pp
from .layout import ParallelDims, shard_range
from ..precision.formats import dtype_bytes
from ..model.recompute import MODELLED
from ..model.shapes import ModelShape

__all__ = ["GB", "GIB", "state_bytes_per_param", "parallel_dims", "params_per_gpu", "param_numels",
           "model_state_bytes", "activation_bytes", "Estimate", "estimate", "step_peak",
           "slides_formula", "llmbox_activation_bytes", "llmbox_memory_bytes",
           "llmbox_gpus_needed", "Peak", "measure_peak", "tracking", "PRECISIONS", "OPTIMIZERS",
           "Framework", "FRAMEWORKS", "framework_of", "largest_layer_params", "pipeline_schedule",
           "in_flight_microbatches", "pipeline_activation_bytes"]

GB, GIB = 10**9, 2**30


# --- the layout: dp × tp × pp GPUs ----------------------------------------------------------

def _dims(dims: Any) -> ParallelDims:
    """A ParallelDims as given, or ParallelDims(dp=dims) for a positive integer."""
    if isinstance(dims, ParallelDims):
        return dims
    try:
        return ParallelDims(dp=check.positive_int("dims", dims))
    except ValueError:
        check.fail("dims", "a ParallelDims or a positive integer (= ParallelDims(dp=dims))", dims)


def parallel_dims(gpus: int, tp: int = 1, pp: int = 1) -> ParallelDims:
    """The layout of ``gpus`` GPUs as tp × pp model-parallel groups: dp = gpus/(tp·pp).

    What ``llmtrain memory --gpus --tp --pp`` and the notebook 11 calculator build.
    """
    for name, value in (("gpus", gpus), ("tp", tp), ("pp", pp)):
        check.positive_int(name, value)  # before gpus % (tp·pp): a zero degree is named
    if gpus % (tp * pp):
        raise ValueError(f"gpus must be a multiple of tp·pp={tp * pp}, got {gpus}")
    return ParallelDims(dp=gpus // (tp * pp), tp=tp, pp=pp)


# --- model states: weights, gradients, master weights, optimizer states ---------------

PRECISIONS = _ms.PRECISIONS
# The memory-saving methods of notebook 12 (``memory_methods.METHODS``): adamw8bit, adamw4bit,
# galore, galore8bit, adamw-in-backward, lomo, badam, fp8-lm.
OPTIMIZERS = ("adamw", "adam", "sgd", "adafactor", *_ms.METHODS)
# Those whose bytes depend on the model's tensors, not only on P (a ModelShape is needed).
PER_TENSOR = ("galore", "galore8bit", "adamw-in-backward", "lomo", "badam")
# Those that step inside backward or train one block at a time: ``step_peak``'s phases (all
# gradients alive, then one optimizer step with fp32 gradients) do not describe them, so
# ``estimate`` gives no ``step_peak`` (their peaks are measured in notebook 12, tests/test_lomo.py).
NO_STEP_PEAK = ("adamw-in-backward", "lomo", "badam")


def state_bytes_per_param(precision: str = "mixed", optimizer: str = "adamw") -> dict[str, float]:
    """Bytes per parameter for each model state (the 16 in 16P, and its variants).

    mixed (Micikevicius et al. 2018): 16-bit weights 2 + 16-bit grads 2 + fp32 master 4 +
    Adam m 4 + v 4 = 16. fp32: 4 + 4 + Adam 8 = 16, no master copy. bf16 (pure): 2 + 2 +
    states in bf16. sgd: one momentum buffer. adamw8bit (Dettmers et al. 2022): m, v as 1-byte
    codes + an fp32 scale per block of 256, 2·(1 + 4/256) = 2.03125; adamw4bit (Li et al.
    2023): 2·(1/2 + 4/128) = 1.0625 (large tensors; ``model_state_bytes`` with a ModelShape
    counts each tensor, small ones stay fp32); fp8-lm (Peng et al. 2023): 1 + 1 + 2 + (1 + 2).
    adafactor and ``PER_TENSOR`` depend on the model's tensors: see ``model_state_bytes``.
    """
    check.one_of("precision", precision, PRECISIONS)
    check.one_of("optimizer", optimizer, OPTIMIZERS)
    if optimizer in PER_TENSOR:
        raise ValueError(f"optimizer={optimizer!r} depends on the model's tensors, not only on "
                         "their count: use model_state_bytes with a ModelShape")
    w, master, state = _ms.precision_bytes(precision)
    if optimizer == "fp8-lm":
        if precision != "mixed":
            check.fail("precision", "'mixed' for optimizer='fp8-lm' (it fixes its own bytes)", precision)
        return {**_ms.FP8_LM_BYTES, "optimizer": float(_ms.FP8_LM_BYTES["optimizer"])}
    if optimizer in ("adamw8bit", "adamw4bit"):  # codes + block scales
        opt = _ms.lowbit_state_bytes_per_param(8 if optimizer == "adamw8bit" else 4)
    else:
        opt = float({"adamw": 2, "adam": 2, "sgd": 1, "adafactor": 1}[optimizer] * state)
    return {"weights": w, "gradients": w, "master": master, "optimizer": opt}


def param_numels(shape: ModelShape, dims: ParallelDims | int, rank: int) -> list[int]:
    """The sizes of the tensors global ``rank`` of the layout holds: its stage's layers
    (``mesh.shard_range`` of L over pp, as ``pipeline_parallel.stage_layers``), its TP shard
    of each (``tensor_parallel``: q/k/v and gate/up fused into one matrix each when tp > 1,
    the MLP's H' columns and the vocabulary's V rows by ``mesh.shard_range``, norms and
    row-parallel biases whole), the embedding on the first stage, the final norm and the
    output layer on the last (with tied embeddings and pp > 1 the last stage keeps its own
    copy of the matrix, Megatron-LM's). ZeRO pads each to a multiple of dp:
    ``parallel.zero.expected_bytes(param_numels(...), dp, stage)`` is what the rank holds."""
    shape = check.shape("shape", shape)
    dims = _dims(dims).check(shape)
    c = dims.coords(rank)
    H, tp = shape.hidden_size, dims.tp
    q, kv = shape.q_size // tp, shape.kv_size // tp  # tp divides the heads
    f = shard_range(shape.intermediate_size, tp, c.tp)[1]
    rows = shard_range(shape.vocab_size, tp, c.tp)[1]
    first, last = c.pp == 0, c.pp == dims.pp - 1
    fused = tp > 1
    qkv = [q + 2 * kv] if fused else [q, kv, kv]
    layer = [H * n for n in qkv] + (qkv if shape.attention_bias else []) + [q * H]
    layer += [H] if shape.o_bias else []
    layer += [2 * f * H] if fused else [f * H, f * H]
    layer += ([2 * f] if fused else [f, f]) if shape.mlp_bias else []
    layer += [f * H] + ([H] if shape.mlp_bias else []) + [H, H]  # down_proj, two norms
    out = [rows * H] if first else []
    out += layer * shard_range(shape.num_layers, dims.pp, c.pp)[1]
    if last:
        out += [H] + ([] if shape.tie_embeddings and dims.pp == 1 else [rows * H])
    return out


def params_per_gpu(shape: ModelShape, dims: ParallelDims | int = ParallelDims(),
                   rank: int | None = None) -> int:
    """Parameters held by the busiest GPU of a tp × pp model-parallel group (dp replicates),
    or by global ``rank`` of the layout exactly (Σ ``param_numels``).

    TP (Megatron, as ``parallel.tensor_parallel.apply``) splits q/k/v/o by whole heads, the
    MLP's H' columns and the vocabulary's V rows by ``mesh.shard_sizes`` (the first ranks hold
    ⌈H'/tp⌉ and ⌈V/tp⌉: the busiest) and keeps the RMSNorm weights and the row-parallel biases
    (o_proj, down_proj) whole; PP gives each stage ⌈L/pp⌉ layers, the embedding to the first
    stage and the output layer and final norm to the last; with tied embeddings and pp > 1 the
    last stage keeps its own copy of the matrix (Megatron-LM's, ``pipeline_parallel``'s).
    Without ``rank``: the larger stage. ``dims.check(shape)`` refuses a layout the shape
    cannot take (tp | heads, pp ≤ L, ...).
    """
    shape = check.shape("shape", shape)
    dims = _dims(dims).check(shape)
    if rank is not None:
        return sum(param_numels(shape, dims, rank))
    tp, pp = dims.tp, dims.pp
    H, L, V = shape.hidden_size, shape.num_layers, shape.vocab_size
    q, kv, f = shape.q_size, shape.kv_size, math.ceil(shape.intermediate_size / tp)
    attn = (2 * H * q + 2 * H * kv) // tp  # tp divides the heads, so q and kv
    attn += (q + 2 * kv) // tp * shape.attention_bias + H * shape.o_bias
    mlp = 3 * H * f + (2 * f + H) * shape.mlp_bias
    layer = attn + mlp + 2 * H  # two norms, replicated
    n = math.ceil(L / pp)
    emb = math.ceil(V / tp) * H
    head = 0 if shape.tie_embeddings and pp == 1 else emb
    if pp == 1:
        return n * layer + emb + head + H
    return max(n * layer + emb, n * layer + head + H)


def model_state_bytes(num_params: int | ModelShape, *, dims: ParallelDims | int = ParallelDims(),
                      zero: int = 0, precision: str = "mixed", optimizer: str = "adamw",
                      rank: int | None = None, galore_rank: int | None = None,
                      framework: str | Framework = "slides") -> dict[str, int]:
    """Bytes per GPU of weights, gradients, master weights and optimizer states.

    ZeRO (Rajbhandari et al., SC'20) partitions over the dp = ``dims.dp`` data-parallel ranks:
    stage 1 the optimizer states (and master weights), stage 2 also the gradients,
    stage 3 also the weights: with mixed AdamW 4P + 12P/N, 2P + 14P/N, 16P/N.
    ``num_params`` is a count (tp·pp then split it evenly) or a ModelShape (then
    ``params_per_gpu`` splits it exactly; needed for adafactor's factored states).
    ``dims``: a ParallelDims, or an int = ParallelDims(dp=dims). ``rank`` (with a ModelShape):
    that global rank's states exactly, else the busiest GPU's.
    The memory-saving methods (``memory_methods.METHODS``, notebook 12) with a ModelShape and
    tp = pp = 1 are counted tensor by tensor (``memory_methods.method_state_bytes``; GaLore's
    rank ``galore_rank``, default h/4); ``PER_TENSOR`` ones need that.
    ``framework`` (one of ``FRAMEWORKS``): "slides" and "fsdp" count as above; "deepspeed"
    counts DeepSpeed's estimator exactly (2P + int(18P/N) at ZeRO-2, 4·largest layer +
    int(18P/N) at ZeRO-3: a ModelShape is needed there), with an "fp32 gradients" part;
    "megatron" its distributed optimizer (zero=1: 6 + 12/d bytes per parameter; zero=0: 18);
    "nemo" Apex's DistributedFusedAdam with the Nemotron recipes' bf16 optimizer state (zero=1:
    4 + 8/d, 10 at d = 1; zero=0: 10). Those are for mixed-precision Adam/AdamW (Megatron also
    fp32).
    """
    check.one_of("zero", zero, (0, 1, 2, 3))
    check.one_of("optimizer", optimizer, OPTIMIZERS)
    fw = framework_of(framework)
    if fw.state_bytes is not None:
        return _framework_model_states(fw, num_params, dims, zero, precision, optimizer, rank,
                                       galore_rank)
    check.optional(check.positive_int, "galore_rank", galore_rank)
    if galore_rank is not None and optimizer not in ("galore", "galore8bit"):
        raise ValueError(f"galore_rank is only used by optimizer 'galore' or 'galore8bit', got "
                         f"galore_rank={galore_rank} with optimizer={optimizer!r}")
    dims = _dims(dims)
    if isinstance(num_params, str):  # a preset name
        num_params = check.shape("num_params", num_params)
    if optimizer in _ms.METHODS and (isinstance(num_params, ModelShape) or optimizer in PER_TENSOR):
        if not isinstance(num_params, ModelShape):
            raise ValueError(f"optimizer={optimizer!r} needs a ModelShape for num_params: its "
                             "bytes depend on the model's tensors")
        if dims.tp != 1 or dims.pp != 1:
            raise ValueError(f"optimizer={optimizer!r} is counted for tp=1, pp=1 only")
        _ms.galore_rank(num_params, galore_rank, name="galore_rank")  # r <= min(m, n)
        parts = _ms.method_state_bytes(num_params, optimizer, precision=precision, rank=galore_rank)
        return _zero_split(parts, zero, dims.dp)
    per = state_bytes_per_param(precision, optimizer)
    if isinstance(num_params, ModelShape):
        P, shape = params_per_gpu(num_params, dims, rank), num_params
    else:
        if rank is not None:
            raise ValueError("rank needs a ModelShape for num_params (a count is split evenly)")
        check.positive_int("num_params", num_params)
        P, shape = math.ceil(num_params / (dims.tp * dims.pp)), None
    state_elems = P
    if optimizer == "adafactor":
        if shape is None:
            raise ValueError("optimizer='adafactor' needs a ModelShape: its second moment is "
                             "factored per matrix (rows + columns)")
        if dims.tp != 1 or dims.pp != 1:
            raise ValueError("optimizer='adafactor' is modelled for tp=1, pp=1 only")
        state_elems = _adafactor_elements(shape)
    parts = {"weights": P * per["weights"], "gradients": P * per["gradients"],
             "master": P * per["master"], "optimizer": math.ceil(state_elems * per["optimizer"])}
    return _zero_split(parts, zero, dims.dp)


def _zero_split(parts: dict[str, int], zero: int, dp: int) -> dict[str, int]:
    """ZeRO's partition over dp ranks: stage 1 the master weights and optimizer states, 2 also
    the gradients, 3 also the weights."""
    shard = {"weights": zero >= 3, "gradients": zero >= 2, "master": zero >= 1, "optimizer": zero >= 1}
    return {k: math.ceil(v / dp) if shard[k] else int(v) for k, v in parts.items()}


# --- frameworks: whose bytes per parameter, whose constants --------------------------------

@dataclass(frozen=True)
class Framework:
    """One framework's memory accounting, each constant with its source (``sources``).

    ``state_bytes``: bytes per parameter element of each model state for mixed-precision Adam
    (None: the slides' ``state_bytes_per_param``, any precision and optimizer);
    ``sharded_from``: the ZeRO stage from which that state is split over dp (None: never);
    ``gathered_layer_bytes``: at ZeRO-3, bytes per element of the largest layer gathered whole;
    ``zeros``: the stages the framework has; ``softmax_extra``: bytes per B·T·V/tp kept by the
    loss beyond the activation models' fp32 4BTV/tp; then the runtime constants per GPU."""

    name: str
    state_bytes: dict[str, int] | None
    sharded_from: dict[str, int | None]
    softmax_extra: int
    framework_bytes: int
    zero_runtime_bytes: int
    fragmentation_bytes: int
    zeros: tuple[int, ...] = (0, 1, 2, 3)
    gathered_layer_bytes: int = 0
    precisions: tuple[str, ...] = ("mixed", "fp32", "bf16")
    sources: dict[str, str] = field(default_factory=dict)
    # parts that are buffers of their own only when split over dp > 1 (else views of another)
    split_only: tuple[str, ...] = ()


# The slides' "其他" (other), per GPU: PyTorch runtime ~1 GB, DeepSpeed 1-4 GB, fragmentation ~1 GB.
FRAMEWORK_BYTES = 1 * GIB
ZERO_RUNTIME_BYTES = 4 * GIB
FRAGMENTATION_BYTES = 1 * GIB

_SLIDES_OTHER = ("the slides' 其他 (other), per GPU: PyTorch runtime ~1 GB, DeepSpeed 1-4 GB, "
                 "fragmentation ~1 GB (notebook 11 §5)")
_TRANSFORMERS_SOFTMAX = ("transformers' loss upcasts the logits to fp32 and keeps them: 8BTV "
                         "beyond the 4BTV of the activation models (notebook 11; the slides' 12BTV)")
_ZERO_SHARDS = {"weights": 3, "gradients": 2, "master": 1, "optimizer": 1}

FRAMEWORKS: dict[str, Framework] = {f.name: f for f in [
    Framework(
        "slides", None, _ZERO_SHARDS, 8, FRAMEWORK_BYTES, ZERO_RUNTIME_BYTES, FRAGMENTATION_BYTES,
        sources={"states": "Rajbhandari et al. 2020 (ZeRO), Fig. 1: 2 + 2 + K bytes per "
                           "parameter with K = 12 (mixed AdamW), partitioned by stage",
                 "softmax_extra": _TRANSFORMERS_SOFTMAX, "constants": _SLIDES_OTHER}),
    # DeepSpeed's own estimators, without offload: ZeRO-2 gpu_mem = 2P + int(18P/N) ("2 =
    # params_16bit, 18 = 2_grads_16bit + 4_grads_32bit + 4_params_32bit +
    # 8_optimizer_states_32bit"); ZeRO-3 gpu_mem = 4·largest_layer + int(18P/N), the 18 being
    # "4b params, 4b grads, 4b momentum and 4b variance + 2b for fp16 params" and the largest
    # layer's "2 bytes fp16 params gathered and 2 bytes fp16 grads" (no 16-bit gradient
    # partition at stage 3). Stages 0 and 1 (no estimator in DeepSpeed) split the same list.
    Framework(
        "deepspeed",
        {"weights": 2, "gradients": 2, "fp32 gradients": 4, "master": 4, "optimizer": 8},
        {**_ZERO_SHARDS, "fp32 gradients": 1}, 8, FRAMEWORK_BYTES, ZERO_RUNTIME_BYTES,
        FRAGMENTATION_BYTES,
        gathered_layer_bytes=4, precisions=("mixed",),
        sources={"states": "deepspeedai/DeepSpeed edaa722, deepspeed/runtime/zero/"
                           "stage_1_and_2.py estimate_zero2_model_states_mem_needs and "
                           "stage3.py estimate_zero3_model_states_mem_needs (cpu_offload=False); "
                           "docs/code-docs/source/memory.rst (the 18 and the largest layer)",
                 "softmax_extra": _TRANSFORMERS_SOFTMAX, "constants": _SLIDES_OTHER}),
    # Megatron-LM's distributed optimizer table (bf16 parameters, fp32 main gradients): 18 bytes
    # per parameter without it, 6 + 12/d with it: bf16 weights 2 and fp32 main gradients 4 whole
    # (backward accumulates into main_grad), fp32 main weights 4 and Adam 8 over dp. fp32: 16,
    # 8 + 8/d. Its vocab-parallel cross entropy keeps one fp32 softmax of its V/t logits (the
    # logits' .float() copy, exp and divided in place, ctx.save_for_backward): the 4BTV/t the
    # activation models count, nothing more.
    Framework(
        "megatron", {"weights": 2, "gradients": 4, "master": 4, "optimizer": 8},
        {"weights": None, "gradients": None, "master": 1, "optimizer": 1}, 0, FRAMEWORK_BYTES, 0,
        FRAGMENTATION_BYTES, zeros=(0, 1), precisions=("mixed", "fp32"),
        sources={"states": "NVIDIA/Megatron-LM d98e8a6, docs/user-guide/features/"
                           "dist_optimizer.md, table: bf16 parameters, fp32 gradients: 18 "
                           "(non-distributed), 6 + 12/d (distributed); fp32: 16, 8 + 8/d",
                 "softmax_extra": "megatron/core/tensor_parallel/cross_entropy.py "
                                  "(_VocabParallelCrossEntropy.forward): saves exp_logits, the "
                                  "fp32 softmax of the V/t shard, in place of its .float() copy",
                 "constants": "no DeepSpeed runtime (ZeRO runtime 0); PyTorch runtime and "
                              "fragmentation as the slides (1 GiB each)"}),
    # PyTorch FSDP2 as torchtitan runs it: fp32 sharded parameters, bf16 compute copies gathered
    # per layer, fp32 reduced gradients, Adam: 16 bytes per parameter split as ZeRO-3 (or as
    # ``zero`` says). torchtitan's loss is cross_entropy(pred.float()) and it frees the logits
    # before backward: the fp32 log-softmax it saves is the activation models' 4BTV.
    Framework(
        "fsdp", None, _ZERO_SHARDS, 0, FRAMEWORK_BYTES, 0, FRAGMENTATION_BYTES,
        sources={"states": "pytorch/torchtitan b5bcd76, torchtitan/config/configs.py: "
                           "training dtype float32, mixed_precision_param bfloat16 (fully_shard's "
                           "compute copies), mixed_precision_reduce float32: fp32 parameters 4 + "
                           "fp32 gradients 4 + Adam 8 = 16 bytes per parameter, sharded as ZeRO-3",
                 "softmax_extra": "pytorch/torchtitan b5bcd76, torchtitan/components/loss.py "
                                  "cross_entropy_loss (F.cross_entropy(pred.float(), ...)) and "
                                  "torchtitan/trainer.py (del pred before loss.backward())",
                 "constants": "no DeepSpeed runtime (ZeRO runtime 0); PyTorch runtime and "
                              "fragmentation as the slides (1 GiB each)"}),
    # NeMo's distributed_fused_adam (Apex DistributedFusedAdam as MegatronDistributedFusedAdam)
    # with the dgxc-benchmarking Nemotron-4 recipes' optim (dtype bf16, grad_sync_dtype bf16,
    # contiguous_grad_buffer) and megatron_amp_O2 bf16: NeMo then sets param_sync_dtype bf16 and
    # store_params False (optim dtype == model dtype), so no master weights: Adam updates the
    # bf16 weights from bf16 moments. Whole: bf16 weights 2, the contiguous bf16 gradient buffer
    # 2 (main_grad, accumulated over micro-batches). Over dp: the reduce-scatter's bf16 gradient
    # shards 2 (a view of the buffer at dp = 1), Adam's bf16 moments 2 + 2, the step's bf16
    # output shards 2 (held until each bucket's all-gather): 4 + 8/d at the step, 10 at d = 1.
    # zero=0: NeMo's disable_distributed_parameters (a distributed group of one): 10.
    # Not counted: the word embedding's fp32 gradients (with_fp32_embedding_grads, default True:
    # +2 + 2/d bytes per embedding element on the first pipeline stage) and the bucket-sized
    # transients. The recipe with NeMo's default dtype fp32 would keep 4 + 14/d instead (fp32
    # moments 8, and the 16-bit remainders of fp32 weights 2: store_param_remainders).
    Framework(
        "nemo", {"weights": 2, "gradients": 2, "gradient shards": 2, "master": 0,
                 "optimizer": 4, "step output shards": 2},
        {"weights": None, "gradients": None, "gradient shards": 1, "master": 1, "optimizer": 1,
         "step output shards": 1}, 0, FRAMEWORK_BYTES, 0, FRAGMENTATION_BYTES, zeros=(0, 1),
        precisions=("mixed",), split_only=("gradient shards",),
        sources={"states": "NVIDIA/dgxc-benchmarking 35a9aec nemotron/nemotron4-340b-synth.yaml "
                           "optim (l. 182-189: distributed_fused_adam, grad_sync_dtype bf16, "
                           "dtype bf16, contiguous_grad_buffer); NVIDIA/NeMo 4801936 (24.09-beta) "
                           "megatron_base_model.py setup_optimization (l. 787-814: store_params "
                           "False when optim dtype == model dtype) and nemo/core/optim/"
                           "distributed_adam.py zero_grad (main_grad = grad_buffer_view); "
                           "NVIDIA/apex 810ffae (NeMo's Dockerfile.ci APEX_TAG) apex/contrib/"
                           "optimizers/distributed_fused_adam.py: StateBucket (exp_avg, exp_avg_sq "
                           "shards in dtype; params_shard only if store_params), _init_grad_buffer "
                           "(whole buffer in grad_sync_dtype), _start_bucket_grad_sync "
                           "(sync_grads_shard, a view at distributed_size 1), step (params_shard "
                           "of param_sync_dtype, freed in _finish_bucket_param_sync)",
                 "softmax_extra": "as 'megatron' (Megatron's vocab-parallel cross entropy); not "
                                  "re-read for the fused one the recipe enables "
                                  "(cross_entropy_loss_fusion)",
                 "constants": "no DeepSpeed runtime (ZeRO runtime 0); PyTorch runtime and "
                              "fragmentation as the slides (1 GiB each)"}),
]}


def framework_of(name: str | Framework) -> Framework:
    """One of ``FRAMEWORKS`` by name ("slides", "deepspeed", "megatron", "fsdp", "nemo"), or as
    given."""
    if isinstance(name, Framework):
        return name
    return FRAMEWORKS[check.one_of("framework", name, tuple(FRAMEWORKS))]


def largest_layer_params(shape: ModelShape, dims: ParallelDims | int = ParallelDims()) -> int:
    """DeepSpeed's ``largest_layer_params`` (stage3.py ``model_to_params``: the most parameters
    one module holds itself) of transformers' Llama on one GPU of the tp group: the embedding
    or lm_head (⌈V/tp⌉·H), a projection (its TP shard and bias) or a norm."""
    shape = check.shape("shape", shape)
    dims = _dims(dims).check(shape)
    H, tp = shape.hidden_size, dims.tp
    q, kv = shape.q_size // tp, shape.kv_size // tp
    f = math.ceil(shape.intermediate_size / tp)
    ab, ob, mb = shape.attention_bias, shape.o_bias, shape.mlp_bias
    return max(math.ceil(shape.vocab_size / tp) * H, H * q + q * ab, H * kv + kv * ab,
               q * H + H * ob, H * f + f * mb, f * H + H * mb, H)


def _framework_model_states(fw: Framework, num_params, dims, zero: int, precision: str,
                            optimizer: str, rank: int | None, galore_rank) -> dict[str, int]:
    """``model_state_bytes`` for a framework with its own table (DeepSpeed, Megatron)."""
    check.one_of("precision", precision, PRECISIONS)
    if zero not in fw.zeros:
        check.fail("zero", f"one of {fw.zeros} for framework={fw.name!r}", zero)
    if precision not in fw.precisions:
        check.fail("precision", f"one of {fw.precisions} for framework={fw.name!r}", precision)
    if optimizer not in ("adam", "adamw"):
        check.fail("optimizer", f"'adam' or 'adamw' for framework={fw.name!r} (its table counts "
                   "Adam's two fp32 moments)", optimizer)
    if galore_rank is not None:
        raise ValueError(f"galore_rank is only used by optimizer 'galore' or 'galore8bit', got "
                         f"galore_rank={galore_rank} with optimizer={optimizer!r}")
    dims = _dims(dims)
    if isinstance(num_params, str):
        num_params = check.shape("num_params", num_params)
    if isinstance(num_params, ModelShape):
        P = params_per_gpu(num_params, dims, rank)
        largest = largest_layer_params(num_params, dims)
    else:
        if rank is not None:
            raise ValueError("rank needs a ModelShape for num_params (a count is split evenly)")
        check.positive_int("num_params", num_params)
        P, largest = math.ceil(num_params / (dims.tp * dims.pp)), None
        if fw.gathered_layer_bytes and zero == 3:
            raise ValueError(f"framework={fw.name!r} at zero=3 counts the largest layer: "
                             "num_params must be a ModelShape")
    return _framework_states(fw, P, dims.dp, zero, precision, largest)


def _framework_states(fw: Framework, P: int, dp: int, zero: int, precision: str,
                      largest_layer: int) -> dict[str, int]:
    """Model-state bytes of ``fw``'s table. DeepSpeed rounds the partitioned states as one,
    int(18·P/N): the parts are cumulative floors, so they add up to exactly that."""
    per = dict(fw.state_bytes)
    if precision == "fp32":  # Megatron's fp32 row: fp32 weights and gradients, no main copy
        per = {"weights": 4, "gradients": 4, "master": 0, "optimizer": 8}
    if fw.gathered_layer_bytes and zero == 3:
        per["gradients"] = 0  # at stage 3 only the gathered layer's 16-bit gradients exist
    out: dict[str, int] = {}
    shard = Fraction(0)
    for k, v in per.items():
        split = fw.sharded_from.get(k) is not None and zero >= fw.sharded_from[k]
        if k in fw.split_only and not (split and dp > 1):
            out[k] = 0
        elif not split:
            out[k] = v * P
        elif fw.name == "deepspeed":
            out[k] = math.floor((shard + Fraction(v * P, dp))) - math.floor(shard)
            shard += Fraction(v * P, dp)
        else:
            out[k] = math.ceil(Fraction(v * P, dp))
    if fw.gathered_layer_bytes and zero == 3:
        out["gathered layer"] = fw.gathered_layer_bytes * largest_layer
    return out


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

def activation_bytes(shape: ModelShape, batch: int, seq: int, *, dtype: Any = "bf16",
                     impl: str = "textbook", recompute: str | None = None, tp: int = 1,
                     sp: bool = False, attention: str = "sdpa") -> int:
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
    impl's own default. tp: the tensor-parallel degree, sp: sequence parallel.
    """
    shape = check.shape("shape", shape)
    check.one_of("impl", impl, _af.IMPLS)
    check.boolean("sp", sp)
    check.one_of("attention", attention, ATTN_IMPLS)
    check.positive_int("batch", batch)
    check.positive_int("seq", seq)
    check.positive_int("tp", tp)
    b = dtype_bytes(dtype)
    if recompute is None:
        recompute = "full" if impl == "textbook" else "none"
    check.one_of("recompute", recompute, MODELLED)
    if impl == "textbook":
        if recompute != "full":
            raise ValueError("impl='textbook' keeps each layer's input, i.e. recompute='full'; "
                             f"got recompute={recompute!r}")
        return _af.textbook_bytes(shape, batch, seq, dtype=dtype, tp=tp, sp=sp)
    if impl == "korthikanti":
        if b != 2:
            raise ValueError("impl='korthikanti' counts 16-bit activations: dtype must be bf16 or fp16")
        return _af.korthikanti_bytes(shape, batch, seq, recompute=recompute, tp=tp, sp=sp)
    if tp != 1 or sp:
        raise ValueError(f"impl={impl!r} is exact for one device: tp must be 1 and sp False")
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
    (1F1B: pp; interleaved: pp + (pp − 1)/v)."""
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
    """
    shape = check.shape("shape", shape)
    dims = _dims(dims)
    check.positive_int("micro_batch", micro_batch)
    check.positive_int("seq", seq)
    check.one_of("impl", impl, _af.IMPLS)  # before the cache, which needs hashable arguments
    check.optional(check.one_of, "recompute", recompute, MODELLED)
    check.boolean("sp", sp)
    check.one_of("attention", attention, ATTN_IMPLS)
    dtype_bytes(dtype)
    count = in_flight_microbatches(dims.pp, microbatches, virtual)
    one, extra = _pipeline_activations(shape, dims.pp, dims.tp, micro_batch, seq, recompute, sp,
                                       impl, dtype, attention, count)
    return one, extra, count


@functools.lru_cache(maxsize=4096)
def _pipeline_activations(shape, pp, tp, b, seq, recompute, sp, impl, dtype, attention,
                          count) -> tuple[int, int]:
    n = math.ceil(shape.num_layers / pp)
    kw = dict(dtype=dtype, impl=impl, recompute=recompute, tp=tp, sp=sp, attention=attention)
    one = activation_bytes(shape if pp == 1 else shape.replace(num_layers=n), b, seq, **kw)
    if count == 1:
        return one, 0
    layer = activation_bytes(shape.replace(num_layers=n + 1), b, seq, **kw) - one
    return one, math.ceil((count - 1) * n * layer)


# --- the whole estimate -------------------------------------------------------------------



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
             framework: str | Framework = "slides") -> Estimate:
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
    gradient buffers are not modelled phase by phase).
    ``optimizer``: one of ``OPTIMIZERS``, the memory-saving methods of notebook 12 included
    (``galore_rank`` for galore/galore8bit); for ``NO_STEP_PEAK`` ones ``.step_peak`` is None.
    """
    shape = check.shape("shape", shape)
    dims = _dims(dims)
    check.positive_int("batch", batch)
    check.optional(check.positive_int, "seq", seq)
    for name, value in (("sp", sp), ("softmax_extra", softmax_extra), ("overheads", overheads)):
        check.boolean(name, value)
    fw = framework_of(framework)
    seq = shape.max_seq_len if seq is None else seq
    tp, pp = dims.tp, dims.pp
    states = model_state_bytes(shape, dims=dims, zero=zero, precision=precision,
                               optimizer=optimizer, galore_rank=galore_rank, framework=fw)
    act, in_flight, count = pipeline_activation_bytes(
        shape, dims, batch, seq, recompute=recompute, sp=sp, impl=impl,
        microbatches=microbatches, virtual=virtual, dtype=dtype, attention=attention)
    parts = {"model states": sum(states.values()), "activations": act}
    if pp > 1:
        parts["in-flight activations"] = in_flight
    if softmax_extra and fw.softmax_extra:
        parts["softmax extra"] = fw.softmax_extra * batch * seq * shape.vocab_size // tp
    if overheads:
        parts["framework"] = fw.framework_bytes
        if zero and fw.zero_runtime_bytes:
            parts["ZeRO runtime"] = fw.zero_runtime_bytes
        parts["fragmentation"] = fw.fragmentation_bytes
    details = {"model states": states, "dp": dims.dp, "dims": dims, "in_flight": count,
               "schedule": pipeline_schedule(pp, virtual), "microbatches": microbatches,
               "virtual": virtual, "framework": fw.name}
    # step_peak models an optimizer step after backward, with PyTorch's mixed-precision states
    if optimizer in NO_STEP_PEAK or fw.state_bytes is not None:
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


def slides_formula(num_params: int, gpus: int, L: int, B: int, T: int, H: int, V: int, *,
                   other_unit: int = GB) -> Estimate:
    """The slides' per-GPU formula exactly as written: 16P/N + 2LBTH + 12BTV + 6.

    The first terms are bytes; the "+6" is in the slide's unit, GB — pass other_unit=GIB
    to read it as GiB (which is how the slides' worked example adds up; notebook 11).
    """
    for name, v in dict(num_params=num_params, gpus=gpus, L=L, B=B, T=T, H=H, V=V,
                        other_unit=other_unit).items():
        check.positive_int(name, v)
    return Estimate({"model states": math.ceil(16 * num_params / gpus),
                     "activations": 2 * L * B * T * H + 12 * B * T * V,
                     "other": 6 * other_unit})


def llmbox_activation_bytes(L: int, B: int, T: int, H: int, V: int) -> int:
    """The book authors' own calculator (RUCAIBox/LLMBox, training/gpu_calculator.py):
    (12 + 2L)·BTH + 12·BTV bytes of activations — the slides' 2LBTH + 12BTV plus 12BTH."""
    for name, v in dict(L=L, B=B, T=T, H=H, V=V).items():
        check.positive_int(name, v)
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
        check.positive_int(name, v)
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
    check.positive_int("card_bytes", card_bytes)
    check.positive_int("max_gpus", max_gpus)
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
    with tracking(include=include) as tracker:
        start = tracker.live
        fn()
    return Peak(tracker.peak, start, tracker.live, "cpu", "TorchDispatchMode storage tracker")


@contextlib.contextmanager
def tracking(*, include: Any = ()):
    """The exact CPU tracker of ``measure_peak`` as a block: inside it, ``tracker.live`` is the
    bytes of the storages created so far and still alive (plus ``include``'s), ``tracker.peak``
    their maximum; read them at any moment (e.g. after each pipeline operation)."""
    tracker = _LiveStorages()
    for t in _tensors_of(include):
        tracker.add(t)
    with tracker:
        yield tracker


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
