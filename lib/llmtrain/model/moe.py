"""A mixture-of-experts LLaMA, read top to bottom (混合专家).

A MoE layer replaces the dense SwiGLU MLP of a decoder layer by E smaller SwiGLU experts and
a router. For each token x the router scores every expert, keeps the k best and sums their
outputs weighted by the (renormalised) scores; an optional shared expert sees every token:

    s = score(x W_gate^T)            softmax (Mixtral, Qwen2-MoE) or sigmoid (DeepSeek-V3)
    K = top-k of (s + b)             b: DeepSeek-V3's balancing bias, used for choosing only
    y = Σ_{e∈K} w_e · Expert_e(x) + [σ(x·g)] · Shared(x)     w_e = s_e (/ Σ_K s) (· scale)

Only k of the E experts run per token: total parameters grow with E, the compute per token
(the "active" parameters) with k. Module names follow transformers (``mlp.gate.weight``,
``mlp.gate.e_score_correction_bias``) except where a plain ModuleList reads better:
``mlp.experts.{e}.{gate,up,down}_proj.weight``, ``mlp.shared.*``, ``mlp.shared_gate.weight``.
``hf_state_dict_to_ours`` maps Mixtral's, Qwen2-MoE's and DeepSeek-V3's keys (their experts
stacked in 3-D tensors) onto these.

Checked against transformers' MixtralForCausalLM, Qwen2MoeForCausalLM and DeepseekV3MoE in
tests/test_moe.py (logits, parameter counts, the load-balancing loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import check
from .llama import MLP, Llama, Output, upcast
from .shapes import ModelShape, resolve

__all__ = ["Routing", "MIXTRAL", "QWEN2_MOE", "DEEPSEEK_V3", "SCORINGS", "Router", "Expert",
           "MoE", "MoELlama", "expert_load", "aux_loss", "imbalance", "balancing_run",
           "hf_state_dict_to_ours"]

SCORINGS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class Routing:
    """How a router turns scores into the top-k experts and their weights (nothing here changes
    a parameter count; the sizes live in ``ModelShape``).

    scoring: "softmax" over the E experts (Mixtral, Qwen2-MoE) or a "sigmoid" per expert
        (DeepSeek-V3).
    norm_topk_prob: divide the k chosen scores by their sum (Mixtral, DeepSeek-V3: yes;
        Qwen2-MoE's config decides).
    n_group, topk_group: group-limited routing (DeepSeek-V3): the E experts form n_group groups,
        a group scores the sum of its two best (biased) scores, and only the topk_group best
        groups may be chosen from. n_group = 1: no limit.
    routed_scaling_factor: the routed experts' weights are multiplied by it (DeepSeek-V3: 2.5).
    aux_loss_coef: α of the load-balancing loss α·E·Σ_i f_i·P_i added to the LM loss.
    bias_update_speed: γ of auxiliary-loss-free balancing: after a step, b_i -= γ for an
        overloaded expert, += γ for an underloaded one (``MoE.update_bias``).
    """

    scoring: str = "softmax"
    norm_topk_prob: bool = True
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    aux_loss_coef: float = 0.0
    bias_update_speed: float = 0.0

    def __post_init__(self) -> None:
        check.one_of("scoring", self.scoring, SCORINGS)
        check.boolean("norm_topk_prob", self.norm_topk_prob)
        check.positive_int("n_group", self.n_group)
        check.integer("topk_group", self.topk_group, 1, self.n_group)
        check.positive_number("routed_scaling_factor", self.routed_scaling_factor)
        check.number("aux_loss_coef", self.aux_loss_coef, 0)
        check.number("bias_update_speed", self.bias_update_speed, 0)


# The routings of the three models compared with transformers (their configs' defaults; the
# DeepSeek-V3 groups are those of its released config: 256 experts in 8 groups, 4 kept).
MIXTRAL = Routing("softmax", norm_topk_prob=True)
QWEN2_MOE = Routing("softmax", norm_topk_prob=False)
DEEPSEEK_V3 = Routing("sigmoid", norm_topk_prob=True, n_group=8, topk_group=4,
                      routed_scaling_factor=2.5)


class Router(nn.Linear):
    """The gate: a Linear H -> E without bias (its output: one logit per expert), plus the
    balancing bias b (a buffer, not trained by gradients; zero unless ``update_bias`` moves it)."""

    def __init__(self, hidden: int, num_experts: int, k: int, routing: Routing):
        super().__init__(hidden, num_experts, bias=False)
        if num_experts % routing.n_group:
            raise ValueError(f"n_group={routing.n_group} must divide num_experts={num_experts}")
        if k > (num_experts // routing.n_group) * routing.topk_group:
            raise ValueError(f"experts_per_token={k} must be at most the experts in the "
                             f"topk_group={routing.topk_group} kept groups")
        self.k, self.routing = k, routing
        self.register_buffer("e_score_correction_bias", torch.zeros(num_experts))

    def route(self, x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For tokens x2d (n, H): weights (n, k), expert indices (n, k) and the scores (n, E)
        (softmax probabilities or sigmoids, fp32 or float64 as the model)."""
        r, E = self.routing, self.out_features
        logits = super().forward(x2d).to(upcast(x2d.dtype))
        scores = logits.softmax(-1) if r.scoring == "softmax" else logits.sigmoid()
        choice = scores + self.e_score_correction_bias.to(scores.dtype)  # bias: choosing only
        if r.n_group > 1:  # keep the topk_group groups whose two best scores sum highest
            grouped = choice.view(-1, r.n_group, E // r.n_group)
            group_scores = grouped.topk(min(2, E // r.n_group), dim=-1).values.sum(-1)
            keep = torch.zeros_like(group_scores, dtype=torch.bool)
            keep.scatter_(1, group_scores.topk(r.topk_group, dim=-1).indices, True)
            choice = choice.masked_fill(~keep.repeat_interleave(E // r.n_group, dim=1),
                                        float("-inf"))
        indices = choice.topk(self.k, dim=-1).indices
        weights = scores.gather(1, indices)  # the unbiased scores of the chosen experts
        if r.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
        return (weights * r.routed_scaling_factor).to(x2d.dtype), indices, scores


class Expert(MLP):
    """One expert: a SwiGLU MLP (llama.MLP's forward) of its own width, without biases."""

    def __init__(self, hidden: int, intermediate: int):
        nn.Module.__init__(self)
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)  # W^G
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)  # W^U
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)  # W^D
        self.gate_up_proj = None


def expert_load(indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Tokens routed to each expert: (E,) int64 counts of ``indices`` (n, k); sums to n·k."""
    check.positive_int("num_experts", num_experts)
    check.tensor("indices", indices, floating=False)
    return torch.bincount(indices.flatten(), minlength=num_experts)


def aux_loss(scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's load-balancing loss E·Σ_i f_i·P_i for one layer: f_i = tokens sent to
    expert i / tokens (each of a token's k choices counts, so Σ f_i = k, as transformers'
    ``load_balancing_loss_func``), P_i = mean router probability of expert i (sigmoid scores
    normalised to sum 1 per token first, as DeepSeek-V3's s'). Uniform routing gives k. (Fedus et al. 2022; checked against transformers in tests/test_moe.py.)"""
    check.tensor("scores", scores, dim=2, floating=True)
    check.tensor("indices", indices, dim=2, floating=False)
    n, E = scores.shape
    f = expert_load(indices, E).to(scores.dtype) / n
    P = (scores / scores.sum(-1, keepdim=True)).mean(0)  # sigmoid scores normalised first
    return E * (f * P).sum()


def imbalance(load: torch.Tensor) -> float:
    """max / mean of per-expert token counts: 1.0 is perfectly balanced, E all on one expert."""
    check.tensor("load", load, dim=1)
    load = load.double()
    if load.sum() <= 0:
        check.fail("load", "counts with a positive sum", load)
    return (load.max() / load.mean()).item()


class MoE(nn.Module):
    """Route each token to k of E experts, sum their outputs weighted, add the shared expert.

    After each forward: ``last_load`` (E,) tokens per expert, ``last_aux_loss`` (a scalar
    tensor in the graph, E·Σ f_i·P_i). Expert parallelism takes the parts: ``route``,
    ``experts`` (an nn.ModuleList), ``shared`` (or None) and ``shared_gate`` (or None).
    """

    def __init__(self, hidden: int, expert_size: int, num_experts: int, k: int,
                 shared_size: int = 0, shared_gate: bool = False,
                 routing: Routing = MIXTRAL):
        super().__init__()
        check.positive_int("hidden", hidden)
        check.positive_int("expert_size", expert_size)
        check.positive_int("num_experts", num_experts)
        check.integer("k", k, 1, num_experts)
        check.integer("shared_size", shared_size, 0)
        check.boolean("shared_gate", shared_gate)
        if not isinstance(routing, Routing):
            check.fail("routing", "a moe.Routing", routing)
        if shared_gate and not shared_size:
            raise ValueError("shared_gate=True needs shared_size > 0")
        self.num_experts, self.k, self.routing = num_experts, k, routing
        self.gate = Router(hidden, num_experts, k, routing)
        self.experts = nn.ModuleList(Expert(hidden, expert_size) for _ in range(num_experts))
        self.shared = Expert(hidden, shared_size) if shared_size else None
        self.shared_gate = nn.Linear(hidden, 1, bias=False) if shared_gate else None
        self.last_load: torch.Tensor | None = None
        self.last_aux_loss: torch.Tensor | None = None

    def route(self, x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights (n, k) and expert indices (n, k) for tokens x2d (n, H)."""
        weights, indices, _ = self.gate.route(x2d)
        return weights, indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2d = x.reshape(-1, shape[-1])  # (n, H): every token of the batch
        weights, indices, scores = self.gate.route(x2d)
        out = torch.zeros_like(x2d)
        for e, expert in enumerate(self.experts):  # each expert runs on its own tokens only
            token, slot = torch.where(indices == e)
            if len(token):
                out.index_add_(0, token, expert(x2d[token]) * weights[token, slot, None])
        if self.shared is not None:
            shared = self.shared(x2d)
            if self.shared_gate is not None:  # Qwen2-MoE: a per-token sigmoid gate
                shared = torch.sigmoid(self.shared_gate(x2d)) * shared
            out = out + shared
        self.last_load = expert_load(indices, self.num_experts).detach()
        self.last_aux_loss = aux_loss(scores, indices)
        return out.view(shape)

    @torch.no_grad()
    def update_bias(self, load: torch.Tensor | None = None) -> None:
        """Auxiliary-loss-free balancing (DeepSeek-V3): b_i += γ·sign(mean load - load_i), from
        ``load`` (E,) tokens per expert over the step (default: ``last_load``)."""
        load = self.last_load if load is None else load
        if load is None:
            raise ValueError("load must be given before the first forward (no last_load yet)")
        check.tensor("load", load)
        if tuple(load.shape) != (self.num_experts,):
            check.fail("load", f"a tensor of shape ({self.num_experts},)", load)
        load = load.to(self.gate.e_score_correction_bias.dtype)
        self.gate.e_score_correction_bias += (self.routing.bias_update_speed
                                              * torch.sign(load.mean() - load))


class MoELlama(Llama):
    """The reference Llama with a ``MoE`` in place of the MLP in every layer from
    ``shape.first_dense_layers`` on; the loss adds aux_loss_coef × each MoE layer's
    load-balancing loss (when the coefficient is > 0), "for each Switch layer, this auxiliary
    loss is added to the total model loss" (Fedus et al. 2022, §2.2)."""

    def __init__(self, shape: ModelShape, routing: Routing = MIXTRAL, attn_impl: str = "sdpa"):
        shape = resolve(shape, "shape")
        if not getattr(shape, "num_experts", 0):
            check.fail("shape", "a MoE shape (num_experts > 0)", shape.name)
        if getattr(shape, "kv_lora_rank", None) is not None:
            check.fail("shape", "a shape without multi-head latent attention", shape.name)
        if not isinstance(routing, Routing):
            check.fail("routing", "a moe.Routing", routing)
        super().__init__(shape, attn_impl)
        self.routing = routing
        for i, layer in enumerate(self.model.layers):
            if i >= shape.first_dense_layers:
                layer.mlp = MoE(shape.hidden_size, shape.moe_intermediate_size,
                                shape.num_experts, shape.experts_per_token,
                                shape.shared_expert_size, shape.shared_expert_gate, routing)
        self.last_aux_loss: torch.Tensor | None = None
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Llama's init (the routers are Linears: N(0, std²)), and every balancing bias 0."""
        super().init_weights(std)
        for m in self.moe_layers():
            m.gate.e_score_correction_bias.zero_()

    def moe_layers(self) -> list[MoE]:
        """The MoE layers, lowest first."""
        return [layer.mlp for layer in self.model.layers if isinstance(layer.mlp, MoE)]

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> Output:
        """Logits; with labels the LM loss + aux_loss_coef · Σ over MoE layers of E·Σ_i f_i·P_i
        (``last_aux_loss``: that sum over layers)."""
        logits, loss = super().forward(input_ids, labels)
        self.last_aux_loss = torch.stack([m.last_aux_loss for m in self.moe_layers()]).sum()
        if loss is not None and self.routing.aux_loss_coef > 0:
            loss = loss + self.routing.aux_loss_coef * self.last_aux_loss
        return Output(logits, loss)

    def update_bias(self) -> None:
        """``MoE.update_bias`` on every MoE layer, from its last forward's load."""
        for m in self.moe_layers():
            m.update_bias()

    def load(self) -> torch.Tensor:
        """(MoE layers, E) tokens per expert in the last forward."""
        return torch.stack([m.last_load for m in self.moe_layers()])


def balancing_run(moe: MoE, tokens: torch.Tensor, aux_lr: float = 0.0) -> torch.Tensor:
    """Route batch s of ``tokens`` (steps, n, H) through ``moe``'s router, s = 0, 1, ...; after
    each batch, balance: with ``moe.routing.bias_update_speed`` γ > 0 the bias moves by ±γ
    (``update_bias``, DeepSeek-V3's rule), with ``aux_lr`` > 0 the router weights take one SGD
    step on the aux loss E·Σ f_i·P_i (its gradient changes the scores themselves). Returns the
    load of every step, (steps, E) tokens per expert. Only the router runs (the experts do not
    change which expert a token goes to)."""
    check.module("moe", moe, MoE, "a moe.MoE")
    check.tensor("tokens", tokens, dim=3, floating=True)
    check.number("aux_lr", aux_lr, 0)
    opt = torch.optim.SGD([moe.gate.weight], lr=aux_lr) if aux_lr > 0 else None
    loads = []
    for x in tokens:
        with torch.set_grad_enabled(opt is not None):
            _, indices, scores = moe.gate.route(x)
        load = expert_load(indices, moe.num_experts)
        if opt is not None:
            opt.zero_grad()
            aux_loss(scores, indices).backward()
            opt.step()
        if moe.routing.bias_update_speed > 0:
            moe.update_bias(load)
        loads.append(load)
    return torch.stack(loads)


def hf_state_dict_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' Mixtral / Qwen2-MoE / DeepSeek-V3 state_dict with our key names: the stacked
    ``experts.gate_up_proj`` (E, 2I, H) cut into each expert's gate (first I rows) and up,
    ``experts.down_proj`` (E, H, I) into each expert's down; ``shared_expert(s)`` -> ``shared``;
    ``shared_expert_gate`` -> ``shared_gate``; a router without a balancing bias gets zeros. Other keys pass unchanged."""
    if not isinstance(state, dict):
        check.fail("state", "a dict of tensors (a state_dict)", state)
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        head = key.rpartition(".")[0]
        if key.endswith("experts.gate_up_proj"):
            gate, up = t.chunk(2, dim=1)
            for e in range(t.shape[0]):
                out[f"{head}.{e}.gate_proj.weight"] = gate[e]
                out[f"{head}.{e}.up_proj.weight"] = up[e]
        elif key.endswith("experts.down_proj"):
            for e in range(t.shape[0]):
                out[f"{head}.{e}.down_proj.weight"] = t[e]
        elif ".shared_expert_gate." in key:
            out[key.replace(".shared_expert_gate.", ".shared_gate.")] = t
        elif ".shared_experts." in key or ".shared_expert." in key:
            out[key.replace(".shared_experts.", ".shared.").replace(".shared_expert.",
                                                                     ".shared.")] = t
        else:
            out[key] = t
            if key.endswith("mlp.gate.weight") and key[:-6] + "e_score_correction_bias" not in state:
                out[key[:-6] + "e_score_correction_bias"] = torch.zeros(t.shape[0], dtype=t.dtype)
    return out
