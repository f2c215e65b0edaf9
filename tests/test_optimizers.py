"""llmtrain.recipes.optimizers: Adam + L2 vs AdamW and β₂'s memory, against torch's optimizers
(the oracle) and the closed forms."""

import math

import pytest
import sympy as sp
import torch

from llmtrain.recipes import optimizers as O


def _torch_steps(decoupled, steps=4, lr=0.01, wd=0.1, betas=(0.9, 0.95), eps=1e-8):
    """(before, grad, state before, after, state after) of each step of torch's optimizer."""
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64))
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = cls([p], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    out = []
    for t in range(1, steps + 1):
        st = opt.state.get(p, {})
        m0 = st["exp_avg"].clone() if st else torch.zeros_like(p)
        v0 = st["exp_avg_sq"].clone() if st else torch.zeros_like(p)
        w0 = p.detach().clone()
        p.grad = torch.randn(5, generator=g, dtype=torch.float64)
        opt.step()
        s = opt.state[p]
        out.append((t, w0, p.grad.clone(), m0, v0, p.detach().clone(), s["exp_avg"].clone(),
                    s["exp_avg_sq"].clone()))
    return out, dict(eta=lr, lam=wd, beta1=betas[0], beta2=betas[1], eps=eps)


@pytest.mark.parametrize("decoupled", [False, True])
def test_symbolic_update_is_torchs(decoupled):
    # oracle: torch.optim.Adam(weight_decay=λ) (L2) and torch.optim.AdamW, float64, 4 steps
    e = O.adam_update(decoupled)
    s = e["symbols"]
    steps, hp = _torch_steps(decoupled)
    args = [s[k] for k in ("w", "g", "m_prev", "v_prev", "t")]
    fixed = {s[k]: v for k, v in hp.items()}
    f = {k: sp.lambdify(args, e[k].subs(fixed), "math") for k in ("m", "v", "update")}
    for t, w0, grad, m0, v0, w1, m1, v1 in steps:
        for i in range(5):
            a = (float(w0[i]), float(grad[i]), float(m0[i]), float(v0[i]), t)
            assert f["m"](*a) == pytest.approx(float(m1[i]), rel=1e-12, abs=1e-15)
            assert f["v"](*a) == pytest.approx(float(v1[i]), rel=1e-12, abs=1e-15)
            assert f["update"](*a) == pytest.approx(float(w1[i] - w0[i]), rel=1e-9, abs=1e-15)


def test_l2_decay_is_normalised_and_decoupled_decay_is_not():
    # a weight with zero loss gradient, first step, ε = 0: Adam + L2 steps by η whatever λ
    # (λw/|λw|); AdamW by ηλw (m = v = 0)
    for decoupled, expected in ((False, lambda eta, lam, w: -eta), (True, lambda eta, lam, w: -eta * lam * w)):
        e = O.adam_update(decoupled)
        s = e["symbols"]
        u = e["update"].subs({s["g"]: 0, s["m_prev"]: 0, s["v_prev"]: 0, s["t"]: 1})
        if decoupled:
            u = u.subs(s["eps"], sp.Rational(1, 10**8))
        else:
            u = u.subs(s["eps"], 0)
        for eta, lam, w in ((sp.Rational(1, 100), sp.Rational(1, 10), 2), (1, 3, sp.Rational(1, 7))):
            got = sp.simplify(u.subs({s["eta"]: eta, s["lam"]: lam, s["w"]: w}))
            assert got == expected(eta, lam, w)
    # the structure: λ appears inside m (and v) for L2, outside for AdamW
    l2, dw = O.adam_update(False), O.adam_update(True)
    lam = l2["symbols"]["lam"]
    assert lam in l2["m"].free_symbols and lam not in dw["m"].free_symbols
    assert lam in dw["update"].free_symbols


def test_adamw_decays_an_untouched_weight_exactly():
    # oracle: torch.optim.AdamW with zero gradients; formula (1 − ηλ)^k
    p = torch.nn.Parameter(torch.tensor([1.0, -0.5, 0.02], dtype=torch.float64))
    opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.1)
    for _ in range(200):
        p.grad = torch.zeros_like(p)
        opt.step()
    want = torch.tensor([1.0, -0.5, 0.02], dtype=torch.float64) * O.decay_factor(1e-3, 0.1, 200)
    assert torch.allclose(p.detach(), want, rtol=1e-12, atol=0)
    assert O.decay_factor(1e-3, 0.1, 200) == pytest.approx(0.9999 ** 200, rel=1e-15)


def test_adam_l2_moves_an_untouched_weight_by_lr_whatever_lambda():
    # oracle: torch.optim.Adam(weight_decay=λ), zero loss gradient: the step is about η, and
    # the trajectory does not depend on λ (m ∝ λ and √v ∝ λ) up to ε
    runs = {}
    for lam in (0.01, 1.0):
        p = torch.nn.Parameter(torch.tensor([1.0, -0.5], dtype=torch.float64))
        opt = torch.optim.Adam([p], lr=1e-3, weight_decay=lam, eps=1e-12)
        for _ in range(100):
            p.grad = torch.zeros_like(p)
            opt.step()
        runs[lam] = p.detach().clone()
    assert torch.allclose(runs[0.01], runs[1.0], rtol=1e-9, atol=0)
    # 100 steps of about η = 1e-3 each towards 0: within 5 % of 0.1 moved (less as w shrinks:
    # m and v lag behind the shrinking decay gradient)
    moved = torch.tensor([1.0, 0.5], dtype=torch.float64) - runs[1.0].abs()
    assert torch.allclose(moved, torch.full((2,), 0.1, dtype=torch.float64), rtol=0.05)
    w0 = torch.tensor([1.0, -0.5])
    assert O.adam_l2_shrunk_norm(w0, 1e-3, 100) == pytest.approx(math.hypot(0.9, 0.4), rel=1e-6)
    assert O.adam_l2_shrunk_norm(w0, 1e-3, 1000) == 0.0


def test_half_life_steps():
    # closed form ln 2 / −ln β: 13.51 steps at β₂ = 0.95, 692.8 at 0.999
    assert O.half_life_steps(0.95) == pytest.approx(13.5134, abs=1e-4)
    assert O.half_life_steps(0.999) == pytest.approx(692.8005, abs=1e-4)
    k = O.half_life_steps(1 - 6e-5 * 0.1)
    assert (1 - 6e-5 * 0.1) ** k == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("beta2", [0.95, 0.999])
@pytest.mark.parametrize("pieces", [[(1.0, 40), (100.0, 1), (1.0, 60)],
                                    [(1.0, 50), (10.0, 50)], [(0.3, 1), (-2.0, 3), (5.0, 7)]])
def test_closed_form_updates_equal_torch_adam(beta2, pieces):
    # oracle: torch.optim.Adam, float64, lr 1
    cf = O.adam_updates(pieces, 0.9, beta2)
    me = O.adam_updates_measured(pieces, 0.9, beta2)
    assert len(cf) == len(me) == sum(n for _, n in pieces)
    assert max(abs(a - b) for a, b in zip(cf, me)) < 1e-12
    cf_eps = O.adam_updates(pieces, 0.9, beta2, eps=1e-3)
    me_eps = O.adam_updates_measured(pieces, 0.9, beta2, eps=1e-3)
    assert max(abs(a - b) for a, b in zip(cf_eps, me_eps)) < 1e-12


@pytest.mark.parametrize("beta2, before, fraction, steps",
                         [(0.95, 2000, 0.5, 100), (0.95, 2000, 0.9, 150),
                          (0.999, 20000, 0.5, 1204), (0.999, 20000, 0.9, 3751)])
def test_recovery_steps_count_the_closed_form(beta2, before, fraction, steps):
    # oracle: the exact closed form (adam_updates) after a long run of gradient 1 and one of 100:
    # the last step below `fraction` of the usual update is steps − 1 after the spike
    after = O.adam_updates([(1.0, before), (100.0, 1), (1.0, 5000)], 0.9, beta2)[before:]
    assert max(k for k, u in enumerate(after) if u < fraction) + 1 == steps
    assert math.ceil(O.recovery_steps(beta2, 100, fraction)) == steps
    assert O.recovery_steps(0.999, 10, 0.9) == 0.0  # a 10x spike never brings it below 90 %


def test_unused_rows_decay_as_the_closed_forms():
    # oracle: the closed forms; the rows of tokens 192..255 never get a loss gradient
    w = O.unused_rows("adamw", steps=6, lr=1e-3)
    assert len(w.unused_norm) == 7 and len(w.loss) == 6
    assert w.unused_norm[6] == pytest.approx(w.unused_norm[0] * O.decay_factor(1e-3, 0.1, 6),
                                             rel=1e-5)
    assert w.unused_norm[0] == pytest.approx(float(w.w0_unused.norm()), rel=1e-6)
    a = O.unused_rows("adam_l2", steps=6, lr=1e-3)
    assert a.unused_norm[0] == w.unused_norm[0]  # same initial weights
    assert a.unused_norm[6] == pytest.approx(O.adam_l2_shrunk_norm(a.w0_unused, 1e-3, 6), rel=0.02)


@pytest.mark.parametrize("call, name", [
    (lambda: O.adam_update(1), "decoupled"),
    (lambda: O.decay_factor(0, 0.1), "lr"),
    (lambda: O.decay_factor(1e-3, -0.1), "weight_decay"),
    (lambda: O.decay_factor(1e-3, 0.1, -1), "steps"),
    (lambda: O.decay_factor(2.0, 1.0), "lr·weight_decay"),
    (lambda: O.half_life_steps(1.0), "factor"),
    (lambda: O.half_life_steps(0), "factor"),
    (lambda: O.adam_l2_shrunk_norm([1.0], 1e-3, 1), "w0"),
    (lambda: O.adam_l2_shrunk_norm(torch.ones(2), 1e-3, -1), "steps"),
    (lambda: O.unused_rows("sgd", steps=1, lr=1e-3), "optimizer"),
    (lambda: O.unused_rows("adamw", steps=1, lr=1e-3, used_vocab=256), "used_vocab"),
    (lambda: O.adam_updates([], 0.9, 0.95), "pieces"),
    (lambda: O.adam_updates([(1.0, 0)], 0.9, 0.95), "pieces[0][1]"),
    (lambda: O.adam_updates([1.0], 0.9, 0.95), "pieces[0]"),
    (lambda: O.adam_updates([(1.0, 2)], 1.0, 0.95), "beta1"),
    (lambda: O.adam_updates_measured([(1.0, 2)], 0.9, -0.1), "beta2"),
    (lambda: O.adam_updates([(1.0, 2)], 0.9, 0.95, eps=-1), "eps"),
    (lambda: O.recovery_steps(0.95, 0.5, 0.5), "ratio"),
    (lambda: O.recovery_steps(0.95, 10, 1.0), "fraction"),
    (lambda: O.recovery_steps(1.0, 10, 0.5), "beta2"),
])
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=f"^{name.replace('[', '.').replace(']', '.')} must"):
        call()
