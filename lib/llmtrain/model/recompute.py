"""Activation recomputation strategies for the reference LLaMA (slides: 激活重计算).

Backward needs the activations forward computed. Recomputation keeps only some of them and
runs parts of forward again during backward (``torch.utils.checkpoint``, non-reentrant):

- ``"none"``      keep everything;
- ``"full"``      checkpoint every decoder layer: each keeps only its input (the slides' 2BTH
                  per layer in 16-bit), about one extra forward of every layer in backward
                  (torch's checkpoint stops early, skipping each segment's last matmul:
                  ``llmtrain.flops.recompute_flops`` gives the exact count);
- ``"every"``     checkpoint every k-th layer (``k=``): a knob between none and full;
- ``"sqrt"``      ⌈√L⌉ segments of consecutive layers, each keeping only its input (Chen et al.
                  2016, arXiv 1604.06174): O(√L) memory for one extra forward;
- ``"selective"`` keep the projections, recompute only the attention core softmax(QKᵀ/√d)V
                  (Korthikanti et al., MLSys 2023, arXiv 2205.05198): drops the O(T²) part cheaply.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .. import check

if TYPE_CHECKING:
    from .llama import Llama

__all__ = ["STRATEGIES", "MODELLED", "WITHOUT_K", "apply", "segments"]

STRATEGIES = ("none", "full", "every", "sqrt", "selective")
# The strategies the closed forms for kept activations model (``memory.activation_bytes``,
# ``activation_formulas``, ``llmtrain memory --recompute``): the memory-side spelling of each.
MODELLED = ("none", "full", "selective")
# The strategies that need no k (all but "every"): what the 3D paths take (``parallel.parallelize``).
WITHOUT_K = ("none", "full", "sqrt", "selective")


def segments(num_layers: int, strategy: str, k: int | None = None) -> list[range]:
    """The ranges of layers run under one checkpoint each, for a layered strategy."""
    check.positive_int("num_layers", num_layers)
    check.one_of("strategy", strategy, STRATEGIES)
    if strategy == "every":
        check.positive_int("k", k)
    elif k is not None:
        raise ValueError(f"k is only used by strategy 'every', got k={k!r} with {strategy!r}")
    if strategy in ("none", "selective"):
        return []
    if strategy == "full":
        return [range(i, i + 1) for i in range(num_layers)]
    if strategy == "every":
        return [range(i, i + 1) for i in range(0, num_layers, k)]
    n = math.ceil(math.sqrt(num_layers))  # sqrt: n segments of about L/n layers
    size = math.ceil(num_layers / n)
    return [range(i, min(i + size, num_layers)) for i in range(0, num_layers, size)]


def apply(model: Llama, strategy: str = "none", k: int | None = None) -> Llama:
    """Set ``model`` (an ``llmtrain.llama.Llama``) to recompute with ``strategy``; returns it.

    Calling it again replaces the previous strategy; ``"none"`` switches recomputation off.
    """
    from .llama import Llama  # torch: only when a model is set (flops and the CLI import this)

    check.module("model", model, Llama, "an llmtrain.llama.Llama")
    model.model.recompute_segments = segments(len(model.model.layers), strategy, k)
    for layer in model.model.layers:
        layer.self_attn.recompute_core = strategy == "selective"
    return model
