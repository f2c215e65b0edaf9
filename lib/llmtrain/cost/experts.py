"""Where a mixture of experts' parameters sit (混合专家, expert parallelism): per layer, per
pipeline stage, per GPU. Arithmetic only.

A MoE decoder layer is the dense layer's attention and norms plus a MoE block: E routed experts
(each a SwiGLU of width I = ``moe_intermediate_size``: 3·H·I parameters), a router and, for
DeepSeek and Qwen2-MoE, shared expert(s). DeepSeek-V3's first ``first_dense_layers`` layers
keep a dense FFN (H'). Expert parallelism (``ParallelDims.ep``) gives each of ep ranks E/ep of
the routed experts of every MoE layer; everything else (attention, norms, router, shared
experts, embeddings) is replicated over ep, as in Megatron-Core's and DeepSeek-V3's layouts.

The per-layer parts come from ``params`` (the count checked against Hugging Face's models):
attention and norms per layer = (attention + norms − final norm)/L, and what the MoE block holds
besides its routed experts (router, shared experts, a gate or bias) = the rest of the count,
so ``stage_params`` over all stages with ep = 1 adds up to ``params.count`` exactly
(tests/test_memory_5d.py::test_stages_add_up_to_the_count).
"""

from __future__ import annotations

from .. import check
from ..model.shapes import ModelShape, resolve
from . import params as _params
from .layout import shard_range

__all__ = ["layer_params", "stage_params"]


def layer_params(shape: ModelShape) -> dict[str, int]:
    """Parameters of each kind of layer (ints): "attention and norms" (per layer), "dense FFN"
    (3HH' + biases, per dense layer), "MoE block, non-expert" (router, shared experts: per MoE
    layer), "routed experts" (E·3·H·I per MoE layer), "embedding", "lm_head" (0 when tied),
    "final norm". For a dense shape the MoE entries are 0. Sums back to ``params.count``:
    tests/test_memory_5d.py::test_stages_add_up_to_the_count."""
    shape = resolve(shape, "shape")
    b = _params.breakdown(shape)
    H, L = shape.hidden_size, shape.num_layers
    common, rest = divmod(b["attention"] + b["norms"] - H, L)
    dense = 3 * H * shape.intermediate_size + (2 * shape.intermediate_size + H) * shape.mlp_bias
    out = {"attention and norms": common, "dense FFN": dense, "MoE block, non-expert": 0,
           "routed experts": 0, "embedding": b["embedding"], "lm_head": b["lm_head"],
           "final norm": H}
    n_moe = shape.moe_layers
    if n_moe:
        routed = shape.num_experts * 3 * H * shape.moe_intermediate_size
        moe_total, left = divmod(_params.count(shape) - b["embedding"] - b["lm_head"] - H
                                 - L * common - shape.first_dense_layers * dense, n_moe)
        if rest or left or moe_total < routed:
            raise ValueError(f"shape {shape.name!r}: params.breakdown does not split into equal "
                             "layers (attention, norms and MoE blocks alike in every layer)")
        out["MoE block, non-expert"], out["routed experts"] = moe_total - routed, routed
    return out


def stage_params(shape: ModelShape, pp: int = 1, stage: int = 0, ep: int = 1) -> dict[str, int]:
    """{"non-expert": ..., "experts": ...}: the parameters one GPU of pipeline ``stage`` (of
    ``pp``) holds with tp = 1, its experts sharded over ``ep`` ranks. The stage's layers by
    ``shard_range`` (``layout.stage_layers``); the embedding on the first stage, the final norm
    and the output layer on the last (tied embeddings with pp > 1: the last stage keeps its own
    copy, as ``states.param_numels``); of each MoE layer E/ep routed experts.

    Checked: tests/test_memory_5d.py::test_stages_add_up_to_the_count and
    ::test_ep_divides_the_experts."""
    shape = resolve(shape, "shape")
    check.positive_int("pp", pp)
    check.integer("stage", stage, 0, pp - 1)
    check.positive_int("ep", ep)
    if ep > 1 and not shape.is_moe:
        raise ValueError(f"ep > 1 needs a MoE shape (num_experts > 0), got ep={ep} for "
                         f"{shape.name!r}")
    if shape.is_moe and shape.num_experts % ep:
        raise ValueError(f"ep must divide num_experts={shape.num_experts}, got ep={ep}")
    if pp > shape.num_layers:
        raise ValueError(f"pp must be at most num_layers={shape.num_layers}, got pp={pp}")
    p = layer_params(shape)
    start, n = shard_range(shape.num_layers, pp, stage)
    layers = range(start, start + n)
    dense = sum(1 for i in layers if not shape.is_moe or i < shape.first_dense_layers)
    moe = n - dense
    non_expert = n * p["attention and norms"] + dense * p["dense FFN"]
    non_expert += moe * p["MoE block, non-expert"]
    if stage == 0:
        non_expert += p["embedding"]
    if stage == pp - 1:
        tied_copy = p["embedding"] if shape.tie_embeddings and pp > 1 else 0
        non_expert += p["final norm"] + p["lm_head"] + tied_copy
    return {"non-expert": non_expert, "experts": moe * p["routed experts"] // ep}
