"""The collectives (and point-to-point messages) of every parallelism here, each one counted.

Every call goes straight to ``torch.distributed`` on an explicit ``group`` (default: the
world); inside ``with counting() as log:`` it is also recorded: which op, on which group
(its axis name — "dp", "tp", "pp" — when ``groups.build`` built it, else "world" or
"group"), how big its buffer is, and the bytes this rank sends and receives
under the bandwidth-optimal ring algorithm (NCCL's for large buffers). These are the cost
model's bytes, computed from the real calls' sizes, not a wire capture: gloo may pick another
algorithm, but the sizes handed to each collective are what the formulas are about.

Per rank, for a buffer of M bytes on N ranks (``cost.comm.ring_bytes``, re-exported here):

    all_reduce       sends 2(N−1)/N · M   (reduce-scatter then all-gather)
    reduce_scatter   sends  (N−1)/N · M   (M = the whole input; each rank keeps M/N)
    all_gather       sends  (N−1)/N · M   (M = the whole output)
    broadcast        root sends M, every other rank receives M (a pipelined chain)
    send / recv      M to one peer / M from one peer (pipeline stages; also inside
                     ``batch_isend_irecv``)
    all_to_all       sends the input rows bound for the other ranks, receives theirs: (N−1)/N · M
                     for an even split of an M-byte input (``all_to_all(..., split sizes)``:
                     exactly the rows of the splits, the rank's own chunk not counted)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterator

import torch
import torch.distributed as dist

from .. import check
from ..cost.comm import OPS, ring_bytes  # the formulas; re-exported here

__all__ = ["Record", "Log", "counting", "all_reduce", "reduce_scatter", "all_gather", "broadcast",
           "all_to_all",
           "send", "recv", "isend", "irecv", "P2P", "batch_isend_irecv", "ring_bytes",
           "name_group", "axis_of", "OPS"]

_OPS = {"avg": dist.ReduceOp.AVG, "sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}


@dataclass(frozen=True)
class Record:
    """One collective as this rank saw it."""

    op: str            # all_reduce | reduce_scatter | all_gather | broadcast | send | recv |
                       # all_to_all
    buffer_bytes: int  # M: the whole buffer (reduce_scatter, all_to_all: input; all_gather: output)
    world_size: int    # ranks in the group it ran on
    sent_bytes: Fraction
    received_bytes: Fraction
    tag: str = ""      # what it was for: "grads", "forward", "backward", "step", "init", …
    axis: str = "world"  # the group: "world", a ParallelDims axis ("dp", "tp", "pp"), or "group"
    peer: int | None = None  # send/recv: the other rank (global rank)


@dataclass
class Log:
    """The records of one ``counting()`` block, on this rank."""

    records: list[Record] = field(default_factory=list)

    def sent_bytes(self, op: str | None = None, tag: str | None = None,
                   axis: str | None = None) -> Fraction:
        return sum((r.sent_bytes for r in self._select(op, tag, axis)), Fraction(0))

    def received_bytes(self, op: str | None = None, tag: str | None = None,
                       axis: str | None = None) -> Fraction:
        return sum((r.received_bytes for r in self._select(op, tag, axis)), Fraction(0))

    def buffer_bytes(self, op: str | None = None, tag: str | None = None,
                     axis: str | None = None) -> int:
        return sum(r.buffer_bytes for r in self._select(op, tag, axis))

    def calls(self, op: str | None = None, tag: str | None = None, axis: str | None = None) -> int:
        return len(self._select(op, tag, axis))

    def summary(self, by: tuple[str, ...] = ("op", "tag")) -> dict[tuple, dict[str, float | int]]:
        """{(op, tag) (or the fields named in ``by``): {"calls", "buffer_bytes", "sent_bytes"}}
        in first-call order; ``by=("axis",)`` gives the bytes per parallel axis."""
        out: dict[tuple, dict] = {}
        for r in self.records:
            key = tuple(getattr(r, f) for f in by)
            s = out.setdefault(key, {"calls": 0, "buffer_bytes": 0, "sent_bytes": 0})
            s["calls"] += 1
            s["buffer_bytes"] += r.buffer_bytes
            s["sent_bytes"] += r.sent_bytes
        return out

    def _select(self, op, tag, axis=None) -> list[Record]:
        return [r for r in self.records
                if (op is None or r.op == op) and (tag is None or r.tag == tag)
                and (axis is None or r.axis == axis)]


_ACTIVE: list[Log] = []  # the open counting() blocks of this process (usually zero or one)


@contextlib.contextmanager
def counting() -> Iterator[Log]:
    """Record every collective of this module made inside the block (on this rank)."""
    log = Log()
    _ACTIVE.append(log)
    try:
        yield log
    finally:
        _ACTIVE.remove(log)


# --- groups and their names ---------------------------------------------------------------

_AXES: dict[Any, str] = {}  # process group -> axis name, filled by groups.build


def name_group(group, axis: str) -> None:
    """Record ``group`` as the ``axis`` ("dp", "tp", "pp", …) in this process's comm records."""
    if not isinstance(axis, str) or not axis:
        raise ValueError(f"axis must be a non-empty string, got {axis!r}")
    _AXES[group] = axis


def axis_of(group) -> str:
    """The name records use for ``group``: "world" for None (the default group)."""
    if group is None or group is dist.GroupMember.WORLD:
        return "world"
    return _AXES.get(group, "group")


def _size_rank(group) -> tuple[int, int]:
    return dist.get_world_size(group), dist.get_rank(group)


def _record(op: str, tensor: torch.Tensor, tag: str, group, src: int = 0,
            peer: int | None = None) -> None:
    if not _ACTIVE:
        return
    n, r = _size_rank(group)
    m = tensor.numel() * tensor.element_size()
    sent, received = ring_bytes(op, m, n, r, src)
    rec = Record(op, m, n, sent, received, tag, axis_of(group), peer)
    for log in _ACTIVE:
        log.records.append(rec)


# --- collectives ----------------------------------------------------------------------------

def all_reduce(tensor: torch.Tensor, op: str = "avg", *, group=None, tag: str = "",
               async_op: bool = False):
    """In place: every rank of ``group`` ends with the average (or sum, or max) of ``tensor``."""
    check.one_of("op", op, tuple(_OPS))
    _record("all_reduce", tensor, tag, group)
    return dist.all_reduce(tensor, op=_OPS[op], group=group, async_op=async_op)


def reduce_scatter(output: torch.Tensor, input: torch.Tensor, op: str = "avg", *, group=None,
                   tag: str = "", async_op: bool = False):
    """Rank r of ``group`` gets chunk r of the average (or sum) of ``input``: ``output`` is
    input.numel()/N."""
    check.one_of("op", op, tuple(_OPS))
    n = dist.get_world_size(group)
    if input.numel() != output.numel() * n:
        raise ValueError(f"input must be group size × output's = {n} × {output.numel()} elements "
                         f"(reduce_scatter), got {input.numel()}")
    _record("reduce_scatter", input, tag, group)
    return dist.reduce_scatter_single(output, input, op=_OPS[op], group=group, async_op=async_op)


def all_gather(output: torch.Tensor, input: torch.Tensor, *, group=None, tag: str = "",
               async_op: bool = False):
    """``output`` = the ``group``'s ``input`` chunks concatenated in group-rank order (N × input)."""
    n = dist.get_world_size(group)
    if output.numel() != input.numel() * n:
        raise ValueError(f"output must be group size × input's = {n} × {input.numel()} elements "
                         f"(all_gather), got {output.numel()}")
    _record("all_gather", output, tag, group)
    return dist.all_gather_single(output, input, group=group, async_op=async_op)


def broadcast(tensor: torch.Tensor, src: int = 0, *, group=None, tag: str = "",
              async_op: bool = False):
    """In place: every rank of ``group`` ends with the ``tensor`` of global rank ``src``."""
    if group is None:
        local = src
    else:
        local = dist.get_group_rank(group, src)
    _record("broadcast", tensor, tag, group, local)
    return dist.broadcast(tensor, src=src, group=group, async_op=async_op)


def all_to_all(output: torch.Tensor, input: torch.Tensor,
               output_split_sizes: list[int] | None = None,
               input_split_sizes: list[int] | None = None, *, group=None, tag: str = "",
               async_op: bool = False):
    """Rank r's ``output`` = chunk r of every rank's ``input``, in group-rank order (dim 0).

    Even split (sizes None): chunk j of ``input`` is its j-th 1/N along dim 0. Uneven:
    ``input_split_sizes[j]`` rows go to rank j and ``output_split_sizes[j]`` rows come from it
    (expert parallelism's dispatch). Counted exactly: the rows sent to and received from the
    other ranks (the own chunk stays; an even split sends (N−1)/N of the input)."""
    n, r = _size_rank(group)
    if input.dim() == 0 or output.dim() == 0:
        raise ValueError("input and output must have a first dimension to split (all_to_all)")
    row_in = input[0].numel() * input.element_size() if input.shape[0] else 0
    row_out = output[0].numel() * output.element_size() if output.shape[0] else 0
    for name, sizes, t in (("input_split_sizes", input_split_sizes, input),
                           ("output_split_sizes", output_split_sizes, output)):
        if sizes is None:
            if t.shape[0] % n:
                raise ValueError(f"{name} is needed: dim 0 of {name.split('_')[0]} ({t.shape[0]}) "
                                 f"is not a multiple of the group size {n}")
            continue
        if len(sizes) != n or any(not isinstance(x, int) or x < 0 for x in sizes):
            check.fail(name, f"{n} non-negative ints (one per rank of the group)", sizes)
        if sum(sizes) != t.shape[0]:
            raise ValueError(f"{name} must sum to dim 0 of {name.split('_')[0]} ({t.shape[0]}), "
                             f"got {sum(sizes)}")
    if _ACTIVE:
        ins = input_split_sizes or [input.shape[0] // n] * n
        outs = output_split_sizes or [output.shape[0] // n] * n
        sent = Fraction((sum(ins) - ins[r]) * row_in)
        received = Fraction((sum(outs) - outs[r]) * row_out)
        rec = Record("all_to_all", input.numel() * input.element_size(), n, sent, received, tag,
                     axis_of(group))
        for log in _ACTIVE:
            log.records.append(rec)
    return dist.all_to_all_single(output, input, output_split_sizes, input_split_sizes,
                                  group=group, async_op=async_op)


# --- point to point (pipeline stages) -----------------------------------------------------

def send(tensor: torch.Tensor, dst: int, *, group=None, tag: str = "") -> None:
    """Send ``tensor`` to global rank ``dst`` (blocking)."""
    _record("send", tensor, tag, group, peer=dst)
    dist.send(tensor, dst=dst, group=group)


def recv(tensor: torch.Tensor, src: int, *, group=None, tag: str = "") -> None:
    """Receive into ``tensor`` from global rank ``src`` (blocking)."""
    _record("recv", tensor, tag, group, peer=src)
    dist.recv(tensor, src=src, group=group)


def isend(tensor: torch.Tensor, dst: int, *, group=None, tag: str = ""):
    """Start sending ``tensor`` to ``dst``; returns the work to ``wait()`` on."""
    _record("send", tensor, tag, group, peer=dst)
    return dist.isend(tensor, dst=dst, group=group)


def irecv(tensor: torch.Tensor, src: int, *, group=None, tag: str = ""):
    """Start receiving into ``tensor`` from ``src``; returns the work to ``wait()`` on."""
    _record("recv", tensor, tag, group, peer=src)
    return dist.irecv(tensor, src=src, group=group)


@dataclass(frozen=True)
class P2P:
    """One message of a ``batch_isend_irecv``: op "send" or "recv", the tensor, the peer."""

    op: str
    tensor: torch.Tensor
    peer: int
    group: Any = None
    tag: str = ""


def batch_isend_irecv(ops: list[P2P]) -> list:
    """Start all ``ops`` at once (a stage sending forward while receiving backward, say, so
    neither side waits for the other); returns the works to ``wait()`` on. Each is counted."""
    if not ops:
        return []
    p2p = []
    for o in ops:
        check.one_of("op", o.op, ("send", "recv"))
        _record(o.op, o.tensor, o.tag, o.group, peer=o.peer)
        fn = dist.isend if o.op == "send" else dist.irecv
        p2p.append(dist.P2POp(fn, o.tensor, o.peer, o.group))
    return dist.batch_isend_irecv(p2p)
