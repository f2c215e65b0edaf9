"""The collectives used by data parallelism and ZeRO, each one counted.

Every call goes straight to ``torch.distributed``; inside ``with counting() as log:`` it is
also recorded: which op, how big its buffer is, and the bytes this rank sends and receives
under the bandwidth-optimal ring algorithm (NCCL's for large buffers). These are the cost
model's bytes, computed from the real calls' sizes, not a wire capture: gloo may pick another
algorithm, but the sizes handed to each collective are what the formulas are about.

Per rank, for a buffer of M bytes on N ranks (Patarasuk & Yuan 2009; ZeRO paper §7):

    all_reduce       sends 2(N−1)/N · M   (reduce-scatter then all-gather)
    reduce_scatter   sends  (N−1)/N · M   (M = the whole input; each rank keeps M/N)
    all_gather       sends  (N−1)/N · M   (M = the whole output)
    broadcast        root sends M, every other rank receives M (a pipelined chain)

and receives as much as it sends (broadcast: the root receives 0, the last rank sends 0 —
counted here as M received, M sent, for every non-root rank but the last).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator

import torch
import torch.distributed as dist

from .. import check

__all__ = ["Record", "Log", "counting", "all_reduce", "reduce_scatter", "all_gather", "broadcast",
           "ring_bytes"]

_OPS = {"avg": dist.ReduceOp.AVG, "sum": dist.ReduceOp.SUM}


@dataclass(frozen=True)
class Record:
    """One collective as this rank saw it."""

    op: str            # all_reduce | reduce_scatter | all_gather | broadcast
    buffer_bytes: int  # M: the whole buffer (reduce_scatter: input; all_gather: output)
    world_size: int
    sent_bytes: Fraction
    received_bytes: Fraction
    tag: str = ""      # what it was for: "grads", "forward", "backward", "step", "init", …


@dataclass
class Log:
    """The records of one ``counting()`` block, on this rank."""

    records: list[Record] = field(default_factory=list)

    def sent_bytes(self, op: str | None = None, tag: str | None = None) -> Fraction:
        return sum((r.sent_bytes for r in self._select(op, tag)), Fraction(0))

    def received_bytes(self, op: str | None = None, tag: str | None = None) -> Fraction:
        return sum((r.received_bytes for r in self._select(op, tag)), Fraction(0))

    def buffer_bytes(self, op: str | None = None, tag: str | None = None) -> int:
        return sum(r.buffer_bytes for r in self._select(op, tag))

    def calls(self, op: str | None = None, tag: str | None = None) -> int:
        return len(self._select(op, tag))

    def summary(self) -> dict[tuple[str, str], dict[str, float | int]]:
        """{(op, tag): {"calls", "buffer_bytes", "sent_bytes"}} in first-call order."""
        out: dict[tuple[str, str], dict] = {}
        for r in self.records:
            s = out.setdefault((r.op, r.tag), {"calls": 0, "buffer_bytes": 0, "sent_bytes": 0})
            s["calls"] += 1
            s["buffer_bytes"] += r.buffer_bytes
            s["sent_bytes"] += r.sent_bytes
        return out

    def _select(self, op, tag) -> list[Record]:
        return [r for r in self.records
                if (op is None or r.op == op) and (tag is None or r.tag == tag)]


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


def ring_bytes(op: str, buffer_bytes: int, world_size: int, rank: int = 0,
               src: int = 0) -> tuple[Fraction, Fraction]:
    """(sent, received) bytes of one rank for one collective on ``buffer_bytes`` (see above)."""
    check.one_of("op", op, ("all_reduce", "reduce_scatter", "all_gather", "broadcast"))
    n = check.positive_int("world_size", world_size)
    m = Fraction(check.integer("buffer_bytes", buffer_bytes, 0))
    check.integer("rank", rank, 0, n - 1)
    check.integer("src", src, 0, n - 1)
    if n == 1:
        return Fraction(0), Fraction(0)
    if op == "all_reduce":
        return 2 * (n - 1) * m / n, 2 * (n - 1) * m / n
    if op in ("reduce_scatter", "all_gather"):
        return (n - 1) * m / n, (n - 1) * m / n
    if op == "broadcast":  # chain src → src+1 → … ; the last one only receives
        pos = (rank - src) % n
        return (m if pos < n - 1 else Fraction(0)), (Fraction(0) if pos == 0 else m)
    raise ValueError(f"op must be all_reduce, reduce_scatter, all_gather or broadcast, got {op!r}")


def _record(op: str, tensor: torch.Tensor, tag: str, src: int = 0) -> None:
    if not _ACTIVE:
        return
    n, r = dist.get_world_size(), dist.get_rank()
    m = tensor.numel() * tensor.element_size()
    sent, received = ring_bytes(op, m, n, r, src)
    for log in _ACTIVE:
        log.records.append(Record(op, m, n, sent, received, tag))


def all_reduce(tensor: torch.Tensor, op: str = "avg", *, tag: str = "", async_op: bool = False):
    """In place: every rank ends with the average (or sum) of ``tensor`` over the ranks."""
    _record("all_reduce", tensor, tag)
    return dist.all_reduce(tensor, op=_OPS[op], async_op=async_op)


def reduce_scatter(output: torch.Tensor, input: torch.Tensor, op: str = "avg", *, tag: str = "",
                   async_op: bool = False):
    """Rank r gets chunk r of the average (or sum) of ``input``: ``output`` is input.numel()/N."""
    if input.numel() != output.numel() * dist.get_world_size():
        raise ValueError(f"reduce_scatter: input has {input.numel()} elements, output "
                         f"{output.numel()}; input must be world_size × output")
    _record("reduce_scatter", input, tag)
    return dist.reduce_scatter_single(output, input, op=_OPS[op], async_op=async_op)


def all_gather(output: torch.Tensor, input: torch.Tensor, *, tag: str = "",
               async_op: bool = False):
    """``output`` = the ranks' ``input`` chunks concatenated in rank order (N × input)."""
    if output.numel() != input.numel() * dist.get_world_size():
        raise ValueError(f"all_gather: output has {output.numel()} elements, input "
                         f"{input.numel()}; output must be world_size × input")
    _record("all_gather", output, tag)
    return dist.all_gather_single(output, input, async_op=async_op)


def broadcast(tensor: torch.Tensor, src: int = 0, *, tag: str = "", async_op: bool = False):
    """In place: every rank ends with rank ``src``'s ``tensor``."""
    _record("broadcast", tensor, tag, src)
    return dist.broadcast(tensor, src=src, async_op=async_op)
