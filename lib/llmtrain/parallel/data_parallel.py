"""Data parallelism by hand (数据并行): copy the model, split the data, average the gradients.

The slides: 将模型复制、数据平均分配，分别计算后合并梯度，统一更新 — replicate the model,
give each rank an equal share of the batch, compute separately, merge the gradients, update
identically. Three collectives make it:

1. at the start, ``broadcast`` rank 0's weights, so every replica starts equal;
2. during backward, ``all_reduce`` (average) the gradients — in buckets of parameters, each
   launched as soon as all its gradients exist, so communication overlaps the rest of backward
   (what DDP does, torch/nn/parallel/distributed.py);
3. nothing else: every rank then runs the same optimizer step on the same averaged gradients,
   so the replicas stay equal without ever sending weights again.

If each rank's loss is the mean over its B/N examples, the average of the N gradients is the
gradient of the mean loss over all B: the same step as one process on the whole batch.

    python -m llmtrain.parallel.demos.data_parallel      # 2 ranks here, or under torchrun
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from .. import check
from . import comm
from .launch import run_moved_command, require_process_group

__all__ = ["wrap", "no_sync", "broadcast_module", "first_rank", "GradReducer"]


def wrap(model: nn.Module, bucket_bytes: int = 25 * 2**20, overlap: bool = True, *,
         group=None) -> nn.Module:
    """Make ``model`` data parallel in place and return it; call inside every rank.

    After ``loss.backward()`` each ``p.grad`` holds the average over the ranks of ``group``
    (default: all ranks), whose first rank's weights every replica starts from. Gradients are
    all-reduced in buckets of about ``bucket_bytes`` (DDP's default is 25 MiB; 0 means one
    parameter per bucket), asynchronously when ``overlap``. A parameter that gets no gradient
    on some rank is reduced as zeros there, so every rank runs the same collectives.
    """
    require_process_group("data_parallel.wrap")
    check.integer("bucket_bytes", bucket_bytes, 0)
    check.boolean("overlap", overlap)
    broadcast_module(model, group=group)
    params = [p for p in model.parameters() if p.requires_grad]
    pending: list = []

    def reduce(bucket: list[nn.Parameter]) -> None:  # all of its grads exist: send it
        for p in bucket:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])
        work = comm.all_reduce(flat, "avg", group=group, tag="grads", async_op=overlap)
        pending.append((work, flat, bucket))

    def finish() -> None:  # end of backward: wait, then copy the averages back into .grad
        for work, flat, bucket in pending:
            if work is not None:
                work.wait()
            for p, g in zip(bucket, flat.split([p.numel() for p in bucket])):
                p.grad.copy_(g.view_as(p.grad))
        pending.clear()

    model.grad_reducer = GradReducer(params[::-1], bucket_bytes, reduce, finish)
    return model


@contextlib.contextmanager
def no_sync(model: nn.Module) -> Iterator[None]:
    """Inside the block, backward only accumulates gradients locally: no communication.

    Gradient accumulation (notebook 02) over k micro-batches then costs one all-reduce, not k:
    run the first k−1 backwards inside ``no_sync``, the last outside; averaging is linear, so
    the result is the same. ``DistributedDataParallel.no_sync`` does this.
    """
    reducer = model.grad_reducer
    reducer.enabled = False
    try:
        yield
    finally:
        reducer.enabled = True


def broadcast_module(model: nn.Module, src: int | None = None, *, group=None) -> None:
    """Copy global rank ``src``'s parameters and buffers to every rank of ``group`` (in
    place); ``src`` defaults to the group's first rank (rank 0 for the world)."""
    if src is None:
        src = first_rank(group)
    with torch.no_grad():
        for t in itertools.chain(model.parameters(), model.buffers()):
            buf = t.data if t.data.is_contiguous() else t.data.contiguous()
            comm.broadcast(buf, src, group=group, tag="init")
            if buf is not t.data:
                t.data.copy_(buf)


class GradReducer:
    """Call ``reduce(bucket)`` during backward as soon as every gradient of a bucket exists.

    ``params`` are split, in the order given (reverse registration order ≈ the order backward
    produces gradients), into buckets of at most ``bucket_bytes`` (at least one parameter, one
    dtype each). Buckets are reduced strictly in order, so every rank issues the same
    collectives in the same order even if its gradients arrive in another; at the end of
    backward the buckets still waiting (parameters this rank did not use) are reduced too,
    then ``finish()`` runs. DDP does the same (its Reducer, in C++).
    """

    def __init__(self, params: Sequence[nn.Parameter], bucket_bytes: int,
                 reduce: Callable[[list[nn.Parameter]], None], finish: Callable[[], None]):
        self.buckets = _buckets(params, bucket_bytes)
        self.reduce, self.finish = reduce, finish
        self.enabled = True  # False: gradients only accumulate locally (no_sync)
        self._ready: set[int] = set()
        self._next = 0
        self._armed = False
        self.handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in params]

    def _on_grad(self, p: nn.Parameter) -> None:
        if not self.enabled:
            return
        if not self._armed:  # first gradient of this backward: run _end when backward ends
            self._armed = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end)
        self._ready.add(id(p))
        self._launch(force=False)

    def _launch(self, force: bool) -> None:
        while self._next < len(self.buckets):
            bucket = self.buckets[self._next]
            if not force and any(id(p) not in self._ready for p in bucket):
                return
            self._next += 1
            self.reduce(bucket)

    def flush(self) -> None:
        """Reduce every bucket now and ``finish()``: after backwards run without reducing
        (``enabled`` False, ``no_sync``), one all-reduce of the accumulated gradients — what
        a pipeline does once after its last micro-batch (``parallel.parallelize``)."""
        self._end()

    def _end(self) -> None:
        self._launch(force=True)
        self._ready.clear()
        self._next, self._armed = 0, False
        self.finish()


def _buckets(params: Sequence[nn.Parameter], bucket_bytes: int) -> list[list[nn.Parameter]]:
    buckets: list[list[nn.Parameter]] = []
    size = 0
    for p in params:
        nbytes = p.numel() * p.element_size()
        if not buckets or size + nbytes > bucket_bytes or buckets[-1][-1].dtype != p.dtype:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += nbytes
    return buckets


def first_rank(group=None) -> int:
    """The global rank of ``group``'s rank 0 (0 for the world)."""
    return 0 if group is None else dist.get_global_rank(group, 0)


if __name__ == "__main__":  # the old command (one release): runs llmtrain.parallel.demos.<this>
    run_moved_command(__spec__.name)
