"""Distributed training by hand on ``torch.distributed`` (3D 并行训练: 数据并行, ZeRO, 张量并行, 流水线并行).

- ``launch``        start N ranks (gloo on CPU, NCCL on GPUs), run a function, return results
- ``mesh``          ``ParallelDims(dp, tp, pp)``: the layout of the ranks, checked; its groups
- ``comm``          collectives and point-to-point messages on an explicit group, each counted:
                    op, axis, buffer bytes, bytes sent per rank
- ``data_parallel`` hand-written data parallelism: broadcast, bucketed gradient all-reduce
- ``zero``          hand-written ZeRO stage 1/2/3 around any torch optimizer; bytes held per rank
- ``tp_comm``       what tensor parallelism sends: Megatron's f/g and the sequence-parallel pair
                    (autograd Functions on ``comm``), ``comm_per_layer``/``comm_per_model``
- ``tensor_parallel`` Megatron tensor parallelism and sequence parallelism by hand:
                    Column/RowParallelLinear, VocabParallelEmbedding, vocab-parallel cross entropy,
                    ``apply(Llama)``, full state_dict shards
- ``pp_schedule``   pipeline schedules as data (GPipe, 1F1B, interleaved 1F1B), an exact
                    simulator, the bubble and message formulas (流水线并行)
- ``pipeline_parallel`` the pipeline on real ranks: stages of consecutive layers, the same
                    schedules run over counted point-to-point messages, ``pipeline(Llama)``
- ``parallelize``   3D parallelism: ``parallelize(model, dims, zero=, recompute=)`` composes the
                    above on one ``ParallelDims`` (pipeline split → tensor parallel →
                    recomputation → data parallel / ZeRO); ``axis_bytes``, the bytes per axis
- ``torch_parallelize`` the same from PyTorch's engines (DTensor, ``fully_shard``,
                    ``torch.distributed.pipelining``): ``parallelize(..., engine="torch")``
- ``demos/``        what the ranks run in the notebooks, the tests and under torchrun: a shared
                    ``harness`` (models, batches, the command line) and one module per notebook

The submodules are imported on use, so ``python -m llmtrain.parallel.zero`` runs cleanly.
"""

from .launch import (LaunchTimeout, RankError, default_backend, device, init_from_env, launch,
    rank, shutdown, world_size)

__all__ = ["launch", "RankError", "LaunchTimeout", "init_from_env", "shutdown",
           "default_backend", "rank", "world_size", "device"]
