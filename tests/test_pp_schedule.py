"""Pipeline schedules as data (lib/llmtrain/parallel/pp_schedule.py): pure, no processes.

What is checked, for GPipe, 1F1B (PipeDream-Flush) and Megatron's interleaved 1F1B:
- the simulated bubble equals ``bubble_formula`` exactly, the makespan (m + (p − 1)/v)(t_f + t_b);
- every rank runs every (kind, micro-batch, chunk) once, each backward after its forward;
- activations held at the peak (``in_flight``): GPipe m, 1F1B p − rank, interleaved warm-up + 1;
  ``held_microbatches``, their closed form, equals it for every schedule, rank, p ≤ 8, m ≤ 24;
- the message order: what rank a sends to rank b comes in the order b posts its receives from a,
  which is why the runtime needs no tags on its point-to-point messages (NCCL has none);
- ``p2p_messages`` counts those messages; latency adds 2(p − 1)·L to GPipe (worked by hand);
- bad arguments are named; a program that waits on itself is reported as a deadlock.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import example, given, settings, strategies as st

from llmtrain.cost import pp_schedule as pps

SETTINGS = settings(max_examples=100, deadline=None)
COSTS = st.integers(1, 5) | st.fractions(min_value=Fraction(1, 10), max_value=5, max_denominator=12)


def _programs(name, p, m, v=1):
    return [pps.schedule(name, p, m, r, v) for r in range(p)]


def _all_cases():
    """Every (schedule, p, m, v) with p ≤ 8, m ≤ 24, v ≤ 4 that the schedules accept."""
    for p in range(1, 9):
        for m in range(1, 25):
            yield "gpipe", p, m, 1
            yield "1f1b", p, m, 1
            if m % p == 0:
                for v in (2, 3, 4):
                    yield "interleaved", p, m, v


ALL = list(_all_cases())


@st.composite
def cases(draw):
    """A schedule the module accepts: interleaved needs v ≥ 2 and m a multiple of p."""
    name = draw(st.sampled_from(pps.SCHEDULES))
    p = draw(st.integers(1, 8))
    if name == "interleaved":
        return name, p, p * draw(st.integers(1, max(1, 24 // p))), draw(st.integers(2, 4))
    return name, p, draw(st.integers(1, 24)), 1


# --- bubble and makespan -------------------------------------------------------------------

@SETTINGS
@given(case=cases(), t_f=COSTS, t_b=COSTS)
@example(case=("interleaved", 8, 24, 4), t_f=Fraction(1, 3), t_b=Fraction(5, 7))  # the largest
@example(case=("interleaved", 1, 3, 3), t_f=1, t_b=2)  # one rank, three chunks
@example(case=("1f1b", 8, 1, 1), t_f=2, t_b=1)  # fewer micro-batches than stages
def test_simulated_bubble_and_makespan_are_the_formulas_exactly(case, t_f, t_b):
    name, p, m, v = case
    events = pps.simulate(name, p, m, v, t_f=t_f, t_b=t_b)
    assert pps.bubble_fraction(events) == pps.bubble_formula(p, m, v)  # Fractions: exact
    assert pps.makespan(events) == (m + Fraction(p - 1, v)) * (t_f + t_b)
    for r in range(p):  # every rank does m·(t_f + t_b) of work, whatever the order
        assert pps.busy(events, r) == m * (t_f + t_b)


def test_bubble_formula_worked_values():
    assert pps.bubble_formula(4, 8) == Fraction(3, 11)       # (p − 1)/(m + p − 1)
    assert pps.bubble_formula(4, 8, 2) == Fraction(3, 19)    # (p − 1)/(v·m + p − 1)
    assert pps.bubble_formula(1, 5) == 0                     # one stage: no bubble


def test_gpipe_p4_m8_makespan_by_hand():
    # 8 forwards of 1 and 8 backwards of 2 per rank, plus 3 stage delays of 1 + 2: 24 + 9 = 33
    events = pps.simulate("gpipe", 4, 8, t_f=1, t_b=2)
    assert pps.makespan(events) == 33 and len(events) == 4 * 16
    assert all(isinstance(e.start, (int, Fraction)) for e in events)  # exact with int costs


# --- the programs --------------------------------------------------------------------------

@pytest.mark.parametrize("name,p,m,v", ALL[::7] + [("interleaved", 4, 8, 2), ("1f1b", 8, 3, 1)])
def test_each_op_exactly_once_and_backward_after_its_forward(name, p, m, v):
    want = Counter((kind, mb, c) for kind in "FB" for mb in range(m) for c in range(v))
    for ops in _programs(name, p, m, v):
        assert Counter(ops) == want  # Op is (kind, mb, chunk)
        where = {op: i for i, op in enumerate(ops)}
        assert all(where[pps.Op("F", mb, c)] < where[pps.Op("B", mb, c)]
                   for mb in range(m) for c in range(v))


@pytest.mark.parametrize("p,m", [(1, 1), (2, 1), (4, 8), (4, 3), (8, 24), (8, 5)])
def test_in_flight_gpipe_m_and_1f1b_p_minus_rank(p, m):
    for r in range(p):
        assert pps.in_flight(pps.schedule("gpipe", p, m, r)) == m
        assert pps.in_flight(pps.schedule("1f1b", p, m, r)) == min(p - r, m)


def test_in_flight_interleaved_p4_m8_v2():
    # Counted in (micro-batch, chunk) activations, each 1/v of a micro-batch's layers. Rank r
    # warms up with 2(p − r − 1) + (v − 1)·p forwards (Megatron-LM), then its first steady
    # forward comes before its first backward: peak = warm-up + 1 = 2(3 − r) + 4 + 1.
    # In micro-batches of a full rank's layers that is [5.5, 4.5, 3.5, 2.5] against 1F1B's
    # [4, 3, 2, 1]: interleaving holds more activations, not fewer.
    assert [pps.in_flight(ops) for ops in _programs("interleaved", 4, 8, 2)] == [11, 9, 7, 5]


@pytest.mark.parametrize("name,p,m,v", [c for c in ALL if c[0] == "interleaved"][::3])
def test_in_flight_interleaved_is_warmup_plus_one(name, p, m, v):
    for r, ops in enumerate(_programs(name, p, m, v)):
        assert pps.in_flight(ops) == min(2 * (p - r - 1) + (v - 1) * p + 1, m * v)



@pytest.mark.parametrize("name,p,m,v", ALL)
def test_held_microbatches_closed_form_is_in_flight_over_v(name, p, m, v):
    # The oracle: the schedules' own lists, replayed op by op (in_flight), in (micro-batch,
    # chunk) activations; a chunk is 1/v of a rank's layers.
    for r, ops in enumerate(_programs(name, p, m, v)):
        assert pps.held_microbatches(name, p, m, r, v) == Fraction(pps.in_flight(ops), v)


def test_held_microbatches_worked_values():
    # Rank 0, m large: interleaving holds p(1 + (p − 1)/(p·v)) = p + (p − 1)/v micro-batches.
    assert pps.held_microbatches("interleaved", 8, 64, 0, 2) == Fraction(23, 2)  # 11.5
    assert pps.held_microbatches("1f1b", 8, 64, 0) == 8
    assert pps.held_microbatches("interleaved", 2, 8, 0, 2) == Fraction(5, 2)
    assert pps.held_microbatches("interleaved", 2, 8, 1, 2) == Fraction(3, 2)
    assert pps.held_microbatches("gpipe", 8, 64, 3) == 64
    for p in range(2, 9):
        for v in (2, 3, 4):
            assert pps.held_microbatches("interleaved", p, 8 * p, 0, v) == p * (1 + Fraction(p - 1, p * v))
    # too few micro-batches to finish the warm-up: everything is held, as in GPipe
    assert pps.held_microbatches("interleaved", 4, 4, 0, 2) == 4

# --- messages: order and count -------------------------------------------------------------

def _messages(name, p, m, v):
    """(sent, posted, count): per ordered pair (a, b) the messages a sends to b in a's op
    order, and the receives b posts from a in b's op order, each as (what, stage, mb)."""
    sent, posted, stages = {}, {}, p * v
    for r, ops in enumerate(_programs(name, p, m, v)):
        for op in ops:
            s = pps.stage_of(r, op.chunk, p)
            if op.kind == "F":
                if s > 0:  # its input activation comes from the previous stage
                    posted.setdefault(((r - 1) % p, r), []).append(("act", s, op.mb))
                if s < stages - 1:  # its output goes to the next stage
                    sent.setdefault((r, (r + 1) % p), []).append(("act", s + 1, op.mb))
            else:
                if s < stages - 1:  # its output gradient comes from the next stage
                    posted.setdefault(((r + 1) % p, r), []).append(("grad", s, op.mb))
                if s > 0:  # its input gradient goes to the previous stage
                    sent.setdefault((r, (r - 1) % p), []).append(("grad", s - 1, op.mb))
    return sent, posted, sum(len(q) for q in sent.values())


@pytest.mark.parametrize("name", pps.SCHEDULES)
def test_messages_arrive_in_the_order_receives_are_posted(name):
    """For every pair (a, b), a's sends to b and b's receives from a are the same sequence, so
    matching them in order (as NCCL and gloo do, without tags) pairs the right tensors. With
    interleaving one link carries activations and gradients mixed, so this is not trivial."""
    for case in (c for c in ALL if c[0] == name):
        sent, posted, _ = _messages(*case)
        assert sent == posted, case


def test_interleaved_links_carry_both_directions():
    # p = 2, v = 2: stages 0 1 2 3 on ranks 0 1 0 1; rank 0 → rank 1 carries the activations
    # 0→1 and 2→3 and the gradient 2→1, interleaved in one queue
    sent, _, _ = _messages("interleaved", 2, 2, 2)
    assert Counter(what for what, _, _ in sent[(0, 1)]) == {"act": 4, "grad": 2}


@pytest.mark.parametrize("name", pps.SCHEDULES)
def test_p2p_messages_counts_them(name):
    for case in (c for c in ALL if c[0] == name):
        assert _messages(*case)[2] == pps.p2p_messages(*case[1:]), case
    assert pps.p2p_messages(4, 8) == 2 * 3 * 8 and pps.p2p_messages(4, 8, 2) == 2 * 7 * 8


# --- latency -------------------------------------------------------------------------------

@SETTINGS
@given(p=st.integers(1, 8), m=st.integers(1, 24), t_f=COSTS, t_b=COSTS,
       latency=st.integers(1, 4) | st.fractions(min_value=Fraction(1, 10), max_value=3))
def test_gpipe_latency_adds_two_crossings_per_boundary(p, m, t_f, t_b, latency):
    # By hand: stage s starts forward i at s(t_f + L) + i·t_f, so the last forward ends at
    # (p − 1)(t_f + L) + m·t_f; the backwards run back the same way, (p − 1)(t_b + L) + m·t_b.
    # Total (m + p − 1)(t_f + t_b) + 2(p − 1)L: only the first micro-batch's trip waits.
    events = pps.simulate("gpipe", p, m, t_f=t_f, t_b=t_b, p2p=latency)
    assert pps.makespan(events) == (m + p - 1) * (t_f + t_b) + 2 * (p - 1) * latency


def test_1f1b_pays_latency_every_steady_step_p2_m4_by_hand():
    # t_f = 1, t_b = 2, L = 1. Rank 0 runs F0 F1 B0 F2 B1 F3 B2 B3, rank 1 F0 B0 F1 B1 F2 B2 F3 B3.
    # rank 0: F0 [0,1] F1 [1,2]        B0 [6,8] F2 [8,9] B1 [9,11] F3 [11,12] B2 [14,16] B3 [17,19]
    # rank 1: F0 [2,3] B0 [3,5] F1 [5,6] B1 [6,8] F2 [10,11] B2 [11,13] F3 [13,14] B3 [14,16]
    # 19 = 15 + 4L: the critical path crosses between the ranks four times (F0 →, B1 ←, F3 →,
    # B3 ←), GPipe's twice (17): in 1F1B a rank's next forward is queued behind a backward that
    # waits on the next rank, so the latency is paid again in the steady state.
    events = pps.simulate("1f1b", 2, 4, t_f=1, t_b=2, p2p=1)
    assert pps.makespan(events) == 19
    assert [(e.kind, e.mb, e.start, e.end) for e in events if e.rank == 0] == [
        ("F", 0, 0, 1), ("F", 1, 1, 2), ("B", 0, 6, 8), ("F", 2, 8, 9), ("B", 1, 9, 11),
        ("F", 3, 11, 12), ("B", 2, 14, 16), ("B", 3, 17, 19)]
    assert [(e.kind, e.mb, e.start, e.end) for e in events if e.rank == 1] == [
        ("F", 0, 2, 3), ("B", 0, 3, 5), ("F", 1, 5, 6), ("B", 1, 6, 8), ("F", 2, 10, 11),
        ("B", 2, 11, 13), ("F", 3, 13, 14), ("B", 3, 14, 16)]
    assert pps.makespan(pps.simulate("gpipe", 2, 4, t_f=1, t_b=2, p2p=1)) == 17


def test_no_latency_on_one_rank():
    # p = 1, interleaved: the chunks pass activations to themselves, no message to wait for
    events = pps.simulate("interleaved", 1, 3, 2, t_f=1, t_b=2, p2p=5)
    assert pps.makespan(events) == 9


# --- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("call,arg", [
    (lambda: pps.check_schedule("1F1B", 4, 8), "schedule"),
    (lambda: pps.check_schedule("gpipe", 0, 8), "p"),
    (lambda: pps.check_schedule("gpipe", 4, 0), "microbatches"),
    (lambda: pps.check_schedule("interleaved", 4, 8, 1), "virtual"),
    (lambda: pps.check_schedule("gpipe", 4, 8, 2), "virtual"),
    (lambda: pps.check_schedule("1f1b", 4, 8, 0), "virtual"),
    (lambda: pps.check_schedule("interleaved", 4, 6, 2), "microbatches"),
    (lambda: pps.schedule("gpip", 4, 8, 0), "schedule"),
    (lambda: pps.schedule("1f1b", 4, 8, 4), "rank"),
    (lambda: pps.schedule("1f1b", 4, 8, -1), "rank"),
    (lambda: pps.schedule("interleaved", 4, 10, 0, 2), "microbatches"),
    (lambda: pps.simulate("1f1b", 0, 8), "p"),
    (lambda: pps.simulate("interleaved", 2, 4, 1), "virtual"),
    (lambda: pps.simulate("gpipe", 2, 4, t_f=-1), "t_f"),
    (lambda: pps.simulate("gpipe", 2, 4, t_b=Fraction(-1, 2)), "t_b"),
    (lambda: pps.simulate("gpipe", 2, 4, p2p=-0.5), "p2p"),
    (lambda: pps.bubble_formula(2, 0), "microbatches"),
    (lambda: pps.p2p_messages(0, 4), "p"),
    (lambda: pps.held_microbatches("1f1b", 4, 8, 4), "rank"),
    (lambda: pps.held_microbatches("interleaved", 4, 8, 0, 1), "virtual"),
])
def test_bad_arguments_are_named(call, arg):
    with pytest.raises(ValueError, match=rf"^{arg}\b"):
        call()


# --- deadlock ------------------------------------------------------------------------------

@pytest.mark.parametrize("broken", ["backward_first_on_rank_0", "last_stage_backward_first"])
def test_a_program_that_waits_on_itself_deadlocks(broken):
    programs = [pps.schedule("1f1b", 2, 4, rank) for rank in range(2)]
    if broken == "backward_first_on_rank_0":
        # B0 waits on rank 1's B0, which waits on rank 1's F0, which waits on rank 0's F0
        ops = programs[0]
        first_b = next(i for i, op in enumerate(ops) if op.kind == "B")
        ops.insert(0, ops.pop(first_b))
    else:  # 1F1B's last rank: B0 before its own F0
        programs[1][0], programs[1][1] = programs[1][1], programs[1][0]
    with pytest.raises(RuntimeError, match="deadlocks"):
        pps.simulate("1f1b", 2, 4, programs=programs)


# --- replay: any order, split backwards --------------------------------------------------

def test_replay_of_a_schedule_is_simulate():
    programs = [[(op.kind, pps.stage_of(r, op.chunk, 4), op.mb)
                 for op in pps.schedule("1f1b", 4, 8, r)] for r in range(4)]
    costs = {"F": Fraction(1), "B": Fraction(2)}
    assert pps.replay(programs, costs) == pps.simulate("1f1b", 4, 8, t_f=1, t_b=2)


def test_split_backward_fills_the_bubble():
    """Zero-bubble's idea on 2 ranks, 2 micro-batches, F = I = W = 1: a W waits for nobody, so
    rank 0 runs W0 while rank 1 computes the I1 it waits for; vs B = I + W = 2 unsplit (1F1B).
    By hand: 1F1B ends at 9 (bubble 3/9); split, rank 0 runs I0 [3,4] W0 [4,5] I1 [5,6] W1 [6,7]
    and rank 1 F0 [1,2] I0 [2,3] F1 [3,4] I1 [4,5] W0 [5,6] W1 [6,7]: 7 (bubble 1/7)."""
    split = [[("F", 0, 0), ("F", 0, 1), ("I", 0, 0), ("W", 0, 0), ("I", 0, 1), ("W", 0, 1)],
             [("F", 1, 0), ("I", 1, 0), ("F", 1, 1), ("I", 1, 1), ("W", 1, 0), ("W", 1, 1)]]
    whole = [[(k, s, mb) for k, s, mb in ops if k != "W"] for ops in split]
    whole = [[("B" if k == "I" else k, s, mb) for k, s, mb in ops] for ops in whole]
    one = Fraction(1)
    zb = pps.replay(split, {"F": one, "I": one, "W": one})
    fb = pps.replay(whole, {"F": one, "B": 2 * one})
    assert pps.makespan(zb) == 7 and pps.makespan(fb) == 9
    assert pps.bubble_fraction(zb) == Fraction(1, 7) and pps.bubble_fraction(fb) == Fraction(1, 3)
    w = {(e.rank, e.mb): e for e in zb if e.kind == "W"}
    i = {(e.rank, e.mb): e for e in zb if e.kind == "I"}
    assert all(w[k].start >= i[k].end for k in w)  # W after its own I


def test_replay_detects_a_weight_gradient_before_its_input_gradient():
    with pytest.raises(RuntimeError, match="deadlocks"):
        pps.replay([[("F", 0, 0), ("W", 0, 0), ("I", 0, 0)]], {"F": 1, "I": 1, "W": 1})
