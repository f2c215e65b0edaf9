"""3D parallelism (3D 并行训练) with PyTorch's own pieces: DTensor tensor parallelism, FSDP2
``fully_shard`` and ``torch.distributed.pipelining``, on one ``init_device_mesh(("pp","dp","tp"))``.

The same layout as the hand-written ``parallelize`` (``ParallelDims``: rank = (pp·dp + dp_i)·tp
+ tp_i), composed in a fixed order, each step on its own axis of the mesh:

1. **pipeline split** (pp): ``pipeline_parallel.stage_layers`` cuts the decoder layers as the
   hand path does; this rank keeps ``pipeline_parallel.Stage`` number pp_index (embedding on
   the first, final norm and lm_head on the last).
2. **tensor parallel** (tp): ``parallelize_module`` on mesh["tp"] with the plan of
   ``demos.tensor_parallel.dtensor_llama`` (Megatron-LM's, Shoeybi et al. 2019, arXiv
   1909.08053 §3): q/k/v and gate/up ColwiseParallel, o/down RowwiseParallel (each rank keeps
   num_heads/tp and num_kv_heads/tp whole heads); the embedding RowwiseParallel (vocabulary
   rows split, its output all-reduced to a replicated tensor); lm_head ColwiseParallel with
   ``output_layouts=Replicate()``: the full logits on every tp rank, so the loss is the one of
   ``llama.causal_lm_loss``.
3. **recomputation**: ``llmtrain.recompute``'s strategies "none", "full" (each decoder layer
   under ``torch.utils.checkpoint``), "sqrt" (⌈√L⌉ segments, Chen et al. 2016, arXiv
   1604.06174), each segment cut at the stage's edges and run by the Stage itself,
   "selective" (the attention core only: Korthikanti et al. 2022, arXiv 2205.05198).
4. **data parallel / ZeRO** (dp): FSDP2 ``fully_shard`` on mesh["dp"], each decoder layer and
   then the stage (Zhao et al. 2023, arXiv 2304.11277 for FSDP; Rajbhandari et al. 2019, arXiv
   1910.02054 for the stages). Every parameter, gradient and optimizer state is a 1/dp shard
   after the step: ``zero=3`` (``reshard_after_forward=True``: the parameters are gathered for
   each layer's forward and again for its backward) is ZeRO-3; ``zero=2``
   (``reshard_after_forward=False``: gathered once in forward and kept until backward ends) is
   ZeRO-2's traffic with ZeRO-3's resting memory (FSDP2 frees the gathered parameters after
   backward: what torch calls SHARD_GRAD_OP). ``zero=0`` replicates the stage over dp (the
   FSDP2-based ``replicate`` of ``torch.distributed._composable.replicate_with_fsdp``, a
   private module in torch 2.13: whole parameters, gradients all-reduced, as DDP). ``zero=1``
   (replicated parameters and gradients, sharded optimizer state) has no FSDP2 equivalent:
   refused. With dp = 1 nothing is sharded, whatever ``zero``.
5. **pipeline schedule** (pp): ``PipelineStage`` + ``Schedule1F1B`` / ``ScheduleGPipe`` on
   mesh["pp"]'s group, ``microbatches`` micro-batches of this rank's data-parallel share.

Loss scaling, so that gradients equal one process's ``Llama(ids, labels=ids).loss.backward()``:
each micro-batch's loss is its *summed* token cross entropy over the labelled tokens of the
*global* batch (``pipeline_parallel.lm_loss``; ``scale_grads=False``), so the micro-batches of
all dp ranks add up to the global mean; FSDP2 would then average the dp ranks' gradients, so
its gradient divide factor is set to 1 (``set_gradient_divide_factor(1.0)``: a plain sum).

Tied embeddings with pp > 1: the first stage's embedding and the last stage's lm_head are two
copies of one matrix; after each step their gradients (the same local shard on rank (0, d, t)
and (pp−1, d, t)) are all-reduced over the pair, Megatron-LM's embedding group.

Torch's pipelining sizes its message buffers once, on the first step (running one extra
forward of the stage, and on the last stage one extra backward, outside the schedule: measured
with module hooks), from equal micro-batches: ``step`` refuses a batch that dp·microbatches does
not divide and a batch shape other than the first step's (the hand-written ``pipeline`` takes
both). Equal to one process in float64 within 2e-15 relative (loss, every gradient, the weights
after SGD): measured, see tests/test_torch_parallelize.py.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .. import check
from ..model import recompute
from ..model.llama import Llama
from . import pipeline_parallel as pp_mod
from .groups import device_mesh
from .launch import device as rank_device
from ..cost.layout import ParallelDims

__all__ = ["parallelize_torch", "TorchParallel", "SCHEDULES", "ZERO", "RECOMPUTE"]

SCHEDULES = {"1f1b": "Schedule1F1B", "gpipe": "ScheduleGPipe"}
ZERO = (0, 2, 3)  # the stages FSDP2 can express (1 is refused: see ``check_settings``)
RECOMPUTE = recompute.WITHOUT_K  # recompute.STRATEGIES but "every" (needs k)


def check_settings(model: Any, dims: Any, zero: Any, recompute_: Any, schedule: Any,
                   microbatches: Any) -> int:
    """ValueError naming the field for settings ``parallelize_torch`` cannot take (no
    processes needed); returns the number of micro-batches (default pp)."""
    check.module("model", model, Llama, "a llmtrain.model.llama.Llama")
    if not isinstance(dims, ParallelDims):
        check.fail("dims", "a llmtrain.cost.layout.ParallelDims", dims)
    dims.check(model.shape)
    if isinstance(zero, bool):
        check.fail("zero", "0, 2 or 3", zero)
    if zero == 1:
        raise ValueError("zero must be 0, 2 or 3 with engine 'torch', got zero=1: ZeRO-1 shards "
                         "only the optimizer state, and FSDP2 (fully_shard) always shards the "
                         "parameters and gradients too; use the hand-written parallelize")
    check.one_of("zero", zero, ZERO)
    check.one_of("recompute", recompute_, RECOMPUTE)
    check.one_of("schedule", schedule, tuple(SCHEDULES))
    m = dims.pp if microbatches is None else check.positive_int("microbatches", microbatches)
    if m < dims.pp:
        raise ValueError(f"microbatches must be at least the {dims.pp} pipeline stages (torch's "
                         f"Schedule1F1B refuses fewer), got microbatches={m}")
    return m


def parallelize_torch(model: Llama, dims: ParallelDims, *, zero: int = 3,
                      recompute: str = "none", schedule: str = "1f1b",
                      microbatches: int | None = None,
                      optimizer_cls: type = torch.optim.SGD,
                      **optimizer_kwargs: Any) -> "TorchParallel":
    """This rank's part of ``model`` parallelised over dp × tp × pp by PyTorch's own pieces
    (the order and the ZeRO mapping: see the module docstring).

    Call on every rank (``llmtrain.parallel.launch`` or torchrun, world = dp·tp·pp) with the
    same full ``model`` (not modified: the stage holds copies). ``zero`` 0, 2 or 3;
    ``recompute`` "none", "full", "sqrt" or "selective"; ``schedule`` "1f1b" or "gpipe";
    ``microbatches`` per data-parallel share (default pp, at least pp); the optimizer is
    ``optimizer_cls(this rank's parameters, **optimizer_kwargs)`` (DTensor parameters).
    """
    from torch.distributed import pipelining
    from torch.distributed.fsdp import fully_shard

    m = check_settings(model, dims, zero, recompute, schedule, microbatches)
    check.function("optimizer_cls", optimizer_cls)
    if not dist.is_initialized():
        raise RuntimeError("parallelize_torch must run inside a rank: torch.distributed is not "
                           "initialised (use llmtrain.parallel.launch or torchrun)")
    if dist.get_world_size() != dims.world_size:
        raise ValueError(f"dims must have dp·tp·pp = the world size {dist.get_world_size()}, got "
                         f"{dims.dp}·{dims.tp}·{dims.pp} = {dims.world_size}")
    device = rank_device()  # the CPU under gloo (tested), the rank's GPU under NCCL
    mesh = device_mesh(dims, device.type)
    coords = dims.coords(dist.get_rank())
    # 1. pipeline split: the hand path's stages
    ranges = pp_mod.stage_layers(model.shape.num_layers, dims.pp)
    stage = pp_mod.Stage(model, ranges[coords.pp], coords.pp == 0, coords.pp == dims.pp - 1)
    stage.to(device)
    # 2. tensor parallel on mesh["tp"]
    if dims.tp > 1:
        _tensor_parallel(stage, mesh["tp"])
    # 3. recomputation (replaces whatever the model was set to)
    stage.recompute(recompute, num_layers=model.shape.num_layers)
    # 4. data parallel / ZeRO on mesh["dp"]
    if dims.dp > 1:
        if zero == 0:
            from torch.distributed._composable.replicate_with_fsdp import replicate
            for layer in stage.layers.values():
                replicate(layer, mesh=mesh["dp"])
            replicate(stage, mesh=mesh["dp"])
        else:
            for layer in stage.layers.values():
                fully_shard(layer, mesh=mesh["dp"], reshard_after_forward=zero == 3)
            fully_shard(stage, mesh=mesh["dp"], reshard_after_forward=zero == 3)
        for module in stage.modules():  # a sum over dp, not FSDP's mean: see the docstring
            if hasattr(module, "set_gradient_divide_factor"):
                module.set_gradient_divide_factor(1.0)
    # 5. the pipeline schedule on mesh["pp"]
    pp_group = mesh["pp"].get_group()
    pstage = pipelining.PipelineStage(stage, coords.pp, dims.pp, device, group=pp_group)
    optimizer = optimizer_cls(stage.parameters(), **optimizer_kwargs)
    return TorchParallel(stage, pstage, dims, mesh, schedule, m, optimizer)


def _tensor_parallel(stage: pp_mod.Stage, tp_mesh) -> None:
    """DTensor TP on this stage's modules (the plan of ``demos.tensor_parallel.dtensor_llama``,
    without sequence parallel; lm_head's logits replicated for the plain loss)."""
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)

    t = tp_mesh.size()
    for layer in stage.layers.values():
        attn = layer.self_attn
        attn.n_heads, attn.n_kv_heads = attn.n_heads // t, attn.n_kv_heads // t  # local heads
        plan: dict[str, Any] = {f"self_attn.{p}_proj": ColwiseParallel() for p in "qkv"}
        # gate/up stay DTensors: with an MLP width tp does not divide, down_proj's input then
        # knows its global width (a plain local shard would be taken as 1/tp of an even split)
        plan.update({f"mlp.{p}_proj": ColwiseParallel(use_local_output=False)
                     for p in ("gate", "up")})
        plan["self_attn.o_proj"] = RowwiseParallel()
        plan["mlp.down_proj"] = RowwiseParallel()
        parallelize_module(layer, tp_mesh, plan)
    top: dict[str, Any] = {}
    if stage.first:
        top["embed_tokens"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())
    if stage.last:
        top["lm_head"] = ColwiseParallel(output_layouts=Replicate())
    if top:
        parallelize_module(stage, tp_mesh, top)
    if stage.first and stage.last and stage.tied:  # one stage, tied: one DTensor again
        stage.lm_head.weight = stage.embed_tokens.weight


class TorchParallel:
    """What ``parallelize_torch`` returns on a rank: its stage (``module``), the torch pipeline
    schedule that runs it, its ``optimizer``; ``step``, ``full_grads``, ``full_state_dict``."""

    def __init__(self, module: pp_mod.Stage, pstage, dims: ParallelDims, mesh, schedule: str,
                 microbatches: int, optimizer):
        from torch.distributed import pipelining

        self.module, self.dims, self.mesh, self.optimizer = module, dims, mesh, optimizer
        self.schedule_name, self.microbatches = schedule, microbatches
        self.coords = dims.coords(dist.get_rank())
        self.first, self.last = self.coords.pp == 0, self.coords.pp == dims.pp - 1
        self._tokens, self._shape = 1, None
        self.schedule = getattr(pipelining, SCHEDULES[schedule])(
            pstage, microbatches, loss_fn=self._loss, scale_grads=False)
        self._tied_group = self._tied_pairs() if module.tied and dims.pp > 1 else None

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return pp_mod.lm_loss(logits, labels, self._tokens)

    def _tied_pairs(self):
        """The group {(0, d, t), (pp−1, d, t)} of this rank's column (every rank creates every
        group: ``new_group`` is collective); None on the middle stages."""
        mine = None
        for d in range(self.dims.dp):
            for t in range(self.dims.tp):
                ranks = [self.dims.rank(0, d, t), self.dims.rank(self.dims.pp - 1, d, t)]
                g = dist.new_group(ranks)
                if dist.get_rank() in ranks:
                    mine = g
        return mine

    def named_parameters(self):
        """(full model name, parameter) of this rank's stage; a tied lm_head copy on the last
        stage is named "lm_head.weight"."""
        for name, p in self.module.named_parameters():
            yield pp_mod.Stage.full_name(name), p

    def step(self, input_ids: torch.Tensor,
             labels: torch.Tensor | None = None) -> torch.Tensor | None:
        """Forward and backward of this rank's data-parallel share (B/dp consecutive sequences
        of the global batch ``input_ids``, B × T, the same on every rank; ``labels`` default the
        ids, -100 = no loss) through the pipeline; gradients accumulate. B must be a multiple
        of dp·microbatches and the shape the same at every step. Returns the mean loss of the
        global batch on the last stage's ranks, None on the others."""
        labels = pp_mod.check_batch(input_ids, labels)
        B, dp, m = input_ids.shape[0], self.dims.dp, self.microbatches
        if B % dp:
            raise ValueError(f"input_ids must have a batch size divisible by dp={dp}, got {B}")
        if B == 0 or B % (dp * m):
            raise ValueError(f"input_ids must have a batch size that is a positive multiple of "
                             f"dp·microbatches = {dp}·{m} = {dp * m} (torch's pipelining sizes "
                             f"its buffers from the first micro-batch: all must be equal), got {B}")
        if self._shape is not None and tuple(input_ids.shape) != self._shape:
            raise ValueError(f"input_ids must keep the shape {self._shape} of the first step "
                             f"(torch's pipelining infers the activation shapes once), got "
                             f"{tuple(input_ids.shape)}")
        self._shape = tuple(input_ids.shape)
        self._tokens = int((labels[:, 1:] != -100).sum())
        device = rank_device()
        ids = torch.tensor_split(input_ids, dp)[self.coords.dp].to(device)
        labs = torch.tensor_split(labels, dp)[self.coords.dp].to(device)
        losses: list = []
        tied = self._tied_snapshot()
        self.schedule.step(*((ids,) if self.first else ()),
                           target=labs if self.last else None, losses=losses)
        self._sync_tied(tied)
        if not self.last:
            return None
        loss = torch.stack([x.detach() for x in losses]).sum()
        if dp > 1:
            dist.all_reduce(loss, group=self.mesh["dp"].get_group())
        return loss

    # --- tied embeddings over pp ---------------------------------------------------------

    def _tied_param(self) -> nn.Parameter | None:
        if self._tied_group is None:
            return None
        return self.module.embed_tokens.weight if self.first else self.module.lm_head.weight

    def _tied_snapshot(self):
        w = self._tied_param()
        if w is None:
            return None
        return w, None if w.grad is None else _like_param(w, w.grad).clone()

    def _sync_tied(self, tied) -> None:
        """Add the other end's gradient of this step to the tied matrix's (local shards)."""
        if tied is None:
            return
        w, before = tied
        w.grad = _like_param(w, w.grad)  # DTensor's embedding backward leaves it replicated
        local = _local(w.grad)
        mine = local if before is None else local - _local(before)
        total = mine.clone()
        dist.all_reduce(total, group=self._tied_group)
        with torch.no_grad():
            local += total - mine

    # --- full tensors on every rank (collectives: call on every rank) ---------------------

    def full_grads(self) -> dict[str, torch.Tensor]:
        """{full model name: full gradient} of the whole model, on every rank (CPU tensors)."""
        return self._gather(lambda p: p.grad)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """{full model name: full parameter} of the whole model, on every rank (CPU tensors)."""
        return self._gather(lambda p: p)

    def _gather(self, get) -> dict[str, torch.Tensor]:
        mine = {}
        for name, p in self.named_parameters():
            if name == "lm_head.weight" and self.module.tied:
                continue  # the tied copy: the model names the matrix model.embed_tokens.weight
            t = get(p)
            if t is not None:
                t = t.full_tensor() if hasattr(t, "full_tensor") else t
                mine[name] = t.detach().cpu().clone()
        if self.dims.pp == 1:
            return mine
        seen: list = [None] * self.dims.pp
        dist.all_gather_object(seen, mine, group=self.mesh["pp"].get_group())
        return {k: v for part in seen for k, v in part.items()}


def _like_param(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Gradient ``g`` laid out as its parameter ``w`` (a DTensor gradient may come replicated
    where the parameter is sharded: slicing it is local, no message)."""
    placements = getattr(w, "placements", None)
    if placements is not None and g.placements != placements:
        return g.redistribute(w.device_mesh, placements)
    return g


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (a view: in-place changes reach it), else the tensor."""
    return t._local_tensor if hasattr(t, "_local_tensor") else t
