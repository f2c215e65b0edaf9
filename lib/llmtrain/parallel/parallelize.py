"""3D parallelism (3D 并行训练): data, tensor and pipeline parallelism composed on one layout.

``parallelize(model, dims)`` runs on every rank of ``dims.world_size`` with the same full
model and applies, in this order (the order Megatron-LM builds a model in):

1. **pipeline split**: this rank's stage, the pp-index-th run of consecutive layers
   (``pipeline_parallel.Stage``: the embedding on the first, the final norm, lm_head and
   loss on the last);
2. **tensor parallel** over the tp group: the stage's layers sharded Megatron-style
   (``tensor_parallel.shard_layers``), its embedding and lm_head by vocabulary, the loss the
   vocab-parallel cross entropy;
3. **recomputation** of the stage (``Stage.recompute``: the whole model's segments cut at
   the stage's edges);
4. **data parallel / ZeRO** over the dp group: ``zero=0`` plain data parallelism, its
   gradients all-reduced once after the pipeline's last micro-batch (``data_parallel``);
   ``zero=1|2|3`` ``zero.wrap`` over the dp group (stage 2 and 3 reduce-scatter the gradients
   of every micro-batch's backward: the reason DeepSpeed refuses ZeRO-2/3 with pipelines and
   BLOOM and Megatron-LM run ZeRO-1).

Every rank then sits at ``dims.coords(rank)`` = (pp, dp, tp): its tp group (same stage, same
data, a shard of each matrix: inside one node), its dp group (same stage and shard, other
data) and its pp group (same shard and data, the other stages), built by ``dims.build()`` —
the groups of ``init_device_mesh(("pp", "dp", "tp"))`` (tests/test_mesh.py).

    par = parallelize(model, ParallelDims(dp=2, tp=2, pp=2), zero=1, recompute="full")
    loss = par.step(input_ids)       # the global batch: each dp rank runs its share
    par.optimizer.step(); par.optimizer.zero_grad()

``step(input_ids, labels)`` takes the *global* batch on every rank; the dp rank d runs
sequences ``tensor_split(B, dp)[d]`` through the pipeline in ``microbatches`` micro-batches.
Each micro-batch's summed token loss is divided by (labelled tokens of the global batch)/dp,
so after the dp average the gradients are the one-process gradients of the global mean loss,
whatever the split; the loss returned (last-stage ranks) is that global mean.

``engine="torch"`` builds the same with PyTorch's own engines instead (DTensor TP,
``fully_shard``, ``torch.distributed.pipelining``: ``torch_parallelize``).

    python -m llmtrain.parallel.parallelize --dp 2 --tp 2 --pp 2     # 8 CPU ranks, or torchrun
"""

from __future__ import annotations

import contextlib
from fractions import Fraction
from typing import Any

import torch
import torch.distributed as dist

from .. import check
from ..cost import memory
from ..model.llama import Llama
from ..model.recompute import WITHOUT_K, segments as _recompute_segments
from . import comm, data_parallel, zero as _zero
from ..cost.layout import ParallelDims, shard_range
from .pipeline_parallel import (SCHEDULES, Pipeline, Stage, _same_on_every_rank, check_batch,
    cut_segments, stage_layers)
from ..cost.pp_schedule import check_schedule
from .tensor_parallel import (ColumnParallelLinear, VocabParallelEmbedding, _gather, shard_layers,
    vocab_parallel_cross_entropy)

__all__ = ["ORDER", "parallelize", "Parallel", "axis_bytes", "ENGINES"]

ORDER = ("pipeline split", "tensor parallel", "recomputation", "data parallel / ZeRO")
ENGINES = ("ours", "torch")
LOSS = "loss"  # the comm tag of the loss's average over dp (one number per step)


def parallelize(model: Llama, dims: ParallelDims, *, zero: int = 0, recompute: str = "none",
                schedule: str = "1f1b", microbatches: int | None = None,
                optimizer_cls: type = torch.optim.SGD, engine: str = "ours", groups=None,
                **optimizer_kwargs: Any):
    """This rank's part of ``model`` on the layout ``dims``, and its optimizer (``ORDER``).

    ``model``: an ``llmtrain.llama.Llama``, the same on every rank (same seed). ``dims``: a
    ``ParallelDims`` with dp·tp·pp = the world size (``dims.check(model.shape)`` refuses
    what the shape cannot take, naming the field). ``zero``: 0–3. ``recompute``: a
    ``llmtrain.recompute`` strategy ("none", "full", "selective", "sqrt"). ``schedule``:
    "1f1b" or "gpipe"; ``microbatches`` per step of each pipeline (default pp, at least pp).
    ``optimizer_cls(**optimizer_kwargs)`` steps this rank's parameters (or ZeRO shards).
    ``groups``: ``dims.build()`` already made (else built here: collective). Returns a
    ``Parallel`` (hand-written) or, ``engine="torch"``, a ``torch_parallelize.TorchParallel``.
    """
    check.one_of("engine", engine, ENGINES)
    if engine == "torch":
        from .torch_parallelize import parallelize_torch

        return parallelize_torch(model, dims, zero=zero, recompute=recompute, schedule=schedule,
                                 microbatches=microbatches, optimizer_cls=optimizer_cls,
                                 **optimizer_kwargs)
    check.module("model", model, Llama, "a llmtrain.llama.Llama")
    if not isinstance(dims, ParallelDims):
        check.fail("dims", "a llmtrain.parallel.mesh.ParallelDims", dims)
    dims.check(model.shape)
    check.integer("zero", zero, 0, 3)
    check.one_of("recompute", recompute, WITHOUT_K)
    check.one_of("schedule", schedule, tuple(s for s in SCHEDULES if s != "interleaved"))
    m = dims.pp if microbatches is None else check.positive_int("microbatches", microbatches)
    check_schedule(schedule, dims.pp, m, 1)
    if m < dims.pp:
        raise ValueError(f"microbatches must be at least pp={dims.pp} (with fewer, some stages "
                         f"never overlap), got microbatches={m}")
    if not dist.is_initialized():
        raise RuntimeError("parallelize must be called inside a rank: torch.distributed is not "
                           "initialised (use llmtrain.parallel.launch or torchrun)")
    _same_on_every_rank(None, dims=dims, zero=zero, recompute=recompute, schedule=schedule,
                        microbatches=m, shape=model.shape)
    g = dims.build() if groups is None else groups
    c = g.coords
    # 1. pipeline split: this rank's stage (pp index c.pp), copies of its layers
    ranges = stage_layers(model.shape.num_layers, dims.pp)
    stage = Stage(model, ranges[c.pp], c.pp == 0, c.pp == dims.pp - 1)
    # 2. tensor parallel over the tp group
    if dims.tp > 1:
        _tensor_parallel(stage, g.tp)
    # 3. recomputation
    stage.recompute(recompute, num_layers=model.shape.num_layers)
    # the schedule that runs the stage over the pp group (the loss: vocab-parallel under TP)
    pipe = Pipeline([stage], g.pp, schedule, m, 1, None)
    if dims.tp > 1:
        pipe.loss_fn = _vocab_parallel_loss(g.tp, model.shape.vocab_size)
    # 4. data parallel / ZeRO over the dp group
    if zero == 0:
        if dims.dp > 1:
            data_parallel.wrap(stage, group=g.dp)
        optimizer = optimizer_cls(stage.parameters(), **optimizer_kwargs)
    else:  # stage 3 gathers the stage's weights before each of its forwards and backwards
        _, optimizer = _zero.wrap(stage, zero, optimizer_cls, group=g.dp, **optimizer_kwargs)
        if zero >= 2:  # the tied matrix's gradient is a shard by the end of backward
            pipe.tied_grad = lambda w: optimizer.grad_shards[optimizer._index[id(w)]]
    pipe.connect()
    return Parallel(model.shape, dims, g, stage, pipe, optimizer, zero, recompute)


def _tensor_parallel(stage: Stage, group) -> None:
    """Step 2 on one stage: what ``tensor_parallel.apply`` does to a whole model."""
    shard_layers(stage.layers.values(), group)
    if stage.first:
        stage.embed_tokens = VocabParallelEmbedding.from_embedding(stage.embed_tokens, group)
    if stage.last:
        stage.lm_head = ColumnParallelLinear.from_linear(stage.lm_head, group)
        if stage.first and stage.tied:  # one stage holds both ends: keep them one tensor
            stage.lm_head.weight = stage.embed_tokens.weight
    stage.tp_group, stage.tp = group, dist.get_world_size(group)


def _vocab_parallel_loss(group, vocab_size: int):
    def loss(logits: torch.Tensor, labels: torch.Tensor, tokens: float) -> torch.Tensor:
        return vocab_parallel_cross_entropy(logits[:, :-1], labels[:, 1:], group,
                                            vocab_size=vocab_size, reduction="sum") / tokens
    return loss


class Parallel:
    """What ``parallelize`` returns on one rank: its stage (``module``), ``optimizer``,
    ``step``, and the full model's weights and gradients gathered back (``full_*``)."""

    def __init__(self, shape, dims: ParallelDims, groups, stage: Stage, pipe: Pipeline,
                 optimizer, zero: int, recompute: str):
        self.shape, self.dims, self.groups, self.module, self.pipeline = shape, dims, groups, \
            stage, pipe
        self.optimizer, self.zero, self.recompute = optimizer, zero, recompute
        self.coords = groups.coords

    def named_parameters(self):
        """(full model name, this rank's tensor: a TP shard, or the whole weight)."""
        return self.pipeline.named_parameters()

    def step(self, input_ids: torch.Tensor,
             labels: torch.Tensor | None = None) -> torch.Tensor | None:
        """Forward and backward of this rank's dp share of the global batch (B, T; the same on
        every rank; B divisible by dp, each share at least ``microbatches`` sequences);
        returns the global batch's mean loss on last-stage ranks, None elsewhere."""
        labels = check_batch(input_ids, labels)
        dp = self.dims.dp
        if input_ids.shape[0] % dp:
            raise ValueError(f"the batch size must be divisible by dp={dp} (each data-parallel "
                             f"rank runs an equal share), got {input_ids.shape[0]}")
        tokens = int((labels[:, 1:] != -100).sum())
        if tokens == 0:
            raise ValueError("labels must label at least one token (all are -100)")
        start, n = shard_range(input_ids.shape[0], dp, self.coords.dp)
        ids, labs = input_ids[start:start + n], labels[start:start + n]
        if self.zero == 0 and dp > 1:
            with data_parallel.no_sync(self.module):
                loss = self.pipeline.step(ids, labs, tokens=tokens / dp)
            self.module.grad_reducer.flush()  # one all-reduce after the last micro-batch
        else:
            loss = self.pipeline.step(ids, labs, tokens=tokens / dp)
        if loss is not None and dp > 1:
            comm.all_reduce(loss, "avg", group=self.groups.dp, tag=LOSS)
        return loss

    # --- the whole model, gathered (collective: every rank calls them) ---------------------

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """{full name: full weight} on every rank: ZeRO-3 shards, TP shards and the stages
        gathered (tests compare it with the one-process model)."""
        ctx = self.optimizer.gathered() if self.zero == 3 else contextlib.nullcontext()
        with ctx:
            mine = self._tp_full(lambda p: p)
        return self._all_stages(mine)

    def full_grads(self) -> dict[str, torch.Tensor]:
        """{full name: full gradient, averaged over dp} on every rank, before the optimizer's
        step (ZeRO-2/3: from the gradient shards). Call after ``step``."""
        if self.zero >= 2:
            opt = self.optimizer
            full = {}
            for i, p in enumerate(opt.params):
                flat = torch.empty(opt.world * opt.shard_numel[i], dtype=p.dtype)
                comm.all_gather(flat, opt.grad_shards[i], group=self.groups.dp, tag="gather")
                full[id(p)] = flat[: p.numel()].view(p.shape)
            get = lambda p: full[id(p)]  # noqa: E731
        elif self.zero == 1:  # gradients are reduced at the optimizer's step: average them now
            def get(p):
                g = p.grad.clone()
                comm.all_reduce(g, "avg", group=self.groups.dp, tag="gather")
                return g
        else:
            get = lambda p: p.grad  # noqa: E731
        return self._all_stages(self._tp_full(get))

    def _tp_full(self, get) -> dict[str, torch.Tensor]:
        if self.dims.tp > 1:
            local = _gather(self.module, get)
        else:
            local = {n: (None if get(p) is None else get(p).detach().clone())
                     for n, p in self.module.named_parameters()}
        return {Stage.full_name(n): v for n, v in local.items()}

    def _all_stages(self, mine: dict) -> dict[str, torch.Tensor]:
        every: list = [None] * self.dims.pp
        dist.all_gather_object(every, mine, group=self.groups.pp)
        out: dict = {}
        for part in every:
            for k, v in part.items():
                out.setdefault(k, v)  # a tied lm_head copy: the first stage's matrix
        if self.shape.tie_embeddings:
            out.pop("lm_head.weight", None)
        return out

    def memory_report(self) -> dict[str, int]:
        """Bytes this rank holds (``zero.memory_report``): after ``optimizer.step()``."""
        return _zero.memory_report(self.module, self.optimizer)


# --- the bytes each axis carries in one step, as formulas ------------------------------------

def axis_bytes(shape, dims: ParallelDims, rank: int, batch: int, seq: int, *,
               microbatches: int | None = None, zero: int = 0, recompute: str = "none",
               dtype_bytes: int = 4, loss_bytes: int | None = None) -> dict[str, Fraction]:
    """Bytes global ``rank`` sends along each axis in one ``Parallel.step`` of a global batch
    (batch × seq tokens; ring model of ``comm``), without the optimizer's step:

    - tp: ``tp_comm.comm_per_model`` of the stage's layers, per micro-batch (the embedding's
      all-reduce on the first stage, lm_head's and the cross entropy's on the last); with
      "full"/"sqrt" recomputation a segment of k layers runs 2k − 1 of its forward
      all-reduces again in backward (measured: torch.utils.checkpoint stops recomputing
      after the last tensor backward needs, before the segment's last all-reduce;
      "selective" recomputes only the attention core: no communication);
    - pp: b·s·h·e per micro-batch forward (not on the last stage) and backward (not on the
      first), plus the tied matrix's gradient shard exchanged by the first and last stage;
    - dp: zero 0: one all-reduce of this rank's gradients, 2(d−1)/d · P·e; zero 1: none
      before the optimizer's step; zero 2: a reduce-scatter of every micro-batch's gradients,
      m · (d−1)/d · P̃·e; zero 3: also the weights all-gathered in each forward and backward,
      3m · (d−1)/d · P̃·e (P̃: every parameter padded to a multiple of d); plus the loss's
      average over dp on the last stage (one number).
    """
    from .tp_comm import Traffic, comm_per_model, sent_bytes

    shape = check.shape("shape", shape)
    if not isinstance(dims, ParallelDims):
        check.fail("dims", "a llmtrain.parallel.mesh.ParallelDims", dims)
    dims.check(shape)
    c = dims.coords(rank)
    check.positive_int("batch", batch)
    check.positive_int("seq", seq)
    m = dims.pp if microbatches is None else check.positive_int("microbatches", microbatches)
    check.integer("zero", zero, 0, 3)
    check.one_of("recompute", recompute, WITHOUT_K)
    check.positive_int("dtype_bytes", dtype_bytes)
    check.optional(check.positive_int, "loss_bytes", loss_bytes)
    if batch % dims.dp or batch // dims.dp < m:
        raise ValueError(f"batch must be a multiple of dp={dims.dp} with at least "
                         f"microbatches={m} sequences per share, got batch={batch}")
    share = batch // dims.dp
    first, last = c.pp == 0, c.pp == dims.pp - 1
    layers = stage_layers(shape.num_layers, dims.pp)[c.pp]
    out = {"tp": Fraction(0), "pp": Fraction(0), "dp": Fraction(0)}
    loss_bytes = max(dtype_bytes, 4) if loss_bytes is None else loss_bytes
    # torch's non-reentrant checkpoint stops recomputing once it has every tensor backward
    # needs: a segment's last all-reduce (the MLP's g, whose output nothing saves) is not run
    # again, so a segment of k layers repeats 2k − 1 of its 2k forward all-reduces
    again = sum(2 * len(g) - 1 for g in cut_segments(_recompute_segments(shape.num_layers, recompute),
                                                      layers))
    for mb in range(m):
        b = shard_range(share, m, mb)[1]
        traffic = comm_per_model(shape.replace(num_layers=len(layers)), dims.tp, False, b, seq)
        for (op, direction, part), t in traffic.items():
            keep = {"embedding": first, "lm_head": last, "cross entropy": last}.get(part, True)
            if keep:
                e = loss_bytes if part == "cross entropy" else dtype_bytes
                out["tp"] += sent_bytes(op, t, dims.tp, e)
        if dims.tp > 1 and again:  # the recomputed forwards' all-reduces of b·s·h
            out["tp"] += sent_bytes("all_reduce", Traffic(again, b * seq * shape.hidden_size),
                                    dims.tp, dtype_bytes)
        out["pp"] += b * seq * shape.hidden_size * dtype_bytes * ((not last) + (not first))
    if shape.tie_embeddings and dims.pp > 1 and (first or last):
        rows = shard_range(shape.vocab_size, dims.tp, c.tp)[1] * shape.hidden_size
        out["pp"] += (-(-rows // dims.dp) if zero >= 2 else rows) * dtype_bytes  # both ways
    d = dims.dp
    numels = memory.param_numels(shape, dims, rank)
    full = sum(numels) * dtype_bytes
    padded = sum(-(-n // d) * d for n in numels) * dtype_bytes  # ZeRO's flat, padded tensors

    def sent(op: str, nbytes: int) -> Fraction:  # comm's ring model
        return comm.ring_bytes(op, nbytes, d)[0]

    out["dp"] += {0: sent("all_reduce", full), 1: 0, 2: m * sent("reduce_scatter", padded),
                  3: m * (2 * sent("all_gather", padded) + sent("reduce_scatter", padded))}[zero]
    if last:
        out["dp"] += sent("all_reduce", loss_bytes)
    return out


if __name__ == "__main__":
    from .demos.three_d import cli

    cli()
