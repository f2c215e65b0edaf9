"""The layout of dp × tp × pp ranks (3D 并行): one validated description, arithmetic only.

``ParallelDims(dp, tp, pp)`` says how ``world = dp·tp·pp`` ranks are arranged. Global rank

    rank = (pp_index · dp + dp_index) · tp + tp_index

so tp is innermost (the tp ranks of a group are neighbours: one NVLink node), then dp, then
pp outermost (stages may sit on different nodes: pipelines send the least). This is the
row-major order of ``init_device_mesh(device, (pp, dp, tp), mesh_dim_names=("pp", "dp", "tp"))``,
and Megatron-LM's default order (tp-dp-pp, innermost first). Why this order: TP all-reduces
activations twice per layer in forward and backward (the most bytes, latency-bound: needs
NVLink), DP all-reduces gradients once per step (overlapped with backward), PP only sends one
activation per micro-batch to one neighbour (the least).

``dims.check(shape)`` refuses a layout the model cannot take, naming the field;
``ParallelDims.from_gpus(gpus, tp, pp)`` is the layout of a GPU count. Arithmetic only (no
torch): inside every rank ``llmtrain.parallel.groups.build(dims)`` creates the process groups.
Pipeline stages take consecutive layers by the same rule (``stage_layers``).

Sizes that tp does not divide (a vocabulary of 100 rows, an MLP of 128 columns on 3 ranks) are
split unevenly by one rule, ``torch.tensor_split``'s: n rows over t ranks give the first n mod t
ranks ⌈n/t⌉ rows and the others ⌊n/t⌋, in rank order (``shard_sizes``, ``shard_range``). So
rank 0 holds the most of every split tensor: the busiest rank (DTensor's ``Shard`` uses
``torch.chunk``'s ⌈n/t⌉-then-the-rest instead; Megatron-LM pads the vocabulary to a multiple
of t). Heads are never split: tp must divide num_heads and num_kv_heads.

    >>> d = ParallelDims(dp=2, tp=2, pp=2)
    >>> d.coords(5)
    Coords(pp=1, dp=0, tp=1)
    >>> d.group_ranks("tp")[0], d.group_ranks("dp")[0], d.group_ranks("pp")[0]
    ([0, 1], [0, 2], [0, 4])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from .. import check
from ..model.shapes import resolve

__all__ = ["ParallelDims", "Coords", "AXES", "shard_sizes", "shard_range", "stage_layers",
           "cut_segments"]

AXES = ("pp", "dp", "tp")  # outermost first: the order of the ranks and of the device mesh


def shard_sizes(size: int, parts: int) -> list[int]:
    """Rows of each of ``parts`` ranks when ``size`` rows are split: ⌈size/parts⌉ for the
    first size mod parts ranks, ⌊size/parts⌋ for the rest (``torch.tensor_split``'s rule)."""
    check.integer("size", size, 0)
    check.positive_int("parts", parts)
    q, extra = divmod(size, parts)
    return [q + (i < extra) for i in range(parts)]


def shard_range(size: int, parts: int, index: int) -> tuple[int, int]:
    """(start, length) of shard ``index``: rows [start, start + length) of ``size``
    (``torch.tensor_split``'s; tests/test_mesh.py::test_shards_follow_torch_tensor_split)."""
    check.positive_int("parts", parts)
    check.integer("index", index, 0, parts - 1)
    q, extra = divmod(check.integer("size", size, 0), parts)
    return index * q + min(index, extra), q + (index < extra)


def stage_layers(num_layers: int, stages: int) -> list[range]:
    """The decoder layers of each pipeline stage: consecutive, split as ``shard_range`` splits
    rows (the first num_layers mod stages stages take one more: they do not hold the costly
    lm_head; tests/test_mesh.py::test_stage_layers_split_like_shard_range)."""
    check.positive_int("stages", stages)
    if check.integer("num_layers", num_layers, 0) < stages:
        raise ValueError(f"num_layers must be at least the {stages} pipeline stages (each holds "
                         f"one layer or more), got num_layers={num_layers}")
    return [range(s, s + n) for s, n in (shard_range(num_layers, stages, i) for i in range(stages))]


def cut_segments(segments: list[range], layers: range) -> list[range]:
    """The parts of the whole model's recompute ``segments`` inside a stage's ``layers``
    (tests/test_mesh.py::test_stage_layers_split_like_shard_range)."""
    return [range(max(g.start, layers.start), min(g.stop, layers.stop)) for g in segments
            if g.start < layers.stop and layers.start < g.stop]


class Coords(NamedTuple):
    """Where a rank sits: its index along each axis."""

    pp: int
    dp: int
    tp: int


@dataclass(frozen=True)
class ParallelDims:
    """dp data-parallel replicas × tp tensor-parallel shards × pp pipeline stages, in
    Megatron-LM's rank order (tests/test_mesh.py: against ``init_device_mesh``)."""

    dp: int = 1
    tp: int = 1
    pp: int = 1

    def __post_init__(self) -> None:
        for name in ("dp", "tp", "pp"):
            check.positive_int(name, getattr(self, name))

    # --- arithmetic (no processes) -------------------------------------------------------

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def shape(self) -> tuple[int, int, int]:
        """Sizes in ``AXES`` order (pp, dp, tp): the device mesh's shape."""
        return (self.pp, self.dp, self.tp)

    def size(self, axis: str) -> int:
        check.one_of("axis", axis, AXES)
        return getattr(self, axis)

    def coords(self, rank: int) -> Coords:
        """The (pp, dp, tp) indices of global ``rank``."""
        check.integer("rank", rank, 0, self.world_size - 1)
        tp = rank % self.tp
        dp = rank // self.tp % self.dp
        pp = rank // (self.tp * self.dp)
        return Coords(pp, dp, tp)

    def rank(self, pp: int = 0, dp: int = 0, tp: int = 0) -> int:
        """The global rank at (pp, dp, tp)."""
        check.integer("pp", pp, 0, self.pp - 1)
        check.integer("dp", dp, 0, self.dp - 1)
        check.integer("tp", tp, 0, self.tp - 1)
        return (pp * self.dp + dp) * self.tp + tp

    def group_ranks(self, axis: str) -> list[list[int]]:
        """Every group along ``axis``: the global ranks that differ only in that index,
        each list in increasing order (= rank order inside the group)."""
        check.one_of("axis", axis, AXES)
        groups = []
        for r in range(self.world_size):
            c = self.coords(r)._asdict()
            if c[axis] == 0:
                groups.append([self.rank(**{**c, axis: i}) for i in range(self.size(axis))])
        return groups

    def group_of(self, rank: int, axis: str) -> list[int]:
        """The ranks of ``rank``'s group along ``axis``."""
        c = self.coords(rank)._asdict()
        return [self.rank(**{**c, axis: i}) for i in range(self.size(axis))]

    def check(self, shape: Any) -> "ParallelDims":
        """Refuse a layout ``shape`` (a ModelShape or preset name) cannot take; return self.

        tp must divide num_heads and num_kv_heads (each rank keeps whole heads; with GQA the
        key/value heads too); pp must not exceed num_layers. intermediate_size (the MLP's
        columns) and vocab_size (the embedding's and output layer's rows) need not be
        divisible: they are split by ``shard_sizes``; tp must only not exceed them (every rank
        holds at least one row).
        """
        shape = resolve(shape, "shape")
        for field in ("num_heads", "num_kv_heads"):
            value = getattr(shape, field)
            if value % self.tp:
                raise ValueError(f"tp must divide {field}={value}, got tp={self.tp}")
        for field in ("intermediate_size", "vocab_size"):
            value = getattr(shape, field)
            if self.tp > value:
                raise ValueError(f"tp must be at most {field}={value} (every rank holds at "
                                 f"least one row), got tp={self.tp}")
        if self.pp > shape.num_layers:
            raise ValueError(f"pp must be at most num_layers={shape.num_layers}, got pp={self.pp}")
        return self

    @classmethod
    def from_gpus(cls, gpus: int, tp: int = 1, pp: int = 1) -> "ParallelDims":
        """The layout of ``gpus`` GPUs as tp × pp model-parallel groups: dp = gpus/(tp·pp)."""
        for name, value in (("gpus", gpus), ("tp", tp), ("pp", pp)):
            check.positive_int(name, value)  # before gpus % (tp·pp): a zero degree is named
        if gpus % (tp * pp):
            raise ValueError(f"gpus must be a multiple of tp·pp={tp * pp}, got {gpus}")
        return cls(dp=gpus // (tp * pp), tp=tp, pp=pp)
