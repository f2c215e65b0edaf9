"""llmtrain.parallel.parallelize: dp × tp × pp on real gloo ranks equals one process.

For each layout (``ParallelDims``), ZeRO stage, recomputation and schedule: the loss of the
global batch, every gradient (gathered back to the full model) and every weight after one SGD
step equal one process's on the same global batch (float64: < 1e-12, the a-priori bound of
summing a few thousand products in another order, n·ε ≈ 4096 · 2.2e-16; measured ≤ 2.2e-16); the
bytes each rank sends along each axis, counted by ``comm``, equal ``axis_bytes`` exactly; the
weight and gradient bytes each rank holds, measured, equal ``zero.expected_bytes`` of its
``memory.param_numels`` (each tensor padded to a multiple of dp) and, where dp divides every tensor,
``memory.model_state_bytes(rank=)``.

One 4-rank launch runs the fast checks (two axes at a time); ``slow``: the 8-rank
dp2 × tp2 × pp2 step, with our engine and PyTorch's (``engine="torch"``; its 4-rank checks are
in tests/test_torch_parallelize.py).
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from llmtrain.cost import memory, params
from llmtrain.model import shapes
from llmtrain.model.llama import Llama
from llmtrain.parallel import launch
from llmtrain.parallel.demos import three_d
from llmtrain.cost.layout import ParallelDims
from llmtrain.parallel.parallelize import axis_bytes, parallelize
from llmtrain.model.shapes import ModelShape

TOL = 1e-12
# GQA (6 heads, 2 kv heads), an MLP of 90 and a vocabulary of 61 that tp 2 splits unevenly,
# 5 layers that pp 2 splits 3 + 2, tied embeddings (the matrix is on the first and last stage)
ODD = ModelShape(vocab_size=61, hidden_size=48, num_layers=5, num_heads=6, num_kv_heads=2,
                 intermediate_size=90, max_seq_len=32, tie_embeddings=True, name="odd")
# every bias, head_dim ≠ H/N, sizes 4 ranks do not divide: ZeRO pads tensors to a multiple of dp
BIASED = ODD.replace(hidden_size=40, head_dim=16, num_heads=6, num_kv_heads=3, vocab_size=77,
                     intermediate_size=50, tie_embeddings=False, attention_bias=True,
                     o_bias=True, mlp_bias=True, name="biased")
FAST = [  # 4 ranks: two axes at a time
    dict(dims=(2, 1, 2), zero=0, batch=8, masked=True),
    dict(dims=(2, 1, 2), zero=2, shape=ODD, schedule="gpipe", microbatches=3,
         recompute="selective", batch=10),
    dict(dims=(1, 2, 2), zero=0, shape=ODD, recompute="full", microbatches=4),
    dict(dims=(2, 2, 1), zero=3, shape=ODD, recompute="full", masked=True),
    dict(dims=(2, 2, 1), zero=1, microbatches=2),
    dict(dims=(4, 1, 1), zero=2, shape=BIASED, batch=8, microbatches=2, masked=True),
    dict(dims=(1, 4, 1), zero=0, shape=ODD.replace(num_heads=8, num_kv_heads=4, hidden_size=64,
                                                   tie_embeddings=False)),
]
SLOW = [  # 8 ranks: all three axes, both engines (PyTorch's: no ZeRO-1, equal micro-batches)
    dict(dims=(2, 2, 2), zero=1, masked=True),
    dict(dims=(2, 2, 2), zero=3, shape=ODD, recompute="full"),
    dict(dims=(2, 2, 2), zero=0, shape=ODD.replace(num_layers=8), recompute="sqrt",
         microbatches=4),
    dict(dims=(2, 2, 2), zero=3, shape=ODD, recompute="full", masked=True, engines=("torch",)),
    dict(dims=(2, 2, 2), zero=2, shape=ODD, recompute="selective", schedule="gpipe",
         microbatches=4, engines=("torch",)),
]


def _errors() -> dict[str, str]:
    """Impossible input inside a rank: a batch dp does not divide, labels of another shape."""
    par = parallelize(three_d.model_of("tiny"), ParallelDims(dp=2, pp=2), lr=0.1)
    out = {}
    for name, args in {"batch": (torch.zeros(3, 8, dtype=torch.long),),
                       "labels": (torch.zeros(4, 8, dtype=torch.long),
                                  torch.zeros(4, 7, dtype=torch.long))}.items():
        try:
            par.step(*args)
        except ValueError as e:
            out[name] = str(e)
    return out


def _fast() -> dict:
    return {"compare": three_d.compare_all(FAST), "errors": _errors()}


def _slow() -> list:
    return three_d.compare_all(SLOW)


@pytest.fixture(scope="module")
def four():
    return launch(_fast, 4, timeout=240)


def _check(results: list, configs: list, i: int) -> None:
    c = configs[i]
    for rank_out in results:
        out = rank_out[i]
        engine = c.get("engines", ("ours",))[0]
        o = out[engine]
        last = out["coords"][0] == c["dims"][2] - 1
        assert (o["loss"] is not None) == last
        if last:
            assert math.isclose(o["loss"], out["single_loss"], rel_tol=TOL)
        assert o["grad_diff"] < TOL and o["weight_diff"] < TOL, (c, out["rank"])
        if engine == "torch":
            continue
        assert o["sent"] == o["formula"], (c, out["rank"], o["sent"], o["formula"])
        for part in ("weights", "gradients"):
            assert o["states"][part] == o["states_padded"][part], (c, out["rank"], part)
            if o["unpadded"]:  # dp divides every tensor: memory's closed form holds exactly
                assert o["states"][part] == o["states_formula"][part], (c, out["rank"], part)


@pytest.mark.parametrize("index", range(len(FAST)))
def test_two_axes_equal_one_process_bytes_as_the_formulas(four, index):
    _check([r["compare"] for r in four], FAST, index)


def test_every_axis_carries_traffic_where_it_should(four):
    res = [r["compare"] for r in four]
    by = {tuple(c["dims"]): i for i, c in enumerate(FAST)}
    for r in res:
        sent = r[by[(1, 2, 2)]]["ours"]["sent"]
        assert sent["tp"] > 0 and sent["pp"] > 0 and sent["dp"] == 0
        sent = r[by[(1, 4, 1)]]["ours"]["sent"]
        assert sent["pp"] == 0 and sent["dp"] == 0 and sent["tp"] > 0


def test_bad_batches_are_named_inside_a_rank(four):
    for r in four:
        assert "divisible by dp=2" in r["errors"]["batch"]
        assert "labels must have the shape" in r["errors"]["labels"]


@pytest.mark.slow
def test_dp2_tp2_pp2_on_8_ranks_equals_one_process_both_engines():
    res = launch(_slow, 8, timeout=420)
    for i in range(len(SLOW)):
        _check(res, SLOW, i)
    assert {r[0]["coords"] for r in res} == {(p, d, t) for p in range(2) for d in range(2)
                                              for t in range(2)}


# ------------------------------------------------------------------------- no processes

@pytest.mark.parametrize("kwargs, message", [
    (dict(dims=(1, 1, 1)), "dims must be a llmtrain.cost.layout.ParallelDims"),
    (dict(dims=ParallelDims(tp=3)), "tp must divide num_heads"),
    (dict(dims=ParallelDims(pp=3)), "pp must be at most num_layers"),
    (dict(zero=4), "zero must be"),
    (dict(recompute="every"), "recompute must be one of"),
    (dict(schedule="interleaved"), "schedule must be one of"),
    (dict(dims=ParallelDims(pp=2), microbatches=1), "microbatches must be at least pp=2"),
    (dict(engine="jax"), "engine must be one of"),
])
def test_impossible_settings_are_named(kwargs, message):
    model = Llama(shapes.get("tiny"))
    kwargs = {"dims": ParallelDims(), **kwargs}
    with pytest.raises(ValueError, match=message):
        parallelize(model, **kwargs)


def test_needs_a_process_group():
    with pytest.raises(RuntimeError, match="inside a rank"):
        parallelize(Llama(shapes.get("tiny")), ParallelDims())


_shapes = st.builds(
    lambda kv, g, d, L, V, f, tied, bias: ModelShape(
        vocab_size=V, hidden_size=kv * g * d, num_layers=L, num_heads=kv * g, num_kv_heads=kv,
        intermediate_size=f, max_seq_len=16, tie_embeddings=tied, attention_bias=bias),
    st.sampled_from([1, 2, 4]), st.sampled_from([1, 2]), st.sampled_from([2, 4]),
    st.integers(1, 6), st.integers(8, 40), st.integers(4, 30), st.booleans(), st.booleans())
_dims = st.builds(ParallelDims, dp=st.integers(1, 3), tp=st.sampled_from([1, 2, 4]),
                  pp=st.integers(1, 4))


@given(_shapes, _dims)
def test_parameters_of_each_rank_add_up(shape, dims):
    """Each rank's exact count (``memory.param_numels``), the busiest-GPU closed form and the
    whole model agree (the measured side: ``states`` in the launches above)."""
    assume(shape.num_kv_heads % dims.tp == 0 and dims.pp <= shape.num_layers)
    per_rank = [memory.params_per_gpu(shape, dims, r) for r in range(dims.world_size)]
    assert max(per_rank) <= memory.params_per_gpu(shape, dims)
    if shape.num_layers % dims.pp == 0:
        assert max(per_rank) == memory.params_per_gpu(shape, dims)
    if dims.tp == 1:  # one replica's stages hold the model once (+ the tied copy)
        one = sum(per_rank[dims.rank(pp=s)] for s in range(dims.pp))
        copy = shape.vocab_size * shape.hidden_size * (shape.tie_embeddings and dims.pp > 1)
        assert one == params.count(shape) + copy


def test_pipeline_bytes_per_stage():
    """pp: b·s·h·e per micro-batch out of every stage but the last, back into all but the first."""
    shape, dims = shapes.get("tiny").replace(num_layers=4), ParallelDims(pp=4)
    sent = [axis_bytes(shape, dims, r, 8, 16, microbatches=4)["pp"] for r in range(4)]
    one_way = 8 * 16 * shape.hidden_size * 4
    assert sent == [one_way, 2 * one_way, 2 * one_way, one_way]


def test_zero_stages_cost_more_with_micro_batches():
    """dp: ZeRO-2 reduce-scatters per micro-batch, ZeRO-3 also gathers twice: 0 < 1·m < 3·m."""
    shape, dims = shapes.get("tiny"), ParallelDims(dp=2, pp=2)
    dp = {z: axis_bytes(shape, dims, 0, 8, 16, microbatches=4, zero=z)["dp"] for z in range(4)}
    assert dp[1] == 0 and dp[2] == 2 * dp[0] and dp[3] == 3 * dp[2]


def test_module_runs_as_a_command():
    out = subprocess.run([sys.executable, "-m", "llmtrain.parallel.demos.parallelize", "--dp", "1",
                          "--tp", "1", "--pp", "2"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "2 ranks, engine ours: gradients equal one process's" in out.stdout
