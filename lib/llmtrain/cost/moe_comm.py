"""What expert parallelism sends, in closed form (专家并行的通信量): experts per rank, capacity,
dropped tokens, the all-to-all bytes of one MoE layer, load imbalance.

Expert parallelism (GShard, Lepikhin et al. 2020, arXiv 2006.16668; Megatron-Core's MoE) puts
the E routed experts of a MoE layer on the ep ranks of a group, E/ep each, in order: rank r
holds experts [r·E/ep, (r+1)·E/ep). Each rank routes its own n tokens (top-k), then:

    counts    all-to-all of E integers: how many (token, slot) rows go to each expert
    dispatch  all-to-all of the rows: token t's hidden vector to the owner of each chosen expert
    combine   all-to-all back: each expert output to the rank its token came from

and backward the two reversed (the gradients of the rows, the same sizes). A row sent to an
expert on the rank itself stays there; only rows to OTHER ranks are sent. So, per rank, per
MoE layer and step, with ``loads[s][e]`` the rows rank s routes to expert e:

    dispatch sends   Σ_{e not on r} loads[r][e] · H · bytes      (combine-backward: the same)
    combine sends    Σ_{s ≠ r} Σ_{e on r} loads[s][e] · H · bytes (dispatch-backward: the same)

With perfectly uniform routing every rank sends k·n·(ep−1)/ep rows each way.

Capacity (Switch Transformer, Fedus et al. 2021, arXiv 2101.03961; Megatron-Core's
``get_capacity``): an expert takes at most ⌈c·k·n/E⌉ rows from each rank's n tokens (per rank,
before the dispatch, as Megatron-Core's router does with the rank's local tokens); rows past
it are dropped, in token order ("position" policy: the tokens at the end of the batch drop).

Arithmetic only (no torch): ``parallel.expert_parallel``'s counted all-to-alls equal these
(tests/test_expert_parallel.py).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

from .. import check

__all__ = ["expert_range", "expert_owner", "capacity", "dropped_rows", "rows_sent",
           "rows_received", "layer_bytes", "uniform_rows", "load_imbalance",
           "token_dispatch_bytes", "DEEPSEEK_V3", "MoEScale", "Bytes", "TAGS"]

# the comm tags of one MoE layer's all-to-alls (forward, then backward)
TAGS = ("counts", "dispatch", "combine", "combine-backward", "dispatch-backward")


def expert_range(num_experts: int, ep: int, rank: int) -> tuple[int, int]:
    """[start, stop) of the experts rank ``rank`` of the ep group holds: r·E/ep … (r+1)·E/ep
    (contiguous blocks, as Megatron-Core and torchtitan place them); E % ep == 0 (checked:
    tests/test_expert_parallel.py)."""
    num_experts = check.positive_int("num_experts", num_experts)
    ep = check.positive_int("ep", ep)
    if num_experts % ep:
        check.fail("num_experts", f"divisible by ep={ep} (each rank holds E/ep experts)",
                   num_experts)
    check.integer("rank", rank, 0, ep - 1)
    per = num_experts // ep
    return rank * per, (rank + 1) * per


def expert_owner(expert: int, num_experts: int, ep: int) -> int:
    """The ep rank holding ``expert``: expert // (E/ep) (the inverse of ``expert_range``;
    tests/test_expert_parallel.py)."""
    expert_range(num_experts, ep, 0)
    check.integer("expert", expert, 0, num_experts - 1)
    return expert // (num_experts // ep)


def capacity(tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """⌈c · k · n / E⌉: the most rows one expert takes from a rank's n tokens (Switch
    Transformer's expert capacity, Fedus et al. 2021; Megatron-Core's ``get_capacity`` called
    with n·k local rows). The factor is taken exactly as written (``Fraction(c)``)."""
    tokens = check.integer("tokens", tokens, 0)
    top_k = check.positive_int("top_k", top_k)
    num_experts = check.positive_int("num_experts", num_experts)
    if top_k > num_experts:
        check.fail("top_k", f"at most num_experts={num_experts}", top_k)
    check.positive_number("capacity_factor", capacity_factor)
    return math.ceil(Fraction(capacity_factor) * top_k * tokens / num_experts)


def dropped_rows(loads: list[int], cap: int | None) -> int:
    """Σ_e max(0, loads[e] − cap): the rows one rank's capacity drops (0 when ``cap`` is None)
    (the measured drops equal it: tests/test_expert_parallel.py)."""
    loads = check.sequence("loads", loads, item=lambda n, v: check.integer(n, v, 0))
    if cap is None:
        return 0
    cap = check.integer("cap", cap, 0)
    return sum(max(0, v - cap) for v in loads)


def _loads_matrix(loads_by_rank, ep: int) -> list[list[int]]:
    rows = check.sequence("loads_by_rank", loads_by_rank, nonempty=True)
    if len(rows) != ep:
        check.fail("loads_by_rank", f"one row per ep rank ({ep})", loads_by_rank)
    out = [check.sequence(f"loads_by_rank[{i}]", r, item=lambda n, v: check.integer(n, v, 0))
           for i, r in enumerate(rows)]
    if len({len(r) for r in out}) != 1:
        check.fail("loads_by_rank", "rows of equal length (one entry per expert)", loads_by_rank)
    expert_range(len(out[0]), ep, 0)
    return out


def rows_sent(loads_by_rank: list[list[int]], ep: int, rank: int) -> int:
    """Rows rank r's dispatch sends to other ranks: Σ_{e not on r} loads[r][e] (counted:
    tests/test_expert_parallel.py)."""
    loads = _loads_matrix(loads_by_rank, ep)
    lo, hi = expert_range(len(loads[0]), ep, rank)
    return sum(v for e, v in enumerate(loads[rank]) if not lo <= e < hi)


def rows_received(loads_by_rank: list[list[int]], ep: int, rank: int) -> int:
    """Rows rank r's dispatch receives from other ranks: Σ_{s≠r} Σ_{e on r} loads[s][e]
    (counted: tests/test_expert_parallel.py)."""
    loads = _loads_matrix(loads_by_rank, ep)
    lo, hi = expert_range(len(loads[0]), ep, rank)
    return sum(sum(loads[s][lo:hi]) for s in range(ep) if s != rank)


class Bytes(NamedTuple):
    """Bytes one rank sends and receives in one all-to-all."""

    sent: Fraction
    received: Fraction


def layer_bytes(loads_by_rank: list[list[int]], ep: int, rank: int, hidden: int,
                dtype_bytes: int, *, backward: bool = True,
                count_bytes: int = 8) -> dict[str, Bytes]:
    """{tag: Bytes} of one MoE layer's all-to-alls on rank r (tags ``TAGS``): counts (E
    integers of ``count_bytes``, (ep−1)/ep of them to others), dispatch (rows_sent·H·bytes
    sent, rows_received·H·bytes received), combine (the reverse), and with ``backward`` the
    two gradients: combine-backward = dispatch, dispatch-backward = combine. The counted runs
    equal it (tests/test_expert_parallel.py::test_counted_all_to_all_bytes_equal_the_formula)."""
    loads = _loads_matrix(loads_by_rank, ep)
    hidden = check.positive_int("hidden", hidden)
    dtype_bytes = check.positive_int("dtype_bytes", dtype_bytes)
    check.boolean("backward", backward)
    count_bytes = check.positive_int("count_bytes", count_bytes)
    E = len(loads[0])
    counts = Fraction(E * count_bytes * (ep - 1), ep)
    row = hidden * dtype_bytes
    out_rows, in_rows = rows_sent(loads, ep, rank), rows_received(loads, ep, rank)
    there = Bytes(Fraction(out_rows * row), Fraction(in_rows * row))
    back = Bytes(there.received, there.sent)
    result = {"counts": Bytes(counts, counts), "dispatch": there, "combine": back}
    if backward:
        result["combine-backward"] = there
        result["dispatch-backward"] = back
    return result


def uniform_rows(tokens: int, top_k: int, ep: int) -> Fraction:
    """k·n·(ep−1)/ep: the rows each rank sends each way when routing is perfectly uniform
    (every expert gets k·n/E of each rank's rows; (ep−1)/ep of the experts live elsewhere;
    tests/test_expert_parallel.py)."""
    tokens = check.integer("tokens", tokens, 0)
    top_k = check.positive_int("top_k", top_k)
    ep = check.positive_int("ep", ep)
    return Fraction(top_k * tokens * (ep - 1), ep)


def load_imbalance(loads: list[int]) -> Fraction:
    """max / mean of the rows each rank (or expert) receives: 1 when balanced; the busiest one
    sets the step time (every rank waits for it at the combine; tests/test_expert_parallel.py)."""
    loads = check.sequence("loads", loads, nonempty=True,
                           item=lambda n, v: check.integer(n, v, 0))
    total = sum(loads)
    if total == 0:
        check.fail("loads", "not all zero", loads)
    return Fraction(max(loads) * len(loads), total)


class MoEScale(NamedTuple):
    """A MoE model's numbers that set its dispatch volume."""

    hidden: int
    routed_experts: int
    top_k: int
    max_nodes: int  # node-limited routing: a token's experts live on at most this many nodes


# DeepSeek-V3 technical report (arXiv 2412.19437): §4.2 "hidden dimension to 7168", "256
# routed experts", "8 experts will be activated for each token", "sent to at most 4 nodes";
# §3.2.2: "we limit each token to be dispatched to at most 4 nodes, thereby reducing IB traffic",
# a token crosses IB once per target node, then NVLink to the GPUs of its experts.
DEEPSEEK_V3 = MoEScale(hidden=7168, routed_experts=256, top_k=8, max_nodes=4)


def token_dispatch_bytes(hidden: int, copies: int, dtype_bytes: int) -> int:
    """copies · H · bytes: one token's dispatch volume when it is sent ``copies`` times (k
    copies when each expert gets its own; at most M across nodes with DeepSeek-V3's
    node-limited routing, §3.2.2). Arithmetic: tests/test_expert_parallel.py."""
    hidden = check.positive_int("hidden", hidden)
    copies = check.integer("copies", copies, 0)
    dtype_bytes = check.positive_int("dtype_bytes", dtype_bytes)
    return copies * hidden * dtype_bytes
