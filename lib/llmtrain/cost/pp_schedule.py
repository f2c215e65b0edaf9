"""Pipeline schedules as data (流水线并行): which rank runs which micro-batch when, and its cost.

A schedule is, for each of the p ranks, the list of operations it runs in order: ``Op("F", i)``
(forward of micro-batch i) or ``Op("B", i)`` (its backward), on one of the rank's ``chunk``\\ s
(virtual stages; one unless interleaved). Rank r's chunk c is global stage c·p + r, so with v
chunks the model is cut into p·v stages dealt round-robin (Narayanan et al. 2021, §2.2.2).

- ``gpipe``       all forwards, then all backwards (GPipe, Huang et al. 2019, arXiv 1811.06965;
                  "all-forward-all-backward"): every stage holds m micro-batches of activations.
- ``one_f_one_b`` 1F1B as PipeDream-Flush runs it (Narayanan et al., ICML 2021, arXiv
                  2006.09503; described in Narayanan et al. 2021, arXiv 2104.04473, §2.2.1):
                  p − r − 1 warm-up forwards, then one forward and one backward in turn, then
                  the remaining backwards: rank r holds at most p − r micro-batches.
- ``interleaved`` Megatron-LM's interleaved 1F1B with v chunks per rank (Narayanan et al. 2021,
                  §2.2.2): the same, over the m·v (micro-batch, chunk) pairs; bubble ÷ v for
                  (pv − 1)/(p − 1) times the messages, and a longer warm-up: rank 0 holds
                  p + (p − 1)/v micro-batches' activations where 1F1B holds p
                  (``held_microbatches``).

The same lists drive the real processes (``pipeline_parallel``) and ``simulate``, which
replays them with per-operation costs: an operation starts when its rank is free and its input
has arrived (the previous stage's forward, the next stage's backward); ``replay`` does it for
any order, also torch's zero-bubble ones, whose backwards are split in two: I (the input's
gradient, which the previous stage waits for) and W (the weights', which nobody waits for).
With t_f, t_b the forward and backward time of one micro-batch through one rank's layers, GPipe
and 1F1B take (m + p − 1)(t_f + t_b), of which each rank is idle (p − 1)(t_f + t_b): the bubble,
(p−1)/(m+p−1) of the step (``bubble_fraction``); interleaving makes the idle time
(p − 1)(t_f + t_b)/v.
"""

from __future__ import annotations

from fractions import Fraction
from numbers import Real
from typing import NamedTuple

from .. import check

__all__ = ["SCHEDULES", "Op", "Event", "stage_of", "check_schedule", "gpipe", "one_f_one_b",
           "interleaved", "schedule", "simulate", "replay", "makespan", "busy", "bubble_fraction",
           "bubble_formula", "in_flight", "held_microbatches", "p2p_messages"]

SCHEDULES = ("gpipe", "1f1b", "interleaved")


class Op(NamedTuple):
    """One operation of a rank: forward ("F") or backward ("B") of micro-batch ``mb`` on the
    rank's ``chunk`` (its global stage is chunk·p + rank)."""

    kind: str
    mb: int
    chunk: int = 0


class Event(NamedTuple):
    """One executed (or simulated) operation: who, what, from when to when (seconds, or any
    unit the costs were given in)."""

    rank: int
    stage: int  # global stage: chunk·p + rank
    kind: str   # "F" or "B"
    mb: int
    start: float
    end: float


def stage_of(rank: int, chunk: int, p: int) -> int:
    """Global stage of ``rank``'s ``chunk``: chunk·p + rank (round-robin, Megatron-LM's)."""
    return chunk * p + rank


def check_schedule(schedule: str, p: int, microbatches: int, virtual: int = 1) -> None:
    """ValueError, naming the argument, for a schedule that cannot be built.

    Interleaving needs virtual ≥ 2 (virtual = 1 is plain 1F1B) and m divisible by p (the
    micro-batches go round in groups of p, as in Megatron-LM); the others need virtual = 1."""
    check.one_of("schedule", schedule, SCHEDULES)
    check.positive_int("p", p)
    m = check.positive_int("microbatches", microbatches)
    check.positive_int("virtual", virtual)
    if schedule == "interleaved":
        if virtual < 2:
            raise ValueError(f"virtual must be at least 2 for schedule='interleaved' "
                             f"(virtual=1 is schedule='1f1b'), got virtual={virtual}")
        if m % p:
            raise ValueError(f"microbatches must be a multiple of the {p} stages for "
                             f"schedule='interleaved' (they go round in groups of p), got "
                             f"microbatches={m}")
    elif virtual != 1:
        raise ValueError(f"virtual must be 1 for schedule={schedule!r} (only 'interleaved' "
                         f"puts several stages on a rank), got virtual={virtual}")


def gpipe(p: int, m: int, rank: int) -> list[Op]:
    """All m forwards, then all m backwards (every rank the same; GPipe, Huang et al. 2019,
    arXiv 1811.06965)."""
    return [Op("F", i) for i in range(m)] + [Op("B", i) for i in range(m)]


def one_f_one_b(p: int, m: int, rank: int) -> list[Op]:
    """Warm up with p − rank − 1 forwards, alternate one forward / one backward, cool down
    (PipeDream-Flush, Narayanan et al. 2021, arXiv 2104.04473 §2.2; Megatron-LM's)."""
    warmup = min(p - rank - 1, m)
    ops = [Op("F", i) for i in range(warmup)]
    for i in range(m - warmup):  # steady state: 1F1B
        ops += [Op("F", warmup + i), Op("B", i)]
    return ops + [Op("B", i) for i in range(m - warmup, m)]  # cooldown


def interleaved(p: int, m: int, rank: int, virtual: int) -> list[Op]:
    """Megatron-LM's interleaved 1F1B (``forward_backward_pipelining_with_interleaving``).

    The k-th forward of a rank is micro-batch (k // pv)·p + k mod p on chunk (k // p) mod v:
    p micro-batches through chunk 0, the same p through chunk 1, …, then the next p. Backwards
    go the same way with the chunks reversed. Warm-up: 2(p − rank − 1) + (v − 1)·p forwards."""
    v, total = virtual, m * virtual

    def op(kind: str, k: int) -> Op:
        chunk = (k // p) % v
        return Op(kind, (k // (p * v)) * p + k % p, chunk if kind == "F" else v - 1 - chunk)

    warmup = min(2 * (p - rank - 1) + (v - 1) * p, total)
    ops = [op("F", k) for k in range(warmup)]
    for k in range(total - warmup):
        ops += [op("F", warmup + k), op("B", k)]
    return ops + [op("B", k) for k in range(total - warmup, total)]


def schedule(schedule: str, p: int, microbatches: int, rank: int, virtual: int = 1) -> list[Op]:
    """Rank ``rank``'s operations under ``schedule`` ("gpipe", "1f1b", "interleaved"); each
    operation once, backward after forward (tests/test_pp_schedule.py)."""
    check_schedule(schedule, p, microbatches, virtual)
    check.integer("rank", rank, 0, p - 1)
    build = {"gpipe": gpipe, "1f1b": one_f_one_b}.get(schedule)
    if build is not None:
        return build(p, microbatches, rank)
    return interleaved(p, microbatches, rank, virtual)


_ops = schedule  # the same function, for ``simulate``, whose argument ``schedule`` is a name


# --- the simulator ------------------------------------------------------------------------

def simulate(schedule: str, p: int, microbatches: int, virtual: int = 1, *, t_f: Real = 1,
             t_b: Real = 2, p2p: Real = 0, programs: list[list[Op]] | None = None) -> list[Event]:
    """Replay the schedule with fixed costs: ``t_f``/``t_b`` the forward/backward time of one
    micro-batch through one rank's layers (a chunk takes 1/v of it), ``p2p`` the time a
    message takes between ranks. Exact with ints or Fractions. Events in start order.
    ``programs`` (one list of ``Op`` per rank) replays your own order instead of the schedule's.
    Raises RuntimeError if the lists can deadlock (see ``replay``). Its bubble and makespan are
    the formulas exactly (tests/test_pp_schedule.py)."""
    name, m = schedule, microbatches
    check_schedule(name, p, m, virtual)
    for arg, value in (("t_f", t_f), ("t_b", t_b), ("p2p", p2p)):
        check.number(arg, value, 0)
    v = virtual
    cost = {"F": Fraction(t_f) / v if isinstance(t_f, (int, Fraction)) else t_f / v,
            "B": Fraction(t_b) / v if isinstance(t_b, (int, Fraction)) else t_b / v}
    if programs is None:
        programs = [_ops(name, p, m, r, v) for r in range(p)]
    elif not isinstance(programs, (list, tuple)) or len(programs) != p:
        check.fail("programs", f"a list of {p} lists of Op (one per rank)", programs)
    work = [[(op.kind, stage_of(r, op.chunk, p), op.mb) for op in ops]
            for r, ops in enumerate(programs)]
    try:
        return replay(work, cost, p2p=p2p, stages=p * v)
    except RuntimeError as e:
        raise RuntimeError(f"schedule {name!r} {e}") from None


def replay(programs: list[list[tuple[str, int, int]]], costs: dict[str, Real], *, p2p: Real = 0,
           stages: int | None = None) -> list[Event]:
    """Run each rank's list of (kind, stage, micro-batch) in order, each operation taking
    ``costs[kind]``, and return the events in start order.

    An operation starts when its rank is free and its input is there: F of stage s after F of
    stage s − 1; a backward of stage s (B, or I: its input-gradient half) after the backward or
    I of stage s + 1 (after its own F on the last stage); W (the weight-gradient half of a split
    backward, as in zero-bubble schedules) after its own I. ``p2p`` is added when the input comes
    from another rank. Raises RuntimeError when every rank waits on another (a deadlock).
    Checked against torch's zero-bubble schedules in tests/test_pipeline_parallel.py."""
    stages = stages or 1 + max(s for ops in programs for _, s, _ in ops)
    need = {"F": lambda s, mb: ("F", s - 1, mb) if s > 0 else None,
            "B": lambda s, mb: ("G", s + 1, mb) if s < stages - 1 else ("F", s, mb),
            "W": lambda s, mb: ("I", s, mb)}
    need["I"] = need["B"]
    gives = {"F": ("F",), "B": ("G",), "I": ("G", "I"), "W": ()}
    done: dict[tuple[str, int, int], tuple[Real, int]] = {}  # what, stage, mb -> (end, rank)
    p = len(programs)
    clock, pos, events = [0] * p, [0] * p, []
    while any(pos[r] < len(programs[r]) for r in range(p)):
        moved = False
        for r in range(p):
            while pos[r] < len(programs[r]):
                kind, s, mb = programs[r][pos[r]]
                dep = need[kind](s, mb)
                if dep is not None and dep not in done:
                    break
                start = clock[r]
                if dep is not None:
                    end, who = done[dep]
                    start = max(start, end + (p2p if who != r else 0))
                end = start + costs[kind]
                for what in gives[kind]:
                    done[(what, s, mb)] = (end, r)
                events.append(Event(r, s, kind, mb, start, end))
                clock[r], pos[r], moved = end, pos[r] + 1, True
        if not moved:
            stuck = {r: programs[r][pos[r]] for r in range(p) if pos[r] < len(programs[r])}
            raise RuntimeError(f"deadlocks: each rank waits on another {stuck}")
    return sorted(events, key=lambda e: (e.start, e.rank))


def makespan(events: list[Event]) -> Real:
    """Time from the first operation's start to the last one's end, over all ranks
    (tests/test_pp_schedule.py::test_gpipe_p4_m8_makespan_by_hand)."""
    return max(e.end for e in events) - min(e.start for e in events)


def busy(events: list[Event], rank: int) -> Real:
    """Time ``rank`` spent computing: the sum of its operations' durations
    (tests/test_pp_schedule.py)."""
    return sum((e.end - e.start for e in events if e.rank == rank), 0)


def bubble_fraction(events: list[Event]) -> Real:
    """Idle share of the step: 1 − Σ_r busy(r) / (p · makespan). Exact for exact costs; equals
    ``bubble_formula`` (tests/test_pp_schedule.py)."""
    ranks = sorted({e.rank for e in events})
    return 1 - sum(busy(events, r) for r in ranks) / (len(ranks) * makespan(events))


def bubble_formula(p: int, microbatches: int, virtual: int = 1) -> Fraction:
    """(p − 1)/(v·m + p − 1): the bubble as a share of the schedule's time (idle time
    (p − 1)(t_f + t_b)/v beside m(t_f + t_b) of work; Narayanan et al. 2021, §2.2.1, §2.2.2).
    The other definition in the literature, idle time over ideal time, is (p − 1)/(v·m)."""
    check.positive_int("p", p)
    m = check.positive_int("microbatches", microbatches)
    check.positive_int("virtual", virtual)
    return Fraction(p - 1, virtual * m + p - 1)


def in_flight(ops: list[Op]) -> int:
    """Most (micro-batch, chunk) activations a rank holds at once under ``ops``: forwards done
    minus backwards done, at its peak (GPipe: m; 1F1B: p − rank)."""
    held = peak = 0
    for op in ops:
        held += 1 if op.kind == "F" else -1
        peak = max(peak, held)
    return peak


def held_microbatches(schedule: str, p: int, microbatches: int, rank: int = 0,
                      virtual: int = 1) -> Fraction:
    """Most micro-batches' worth of activations ``rank`` holds at once, in closed form (a
    (micro-batch, chunk) activation is 1/v of one): GPipe m; 1F1B min(p − r, m); interleaved
    min(2(p − r − 1) + (v − 1)p + 1, m·v)/v — its warm-up forwards plus the first steady-state
    one. On rank 0, for m large enough, ((v + 1)p − 1)/v = p + (p − 1)/v = p·(1 + (p − 1)/(p·v)):
    11.5 against 1F1B's 8 at p = 8, v = 2. Checked against ``in_flight`` of the schedules
    (tests/test_pp_schedule.py) and the memory tracker of notebook 07."""
    check_schedule(schedule, p, microbatches, virtual)
    check.integer("rank", rank, 0, p - 1)
    m, v = microbatches, virtual
    if schedule == "gpipe":
        return Fraction(m)
    if schedule == "1f1b":
        return Fraction(min(p - rank, m))
    return Fraction(min(2 * (p - rank - 1) + (v - 1) * p + 1, m * v), v)


def p2p_messages(p: int, microbatches: int, virtual: int = 1) -> int:
    """Messages per step in all: each of the p·v − 1 stage boundaries carries m activations
    forward and m gradients back, 2(p·v − 1)·m; each is one micro-batch's b·s·h elements
    (tests/test_pp_schedule.py::test_p2p_messages_counts_them)."""
    check.positive_int("p", p)
    m = check.positive_int("microbatches", microbatches)
    check.positive_int("virtual", virtual)
    return 2 * (p * virtual - 1) * m
