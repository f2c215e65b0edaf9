"""parallelize_torch (DTensor TP + FSDP2 + torch.distributed.pipelining on one device mesh)
equals one process: loss, every full gradient, the weights after an SGD step.

Measured (float64, torch 2.13 gloo, this CPU): loss within 2e-16 relative, every gradient within
1.8e-15 of its tensor's largest entry, weights after SGD within 2.3e-16; asserted at 1e-12.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, strategies as st

from llmtrain.model.llama import Llama
from llmtrain.parallel import launch
from llmtrain.cost.layout import ParallelDims
from llmtrain.parallel.pipeline_parallel import stage_layers
from llmtrain.parallel.torch_parallelize import check_settings, parallelize_torch
from llmtrain.model.shapes import ModelShape

# GQA (4 query heads, 2 key/value heads), an odd vocabulary and MLP width: uneven DTensor shards
SHAPE = ModelShape(vocab_size=101, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                   intermediate_size=75, max_seq_len=32, name="gqa-odd")
TIED = dataclasses.replace(SHAPE, tie_embeddings=True, name="gqa-odd-tied")
LR, BOUND = 0.1, 1e-12


def _max_rel(a: dict, b: dict) -> float:
    """max over tensors of max|a − b| / max|b|."""
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max()) for k in b)


def _local_numel(p: torch.Tensor) -> int:
    """Elements this rank holds of parameter ``p`` (a DTensor's local shard)."""
    return p.to_local().numel() if hasattr(p, "to_local") else p.numel()


def _refusals(par, ids: torch.Tensor) -> list[str]:
    """The ValueErrors of steps with a batch dp does not divide (7 sequences), one that
    dp·microbatches does not divide (6), labels of another shape, another shape than the first
    step's: all raised before any message, so no rank waits."""
    errors = []
    for bad in (dict(input_ids=ids[:7]), dict(input_ids=ids[:6]),
                dict(input_ids=ids, labels=ids[:, :5]), dict(input_ids=ids[:, :6])):
        try:
            par.step(**bad)
        except ValueError as e:
            errors.append(str(e))
    return errors


def compare_rank(configs: list[dict]) -> list[dict]:
    """For each config {dp, tp, pp, zero, recompute, schedule, microbatches, tied, layers,
    steps, errors}: ``steps`` steps (gradients accumulate) of parallelize_torch and one
    process's ``steps`` × gradient, on the same float64 model and global batch (8 × 12, three
    tokens unlabelled); relative differences of the loss, the full gradients and the weights
    after one SGD step; the elements this rank holds."""
    out = []
    for c in configs:
        shape = TIED if c.get("tied") else SHAPE
        shape = dataclasses.replace(shape, num_layers=c.get("layers", shape.num_layers))
        if c.get("bias"):  # Qwen's q/k/v biases, and o and MLP biases (row-parallel: replicated)
            shape = dataclasses.replace(shape, attention_bias=True, o_bias=True, mlp_bias=True)
        steps = c.get("steps", 1)
        torch.manual_seed(0)
        model = Llama(shape, c.get("attn", "sdpa")).to(torch.float64)
        with torch.no_grad():  # biases start at 0: make them matter
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.02)
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, shape.vocab_size, (8, 12), generator=g)
        labels = ids.clone()
        labels[0, 3:6] = -100
        single = copy.deepcopy(model)
        ref = single(ids, labels=labels).loss
        (ref * steps).backward()
        ref_grads = {k: p.grad.clone() for k, p in single.named_parameters()}
        torch.optim.SGD(single.parameters(), lr=LR).step()
        ref_w = {k: p.detach().clone() for k, p in single.named_parameters()}

        dims = ParallelDims(dp=c.get("dp", 1), tp=c.get("tp", 1), pp=c.get("pp", 1))
        par = parallelize_torch(model, dims, zero=c.get("zero", 3),
                                recompute=c.get("recompute", "none"),
                                schedule=c.get("schedule", "1f1b"),
                                microbatches=c.get("microbatches"), lr=LR)
        calls = [0]  # MLP forwards begun inside backward: the recomputed ones

        def count(module, args):  # (torch's checkpoint stops a recomputation early: count starts)
            calls[0] += torch._C._current_graph_task_id() != -1  # -1: not in autograd's backward

        hooks = [layer.mlp.register_forward_pre_hook(count) for layer in par.module.layers.values()]
        layer = next(iter(par.module.layers.values()))
        up = layer.mlp.up_proj
        held = []  # elements of a weight this rank holds right after its layer's forward

        def after_forward(module, args, output):  # FSDP's own post-forward hook runs first
            if torch._C._current_graph_task_id() == -1:
                held.append(_local_numel(up.weight))

        hooks.append(layer.register_forward_hook(after_forward))
        for _ in range(steps):
            calls[0] = 0  # the last step's (torch's first step also infers shapes: one more)
            loss = par.step(ids, labels)
        for h in hooks:
            h.remove()
        grads = par.full_grads()
        par.optimizer.step()
        weights = par.full_state_dict()
        errors = _refusals(par, ids) if c.get("errors") else []
        out.append({"loss": None if loss is None else float(abs(loss - ref) / ref),
                    "last": dims.coords(dist.get_rank()).pp == dims.pp - 1,
                    "grads": _max_rel(grads, ref_grads), "weights": _max_rel(weights, ref_w),
                    "local": sum(_local_numel(p) for p in par.module.parameters()),
                    "held": sorted(set(held)), "rest": _local_numel(up.weight),
                    "errors": errors, "recomputed": calls[0],
                    "selective": [la.self_attn.recompute_core
                                  for la in par.module.layers.values()]})
    return out


def _check_equal(configs: list[dict], results: list[list[dict]]) -> None:
    for i, c in enumerate(configs):
        dims = ParallelDims(c.get("dp", 1), c.get("tp", 1), c.get("pp", 1))
        for rank, per_rank in enumerate(results):
            r = per_rank[i]
            assert r["last"] == (dims.coords(rank).pp == dims.pp - 1)
            assert (r["loss"] is None) != r["last"], (c, rank)  # the loss on the last stage only
            if r["last"]:
                assert r["loss"] <= BOUND, (c, rank, r)
            assert r["grads"] <= BOUND and r["weights"] <= BOUND, (c, rank, r)
            layers = len(stage_layers(c.get("layers", 2), dims.pp)[dims.coords(rank).pp])
            again = c.get("recompute") in ("full", "sqrt")  # each layer once more per micro-batch
            m = c.get("microbatches") or dims.pp
            # ZeRO-3 frees the gathered weights after each forward, ZeRO-2 keeps them until
            # backward (the whole tp shard: more than its 1/dp part at rest); ZeRO-0 never shards
            if dims.dp > 1 and c.get("zero", 3) == 2:
                assert len(r["held"]) == 1 and r["held"][0] > r["rest"], (c, rank, r)
            else:
                assert r["held"] == [r["rest"]], (c, rank, r)
            if c.get("steps", 1) > 1:
                assert r["recomputed"] == m * layers * again, (c, rank, r)
            assert r["selective"] == [c.get("recompute") == "selective"] * layers


# Two steps (gradients accumulated) where recomputation is counted in the second.
# tp2×pp2, 3 layers (2 + 1), tied embeddings (the two copies' gradients added over the
# pipeline), all biases, eager attention, full recompute;
# dp2×pp2 with ZeRO-2, selective recompute, GPipe, 4 micro-batches; dp2×tp2, 4 layers (tied:
# one DTensor for both ends) as ZeRO-3 with two 2-layer segments ("sqrt") and as ZeRO-0.
FAST = [dict(tp=2, pp=2, tied=True, recompute="full", steps=2, layers=3, bias=True, attn="eager"),
        dict(dp=2, pp=2, zero=2, recompute="selective", schedule="gpipe", microbatches=4,
             steps=2, errors=True),
        dict(dp=2, tp=2, zero=3, tied=True, recompute="sqrt", layers=4, steps=2, errors=True),
        dict(dp=2, tp=2, zero=0, tied=True, layers=4)]


def test_four_ranks_equal_one_process():
    results = launch(compare_rank, 4, FAST, timeout=240)
    _check_equal(FAST, results)
    dims = ParallelDims(dp=2, tp=2)
    for rank in range(4):
        # ZeRO-3: the dp ranks hold disjoint shards of this tp rank's part; ZeRO-0 all of it
        shards = [results[q][2]["local"] for q in dims.group_of(rank, "dp")]
        assert sum(shards) == results[rank][3]["local"]
        assert results[rank][3]["errors"] == []
    shape_kept = ("input_ids must keep the shape (8, 12) of the first step (torch's pipelining "
                  "infers the activation shapes once), got ")
    dp2 = "input_ids must have a batch size divisible by dp=2, got 7"
    labels = "labels must have the shape of input_ids (8, 12), got (8, 5)"
    for rank in range(4):
        assert results[rank][1]["errors"] == [  # microbatches 4: 6 sequences are not 2·4
            dp2, "input_ids must have a batch size that is a positive multiple of dp·microbatches "
            "= 2·4 = 8 (torch's pipelining sizes its buffers from the first micro-batch: all must "
            "be equal), got 6", labels, shape_kept + "(8, 6)"]
        assert results[rank][2]["errors"] == [dp2, shape_kept + "(6, 12)", labels,
                                              shape_kept + "(8, 6)"]


# The 8-rank dp2 × tp2 × pp2 step of this engine runs in tests/test_parallelize.py's 8-rank
# launch (one launch for both engines: a launch of 8 ranks costs ~12 s here).


# --- refusals without processes ----------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(dims=ParallelDims(tp=3)), "tp must divide num_heads=4, got tp=3"),
    (dict(dims=ParallelDims(pp=3)), "pp must be at most num_layers=2, got pp=3"),
    (dict(zero=1), "zero must be 0, 2 or 3 with engine 'torch', got zero=1"),
    (dict(zero=4), "zero must be one of"),
    (dict(zero=True), "zero must be 0, 2 or 3, got True"),
    (dict(recompute="every"), "recompute must be one of"),
    (dict(schedule="interleaved"), "schedule must be one of"),
    (dict(dims=ParallelDims(pp=2), microbatches=1), "microbatches must be at least the 2 pipeline"),
    (dict(dims=(2, 1, 1)), "dims must be a llmtrain.cost.layout.ParallelDims"),
    (dict(model="tiny"), "model must be a llmtrain.model.llama.Llama"),
])
def test_refused_without_processes(kwargs, message):
    args = dict(model=Llama(SHAPE), dims=ParallelDims(), zero=3, recompute="none",
                schedule="1f1b", microbatches=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parallelize_torch(args.pop("model"), args.pop("dims"), **args)


def test_settings_default_microbatches_and_no_process_group():
    assert check_settings(Llama(SHAPE), ParallelDims(pp=2), 3, "none", "1f1b", None) == 2
    assert check_settings(Llama(SHAPE), ParallelDims(pp=2), 0, "full", "gpipe", 5) == 5
    if not dist.is_initialized():
        with pytest.raises(RuntimeError, match="inside a rank"):
            parallelize_torch(Llama(SHAPE), ParallelDims())


@functools.cache
def _model() -> Llama:
    return Llama(SHAPE)


@given(dp=st.integers(1, 4), tp=st.integers(1, 5), pp=st.integers(1, 4),
       zero=st.sampled_from([0, 1, 2, 3]), m=st.none() | st.integers(1, 6))
def test_settings_refused_exactly_when_a_rule_breaks(dp, tp, pp, zero, m):
    broken = (SHAPE.num_heads % tp or SHAPE.num_kv_heads % tp or pp > SHAPE.num_layers
              or zero == 1 or (m or pp) < pp)
    dims = ParallelDims(dp, tp, pp)
    if broken:
        with pytest.raises(ValueError):
            check_settings(_model(), dims, zero, "none", "1f1b", m)
    else:
        assert check_settings(_model(), dims, zero, "none", "1f1b", m) == (m or pp)
