"""The process groups of a ``ParallelDims`` layout, built inside every rank (3D 并行的通信组).

``cost.layout.ParallelDims`` is the arithmetic (which global ranks share a tp, dp or pp group);
this module makes those groups real on ``torch.distributed``:

    g = groups.build(ParallelDims(dp=2, tp=2, pp=2))   # every rank, the same order
    g.coords, g.tp, g.dp, g.pp                         # this rank's place and its 3 groups
    g = groups.build(ParallelDims(dp=2, cp=2, ep=2))   # beyond 3D (notebook 14)
    g.place, g.cp, g.ep, g.edp                         # context, expert, expert-data groups

``build`` names each group by its axis in ``comm``'s records ("dp", "tp", "pp", "cp", "ep",
"edp"), so a ``comm.counting()`` log splits by axis. ``device_mesh(dims)`` is PyTorch's own
equivalent (``init_device_mesh``), whose groups hold the same ranks (tests/test_mesh.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch.distributed as dist

from .. import check
from ..cost.layout import ALL_AXES, AXES, MESH_AXES, Coords, ParallelDims, Place
from . import comm

__all__ = ["Groups", "build", "device_mesh"]


class Groups(NamedTuple):
    """This rank's place in the layout and its process groups (one per axis of ``ALL_AXES``)."""

    dims: ParallelDims
    rank: int
    coords: Coords
    pp: Any
    dp: Any
    tp: Any
    cp: Any = None
    ep: Any = None
    edp: Any = None

    @property
    def place(self) -> Place:
        return self.dims.place(self.rank)

    def group(self, axis: str):
        check.one_of("axis", axis, ALL_AXES)
        return getattr(self, axis)


def build(dims: ParallelDims, rank: int | None = None) -> Groups:
    """Create the groups of ``dims`` on every axis (pp, dp, cp, tp, ep, edp; every rank must call
    this, in the same order) and return this rank's. torch.distributed must be initialised with
    world = dp·cp·tp·pp."""
    if not isinstance(dims, ParallelDims):
        check.fail("dims", "a llmtrain.cost.layout.ParallelDims", dims)
    if not dist.is_initialized():
        raise RuntimeError("groups.build must be called inside a rank: torch.distributed "
                           "is not initialised (use llmtrain.parallel.launch or torchrun)")
    world = dist.get_world_size()
    if world != dims.world_size:
        cp = f"·{dims.cp}" if dims.cp > 1 else ""
        raise ValueError(f"dp{'·cp' if cp else ''}·tp·pp = {dims.dp}{cp}·{dims.tp}·{dims.pp} = "
                         f"{dims.world_size} must equal the world size {world}")
    rank = dist.get_rank() if rank is None else rank
    mine: dict[str, Any] = {}
    for axis in (*AXES, "cp", "ep", "edp"):  # the 3D axes first, as before cp and ep existed
        for ranks in dims.group_ranks(axis):  # new_group is collective: all ranks, all groups
            g = dist.new_group(ranks)
            if rank in ranks:
                mine[axis] = g
                comm.name_group(g, axis)
    return Groups(dims, rank, dims.coords(rank), mine["pp"], mine["dp"], mine["tp"],
                  mine["cp"], mine["ep"], mine["edp"])


def device_mesh(dims: ParallelDims, device_type: str = "cpu"):
    """PyTorch's own: ``init_device_mesh(device_type, (pp, dp, tp), mesh_dim_names=AXES)``
    (3D: cp = ep = 1); with cp or ep, the mesh of ``MESH_AXES`` (pp, edp, ep, cp, tp), whose
    ("edp", "ep") flattened is dp."""
    from torch.distributed.device_mesh import init_device_mesh

    if dims.cp == 1 and dims.ep == 1:
        return init_device_mesh(device_type, dims.shape, mesh_dim_names=AXES)
    return init_device_mesh(device_type, dims.mesh_shape, mesh_dim_names=MESH_AXES)
