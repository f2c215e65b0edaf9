"""The optimizer registry and what each memory-saving method keeps, tensor by tensor (notebook 12).

``OPTIMIZERS`` is the one registry of the optimizers the accounting knows (adamw, adam, sgd,
adafactor and the eight memory-saving methods of the slides' headlines, ``METHODS``): each an
``OptimizerSpec`` with its source, what it changes in the 16 bytes per parameter of
mixed-precision AdamW (2 weights + 2 gradients + 4 master + 4 m + 4 v), and the behaviour every
count reads from it. ``method_state_bytes`` counts a method exactly over the model's tensors
(``param_shapes``, a closed form: block-wise quantisation pads per tensor, small tensors stay
fp32, GaLore projects each matrix) with the byte rules of 8-/4-bit states (``lowbit_*``) and of
GaLore (``galore_*``), which ``llmtrain.optim.lowbit`` and ``llmtrain.optim.galore`` import from
here. Torch-free. tests/test_memory_methods.py checks every count against the bytes real
optimizers keep (``measure.optimizer_state.state_tensor_bytes``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from .. import check
from ..model.shapes import ModelShape, resolve

__all__ = ["PRECISIONS", "precision_bytes", "FP8_LM_BYTES", "OptimizerSpec", "OPTIMIZERS",
           "METHODS", "Method", "LOWBIT_BLOCK_SIZE", "LOWBIT_LAYOUTS", "lowbit_quantised",
           "lowbit_state_bytes", "lowbit_state_bytes_per_param", "GALORE_TARGETS",
           "galore_is_target", "galore_state_numel", "param_shapes", "galore_max_rank",
           "galore_rank", "method_state_bytes"]


PRECISIONS = ("mixed", "fp32", "bf16")


def precision_bytes(precision: str) -> tuple[int, int, int]:
    """(weight and gradient, master, optimizer-state element) bytes of a precision: mixed
    (Micikevicius et al. 2018) 2, 4, 4; fp32 4, 0, 4; bf16 (pure) 2, 0, 2."""
    check.one_of("precision", precision, PRECISIONS)
    return {"mixed": (2, 4, 4), "fp32": (4, 0, 4), "bf16": (2, 0, 2)}[precision]


# FP8-LM (Peng et al. 2023; MS-AMP's O2) per parameter: FP8 weights and gradients, FP16 master
# weights, FP8 m + FP16 v (per-tensor scales left out: a few bytes per tensor)
FP8_LM_BYTES = {"weights": 1, "gradients": 1, "master": 2, "optimizer": 1 + 2}


# --- the registry ---------------------------------------------------------------------------

@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer as the accounting sees it (Loshchilov & Hutter 2019 for AdamW; each entry's
    ``source``): what it changes in the 16 bytes per parameter of mixed-precision AdamW, and
    the behaviour every count reads (``state_bytes_per_param``, ``model_state_bytes``,
    ``method_state_bytes``, ``step_peak.phases``). Adding an optimizer is one entry of
    ``OPTIMIZERS`` (and a test in tests/test_memory_methods.py)."""

    name: str
    changes: str
    source: str
    saving: bool = True  # one of notebook 12's memory-saving methods (``METHODS``)
    states: int = 2  # optimizer-state elements per trained element, of the precision's state
    #                  dtype: m and v 2, SGD's momentum 1, none 0 (Adafactor: per factored one)
    bits: int | None = None  # m and v block-wise quantised to 8 or 4 bits (``lowbit_*``)
    layout: str = "torchao"  # whose block-wise layout: "torchao" or "bitsandbytes"
    projected: bool = False  # GaLore: attention/MLP matrices' states at rank r (``galore_*``)
    factored: bool = False  # Adafactor: a row and a column accumulator per matrix
    fixed_bytes: dict[str, int] | None = None  # bytes per parameter it fixes (FP8-LM's)
    in_backward: bool = False  # stepped per parameter in backward: one gradient alive
    block: bool = False  # trains one decoder layer at a time: its gradients, master, states
    master: bool = True  # keeps the precision's fp32 master copy
    per_tensor: bool = False  # its bytes need the model's tensors, not only their count P
    step_phases: bool = True  # ``step_peak``'s forward / backward / step moments describe it
    step_counters: bool = False  # torch keeps a float32 "step" tensor per parameter tensor
    adam_temporaries: bool = False  # torch's Adam/AdamW step temporaries (``step_peak``)
    framework_tables: bool = False  # the frameworks' tables (DeepSpeed, Megatron) count it


Method = OptimizerSpec  # the name notebook 12 knew

_ADAM = dict(saving=False, step_counters=True, adam_temporaries=True, framework_tables=True)
_IN_BACKWARD = dict(in_backward=True, per_tensor=True, step_phases=False)
OPTIMIZERS: dict[str, OptimizerSpec] = {s.name: s for s in [
    OptimizerSpec("adamw", "the baseline: m, v in the state dtype, decoupled weight decay",
                  "Loshchilov & Hutter 2019, arXiv 1711.05101 (torch.optim.AdamW)", **_ADAM),
    OptimizerSpec("adam", "m, v in the state dtype", "Kingma & Ba 2015, arXiv 1412.6980", **_ADAM),
    OptimizerSpec("sgd", "one momentum buffer", "torch.optim.SGD(momentum > 0)", saving=False,
                  states=1),
    OptimizerSpec("adafactor", "no momentum; the second moment factored per matrix (rows + "
                  "columns)", "Shazeer & Stern 2018, arXiv 1804.04235", saving=False, states=1,
                  factored=True, step_counters=True),
    OptimizerSpec("adamw8bit", "m, v: 1-byte codes + an fp32 absmax per block of 256 "
                  "(bitsandbytes' and torchao's block; the paper's is 2048); tensors under 4096 "
                  "elements keep fp32 states",
                  "Dettmers et al. 2022, arXiv 2110.02861 (torchao AdamW8bit)", bits=8),
    OptimizerSpec("adamw4bit", "m, v: 4-bit codes (two per byte) + an fp32 absmax per block of "
                  "128; tensors under 4096 elements keep fp32 states",
                  "Li et al. 2023, arXiv 2309.01507 (torchao AdamW4bit)", bits=4),
    OptimizerSpec("galore", "m, v of each attention/MLP matrix (m×n) projected to rank r: "
                  "2·r·max(m,n) elements + a min(m,n)×r projector",
                  "Zhao et al. 2024, arXiv 2403.03507 (galore-torch)", projected=True,
                  per_tensor=True),
    OptimizerSpec("galore8bit", "galore, in bitsandbytes' 8-bit Adam: every state of >= 4096 "
                  "elements (projected or not: embeddings, output layer) 1-byte codes + an fp32 "
                  "absmax per block of 256; smaller states fp32",
                  "Zhao et al. 2024 (galore-torch's GaLoreAdamW8bit, a bitsandbytes "
                  "Optimizer2State)", bits=8,
                  layout="bitsandbytes", projected=True, per_tensor=True),
    OptimizerSpec("adamw-in-backward", "AdamW stepped per parameter in backward: one "
                  "parameter's gradient alive, not all", "PyTorch "
                  "register_post_accumulate_grad_hook; GaLore's 'layer-wise weight update'",
                  **_IN_BACKWARD),
    OptimizerSpec("lomo", "SGD fused into backward: no optimizer states, no master copy, one "
                  "parameter's gradient alive", "Lv et al. 2023, arXiv 2306.09782", states=0,
                  master=False, **_IN_BACKWARD),
    OptimizerSpec("badam", "Adam on one block (a decoder layer) at a time: gradients, master "
                  "and m, v of that block only", "Luo, Yu, Li 2024, arXiv 2404.02827", block=True,
                  per_tensor=True, step_phases=False),
    OptimizerSpec("fp8-lm", "FP8 weights and gradients, FP16 master weights, FP8 m, FP16 v: "
                  "1 + 1 + 2 + 1 + 2 bytes", "Peng et al. 2023, arXiv 2310.18313 (MS-AMP O2)",
                  fixed_bytes=FP8_LM_BYTES),
]}
# The memory-saving methods of notebook 12 (the slides' headlines), in the registry's order.
METHODS: dict[str, OptimizerSpec] = {n: s for n, s in OPTIMIZERS.items() if s.saving}


# --- 8- and 4-bit states (Dettmers et al. 2022; Li et al. 2023): ``optim.lowbit``'s rules -------

# the block B: torchao's and bitsandbytes' 256 (Dettmers et al.: 2048); Li et al.'s (torchao's) 128
LOWBIT_BLOCK_SIZE = {8: 256, 4: 128}
LOWBIT_LAYOUTS = ("torchao", "bitsandbytes")


def lowbit_quantised(numel: int, bits: int, block_size: int | None = None,
                     min_quantize_numel: int = 4096) -> bool:
    """torchao's rule (and ``optim.lowbit.AdamWLowBit``'s): a tensor's moments are quantised
    when it has at least ``min_quantize_numel`` elements and a whole number of blocks; else they
    stay fp32. Measured: tests/test_lowbit.py."""
    b = block_size or LOWBIT_BLOCK_SIZE[check.one_of("bits", bits, (4, 8))]
    return numel >= min_quantize_numel and numel % b == 0


def lowbit_state_bytes(numel: int, bits: int, block_size: int | None = None,
                       min_quantize_numel: int = 4096, layout: str = "torchao") -> int:
    """Bytes of one tensor's two moments. Quantised: 2·(numel·bits/8 codes + 4·numel/B scales
    + 4·2**bits map); else fp32: 8·numel. ``layout="torchao"`` (torchao's AdamW8bit/4bit and
    ``AdamWLowBit``): quantised iff numel >= min_quantize_numel and B divides numel.
    ``"bitsandbytes"`` (8 bits only): quantised iff numel >= min_quantize_numel, ⌈numel/B⌉ scales
    (a last partial block), no map per tensor (one shared pair: ``lowbit.bytes_per_param`` adds
    it). Measured: see tests/test_lowbit.py::test_state_bytes_equal_measured."""
    numel = check.integer("numel", numel, 0)
    bits = check.one_of("bits", bits, (4, 8))
    b = check.optional(check.positive_int, "block_size", block_size) or LOWBIT_BLOCK_SIZE[bits]
    min_q = check.integer("min_quantize_numel", min_quantize_numel, 0)
    check.one_of("layout", layout, LOWBIT_LAYOUTS)
    if layout == "bitsandbytes":
        if bits != 8:
            check.fail("bits", "8 with layout='bitsandbytes'", bits)
        return 8 * numel if numel < min_q else 2 * (numel + 4 * -(-numel // b))
    if not lowbit_quantised(numel, bits, b, min_q):
        return 8 * numel
    return 2 * (numel * bits // 8 + 4 * (numel // b) + 4 * 2 ** bits)


def lowbit_state_bytes_per_param(bits: int) -> float:
    """m and v of a large tensor under block-wise quantisation: 2·(bits/8 + 4/B), B the block
    (``LOWBIT_BLOCK_SIZE``: 256 for 8 bits, bitsandbytes' and torchao's choice, Dettmers et al.
    2022 use 2048; 128 for 4 bits): 2.03125 and 1.0625."""
    return 2 * (bits / 8 + 4 / LOWBIT_BLOCK_SIZE[bits])


# --- GaLore (Zhao et al. 2024): ``optim.galore``'s rules -------------------------------------

GALORE_TARGETS = ("attn_mlp", "all")


def galore_is_target(name: str, shape: Sequence[int], targets: str = "attn_mlp") -> bool:
    """Whether GaLore projects the parameter ``name`` of shape ``shape`` of
    ``model.llama.Llama``. "attn_mlp": the attention and MLP matrices, as in the paper's runs
    (arXiv 2403.03507; the GaLore repository's ``target_modules_list = ["attn", "mlp"]``;
    embeddings, lm_head and norms keep AdamW); "all": every matrix."""
    check.one_of("targets", targets, GALORE_TARGETS)
    if len(shape) != 2:
        return False
    return targets == "all" or ".self_attn." in name or ".mlp." in name


def galore_state_numel(m: int, n: int, rank: int, *, galore_torch: bool = False) -> dict[str, int]:
    """Numbers GaLore keeps for one (m, n) weight, with r = min(rank, m, n): moments (exp_avg
    and exp_avg_sq) 2r·max(m, n), projector r·min(m, n) (P is r×n for m >= n, m×r for m < n);
    total = 2r·max(m, n) + r·min(m, n). Zhao et al. 2024.

    ``galore_torch=True``: what galore-torch 1.0 really holds. Its P is a view (Vh[:r] or
    U[:, :r]) that keeps the whole SVD factor alive: min(m, n)² numbers whatever r.
    Measured: see tests/test_galore.py::test_state_bytes_match_measured.
    """
    check.positive_int("m", m)
    check.positive_int("n", n)
    check.positive_int("rank", rank)
    check.boolean("galore_torch", galore_torch)
    r, big, small = min(rank, m, n), max(m, n), min(m, n)
    projector = small * small if galore_torch else r * small
    return {"moments": 2 * r * big, "projector": projector, "total": 2 * r * big + projector}


# --- the tensors of a model -----------------------------------------------------------------

@lru_cache(maxsize=64)
def _shapes(shape: ModelShape) -> tuple[tuple[str, tuple[int, ...]], ...]:
    V, H, Hf = shape.vocab_size, shape.hidden_size, shape.intermediate_size
    q, kv = shape.q_size, shape.kv_size

    def linear(name: str, i: int, o: int, bias: bool) -> list[tuple[str, tuple[int, ...]]]:
        return [(f"{name}.weight", (o, i))] + ([(f"{name}.bias", (o,))] if bias else [])

    out = [("model.embed_tokens.weight", (V, H))]
    for i in range(shape.num_layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (H,))]
        for proj, (n_in, n_out, bias) in {"q": (H, q, shape.attention_bias),
                                          "k": (H, kv, shape.attention_bias),
                                          "v": (H, kv, shape.attention_bias),
                                          "o": (q, H, shape.o_bias)}.items():
            out += linear(f"{p}self_attn.{proj}_proj", n_in, n_out, bias)
        out += [(p + "post_attention_layernorm.weight", (H,))]
        for proj, (n_in, n_out) in {"gate": (H, Hf), "up": (H, Hf), "down": (Hf, H)}.items():
            out += linear(f"{p}mlp.{proj}_proj", n_in, n_out, shape.mlp_bias)
    out += [("model.norm.weight", (H,))]
    return tuple(out if shape.tie_embeddings else out + [("lm_head.weight", (V, H))])


def param_shapes(shape: ModelShape | str) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter of ``model.llama.Llama(shape)``, in
    ``named_parameters()`` order (tied embeddings once), from the shape alone: the embedding;
    per layer the input norm, q/k/v/o (each weight (out, in), then its bias if the shape has
    one), the post-attention norm, gate/up/down; the final norm; lm_head unless tied. The
    tensors an optimizer sees, whose sizes decide what block-wise quantisation pads, what stays
    fp32 (< 4096 elements), and GaLore's projections. Equal to the meta-device model's:
    tests/test_memory_methods.py::test_param_shapes_are_the_model_s."""
    return list(_shapes(resolve(shape, "shape")))


def galore_max_rank(shape: ModelShape | str) -> int:
    """The largest rank GaLore can use: the largest smaller side min(m, n) of the matrices it
    projects (``galore_is_target``), h for a LLaMA. A matrix whose smaller side is below the
    rank is projected to rank min(m, n) (``galore_state_numel``, as galore-torch does;
    Zhao et al. 2024)."""
    return max(min(d) for name, d in param_shapes(shape) if galore_is_target(name, d))


def galore_rank(shape: ModelShape | str, rank: int | None, name: str = "rank") -> int:
    """GaLore's r for ``shape``: ``rank`` checked (a positive integer, at most
    ``galore_max_rank``: a rank-r projection of an m×n matrix needs r <= min(m, n)), or the
    default ⌊h/4⌋ (the paper's 1024 for 7B, Zhao et al. 2024). ``name``: the argument, for
    the error."""
    shape = resolve(shape, "shape")
    if rank is None:
        return max(1, shape.hidden_size // 4)
    rank = check.positive_int(name, rank)
    limit = galore_max_rank(shape)
    if rank > limit:
        check.fail(name, f"at most {limit:,} for {shape.name}, the largest min(m, n) of the m×n "
                   "matrices GaLore projects (a rank-r projection needs r <= min(m, n))", rank)
    return rank


def _states(spec: OptimizerSpec, each: int, state: int) -> int:
    """Bytes of ``spec``'s optimizer states for one tensor of ``each`` elements (after GaLore's
    projection): block-wise quantised as its layout does, else ``spec.states`` of ``state``
    bytes (a tensor the layout leaves unquantised keeps two fp32 states)."""
    if spec.bits is None:
        return spec.states * state * each
    if spec.layout == "torchao" and not lowbit_quantised(each, spec.bits):
        return 2 * state * each
    return lowbit_state_bytes(each, spec.bits, layout=spec.layout)


def method_state_bytes(shape: ModelShape | str, method: str, *, precision: str = "mixed",
                       rank: int | None = None, in_backward: bool = False) -> dict[str, int]:
    """Bytes of weights, gradients, master weights and optimizer states of ``method`` (one of
    ``METHODS``) for the whole model, exact for its tensors (``param_shapes``).

    precision as in ``states.state_bytes_per_param``: weights and gradients 2 bytes (mixed,
    bf16) or 4 (fp32), the fp32 master copy with mixed only, states 4 bytes (2 with bf16).
    ``rank``: GaLore's r (default ⌊h/4⌋, the paper's 1024 for 7B; at most ``galore_max_rank``).
    galore8bit counts as galore-torch's GaLoreAdamW8bit keeps them: a bitsandbytes
    Optimizer2State (min_8bit_size=4096) whose every state of at least 4096 elements, projected
    or not, is 8-bit with an fp32 absmax per block of 256, and smaller states fp32 whatever the
    precision (``lowbit_state_bytes(..., layout="bitsandbytes")``). fp8-lm fixes its own bytes
    (precision must be mixed); lomo keeps no master copy whatever the precision (fp16 weights
    in the paper). ``in_backward``: the optimizer steps each parameter as soon as its gradient
    is complete, so only the largest parameter's gradient is ever alive (what
    "adamw-in-backward" is for AdamW). Each method's behaviour is its ``OPTIMIZERS`` entry's.
    Tested against optimizers' measured state tensors: tests/test_memory_methods.py.
    """
    shape = resolve(shape, "shape")
    check.one_of("method", method, tuple(METHODS))
    check.boolean("in_backward", in_backward)
    spec = METHODS[method]
    w, master, state = precision_bytes(precision)
    tensors = param_shapes(shape)
    numels = [math.prod(d) for _, d in tensors]
    P, largest = sum(numels), max(numels)
    if spec.fixed_bytes is not None:
        if precision != "mixed":
            check.fail("precision", f"'mixed' for method={method!r} (it fixes its own bytes)",
                       precision)
        out = {k: b * P for k, b in spec.fixed_bytes.items()}
    else:
        trained = P
        if spec.block:  # the largest block: one decoder layer
            trained = max(sum(n for (name, _), n in zip(tensors, numels) if f".layers.{i}." in name)
                          for i in range(shape.num_layers))
        if spec.projected:
            r = galore_rank(shape, rank)
            opt = 0
            for (name, d), n in zip(tensors, numels):
                if galore_is_target(name, d):  # attention, MLP: m, v r·max(m,n) each, P r·min(m,n)
                    k = galore_state_numel(d[0], d[1], r)
                    opt += _states(spec, k["moments"] // 2, state) + w * k["projector"]
                else:  # embeddings, output layer, norms: Adam on the whole tensor
                    opt += _states(spec, n, state)
        elif spec.bits is not None:
            opt = sum(_states(spec, n, state) for n in numels)
        else:
            opt = _states(spec, trained, state)
        out = {"weights": w * P, "gradients": w * (largest if spec.in_backward else trained),
               "master": master * trained if spec.master else 0, "optimizer": opt}
    if in_backward:  # gradients alive: at most the largest parameter's, of their dtype
        g = spec.fixed_bytes["gradients"] if spec.fixed_bytes else w
        out["gradients"] = min(out["gradients"], g * largest)
    return out
