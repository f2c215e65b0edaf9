"""llmtrain.parallel.expert_parallel on real gloo ranks and its closed forms, cost.moe_comm.

The oracle for every equality is one process running the whole MoE layer on all ranks' tokens
concatenated (``demos.expert_parallel.one_process``), in float64: equal means < 1e-12 (float
reassociation; measured gaps in comments). The counted all-to-all bytes equal
``moe_comm.layer_bytes`` exactly (Fractions); the dropped rows equal ``moe_comm.dropped_rows``
of the per-expert loads; DeepSeek-V3's numbers are its report's (§4.2, §3.2.2).

One launch of 2 ranks (module fixture ``two``) runs the layer with no capacity and with a
small one; ``slow``: the same on 4 ranks. ``TinyMoE`` is a stand-in with the MoE layer's
interface (route, experts, shared, last_load), written here as HF's Mixtral block loops.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmtrain.cost import moe_comm
from llmtrain.parallel import launch
from llmtrain.parallel import expert_parallel as ep_mod
from llmtrain.model.moe import DEEPSEEK_V3, QWEN2_MOE, Routing
from llmtrain.parallel.demos import expert_parallel as demo

F64 = torch.float64
TOKENS = 12  # per rank


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, ffn, bias=False)
        self.up_proj = nn.Linear(hidden, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TinyMoE(nn.Module):
    """Softmax router, top-k (weights renormalised), SwiGLU experts, one shared expert."""

    def __init__(self, hidden=8, experts=4, top_k=2, ffn=6, shared=5):
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(hidden, experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(hidden, ffn) for _ in range(experts))
        self.shared = SwiGLU(hidden, shared) if shared else None
        self.last_load = None

    def route(self, x):
        probs = torch.softmax(self.gate(x), dim=-1)
        w, i = torch.topk(probs, self.top_k, dim=-1)
        self.last_load = torch.bincount(i.flatten(), minlength=len(self.experts))
        return w / w.sum(-1, keepdim=True), i

    def forward(self, x):
        w, i = self.route(x)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):  # HF Mixtral's loop: each expert its tokens
            tok, slot = torch.where(i == e)
            if len(tok):
                out = out.index_add(0, tok, expert(x[tok]) * w[tok, slot, None])
        return out + (self.shared(x) if self.shared is not None else 0)


def tiny4():
    return TinyMoE(experts=4).to(F64)


def tiny8():
    return TinyMoE(experts=8, top_k=3).to(F64)


def qwen_gated():  # llmtrain.model.moe.MoE: softmax without renormalising, a gated shared expert
    return demo.moe_layer(shared_gate=True, routing=QWEN2_MOE)


def deepseek_like():  # sigmoid scores, 2 groups of 2 experts, 1 group kept, scaling 2.5
    return demo.moe_layer(routing=Routing("sigmoid", n_group=2, topk_group=1,
                                          routed_scaling_factor=2.5))


def all_to_rank0():  # a biased router: every token picks experts 0 and 1, rank 1 gets no rows
    moe = TinyMoE(experts=4).to(F64)
    moe.gate = nn.Linear(8, 4, bias=True).to(F64)
    with torch.no_grad():
        moe.gate.weight.mul_(1e-3)
        moe.gate.bias.copy_(torch.tensor([10.0, 9.0, 0.0, 0.0]))
    return moe


# DeepSeek-V3's routing with the bias moving (γ = 0.001) and a balancing loss (α = 0.01): both
# must see the whole batch's load (balance_group = dp) to equal one process
BIASED = Routing("sigmoid", n_group=2, topk_group=1, routed_scaling_factor=2.5,
                 bias_update_speed=0.001, aux_loss_coef=0.01)
CAPS = (None, 0.5)  # no limit; half the even share: some rows must drop
MOE_LAYERS = {"mixtral": demo.moe_layer, "qwen-gated": qwen_gated, "deepseek": deepseek_like}


def _maxdiff(a, b) -> float:
    return (a - b).abs().max().item()


def everything(world: int) -> dict:
    """One launch: the stand-in with and without capacity, llmtrain's MoE layer in three
    routings, and a MoE LLaMA step on ParallelDims(dp=world, ep=2)."""
    out = {"tiny": demo.ep_layer(tiny4 if world == 2 else tiny8, TOKENS, CAPS)}
    for name, make in MOE_LAYERS.items():
        out[name] = demo.ep_layer(make, TOKENS)
    if world == 2:
        out["skewed"] = demo.ep_layer(all_to_rank0, TOKENS)
    out["llama"] = demo.llama_step(demo.moe_llama(4), world, 2, routing=BIASED)
    return out


@pytest.fixture(scope="module")
def two():
    return launch(everything, 2, 2, timeout=240)


@pytest.fixture(scope="module")
def four():
    return launch(everything, 4, 4, timeout=240)


def _check_equal_to_one_process(ranks, make):
    ref = demo.one_process(make, TOKENS, len(ranks))
    runs = [r[0] for r in ranks]  # capacity None
    assert _maxdiff(torch.cat([r["out"] for r in runs]), ref["out"]) < 1e-12  # measured 2.2e-16
    assert _maxdiff(torch.cat([r["x_grad"] for r in runs]), ref["x_grad"]) < 1e-12
    owners = {}
    for r in runs:
        for name, g in r["grads"].items():
            if name.startswith("experts."):
                assert int(name.split(".")[1]) in r["experts"]  # a rank holds only its experts
                owners[name] = g
    full = dict(demo.build(make).named_parameters())
    expert_names = {n for n in full if n.startswith("experts.")}
    assert owners.keys() == expert_names  # every expert has exactly one owner
    for name in expert_names:  # an expert no token chose: no gradient in one process, zeros here
        want = ref["grads"].get(name, torch.zeros_like(full[name]))
        assert _maxdiff(owners[name], want) < 1e-12, name
    for name, g in ref["grads"].items():
        if not name.startswith("experts."):  # router and shared expert: summed over the ranks
            assert _maxdiff(sum(r["grads"][name] for r in runs), g) < 1e-12, name
    assert torch.equal(sum(r["load"] for r in runs), ref["load"])  # exact integers
    assert all(r["dropped"].sum() == 0 for r in runs)


def _check_bytes(ranks, hidden=8, caps=len(CAPS)):
    for cap_index in range(caps):
        runs = [r[cap_index] for r in ranks]
        loads = [r["kept"] for r in runs]
        for rank, r in enumerate(runs):
            want = moe_comm.layer_bytes(loads, len(runs), rank, hidden, 8)
            for tag, b in want.items():
                got = [rec for rec in r["records"] if rec.tag == tag]
                assert len(got) == 1 and got[0].op == "all_to_all", tag
                assert (got[0].sent_bytes, got[0].received_bytes) == b, (rank, tag)
            assert {rec.tag for rec in r["records"]} == set(moe_comm.TAGS)


def _check_received(ranks):
    for runs in zip(*ranks):
        for rank, r in enumerate(runs):
            for s, src in enumerate(runs):  # what I received from s = what s kept for my experts
                assert r["received"][s] == [src["kept"][e] for e in r["experts"]]


def _check_drops(ranks, make):
    runs = [r[1] for r in ranks]
    full = demo.build(make, 0)
    E, k = len(full.experts), full.top_k
    x, _ = demo.batch(TOKENS, 8, len(runs))
    ref = demo.one_process(make, TOKENS, len(runs))["out"]
    dropped_tokens = 0
    for rank, r in enumerate(runs):
        cap = moe_comm.capacity(TOKENS, k, E, 0.5)
        assert r["capacity"] == cap
        assert r["kept"] == [min(v, cap) for v in r["routed"]]
        assert int(r["dropped"].sum()) == moe_comm.dropped_rows(r["routed"], cap) > 0
        assert torch.equal(~r["dropped"], ep_mod.keep_mask(r["indices"], E, cap))
        xs, refs = x[rank * TOKENS:(rank + 1) * TOKENS], ref[rank * TOKENS:(rank + 1) * TOKENS]
        hit = r["dropped"].any(1)
        dropped_tokens += int(hit.sum())
        # tokens without a dropped row: the same as one process
        assert _maxdiff(r["out"][~hit], refs[~hit]) < 1e-12
        # the others: one process's output minus exactly the dropped rows' contributions
        missing = torch.zeros_like(xs)
        for t, s in r["dropped"].nonzero().tolist():
            e = int(r["indices"][t, s])
            with torch.no_grad():
                missing[t] += r["weights"][t, s] * full.experts[e](xs[t:t + 1])[0]
        assert _maxdiff(r["out"] + missing, refs) < 1e-12
        assert (r["out"][hit] - refs[hit]).abs().amax(1).min() > 1e-6  # they do differ
    assert dropped_tokens > 0


# ------------------------------------------------------------------ 2 ranks (one launch)

def _check_llama(ranks):
    world = len(ranks)
    ref = demo.llama_one_process(demo.moe_llama(4), world, routing=BIASED)
    runs = [r["llama"] for r in ranks]
    for r in runs:  # the load summed over dp: every rank's biases move as one process's, and
        # the mean of the ranks' losses (LM + α·balancing) is one process's (checked below)
        assert torch.equal(r["load"], ref["load"])
        assert _maxdiff(r["bias"], ref["bias"]) == 0 and ref["bias"].abs().sum() > 0
    # equal batches per rank: the mean of the ranks' mean losses is the one-process mean
    assert abs(sum(r["loss"] for r in runs) / world - ref["loss"]) < 1e-12
    held = set()
    for r in runs:
        for name, g in r["grads"].items():
            assert _maxdiff(g, ref["grads"][name]) < 1e-12, (r["place"], name)  # after dp/edp
            if ep_mod.expert_parameter(name):
                held.add(name)
                assert int(name.split(".experts.")[1].split(".")[0]) in r["experts"]
    assert held == {n for n in ref["grads"] if ep_mod.expert_parameter(n)}


def _split(ranks, key):
    return [r[key] for r in ranks]


def test_two_ep_ranks_equal_one_process_outputs_load_and_every_gradient(two):
    _check_equal_to_one_process(_split(two, "tiny"), tiny4)


@pytest.mark.parametrize("name", sorted(MOE_LAYERS))
def test_llmtrain_moe_layers_on_two_ep_ranks_equal_one_process(two, name):
    _check_equal_to_one_process(_split(two, name), MOE_LAYERS[name])
    _check_bytes(_split(two, name), caps=1)


def test_a_rank_whose_experts_get_no_rows_still_equals_one_process(two):
    runs = _split(two, "skewed")
    assert [r[0]["routed"] for r in runs] == [[TOKENS, TOKENS, 0, 0]] * 2
    assert [r[0]["received"] for r in runs] == [[[TOKENS, TOKENS], [TOKENS, TOKENS]], [[0, 0], [0, 0]]]
    _check_equal_to_one_process(runs, all_to_rank0)
    _check_bytes(runs, caps=1)
    assert moe_comm.load_imbalance([sum(map(sum, r[0]["received"])) for r in runs]) == 2


def test_a_moe_llama_step_on_dp2_ep2_equals_one_process_loss_load_bias_and_every_gradient(two):
    _check_llama(two)


def test_counted_all_to_all_bytes_equal_the_formula(two):
    _check_bytes(_split(two, "tiny"))


def test_each_rank_receives_what_the_others_kept_for_its_experts(two):
    _check_received(_split(two, "tiny"))


def test_a_small_capacity_drops_the_formulas_rows_and_changes_only_those_tokens(two):
    _check_drops(_split(two, "tiny"), tiny4)


# ------------------------------------------------------------------ 4 ranks

@pytest.mark.slow
def test_four_ep_ranks_equal_one_process_count_their_bytes_and_drop_by_the_formula(four):
    tiny = _split(four, "tiny")
    _check_equal_to_one_process(tiny, tiny8)
    _check_bytes(tiny)
    _check_received(tiny)
    _check_drops(tiny, tiny8)
    for name, make in MOE_LAYERS.items():
        _check_equal_to_one_process(_split(four, name), make)


@pytest.mark.slow
def test_a_moe_llama_step_on_dp4_ep2_averages_experts_over_edp_and_equals_one_process(four):
    _check_llama(four)


# ------------------------------------------------------------------ closed forms, one process

def test_balancing_loss_with_the_ranks_own_load_is_the_moe_layers_aux_loss():
    from llmtrain.model.moe import aux_loss

    g = torch.Generator().manual_seed(3)
    scores = torch.rand(10, 6, generator=g, dtype=F64)
    indices = scores.topk(2, dim=-1).indices
    load = torch.bincount(indices.flatten(), minlength=6)
    assert abs(ep_mod.balancing_loss(scores, load, 2) - aux_loss(scores, indices)) < 1e-15


def test_keep_mask_keeps_each_experts_first_rows_in_token_order():
    idx = torch.tensor([[0, 1], [0, 2], [1, 0], [0, 1]])  # expert 0: tokens 0,1,2,3; 1: 0,2,3
    keep = ep_mod.keep_mask(idx, 3, 2)
    assert keep.tolist() == [[True, True], [True, True], [True, False], [False, False]]
    assert ep_mod.keep_mask(idx, 3, None).all()
    assert int((~keep).sum()) == moe_comm.dropped_rows([4, 3, 1], 2) == 3


def test_capacity_is_the_ceiling_of_c_k_n_over_e():
    assert moe_comm.capacity(12, 2, 4, 0.5) == 3
    assert moe_comm.capacity(12, 2, 4, 1) == 6
    assert moe_comm.capacity(10, 2, 4, 1.25) == math.ceil(Fraction(25, 4)) == 7
    assert moe_comm.capacity(0, 1, 4, 2) == 0


def test_experts_live_in_contiguous_blocks_and_the_owner_inverts_the_range():
    assert [moe_comm.expert_range(8, 4, r) for r in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert [moe_comm.expert_owner(e, 8, 4) for e in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_uniform_routing_sends_k_n_times_ep_minus_one_over_ep_rows_each_way():
    E, ep, n, k = 8, 4, 16, 2
    loads = [[n * k // E] * E for _ in range(ep)]  # every expert k·n/E rows from every rank
    for r in range(ep):
        assert moe_comm.rows_sent(loads, ep, r) == moe_comm.rows_received(loads, ep, r) \
            == moe_comm.uniform_rows(n, k, ep) == 24
    b = moe_comm.layer_bytes(loads, ep, 0, hidden=10, dtype_bytes=2)
    assert b["dispatch"] == b["combine"] == b["dispatch-backward"] == (480, 480)
    assert b["counts"] == (48, 48)  # 8 int64 counts, 3/4 of them to others


def test_load_imbalance_is_max_over_mean():
    assert moe_comm.load_imbalance([10, 10, 10, 10]) == 1
    assert moe_comm.load_imbalance([16, 8, 8, 8]) == Fraction(8, 5)


def test_deepseek_v3_dispatch_per_token_at_most_four_nodes_instead_of_eight_experts():
    v3 = moe_comm.DEEPSEEK_V3  # report §4.2: hidden 7168, 256 routed experts, top-8, ≤ 4 nodes
    assert (v3.hidden, v3.routed_experts, v3.top_k, v3.max_nodes) == (7168, 256, 8, 4)
    assert moe_comm.token_dispatch_bytes(v3.hidden, v3.top_k, 2) == 114_688  # BF16, per expert
    assert moe_comm.token_dispatch_bytes(v3.hidden, v3.max_nodes, 2) == 57_344  # once per node


@pytest.mark.parametrize("call, name", [
    (lambda: moe_comm.expert_range(6, 4, 0), "num_experts"),
    (lambda: moe_comm.expert_range(8, 0, 0), "ep"),
    (lambda: moe_comm.expert_range(8, 4, 4), "rank"),
    (lambda: moe_comm.expert_owner(8, 8, 4), "expert"),
    (lambda: moe_comm.capacity(12, 2, 4, 0), "capacity_factor"),
    (lambda: moe_comm.capacity(12, 5, 4, 1), "top_k"),
    (lambda: moe_comm.capacity(-1, 2, 4, 1), "tokens"),
    (lambda: moe_comm.dropped_rows([1, -2], 1), "loads[1]"),
    (lambda: moe_comm.rows_sent([[1, 2]], 2, 0), "loads_by_rank"),
    (lambda: moe_comm.rows_sent([[1, 2], [1]], 2, 0), "loads_by_rank"),
    (lambda: moe_comm.layer_bytes([[1, 1], [1, 1]], 2, 0, 0, 2), "hidden"),
    (lambda: moe_comm.uniform_rows(4, 0, 2), "top_k"),
    (lambda: moe_comm.load_imbalance([0, 0]), "loads"),
    (lambda: moe_comm.token_dispatch_bytes(7168, -1, 2), "copies"),
    (lambda: ep_mod.keep_mask(torch.zeros(3, 2), 4, 1), "indices"),
    (lambda: ep_mod.keep_mask(torch.zeros(3, 2, dtype=torch.long), 4, -1), "capacity"),
    (lambda: ep_mod.ExpertParallel(nn.Linear(2, 2)), "moe"),
    (lambda: ep_mod.ExpertParallel(TinyMoE(), capacity_factor=0), "capacity_factor"),
    (lambda: demo.batch(0, 8, 2), "tokens"),
    (lambda: demo.build(3), "make"),
    (lambda: ep_mod.apply(nn.Linear(2, 2)), "model"),
    (lambda: ep_mod.apply([nn.Linear(2, 2)]), "model"),
    (lambda: ep_mod.expert_parameter(3), "name"),
    (lambda: ep_mod.reduce_gradients("model"), "model"),
    (lambda: ep_mod.balancing_loss(torch.ones(3, 4), torch.ones(4), 0), "k"),
    (lambda: ep_mod.balancing_loss(torch.ones(3, 4), [1, 1, 1, 1], 2), "load"),
])
def test_bad_arguments_raise_valueerror_naming_the_argument(call, name):
    with pytest.raises(ValueError, match="^" + re.escape(name) + " must"):
        call()

