"""Whose bytes: each framework's memory accounting, every constant with its source.

The slides' (16P, DeepSpeed's runtime, transformers' softmax copy), DeepSpeed's own estimator
(18 bytes per partitioned parameter), Megatron-LM's distributed optimizer (6 + 12/d), NeMo's
(Apex's DistributedFusedAdam) and FSDP2 as torchtitan runs it. Measured and checked against the
frameworks' own estimators: tests/test_memory_frameworks.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import check
from ..units import GIB

__all__ = ["Framework", "FRAMEWORKS", "framework_of", "FRAMEWORK_BYTES", "ZERO_RUNTIME_BYTES",
           "FRAGMENTATION_BYTES"]


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
