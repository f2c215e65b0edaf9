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
data) and its pp group (same shard and data, the other stages), built by ``groups.build(dims)`` —
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

    python -m llmtrain.parallel.demos.parallelize --dp 2 --tp 2 --pp 2   # 8 CPU ranks, or torchrun
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist

from .. import check
from ..cost.comm import axis_bytes  # the formula of what ``Parallel.step`` sends; re-exported
from ..cost.layout import ParallelDims, shard_range, stage_layers
from ..cost.pp_schedule import check_schedule
from ..model.llama import Llama
from ..model.recompute import WITHOUT_K
from . import comm, data_parallel, zero as _zero
from .groups import build
from .launch import run_moved_command, require_process_group, same_on_every_rank
from .pipeline_parallel import SCHEDULES, Pipeline, Stage, check_batch, lm_loss
from .tensor_parallel import (STAGE_PLAN, gather_full, shard, shard_layers,
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

    ``model``: an ``llmtrain.model.llama.Llama``, the same on every rank (same seed). ``dims``: a
    ``ParallelDims`` with dp·tp·pp = the world size (``dims.check(model.shape)`` refuses
    what the shape cannot take, naming the field). ``zero``: 0–3. ``recompute``: a
    ``llmtrain.recompute`` strategy ("none", "full", "selective", "sqrt"). ``schedule``:
    "1f1b" or "gpipe"; ``microbatches`` per step of each pipeline (default pp, at least pp).
    ``optimizer_cls(**optimizer_kwargs)`` steps this rank's parameters (or ZeRO shards).
    ``groups``: ``groups.build(dims)`` already made (else built here: collective). Returns a
    ``Parallel`` (hand-written) or, ``engine="torch"``, a ``torch_parallelize.TorchParallel``.
    """
    check.one_of("engine", engine, ENGINES)
    if engine == "torch":
        from .torch_parallelize import parallelize_torch

        return parallelize_torch(model, dims, zero=zero, recompute=recompute, schedule=schedule,
                                 microbatches=microbatches, optimizer_cls=optimizer_cls,
                                 **optimizer_kwargs)
    check.module("model", model, Llama, "a llmtrain.model.llama.Llama")
    if not isinstance(dims, ParallelDims):
        check.fail("dims", "a llmtrain.cost.layout.ParallelDims", dims)
    dims.check(model.shape)
    check.integer("zero", zero, 0, 3)
    check.one_of("recompute", recompute, WITHOUT_K)
    check.one_of("schedule", schedule, tuple(s for s in SCHEDULES if s != "interleaved"))
    m = dims.pp if microbatches is None else check.positive_int("microbatches", microbatches)
    check_schedule(schedule, dims.pp, m, 1)
    if m < dims.pp:
        raise ValueError(f"microbatches must be at least pp={dims.pp} (with fewer, some stages "
                         f"never overlap), got microbatches={m}")
    require_process_group("parallelize")
    same_on_every_rank(None, "the world", dims=dims, zero=zero, recompute=recompute,
                       schedule=schedule, microbatches=m, shape=model.shape)
    g = build(dims) if groups is None else groups
    c = g.coords
    # 1. pipeline split: this rank's stage (pp index c.pp), copies of its layers
    ranges = stage_layers(model.shape.num_layers, dims.pp)
    stage = Stage(model, ranges[c.pp], c.pp == 0, c.pp == dims.pp - 1)
    # 2. tensor parallel over the tp group
    if dims.tp > 1:
        _tensor_parallel(stage, g.tp)
    # 3. recomputation
    stage.recompute(recompute, num_layers=model.shape.num_layers)
    # 4. data parallel / ZeRO over the dp group
    if zero == 0:
        if dims.dp > 1:
            data_parallel.wrap(stage, group=g.dp)
        optimizer = optimizer_cls(stage.parameters(), **optimizer_kwargs)
    else:  # stage 3 gathers the stage's weights before each of its forwards and backwards
        _, optimizer = _zero.wrap(stage, zero, optimizer_cls, group=g.dp, **optimizer_kwargs)
    # the schedule that runs the stage over the pp group: the loss vocab-parallel under TP; the
    # tied matrix's gradient a ZeRO shard by the end of backward under ZeRO-2/3
    pipe = Pipeline([stage], g.pp, schedule, m, loss_fn=(
        _vocab_parallel_loss(g.tp, model.shape.vocab_size) if dims.tp > 1 else lm_loss),
        tied_grad=optimizer.grad_shard if zero >= 2 else None)
    pipe.connect()
    return Parallel(model.shape, dims, g, stage, pipe, optimizer, zero, recompute)


def _tensor_parallel(stage: Stage, group) -> None:
    """Step 2 on one stage: what ``tensor_parallel.apply`` does to a whole model."""
    shard_layers(stage.layers.values(), group)
    shard(stage, STAGE_PLAN, group)  # the embedding (first stage), lm_head (last)
    if stage.first and stage.last and stage.tied:  # one stage holds both ends: one tensor
        stage.lm_head.weight = stage.embed_tokens.weight


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
            local = gather_full(self.module, self.groups.tp, get)
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


if __name__ == "__main__":  # the old command (one release): runs llmtrain.parallel.demos.<this>
    run_moved_command(__spec__.name)
