"""Expert parallelism by hand (专家并行): a MoE layer's routed experts sharded over an ep group,
tokens dispatched to them and combined back with counted all-to-alls.

Rank r of the ep group keeps experts [r·E/ep, (r+1)·E/ep) (``cost.moe_comm.expert_range``; the
others' weights are dropped) and every non-expert weight (router, shared expert). Its forward
on its own tokens x (n × H), the scheme of GShard (Lepikhin et al. 2020, arXiv 2006.16668) and
of Megatron-Core's all-to-all token dispatcher:

    route      weights, experts = moe.route(x)                   n × k each (top-k)
    capacity   keep the first ⌈c·k·n/E⌉ rows of each expert (token order), drop the rest
    sort       the kept (token, slot) rows by expert: rows for rank 0's experts first, …
    counts     all-to-all of the E row counts → how many rows each rank will send me
    dispatch   all-to-all of the rows (uneven splits)            → my experts' inputs
    experts    each local expert on its rows
    combine    all-to-all back (the splits reversed)             → my rows' expert outputs
    sum        out[t] = Σ_slots weight · expert output (+ shared expert(x), computed here)

A dropped row contributes 0: its token keeps only the residual (and the shared expert).

``shard(moe, group, capacity_factor)`` makes one layer expert parallel in place, ``apply(model,
group, ...)`` every MoE layer of a model; after backward ``reduce_gradients`` averages the
gradients over dp (an expert's over edp, see there). ``balance_group`` (dp) makes the load
statistics the whole batch's: the load DeepSeek-V3's bias update reads and the f_i of the
balancing loss. With ``ParallelDims(dp=…, ep=…)``:

    g = groups.build(dims); expert_parallel.apply(model, g.ep, balance_group=g.dp)
    loss.backward(); expert_parallel.reduce_gradients(model, g.dp, g.edp)

``dispatch`` and ``combine`` are autograd Functions whose backward is the reverse all-to-all
of the gradient (forward and backward side by side, as ``tp_comm``'s f and g), so the expert
weights get the gradients of every rank's tokens and x the gradients of its expert outputs.
Every exchange goes through ``comm.all_to_all``, tagged ``cost.moe_comm.TAGS``; the bytes equal
``cost.moe_comm.layer_bytes`` (tests/test_expert_parallel.py, which also shows the ep ranks
equal one process running the whole MoE on all tokens, outputs and every gradient, float64).

The MoE layer is ``llmtrain.model.moe.MoE`` or any module with ``route(x2d) -> (weights,
indices)``, ``experts`` (a ModuleList of E modules mapping rows to rows) and ``shared`` (a module
or None; ``shared_gate`` optional).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from .. import check
from ..cost.moe_comm import capacity as capacity_of
from ..cost.moe_comm import expert_range
from . import comm

__all__ = ["COUNTS", "DISPATCH", "COMBINE", "ExpertParallel", "Dispatch", "keep_mask",
           "all_to_all_rows", "dispatch", "combine", "shard", "apply", "is_moe_layer",
           "expert_parameter", "reduce_gradients", "balancing_loss", "LOAD"]

COUNTS, DISPATCH, COMBINE = "counts", "dispatch", "combine"  # comm tags; backward: "<tag>-backward"
LOAD = "load"  # the tag of the load's all-reduce over balance_group


def all_to_all_rows(x: torch.Tensor, output_splits: list[int], input_splits: list[int],
                    group, tag: str) -> torch.Tensor:
    """A new tensor: ``input_splits[j]`` rows of x go to rank j, ``output_splits[j]`` rows come
    from rank j (group-rank order), through the counted ``comm.all_to_all``."""
    out = x.new_empty((sum(output_splits), *x.shape[1:]))
    comm.all_to_all(out, x.contiguous(), list(output_splits), list(input_splits), group=group,
                    tag=tag)
    return out


class _AllToAll(torch.autograd.Function):
    """Rows out along the splits forward; their gradients back along the reversed splits."""

    @staticmethod
    def forward(ctx, x, output_splits, input_splits, group, tag):
        ctx.splits, ctx.group, ctx.tag = (output_splits, input_splits), group, tag
        return all_to_all_rows(x, output_splits, input_splits, group, tag)

    @staticmethod
    def backward(ctx, grad):
        output_splits, input_splits = ctx.splits
        back = all_to_all_rows(grad, input_splits, output_splits, ctx.group, f"{ctx.tag}-backward")
        return back, None, None, None, None


def dispatch(rows: torch.Tensor, output_splits: list[int], input_splits: list[int],
             group=None) -> torch.Tensor:
    """Send the rows sorted by destination (``input_splits[j]`` to rank j), receive the experts'
    inputs (``output_splits[j]`` from rank j); backward sends their gradients back."""
    return _AllToAll.apply(rows, output_splits, input_splits, group, DISPATCH)


def combine(rows: torch.Tensor, output_splits: list[int], input_splits: list[int],
            group=None) -> torch.Tensor:
    """Send the expert outputs back to the ranks their tokens came from; backward sends the
    gradients of those outputs to the experts again."""
    return _AllToAll.apply(rows, output_splits, input_splits, group, COMBINE)


def keep_mask(indices: torch.Tensor, num_experts: int, capacity: int | None) -> torch.Tensor:
    """n × k booleans: which (token, slot) rows an expert takes when it takes at most
    ``capacity`` rows: the first ones in token order (Megatron-Core's "position" drop policy:
    the tokens at the end of the batch drop). All True when ``capacity`` is None."""
    check.tensor("indices", indices, dim=2, floating=False)
    check.positive_int("num_experts", num_experts)
    if capacity is None:
        return torch.ones_like(indices, dtype=torch.bool)
    check.integer("capacity", capacity, 0)
    flat = indices.flatten()
    order = torch.argsort(flat, stable=True)  # rows grouped by expert, token order within
    counts = torch.bincount(flat, minlength=num_experts)
    first = torch.cumsum(counts, 0) - counts  # where each expert's group starts
    position = torch.empty_like(flat)
    position[order] = torch.arange(flat.numel()) - first[flat[order]]
    return (position < capacity).view_as(indices)


class Dispatch(NamedTuple):
    """What one forward of an ``ExpertParallel`` layer routed, on this rank."""

    capacity: int | None          # rows one expert takes from this rank (None: no limit)
    routed: list[int]             # rows this rank's tokens chose, per expert (E)
    kept: list[int]               # of them, within capacity: sent (or kept here), per expert
    received: list[list[int]]     # rows received from each ep rank for each local expert
    dropped: torch.Tensor         # n × k booleans: the (token, slot) rows dropped
    indices: torch.Tensor         # n × k: the experts chosen
    weights: torch.Tensor         # n × k: their weights (detached)

    @property
    def dropped_rows(self) -> int:
        return int(self.dropped.sum())

    @property
    def rows_in(self) -> int:
        """Rows my experts computed (from every rank, mine included): this rank's work."""
        return sum(map(sum, self.received))


class ExpertParallel:
    """The expert-parallel forward of one MoE layer on ``group``: ``shard(moe, group, c)``
    installs it as ``moe.forward``, so the layer stays where it is (its parameter names, and
    ``MoELlama.moe_layers``, unchanged) and only its experts [start, stop) keep their weights
    (the others become ``nn.Identity``). ``capacity_factor`` c limits each expert to
    ⌈c·k·n/E⌉ rows of a rank's n tokens (None: no limit, nothing dropped). ``last`` holds the
    ``Dispatch`` of the latest forward; the layer's ``last_load`` and ``last_aux_loss`` are set
    as its own forward sets them, over this rank's tokens, or with ``balance_group`` (the dp
    group: the ranks whose tokens make one batch) over the whole batch: the routed counts are
    all-reduced (summed) over it in forward, and the balancing loss E·Σ f_i·P_i takes the
    batch's f_i (not differentiable) with this rank's P_i, so the mean over the group of the
    ranks' losses is one process's (Megatron-Core's global-batch balancing,
    ``switch_load_balancing_loss_func``: loss = Σ_j E·Σ_i f_i·P_ij). Every local expert runs, on zero rows
    if no token chose it, so each rank has a gradient for each of its experts (zeros) and the
    edp all-reduce of ``reduce_gradients`` never waits for a missing one."""

    def __init__(self, moe: nn.Module, group=None, capacity_factor: float | None = None,
                 balance_group=None):
        check.module("moe", moe)
        if not is_moe_layer(moe):
            check.fail("moe", "a MoE layer with route() and an experts ModuleList", moe)
        if isinstance(moe.__dict__.get("forward"), ExpertParallel):
            check.fail("moe", "a MoE layer not sharded yet", moe)
        check.optional(check.positive_number, "capacity_factor", capacity_factor)
        if not dist.is_initialized():
            raise RuntimeError("ExpertParallel must be built inside a rank: torch.distributed "
                               "is not initialised (use llmtrain.parallel.launch or torchrun)")
        self.moe, self.group, self.capacity_factor = moe, group, capacity_factor
        self.balance_group = balance_group
        self.num_experts = len(moe.experts)
        self.ep, self.ep_rank = dist.get_world_size(group), dist.get_rank(group)
        self.start, self.stop = expert_range(self.num_experts, self.ep, self.ep_rank)
        for e in range(self.num_experts):  # keep my experts only; the others live elsewhere
            if not self.start <= e < self.stop:
                moe.experts[e] = nn.Identity()
        self.last: Dispatch | None = None

    def local_experts(self) -> range:
        return range(self.start, self.stop)

    def _route(self, x2):
        gate = getattr(self.moe, "gate", None)
        if callable(getattr(gate, "route", None)):  # llmtrain.model.moe: the scores too
            return gate.route(x2)
        return (*self.moe.route(x2), None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        moe = self.moe
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        weights, indices, scores = self._route(x2)
        n, k = indices.shape
        E, ep, per = self.num_experts, self.ep, self.stop - self.start
        cap = None if self.capacity_factor is None else capacity_of(n, k, E, self.capacity_factor)
        keep = keep_mask(indices, E, cap)
        routed = torch.bincount(indices.flatten(), minlength=E)
        # the kept rows, sorted by expert (token order within): rank 0's experts first
        kept_ids = keep.flatten().nonzero().squeeze(1)
        experts = indices.flatten()[kept_ids]
        rows = kept_ids[torch.argsort(experts, stable=True)]
        token = rows // k
        kept = torch.bincount(experts, minlength=E)
        received = torch.empty_like(kept)
        comm.all_to_all(received, kept, group=self.group, tag=COUNTS)  # E/ep counts per rank
        received = received.view(ep, per)  # [source rank, my expert]
        send = kept.view(ep, per).sum(1).tolist()
        recv = received.sum(1).tolist()
        inputs = dispatch(x2[token], recv, send, self.group)
        # my experts' rows arrive grouped by source rank; regroup them by expert
        mine = torch.arange(per).repeat(ep).repeat_interleave(received.flatten())
        order = torch.argsort(mine, stable=True)
        blocks = inputs[order].split(received.sum(0).tolist())
        local = moe.experts[self.start:self.start + len(blocks)]  # this rank's experts, in order
        outputs = torch.cat([expert(rows) for expert, rows in zip(local, blocks)])
        outputs = outputs[torch.argsort(order)]  # back to arrival order
        back = combine(outputs, send, recv, self.group)
        w = weights.flatten()[rows].to(back.dtype).unsqueeze(1)
        out = torch.zeros_like(x2).index_add(0, token, back * w)
        if getattr(moe, "shared", None) is not None:
            shared = moe.shared(x2)
            if getattr(moe, "shared_gate", None) is not None:  # Qwen2-MoE's sigmoid gate
                shared = torch.sigmoid(moe.shared_gate(x2)) * shared
            out = out + shared
        load = routed.detach().clone()
        if self.balance_group is not None:  # the whole batch's load
            comm.all_reduce(load, "sum", group=self.balance_group, tag=LOAD)
        moe.last_load = load
        if scores is not None:
            moe.last_aux_loss = balancing_loss(scores, load, k)
        self.last = Dispatch(cap, routed.tolist(), kept.tolist(), received.tolist(), ~keep,
                             indices.detach(), weights.detach())
        return out.view(shape)


def is_moe_layer(module: nn.Module) -> bool:
    """A module with ``route`` and an ``experts`` ModuleList (``llmtrain.model.moe.MoE``)."""
    return callable(getattr(module, "route", None)) and isinstance(
        getattr(module, "experts", None), nn.ModuleList)


def balancing_loss(scores: torch.Tensor, load: torch.Tensor, k: int) -> torch.Tensor:
    """E·Σ_i f_i·P_i with f_i = load_i / tokens (tokens = Σ load / k: the load may be the whole
    batch's) and P_i this rank's mean normalised score: ``model.moe.aux_loss`` when ``load`` is
    this rank's own (tests/test_expert_parallel.py)."""
    check.tensor("scores", scores, dim=2, floating=True)
    check.tensor("load", load, dim=1)
    check.positive_int("k", k)
    E = scores.shape[1]
    f = load.to(scores.dtype) / (load.sum().to(scores.dtype) / k)
    P = (scores / scores.sum(-1, keepdim=True)).mean(0)
    return E * (f * P).sum()


def shard(moe: nn.Module, group=None, capacity_factor: float | None = None,
          balance_group=None) -> ExpertParallel:
    """Make ``moe`` expert parallel on ``group`` in place (every rank builds the same full layer,
    e.g. from one seed, then calls this): its forward becomes ``ExpertParallel``'s."""
    ep = ExpertParallel(moe, group, capacity_factor, balance_group)
    moe.forward = ep  # a plain attribute: the module tree and state_dict keys stay as they were
    return ep


def apply(model: nn.Module, group=None, capacity_factor: float | None = None,
          balance_group=None) -> list[ExpertParallel]:
    """``shard`` every MoE layer of ``model`` (``is_moe_layer``) on ``group``; returns them."""
    check.module("model", model)
    layers = [m for m in model.modules() if is_moe_layer(m)]
    if not layers:
        check.fail("model", "a model with at least one MoE layer (route() and experts)", model)
    return [shard(m, group, capacity_factor, balance_group) for m in layers]


def expert_parameter(name: str) -> bool:
    """True for a routed expert's parameter (``…experts.<e>.…``): these are sharded over ep and
    averaged over edp; every other parameter is replicated and averaged over dp."""
    if not isinstance(name, str):
        check.fail("name", "a parameter name (str)", name)
    return ".experts." in f".{name}"


def reduce_gradients(model: nn.Module, dp_group=None, edp_group=None, tag: str = "grads") -> None:
    """Data parallelism beside expert parallelism, after backward: a replicated parameter's
    gradient is averaged over dp; an expert's (``expert_parameter``) is summed over edp (the
    replicas of that expert, one per ep group) and divided by dp. Why: each rank's loss is the
    mean over its own tokens and the step's loss the mean over the dp ranks; an expert already
    holds Σ over its ep group's ranks of their losses' gradients (the dispatch brought their
    tokens), so the sum over edp is Σ over all dp ranks (equal to one process:
    tests/test_expert_parallel.py)."""
    check.module("model", model)
    dp = dist.get_world_size(dp_group)
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        if expert_parameter(name):
            comm.all_reduce(p.grad, "sum", group=edp_group, tag=tag)
            p.grad.div_(dp)
        else:
            comm.all_reduce(p.grad, "avg", group=dp_group, tag=tag)

