"""llmtrain.parallel.tensor_parallel on real gloo ranks: each parallel layer equals its torch
layer, the TP LLaMA (with and without sequence parallel) equals one process and DTensor, the
collectives counted equal ``tp_comm.comm_per_layer``/``comm_per_model``, parameter bytes equal
``memory.params_per_gpu``, saved activations equal ``activation_formulas.tp_saved_bytes``.

One launch of 2 ranks does every check (module fixture ``two``); ``slow``: the same on 4.
One launch of 3 ranks checks a shape tp does not divide (vocabulary 100, MLP 128: uneven
shards, ``mesh.shard_range``) with and without SP against one process, its counted
collectives and the busiest rank's parameter bytes. The layer checks split 9 outputs, 13
inputs and a vocabulary of 17 (uneven on 2, 3 and 4 ranks), the biased model a vocabulary of
97 and an MLP of 101. The oracle for every shard is ``torch.tensor_split``.
Everything compared to one process runs in float64 (norms, softmax and loss included), so
"equal" means equal up to float reassociation: < 1e-12 (measured gaps in comments).
"""

from __future__ import annotations

import collections
from fractions import Fraction

import pytest
import sympy
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from llmtrain.cost import activations as activation_formulas, memory
from llmtrain.model.llama import Llama
from llmtrain.parallel import comm, launch
from llmtrain.parallel.groups import build
from llmtrain.parallel import tensor_parallel as tp
from llmtrain.parallel import tp_comm
from llmtrain.cost.layout import ParallelDims
from llmtrain.model.shapes import ModelShape

F64 = torch.float64
B, T = 2, 8  # batch, seq: seq divisible by 2 and 4 (sequence parallel)
# odd GQA shapes: 6 heads sharing 2 kv heads (t = 2); 8 heads, 4 kv heads (t = 4)
SHAPES = {
    2: ModelShape(vocab_size=64, hidden_size=48, num_layers=3, num_heads=6, num_kv_heads=2,
                  intermediate_size=100, max_seq_len=32, name="odd-gqa-2"),
    4: ModelShape(vocab_size=96, hidden_size=64, num_layers=3, num_heads=8, num_kv_heads=4,
                  intermediate_size=136, max_seq_len=32, name="odd-gqa-4"),
}
BIASED = SHAPES[2].replace(vocab_size=97, intermediate_size=101, num_layers=2, num_heads=8,
                           num_kv_heads=4, attention_bias=True, o_bias=True, mlp_bias=True,
                           tie_embeddings=True, name="biased-tied")  # 97, 101: uneven at t = 2, 4
# tp = 3 divides the heads (6) and kv heads (3) but not the vocabulary (100: 34, 33, 33 rows)
# or the MLP (128: 43, 43, 42 columns); seq 6 divisible by 3 for SP
UNEVEN = ModelShape(vocab_size=100, hidden_size=48, num_layers=2, num_heads=6, num_kv_heads=3,
                    intermediate_size=128, max_seq_len=32, name="uneven-3")
UNEVEN_BIASED = UNEVEN.replace(attention_bias=True, o_bias=True, mlp_bias=True, name="uneven-b")
T_UNEVEN = 6
# (tp that does not divide num_kv_heads): the shape apply must refuse, naming num_kv_heads
BAD_KV = {2: SHAPES[2].replace(num_kv_heads=1), 4: SHAPES[4].replace(num_kv_heads=2)}
# saved-activation configurations measured on every rank: (sequence_parallel, dtype, attention)
SAVED = [(False, torch.bfloat16, "sdpa"), (True, torch.bfloat16, "sdpa"),
         (False, torch.float32, "eager"), (True, torch.float32, "eager"),
         (True, torch.float16, "sdpa"), (False, F64, "sdpa"), (True, F64, "eager")]


# ---------------------------------------------------------------- what the ranks run (importable)

def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach() - b.detach()).abs().max().item()


def _mine(x: torch.Tensor, dim: int, group=None) -> torch.Tensor:
    """This rank's shard of x along dim: torch.tensor_split's rule (the oracle)."""
    return torch.tensor_split(x, dist.get_world_size(group), dim)[dist.get_rank(group)]


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_()


def layer_errors() -> dict[str, float]:
    """Max |difference| of each parallel layer from its torch layer: forward, input grad,
    weight and bias grads (this rank's shards), float64, ones shape (3, 12, ·); 9 outputs,
    13 inputs and 17 vocabulary rows, so the shards are uneven on 2, 3 and 4 ranks."""
    torch.manual_seed(1)  # the same full layers and inputs on every rank
    err: dict[str, float] = {}
    x, dy = torch.randn(3, 12, 13, dtype=F64), torch.randn(3, 12, 9, dtype=F64)
    for sp in (False, True):
        for gather in (False, True):
            lin = nn.Linear(13, 9, dtype=F64)
            col = tp.ColumnParallelLinear.from_linear(lin, None, sequence_parallel=sp,
                                                      gather_output=gather)
            xr, xi = _leaf(x), _leaf(_mine(x, 1) if sp else x)
            ref, y = lin(xr), col(xi)
            (ref * dy).sum().backward()
            (y * (dy if gather else _mine(dy, -1))).sum().backward()
            k = f"column sp={sp} gather={gather}"
            err[k + " forward"] = _maxdiff(y, ref if gather else _mine(ref, -1))
            err[k + " grad x"] = _maxdiff(xi.grad, _mine(xr.grad, 1) if sp else xr.grad)
            err[k + " grad W"] = _maxdiff(col.weight.grad, _mine(lin.weight.grad, 0))
            err[k + " grad b"] = _maxdiff(col.bias.grad, _mine(lin.bias.grad, 0))
        lin = nn.Linear(13, 9, dtype=F64)
        row = tp.RowParallelLinear.from_linear(lin, None, sequence_parallel=sp)
        xr, xi = _leaf(x), _leaf(_mine(x, -1))
        ref, y = lin(xr), row(xi)
        (ref * dy).sum().backward()
        (y * (_mine(dy, 1) if sp else dy)).sum().backward()
        k = f"row sp={sp}"
        err[k + " forward"] = _maxdiff(y, _mine(ref, 1) if sp else ref)
        err[k + " grad x"] = _maxdiff(xi.grad, _mine(xr.grad, -1))
        err[k + " grad W"] = _maxdiff(row.weight.grad, _mine(lin.weight.grad, 1))
        err[k + " grad b"] = _maxdiff(row.bias.grad, lin.bias.grad)
        emb = nn.Embedding(17, 13, dtype=F64)
        vemb = tp.VocabParallelEmbedding.from_embedding(emb, None, sequence_parallel=sp)
        ids = torch.randint(0, 17, (3, 12))
        ref, y = emb(ids), vemb(ids)
        dye = torch.randn(3, 12, 13, dtype=F64)
        (ref * dye).sum().backward()
        (y * (_mine(dye, 1) if sp else dye)).sum().backward()
        err[f"embedding sp={sp} forward"] = _maxdiff(y, _mine(ref, 1) if sp else ref)
        err[f"embedding sp={sp} grad W"] = _maxdiff(vemb.weight.grad, _mine(emb.weight.grad, 0))
    logits = torch.randn(3, 5, 17, dtype=F64) * 3
    labels = torch.randint(0, 17, (3, 5))
    labels[0, 1] = labels[2, 4] = -100  # ignored
    for vocab in (17, None):  # the shard located by vocab_size, or by gathering the widths
        zr, zi = _leaf(logits), _leaf(_mine(logits, -1))
        ref = F.cross_entropy(zr.flatten(0, 1), labels.flatten(), ignore_index=-100)
        loss = tp.vocab_parallel_cross_entropy(zi, labels, vocab_size=vocab)
        ref.backward()
        loss.backward()
        err[f"cross entropy vocab_size={vocab} forward"] = _maxdiff(loss, ref)
        err[f"cross entropy vocab_size={vocab} grad"] = _maxdiff(zi.grad, _mine(zr.grad, -1))
        # gather_logits: the whole (3, 5, 17) from the shards, and back (its backward)
        zi = _leaf(_mine(logits, -1))
        whole = tp.gather_logits(zi, None, vocab)
        (whole * logits).sum().backward()
        err[f"gather_logits vocab_size={vocab} forward"] = (
            _maxdiff(whole, logits) if whole.shape == logits.shape else float("inf"))
        err[f"gather_logits vocab_size={vocab} grad"] = _maxdiff(zi.grad, _mine(logits, -1))
    return err


def _reference(shape, seed=0, attn="sdpa", dtype=F64) -> Llama:
    torch.manual_seed(seed)
    return Llama(shape, attn_impl=attn).to(dtype)


def _batch(shape, step: int, seq: int = T) -> torch.Tensor:
    return torch.randint(0, shape.vocab_size, (B, seq),
                         generator=torch.Generator().manual_seed(step))


def _loss64(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The single model's loss (as Llama.forward's) spelled out in the logits' dtype."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def _gather_vocab(logits: torch.Tensor, vocab: int, group=None) -> torch.Tensor:
    """The whole logits by torch's all_gather of the padded shards (independent of ours)."""
    n, r = dist.get_world_size(group), dist.get_rank(group)
    widths = [len(p) for p in torch.tensor_split(torch.arange(vocab), n)]
    pad = F.pad(logits.detach(), (0, widths[0] - widths[r]))
    parts = [torch.empty_like(pad) for _ in range(n)]
    dist.all_gather(parts, pad.contiguous(), group=group)
    return torch.cat([p[..., :w] for p, w in zip(parts, widths)], -1)


def model_checks(shape, sp: bool, steps: int = 3, group=None, seq: int = T) -> dict:
    """TP (or TP+SP) LLaMA against one process: logits (gathered by torch and by
    ``gather_logits``), loss, every gradient, SGD steps; the collectives of one step; this
    rank's parameter bytes."""
    ref = _reference(shape)
    full = {k: v.clone() for k, v in ref.state_dict().items()}
    model = tp.apply(_reference(shape, seed=1), group, sp)  # other weights, then the full dict
    tp.load_full_state_dict(model, full)
    out: dict = {"roundtrip": max(_maxdiff(v, full[k]) for k, v in tp.full_state_dict(model).items()),
                 "keys": sorted(tp.full_state_dict(model)) == sorted(full)}
    ids = _batch(shape, 0, seq)
    ro = ref(ids, labels=ids)  # Llama.forward's loss: float64 for a float64 model
    ref_loss = ro.loss
    ref_loss.backward()
    with comm.counting() as log:
        o = model(ids, labels=ids)
        o.loss.backward()
    out["records"] = log.records
    out["logits shard"] = tuple(o.logits.shape)
    out["logits"] = _maxdiff(_gather_vocab(o.logits, shape.vocab_size, group), ro.logits)
    whole = model.gather_logits(o.logits)
    out["gather_logits"] = (_maxdiff(whole, ro.logits) if whole.shape == ro.logits.shape
                            else float("inf"))
    out["loss"] = abs(o.loss.item() - ref_loss.item())
    grads = tp.full_grads(model)
    out["grads"] = max(_maxdiff(grads[k], p.grad) for k, p in ref.named_parameters())
    out["grad scale"] = max(p.grad.abs().max().item() for p in ref.parameters())
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt_ref.step()
    opt.step()
    for step in range(1, steps):  # more steps on new batches
        ids = _batch(shape, step, seq)
        opt_ref.zero_grad()
        opt.zero_grad()
        ref(ids, labels=ids).loss.backward()
        model(ids, labels=ids).loss.backward()
        opt_ref.step()
        opt.step()
    after = tp.full_state_dict(model)
    out["weights after SGD"] = max(_maxdiff(after[k], v) for k, v in ref.state_dict().items())
    out["moved"] = max(_maxdiff(ref.state_dict()[k], v) for k, v in full.items())
    out["param bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    out["tp rank"] = dist.get_rank(group)
    return out


def dtensor_checks(shape, sp: bool) -> dict:
    """The same weights through DTensor (parallelize_module, loss_parallel): loss, grads,
    and CommDebugMode's count for layer 0 and for everything."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.debug import CommDebugMode
    from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput,
                                                   RowwiseParallel, SequenceParallel,
                                                   loss_parallel, parallelize_module)

    n = dist.get_world_size()
    mesh = init_device_mesh("cpu", (n,))
    ids = _batch(shape, 0)
    ours = tp.apply(_reference(shape), None, sp)
    ours(ids, labels=ids).loss.backward()
    our_grads = tp.full_grads(ours)
    ours_loss = ours(ids, labels=ids).loss.item()

    m = _reference(shape)
    if sp:
        top = {"model.embed_tokens": RowwiseParallel(input_layouts=Replicate(),
                                                     output_layouts=Shard(1)),
               "model.norm": SequenceParallel(),
               "lm_head": ColwiseParallel(input_layouts=Shard(1), use_local_output=False)}
    else:
        top = {"model.embed_tokens": RowwiseParallel(input_layouts=Replicate()),
               "lm_head": ColwiseParallel(use_local_output=False)}
    parallelize_module(m, mesh, top)
    for layer in m.model.layers:
        plan = {f"self_attn.{p}": ColwiseParallel() for p in ("q_proj", "k_proj", "v_proj")}
        plan |= {f"mlp.{p}": ColwiseParallel() for p in ("gate_proj", "up_proj")}
        if sp:
            plan |= {"input_layernorm": SequenceParallel(),
                     "post_attention_layernorm": SequenceParallel(),
                     "self_attn": PrepareModuleInput(input_layouts=(Shard(1), None, None),
                                                     desired_input_layouts=(Replicate(), None, None)),
                     "mlp": PrepareModuleInput(input_layouts=(Shard(1),),
                                               desired_input_layouts=(Replicate(),)),
                     "self_attn.o_proj": RowwiseParallel(output_layouts=Shard(1)),
                     "mlp.down_proj": RowwiseParallel(output_layouts=Shard(1))}
        else:
            plan |= {"self_attn.o_proj": RowwiseParallel(), "mlp.down_proj": RowwiseParallel()}
        parallelize_module(layer, mesh, plan)
        layer.self_attn.n_heads //= n  # Attention.forward views its local heads
        layer.self_attn.n_kv_heads //= n
    mode = CommDebugMode()
    with mode:
        logits = m.lm_head(m.model(ids))
        with loss_parallel():
            loss = _loss64(logits, ids)
            loss.backward()
    counts = {where: {d: {str(op).split(".")[-1]: c for op, c in ops.items()}
                      for d, ops in mode.comm_module_counts[where].items()}
              for where in ("Global", "LlamaModel.layers.0")}
    grads = {k: p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
             for k, p in m.named_parameters()}
    return {"loss": abs(loss.full_tensor().item() - ours_loss),
            "grads": max(_maxdiff(grads[k], g) for k, g in our_grads.items()),
            "counts": counts}


def saved_checks(shape, configs) -> list[int]:
    """``activations.measure(model, ids, labels=ids)`` of the TP model, on this rank."""
    from llmtrain.measure import activations

    out = []
    for sp, dtype, attn in configs:
        model = tp.apply(_reference(shape, attn=attn, dtype=dtype), None, sp)
        ids = _batch(shape, 0)
        out.append(activations.measure(model, ids, labels=ids).total_bytes)
    return out


def _short_state_dict(shape) -> None:
    full = Llama(shape).state_dict()
    full["lm_head.weight"] = full["lm_head.weight"][:-1]  # one vocabulary row short
    tp.load_full_state_dict(tp.apply(Llama(shape), None), full)


def bad_inputs(shape_bad_kv, shape) -> dict[str, str]:
    n = dist.get_world_size()
    two = [nn.Linear(4, 4), nn.Linear(4, 4)]
    msgs = {}
    for key, fn in (("num_kv_heads", lambda: tp.apply(Llama(shape_bad_kv), None)),
                    ("seq", lambda: tp.apply(Llama(shape), None, True)(
                        torch.zeros(1, 7, dtype=torch.long))),
                    ("twice", lambda: tp.apply(tp.apply(Llama(shape), None), None)),
                    # a rank without a vocabulary row: refused (ParallelDims.check)
                    ("vocab_size", lambda: tp.apply(Llama(shape.replace(vocab_size=n - 1)), None)),
                    ("gather_output", lambda: tp.ColumnParallelLinear.from_linears(
                        two, None, names=("a", "b"), gather_output=True)),
                    # 3 rows here cannot be this rank's shard of 4n rows (4 each)
                    ("num_embeddings", lambda: tp.VocabParallelEmbedding(
                        torch.zeros(3, 4), None, num_embeddings=4 * n)),
                    ("state_dict", lambda: _short_state_dict(shape))):
        try:
            fn()
            msgs[key] = "no error"
        except ValueError as e:
            msgs[key] = str(e)
    return msgs


def everything(n: int) -> dict:
    """All checks of one world size in one launch (process start dominates on 2 cores)."""
    shape = SHAPES[n]
    out = {"layers": layer_errors(), "bad": bad_inputs(BAD_KV[n], shape),
           "saved": saved_checks(shape, SAVED)}
    for sp in (False, True):
        out[("model", sp)] = model_checks(shape, sp)
        out[("model L=1", sp)] = model_checks(shape.replace(num_layers=1), sp, steps=1)["records"]
        out[("dtensor", sp)] = dtensor_checks(shape, sp)
    # Qwen2-style q/k/v biases, o and MLP biases, tied embeddings: SP, 2 SGD steps
    out["biased"] = model_checks(BIASED, True, steps=2)
    if n == 4:  # a dp × tp layout: TP inside each tp group of ParallelDims(dp=2, tp=2)
        groups = build(ParallelDims(dp=2, tp=2))
        out["dp x tp"] = model_checks(SHAPES[2], True, steps=2, group=groups.tp)
    return out


def uneven(n: int) -> dict:
    """The checks of a shape tp does not divide (UNEVEN at tp = n = 3), in one launch."""
    out = {"layers": layer_errors()}
    for sp in (False, True):
        out[("model", sp)] = model_checks(UNEVEN, sp, steps=2, seq=T_UNEVEN)
    out["biased"] = model_checks(UNEVEN_BIASED, True, steps=1, seq=T_UNEVEN)
    return out


# ---------------------------------------------------------------- the assertions

@pytest.fixture(scope="module")
def two():
    return launch(everything, 2, 2, timeout=240)


@pytest.fixture(scope="module")
def three():
    return launch(uneven, 3, 3, timeout=240)


def _check_layers(ranks):
    for r in ranks:
        for what, e in r["layers"].items():
            assert e < 1e-12, (what, e)  # measured: ≤ 8.9e-16 (2 and 4 ranks)


def _records_as_counter(records) -> collections.Counter:
    return collections.Counter((r.op, r.tag, r.buffer_bytes) for r in records)


def _expected_counter(formula: dict, element_bytes: int) -> collections.Counter:
    out: collections.Counter = collections.Counter()
    for key, traffic in formula.items():
        op, direction = key[0], key[1]
        out[(op, f"tp-{direction}", traffic.elements * element_bytes)] += traffic.calls
    return out


def _check_models(ranks, n, shapes=None, seq=T):
    shapes = shapes or {"model": SHAPES[n], "biased": BIASED, "dp x tp": SHAPES[2]}
    for r in ranks:
        for key in [("model", False), ("model", True), "biased", "dp x tp"]:
            if key not in r:
                continue
            m = r[key]
            assert m["keys"] and m["roundtrip"] == 0.0
            tp_size = 2 if key == "dp x tp" else n
            vocab = shapes[key if isinstance(key, str) else "model"].vocab_size
            split = torch.tensor_split(torch.arange(vocab), tp_size)  # the oracle's rows
            assert m["logits shard"] == (B, seq, len(split[m["tp rank"]]))
            assert m["logits"] < 1e-12, m["logits"]  # measured ≤ 3.9e-16
            assert m["gather_logits"] < 1e-12, m["gather_logits"]
            assert m["loss"] < 1e-12, m["loss"]  # measured 0.0
            assert 1e-2 < m["grad scale"] < 1  # gradients of order 0.1: absolute = relative here
            assert m["grads"] < 1e-12, m["grads"]  # measured ≤ 3.9e-16
            assert m["moved"] > 1e-3  # the SGD steps did change the weights ...
            # ... equally: 3 steps at lr 0.5, measured ≤ 2.3e-15 (2 ranks), 2.7e-14 (4)
            assert m["weights after SGD"] < 1e-12, m["weights after SGD"]
            if key == "dp x tp":  # every collective on this rank's tp group, named by the mesh
                assert {(x.axis, x.world_size) for x in m["records"]} == {("tp", 2)}


def _check_comm(ranks, n, shape=None, seq=T):
    shape = shape or SHAPES[n]
    for r in ranks:
        for sp in (False, True):
            records = r[("model", sp)]["records"]
            assert {x.axis for x in records} == {"world"} and all(x.world_size == n for x in records)
            # whole model: L × comm_per_layer + embedding, lm_head, norms, cross entropy
            formula = tp_comm.comm_per_model(shape, n, sp, B, seq)
            assert _records_as_counter(records) == _expected_counter(formula, 8)
            if ("model L=1", sp) in r:
                # per layer: (count with L = 3) − (count with L = 1) = 2 × comm_per_layer
                per_two = _records_as_counter(records) - _records_as_counter(r[("model L=1", sp)])
                layer = tp_comm.comm_per_layer(n, sp, B, seq, shape.hidden_size)
                assert per_two == _expected_counter({k: tp_comm.Traffic(2 * v.calls, v.elements)
                                                     for k, v in layer.items()}, 8)
            # bytes sent with the ring factor: 2(t−1)/t of each all-reduce, (t−1)/t otherwise
            assert sum(x.sent_bytes for x in records) == sum(
                tp_comm.sent_bytes(k[0], v, n, 8) for k, v in formula.items())
            for x in records:
                factor = Fraction(2 * (n - 1), n) if x.op == "all_reduce" else Fraction(n - 1, n)
                assert x.sent_bytes == factor * x.buffer_bytes
        # TP: Megatron's 2 + 2 all-reduces of b·s·h per layer (fused qkv and gate/up)
        bsh = B * seq * shape.hidden_size
        assert tp_comm.comm_per_layer(n, False, B, seq, shape.hidden_size) == {
            ("all_reduce", "forward"): (2, bsh), ("all_reduce", "backward"): (2, bsh)}


def _check_dtensor(ranks, n):
    for r in ranks:
        for sp in (False, True):
            d = r[("dtensor", sp)]
            assert d["loss"] < 1e-12 and d["grads"] < 1e-12, d  # measured 0.0 and ≤ 2.5e-16
        # DTensor's separate q/k/v and gate/up: 2 forward, 5 backward all-reduces per layer
        # (one per column-parallel input), ours fused: 2 + 2 (comm_per_layer, fused or not)
        ours = tp_comm.comm_per_layer(n, False, B, T, SHAPES[n].hidden_size)
        separate = tp_comm.comm_per_layer(n, False, B, T, SHAPES[n].hidden_size, fused=False)
        layer = r[("dtensor", False)]["counts"]["LlamaModel.layers.0"]
        assert layer["forward"] == {"all_reduce": separate[("all_reduce", "forward")].calls}
        assert layer["backward"] == {"all_reduce": separate[("all_reduce", "backward")].calls}
        assert (separate[("all_reduce", "backward")].calls,
                ours[("all_reduce", "backward")].calls) == (5, 2)
        # loss_parallel: exactly the 3 all-reduces of our vocab-parallel cross entropy
        glob = r[("dtensor", False)]["counts"]["Global"]
        L = SHAPES[n].num_layers
        assert glob["forward"]["all_reduce"] == L * 2 + 1 + 3  # layers, embedding, loss
        # SP: the same forward as ours (2 all-gathers, 2 reduce-scatters); DTensor keeps the
        # gathered input for backward, so it needs no re-gather: 2 all-gathers backward vs our 4
        sp_layer = r[("dtensor", True)]["counts"]["LlamaModel.layers.0"]
        ours_sp = tp_comm.comm_per_layer(n, True, B, T, SHAPES[n].hidden_size)
        assert sp_layer["forward"] == {
            "all_gather_into_tensor": ours_sp[("all_gather", "forward")].calls,
            "reduce_scatter_tensor": ours_sp[("reduce_scatter", "forward")].calls}
        assert sp_layer["backward"] == {
            "all_gather_into_tensor": ours_sp[("all_gather", "backward")].calls - 2,
            "reduce_scatter_tensor": ours_sp[("reduce_scatter", "backward")].calls}


def _check_busiest(ranks, n, key, shape):
    """memory.params_per_gpu is the busiest rank's count: rank 0 (tensor_split gives the
    first ranks the extra rows), and, when tp divides everything, every rank's."""
    held = [r[key]["param bytes"] for r in ranks]  # fp64 weights: 8 bytes each
    assert max(held) == held[0] == 8 * memory.params_per_gpu(shape, ParallelDims(tp=n)), held
    even = shape.vocab_size % n == 0 and shape.intermediate_size % n == 0
    assert (len(set(held)) == 1) == even, held


def _check_bytes(ranks, n):
    shape = SHAPES[n]
    for sp in (False, True):
        _check_busiest(ranks, n, ("model", sp), shape)
    _check_busiest(ranks, n, "biased", BIASED)  # row biases whole; vocab 97, MLP 101 uneven
    for r in ranks:
        for (sp, dtype, attn), measured in zip(SAVED, r["saved"]):
            assert measured == activation_formulas.tp_saved_bytes(
                shape, B, T, n, sequence_parallel=sp, dtype=dtype, attention=attn), (sp, dtype, attn)


def _check_bad(ranks):
    n = len(ranks)
    for r in ranks:
        assert "num_kv_heads" in r["bad"]["num_kv_heads"]
        assert "seq" in r["bad"]["seq"] and "7" in r["bad"]["seq"]
        assert "already tensor parallel" in r["bad"]["twice"]
        assert r["bad"]["vocab_size"] == (f"tp must be at most vocab_size={n - 1} (every rank "
                                          f"holds at least one row), got tp={n}")
        assert r["bad"]["gather_output"].startswith("gather_output must be False for fused")
        assert r["bad"]["num_embeddings"].startswith("num_embeddings must be a size whose shard")
        assert r["bad"]["num_embeddings"].endswith(f"got num_embeddings={4 * n}")
        assert r["bad"]["state_dict"].startswith("state_dict['lm_head.weight'] must have")


def test_parallel_layers_equal_torch_layers(two):
    _check_layers(two)


def test_tp_llama_equals_one_process(two):
    _check_models(two, 2)


def test_tp_llama_equals_dtensor(two):
    _check_dtensor(two, 2)


def test_counted_communication_equals_the_formulas(two):
    _check_comm(two, 2)


def test_bytes_per_rank_equal_the_formulas(two):
    _check_bytes(two, 2)


def test_bad_layouts_are_refused_naming_the_field(two):
    _check_bad(two)


def test_uneven_shards_on_three_ranks(three):
    """Vocabulary 100 and MLP 128 on 3 ranks (34/33/33 rows, 43/43/42 columns): the layers,
    the TP and TP+SP LLaMA equal one process (logits gathered, loss, grads, 2 SGD steps),
    the collectives equal comm_per_model, the busiest rank holds params_per_gpu."""
    _check_layers(three)
    _check_models(three, 3, {"model": UNEVEN, "biased": UNEVEN_BIASED}, T_UNEVEN)
    _check_comm(three, 3, UNEVEN, T_UNEVEN)
    for key, shape in ((("model", False), UNEVEN), (("model", True), UNEVEN),
                       ("biased", UNEVEN_BIASED)):
        _check_busiest(three, 3, key, shape)


@pytest.mark.slow
def test_four_ranks():
    ranks = launch(everything, 4, 4, timeout=300)
    _check_layers(ranks)
    _check_models(ranks, 4)
    _check_dtensor(ranks, 4)
    _check_comm(ranks, 4)
    _check_bytes(ranks, 4)
    _check_bad(ranks)


# ---------------------------------------------------------------- formulas alone (no ranks)

def test_saved_bytes_split_reduces_to_korthikanti():
    """The split (whole + replicated [÷t under SP] + sharded/t) applied to Korthikanti et al.'s
    GPT layer terms gives their sbh(10 + 24/t + 5as/(ht)) and (sbh/t)(34 + 5as/h)."""
    s, b, h, a, t = sympy.symbols("s b h a t", positive=True)
    terms = activation_formulas.korthikanti_layer_terms(s, b, h, a)
    one = activation_formulas.tp_split_bytes(terms, 1, False)
    assert sympy.simplify(one - s * b * h * (34 + 5 * a * s / h)) == 0
    tp_ = activation_formulas.tp_split_bytes(terms, t, False)
    assert sympy.simplify(tp_ - s * b * h * (10 + 24 / t + 5 * a * s / (h * t))) == 0
    sp_ = activation_formulas.tp_split_bytes(terms, t, True)
    assert sympy.simplify(sp_ - s * b * h / t * (34 + 5 * a * s / h)) == 0
    # and on a shape, L such layers + the output layer equal korthikanti_bytes, to the byte
    shape = SHAPES[4]
    sv, bv, hv, av = T, B, shape.hidden_size, shape.num_heads
    for n in (1, 2, 4):
        for sp in ((False, True) if n > 1 else (False,)):
            layer = activation_formulas.tp_split_bytes(
                activation_formulas.korthikanti_layer_terms(sv, bv, hv, av), n, sp)
            total = shape.num_layers * layer + Fraction(4 * sv * bv * hv) * (
                1 + Fraction(shape.vocab_size, hv)) / n
            assert round(total) == activation_formulas.korthikanti_bytes(
                shape, B, T, tp=n, sp=sp), (n, sp)
    # LLaMA's layer (16-bit, SDPA, q = h, H' = 8h/3), same split, in Korthikanti's units:
    # sbh(16 + 8/h + (88/3 + 4a/h)/t), with SP (sbh/t)(16 + 8/h + 88/3 + 4a/h)
    shape = SHAPES[2].replace(hidden_size=96, num_heads=12, num_kv_heads=4, intermediate_size=256)
    h, a_ = shape.hidden_size, shape.num_heads
    for n in (1, 2, 4):
        for sp in (False, True):
            terms = activation_formulas.tp_saved_bytes_terms(shape, B, T, n, sp, "bf16")
            layer = activation_formulas.tp_split_bytes(
                {k: v for k, v in terms.items() if k.startswith("layer: ")}, n, sp)
            sbh = Fraction(T * B * h)
            want = (sbh * (16 + Fraction(8, h) + Fraction(88, 3) + Fraction(4 * a_, h)) / n if sp
                    else sbh * (16 + Fraction(8, h) + (Fraction(88, 3) + Fraction(4 * a_, h)) / n))
            assert layer == want, (n, sp)


def test_formulas_reject_bad_arguments():
    with pytest.raises(ValueError, match="seq"):
        tp_comm.comm_per_layer(4, True, 2, 6, 48)
    with pytest.raises(ValueError, match="tp"):
        tp_comm.comm_per_layer(0, False, 2, 8, 48)
    with pytest.raises(ValueError, match="num_kv_heads"):
        activation_formulas.tp_saved_bytes(BAD_KV[2], 2, 8, 2)
    with pytest.raises(ValueError, match="seq"):
        activation_formulas.tp_saved_bytes(SHAPES[2], 2, 7, 2, sequence_parallel=True)
    assert tp_comm.comm_per_layer(1, False, 2, 8, 48) == {}


def test_apply_needs_a_process_group():
    with pytest.raises(RuntimeError, match="torch.distributed"):
        tp.apply(Llama(SHAPES[2]))


def plan_on_one_rank() -> dict:
    """``apply`` on a world of one: which classes the plan put where, and the outputs."""
    torch.manual_seed(0)
    single = Llama(SHAPES[2]).double()
    model = tp.apply(Llama(SHAPES[2]).double(), None)
    tp.load_full_state_dict(model, single.state_dict())
    ids = torch.randint(0, SHAPES[2].vocab_size, (2, 8))
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    out = {"classes": [type(m).__name__ for m in (attn, mlp, attn.qkv_proj, attn.o_proj,
                                                  mlp.gate_up_proj, mlp.down_proj,
                                                  model.model.embed_tokens, model.lm_head)],
           "children": [[n for n, _ in m.named_children()] for m in (attn, mlp)],
           "logits": (model(ids).logits - single(ids).logits).abs().max().item(),
           "keys": list(tp.full_state_dict(model)) == list(single.state_dict())}
    try:
        tp.shard(model, {"lm_head": "diagonal"})
    except ValueError as e:
        out["bad"] = str(e)
    return out


def test_the_plan_shards_the_reference_modules():
    """The plan replaces modules of the reference model; Attention and MLP stay themselves (their
    fused path), in the single model's order, with its outputs and state_dict keys."""
    out = launch(plan_on_one_rank, 1)[0]
    assert out["classes"] == ["Attention", "MLP", "ColumnParallelLinear", "RowParallelLinear",
                              "ColumnParallelLinear", "RowParallelLinear",
                              "VocabParallelEmbedding", "ColumnParallelLinear"]
    assert out["children"] == [["qkv_proj", "o_proj"], ["gate_up_proj", "down_proj"]]
    assert out["logits"] < 1e-12 and out["keys"]
    assert out["bad"] == "plan['lm_head'] must be one of ('column', 'row', 'vocab'), got 'diagonal'"
