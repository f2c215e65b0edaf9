"""Memory per framework (issue 22): the slides' 16P and constants, DeepSpeed's estimator,
Megatron-LM's distributed optimizer, FSDP2 (torchtitan), NeMo's distributed_fused_adam (Apex).
Oracles: each framework's own formula,
as its source writes it, and the numbers of shared/reviews/external-calculators.md §1b."""

import math
import re
from fractions import Fraction

import pytest

from llmtrain.cost import memory, plan
from llmtrain.model import shapes
from llmtrain.cost.memory import GIB
from llmtrain.cost.layout import ParallelDims
from llmtrain.model.shapes import ModelShape

# The five models of the review's §1b, with its P (deduplicated HF count) and DeepSpeed's
# largest_layer_params (its model_to_params: the embedding here), and N GPUs. Mistral-7B-v0.1,
# Qwen2-1.5B and Qwen2-72B as their config.json; the review's P checks these shapes.
MODELS = {
    "llama2-7b": (shapes.get("llama2-7b"), 8, 6_738_415_616, 131_072_000),
    "mistral-7b": (ModelShape(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32,
                              num_kv_heads=8, intermediate_size=14336, max_seq_len=8192,
                              name="mistral-7b"), 8, 7_241_732_096, 131_072_000),
    "qwen2-1.5b": (ModelShape(vocab_size=151936, hidden_size=1536, num_layers=28, num_heads=12,
                              num_kv_heads=2, intermediate_size=8960, max_seq_len=4096,
                              tie_embeddings=True, attention_bias=True, name="qwen2-1.5b"),
                   4, 1_543_714_304, 233_373_696),
    "llama3-70b": (shapes.get("llama3-70b"), 64, 70_553_706_496, 1_050_673_152),
    "qwen2-72b": (ModelShape(vocab_size=152064, hidden_size=8192, num_layers=80, num_heads=64,
                             num_kv_heads=8, intermediate_size=29568, max_seq_len=4096,
                             attention_bias=True, name="qwen2-72b"), 128, 72_706_203_648,
                  1_245_708_288),
}
# the review's GiB (DeepSpeed ZeRO-2, ZeRO-3), two decimals
REVIEW_GIB = {"llama2-7b": (26.67, 14.61), "mistral-7b": (28.66, 15.66),
              "qwen2-1.5b": (9.35, 7.34), "llama3-70b": (149.90, 22.39),
              "qwen2-72b": (144.95, 14.16)}


# DeepSpeed (deepspeedai/DeepSpeed edaa722), cpu_offload=False, as written there:
# stage_1_and_2.py estimate_zero2_model_states_mem_needs:
#     gpu_mem = 2 * total_params + int(18 * total_params / total_gpus)
# stage3.py estimate_zero3_model_states_mem_needs:
#     largest_layer_memory = (4 * largest_layer_params)
#     gpu_mem = largest_layer_memory + int(18 * total_params / total_gpus)
def ds_zero2(total_params, total_gpus):
    return 2 * total_params + int(18 * total_params / total_gpus)


def ds_zero3(total_params, largest_layer_params, total_gpus):
    return 4 * largest_layer_params + int(18 * total_params / total_gpus)


def states(shape, dims, zero, framework="slides", **kw):
    return sum(memory.model_state_bytes(shape, dims=dims, zero=zero, framework=framework,
                                        **kw).values())


@pytest.mark.parametrize("name", MODELS)
def test_deepspeed_equals_its_estimator_byte_for_byte(name):
    shape, N, P, largest = MODELS[name]
    assert memory.params_per_gpu(shape) == P  # DeepSpeed's total_params
    assert memory.largest_layer_params(shape) == largest
    z2, z3 = states(shape, N, 2, "deepspeed"), states(shape, N, 3, "deepspeed")
    assert z2 == ds_zero2(P, N) and z3 == ds_zero3(P, largest, N)
    assert (round(z2 / GIB, 2), round(z3 / GIB, 2)) == REVIEW_GIB[name]
    # the review's identities: DeepSpeed − the slides' 16P = its fp32 gradient partition 4P/N
    # (ZeRO-2), and 4·largest layer + 2P/N (ZeRO-3)
    assert z2 - states(shape, N, 2) == Fraction(4 * P, N)
    assert z3 - states(shape, N, 3) == 4 * largest + Fraction(2 * P, N)


def test_deepspeed_parts():
    shape, N, P, largest = MODELS["llama2-7b"]
    assert memory.model_state_bytes(shape, dims=N, zero=2, framework="deepspeed") == {
        "weights": 2 * P, "gradients": 2 * P // N, "fp32 gradients": 4 * P // N,
        "master": 4 * P // N, "optimizer": 8 * P // N}
    assert memory.model_state_bytes(shape, dims=N, zero=3, framework="deepspeed") == {
        "weights": 2 * P // N, "gradients": 0, "fp32 gradients": 4 * P // N,
        "master": 4 * P // N, "optimizer": 8 * P // N, "gathered layer": 4 * largest}
    # stages 0 and 1 (no DeepSpeed estimator): the same list, split as ZeRO splits it
    assert states(shape, N, 0, "deepspeed") == 20 * P
    assert states(shape, N, 1, "deepspeed") == 4 * P + 16 * P // N


@pytest.mark.parametrize("P,N", [(7, 3), (1_000_003, 8), (10**9 + 7, 96)])
def test_deepspeed_rounds_the_partition_as_one(P, N):
    # int(18P/N) over the partitioned states, not a rounding per state
    assert states(P, N, 2, "deepspeed") == ds_zero2(P, N)
    assert states(P, N, 1, "deepspeed") == 4 * P + 16 * P // N


def test_megatron_distributed_optimizer_table():
    # NVIDIA/Megatron-LM docs/user-guide/features/dist_optimizer.md: bf16 parameters, fp32
    # gradients: 18 bytes per parameter, 6 + 12/d distributed; fp32: 16, 8 + 8/d
    P, d = 10**9 * 96, 96
    assert states(P, d, 0, "megatron") == 18 * P
    assert states(P, d, 1, "megatron") == 6 * P + 12 * P // d
    assert states(P, d, 0, "megatron", precision="fp32") == 16 * P
    assert states(P, d, 1, "megatron", precision="fp32") == 8 * P + 8 * P // d
    assert memory.model_state_bytes(P, dims=d, zero=1, framework="megatron") == {
        "weights": 2 * P, "gradients": 4 * P, "master": 4 * P // d, "optimizer": 8 * P // d}


def test_megatron_on_a_3d_layout():
    dims = ParallelDims(dp=4, tp=8, pp=2)
    P = memory.params_per_gpu(shapes.get("llama3-70b"), dims)
    got = states(shapes.get("llama3-70b"), dims, 1, "megatron")
    assert got == 6 * P + math.ceil(Fraction(12 * P, 4)) == 9 * P  # 6 + 12/d, d = 4
    assert got - states(shapes.get("llama3-70b"), dims, 1) == 2 * P  # fp32 main gradients


# NeMo's distributed_fused_adam as NVIDIA/dgxc-benchmarking 35a9aec runs it
# (nemotron/nemotron4-340b-synth.yaml optim: dtype bf16, grad_sync_dtype bf16,
# contiguous_grad_buffer True; megatron_amp_O2, precision bf16). NVIDIA/NeMo 4801936
# megatron_base_model.py setup_optimization: param_sync_dtype = model dtype (bf16) and
#     elif optim_dtype == model_dtype:
#         optim_kwargs['store_params'] = False
# NVIDIA/apex 810ffae apex/contrib/optimizers/distributed_fused_adam.py, per parameter element:
#     bf16 weights                                     2   whole
#     _grad_buffers[...] = torch.zeros([buffer_size], dtype=grad_sync_dtype)   2   whole
#     sync_grads_shard = torch.empty([shard_size], ...)  2/d (d > 1; d = 1: = grads_bucket, 0)
#     exp_avg_shard, exp_avg_sq_shard in dtype (bf16)  4/d
#     params_shard (store_params False): none          0
#     step: params_shard = torch.empty([shard_size], dtype=param_sync_dtype)   2/d
def nemo_bytes(P, d, zero=1):
    if zero == 0 or d == 1:  # one distributed rank (disable_distributed_parameters at zero=0)
        return 2 * P + 2 * P + 4 * P + 2 * P
    return 2 * P + 2 * P + 2 * P // d + 4 * P // d + 2 * P // d


@pytest.mark.parametrize("d", [1, 2, 8])
def test_nemo_distributed_fused_adam_bytes(d):
    P = 10**9 * 8
    assert states(P, d, 1, "nemo") == nemo_bytes(P, d)
    assert states(P, d, 0, "nemo") == nemo_bytes(P, d, zero=0) == 10 * P
    assert states(P, d, 1, "nemo") == {1: 10 * P, 2: 8 * P, 8: 5 * P}[d]  # 4 + 8/d, d > 1


def test_nemo_parts():
    P, d = 10**9 * 8, 8
    assert memory.model_state_bytes(P, dims=d, zero=1, framework="nemo") == {
        "weights": 2 * P, "gradients": 2 * P, "gradient shards": 2 * P // d, "master": 0,
        "optimizer": 4 * P // d, "step output shards": 2 * P // d}
    assert memory.model_state_bytes(P, dims=1, zero=1, framework="nemo")["gradient shards"] == 0


def test_nemo_on_the_nemotron4_340b_recipe_layout():
    # dgxc-benchmarking 35a9aec nemotron: TP 8, PP 8, DP 2 on 128 H100 80GB (BF16, 4.61 s/step)
    shape = shapes.gpt_shape(18432, 96, 96, 256000, 4096, name="nemotron4-340b", kv_heads=8,
                           biases=False, tie_embeddings=False)
    dims = ParallelDims(dp=2, tp=8, pp=8)
    P = memory.params_per_gpu(shape, dims)
    assert P == 5_771_298_816
    got = memory.model_state_bytes(shape, dims=dims, zero=1, framework="nemo")
    assert sum(got.values()) == nemo_bytes(P, 2) == 8 * P  # 43.0 GiB
    assert states(shape, dims, 1, "megatron") == 12 * P  # 6 + 12/d: 64.5 GiB
    assert round(8 * P / GIB, 1) == 43.0 and round(12 * P / GIB, 1) == 64.5


def test_fsdp_and_slides_count_16p():
    shape = shapes.get("llama2-7b")
    for z in range(4):
        assert states(shape, 8, z, "fsdp") == states(shape, 8, z)
    assert states(shape, 8, 3, "fsdp") == 16 * memory.params_per_gpu(shape) // 8


def test_estimate_parts_per_framework():
    shape, dims = shapes.get("llama2-7b"), ParallelDims(dp=8)
    kw = dict(zero=1, impl="korthikanti", recompute="selective")
    est = {f: memory.estimate(shape, dims, 2, 4096, framework=f, **kw) for f in memory.FRAMEWORKS}
    assert est["slides"].parts == memory.estimate(shape, dims, 2, 4096, **kw).parts  # the default
    BTV = 2 * 4096 * shape.vocab_size
    assert est["slides"].parts["softmax extra"] == est["deepspeed"].parts["softmax extra"] == 8 * BTV
    for f in ("megatron", "fsdp", "nemo"):  # their losses keep only the fp32 softmax the models count
        assert "softmax extra" not in est[f].parts and "ZeRO runtime" not in est[f].parts
        assert est[f].parts["framework"] == est[f].parts["fragmentation"] == GIB
    assert est["deepspeed"].parts["ZeRO runtime"] == 4 * GIB
    for f in memory.FRAMEWORKS:
        assert est[f].details["framework"] == f
        assert est[f].parts["activations"] == est["slides"].parts["activations"]
        assert est[f].parts["model states"] == states(shape, dims, 1, f)
    # the phase model is PyTorch's mixed precision: none for DeepSpeed's and Megatron's buffers
    assert est["deepspeed"].step_peak is None and est["megatron"].step_peak is None
    assert est["nemo"].step_peak is None
    assert est["fsdp"].step_peak is not None
    assert est["fsdp"].peak_bytes == est["slides"].peak_bytes - 4 * GIB  # no ZeRO runtime
    assert memory.estimate(shape, dims, 2, 4096, framework="megatron", zero=1, impl="korthikanti",
                           recompute="selective", softmax_extra=True, overheads=False).total == (
        states(shape, dims, 1, "megatron") + est["megatron"].parts["activations"])


def test_every_framework_names_its_sources():
    for name, fw in memory.FRAMEWORKS.items():
        assert fw.name == name and memory.framework_of(name) is fw
        assert set(fw.sources) == {"states", "softmax_extra", "constants"}
        assert all(fw.sources.values())


@pytest.mark.parametrize("call,message", [
    (lambda: states(7 * 10**9, 8, 2, "megatron"), "zero must be one of (0, 1) for "
                                                  "framework='megatron', got 2"),
    (lambda: states(7 * 10**9, 8, 2, "deepspeed", precision="fp32"),
     "precision must be one of ('mixed',) for framework='deepspeed', got 'fp32'"),
    (lambda: states(7 * 10**9, 8, 1, "megatron", optimizer="sgd"),
     "optimizer must be 'adam' or 'adamw' for framework='megatron'"),
    (lambda: states(7 * 10**9, 8, 3, "deepspeed"),
     "framework='deepspeed' at zero=3 counts the largest layer: num_params must be a ModelShape"),
    (lambda: states(7 * 10**9, 8, 1, "colossal"), "framework must be one of ('slides', "
                                                  "'deepspeed', 'megatron', 'fsdp', 'nemo'), got "
                                                  "'colossal'"),
    (lambda: memory.estimate(shapes.get("tiny"), framework="nemo2"), "framework must be one of"),
    (lambda: states(7 * 10**9, 8, 2, "nemo"), "zero must be one of (0, 1) for framework='nemo'"),
    (lambda: states(7 * 10**9, 8, 1, "nemo", precision="fp32"),
     "precision must be one of ('mixed',) for framework='nemo', got 'fp32'"),
])
def test_framework_arguments_are_checked(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


# --- the command line: llmtrain memory --framework ----------------------------------------

def cli(*args):
    """(exit status, stdout, stderr) of ``llmtrain memory ...`` in this process."""
    import contextlib
    import io

    from llmtrain import cli as _cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _cli.main(["memory", *args])
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("framework,zero", [("slides", 3), ("deepspeed", 3), ("deepspeed", 2),
                                            ("megatron", 1), ("fsdp", 3), ("nemo", 1),
                                            ("nemo", 0)])
def test_cli_framework_equals_estimate(framework, zero):
    import json

    code, out, err = cli("llama2-7b", "--gpus", "8", "--zero", str(zero), "--framework",
                         framework, "--json")
    assert code == 0, err
    got = json.loads(out)
    est = memory.estimate(shapes.get("llama2-7b"), 8, zero=zero, framework=framework)
    assert got["parts"] == est.parts and got["framework"] == framework
    assert got["model_states"] == est.details["model states"]


def test_cli_deepspeed_table_names_its_fp32_gradients():
    code, out, err = cli("llama2-7b", "--gpus", "8", "--zero", "2", "--framework", "deepspeed",
                         "--no-overheads")
    assert code == 0, err
    shape, N, P, _ = MODELS["llama2-7b"]
    assert f"model states     {ds_zero2(P, N):>18,}" in out


@pytest.mark.parametrize("args,needle", [
    (["--framework", "colossal"], "framework must be one of ('slides', 'deepspeed', 'megatron', "
                                  "'fsdp', 'nemo'), got 'colossal'"),
    (["--framework", "nemo"], "zero must be one of (0, 1) for framework='nemo', got 3"),
    (["--framework", "megatron"], "zero must be one of (0, 1) for framework='megatron', got 3"),
    (["--framework", "deepspeed", "--precision", "bf16"],
     "precision must be one of ('mixed',) for framework='deepspeed', got 'bf16'"),
    (["--framework", "fsdp", "--optimizer", "lion"], "optimizer must be one of"),
])
def test_cli_framework_bad_input(args, needle):
    code, out, err = cli("llama2-7b", "--gpus", "8", *args)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and needle in lines[0], err
