"""The MoE LLaMA (llmtrain.model.moe) against transformers and against closed forms.

Oracles: transformers 5's MixtralForCausalLM, Qwen2MoeForCausalLM and DeepseekV3MoE built from
small configs with random weights copied into ours (logits, losses, parameter counts on meta);
transformers' ``load_balancing_loss_func`` for the aux loss; a dense sum over all experts for
top-k = E; DeepSeek-V3's update rule b_i += γ·sign(mean - load_i) written out by hand.

transformers casts to float32 inside a float64 model (RMSNorm, the attention softmax, the
routers: Mixtral's ``router_logits.float()``, Qwen2-MoE's ``softmax(dtype=torch.float)``,
DeepSeek-V3's ``.type(torch.float32)``). The fixture ``hf_float64`` turns exactly those casts of
float64 tensors into no-ops while the reference runs, so the comparison is float64 to float64
(< 1e-10); the fp32 tests run transformers unpatched (< 1e-5, as tests/test_llama.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import transformers  # noqa: E402  (a test dependency: missing, these tests must fail, not skip)
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from llmtrain.model.moe import (DEEPSEEK_V3, MIXTRAL, QWEN2_MOE, Expert, MoE, MoELlama, Routing,
                                aux_loss, balancing_run, expert_load, hf_state_dict_to_ours,
                                imbalance)
from llmtrain.model.shapes import ModelShape

B, T = 2, 16
ROPE = {"rope_type": "default", "rope_theta": 10000.0}


def _shape(**kw) -> ModelShape:
    base = dict(vocab_size=96, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                intermediate_size=40, max_seq_len=32, norm_eps=1e-5, num_experts=4,
                experts_per_token=2, moe_intermediate_size=24)
    base.update(kw)
    return ModelShape(**base)


def _mixtral_config(shape: ModelShape, experts: str | None = None):
    return transformers.MixtralConfig(experts_implementation=experts,
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
        intermediate_size=shape.moe_intermediate_size, num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads,
        num_local_experts=shape.num_experts, num_experts_per_tok=shape.experts_per_token,
        max_position_embeddings=shape.max_seq_len, rms_norm_eps=shape.norm_eps,
        rope_parameters=ROPE, sliding_window=None, tie_word_embeddings=False)


def _qwen2_moe_config(shape: ModelShape, norm_topk_prob: bool, experts: str | None = None):
    return transformers.Qwen2MoeConfig(experts_implementation=experts,
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size, num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads,
        num_experts=shape.num_experts, num_experts_per_tok=shape.experts_per_token,
        moe_intermediate_size=shape.moe_intermediate_size,
        shared_expert_intermediate_size=shape.shared_expert_size, norm_topk_prob=norm_topk_prob,
        mlp_only_layers=list(range(shape.first_dense_layers)), decoder_sparse_step=1,
        max_position_embeddings=shape.max_seq_len, rms_norm_eps=shape.norm_eps,
        rope_parameters=ROPE, tie_word_embeddings=False)


MIXTRAL_SHAPE = _shape()
QWEN_SHAPE = _shape(attention_bias=True, shared_expert_size=48, shared_expert_gate=True,
                    first_dense_layers=1, num_layers=3, num_experts=6)


def _randomize(model, seed: int = 0) -> None:
    """Weights large enough (norm gains away from 1) for the comparison to be sharp."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture
def hf_float64(monkeypatch):
    """Inside the test, a float64 tensor cast to float32 (.to, .float, .type, softmax's dtype)
    stays float64: transformers' own code then runs in float64 end to end."""
    def keep(t, dtype):
        return torch.float64 if t.dtype == torch.float64 and dtype == torch.float32 else dtype

    to, flt, typ, softmax = torch.Tensor.to, torch.Tensor.float, torch.Tensor.type, F.softmax

    def to64(self, *args, **kw):
        args = tuple(keep(self, a) if isinstance(a, torch.dtype) else a for a in args)
        if "dtype" in kw:
            kw["dtype"] = keep(self, kw["dtype"])
        return to(self, *args, **kw)

    def type64(self, dtype=None, *args, **kw):
        if dtype is None:
            return typ(self)
        return typ(self, keep(self, dtype), *args, **kw)

    def softmax64(x, *args, dtype=None, **kw):
        return softmax(x, *args, dtype=keep(x, dtype) if dtype is not None else None, **kw)

    monkeypatch.setattr(torch.Tensor, "to", to64)
    monkeypatch.setattr(torch.Tensor, "float", lambda self, *a, **k: self if self.dtype ==
                        torch.float64 else flt(self, *a, **k))
    monkeypatch.setattr(torch.Tensor, "type", type64)
    monkeypatch.setattr(torch.nn.functional, "softmax", softmax64)


def _pair(hf, shape: ModelShape, routing: Routing, dtype):
    _randomize(hf)
    ours = MoELlama(shape, routing)
    ours.load_state_dict(hf_state_dict_to_ours(hf.state_dict()), strict=True)
    return hf.to(dtype).eval(), ours.to(dtype).eval()


def _ids(shape: ModelShape, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, shape.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def _compare(hf, ours, shape, tol):
    ids = _ids(shape)
    with torch.no_grad():
        ref, out = hf(input_ids=ids, labels=ids), ours(ids, labels=ids)
    assert ref.logits.abs().max() > 0.5  # not a comparison between near-zeros
    assert (out.logits - ref.logits).abs().max().item() < tol
    assert abs(out.loss.item() - ref.loss.item()) < tol  # aux loss off on both sides
    return ours


def test_mixtral_logits_loss_and_every_gradient_equal_transformers_in_float64(hf_float64):
    hf, ours = _pair(transformers.MixtralForCausalLM(_mixtral_config(MIXTRAL_SHAPE, "eager")),
                     MIXTRAL_SHAPE, MIXTRAL, torch.float64)
    ours = _compare(hf, ours, MIXTRAL_SHAPE, 1e-10)
    assert all(0 < (m.last_load > 0).sum() for m in ours.moe_layers())
    ids = _ids(MIXTRAL_SHAPE)
    hf(input_ids=ids, labels=ids).loss.backward()
    ours(ids, labels=ids).loss.backward()
    hf_grads = hf_state_dict_to_ours({n: p.grad for n, p in hf.named_parameters()})
    for name, p in ours.named_parameters():  # experts' gradients cut out of the stacked ones
        assert (p.grad - hf_grads[name]).abs().max().item() < 1e-10, name
    assert ours.moe_layers()[0].gate.weight.grad.abs().max() > 1e-3


def test_routing_presets_are_the_transformers_configs_defaults():
    ds = transformers.DeepseekV3Config()
    assert (DEEPSEEK_V3.scoring, DEEPSEEK_V3.norm_topk_prob, DEEPSEEK_V3.n_group,
            DEEPSEEK_V3.topk_group, DEEPSEEK_V3.routed_scaling_factor) == (
        "sigmoid", ds.norm_topk_prob, ds.n_group, ds.topk_group, ds.routed_scaling_factor)
    assert QWEN2_MOE.norm_topk_prob == transformers.Qwen2MoeConfig().norm_topk_prob
    assert MIXTRAL.norm_topk_prob and MIXTRAL.scoring == QWEN2_MOE.scoring == "softmax"


def test_mixtral_logits_equal_unpatched_transformers_in_float32():
    hf, ours = _pair(transformers.MixtralForCausalLM(_mixtral_config(MIXTRAL_SHAPE)),
                     MIXTRAL_SHAPE, MIXTRAL, torch.float32)
    _compare(hf, ours, MIXTRAL_SHAPE, 1e-5)


@pytest.mark.parametrize("norm_topk_prob", [False, True])
def test_qwen2_moe_with_gated_shared_expert_and_a_dense_first_layer_equals_transformers(
        hf_float64, norm_topk_prob):
    hf = transformers.Qwen2MoeForCausalLM(_qwen2_moe_config(QWEN_SHAPE, norm_topk_prob, "eager"))
    routing = Routing("softmax", norm_topk_prob=norm_topk_prob)
    hf, ours = _pair(hf, QWEN_SHAPE, routing, torch.float64)
    assert type(ours.model.layers[0].mlp).__name__ == "MLP"  # first_dense_layers=1
    assert ours.moe_layers()[0].shared_gate is not None
    _compare(hf, ours, QWEN_SHAPE, 1e-10)


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_parameter_counts_and_keys_equal_transformers_on_meta(name):
    shape = MIXTRAL_SHAPE if name == "mixtral" else QWEN_SHAPE
    with torch.device("meta"):
        if name == "mixtral":
            hf = transformers.MixtralForCausalLM(_mixtral_config(shape))
        else:
            hf = transformers.Qwen2MoeForCausalLM(_qwen2_moe_config(shape, False))
        ours = MoELlama(shape)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())
    assert set(hf_state_dict_to_ours(hf.state_dict())) == set(ours.state_dict())


def _deepseek_pair(dtype):
    config = transformers.DeepseekV3Config(
        hidden_size=32, moe_intermediate_size=12, n_routed_experts=8, num_experts_per_tok=3,
        n_group=4, topk_group=2, n_shared_experts=2, routed_scaling_factor=2.5,
        norm_topk_prob=True, experts_implementation="eager")
    hf = DeepseekV3MoE(config)
    _randomize(hf)
    with torch.no_grad():  # a balancing bias that changes the choice
        hf.gate.e_score_correction_bias.copy_(0.05 * torch.randn(8, generator=torch.Generator()
                                                                 .manual_seed(3)))
    routing = Routing("sigmoid", norm_topk_prob=True, n_group=4, topk_group=2,
                      routed_scaling_factor=2.5)
    ours = MoE(32, 12, 8, 3, shared_size=2 * 12, routing=routing)
    state = {k: v for k, v in hf_state_dict_to_ours({f"mlp.{k}": v for k, v in
                                                      hf.state_dict().items()}).items()}
    ours.load_state_dict({k[4:]: v for k, v in state.items()}, strict=True)
    x = torch.randn(2, 24, 32, generator=torch.Generator().manual_seed(4))
    return hf.to(dtype), ours.to(dtype), x.to(dtype)


def test_deepseek_v3_moe_block_with_bias_groups_and_shared_experts_equals_transformers(
        hf_float64):
    hf, ours, x = _deepseek_pair(torch.float64)
    with torch.no_grad():
        ref, out = hf(x), ours(x)
        _, idx = ours.route(x.view(-1, 32))
        bias = ours.gate.e_score_correction_bias.clone()
        ours.gate.e_score_correction_bias.zero_()
        _, idx0 = ours.route(x.view(-1, 32))
        ours.gate.e_score_correction_bias.copy_(bias)
    assert (idx.sort(-1).values != idx0.sort(-1).values).any()  # the bias moved some choices
    groups = idx // 2  # experts 2g, 2g+1 form group g: at most topk_group=2 groups per token
    assert max(len(set(row.tolist())) for row in groups) <= 2
    assert ref.abs().max() > 0.5
    assert (out - ref).abs().max().item() < 1e-10


def test_deepseek_v3_moe_block_equals_unpatched_transformers_in_float32():
    hf, ours, x = _deepseek_pair(torch.float32)
    with torch.no_grad():
        assert (ours(x) - hf(x)).abs().max().item() < 1e-5


def test_aux_loss_equals_transformers_per_layer_but_not_its_pooling_over_layers():
    hf, ours = _pair(transformers.MixtralForCausalLM(_mixtral_config(MIXTRAL_SHAPE)),
                     MIXTRAL_SHAPE, MIXTRAL, torch.float32)
    ids = _ids(MIXTRAL_SHAPE)
    with torch.no_grad():
        ref = hf(input_ids=ids, output_router_logits=True)
        ours(ids)
    layers = ours.moe_layers()
    for m, logits in zip(layers, ref.router_logits):  # one layer: the same E·Σ f_i·P_i
        hf_one = load_balancing_loss_func((logits,), 4, 2)
        assert abs(m.last_aux_loss.item() - hf_one.item()) < 1e-5
    # transformers pools f and P over the layers before multiplying, E·Σ(mean_l f)(mean_l P);
    # ours adds each layer's loss (Switch §2.2): Σ_l E·Σ f·P, not L times the pooled value
    per_layer = [m.last_aux_loss.item() for m in layers]
    assert abs(ours.last_aux_loss.item() - sum(per_layer)) < 1e-6
    assert abs(len(layers) * ref.aux_loss.item() - sum(per_layer)) > 1e-3


def test_aux_loss_is_k_for_uniform_routing_and_e_times_k_on_one_expert():
    n, E, k = 12, 4, 2
    uniform = torch.full((n, E), 1 / E, dtype=torch.float64)
    spread = torch.tensor([[i % E, (i + 1) % E] for i in range(n)])
    assert aux_loss(uniform, spread).item() == pytest.approx(k, abs=1e-12)
    onehot = torch.zeros(n, E, dtype=torch.float64)
    onehot[:, 0] = 1.0
    assert aux_loss(onehot, torch.tensor([[0, 1]] * n)).item() == pytest.approx(E, abs=1e-12)


def test_top_k_equal_to_all_experts_is_the_dense_probability_weighted_sum():
    torch.manual_seed(0)
    moe = MoE(16, 8, 4, 4, routing=MIXTRAL).double()
    x = torch.randn(10, 16, dtype=torch.float64)
    p = F.softmax(moe.gate(x), -1)
    dense = sum(p[:, e, None] * moe.experts[e](x) for e in range(4))
    assert (moe(x) - dense).abs().max().item() < 1e-12


def test_route_weights_sum_to_one_and_pick_the_highest_scores():
    torch.manual_seed(0)
    moe = MoE(16, 8, 6, 2, routing=MIXTRAL).double()
    x = torch.randn(20, 16, dtype=torch.float64)
    w, idx = moe.route(x)
    assert torch.allclose(w.sum(-1), torch.ones(20, dtype=torch.float64), atol=1e-12)
    top = moe.gate(x).topk(2, dim=-1).indices
    assert torch.equal(idx.sort(-1).values, top.sort(-1).values)
    assert (idx[:, 0] != idx[:, 1]).all()


def test_bias_chooses_the_experts_but_does_not_weight_them():
    torch.manual_seed(0)
    moe = MoE(16, 8, 4, 1, routing=Routing("sigmoid", norm_topk_prob=False)).double()
    x = torch.randn(20, 16, dtype=torch.float64)
    moe.gate.e_score_correction_bias[3] = 10.0  # expert 3 wins every token
    w, idx = moe.route(x)
    assert (idx == 3).all()
    assert torch.allclose(w[:, 0], torch.sigmoid(moe.gate(x)[:, 3]), atol=1e-15, rtol=0)


def test_update_bias_moves_each_expert_by_gamma_toward_the_mean_load():
    moe = MoE(8, 4, 4, 1, routing=Routing("sigmoid", bias_update_speed=0.001))
    moe.update_bias(torch.tensor([5, 1, 2, 0]))  # mean 2
    assert moe.gate.e_score_correction_bias.tolist() == pytest.approx([-0.001, 0.001, 0.0, 0.001])


def test_last_load_counts_every_tokens_k_choices():
    torch.manual_seed(0)
    moe = MoE(16, 8, 6, 2, shared_size=8)
    moe(torch.randn(3, 5, 16))
    assert moe.last_load.sum().item() == 3 * 5 * 2
    assert torch.equal(expert_load(torch.tensor([[0, 2], [2, 1]]), 4), torch.tensor([1, 1, 2, 0]))
    assert imbalance(torch.tensor([2, 2, 2, 2])) == 1.0
    assert imbalance(torch.tensor([8, 0, 0, 0])) == 4.0


def test_moe_llama_loss_adds_coef_times_summed_aux_and_backward_reaches_router_and_experts():
    torch.manual_seed(0)
    shape = _shape(first_dense_layers=1, num_layers=3)
    plain = MoELlama(shape, MIXTRAL).double()
    coef = MoELlama(shape, Routing(aux_loss_coef=0.01)).double()
    coef.load_state_dict(plain.state_dict())
    ids = _ids(shape)
    lm = plain(ids, labels=ids).loss
    out = coef(ids, labels=ids)
    assert abs(out.loss.item() - (lm.item() + 0.01 * coef.last_aux_loss.item())) < 1e-12
    out.loss.backward()
    m = coef.moe_layers()[0]
    assert m.gate.weight.grad.abs().sum() > 0
    used = [e for e in range(4) if m.last_load[e] > 0]
    assert used and all(m.experts[e].up_proj.weight.grad is not None for e in used)
    assert len(coef.moe_layers()) == 2 and tuple(coef.load().shape) == (2, 4)


def test_meta_then_to_empty_then_init_weights_zeroes_the_balancing_bias():
    with torch.device("meta"):
        model = MoELlama(MIXTRAL_SHAPE, Routing("sigmoid"))
    model.to_empty(device="cpu")
    model.init_weights()
    assert all((m.gate.e_score_correction_bias == 0).all() for m in model.moe_layers())
    assert torch.isfinite(model(_ids(MIXTRAL_SHAPE)).logits).all()


def _skewed(routing):
    """Experts 0 and 1 favoured by every token (notebook 14 §3.4's setup, 40 steps)."""
    torch.manual_seed(0)
    moe = MoE(32, 16, 8, 2, routing=routing).double()
    g = torch.Generator().manual_seed(1)
    u = F.normalize(torch.randn(32, generator=g, dtype=torch.float64), dim=0)
    with torch.no_grad():
        moe.gate.weight.normal_(0, 0.3, generator=g)
        moe.gate.weight[:2] += 2.0 * u
    return moe, torch.randn(40, 256, 32, generator=g, dtype=torch.float64) + u


def test_bias_balances_a_skewed_router_without_moving_its_weights_and_aux_loss_by_moving_them():
    results = {}
    for name, routing, lr in [("none", Routing("sigmoid"), 0.0),
                              ("aux", Routing("sigmoid"), 0.5),
                              ("bias", Routing("sigmoid", bias_update_speed=0.01), 0.0)]:
        moe, tokens = _skewed(routing)
        w0 = moe.gate.weight.detach().clone()
        loads = balancing_run(moe, tokens, aux_lr=lr)
        assert tuple(loads.shape) == (40, 8) and (loads.sum(1) == 256 * 2).all()
        moved = (moe.gate.weight - w0).norm().item()
        results[name] = (imbalance(loads[-10:].sum(0)), moved)
        bias = moe.gate.e_score_correction_bias
        steps = (bias / 0.01).round()  # the bias moves in whole steps of γ
        assert torch.allclose(bias, 0.01 * steps, atol=1e-12)
    assert results["none"][0] > 2.0 and results["none"][1] == 0.0
    assert 1.0 < results["aux"][0] < results["none"][0] and results["aux"][1] > 0.5
    assert results["bias"][0] < 1.2 and results["bias"][1] == 0.0


def test_expert_is_a_swiglu_without_biases():
    e = Expert(8, 6)
    assert [n for n, _ in e.named_parameters()] == ["gate_proj.weight", "up_proj.weight",
                                                    "down_proj.weight"]


@pytest.mark.parametrize("make, name", [
    (lambda: Routing(scoring="relu"), "scoring"),
    (lambda: Routing(n_group=0), "n_group"),
    (lambda: Routing(n_group=2, topk_group=3), "topk_group"),
    (lambda: Routing(routed_scaling_factor=0), "routed_scaling_factor"),
    (lambda: Routing(aux_loss_coef=-1), "aux_loss_coef"),
    (lambda: Routing(bias_update_speed=-0.1), "bias_update_speed"),
    (lambda: MoE(0, 4, 4, 1), "hidden"),
    (lambda: MoE(8, 4, 4, 5), "k"),
    (lambda: MoE(8, 4, 4, 1, shared_gate=True), "shared_gate"),
    (lambda: MoE(8, 4, 4, 1, routing="softmax"), "routing"),
    (lambda: MoE(8, 4, 6, 1, routing=Routing(n_group=4)), "n_group"),
    (lambda: MoE(8, 4, 8, 5, routing=Routing(n_group=4, topk_group=2)), "experts_per_token"),
    (lambda: MoELlama(_shape(num_experts=0, experts_per_token=0, moe_intermediate_size=None)),
     "shape"),
    (lambda: MoE(8, 4, 4, 1).update_bias(torch.ones(3)), "load"),
    (lambda: MoE(8, 4, 4, 1).update_bias(), "load"),
    (lambda: expert_load([0, 1], 2), "indices"),
    (lambda: imbalance(torch.zeros(4)), "load"),
    (lambda: hf_state_dict_to_ours([1]), "state"),
    (lambda: balancing_run(torch.nn.Linear(2, 2), torch.zeros(1, 2, 8)), "moe"),
    (lambda: balancing_run(MoE(8, 4, 4, 1), torch.zeros(2, 8)), "tokens"),
    (lambda: balancing_run(MoE(8, 4, 4, 1), torch.zeros(1, 2, 8), aux_lr=-1), "aux_lr"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_full_recomputation_gives_the_same_loss_gradients_and_aux_loss():
    from llmtrain.model import recompute

    torch.manual_seed(0)
    shape = _shape(num_layers=3, first_dense_layers=1)
    plain = MoELlama(shape, Routing(aux_loss_coef=0.01)).double()
    again = MoELlama(shape, Routing(aux_loss_coef=0.01)).double()
    again.load_state_dict(plain.state_dict())
    recompute.apply(again, "full")
    ids = _ids(shape)
    a, b = plain(ids, labels=ids).loss, again(ids, labels=ids).loss
    assert abs(a.item() - b.item()) < 1e-12
    a.backward()
    b.backward()
    for (name, p), q in zip(plain.named_parameters(), again.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert (p.grad - q.grad).abs().max().item() < 1e-12, name


def test_the_training_loop_trains_a_moe_llama():
    from llmtrain.recipes.train import train

    torch.manual_seed(0)
    model = MoELlama(_shape(vocab_size=256), Routing(aux_loss_coef=0.01))
    hist = train(model, steps=4, batch_size=2, seq_len=16, peak_lr=1e-2)
    assert hist.loss[-1] < hist.loss[0]
