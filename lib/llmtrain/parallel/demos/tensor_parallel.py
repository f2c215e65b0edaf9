"""What the ranks run in notebook 06 (张量并行): plain data back, one launch per section.

``launch`` needs importable functions, so they live here; each returns tensors, ints and
``comm.Record``\\ s (picklable), never a model.

- ``split_inputs`` / ``split_matmul``: the slide's split of one product XW on real ranks,
  by hand with ``comm`` (column split + all-gather, row split + all-reduce, and the SwiGLU
  MLP column-then-row with a single all-reduce), beside one process's result.
- ``llama_tp``: the reference LLaMA made tensor parallel by ``tensor_parallel.apply`` (with
  and without sequence parallel) and by DTensor (``parallelize_module``), all from the same
  full state_dict as one process: losses, logit shards, every gradient gathered, bytes of
  parameters and saved activations on this rank, and the collectives of one step, split by
  direction, with DTensor's own count (``CommDebugMode``) beside ours.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ... import check
from .. import comm
from ...cost.layout import shard_range
from ...model.shapes import resolve

__all__ = ["split_inputs", "split_matmul", "mlp_reference", "llama_tp", "dtensor_llama",
           "comm_counts"]


def split_inputs(batch: int = 2, seq: int = 3, hidden: int = 8, ffn: int = 12,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """X (batch, seq, hidden), W (hidden, hidden) and the SwiGLU MLP's G, U (hidden, ffn) and
    D (ffn, hidden), float64, drawn from ``seed``: the same numbers on every rank and in the
    notebook's single process."""
    for name, value in (("batch", batch), ("seq", seq), ("hidden", hidden), ("ffn", ffn)):
        check.positive_int(name, value)
    check.integer("seed", seed, 0)
    g = torch.Generator().manual_seed(seed)

    def draw(*size):
        return torch.randn(*size, generator=g, dtype=torch.float64)

    return {"X": draw(batch, seq, hidden), "W": draw(hidden, hidden), "G": draw(hidden, ffn),
            "U": draw(hidden, ffn), "D": draw(ffn, hidden)}


def mlp_reference(X: torch.Tensor, G: torch.Tensor, U: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """SwiGLU on one process: (SiLU(XG) ⊙ XU) D."""
    return (F.silu(X @ G) * (X @ U)) @ D


def _shard(t: torch.Tensor, dim: int, r: int, n: int) -> torch.Tensor:
    """Rank r's block of ``t`` along ``dim``: the one split rule, ``cost.layout.shard_range``."""
    return t.narrow(dim, *shard_range(t.shape[dim], n, r))


def split_matmul(batch: int = 2, seq: int = 3, hidden: int = 8, ffn: int = 12,
                 seed: int = 0) -> dict[str, Any]:
    """On this rank r of t: the slide's XWᵢ and the MLP, each rank holding 1/t of each matrix.

    - column split: Wᵣ = W[:, r-th block of columns]; Yᵣ = XWᵣ; all-gather → [XW₁, …, XWₜ];
    - row split: Xᵣ = X[..., r-th block], Wᵣ = W[r-th block of rows]; all-reduce(sum) of XᵣWᵣ;
    - MLP: Gᵣ, Uᵣ column blocks, Dᵣ the matching row block; Zᵣ = SiLU(XGᵣ) ⊙ XUᵣ is a column
      block of Z, and all-reduce(sum) of ZᵣDᵣ is the output: one collective in all.

    Returns {"rank", "world_size", "shapes" (name → shape of this rank's shard), "column",
    "row", "mlp" (the results after communication), "partial" (this rank's XᵣWᵣ before the
    all-reduce), "comm" (the collectives, tagged "column", "row", "mlp")}.
    """
    r, n = dist.get_rank(), dist.get_world_size()
    if hidden % n or ffn % n:
        raise ValueError(f"hidden={hidden} and ffn={ffn} must be divisible by the {n} ranks")
    x = split_inputs(batch, seq, hidden, ffn, seed)
    X, W = x["X"], x["W"]
    with comm.counting() as log:
        # column split: concatenate the shards of the output
        w_col = _shard(W, 1, r, n)
        y = (X @ w_col).contiguous()
        gathered = torch.empty(n * y.numel(), dtype=y.dtype)  # rank 0's block, then rank 1's, …
        comm.all_gather(gathered, y.flatten(), tag="column")
        column = torch.cat(gathered.view(n, *y.shape).unbind(0), dim=-1)
        # row split: sum the partial products
        x_row, w_row = _shard(X, -1, r, n), _shard(W, 0, r, n)
        partial = x_row @ w_row
        row = partial.clone()
        comm.all_reduce(row, "sum", tag="row")
        # SwiGLU MLP: gate and up by columns, down by rows, one all-reduce
        g, u, d = _shard(x["G"], 1, r, n), _shard(x["U"], 1, r, n), _shard(x["D"], 0, r, n)
        z = F.silu(X @ g) * (X @ u)  # this rank's columns of Z, no communication needed
        mlp = z @ d
        comm.all_reduce(mlp, "sum", tag="mlp")
    shapes = {"X (column split: whole)": tuple(X.shape), "W_r (columns)": tuple(w_col.shape),
              "X W_r": tuple(y.shape), "X_r (row split)": tuple(x_row.shape),
              "W_r (rows)": tuple(w_row.shape), "G_r, U_r (columns)": tuple(g.shape),
              "Z_r": tuple(z.shape), "D_r (rows)": tuple(d.shape)}
    return {"rank": r, "world_size": n, "shapes": shapes, "column": column, "row": row,
            "mlp": mlp, "partial": partial, "comm": list(log.records)}


# ------------------------------------------------------------------------ the whole LLaMA

def comm_counts(mode) -> dict[str, int]:
    """DTensor's collectives counted by a ``CommDebugMode``: {"all_reduce"|"all_gather"|
    "reduce_scatter": calls} (functional collectives, whatever torch calls them)."""
    out: dict[str, int] = {}
    for op, n in mode.get_comm_counts().items():
        name = str(op)
        for kind in ("all_reduce", "all_gather", "reduce_scatter"):
            if kind in name:
                out[kind] = out.get(kind, 0) + n
    return out


def dtensor_llama(model, mesh, sequence_parallel: bool = False):
    """``model`` (a single-process ``Llama``) made tensor parallel by PyTorch's DTensor, in
    place: ``parallelize_module`` with separate q/k/v and gate/up projections (ColwiseParallel),
    o/down RowwiseParallel, the embedding rowwise (vocab-parallel), lm_head colwise with its
    logits left sharded for ``loss_parallel``; with ``sequence_parallel`` the norms run on
    sequence shards (SequenceParallel) and the blocks gather their input."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput,
                                                   RowwiseParallel, SequenceParallel,
                                                   parallelize_module)

    t = mesh.size()
    between = Shard(1) if sequence_parallel else Replicate()  # the residual stream's layout
    for layer in model.model.layers:
        attn = layer.self_attn
        attn.n_heads, attn.n_kv_heads = attn.n_heads // t, attn.n_kv_heads // t  # local heads
        plan = {f"self_attn.{p}_proj": ColwiseParallel() for p in "qkv"}
        plan.update({f"mlp.{p}_proj": ColwiseParallel() for p in ("gate", "up")})
        plan["self_attn.o_proj"] = RowwiseParallel(output_layouts=between)
        plan["mlp.down_proj"] = RowwiseParallel(output_layouts=between)
        if sequence_parallel:
            plan["input_layernorm"] = SequenceParallel()
            plan["post_attention_layernorm"] = SequenceParallel()
            # the block's input gathered once as a DTensor; its gradient, summed over q, k, v
            # (gate, up) as a Partial DTensor, is reduce-scattered once (torchtitan's plan)
            plan["self_attn"] = PrepareModuleInput(input_layouts=(Shard(1), None, None),
                                                   desired_input_layouts=(Replicate(), None, None))
            plan["mlp"] = PrepareModuleInput(input_layouts=(Shard(1),),
                                             desired_input_layouts=(Replicate(),))
        parallelize_module(layer, mesh, plan)
    top = {"model.embed_tokens": RowwiseParallel(input_layouts=Replicate(), output_layouts=between),
           "lm_head": ColwiseParallel(input_layouts=between, output_layouts=Shard(-1),
                                      use_local_output=False)}
    if sequence_parallel:
        top["model.norm"] = SequenceParallel()
    parallelize_module(model, mesh, top)
    return model


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def llama_tp(shape: Any = "tiny", batch: int = 2, seq: int = 16, seed: int = 0,
             dtype: str = "float64", memory_dtype: str = "bfloat16") -> dict[str, Any]:
    """One forward and backward of the LLaMA ``shape`` on this rank, four ways, from the same
    full state_dict: one process (``"single"``, every rank computes it), ``tensor_parallel.apply``
    without and with sequence parallel (``"tp"``, ``"sp"``), DTensor without and with
    (``"dtensor"``, ``"dtensor-sp"``). Float64 weights (``dtype``).

    Each run: {"loss", "logits" (this rank's vocabulary shard, B × T × V/t), "grads" (full,
    gathered), "param_bytes" (this rank's parameters in ``memory_dtype``), "saved_bytes"
    (what autograd keeps, ``activations.measure``, weights in ``memory_dtype``)}; ours also
    "comm" (the records of forward + backward, tags tp-forward / tp-backward), DTensor's
    "counts" ({"forward"|"backward": {op: calls}}, ``CommDebugMode``).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.debug import CommDebugMode
    from torch.distributed.tensor.parallel import loss_parallel

    from ...measure import activations
    from ...model.llama import Llama
    from .. import tensor_parallel

    shape = resolve(shape, "shape")
    check.positive_int("batch", batch)
    check.positive_int("seq", seq)
    check.integer("seed", seed, 0)
    dtypes = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}
    check.one_of("dtype", dtype, tuple(dtypes))
    check.one_of("memory_dtype", memory_dtype, tuple(dtypes))
    r, n = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(seed)
    single = Llama(shape).to(dtypes[dtype])
    state = {k: v.detach().clone() for k, v in single.state_dict().items()}
    ids = torch.randint(0, shape.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))

    def fresh(d=dtype):
        m = Llama(shape).to(dtypes[d])
        m.load_state_dict({k: v.to(dtypes[d]) for k, v in state.items()})
        return m

    def nbytes(m):
        return sum(_full_local(p).numel() * _full_local(p).element_size() for p in m.parameters())

    out: dict[str, Any] = {"rank": r, "world_size": n, "ids": ids}
    res = single(ids, labels=ids)
    res.loss.backward()
    out["single"] = {"loss": res.loss.detach(), "logits": res.logits.detach(),
                     "grads": {k: p.grad.detach().clone() for k, p in single.named_parameters()},
                     "param_bytes": nbytes(fresh(memory_dtype)),
                     "saved_bytes": activations.measure(fresh(memory_dtype), ids, labels=ids).total_bytes}

    for name, sp in (("tp", False), ("sp", True)):
        model = tensor_parallel.apply(fresh(), None, sequence_parallel=sp)
        tensor_parallel.load_full_state_dict(model, state)
        with comm.counting() as log:
            res = model(ids, labels=ids)
            res.loss.backward()
        small = tensor_parallel.apply(fresh(memory_dtype), None, sequence_parallel=sp)
        out[name] = {"loss": res.loss.detach(), "logits": res.logits.detach(),
                     "grads": tensor_parallel.full_grads(model), "comm": list(log.records),
                     "param_bytes": nbytes(small),
                     "saved_bytes": activations.measure(small, ids, labels=ids).total_bytes}

    mesh = init_device_mesh("cpu", (n,))
    for name, sp in (("dtensor", False), ("dtensor-sp", True)):
        model = dtensor_llama(fresh(), mesh, sequence_parallel=sp)
        with loss_parallel():
            with CommDebugMode() as fwd:
                res = model(ids, labels=ids)
            with CommDebugMode() as bwd:
                res.loss.backward()
        logits = res.logits.to_local() if hasattr(res.logits, "to_local") else res.logits
        out[name] = {"loss": _full(res.loss).detach(), "logits": logits.detach(),
                     "grads": {k: _full(p.grad).detach() for k, p in model.named_parameters()},
                     "counts": {"forward": comm_counts(fwd), "backward": comm_counts(bwd)},
                     "param_bytes": nbytes(dtensor_llama(fresh(memory_dtype), mesh, sp))}
    return out


def _full_local(p):
    """A parameter's local part (DTensor: this rank's shard)."""
    return p.to_local() if hasattr(p, "to_local") else p
