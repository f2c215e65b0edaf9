"""The Markov-chain corpus, its batches and the tiny training loop (llmtrain.recipes.train)."""

import math
from collections import Counter

import pytest
import torch

from llmtrain.recipes.batch import linear_ramp
from llmtrain.model.llama import Llama
from llmtrain.model.shapes import get
from llmtrain.recipes.train import (History, batches, corpus, entropy_rate_nats, successor_table,
    train)

TINY = get("tiny")


def test_corpus_is_deterministic_and_follows_the_chain():
    a, b, c = corpus(5000, 256, 0), corpus(5000, 256, 0), corpus(5000, 256, 1)
    assert a.dtype == torch.long and a.shape == (5000,)
    assert torch.equal(a, b) and not torch.equal(a, c)
    table = successor_table(256, 0)
    assert table.shape == (256, 4)
    assert all(len(set(row)) == 4 for row in table.tolist())  # distinct successors
    assert all(int(y) in table[int(x)].tolist() for x, y in zip(a[:-1], a[1:]))


def test_entropy_rate():
    assert entropy_rate_nats() == pytest.approx(1.75 * math.log(2), rel=1e-15)
    assert entropy_rate_nats([0.25] * 4) == pytest.approx(math.log(4), rel=1e-15)
    # plug-in estimate of H(x_{t+1} | x_t) from the corpus' bigram counts
    x = corpus(2**18, 32, 0).tolist()
    pairs, firsts = Counter(zip(x[:-1], x[1:])), Counter(x[:-1])
    n = len(x) - 1
    h = -sum(c / n * math.log(c / firsts[a]) for (a, _), c in pairs.items())
    assert h == pytest.approx(entropy_rate_nats(), abs=0.01)
    with pytest.raises(ValueError, match="probs"):
        corpus(10, 256, probs=[0.5, 0.6])
    with pytest.raises(ValueError, match="successors"):
        corpus(10, 3, probs=[0.25] * 4)


def test_batches_are_deterministic_and_grouping_free():
    tokens = corpus(10_000, 256, 0)
    first = next(batches(tokens, 8, 64, seed=3))
    assert first.shape == (8, 64) and first.dtype == torch.long
    assert torch.equal(first, next(batches(tokens, 8, 64, seed=3)))
    small = batches(tokens, 4, 64, seed=3)
    assert torch.equal(first, torch.cat([next(small), next(small)]))
    # each row is a window of the corpus
    start = int((tokens.unfold(0, 64, 1) == first[0]).all(1).nonzero()[0])
    assert torch.equal(tokens[start:start + 64], first[0])
    with pytest.raises(ValueError, match="seq_len"):
        next(batches(tokens, 8, 20_000))


def test_train_is_deterministic():
    kw = dict(steps=15, batch_size=4, seq_len=32, peak_lr=3e-3, seed=7)
    a, b = train("tiny", **kw), train("tiny", **kw)
    assert isinstance(a, History) and len(a.loss) == 15
    assert a == b  # every list, bit for bit
    assert train("tiny", **{**kw, "seed": 8}).loss != a.loss


def test_train_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(TINY, steps=1, batch_size=2, seq_len=16, peak_lr=1e-3)
    assert torch.equal(torch.rand(3), expected)


def test_loss_falls_towards_the_entropy_rate():
    # 200 steps of 8 x 64 tokens: from ln 256 = 5.55 to within ~0.3 nats of H = 1.213
    h = train(TINY, steps=200, batch_size=8, seq_len=64, peak_lr=3e-3)
    assert h.loss[0] == pytest.approx(math.log(256), abs=0.05)
    final = sum(h.loss[-20:]) / 20
    assert entropy_rate_nats() < final < 1.6
    assert h.tokens_seen[-1] == 200 * 8 * 64


def test_lr_schedule_and_history():
    sched = lambda s: 1e-3 * (s + 1) / 10  # noqa: E731
    torch.manual_seed(0)
    model = Llama(TINY)
    before = model.lm_head.weight.detach().clone()
    h = train(model, steps=10, batch_size=2, seq_len=16, lr_schedule=sched, grad_clip=None)
    assert not torch.equal(model.lm_head.weight, before)  # a model is trained in place
    assert h.step == list(range(10))
    assert h.lr == [sched(s) for s in range(10)]
    assert h.batch_size == [2] * 10 and h.tokens_seen == [32 * (s + 1) for s in range(10)]
    assert all(g > 0 and math.isfinite(g) for g in h.grad_norm)


def test_micro_batches_match_the_full_batch():
    # the same sequences, as 1 batch of 8 or 4 micro-batches of 2: the same training run up
    # to fp32 summation order
    kw = dict(steps=5, batch_size=8, seq_len=32, peak_lr=3e-3, optimizer="sgd")
    full, acc = train("tiny", **kw), train("tiny", micro_batch_size=2, **kw)
    assert full.loss == pytest.approx(acc.loss, rel=1e-5)
    assert full.grad_norm == pytest.approx(acc.grad_norm, rel=1e-4)


def test_batch_schedule_by_accumulation():
    ramp = lambda t: linear_ramp(t, start_tokens=64, end_tokens=256, ramp_tokens=1000,  # noqa: E731
                                 micro_batch_tokens=64)
    h = train(TINY, steps=12, batch_size=2, seq_len=32, peak_lr=1e-3, batch_schedule=ramp)
    assert h.batch_size[0] == 2 and h.batch_size[-1] == 8
    assert h.batch_size == sorted(h.batch_size)
    seen = [0] + h.tokens_seen[:-1]
    assert [b * 32 for b in h.batch_size] == [ramp(t) for t in seen]
    with pytest.raises(ValueError, match="micro_batch_tokens=64"):
        train(TINY, steps=2, batch_size=2, seq_len=32, peak_lr=1e-3,
              batch_schedule=lambda t: 100)


def test_progress(capsys):
    train(TINY, steps=20, batch_size=2, seq_len=16, peak_lr=1e-3, progress=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 11 and lines[-1].startswith("step    20/20  loss")
    train(TINY, steps=2, batch_size=2, seq_len=16, peak_lr=1e-3)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("kw,name", [
    (dict(steps=0), "steps"),
    (dict(peak_lr=None), "peak_lr"),
    (dict(peak_lr=-1.0), "peak_lr"),
    (dict(optimizer="adam"), "optimizer"),
    (dict(grad_clip=0.0), "grad_clip"),
    (dict(micro_batch_size=3), "micro_batch_size=3 must divide batch_size=4"),
    (dict(seq_len=1), "seq_len"),
    (dict(betas=(0.9, 1.0)), "betas"),
    (dict(eps=0.0), "eps"),
    (dict(param_groups=lambda m: [{"weights": []}]), "param_groups"),
    (dict(param_groups=lambda m: [{"params": m.parameters(), "lr_scale": 0}]), "lr_scale"),
    (dict(batch_transform=lambda s, b: b[:, :-1]), "batch_transform"),
])
def test_train_validation(kw, name):
    args = {**dict(steps=2, batch_size=4, seq_len=16, peak_lr=1e-3), **kw}
    with pytest.raises(ValueError, match=name):
        train(TINY, **args)
    with pytest.raises(ValueError, match="shape_or_model"):
        train(42, steps=1, batch_size=1, seq_len=16, peak_lr=1e-3)


def test_each_optimizer_is_the_torch_optimizer_it_names():
    """One step of train(optimizer=...) equals one step of the torch optimizer by hand."""
    kw = dict(steps=1, batch_size=2, seq_len=16, peak_lr=1e-2, weight_decay=0.1, grad_clip=None)
    data = next(batches(corpus(4096, TINY.vocab_size, 0), 2, 16, 0))
    for name, make in [("adamw", lambda g: torch.optim.AdamW(g, lr=1e-2, betas=(0.9, 0.95), eps=1e-8)),
                       ("adam_l2", lambda g: torch.optim.Adam(g, lr=1e-2, betas=(0.9, 0.95), eps=1e-8)),
                       ("adafactor", lambda g: torch.optim.Adafactor(g, lr=1e-2)),
                       ("sgd", lambda g: torch.optim.SGD(g, lr=1e-2, momentum=0.9))]:
        torch.manual_seed(3)
        a, b = Llama(TINY), Llama(TINY)
        b.load_state_dict(a.state_dict())
        train(a, optimizer=name, tokens=corpus(4096, TINY.vocab_size, 0), **kw)
        groups = [{"params": [p for p in b.parameters() if p.dim() >= 2], "weight_decay": 0.1},
                  {"params": [p for p in b.parameters() if p.dim() < 2], "weight_decay": 0.0}]
        opt = make(groups)
        b(data, labels=data).loss.backward()
        opt.step()
        for (n, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(p, q), (name, n)


def test_adam_l2_and_adamw_differ_only_where_decay_acts():
    kw = dict(steps=3, batch_size=2, seq_len=16, peak_lr=1e-2, grad_clip=None)
    assert train("tiny", optimizer="adamw", weight_decay=0.0, **kw).loss == \
        train("tiny", optimizer="adam_l2", weight_decay=0.0, **kw).loss
    assert train("tiny", optimizer="adamw", **kw).loss[-1] != train("tiny", optimizer="adam_l2", **kw).loss[-1]


def test_param_groups_scale_each_groups_learning_rate():
    """lr_scale 0 is refused; a tiny lr_scale freezes a group to rounding, the other moves."""
    torch.manual_seed(0)
    model = Llama(TINY)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    emb = [p for n, p in model.named_parameters() if "embed" in n]
    rest = [p for n, p in model.named_parameters() if "embed" not in n]
    train(model, steps=2, batch_size=2, seq_len=16, peak_lr=1e-2, weight_decay=0.0,
          param_groups=lambda m: [{"params": emb, "lr_scale": 1e-30}, {"params": rest}])
    for n, p in model.named_parameters():
        moved = float((p.detach() - before[n]).abs().max())
        assert (moved == 0.0) if "embed" in n else (moved > 1e-4), n


def test_batch_transform_replaces_the_batch_of_one_step():
    seen = []
    def bad(step, b):
        seen.append(step)
        return torch.zeros_like(b) if step == 3 else b
    h = train("tiny", steps=5, batch_size=2, seq_len=16, peak_lr=3e-3, batch_transform=bad)
    ref = train("tiny", steps=5, batch_size=2, seq_len=16, peak_lr=3e-3)
    assert seen == [0, 1, 2, 3, 4]
    assert h.loss[:3] == ref.loss[:3] and h.loss[3] != ref.loss[3]
