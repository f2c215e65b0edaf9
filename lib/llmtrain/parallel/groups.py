"""The process groups of a ``ParallelDims`` layout, built inside every rank (3D 并行的通信组).

``cost.layout.ParallelDims`` is the arithmetic (which global ranks share a tp, dp or pp group);
this module makes those groups real on ``torch.distributed``:

    g = groups.build(ParallelDims(dp=2, tp=2, pp=2))   # every rank, the same order
    g.coords, g.tp, g.dp, g.pp                         # this rank's place and its 3 groups

``build`` names each group by its axis in ``comm``'s records ("dp", "tp", "pp"), so a
``comm.counting()`` log splits by axis. ``device_mesh(dims)`` is PyTorch's own equivalent
(``init_device_mesh``), whose groups hold the same ranks (tests/test_mesh.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch.distributed as dist

from .. import check
from ..cost.layout import AXES, Coords, ParallelDims
from . import comm

__all__ = ["Groups", "build", "device_mesh"]


class Groups(NamedTuple):
    """This rank's place in the layout and its three process groups."""

    dims: ParallelDims
    rank: int
    coords: Coords
    pp: Any
    dp: Any
    tp: Any

    def group(self, axis: str):
        check.one_of("axis", axis, AXES)
        return getattr(self, axis)


def build(dims: ParallelDims, rank: int | None = None) -> Groups:
    """Create the dp, tp and pp groups of ``dims`` (every rank must call this, in the same
    order) and return this rank's. torch.distributed must be initialised with world = dp·tp·pp."""
    if not isinstance(dims, ParallelDims):
        check.fail("dims", "a llmtrain.cost.layout.ParallelDims", dims)
    if not dist.is_initialized():
        raise RuntimeError("groups.build must be called inside a rank: torch.distributed "
                           "is not initialised (use llmtrain.parallel.launch or torchrun)")
    world = dist.get_world_size()
    if world != dims.world_size:
        raise ValueError(f"dp·tp·pp = {dims.dp}·{dims.tp}·{dims.pp} = {dims.world_size} must "
                         f"equal the world size {world}")
    rank = dist.get_rank() if rank is None else rank
    mine: dict[str, Any] = {}
    for axis in AXES:
        for ranks in dims.group_ranks(axis):  # new_group is collective: all ranks, all groups
            g = dist.new_group(ranks)
            if rank in ranks:
                mine[axis] = g
                comm.name_group(g, axis)
    return Groups(dims, rank, dims.coords(rank), mine["pp"], mine["dp"], mine["tp"])


def device_mesh(dims: ParallelDims, device_type: str = "cpu"):
    """PyTorch's own: ``init_device_mesh(device_type, (pp, dp, tp), mesh_dim_names=AXES)``."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, dims.shape, mesh_dim_names=AXES)
