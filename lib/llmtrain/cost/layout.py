"""The layout of dp × cp × tp × pp ranks, experts over ep (3D 并行 and beyond): arithmetic only.

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

Two axes beyond 3D (notebook 14):

- **cp**, context parallelism: each rank of a cp group holds a part of every sequence. It sits
  between tp and dp: rank = ((pp_index · dp + dp_index) · cp + cp_index) · tp + tp_index, the
  order of Megatron-Core's "tp-cp-ep-dp-pp" and of torchtitan's mesh (…, "dp", "cp", "tp"). The
  world is dp·cp·tp·pp. cp = 1 gives the 3D formula above.
- **ep**, expert parallelism: the routed experts of every MoE layer are sharded over ep ranks
  carved out of dp (ep does not multiply the world; ep must divide dp). dp_index =
  edp_index · ep + ep_index: an ep group is ep consecutive dp ranks, each holding E/ep experts;
  the edp group ("expert data parallel") is the dp/ep ranks holding the same experts, which
  average those experts' gradients (dense weights average over all of dp). With cp > 1 the cp
  ranks of an edp group hold the same experts as well: expert gradients then reduce over edp × cp
  (Megatron-Core's expert data-parallel group, dp·cp/ep ranks; ``cost.states.zero_groups`` shards
  expert states over it). ``parallel.expert_parallel`` composes ep with dp only.

    >>> d = ParallelDims(dp=4, cp=2, ep=2)
    >>> d.place(5)
    Place(pp=0, dp=2, cp=1, tp=0, ep=0, edp=1)
    >>> d.group_of(5, "cp"), d.group_of(5, "ep"), d.group_of(5, "edp"), d.group_of(5, "dp")
    ([4, 5], [5, 7], [1, 5], [1, 3, 5, 7])

``place`` is the full position; ``coords`` stays the 3D (pp, dp, tp) of the chapter's layouts.
``device_mesh`` (``parallel.groups``) is PyTorch's own mesh of the same ranks
(tests/test_mesh.py: every group equals the mesh's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from .. import check
from ..model.shapes import resolve

__all__ = ["ParallelDims", "Coords", "Place", "AXES", "ALL_AXES", "MESH_AXES", "shard_sizes",
           "shard_range", "stage_layers", "cut_segments"]

AXES = ("pp", "dp", "tp")  # outermost first: the order of the ranks and of the device mesh
# every axis a group can be built on; MESH_AXES: the device mesh of a layout with cp or ep
# (dp = edp × ep flattened, ep innermost)
ALL_AXES = ("pp", "dp", "cp", "tp", "ep", "edp")
MESH_AXES = ("pp", "edp", "ep", "cp", "tp")


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


class Place(NamedTuple):
    """Where a rank sits on every axis: dp = edp · ep_size + ep (``ParallelDims.place``)."""

    pp: int
    dp: int
    cp: int
    tp: int
    ep: int
    edp: int


@dataclass(frozen=True, repr=False)
class ParallelDims:
    """dp data-parallel replicas × cp context shards × tp tensor-parallel shards × pp pipeline
    stages, experts over ep of the dp ranks, in Megatron-LM's rank order (tests/test_mesh.py:
    against ``init_device_mesh``)."""

    dp: int = 1
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1

    def __post_init__(self) -> None:
        for name in ("dp", "tp", "pp", "cp", "ep"):
            check.positive_int(name, getattr(self, name))
        if self.dp % self.ep:
            raise ValueError(f"ep must divide dp={self.dp} (experts are sharded over ep of the "
                             f"data-parallel ranks), got ep={self.ep}")

    def __repr__(self) -> str:  # the 3D repr when cp = ep = 1, as before these axes
        extra = "".join(f", {n}={getattr(self, n)}" for n in ("cp", "ep") if getattr(self, n) > 1)
        return f"ParallelDims(dp={self.dp}, tp={self.tp}, pp={self.pp}{extra})"

    # --- arithmetic (no processes) -------------------------------------------------------

    @property
    def world_size(self) -> int:
        return self.dp * self.cp * self.tp * self.pp

    @property
    def edp(self) -> int:
        """Expert data parallelism: the dp/ep ranks that hold the same experts."""
        return self.dp // self.ep

    @property
    def shape(self) -> tuple[int, int, int]:
        """Sizes in ``AXES`` order (pp, dp, tp): the 3D device mesh's shape (cp = 1)."""
        if self.cp > 1:
            raise ValueError(f"shape is the 3D mesh (pp, dp, tp); with cp={self.cp} use "
                             "mesh_shape (MESH_AXES)")
        return (self.pp, self.dp, self.tp)

    @property
    def mesh_shape(self) -> tuple[int, int, int, int, int]:
        """Sizes in ``MESH_AXES`` order (pp, edp, ep, cp, tp): the device mesh with every axis."""
        return (self.pp, self.edp, self.ep, self.cp, self.tp)

    def size(self, axis: str) -> int:
        check.one_of("axis", axis, ALL_AXES)
        return getattr(self, axis)

    def place(self, rank: int) -> Place:
        """Every index of global ``rank``: rank = ((pp·dp + dp_i)·cp + cp_i)·tp + tp_i and
        dp_i = edp_i·ep + ep_i (the module's docstring)."""
        check.integer("rank", rank, 0, self.world_size - 1)
        tp = rank % self.tp
        cp = rank // self.tp % self.cp
        dp = rank // (self.tp * self.cp) % self.dp
        pp = rank // (self.tp * self.cp * self.dp)
        return Place(pp, dp, cp, tp, dp % self.ep, dp // self.ep)

    def coords(self, rank: int) -> Coords:
        """The (pp, dp, tp) indices of global ``rank`` (``place`` adds cp, ep and edp)."""
        p = self.place(rank)
        return Coords(p.pp, p.dp, p.tp)

    def rank(self, pp: int = 0, dp: int = 0, tp: int = 0, cp: int = 0) -> int:
        """The global rank at (pp, dp, cp, tp)."""
        check.integer("pp", pp, 0, self.pp - 1)
        check.integer("dp", dp, 0, self.dp - 1)
        check.integer("tp", tp, 0, self.tp - 1)
        check.integer("cp", cp, 0, self.cp - 1)
        return ((pp * self.dp + dp) * self.cp + cp) * self.tp + tp

    def group_of(self, rank: int, axis: str) -> list[int]:
        """The ranks of ``rank``'s group along ``axis`` (one of ``ALL_AXES``), in increasing
        order (= rank order inside the group): the ranks that differ from it only in that
        index (for ep and edp: in that part of the dp index)."""
        check.one_of("axis", axis, ALL_AXES)
        p = self.place(rank)
        at = dict(pp=p.pp, dp=p.dp, cp=p.cp, tp=p.tp)
        if axis == "ep":
            return [self.rank(**{**at, "dp": p.edp * self.ep + i}) for i in range(self.ep)]
        if axis == "edp":
            return [self.rank(**{**at, "dp": i * self.ep + p.ep}) for i in range(self.edp)]
        return [self.rank(**{**at, axis: i}) for i in range(self.size(axis))]

    def group_ranks(self, axis: str) -> list[list[int]]:
        """Every group along ``axis``: the global ranks that differ only in that index,
        each list in increasing order, the lists in order of their first rank."""
        check.one_of("axis", axis, ALL_AXES)
        seen: dict[int, list[int]] = {}
        for r in range(self.world_size):
            g = self.group_of(r, axis)
            seen.setdefault(g[0], g)
        return list(seen.values())

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
        experts = getattr(shape, "num_experts", 0)
        if self.ep > 1 and not experts:
            raise ValueError(f"ep={self.ep} shards experts: the model has none (a dense model "
                             "takes ep=1)")
        if experts % self.ep:
            raise ValueError(f"ep must divide num_experts={experts}, got ep={self.ep}")
        return self

    @classmethod
    def from_gpus(cls, gpus: int, tp: int = 1, pp: int = 1, cp: int = 1,
                  ep: int = 1) -> "ParallelDims":
        """The layout of ``gpus`` GPUs as tp × cp × pp model-parallel groups:
        dp = gpus/(tp·cp·pp), experts over ep of them."""
        for name, value in (("gpus", gpus), ("tp", tp), ("pp", pp), ("cp", cp), ("ep", ep)):
            check.positive_int(name, value)  # before gpus % (tp·pp): a zero degree is named
        if gpus % (tp * cp * pp):
            what = "tp·pp" if cp == 1 else "tp·cp·pp"
            raise ValueError(f"gpus must be a multiple of {what}={tp * cp * pp}, got {gpus}")
        return cls(dp=gpus // (tp * cp * pp), tp=tp, pp=pp, cp=cp, ep=ep)
