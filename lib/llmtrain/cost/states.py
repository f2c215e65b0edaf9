"""Model states per GPU: weights, gradients, master weights and optimizer states (the 16 of 16P/N).

ZeRO's partition over the data-parallel ranks (Rajbhandari et al., SC'20), the exact split of a
model's tensors over tensor and pipeline ranks (``params_per_gpu``), and the tables of the
frameworks that count differently (``frameworks.FRAMEWORKS``: DeepSpeed, Megatron-LM, NeMo).
Measured: tests/test_memory.py, tests/test_memory_frameworks.py, tests/test_parallel.py (ZeRO's
bytes held per rank).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from .. import check
from ..model.shapes import ModelShape
from . import methods as _ms
from . import experts as _experts
from . import params as _params
from .frameworks import Framework, framework_of
from .layout import ParallelDims, shard_range
from ..model.shapes import resolve

__all__ = ["PRECISIONS", "OPTIMIZERS", "PER_TENSOR", "NO_STEP_PEAK", "state_bytes_per_param",
           "param_numels", "params_per_gpu", "held_params", "zero_groups", "model_state_bytes",
           "largest_layer_params", "parallel_dims", "as_dims", "STATES"]

# --- the layout: dp × tp × pp GPUs ----------------------------------------------------------

def as_dims(dims: Any) -> ParallelDims:
    """A ParallelDims as given, or ParallelDims(dp=dims) for a positive integer: what every
    ``dims=`` argument accepts (tests/test_memory.py)."""
    if isinstance(dims, ParallelDims):
        return dims
    try:
        return ParallelDims(dp=check.positive_int("dims", dims))
    except ValueError:
        check.fail("dims", "a ParallelDims or a positive integer (= ParallelDims(dp=dims))", dims)


def parallel_dims(gpus: int, tp: int = 1, pp: int = 1, cp: int = 1, ep: int = 1) -> ParallelDims:
    """``ParallelDims.from_gpus(gpus, tp, pp, cp, ep)`` under its older name (kept for one
    release): the one constructor of a layout from a GPU count (tests/test_memory.py)."""
    return ParallelDims.from_gpus(gpus, tp, pp, cp, ep)


# --- model states: weights, gradients, master weights, optimizer states ---------------

PRECISIONS = _ms.PRECISIONS
# Views of the one registry, ``methods.OPTIMIZERS`` (each name's ``OptimizerSpec``): every name;
# the memory-saving methods of notebook 12 come after adamw, adam, sgd and adafactor.
OPTIMIZERS = tuple(_ms.OPTIMIZERS)
# Those whose bytes depend on the model's tensors, not only on P (a ModelShape is needed).
PER_TENSOR = tuple(n for n, s in _ms.OPTIMIZERS.items() if s.per_tensor)
# Those that step inside backward or train one block at a time: ``step_peak``'s phases (all
# gradients alive, then one optimizer step with fp32 gradients) do not describe them, so
# ``estimate`` gives no ``step_peak`` (their peaks are measured in notebook 12, tests/test_lomo.py).
NO_STEP_PEAK = tuple(n for n, s in _ms.OPTIMIZERS.items() if not s.step_phases)


def state_bytes_per_param(precision: str = "mixed", optimizer: str = "adamw") -> dict[str, float]:
    """Bytes per parameter for each model state (the 16 in 16P, and its variants).

    mixed (Micikevicius et al. 2018): 16-bit weights 2 + 16-bit grads 2 + fp32 master 4 +
    Adam m 4 + v 4 = 16. fp32: 4 + 4 + Adam 8 = 16, no master copy. bf16 (pure): 2 + 2 +
    states in bf16. sgd: one momentum buffer. adamw8bit (Dettmers et al. 2022): m, v as 1-byte
    codes + an fp32 scale per block of 256, 2·(1 + 4/256) = 2.03125; adamw4bit (Li et al.
    2023): 2·(1/2 + 4/128) = 1.0625 (large tensors; ``model_state_bytes`` with a ModelShape
    counts each tensor, small ones stay fp32); fp8-lm (Peng et al. 2023): 1 + 1 + 2 + (1 + 2).
    adafactor and ``PER_TENSOR`` depend on the model's tensors: see ``model_state_bytes``.
    What each optimizer keeps is its ``methods.OPTIMIZERS`` entry.
    """
    check.one_of("precision", precision, PRECISIONS)
    check.one_of("optimizer", optimizer, OPTIMIZERS)
    spec = _ms.OPTIMIZERS[optimizer]
    if spec.per_tensor:
        raise ValueError(f"optimizer={optimizer!r} depends on the model's tensors, not only on "
                         "their count: use model_state_bytes with a ModelShape")
    w, master, state = _ms.precision_bytes(precision)
    if spec.fixed_bytes is not None:
        if precision != "mixed":
            check.fail("precision", f"'mixed' for optimizer={optimizer!r} (it fixes its own "
                       "bytes)", precision)
        return {**spec.fixed_bytes, "optimizer": float(spec.fixed_bytes["optimizer"])}
    if spec.bits is not None:  # codes + block scales
        opt = _ms.lowbit_state_bytes_per_param(spec.bits)
    else:
        opt = float(spec.states * state)
    return {"weights": w, "gradients": w, "master": master, "optimizer": opt}


def _projected() -> str:
    """The optimizers that take a GaLore rank, for a message: "'galore' or 'galore8bit'"."""
    return " or ".join(repr(n) for n, s in _ms.OPTIMIZERS.items() if s.projected)


def param_numels(shape: ModelShape, dims: ParallelDims | int, rank: int) -> list[int]:
    """The sizes of the tensors global ``rank`` of the layout holds: its stage's layers
    (``mesh.shard_range`` of L over pp, as ``pipeline_parallel.stage_layers``), its TP shard
    of each (``tensor_parallel``: q/k/v and gate/up fused into one matrix each when tp > 1,
    the MLP's H' columns and the vocabulary's V rows by ``mesh.shard_range``, norms and
    row-parallel biases whole), the embedding on the first stage, the final norm and the
    output layer on the last (with tied embeddings and pp > 1 the last stage keeps its own
    copy of the matrix, Megatron-LM's). ZeRO pads each to a multiple of dp:
    ``parallel.zero.expected_bytes(param_numels(...), dp, stage)`` is what the rank holds."""
    shape = resolve(shape, "shape")
    dims = as_dims(dims).check(shape)
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
    shape = resolve(shape, "shape")
    dims = as_dims(dims).check(shape)
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


STATES = ("weights", "gradients", "master", "optimizer")  # the model states, in this order


def held_params(shape: ModelShape, dims: ParallelDims | int = ParallelDims(),
                rank: int | None = None) -> dict[str, int]:
    """{"non-expert": ..., "experts": ...}: the parameters the busiest GPU (or global ``rank``)
    holds. Dense shapes: ``params_per_gpu`` (cp and dp replicate), no experts. MoE shapes
    (tp = 1; expert tensor parallelism is not modelled): ``experts.stage_params`` of its stage,
    E/ep routed experts of each MoE layer. tests/test_memory_5d.py::test_ep_divides_the_experts."""
    shape = resolve(shape, "shape")
    dims = as_dims(dims).check(shape)
    if not shape.is_moe:
        if dims.ep > 1:
            raise ValueError(f"ep > 1 needs a MoE shape (num_experts > 0), got ep={dims.ep} "
                             f"for {shape.name!r}")
        return {"non-expert": params_per_gpu(shape, dims, rank), "experts": 0}
    if dims.tp > 1:
        raise ValueError(f"tp must be 1 for a MoE shape (expert tensor parallelism is not "
                         f"modelled), got tp={dims.tp}")
    if rank is not None:
        return _experts.stage_params(shape, dims.pp, dims.place(rank).pp, dims.ep)
    return max((_experts.stage_params(shape, dims.pp, s, dims.ep) for s in range(dims.pp)),
               key=lambda h: h["non-expert"] + h["experts"])


def zero_groups(dims: ParallelDims | int) -> tuple[int, int]:
    """(ranks sharing the non-expert states, ranks sharing the expert states) = (dp·cp,
    dp·cp/ep): what ZeRO (or a distributed optimizer) divides each by. cp ranks hold the same
    weights and reduce their gradients with dp, so Megatron-Core shards its distributed
    optimizer over dp × cp (``get_megatron_optimizer``: dense parameters over
    ``intra_dp_cp_group``, experts over ``intra_expt_dp_group``, whose size in
    ``parallel_state.initialize_model_parallel`` is world/(expert tp · ep · pp) = dp·cp/ep with
    expert tp = tp; NVIDIA/Megatron-LM @d98e8a64). tests/test_memory_5d.py."""
    dims = as_dims(dims)
    return dims.dp * dims.cp, dims.dp * dims.cp // dims.ep


def _check_bytes_per_param(value: Any) -> dict[str, float]:
    if not isinstance(value, dict) or tuple(value) != STATES:
        check.fail("bytes_per_param", f"a dict with the keys {STATES} in that order", value)
    for k, v in value.items():
        check.number(f"bytes_per_param[{k!r}]", v, 0)
    return value


def model_state_bytes(num_params: int | ModelShape, *, dims: ParallelDims | int = ParallelDims(),
                      zero: int = 0, precision: str = "mixed", optimizer: str = "adamw",
                      rank: int | None = None, galore_rank: int | None = None,
                      framework: str | Framework = "slides",
                      bytes_per_param: dict[str, float] | None = None) -> dict[str, int]:
    """Bytes per GPU of weights, gradients, master weights and optimizer states.

    ZeRO (Rajbhandari et al., SC'20) partitions over the dp = ``dims.dp`` data-parallel ranks:
    stage 1 the optimizer states (and master weights), stage 2 also the gradients,
    stage 3 also the weights: with mixed AdamW 4P + 12P/N, 2P + 14P/N, 16P/N.
    ``num_params`` is a count (tp·pp then split it evenly) or a ModelShape (then
    ``params_per_gpu`` splits it exactly; needed for adafactor's factored states).
    ``dims``: a ParallelDims, or an int = ParallelDims(dp=dims). ``rank`` (with a ModelShape):
    that global rank's states exactly, else the busiest GPU's.
    The memory-saving methods (``methods.METHODS``, notebook 12) with a ModelShape and
    tp = pp = 1 are counted tensor by tensor (``methods.method_state_bytes``; GaLore's
    rank ``galore_rank``, default h/4); ``PER_TENSOR`` ones need that.
    ``framework`` (one of ``FRAMEWORKS``): "slides" and "fsdp" count as above; "deepspeed"
    counts DeepSpeed's estimator exactly (2P + int(18P/N) at ZeRO-2, 4·largest layer +
    int(18P/N) at ZeRO-3: a ModelShape is needed there), with an "fp32 gradients" part;
    "megatron" its distributed optimizer (zero=1: 6 + 12/d bytes per parameter; zero=0: 18);
    "nemo" Apex's DistributedFusedAdam with the Nemotron recipes' bf16 optimizer state (zero=1:
    4 + 8/d, 10 at d = 1; zero=0: 10). Those are for mixed-precision Adam/AdamW (Megatron also
    fp32).
    Beyond 3D (notebook 14): ZeRO divides the non-expert states by dp·cp and a MoE shape's
    routed-expert states by dp·cp/ep (``zero_groups``); each GPU holds ``held_params``: its
    stage, E/ep of each MoE layer's routed experts (counted with a ModelShape; TOTAL
    parameters, not the active ones). cp = ep = 1 and a dense shape: the 3D count above.
    ``bytes_per_param``: each state's bytes per parameter ({"weights", "gradients", "master",
    "optimizer"}), replacing ``precision``'s and ``optimizer``'s (DeepSeek-V3's FP32 master
    weights and gradients with BF16 moments: ``published_runs.DEEPSEEK_V3``).
    """
    check.one_of("zero", zero, (0, 1, 2, 3))
    check.one_of("optimizer", optimizer, OPTIMIZERS)
    fw = framework_of(framework)
    if bytes_per_param is not None:
        _check_bytes_per_param(bytes_per_param)
        if fw.state_bytes is not None or _ms.OPTIMIZERS[optimizer].saving:
            raise ValueError("bytes_per_param replaces the slides' Adam count: framework must be "
                             f"'slides' or 'fsdp' and optimizer 'adamw' or 'adam', got "
                             f"framework={fw.name!r}, optimizer={optimizer!r}")
    if fw.state_bytes is not None:
        return _framework_model_states(fw, num_params, dims, zero, precision, optimizer, rank,
                                       galore_rank)
    check.optional(check.positive_int, "galore_rank", galore_rank)
    spec = _ms.OPTIMIZERS[optimizer]
    if galore_rank is not None and not spec.projected:
        raise ValueError(f"galore_rank is only used by optimizer {_projected()}, got "
                         f"galore_rank={galore_rank} with optimizer={optimizer!r}")
    dims = as_dims(dims)
    if isinstance(num_params, str):  # a preset name
        num_params = resolve(num_params, "num_params")
    if spec.saving and (isinstance(num_params, ModelShape) or spec.per_tensor):
        if not isinstance(num_params, ModelShape):
            raise ValueError(f"optimizer={optimizer!r} needs a ModelShape for num_params: its "
                             "bytes depend on the model's tensors")
        if dims.tp != 1 or dims.pp != 1 or num_params.is_moe:
            raise ValueError(f"optimizer={optimizer!r} is counted for tp=1, pp=1 only (and a "
                             "dense shape)")
        _ms.galore_rank(num_params, galore_rank, name="galore_rank")  # r <= min(m, n)
        parts = _ms.method_state_bytes(num_params, optimizer, precision=precision, rank=galore_rank)
        return _zero_split(parts, zero, zero_groups(dims)[0])
    per = bytes_per_param or state_bytes_per_param(precision, optimizer)
    if isinstance(num_params, ModelShape) and (num_params.is_moe or dims.ep > 1):
        if spec.factored:
            check.fail("optimizer", "not a factored one for a MoE shape", optimizer)
        held, (dense_group, expert_group) = held_params(num_params, dims, rank), zero_groups(dims)
        return _add(*(_zero_split({k: math.ceil(n * per[k]) for k in STATES}, zero, group)
                      for n, group in ((held["non-expert"], dense_group),
                                       (held["experts"], expert_group))))
    if isinstance(num_params, ModelShape):
        P, shape = params_per_gpu(num_params, dims, rank), num_params
    else:
        if rank is not None:
            raise ValueError("rank needs a ModelShape for num_params (a count is split evenly)")
        check.positive_int("num_params", num_params)
        P, shape = math.ceil(num_params / (dims.tp * dims.pp)), None
    state_elems = P
    if spec.factored:
        if shape is None:
            raise ValueError(f"optimizer={optimizer!r} needs a ModelShape: its second moment is "
                             "factored per matrix (rows + columns)")
        if dims.tp != 1 or dims.pp != 1:
            raise ValueError(f"optimizer={optimizer!r} is modelled for tp=1, pp=1 only")
        state_elems = _adafactor_elements(shape)
    parts = {"weights": P * per["weights"], "gradients": P * per["gradients"],
             "master": P * per["master"], "optimizer": math.ceil(state_elems * per["optimizer"])}
    return _zero_split(parts, zero, zero_groups(dims)[0])


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a[k] + b[k] for k in a}


def _zero_split(parts: dict[str, int], zero: int, dp: int) -> dict[str, int]:
    """ZeRO's partition over dp ranks: stage 1 the master weights and optimizer states, 2 also
    the gradients, 3 also the weights."""
    shard = {"weights": zero >= 3, "gradients": zero >= 2, "master": zero >= 1, "optimizer": zero >= 1}
    return {k: math.ceil(v / dp) if shard[k] else int(v) for k, v in parts.items()}


def largest_layer_params(shape: ModelShape, dims: ParallelDims | int = ParallelDims()) -> int:
    """DeepSpeed's ``largest_layer_params`` (stage3.py ``model_to_params``: the most parameters
    one module holds itself) of transformers' Llama on one GPU of the tp group: the embedding
    or lm_head (⌈V/tp⌉·H), a projection (its TP shard and bias) or a norm."""
    shape = resolve(shape, "shape")
    dims = as_dims(dims).check(shape)
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
    if not _ms.OPTIMIZERS[optimizer].framework_tables:
        tabled = " or ".join(sorted(repr(n) for n, s in _ms.OPTIMIZERS.items()
                                    if s.framework_tables))
        check.fail("optimizer", f"{tabled} for framework={fw.name!r} (its table counts "
                   "Adam's two fp32 moments)", optimizer)
    if galore_rank is not None:
        raise ValueError(f"galore_rank is only used by optimizer {_projected()}, got "
                         f"galore_rank={galore_rank} with optimizer={optimizer!r}")
    dims = as_dims(dims)
    if isinstance(num_params, str):
        num_params = resolve(num_params, "num_params")
    if isinstance(num_params, ModelShape) and (num_params.is_moe or dims.ep > 1):
        if fw.gathered_layer_bytes and zero == 3:
            raise ValueError(f"framework={fw.name!r} at zero=3 is not modelled for a MoE shape")
        held, groups = held_params(num_params, dims, rank), zero_groups(dims)
        return _add(*(_framework_states(fw, n, g, zero, precision, None)
                      for n, g in zip(held.values(), groups)))
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
    return _framework_states(fw, P, zero_groups(dims)[0], zero, precision, largest)


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

