"""Distributed training by hand on ``torch.distributed`` (3D 并行训练: 数据并行, ZeRO, 张量并行, 流水线并行).

- ``launch``        start N ranks (gloo on CPU, NCCL on GPUs), run a function, return results
- ``groups``        the pp, dp, cp, tp, ep and edp groups of a ``cost.layout.ParallelDims``, built
                    inside every rank (``groups.build(dims)``)
- ``comm``          collectives and point-to-point messages on an explicit group, each counted:
                    op, axis, buffer bytes, bytes sent per rank (``cost.comm``'s ring model)
- ``data_parallel`` hand-written data parallelism: broadcast, bucketed gradient all-reduce
- ``zero``          hand-written ZeRO stage 1/2/3 around any torch optimizer; bytes held per rank
- ``tp_comm``       what tensor parallelism sends: Megatron's f/g and the sequence-parallel pair
                    (autograd Functions on ``comm``)
- ``tp_layers``     Column/RowParallelLinear, VocabParallelEmbedding, vocab-parallel cross entropy
- ``tensor_parallel`` Megatron tensor and sequence parallelism by a plan (module path ->
                    "column", "row", "vocab"): ``apply(Llama)``, full state_dict shards
- ``pipeline_parallel`` the pipeline on real ranks: stages of consecutive layers, the schedules
                    of ``cost.pp_schedule`` run over counted point-to-point messages
- ``parallelize``   3D parallelism: ``parallelize(model, dims, zero=, recompute=)`` composes the
                    above on one ``ParallelDims`` (pipeline split → tensor parallel →
                    recomputation → data parallel / ZeRO)
- ``context_parallel`` context parallelism (notebook 14): the sequence split over a cp group,
                    ring attention (K/V around the ring, online softmax, zig-zag) and
                    DeepSpeed-Ulysses (all-to-all heads ↔ sequence) on the reference LLaMA
- ``expert_parallel`` expert parallelism (notebook 14): a MoE layer's experts over an ep group,
                    counted dispatch/combine all-to-alls, capacity and dropped tokens
- ``torch_parallelize`` the same from PyTorch's engines (DTensor, ``fully_shard``,
                    ``torch.distributed.pipelining``): ``parallelize(..., engine="torch")``
- ``demos/``        what the ranks run in the notebooks, the tests and under torchrun, and the
                    command lines (``python -m llmtrain.parallel.demos.zero --stage 3``)

Nothing is imported eagerly (PEP 562): ``from llmtrain.parallel import launch, RankError``
loads ``launch`` when a name is first asked for. As before, ``llmtrain.parallel.launch`` is
the function ``launch.launch`` (the submodule is ``sys.modules["llmtrain.parallel.launch"]``).
"""

from __future__ import annotations

import importlib
import sys
import types

__all__ = ["launch", "RankError", "LaunchTimeout", "init_from_env", "shutdown",
           "default_backend", "rank", "world_size", "device"]


def __getattr__(name: str):
    if name in __all__:  # all from the submodule launch
        return getattr(importlib.import_module(f"{__name__}.launch"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """This package: when the import system binds the submodule ``launch`` to its name here
    (on its first import, from anywhere), the name gets the function ``launch.launch``."""

    def __setattr__(self, name, value):
        if name == "launch" and isinstance(value, types.ModuleType):
            value = value.launch
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
