"""Activation memory: what autograd saves for backward, measured and in closed form (激活值).

``measure(model, *inputs)`` runs one forward pass and reports, to the byte, the tensors
autograd keeps for backward, by module, by decoder layer and by operation.
``llmtrain.activation_formulas.saved_bytes`` gives the same number in closed form for our
reference LLaMA and transformers' Llama/Qwen2.

How ``measure`` counts (see tests/test_activations.py):

- a ``saved_tensors_hooks`` pack hook sees every tensor an op saves (a Linear saves its
  input, a softmax its output, ...); it records the innermost running module;
- after forward, a walk over the ``grad_fn`` graph of the outputs keeps the saved tensors
  still reachable (those of discarded branches die with the forward) and names the op that
  saved each (``MmBackward0``, ``SoftmaxBackward0``, ...). Non-reentrant checkpoints save
  their inputs outside any node: they are found through the checkpoint and named
  ``"checkpoint inputs"``; they belong to the module whose forward the checkpoint wraps
  (HF layers) or, for a checkpointed function called after the running module has already
  called a submodule, to the first module run inside it (``llmtrain.recompute`` segments);
- each storage counts once with its full size (views share storage), parameters and buffers
  count zero (a Linear saves its weight, but the weight exists anyway).

With ``fake=True`` the pass runs under ``FakeTensorMode`` on fake CPU tensors: no memory,
no arithmetic, the same bytes. A model built on the meta device (LLaMA-7B in a second) can
be measured that way. (On the meta device itself SDPA takes the math path and saves more.)

``build(shape, impl=...)`` makes the models the closed forms describe (``MODELS``: our
reference LLaMA, transformers' LlamaForCausalLM with eager or SDPA attention) in a dtype, with
a recomputation strategy, and ``measure_shape`` measures one ``model(ids, labels=ids)`` of it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from .. import check
from ..model import recompute as _recompute
from ..model.llama import ATTN_IMPLS, Llama
from ..precision.formats import torch_dtype
from ..model.shapes import resolve
from ..cost.activations import MODELS, check_model

__all__ = ["Saved", "Row", "measure", "ROOT", "CHECKPOINT_INPUTS", "MODELS", "check_model",
           "build", "measure_shape"]

ROOT = "(top level)"  # by_module key of what the model's own forward saves outside submodules
CHECKPOINT_INPUTS = "checkpoint inputs"  # by_op key of what a non-reentrant checkpoint keeps


@dataclass(frozen=True)
class Row:
    """One saved storage: the module and op that saved it first, its shape, dtype and bytes."""

    module: str
    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    bytes: int


@dataclass(frozen=True)
class Saved:
    """What one forward pass saved for backward, in bytes (plain ints, exact).

    ``by_module``: qualified module name (``"model.layers.0.self_attn"``; ``ROOT`` for the
    model's own forward, e.g. the loss) -> bytes. ``by_layer``: decoder layer index (the
    ``i`` of a module named ``...layers.i...``) -> bytes of everything inside it.
    ``outside_layers``: the rest of ``by_module`` (embedding, final norm, lm_head, loss).
    ``by_op``: grad_fn name of the saving node -> bytes. ``tensors``: one ``Row`` per storage.
    Each of by_module, by_op and by_layer + outside_layers sums to ``total_bytes``.
    """

    total_bytes: int
    by_module: dict[str, int]
    by_layer: dict[int, int]
    outside_layers: dict[str, int]
    by_op: dict[str, int]
    tensors: tuple[Row, ...]

    def table(self, by: str = "module") -> str:
        """A text table of bytes ``by`` "module", "layer", "op" or "tensor"."""
        if by == "module":
            items = list(self.by_module.items())
        elif by == "layer":
            items = [(f"layer {i}", b) for i, b in self.by_layer.items()]
            items += list(self.outside_layers.items())
        elif by == "op":
            items = sorted(self.by_op.items(), key=lambda kv: -kv[1])
        elif by == "tensor":
            items = [(f"{r.module}  {r.op}  {tuple(r.shape)} {str(r.dtype)[6:]}", r.bytes)
                     for r in self.tensors]
        else:
            raise ValueError(f"by must be 'module', 'layer', 'op' or 'tensor', got {by!r}")
        width = max([len(k) for k, _ in items] + [5])
        lines = [f"{k:<{width}}  {b:>16,}" for k, b in items]
        total = self.total_bytes
        lines.append(f"{'total':<{width}}  {total:>16,}  ({total / 2**30:.3f} GiB, GiB = 2³⁰ B)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table("layer")


class _Packed:
    """What the pack hook gives autograd instead of the tensor: the tensor, where it was saved."""

    __slots__ = ("tensor", "module", "fresh", "next_in_checkpoint", "op")

    def __init__(self, tensor: torch.Tensor, module: str, fresh: bool):
        self.tensor, self.module = tensor, module
        self.fresh = fresh  # saved before the module called any submodule
        self.next_in_checkpoint: str | None = None  # first module run next, if inside a checkpoint
        self.op: str | None = None  # set by the graph walk


def measure(model: nn.Module, *inputs: Any, fake: bool = False, **kwargs: Any) -> Saved:
    """Bytes saved for backward by one ``model(*inputs, **kwargs)``, exact.

    ``fake=True`` runs it under ``FakeTensorMode`` with fake CPU copies of the parameters,
    buffers and tensor inputs (real or meta): nothing is allocated or computed.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names: dict[int, str] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        names.setdefault(id(m), name or ROOT)
    if not fake:
        excluded = {_key(t) for t in [*model.parameters(), *model.buffers()]}
        return _measure(model, model, names, inputs, kwargs, excluded)

    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=False)
    with mode:  # fake CPU stand-ins, one per distinct parameter/buffer (ties kept)
        stand_in: dict[int, torch.Tensor] = {}
        state: dict[str, torch.Tensor] = {}
        for name, t in [*model.named_parameters(remove_duplicate=False),
                        *model.named_buffers(remove_duplicate=False)]:
            if id(t) not in stand_in:
                stand_in[id(t)] = _fake_like(t).requires_grad_(t.requires_grad)
            state[name] = stand_in[id(t)]
        memo: dict[int, torch.Tensor] = {}  # the same input twice (ids, labels=ids) stays one

        def to_fake(t: torch.Tensor) -> torch.Tensor:
            if id(t) not in memo:  # real tensors keep their views; meta ones become fake CPU
                memo[id(t)] = _fake_like(t) if t.is_meta else mode.from_tensor(t)
            return memo[id(t)]

        args, kw = _tree_map(to_fake, (inputs, kwargs))

        def call(*a, **k):  # model with the stand-ins in place of its parameters and buffers
            return torch.func.functional_call(model, state, a, k, tie_weights=False)

        return _measure(model, call, names, args, kw, {_key(t) for t in stand_in.values()})


def _fake_like(t: Any) -> Any:
    """A fake CPU tensor with t's shape, strides and dtype (called inside FakeTensorMode)."""
    if not isinstance(t, torch.Tensor):
        return t
    return torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype, device="cpu")


def _key(t: torch.Tensor) -> int:
    """Identity of t's storage: its StorageImpl address (data_ptr is 0 on meta/fake tensors)."""
    return t.untyped_storage()._cdata


def _measure(module: nn.Module, call, names: dict[int, str], args, kwargs,
             excluded: set[int]) -> Saved:
    """Run ``call(*args, **kwargs)`` with the hooks on ``module``; count what it saved."""
    packed: list[_Packed] = []
    pending: list[_Packed] = []  # saved since the last module hook fired
    stack = [ROOT]
    fresh = [True]  # the innermost running module has not called a submodule yet

    def pack(t: torch.Tensor) -> _Packed:
        p = _Packed(t, stack[-1], fresh[0])
        packed.append(p)
        pending.append(p)
        return p

    def unpack(p: _Packed) -> torch.Tensor:
        return p.tensor

    def pre(m, _args):
        top = torch._C._autograd._top_saved_tensors_default_hooks(False)
        inside = top is None or top[0] is not pack  # a checkpoint's hooks are on top
        for p in pending:
            p.next_in_checkpoint = names[id(m)] if inside else None
        pending.clear()
        stack.append(names[id(m)])
        fresh[0] = True

    def post(m, _args, _out):
        pending.clear()
        fresh[0] = False
        if len(stack) > 1:
            stack.pop()

    handles = []
    for m in module.modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post, always_call=True))
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            out = call(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    _walk(_tensors_in(out), {id(p) for p in packed})

    by_module: dict[str, int] = {}
    by_op: dict[str, int] = {}
    rows: list[Row] = []
    counted = set(excluded)
    for p in packed:  # in the order they were saved: the first saver gets the storage
        if p.op is None:  # not reachable from the outputs: freed when forward returned
            continue
        key = _key(p.tensor)
        if key in counted:
            continue
        counted.add(key)
        nbytes = p.tensor.untyped_storage().nbytes()
        where = p.module
        if p.op == CHECKPOINT_INPUTS and not p.fresh and p.next_in_checkpoint is not None:
            where = p.next_in_checkpoint
        by_module[where] = by_module.get(where, 0) + nbytes
        by_op[p.op] = by_op.get(p.op, 0) + nbytes
        rows.append(Row(where, p.op, tuple(p.tensor.shape), p.tensor.dtype, nbytes))
    by_layer: dict[int, int] = {}
    outside: dict[str, int] = {}
    for name, b in by_module.items():
        match = _LAYER.search(name)
        if match:
            by_layer[int(match.group(1))] = by_layer.get(int(match.group(1)), 0) + b
        else:
            outside[name] = outside.get(name, 0) + b
    return Saved(sum(by_module.values()), by_module, dict(sorted(by_layer.items())), outside,
                 by_op, tuple(rows))


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")


def _walk(roots: list[torch.Tensor], ours: set[int]) -> None:
    """Name the op of every saved tensor reachable from ``roots`` (sets ``_Packed.op``)."""
    todo = [t.grad_fn for t in roots if t.grad_fn is not None]
    seen: set[int] = set()
    frames: dict[int, Any] = {}
    attrs: dict[type, list[str]] = {}
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        kind = type(node)
        if kind not in attrs:
            attrs[kind] = [a for a in dir(node) if a.startswith("_raw_saved_")]
        for a in attrs[kind]:
            saved = getattr(node, a)
            for st in saved if isinstance(saved, (list, tuple)) else [saved]:
                data = getattr(st, "data", None)
                if id(data) in ours:
                    if data.op is None:
                        data.op = node.name()
                elif data is not None and type(data).__name__ == "_Holder":
                    frame = _checkpoint_frame(st)
                    if frame is not None:
                        frames[id(frame)] = frame
        todo.extend(fn for fn, _ in node.next_functions if fn is not None)
    for frame in frames.values():  # non-reentrant checkpoints keep their inputs themselves
        for st in getattr(frame, "saved_args", []):
            data = getattr(st, "data", None)
            if id(data) in ours and data.op is None:
                data.op = CHECKPOINT_INPUTS


def _checkpoint_frame(st) -> Any:
    """The torch.utils.checkpoint frame whose unpack hook holds ``st``, if any."""
    hook = getattr(st, "unpack_hook", None)
    for cell in getattr(hook, "__closure__", None) or ():
        if type(cell.cell_contents).__name__ == "_CheckpointFrame":
            return cell.cell_contents
    return None


def _tensors_in(obj: Any) -> list[torch.Tensor]:
    """All tensors in a model's output: tensors, tuples, lists, dicts, dataclasses."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tensors_in(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors_in(v)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in _tensors_in(getattr(obj, f.name))]
    return []


def _tree_map(fn, obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _tree_map(fn, v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a NamedTuple
        return type(obj)(*(_tree_map(fn, v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tree_map(fn, v) for v in obj)
    return obj


# --- the models the closed forms describe -------------------------------------------------

def build(shape, *, dtype: Any = "bf16", impl: str = "reference", recompute: str = "none",
          attention: str | None = None, device: Any = None) -> nn.Module:
    """Model ``impl`` of ``shape`` in ``dtype``, recomputation set, in train mode.

    ``device="meta"`` builds it without memory (for ``measure(..., fake=True)``).
    """
    shape = resolve(shape, "shape")
    attention = check_model(impl, recompute, attention)
    dt = torch_dtype(dtype)
    with torch.device(device if device is not None else "cpu"):
        if impl == "reference":
            model = _recompute.apply(Llama(shape, attn_impl=attention), recompute)
        else:
            import transformers

            config = shape.to_hf_config(attn_implementation=attention)
            model = transformers.AutoModelForCausalLM.from_config(config)
            if recompute == "full":
                enable = getattr(model, "activation_checkpointing_enable", None)
                if enable is None:  # transformers < 5.24
                    enable = model.gradient_checkpointing_enable
                enable()  # torch.utils.checkpoint, use_reentrant=False by default
    return model.to(dt).train()  # HF checkpoints only in train mode


def measure_shape(shape, batch: int, seq: int, *, dtype: Any = "bf16", impl: str = "reference",
                  recompute: str = "none", attention: str | None = None,
                  fake: bool = True) -> Saved:
    """``measure`` the model ``build`` makes on ``model(ids, labels=ids)``, ids (batch, seq).

    ``fake=True`` (default) builds it on the meta device and measures with fake tensors;
    ``fake=False`` builds real weights and runs real arithmetic (small shapes only). A seq
    longer than ``shape.max_seq_len`` raises that limit (it changes no saved tensor).
    ``activation_formulas.saved_bytes`` with the same arguments is its closed form.
    """
    shape = resolve(shape, "shape")
    check.positive_int("batch", batch)
    check.positive_int("seq", seq)
    check.boolean("fake", fake)
    if seq > shape.max_seq_len:
        shape = shape.replace(max_seq_len=seq)
    model = build(shape, dtype=dtype, impl=impl, recompute=recompute, attention=attention,
                  device="meta" if fake else None)
    ids = torch.zeros(batch, seq, dtype=torch.long, device="meta" if fake else None)
    if not fake:
        ids = torch.randint(0, shape.vocab_size, (batch, seq))
    if impl == "reference":
        return measure(model, ids, labels=ids, fake=fake)
    return measure(model, input_ids=ids, labels=ids, fake=fake)
