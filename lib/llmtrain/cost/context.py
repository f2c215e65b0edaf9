"""Context parallelism in closed form (上下文并行): who holds which tokens, the causal work of
each ring step, the bytes each rank sends, the activations each rank keeps. No torch.

A cp group splits every sequence of T tokens over cp ranks (``parallel.context_parallel`` runs
it). Two layouts:

    contiguous   rank r holds tokens [r·T/cp, (r+1)·T/cp)
    zigzag       T cut in 2·cp chunks of T/(2cp); rank r holds chunks r and 2cp−1−r

Under a causal mask a query attends to keys at positions ≤ its own, so with the contiguous
layout the last rank has cp² − … times the work of the first; zig-zag pairs an early chunk with
a late one and every rank does the same work (``causal_pairs``).

Ring attention (Liu et al. 2023, arXiv 2310.01889): queries stay, the K/V blocks travel around
the ring; at step i rank r holds the block of rank (r − i) mod cp (``ring_owner``). Per decoder
layer and rank, with kv = B·(T/cp)·N_kv·d elements (one of K or V):

    forward    (cp−1) shifts of K and V                          2(cp−1)·kv·b bytes
    backward   (cp−1) shifts of K, V and their gradient buffers,
               then 1 shift of the gradients home                 2(cp−1)·kv·b + 2cp·kv·g

(b: bytes of the model dtype, g: of the gradient accumulators, fp32 for 16-bit models).
DeepSpeed-Ulysses (Jacobs et al. 2023, arXiv 2309.14509): four all-to-alls turn sequence shards
into head shards and back (q, k, v in, the output out); each sends (cp−1)/cp of its input, in
forward and again in backward. ``sent_per_layer`` gives both; the counted runs equal them
(tests/test_context_parallel.py).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from .. import check
from ..model.shapes import resolve
from ..units import dtype_bytes
from . import activations

__all__ = ["LAYOUTS", "METHODS", "chunk_tokens", "chunks", "positions", "ring_owner",
           "pairs_between", "ring_schedule", "causal_pairs", "element_bytes", "sent_per_layer",
           "sent_per_step", "long_context_bytes", "cp_saved_bytes"]

LAYOUTS = ("zigzag", "contiguous")
METHODS = ("ring", "ulysses")


def element_bytes(dtype: Any) -> int:
    """Bytes per element of ``dtype``: ``units.dtype_bytes`` (fp32, bf16, fp16) plus 8 for
    float64 (the equality runs). Checked: tests/test_context_parallel.py (torch's itemsize)."""
    if isinstance(dtype, str) and dtype in ("fp64", "float64") or str(dtype) == "torch.float64":
        return 8
    return dtype_bytes(dtype)


def chunk_tokens(seq: int, cp: int, layout: str = "zigzag") -> int:
    """Tokens per chunk: T/cp (contiguous) or T/(2cp) (zigzag); ValueError naming seq when it
    does not divide (the two layouts above; tests/test_context_parallel.py::
    test_formulas_reject_bad_arguments)."""
    check.positive_int("seq", seq)
    check.positive_int("cp", cp)
    check.one_of("layout", layout, LAYOUTS)
    parts = cp * (2 if layout == "zigzag" else 1)
    if seq % parts:
        what = "2·cp" if layout == "zigzag" else "cp"
        raise ValueError(f"seq must be a multiple of {what} = {parts} for the {layout} layout, "
                         f"got seq={seq}")
    return seq // parts


def chunks(seq: int, cp: int, rank: int, layout: str = "zigzag") -> list[tuple[int, int]]:
    """The [start, stop) token ranges rank ``rank`` holds, in the order it holds them
    (zigzag: chunks r and 2cp−1−r; contiguous: one range); they partition the sequence:
    tests/test_context_parallel.py::test_layouts_partition_the_sequence."""
    c = chunk_tokens(seq, cp, layout)
    check.integer("rank", rank, 0, cp - 1)
    if layout == "contiguous":
        return [(rank * c, (rank + 1) * c)]
    return [(rank * c, (rank + 1) * c), ((2 * cp - 1 - rank) * c, (2 * cp - rank) * c)]


def positions(seq: int, cp: int, rank: int, layout: str = "zigzag") -> list[int]:
    """The global positions of rank ``rank``'s tokens, in its order (RoPE and the causal mask
    use these): ``chunks`` flattened (tests/test_context_parallel.py::
    test_layouts_partition_the_sequence; the runs equal one process with them)."""
    return [t for a, b in chunks(seq, cp, rank, layout) for t in range(a, b)]


def ring_owner(step: int, rank: int, cp: int) -> int:
    """Whose K/V block rank ``rank`` holds at ring step ``step``: (rank − step) mod cp (each step
    every rank passes its block to rank + 1). Checked by the run: tests/test_context_parallel.py."""
    check.positive_int("cp", cp)
    check.integer("step", step, 0, cp - 1)
    check.integer("rank", rank, 0, cp - 1)
    return (rank - step) % cp


def pairs_between(queries: tuple[int, int], keys: tuple[int, int]) -> int:
    """Causal (query, key) pairs with key ≤ query, queries in [a, b), keys in [c, d):
    Σ_q clamp(q − c + 1, 0, d − c). Checked against counting every pair:
    tests/test_context_parallel.py::test_pairs_between_counts_every_pair."""
    (a, b), (c, d) = queries, keys
    for name, (lo, hi) in (("queries", queries), ("keys", keys)):
        check.integer(f"{name} start", lo, 0)
        check.integer(f"{name} stop", hi, lo)
    total = 0
    lo, hi = max(a, c), min(b, d)  # q in [c, d): q − c + 1 keys
    if lo < hi:
        total += sum(range(lo - c + 1, hi - c + 1))
    lo = max(a, d)  # q ≥ d: all d − c keys
    if lo < b:
        total += (b - lo) * (d - c)
    return total


def ring_schedule(seq: int, cp: int, layout: str = "zigzag") -> list[list[tuple[int, int]]]:
    """[step][rank] = (owner, pairs): at each ring step, whose K/V block each rank holds and how
    many causal (query, key) score entries it computes with it (0: the block is skipped).
    Checked: the run skips exactly the 0 blocks (tests/test_context_parallel.py)."""
    chunk_tokens(seq, cp, layout)
    mine = [chunks(seq, cp, r, layout) for r in range(cp)]
    out = []
    for i in range(cp):
        row = []
        for r in range(cp):
            o = ring_owner(i, r, cp)
            row.append((o, sum(pairs_between(q, k) for q in mine[r] for k in mine[o])))
        out.append(row)
    return out


def causal_pairs(seq: int, cp: int, layout: str = "zigzag") -> list[int]:
    """Causal score entries each rank computes over all steps (its share of T(T+1)/2): the
    work of attention per rank. Zigzag: all equal; the sum is T(T+1)/2:
    tests/test_context_parallel.py::test_zigzag_balances_causal_work."""
    sched = ring_schedule(seq, cp, layout)
    return [sum(step[r][1] for step in sched) for r in range(cp)]


def _sizes(shape, batch, seq, cp, method, dtype):
    shape = resolve(shape, "shape")
    check.positive_int("batch", batch)
    check.positive_int("cp", cp)
    check.one_of("method", method, METHODS)
    if seq % cp:
        check.positive_int("seq", seq)
        raise ValueError(f"seq must be a multiple of cp = {cp}, got seq={seq}")
    check.positive_int("seq", seq)
    if method == "ulysses":
        for field in ("num_heads", "num_kv_heads"):
            if getattr(shape, field) % cp:
                raise ValueError(f"cp must divide {field}={getattr(shape, field)} for Ulysses "
                                 f"(whole heads per rank), got cp={cp}")
    return shape, element_bytes(dtype)


def sent_per_layer(shape, batch: int, seq: int, cp: int, *, method: str = "ring",
                   dtype: Any = "bf16") -> dict[str, Fraction]:
    """{"forward", "backward"}: bytes one rank sends for one decoder layer's attention.

    ring (Liu et al. 2023; the backward of ``parallel.context_parallel.RingAttention``):
    kv = B·(T/cp)·N_kv·d; forward 2(cp−1)·kv·b; backward 2(cp−1)·kv·b + 2cp·kv·g (g = 4 for
    16-bit models, else b); 0 for cp = 1. ulysses (Jacobs et al. 2023): (cp−1)/cp ·
    B·(T/cp)·d·(2N + 2N_kv)·b each way. Counted:
    tests/test_context_parallel.py::test_counted_bytes_equal_the_formulas.
    """
    shape, b = _sizes(shape, batch, seq, cp, method, dtype)
    t, d, n, nkv = seq // cp, shape.d_head, shape.num_heads, shape.num_kv_heads
    if cp == 1:
        return {"forward": Fraction(0), "backward": Fraction(0)}
    if method == "ring":
        kv = batch * t * nkv * d
        g = max(b, 4)
        return {"forward": Fraction(2 * (cp - 1) * kv * b),
                "backward": Fraction(2 * (cp - 1) * kv * b + 2 * cp * kv * g)}
    each = Fraction(cp - 1, cp) * batch * t * d * (2 * n + 2 * nkv) * b
    return {"forward": each, "backward": each}


def sent_per_step(shape, batch: int, seq: int, cp: int, *, method: str = "ring",
                  dtype: Any = "bf16", params: int = 0) -> dict[str, Fraction]:
    """Bytes one rank sends in one forward+backward with the loss, by ``comm`` tag: "cp-forward"
    and "cp-backward" (L × ``sent_per_layer``), "cp-loss" (one all-reduce of the loss sum and
    token count: 2 elements of g bytes), "cp-grads" (the all-reduce summing ``params``
    gradients of b bytes over cp, ring model 2(cp−1)/cp·M). Counted: tests/test_context_parallel.py."""
    shape, b = _sizes(shape, batch, seq, cp, method, dtype)
    check.integer("params", params, 0)
    per = sent_per_layer(shape, batch, seq, cp, method=method, dtype=dtype)
    ring = Fraction(2 * (cp - 1), cp)
    return {"cp-forward": shape.num_layers * per["forward"],
            "cp-backward": shape.num_layers * per["backward"],
            "cp-loss": ring * 2 * max(b, 4), "cp-grads": ring * params * b}


def long_context_bytes(shape, seq: int, *, batch: int = 1, cp: int = 1,
                       dtype: Any = "bf16") -> dict[str, int]:
    """Activation bytes of one rank at ``seq`` tokens split over ``cp`` (no recomputation), from
    ``activations.saved_bytes_terms`` (exact for the reference LLaMA) at seq/cp tokens:
    "layer (flash)" (SDPA's fused kernel: linear in T), "layer (eager)" (the explicit softmax
    keeps B·N·T² scores: quadratic), "scores (eager)" (that T² part), "model (flash)" and
    "model (eager)" (L layers + embedding, final norm, lm_head, loss). The eager scores at
    seq/cp are what a rank would hold if it materialised its own (T/cp)² block only.
    Checked: tests/test_context_parallel.py::test_long_context_numbers_for_llama3_405b."""
    shape = resolve(shape, "shape")
    check.positive_int("cp", cp)
    if seq % cp:
        check.positive_int("seq", seq)
        raise ValueError(f"seq must be a multiple of cp = {cp}, got seq={seq}")
    t = seq // cp
    flash = activations.saved_bytes_terms(shape, batch, t, dtype=dtype, attention="sdpa")
    eager = activations.saved_bytes_terms(shape, batch, t, dtype=dtype, attention="eager")
    b = dtype_bytes(dtype)
    scores = 4 * batch * shape.num_heads * t * t + (b * batch * shape.num_heads * t * t if b < 4
                                                     else 0) + t * t
    return {"layer (flash)": flash["one layer"], "layer (eager)": eager["one layer"],
            "scores (eager)": scores,
            "model (flash)": sum(v for k, v in flash.items() if k != "one layer"),
            "model (eager)": sum(v for k, v in eager.items() if k != "one layer")}


def cp_saved_bytes(shape, batch: int, seq: int, cp: int, *, method: str = "ring",
                   layout: str = "zigzag", dtype: Any = "fp32") -> int:
    """Bytes one rank of ``parallel.context_parallel.apply``'s LLaMA saves for backward in
    ``model(ids, labels)`` (ids its B × t tokens, t = T/cp): the dense reference (SDPA,
    ``activations.saved_bytes``) at t tokens, except (b, g as above; q = N·d, kv = N_kv·d):

        attention, ring     its own q, k, v (k, v not repeated to N heads) and log-sum-exp:
                            b·B·t·(q + 2kv) + g·B·N·t per layer, instead of SDPA's repeated
                            3b·B·t·q + 4·B·N·t (the output is o_proj's input in both)
        attention, ulysses  SDPA on N/cp heads × T tokens saves what it saves at t tokens, but
                            its head-sharded output is not o_proj's input (the sequence-sharded
                            one is): + b·B·t·q per layer; zigzag: + 2 int64 index vectors of T
        loss                all B·t rows (the dense loss drops each sequence's last position)
                            and the all-reduced (sum, count): 4B·t·V + 8B·t + 4 + 2g

    Measured: tests/test_context_parallel.py::test_saved_activations_equal_cp_saved_bytes."""
    shape, b = _sizes(shape, batch, seq, cp, method, dtype)
    chunk_tokens(seq, cp, layout)
    t, L, N, V = seq // cp, shape.num_layers, shape.num_heads, shape.vocab_size
    q, kv, g, B = shape.q_size, shape.kv_size, max(b, 4), batch
    dense = activations.saved_bytes_terms(shape, B, t, dtype=dtype, attention="sdpa")
    total = sum(v for k, v in dense.items() if k != "one layer") - dense["loss"]
    if method == "ring":
        total += L * (b * B * t * (q + 2 * kv) + g * B * N * t - 3 * b * B * t * q - 4 * B * N * t)
    else:
        total += L * (b * B * t * q + (2 * 8 * seq if layout == "zigzag" else 0))
    return total + 4 * B * t * V + 8 * B * t + 4 + 2 * g
