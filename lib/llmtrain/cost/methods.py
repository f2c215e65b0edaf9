"""What each memory-saving method keeps, tensor by tensor (notebook 12, 显存优化方法).

The 16 bytes per parameter of mixed-precision AdamW (2 weights + 2 gradients + 4 master + 4 m +
4 v) and what each method of the slides' headlines changes in them (``METHODS``, each with its
source), counted exactly over the model's tensors (``param_shapes``: block-wise quantisation pads
per tensor, small tensors stay fp32, GaLore projects each matrix). ``llmtrain.memory`` offers
these as ``optimizer=`` names; tests/test_memory_methods.py checks every count against the bytes
real optimizers keep (``memory_saving.state_tensor_bytes``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from .. import check
from ..model.shapes import ModelShape

__all__ = ["PRECISIONS", "precision_bytes", "FP8_LM_BYTES", "lowbit_state_bytes_per_param",
           "param_shapes", "Method", "METHODS", "galore_max_rank", "galore_rank",
           "method_state_bytes"]


PRECISIONS = ("mixed", "fp32", "bf16")


def precision_bytes(precision: str) -> tuple[int, int, int]:
    """(weight and gradient, master, optimizer-state element) bytes of a precision: mixed
    (Micikevicius et al. 2018) 2, 4, 4; fp32 4, 0, 4; bf16 (pure) 2, 0, 2."""
    check.one_of("precision", precision, PRECISIONS)
    return {"mixed": (2, 4, 4), "fp32": (4, 0, 4), "bf16": (2, 0, 2)}[precision]


# FP8-LM (Peng et al. 2023; MS-AMP's O2) per parameter: FP8 weights and gradients, FP16 master
# weights, FP8 m + FP16 v (per-tensor scales left out: a few bytes per tensor)
FP8_LM_BYTES = {"weights": 1, "gradients": 1, "master": 2, "optimizer": 1 + 2}


def lowbit_state_bytes_per_param(bits: int) -> float:
    """m and v of a large tensor under block-wise quantisation: 2·(bits/8 + 4/B), B the block
    (``lowbit.BLOCK_SIZE``: 256 for 8 bits, bitsandbytes' and torchao's choice, Dettmers et al.
    2022 use 2048; 128 for 4 bits): 2.03125 and 1.0625."""
    from ..optim import lowbit

    return 2 * (bits / 8 + 4 / lowbit.BLOCK_SIZE[bits])


# --- the tensors of a model, and what each method keeps per tensor ---------------------------

@lru_cache(maxsize=64)
def _shapes(shape: ModelShape) -> tuple[tuple[str, tuple[int, ...]], ...]:
    from ..model.llama import Llama

    with torch.device("meta"):  # allocates nothing, even for 65B
        model = Llama(shape)
    return tuple((name, tuple(p.shape)) for name, p in model.named_parameters())


def param_shapes(shape: ModelShape | str) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter of ``llmtrain.llama.Llama(shape)``, built on the meta
    device (tied embeddings once): the tensors an optimizer sees, whose sizes decide what
    block-wise quantisation pads, what stays fp32 (< 4096 elements), and GaLore's projections."""
    return list(_shapes(check.shape("shape", shape)))


@dataclass(frozen=True)
class Method:
    """A memory-saving method as the accounting sees it: what it changes in the 16 bytes per
    parameter of mixed-precision AdamW, in one line, and where that comes from."""

    name: str
    changes: str
    source: str


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("adamw8bit", "m, v: 1-byte codes + an fp32 absmax per block of 256 (bitsandbytes' and "
           "torchao's block; the paper's is 2048); tensors under 4096 elements keep fp32 states",
           "Dettmers et al. 2022, arXiv 2110.02861 (torchao AdamW8bit)"),
    Method("adamw4bit", "m, v: 4-bit codes (two per byte) + an fp32 absmax per block of 128; tensors "
           "under 4096 elements keep fp32 states", "Li et al. 2023, arXiv 2309.01507 (torchao AdamW4bit)"),
    Method("galore", "m, v of each attention/MLP matrix (m×n) projected to rank r: 2·r·max(m,n) "
           "elements + a min(m,n)×r projector", "Zhao et al. 2024, arXiv 2403.03507 (galore-torch)"),
    Method("galore8bit", "galore, in bitsandbytes' 8-bit Adam: every state of >= 4096 elements "
           "(projected or not: embeddings, output layer) 1-byte codes + an fp32 absmax per block of "
           "256; smaller states fp32", "Zhao et al. 2024 (galore-torch's GaLoreAdamW8bit, a "
           "bitsandbytes Optimizer2State)"),
    Method("adamw-in-backward", "AdamW stepped per parameter in backward: one parameter's "
           "gradient alive, not all", "PyTorch register_post_accumulate_grad_hook; GaLore's "
           "'layer-wise weight update'"),
    Method("lomo", "SGD fused into backward: no optimizer states, no master copy, one "
           "parameter's gradient alive", "Lv et al. 2023, arXiv 2306.09782"),
    Method("badam", "Adam on one block (a decoder layer) at a time: gradients, master and m, v "
           "of that block only", "Luo, Yu, Li 2024, arXiv 2404.02827"),
    Method("fp8-lm", "FP8 weights and gradients, FP16 master weights, FP8 m, FP16 v: "
           "1 + 1 + 2 + 1 + 2 bytes", "Peng et al. 2023, arXiv 2310.18313 (MS-AMP O2)"),
]}


def galore_max_rank(shape: ModelShape | str) -> int:
    """The largest rank GaLore can use: the largest smaller side min(m, n) of the matrices it
    projects (``galore.is_target``), h for a LLaMA. A matrix whose smaller side is below the
    rank is projected to rank min(m, n) (``galore.state_numel``, as galore-torch does)."""
    from ..optim import galore

    return max(min(d) for name, d in param_shapes(shape)
               if galore.is_target(name, torch.empty(d, device="meta")))


def galore_rank(shape: ModelShape | str, rank: int | None, name: str = "rank") -> int:
    """GaLore's r for ``shape``: ``rank`` checked (a positive integer, at most
    ``galore_max_rank``: a rank-r projection of an m×n matrix needs r <= min(m, n)), or the
    default ⌊h/4⌋ (the paper's 1024 for 7B). ``name``: the argument, for the error."""
    shape = check.shape("shape", shape)
    if rank is None:
        return max(1, shape.hidden_size // 4)
    rank = check.positive_int(name, rank)
    limit = galore_max_rank(shape)
    if rank > limit:
        check.fail(name, f"at most {limit:,} for {shape.name}, the largest min(m, n) of the m×n "
                   "matrices GaLore projects (a rank-r projection needs r <= min(m, n))", rank)
    return rank


def _lowbit_state(numel: int, bits: int, state: int) -> int:
    """Bytes of m and v of one tensor under 8- or 4-bit block-wise quantisation (torchao's
    layout: ``lowbit.state_bytes``); a tensor it leaves unquantised (under 4096 elements, or
    not a whole number of blocks) keeps two states of ``state`` bytes."""
    from ..optim import lowbit

    if not lowbit.quantised(numel, bits):
        return 2 * state * numel
    return lowbit.state_bytes(numel, bits)


def method_state_bytes(shape: ModelShape | str, method: str, *, precision: str = "mixed",
                       rank: int | None = None, in_backward: bool = False) -> dict[str, int]:
    """Bytes of weights, gradients, master weights and optimizer states of ``method`` (one of
    ``METHODS``) for the whole model, exact for its tensors (``param_shapes``).

    precision as in ``memory.state_bytes_per_param``: weights and gradients 2 bytes (mixed,
    bf16) or 4 (fp32), the fp32 master copy with mixed only, states 4 bytes (2 with bf16).
    ``rank``: GaLore's r (default ⌊h/4⌋, the paper's 1024 for 7B; at most ``galore_max_rank``).
    galore8bit counts as galore-torch's GaLoreAdamW8bit keeps them: a bitsandbytes
    Optimizer2State (min_8bit_size=4096) whose every state of at least 4096 elements, projected
    or not, is 8-bit with an fp32 absmax per block of 256, and smaller states fp32 whatever the
    precision (``lowbit.state_bytes(..., layout="bitsandbytes")``). fp8-lm fixes its own bytes
    (precision must be mixed); lomo keeps no master copy whatever the precision (fp16 weights
    in the paper). ``in_backward``: the optimizer steps each parameter as soon as its gradient
    is complete, so only the largest parameter's gradient is ever alive (what
    "adamw-in-backward" is for AdamW). Tested against optimizers' measured state tensors:
    tests/test_memory_methods.py.
    """
    shape = check.shape("shape", shape)
    check.one_of("method", method, tuple(METHODS))
    check.boolean("in_backward", in_backward)
    w, master, state = precision_bytes(precision)
    tensors = param_shapes(shape)
    numels = [math.prod(d) for _, d in tensors]
    P, largest = sum(numels), max(numels)
    out = {"weights": w * P, "gradients": w * P, "master": master * P, "optimizer": 2 * state * P}
    if method in ("adamw8bit", "adamw4bit"):
        bits = 8 if method == "adamw8bit" else 4
        out["optimizer"] = sum(_lowbit_state(n, bits, state) for n in numels)
    elif method in ("galore", "galore8bit"):
        from ..optim import galore, lowbit

        r = galore_rank(shape, rank)
        opt = 0
        for (name, d), n in zip(tensors, numels):
            if galore.is_target(name, torch.empty(d, device="meta")):  # attention, MLP
                k = galore.state_numel(d[0], d[1], r)  # m, v: r·max(m,n) each; P: r·min(m,n)
                each, projector = k["moments"] // 2, k["projector"]
            else:  # embeddings, output layer, norms: Adam on the whole tensor
                each, projector = n, 0
            if method == "galore8bit":  # bitsandbytes' init_state: 8 bits iff >= 4096 elements
                opt += lowbit.state_bytes(each, 8, layout="bitsandbytes")
            else:
                opt += 2 * state * each
            opt += w * projector  # the projector has the gradient's dtype
        out["optimizer"] = opt
    elif method == "adamw-in-backward":
        out["gradients"] = w * largest
    elif method == "lomo":
        out.update(gradients=w * largest, master=0, optimizer=0)
    elif method == "badam":
        block = max(sum(n for (name, _), n in zip(tensors, numels) if f".layers.{i}." in name)
                    for i in range(shape.num_layers))
        out.update(gradients=w * block, master=master * block, optimizer=2 * state * block)
    elif method == "fp8-lm":
        if precision != "mixed":
            check.fail("precision", "'mixed' for method='fp8-lm' (it fixes its own bytes)", precision)
        out = {k: b * P for k, b in FP8_LM_BYTES.items()}
    if in_backward:  # gradients alive: at most the largest parameter's, of their dtype
        g = FP8_LM_BYTES["gradients"] if method == "fp8-lm" else w
        out["gradients"] = min(out["gradients"], g * largest)
    return out
