"""llmtrain.cost.layout and comm on sub-groups: the layout arithmetic against an independent
oracle (torch.arange(world).reshape(pp, dp, tp)), errors naming the field, the groups
``groups.build`` makes equal to ``init_device_mesh``'s, and every comm op on a sub-group
computing the right thing and recording its axis, group size and bytes. One launch of 4 ranks;
the 8-rank layouts are one ``slow`` launch."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, strategies as st

from llmtrain.parallel import comm, launch
from llmtrain.parallel.groups import build
from llmtrain.parallel.demos.three_d import groups as mesh_groups
from llmtrain.cost.layout import (AXES, Coords, ParallelDims, cut_segments, shard_range, shard_sizes,
    stage_layers)
from llmtrain.model.shapes import ModelShape

sizes = st.integers(1, 6)


def _oracle(d: ParallelDims) -> torch.Tensor:
    """The ranks laid out as the device mesh lays them: row-major (pp, dp, tp)."""
    return torch.arange(d.world_size).reshape(d.pp, d.dp, d.tp)


# ---------------------------------------------------------------- arithmetic (no processes)

@given(pp=sizes, dp=sizes, tp=sizes)
def test_coords_and_rank_are_inverse_and_follow_the_mesh(pp, dp, tp):
    d = ParallelDims(dp=dp, tp=tp, pp=pp)
    assert d.world_size == dp * tp * pp and d.shape == (pp, dp, tp)
    mesh = _oracle(d)
    for r in range(d.world_size):
        c = d.coords(r)
        assert mesh[c.pp, c.dp, c.tp].item() == r
        assert d.rank(**c._asdict()) == r == (c.pp * dp + c.dp) * tp + c.tp
        assert 0 <= c.pp < pp and 0 <= c.dp < dp and 0 <= c.tp < tp


@given(pp=sizes, dp=sizes, tp=sizes)
def test_group_ranks_partition_the_world_as_the_mesh_slices_it(pp, dp, tp):
    d = ParallelDims(dp=dp, tp=tp, pp=pp)
    mesh = _oracle(d)
    for i, axis in enumerate(AXES):
        groups = d.group_ranks(axis)
        # the mesh's groups along an axis: move that axis last, one row per group
        expected = sorted(mesh.movedim(i, -1).reshape(-1, d.size(axis)).tolist())
        assert sorted(groups) == expected
        assert sorted(r for g in groups for r in g) == list(range(d.world_size))
        assert len(groups) == d.world_size // d.size(axis)
        for g in groups:
            assert g == sorted(g)  # group rank i = the i-th along the axis
            assert [d.coords(r)._asdict()[axis] for r in g] == list(range(d.size(axis)))
            for r in g:
                assert d.group_of(r, axis) == g


def test_documented_examples():
    d = ParallelDims(dp=2, tp=2, pp=2)
    assert d.coords(5) == Coords(pp=1, dp=0, tp=1)
    assert d.group_ranks("tp") == [[0, 1], [2, 3], [4, 5], [6, 7]]  # neighbours: one node
    assert d.group_ranks("dp") == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert d.group_ranks("pp") == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert ParallelDims().world_size == 1 and ParallelDims().group_ranks("dp") == [[0]]


@given(size=st.integers(0, 200), parts=st.integers(1, 9))
def test_shards_follow_torch_tensor_split(size, parts):
    """One partition rule for every uneven split: torch.tensor_split's (the first size mod
    parts shards one row longer), contiguous, in order, covering every row once."""
    rows = torch.arange(size)
    pieces = torch.tensor_split(rows, parts)
    assert shard_sizes(size, parts) == [len(p) for p in pieces]
    for i, piece in enumerate(pieces):
        start, length = shard_range(size, parts, i)
        assert rows[start:start + length].tolist() == piece.tolist()
    assert max(shard_sizes(size, parts)) == shard_sizes(size, parts)[0] == -(-size // parts)


def test_shard_arguments_are_checked():
    for call, message in [(lambda: shard_sizes(-1, 2), "size must be an integer >= 0, got -1"),
                          (lambda: shard_sizes(4, 0), "parts must be a positive integer, got 0"),
                          (lambda: shard_range(4, 2, 2), "index must be an integer in [0, 1], got 2")]:
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == message


# an odd GQA shape: 6 heads, 3 key/value heads; tp = 3 splits its vocabulary and MLP unevenly
ODD = ModelShape(vocab_size=96, hidden_size=48, num_layers=3, num_heads=6, num_kv_heads=3,
                 intermediate_size=100, max_seq_len=16)


@pytest.mark.parametrize("kwargs, message", [
    ({"dp": 0}, "dp must be a positive integer, got 0"),
    ({"tp": -1}, "tp must be a positive integer, got -1"),
    ({"pp": 2.0}, "pp must be a positive integer, got 2.0"),
    ({"tp": True}, "tp must be a positive integer, got True"),
])
def test_bad_sizes_name_the_field(kwargs, message):
    with pytest.raises(ValueError) as e:
        ParallelDims(**kwargs)
    assert str(e.value) == message


@pytest.mark.parametrize("dims, message", [
    (ParallelDims(tp=2), "tp must divide num_kv_heads=3, got tp=2"),
    (ParallelDims(tp=4), "tp must divide num_heads=6, got tp=4"),
    (ParallelDims(tp=6), "tp must divide num_kv_heads=3, got tp=6"),
    (ParallelDims(pp=4), "pp must be at most num_layers=3, got pp=4"),
])
def test_check_refuses_what_the_shape_cannot_take(dims, message):
    with pytest.raises(ValueError) as e:
        dims.check(ODD)
    assert str(e.value) == message


def test_check_accepts_what_fits():
    assert ParallelDims(dp=5, pp=3).check(ODD) == ParallelDims(dp=5, pp=3)
    # tp need not divide intermediate_size (100) or vocab_size (97): they are split unevenly
    assert ParallelDims(tp=3).check(ODD.replace(vocab_size=97)).tp == 3
    # ... but every rank must hold at least one row of each
    tiny_vocab = ODD.replace(vocab_size=2)
    with pytest.raises(ValueError) as e:
        ParallelDims(tp=3).check(tiny_vocab)
    assert str(e.value) == ("tp must be at most vocab_size=2 (every rank holds at least one "
                            "row), got tp=3")
    assert ParallelDims(tp=2, pp=2).check("tiny").tp == 2  # a preset name works too
    with pytest.raises(ValueError, match="shape"):  # names the argument
        ParallelDims().check("tinyy")


def test_from_gpus_is_the_layout_of_a_gpu_count():
    assert ParallelDims.from_gpus(16, tp=2, pp=2) == ParallelDims(dp=4, tp=2, pp=2)
    assert ParallelDims.from_gpus(8) == ParallelDims(dp=8)
    with pytest.raises(ValueError, match=r"^gpus must be a multiple of tp·pp=4, got 10$"):
        ParallelDims.from_gpus(10, tp=4)
    with pytest.raises(ValueError, match="^tp must be a positive integer, got 0$"):
        ParallelDims.from_gpus(8, tp=0)


def test_stage_layers_split_like_shard_range():
    assert stage_layers(5, 2) == [range(0, 3), range(3, 5)]
    assert cut_segments([range(0, 2), range(2, 5)], range(1, 4)) == [range(1, 2), range(2, 4)]
    with pytest.raises(ValueError, match="num_layers must be at least the 3 pipeline stages"):
        stage_layers(2, 3)


def test_layout_imports_no_torch():
    code = ("import sys; sys.modules['torch'] = None; "
            "from llmtrain.cost import layout, comm, pp_schedule; "
            "print(layout.ParallelDims.from_gpus(8, tp=2).dp, comm.ring_bytes('all_gather', 8, 2))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4", "(Fraction(4,", "1),", "Fraction(4,", "1))"]


def test_bad_coordinates_name_the_argument():
    d = ParallelDims(dp=2, tp=3)
    for call, message in [(lambda: d.coords(6), "rank must be an integer in [0, 5], got 6"),
                          (lambda: d.coords(-1), "rank must be an integer in [0, 5], got -1"),
                          (lambda: d.rank(tp=3), "tp must be an integer in [0, 2], got 3"),
                          (lambda: d.rank(dp=2), "dp must be an integer in [0, 1], got 2"),
                          (lambda: d.group_ranks("sp"), "axis must be one of"),
                          (lambda: d.group_of(0, "sp"), "axis must be one of")]:
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value).startswith(message)


def test_build_outside_a_rank():
    with pytest.raises(RuntimeError, match="inside a rank"):
        build(ParallelDims())


# ---------------------------------------------------------------- inside ranks

def _records(log):
    return [(r.op, r.axis, r.world_size, r.buffer_bytes, r.sent_bytes, r.received_bytes, r.peer,
             r.tag) for r in log.records]


def subgroup_comm():
    """Every comm op on the sub-groups of dp2×tp2 (collectives) and pp2×dp2 (messages)."""
    rank = dist.get_rank()
    out = {}
    d = ParallelDims(dp=2, tp=2)
    g = build(d)
    with comm.counting() as log:
        t = torch.full((3,), rank + 1.0)
        comm.all_reduce(t, "sum", group=g.tp, tag="tp-sum")
        out["tp_sum"] = t
        a = torch.full((3,), float(rank))
        comm.all_reduce(a, "avg", group=g.dp, tag="dp-avg")
        out["dp_avg"] = a
        shard = torch.empty(2)
        comm.reduce_scatter(shard, torch.arange(4.0) + 10 * rank, "sum", group=g.dp, tag="rs")
        out["dp_reduce_scatter"] = shard
        full = torch.empty(4)
        comm.all_gather(full, torch.full((2,), float(rank)), group=g.tp, tag="ag")
        out["tp_all_gather"] = full
        b = torch.full((5,), float(rank))
        comm.broadcast(b, d.group_of(rank, "dp")[-1], group=g.dp, tag="bc")  # src: a global rank
        out["dp_broadcast"] = b
        w = torch.full((2,), float(rank))
        comm.all_reduce(w, "max", tag="world")
        out["world_max"] = w
    out["collectives"] = _records(log)

    p = ParallelDims(pp=2, dp=2)
    pg = build(p)
    first = pg.coords.pp == 0
    peer = p.rank(pp=1 - pg.coords.pp, dp=pg.coords.dp)
    with comm.counting() as log:
        act = torch.full((4,), 100.0 + rank) if first else torch.empty(4)
        if first:  # stage 0 → stage 1, blocking
            comm.send(act, peer, group=pg.pp, tag="activation")
        else:
            comm.recv(act, peer, group=pg.pp, tag="activation")
        out["recv"] = act
        grad = torch.full((6,), -1.0 - rank) if not first else torch.empty(6)
        work = (comm.irecv(grad, peer, group=pg.pp, tag="grad") if first
                else comm.isend(grad, peer, group=pg.pp, tag="grad"))
        work.wait()
        out["irecv"] = grad
        # both ways at once: each sends 3 floats and receives 3
        mine, theirs = torch.full((3,), float(rank)), torch.empty(3)
        for w in comm.batch_isend_irecv([comm.P2P("send", mine, peer, pg.pp, "both"),
                                         comm.P2P("recv", theirs, peer, pg.pp, "both")]):
            w.wait()
        out["batch"] = theirs
    out["messages"] = _records(log)
    out["peer"] = peer

    try:
        build(ParallelDims(dp=3))
    except ValueError as e:
        out["mismatch"] = str(e)
    out["refused"] = []  # checked before any message is sent: no rank waits for the others
    for bad in (lambda: comm.all_reduce(torch.ones(2), "min", group=g.tp),
                lambda: comm.reduce_scatter(torch.empty(2), torch.ones(6), group=g.dp),
                lambda: comm.all_gather(torch.empty(6), torch.ones(2), group=g.tp),
                lambda: comm.batch_isend_irecv([comm.P2P("sendrecv", torch.ones(1), peer)])):
        try:
            bad()
        except ValueError as e:
            out["refused"].append(str(e))
    return out


def four_ranks():
    return mesh_groups([(1, 2, 2), (2, 1, 2), (2, 2, 1), (1, 1, 4)]), subgroup_comm()


@pytest.fixture(scope="module")
def four():
    return launch(four_ranks, 4, timeout=120)


def _check_groups(results, layouts):
    for rank, res in enumerate(results):
        for (pp, dp, tp), got in zip(layouts, res):
            d = ParallelDims(dp=dp, tp=tp, pp=pp)
            assert got["rank"] == rank
            assert got["coords"] == tuple(d.coords(rank)) == got["mesh_coords"]
            assert got["ours"] == got["torch"], (pp, dp, tp)
            assert got["ours"] == {a: d.group_of(rank, a) for a in AXES}


def test_build_equals_init_device_mesh(four):
    _check_groups([groups for groups, _ in four], [(1, 2, 2), (2, 1, 2), (2, 2, 1), (1, 1, 4)])


@pytest.mark.slow
def test_build_equals_init_device_mesh_on_8_ranks():
    layouts = [(2, 2, 2), (1, 2, 4), (4, 2, 1)]
    _check_groups(launch(mesh_groups, 8, layouts, timeout=180), layouts)


def test_collectives_on_sub_groups_compute_right(four):
    # dp2×tp2: tp groups [0, 1], [2, 3]; dp groups [0, 2], [1, 3]
    tp = {0: [0, 1], 1: [0, 1], 2: [2, 3], 3: [2, 3]}
    dp = {0: [0, 2], 1: [1, 3], 2: [0, 2], 3: [1, 3]}
    for rank, (_, res) in enumerate(four):
        assert torch.equal(res["tp_sum"], torch.full((3,), sum(r + 1.0 for r in tp[rank])))
        assert torch.equal(res["dp_avg"], torch.full((3,), sum(dp[rank]) / 2))
        i = dp[rank].index(rank)  # rank inside the dp group
        summed = sum(torch.arange(4.0) + 10 * r for r in dp[rank])
        assert torch.equal(res["dp_reduce_scatter"], summed[2 * i:2 * i + 2])
        assert torch.equal(res["tp_all_gather"], torch.tensor([float(r) for r in tp[rank]
                                                                 for _ in range(2)]))
        assert torch.equal(res["dp_broadcast"], torch.full((5,), float(dp[rank][-1])))
        assert torch.equal(res["world_max"], torch.full((2,), 3.0))


def test_collectives_on_sub_groups_record_axis_size_and_bytes(four):
    for rank, (_, res) in enumerate(four):
        i = [[0, 2], [1, 3]][rank % 2].index(rank)  # dp-group rank; src is its rank 1
        h = Fraction(1, 2)  # (N − 1)/N for N = 2
        assert res["collectives"] == [
            ("all_reduce", "tp", 2, 12, 2 * h * 12, 2 * h * 12, None, "tp-sum"),
            ("all_reduce", "dp", 2, 12, 2 * h * 12, 2 * h * 12, None, "dp-avg"),
            ("reduce_scatter", "dp", 2, 16, h * 16, h * 16, None, "rs"),
            ("all_gather", "tp", 2, 16, h * 16, h * 16, None, "ag"),
            # chain from the group's rank 1: it sends 20 bytes, the other receives them
            ("broadcast", "dp", 2, 20, 20 if i == 1 else 0, 0 if i == 1 else 20, None, "bc"),
            ("all_reduce", "world", 4, 8, Fraction(3, 4) * 2 * 8, Fraction(3, 4) * 2 * 8, None,
             "world"),
        ]


def test_messages_between_stages_arrive_and_are_counted(four):
    # pp2×dp2: pp groups [0, 2], [1, 3]; stage 0 = ranks 0 and 1
    for rank, (_, res) in enumerate(four):
        first, peer = rank < 2, res["peer"]
        assert peer == (rank + 2) % 4
        if not first:
            assert torch.equal(res["recv"], torch.full((4,), 100.0 + peer))
        else:
            assert torch.equal(res["irecv"], torch.full((6,), -1.0 - peer))
        assert torch.equal(res["batch"], torch.full((3,), float(peer)))
        one_way = [("send" if first else "recv", "pp", 2, 16, Fraction(16 if first else 0),
                    Fraction(0 if first else 16), peer, "activation"),
                   ("recv" if first else "send", "pp", 2, 24, Fraction(0 if first else 24),
                    Fraction(24 if first else 0), peer, "grad")]
        both = [("send", "pp", 2, 12, Fraction(12), Fraction(0), peer, "both"),
                ("recv", "pp", 2, 12, Fraction(0), Fraction(12), peer, "both")]
        assert res["messages"] == one_way + both


def test_build_refuses_a_layout_of_another_world_size(four):
    for _, res in four:
        assert res["mismatch"] == "dp·tp·pp = 3·1·1 = 3 must equal the world size 4"


def test_bad_comm_calls_name_the_argument(four):
    for _, res in four:
        assert res["refused"] == [
            "op must be one of ('avg', 'sum', 'max'), got 'min'",
            "input must be group size × output's = 2 × 2 elements (reduce_scatter), got 6",
            "output must be group size × input's = 2 × 2 elements (all_gather), got 6",
            "op must be one of ('send', 'recv'), got 'sendrecv'"]
