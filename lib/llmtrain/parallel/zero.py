"""ZeRO by hand (零冗余优化器): shard what every data-parallel replica holds twice.

Plain data parallelism keeps on every rank all of the model states: with mixed-precision
AdamW 2Ψ bytes of 16-bit weights, 2Ψ of gradients and 12Ψ of fp32 master weights, momentum
and variance (K = 12): 16Ψ. ZeRO (Rajbhandari et al., SC'20) splits them over the N ranks:

    stage 1  optimizer states (and master weights)   4Ψ + 12Ψ/N
    stage 2  … and gradients                         2Ψ + 14Ψ/N
    stage 3  … and the weights themselves                 16Ψ/N

Each parameter is flattened, padded to a multiple of N and cut into N equal shards; rank r
owns shard r of every parameter (as FSDP2 does, per parameter). One step:

- stage 1: backward as usual (full gradients); at the step ``reduce_scatter`` them, so rank
  r gets the *averaged* gradient of its shard only; update its shard; ``all_gather`` the
  updated weights. Bytes sent per rank: (N−1)/N·Ψ twice = DP's all-reduce (an all-reduce
  *is* a reduce-scatter followed by an all-gather).
- stage 2: the same, but each gradient is reduce-scattered during backward as soon as it
  exists and its full copy freed at once.
- stage 3: weights live only as shards. Each *unit* (a module; the root by default, or e.g.
  every transformer block) all-gathers its weights just before its forward, frees them
  after, gathers them again just before its backward, and frees them when its gradients are
  reduce-scattered: three times (N−1)/N·Ψ instead of DP's two, ×1.5.

Every collective runs on ``group`` (default: the world), a data-parallel group (e.g.
``groups.build(ParallelDims(...)).dp``); "rank r" is the rank inside it. fp32 (and fp64) models
step their shard in place (no master copy); 16-bit ones keep an fp32 master shard (notebook 04).
Run it: ``python -m llmtrain.parallel.demos.zero --stage 3`` (2 ranks here, or under torchrun).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd.graph import register_multi_grad_hook
from torch.utils._pytree import tree_flatten

from .. import check
from . import comm
from .data_parallel import GradReducer, broadcast_module, first_rank
from .launch import run_moved_command, require_process_group

__all__ = ["wrap", "ZeroOptimizer", "memory_report", "formula", "expected_bytes", "full_state_dict"]

STAGES = (0, 1, 2, 3)


def wrap(model: nn.Module, stage: int, optimizer_cls: type = torch.optim.AdamW, *,
         units: Iterable[nn.Module] | None = None, group=None, **optimizer_kwargs: Any
         ) -> tuple[nn.Module, "ZeroOptimizer"]:
    """ZeRO stage 0–3 for ``model`` (changed in place) and an optimizer over this rank's shards.

    Call inside every rank, then train as usual: ``loss.backward(); opt.step(); opt.zero_grad()``.
    Stage 0 is plain data parallelism with the same bookkeeping (the baseline). ``units`` are
    the modules whose weights stage 3 gathers together (default: the whole model at once; a
    weight must only be used inside the forward of the unit that owns it — the smallest unit
    containing it — as with FSDP2); ``group`` is the data-parallel group the states are
    sharded over (default: all ranks; every replica starts from its first rank's weights);
    ``optimizer_kwargs`` go to ``optimizer_cls``. Frozen
    weights (``requires_grad=False``) are not sharded. Stage 3 weights are whole only inside
    their unit's forward and backward: read them with ``model.state_dict()``,
    ``full_state_dict`` or ``with optimizer.gathered():`` (on every rank: they all-gather).
    """
    check.module("model", model)  # before the process group: a slip is named even outside
    require_process_group("zero.wrap")
    check.integer("stage", stage, 0, 3)
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
        check.fail("optimizer_cls", "a torch.optim.Optimizer class", optimizer_cls)
    if units is not None:
        if stage != 3:
            check.fail("units", "None below stage 3 (stage 3 gathers weights per unit; "
                       f"stage={stage})", units)
        units = list(units)
        inside = {id(m) for m in model.modules()}
        if any(not isinstance(m, nn.Module) or id(m) not in inside for m in units):
            check.fail("units", "submodules of the model being wrapped", units)
    return model, ZeroOptimizer(model, stage, optimizer_cls, units, optimizer_kwargs, group)


def _low(p: torch.Tensor) -> bool:
    """16-bit weights get an fp32 master copy; fp32 and fp64 weights are their own master."""
    return p.dtype in (torch.float16, torch.bfloat16)


class _Unit:
    """Modules whose weights stage 3 gathers and frees together."""

    def __init__(self, module: nn.Module):
        self.module, self.indices, self.gathered, self.reduced = module, [], False, 0


class ZeroOptimizer:
    """The optimizer ``wrap`` returns: ``step()``, ``zero_grad()``, and ``inner``, the real
    torch optimizer over this rank's shards (give ``inner`` to an LR scheduler). ``world``
    and ``rank`` are the size of ``group`` and this rank's place in it."""

    def __init__(self, model: nn.Module, stage: int, optimizer_cls: type, units, kwargs: dict,
                 group=None):
        self.model, self.stage, self.group = model, stage, group
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        broadcast_module(model, first_rank(group), group=group)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._index = {id(p): i for i, p in enumerate(self.params)}
        n = 1 if stage == 0 else self.world
        self.shard_numel = [math.ceil(p.numel() / n) for p in self.params]
        self.buffers: list[torch.Tensor] = []      # each weight, flat and padded to N shards
        self.shards: list[torch.Tensor] = []       # stage 3: this rank's shard of each weight
        self.masters: list[torch.Tensor] = []      # what the optimizer steps (fp32)
        self.grad_shards: list[torch.Tensor | None] = [None] * len(self.params)
        with torch.no_grad():
            for p, s in zip(self.params, self.shard_numel):
                self._shard(p, s)
        self.inner = optimizer_cls(self.masters, **kwargs)
        self.units: list[_Unit] = []
        if stage == 0:
            GradReducer(self.params[::-1], 0, self._all_reduce, lambda: None)
        elif stage >= 2:
            GradReducer(self.params[::-1], 0, self._reduce_scatter, self._end_of_backward)
        if stage == 3:
            self._make_units(units)
            # model.state_dict() (on every rank: it gathers) returns whole weights, as copies
            model.register_state_dict_pre_hook(lambda m, prefix, keep_vars: self._gather_all())
            model.register_state_dict_post_hook(lambda m, sd, prefix, meta: self._copy_and_free(sd))

    # ------------------------------------------------------------------ sharding

    def _shard(self, p: nn.Parameter, s: int) -> None:
        if self.stage == 0:  # nothing sharded: the optimizer steps the weight (or its master)
            self.buffers.append(p.data.view(-1))
            self.masters.append(p.detach().reshape(-1).float().clone() if _low(p) else p)
            return
        buf = torch.zeros(self.world * s, dtype=p.dtype, device=p.device)
        buf[: p.numel()].copy_(p.detach().reshape(-1))
        p.data = buf[: p.numel()].view(p.shape)  # the weight is now a view of the padded buffer
        self.buffers.append(buf)
        own = buf[self.rank * s:(self.rank + 1) * s]
        if self.stage == 3:
            own = own.clone()             # the only copy that persists
            self.shards.append(own)
            buf.untyped_storage().resize_(0)  # free the full weight until it is needed
        self.masters.append(own.float().clone() if _low(p) else own)

    def _padded(self, i: int, t: torch.Tensor | None) -> torch.Tensor:
        flat = torch.zeros(self.world * self.shard_numel[i], dtype=self.params[i].dtype,
                           device=self.params[i].device)
        if t is not None:
            flat[: t.numel()].copy_(t.reshape(-1))
        return flat

    # ------------------------------------------------------------------ gradients

    def _all_reduce(self, bucket: list[nn.Parameter]) -> None:  # stage 0, during backward
        (p,) = bucket
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        comm.all_reduce(p.grad, "avg", group=self.group, tag="grads")

    def _reduce_scatter(self, bucket: list[nn.Parameter]) -> None:  # stage 2/3, during backward
        (p,) = bucket
        i = self._index[id(p)]
        self._scatter_grad(i)
        p.grad = None  # the full gradient is freed as soon as it is reduced
        if self.stage == 3:
            unit = self._unit_of[i]
            unit.reduced += 1
            if unit.reduced == len(unit.indices):
                self._free(unit)

    def _scatter_grad(self, i: int) -> None:
        out = torch.empty(self.shard_numel[i], dtype=self.params[i].dtype,
                          device=self.params[i].device)
        comm.reduce_scatter(out, self._padded(i, self.params[i].grad), "avg", group=self.group,
                            tag="grads")
        g = self.grad_shards[i]
        self.grad_shards[i] = out if g is None else g.add_(out)  # accumulates micro-batches

    def _end_of_backward(self) -> None:
        for unit in self.units:
            unit.reduced = 0
            self._free(unit)

    # ------------------------------------------------------------------ stage 3 units

    def _make_units(self, units) -> None:
        modules = [] if units is None else list(units)
        self.units = [_Unit(m) for m in dict.fromkeys([self.model, *modules])]
        owners = {}
        for unit in self.units:  # a weight belongs to the smallest unit that contains it
            for p in unit.module.parameters():
                owners.setdefault(id(p), []).append(unit)
        self._unit_of = {}
        for i, p in enumerate(self.params):
            unit = min(owners[id(p)], key=lambda u: sum(1 for _ in u.module.parameters()))
            unit.indices.append(i)
            self._unit_of[i] = unit
        for unit in self.units:
            if unit.indices:
                unit.module.register_forward_pre_hook(lambda m, a, u=unit: self._gather(u, "forward"))
                unit.module.register_forward_hook(lambda m, a, out, u=unit: self._after_forward(u, out))

    def _gather(self, unit: _Unit, tag: str) -> None:
        if unit.gathered:
            return
        for i in unit.indices:
            buf = self.buffers[i]
            buf.untyped_storage().resize_(buf.numel() * buf.element_size())
            comm.all_gather(buf, self.shards[i], group=self.group, tag=tag)
        unit.gathered = True

    def _free(self, unit: _Unit) -> None:
        if unit.gathered:
            for i in unit.indices:
                self.buffers[i].untyped_storage().resize_(0)
            unit.gathered = False

    def _after_forward(self, unit: _Unit, output) -> None:
        if torch._C._current_graph_task_id() != -1:
            return  # a forward run again inside backward (activation recomputation): keep them
        self._free(unit)
        tensors = [t for t in tree_flatten(output)[0]
                   if isinstance(t, torch.Tensor) and t.requires_grad]
        if tensors and torch.is_grad_enabled():  # gather again when backward reaches this unit
            register_multi_grad_hook(tensors, lambda grads, u=unit: self._gather(u, "backward"),
                                     mode="any")

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """Stage 3: every weight whole inside the block (e.g. to read or save them). Every
        rank must enter it: it all-gathers."""
        self._gather_all()
        try:
            yield
        finally:
            for unit in self.units:
                self._free(unit)

    def _gather_all(self) -> None:
        for unit in self.units:
            self._gather(unit, "gather")

    def _copy_and_free(self, state_dict: dict) -> None:
        for k, v in state_dict.items():
            if isinstance(v, torch.Tensor):
                state_dict[k] = v.detach().clone()
        for unit in self.units:
            self._free(unit)

    # ------------------------------------------------------------------ the step

    @torch.no_grad()
    def step(self) -> None:
        """Reduce what is not reduced yet (stage 1), step this rank's shards, share the result."""
        for i, (p, master) in enumerate(zip(self.params, self.masters)):
            if self.stage == 1:  # every rank reduces every gradient (zeros if it has none)
                self._scatter_grad(i)
            if master is p:  # stage 0, fp32: p.grad is already the averaged gradient
                continue
            g = p.grad.reshape(-1) if self.stage == 0 and p.grad is not None else self.grad_shards[i]
            master.grad = None if g is None else g.view_as(master).to(master.dtype)
        self.inner.step()
        for i, (p, master) in enumerate(zip(self.params, self.masters)):
            if master is not p:
                master.grad = None  # an fp32 copy, or a view of the shard we keep anyway
            if self.stage == 0:
                if master is not p:
                    p.copy_(master.view_as(p))
            elif self.stage in (1, 2):
                own = self.buffers[i][self.rank * self.shard_numel[i]:][: self.shard_numel[i]]
                own.copy_(master)
                comm.all_gather(self.buffers[i], own.clone(), group=self.group, tag="step")
            elif master is not self.shards[i]:
                self.shards[i].copy_(master)
            if self.stage == 1:
                self.grad_shards[i] = None

    def grad_shard(self, param: nn.Parameter) -> torch.Tensor | None:
        """This rank's shard of ``param``'s averaged gradient (stage 2–3; None before any)."""
        i = self._index.get(id(param))
        if i is None:
            check.fail("param", "a trained parameter of the wrapped model", param)
        return self.grad_shards[i]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients (full ones and shards)."""
        for i, p in enumerate(self.params):
            p.grad = None
            self.grad_shards[i] = None

    @property
    def param_groups(self):
        return self.inner.param_groups

    def state_dict(self) -> dict:
        return self.inner.state_dict()


# ---------------------------------------------------------------------- accounting

def memory_report(model: nn.Module, optimizer: torch.optim.Optimizer | ZeroOptimizer) -> dict[str, int]:
    """Bytes this rank holds now: weights, gradients, master weights, optimizer states.

    Measured, not computed: the storage behind every tensor, each storage counted once (a
    shard that is a view of a weight is counted as weight). ``total`` is their sum, the model
    states the ZeRO formulas count; ``other`` (not in ``total``) is the optimizer's per-tensor
    scalars, e.g. AdamW's step counters, 4 bytes each. Call it after ``optimizer.step()`` and
    before ``zero_grad()``: then everything a step needs is alive (AdamW creates its states in
    its first step; stage 0–1 hold full gradients, stage 2–3 only their shards).
    """
    seen: set[tuple[int, int]] = set()
    out = dict.fromkeys(("weights", "gradients", "master", "optimizer", "other"), 0)

    def add(kind: str, t: torch.Tensor | None) -> None:
        if t is None:
            return
        if hasattr(t, "to_local"):  # a DTensor (FSDP2): what this rank holds is its local shard
            t = t.to_local()
        st = t.untyped_storage()
        key = (st.data_ptr(), st.nbytes())
        if st.nbytes() and key not in seen:
            seen.add(key)
            out[kind] += st.nbytes()

    zero = optimizer if isinstance(optimizer, ZeroOptimizer) else None
    inner = zero.inner if zero else optimizer
    for p in model.parameters():
        add("weights", p)
    for s in zero.shards if zero else []:
        add("weights", s)
    for p in model.parameters():
        add("gradients", p.grad)
    for g in zero.grad_shards if zero else []:
        add("gradients", g)
    for m in zero.masters if zero else []:
        add("master", m)
    for state in inner.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                add("optimizer" if v.dim() else "other", v)
    out["total"] = sum(v for k, v in out.items() if k != "other")
    return out


def formula(stage: int, psi: Any = None, n: Any = None, k: Any = 12, *, weight_bytes: Any = 2,
            grad_bytes: Any = 2):
    """Bytes per rank of the model states under ZeRO ``stage``, as a SymPy expression.

    Rajbhandari et al., SC'20, §5.1 and Figure 1: Ψ parameters, N data-parallel ranks,
    2 bytes per 16-bit weight and gradient, K bytes of optimizer state per parameter (fp32
    master + Adam m, v: K = 12). Stage 1 divides the K by N, stage 2 also the gradients,
    stage 3 also the weights: 16Ψ, 4Ψ + 12Ψ/N, 2Ψ + 14Ψ/N, 16Ψ/N.
    """
    import sympy as sp

    check.integer("stage", stage, 0, 3)
    psi = sp.Symbol("Psi", positive=True) if psi is None else psi
    n = sp.Symbol("N", positive=True) if n is None else n
    weights = weight_bytes * psi / (n if stage >= 3 else 1)
    grads = grad_bytes * psi / (n if stage >= 2 else 1)
    optimizer = k * psi / (n if stage >= 1 else 1)
    return weights + grads + optimizer


def expected_bytes(numels: Iterable[int], world_size: int, stage: int, *, weight_bytes: int = 2,
                   grad_bytes: int = 2, master_bytes: int = 4, state_bytes: int = 8) -> dict[str, int]:
    """What ``memory_report`` must show (without ``other``): the ZeRO formulas with padding.

    Each parameter of n elements becomes N shards of ⌈n/N⌉: stage 1–2 keep the padded N·⌈n/N⌉
    weights, stage 3 one shard. With Ψ = Σn and no padding this is exactly
    ``memory.model_state_bytes(Ψ, zero=stage, dims=ParallelDims(dp=N))``: 16Ψ, 4Ψ+12Ψ/N,
    2Ψ+14Ψ/N, 16Ψ/N for
    mixed AdamW (2/2/4/8 bytes); fp32 AdamW is weight_bytes=4, grad_bytes=4, master_bytes=0.
    """
    check.integer("stage", stage, 0, 3)
    check.positive_int("world_size", world_size)
    numels = list(numels)
    N = world_size if stage else 1
    full = sum(numels)
    shard = sum(math.ceil(n / N) for n in numels)
    padded = N * shard
    return {"weights": weight_bytes * (shard if stage == 3 else padded if stage else full),
            "gradients": grad_bytes * (shard if stage >= 2 else full),
            "master": master_bytes * shard,
            "optimizer": state_bytes * shard}


def full_state_dict(model: nn.Module, optimizer: ZeroOptimizer | None = None) -> dict[str, torch.Tensor]:
    """Every weight whole (a copy), by name — gathering stage 3's shards first (over the
    optimizer's group: call it on every rank of that group)."""
    ctx = optimizer.gathered() if isinstance(optimizer, ZeroOptimizer) else contextlib.nullcontext()
    with ctx:
        return {k: v.detach().clone() for k, v in model.named_parameters()}


if __name__ == "__main__":  # the old command (one release): runs llmtrain.parallel.demos.<this>
    run_moved_command(__spec__.name)
