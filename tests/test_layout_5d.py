"""The axes beyond 3D in ``cost.layout.ParallelDims``: cp (context parallelism) and ep (expert
parallelism over the dp ranks), their groups made by ``parallel.groups.build`` equal to
``init_device_mesh``'s, and ``comm.all_to_all`` computing and counting like
``dist.all_to_all_single``. Oracle of the arithmetic: torch.arange(world) laid out row-major as
(pp, edp, ep, cp, tp), the mesh ``init_device_mesh`` builds."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, strategies as st

from llmtrain.cost.comm import ring_bytes
from llmtrain.cost.layout import ALL_AXES, MESH_AXES, ParallelDims, Place
from llmtrain.model import shapes
from llmtrain.parallel import comm, launch
from llmtrain.parallel.groups import build, device_mesh

sizes = st.integers(1, 4)


def _oracle(d: ParallelDims) -> torch.Tensor:
    return torch.arange(d.world_size).reshape(d.mesh_shape)


def _expected_groups(d: ParallelDims, axis: str) -> list[list[int]]:
    """The mesh's groups along ``axis``: dp is (edp, ep) flattened; sorted by first rank."""
    mesh = _oracle(d)
    if axis == "dp":
        rows = mesh.permute(0, 3, 4, 1, 2).reshape(-1, d.dp)          # (edp, ep) last, edp major
    else:
        i = MESH_AXES.index(axis)
        rows = mesh.movedim(i, -1).reshape(-1, d.size(axis))
    return sorted(sorted(r) for r in rows.tolist())


# ---------------------------------------------------------------- arithmetic (no processes)

@given(pp=sizes, edp=sizes, ep=sizes, cp=sizes, tp=sizes)
def test_place_and_rank_are_inverse_and_follow_the_mesh(pp, edp, ep, cp, tp):
    d = ParallelDims(dp=edp * ep, tp=tp, pp=pp, cp=cp, ep=ep)
    assert d.world_size == pp * edp * ep * cp * tp and d.edp == edp
    mesh = _oracle(d)
    for r in range(d.world_size):
        p = d.place(r)
        assert mesh[p.pp, p.edp, p.ep, p.cp, p.tp].item() == r
        assert p.dp == p.edp * ep + p.ep
        assert d.rank(pp=p.pp, dp=p.dp, tp=p.tp, cp=p.cp) == r
        assert tuple(d.coords(r)) == (p.pp, p.dp, p.tp)


@given(pp=sizes, edp=sizes, ep=sizes, cp=sizes, tp=sizes)
def test_groups_on_every_axis_are_the_mesh_slices(pp, edp, ep, cp, tp):
    d = ParallelDims(dp=edp * ep, tp=tp, pp=pp, cp=cp, ep=ep)
    for axis in ALL_AXES:
        groups = d.group_ranks(axis)
        assert sorted(groups) == _expected_groups(d, axis), axis
        assert sorted(r for g in groups for r in g) == list(range(d.world_size))
        for g in groups:
            assert g == sorted(g) and len(g) == d.size(axis)
            assert [getattr(d.place(r), axis) for r in g] == list(range(d.size(axis)))
            for r in g:
                assert d.group_of(r, axis) == g


def test_cp_1_and_ep_1_is_the_3d_layout_as_before():
    d = ParallelDims(dp=2, tp=2, pp=2)
    assert repr(d) == "ParallelDims(dp=2, tp=2, pp=2)" and d.shape == (2, 2, 2)
    assert [d.rank(**d.coords(r)._asdict()) for r in range(8)] == list(range(8))
    assert d.group_ranks("cp") == d.group_ranks("ep") == [[r] for r in range(8)]
    assert d.group_ranks("edp") == d.group_ranks("dp")


def test_documented_example():
    d = ParallelDims(dp=4, cp=2, ep=2)
    assert repr(d) == "ParallelDims(dp=4, tp=1, pp=1, cp=2, ep=2)"
    assert d.place(5) == Place(pp=0, dp=2, cp=1, tp=0, ep=0, edp=1)
    assert (d.group_of(5, "cp"), d.group_of(5, "ep"), d.group_of(5, "edp"),
            d.group_of(5, "dp")) == ([4, 5], [5, 7], [1, 5], [1, 3, 5, 7])
    assert ParallelDims.from_gpus(16, tp=2, cp=2, ep=2) == ParallelDims(dp=4, tp=2, cp=2, ep=2)


@pytest.mark.parametrize("make, message", [
    (lambda: ParallelDims(dp=3, ep=2), "ep must divide dp=3"),
    (lambda: ParallelDims(cp=0), "cp"),
    (lambda: ParallelDims(ep=-1), "ep"),
    (lambda: ParallelDims(dp=2, cp=2).shape, "mesh_shape"),
    (lambda: ParallelDims(dp=2, cp=2).place(4), "rank"),
    (lambda: ParallelDims(dp=2).group_of(0, "xp"), "axis"),
    (lambda: ParallelDims.from_gpus(12, tp=2, cp=4), "tp·cp·pp=8"),
    (lambda: ParallelDims(dp=2, ep=2).check(shapes.get("tiny")), "ep=2 shards experts"),
])
def test_bad_layouts_are_named(make, message):
    with pytest.raises(ValueError, match=message.replace("·", ".").replace("(", r"\(")):
        make()


def test_all_to_all_formula_is_the_even_split():
    for n in (1, 2, 4, 8):
        sent, received = ring_bytes("all_to_all", 800, n)
        assert sent == received == Fraction(800 * (n - 1), n)


# ---------------------------------------------------------------- on real ranks

def _groups_and_all_to_all(layouts):
    out = {"groups": []}
    rank = dist.get_rank()
    for kw in layouts:
        d = ParallelDims(**kw)
        g = build(d)
        mesh = device_mesh(d)
        ours = {a: dist.get_process_group_ranks(g.group(a)) for a in ALL_AXES}
        names = mesh.mesh_dim_names
        theirs = {a: dist.get_process_group_ranks(mesh.get_group(a)) for a in names}
        coord = (mesh.get_coordinate(), tuple(g.place))
        out["groups"].append((ours, theirs, coord))
    # all_to_all on the world: even and uneven splits, against all_to_all_single's own result
    n = dist.get_world_size()
    x = torch.arange(4.0 * n, dtype=torch.float64) + 100 * rank
    even = torch.empty_like(x)
    ins = [(rank + j) % 3 for j in range(n)]                 # rank r sends (r+j)%3 rows to j
    outs = [(j + rank) % 3 for j in range(n)]                # so it gets (j+r)%3 from j
    y = torch.arange(float(sum(ins)), dtype=torch.float64) + 100 * rank
    uneven = torch.empty(sum(outs), dtype=torch.float64)
    with comm.counting() as log:
        comm.all_to_all(even, x, tag="even")
        comm.all_to_all(uneven, y, outs, ins, tag="uneven")
    out["even"], out["uneven"], out["ins"], out["outs"] = even, uneven, ins, outs
    out["log"] = [(r.op, r.tag, r.buffer_bytes, r.sent_bytes, r.received_bytes, r.axis)
                  for r in log.records]
    out["refused"] = []
    for bad in (lambda: comm.all_to_all(torch.empty(3), torch.ones(3)),
                lambda: comm.all_to_all(torch.empty(2), torch.ones(2), [1] * n, [2] * n),
                lambda: comm.all_to_all(torch.empty(2), torch.ones(n), [1] * (n + 1), [1] * n)):
        try:
            bad()
        except ValueError as e:
            out["refused"].append(str(e))
    return out


def _check(results, layouts):
    n = len(results)
    for rank, res in enumerate(results):
        for kw, (ours, theirs, (mesh_coord, place)) in zip(layouts, res["groups"]):
            d = ParallelDims(**kw)
            assert ours == {a: d.group_of(rank, a) for a in ALL_AXES}
            for a, ranks in theirs.items():  # the mesh's own groups: the same ranks
                assert ranks == ours[a], (kw, a)
            if d.cp > 1 or d.ep > 1:
                p = d.place(rank)
                assert tuple(mesh_coord) == (p.pp, p.edp, p.ep, p.cp, p.tp) and place == tuple(p)
        xs = [torch.arange(4.0 * n, dtype=torch.float64) + 100 * r for r in range(n)]
        assert torch.equal(res["even"], torch.cat([x.chunk(n)[rank] for x in xs]))
        # uneven: rows from rank j are the slice of j's input bound for this rank
        expect = []
        for j in range(n):
            ins_j = [(j + k) % 3 for k in range(n)]
            start = sum(ins_j[:rank])
            expect.append(torch.arange(float(sum(ins_j)), dtype=torch.float64)[start:start + ins_j[rank]] + 100 * j)
        assert torch.equal(res["uneven"], torch.cat(expect))
        (op1, _, m1, s1, r1, axis), (op2, _, m2, s2, r2, _) = res["log"]
        assert op1 == op2 == "all_to_all" and axis == "world"
        assert (s1, r1) == ring_bytes("all_to_all", m1, n)  # even: (N−1)/N of the input
        assert s2 == 8 * (sum(res["ins"]) - res["ins"][rank])      # uneven: exact rows, 8 B each
        assert r2 == 8 * (sum(res["outs"]) - res["outs"][rank]) and m2 == 8 * sum(res["ins"])
        assert len(res["refused"]) == 3
        assert "input_split_sizes is needed" in res["refused"][0]
        assert "must sum to dim 0 of input" in res["refused"][1]
        assert "output_split_sizes must be" in res["refused"][2]


LAYOUTS_2 = [dict(dp=2, ep=2), dict(cp=2), dict(dp=2, tp=1)]
LAYOUTS_4 = [dict(dp=2, cp=2, ep=2), dict(dp=4, ep=2), dict(cp=2, tp=2), dict(dp=2, cp=2)]


def test_groups_equal_init_device_mesh_and_all_to_all_counts_on_2_ranks():
    _check(launch(_groups_and_all_to_all, 2, LAYOUTS_2, timeout=120), LAYOUTS_2)


@pytest.mark.slow
def test_groups_equal_init_device_mesh_and_all_to_all_counts_on_4_ranks():
    _check(launch(_groups_and_all_to_all, 4, LAYOUTS_4, timeout=180), LAYOUTS_4)
