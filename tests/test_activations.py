"""Activation memory: ``measure`` on modules whose saved tensors are known by hand, the closed
forms ``saved_bytes`` against ``measure`` on our reference LLaMA and on transformers' models,
fake mode against real mode, and LLaMA-7B against facts.md §4."""

import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.checkpoint import checkpoint

from llmtrain.cost import activations as act
from llmtrain.model import shapes
from llmtrain.cost.activations import saved_bytes
from llmtrain.measure.activations import CHECKPOINT_INPUTS, ROOT, Saved, measure, measure_shape
from llmtrain.model.recompute import MODELLED
from llmtrain.model.llama import Llama
from llmtrain.model.shapes import ModelShape

import transformers  # noqa: E402,F401  (a test dependency: missing, these tests must fail, not skip)

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _consistent(s: Saved) -> None:
    """Every breakdown adds up to the total."""
    assert sum(s.by_module.values()) == s.total_bytes
    assert sum(s.by_op.values()) == s.total_bytes
    assert sum(s.by_layer.values()) + sum(s.outside_layers.values()) == s.total_bytes
    assert sum(r.bytes for r in s.tensors) == s.total_bytes


# --- measure on hand-made modules ----------------------------------------------------------

class Sin(nn.Module):
    def forward(self, x):
        return x.sin()  # SinBackward0 saves x


class Pair(nn.Module):
    """Two submodules save the same tensor; a third branch is computed and dropped."""

    def __init__(self):
        super().__init__()
        self.a, self.b = Sin(), Sin()

    def forward(self, x):
        (x * 3).exp()  # saved by ExpBackward0, but unreachable: freed when forward returns
        return self.a(x) + self.b(x)


def test_linear_saves_its_input_not_its_weight():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2, bias=False))
    x = torch.randn(5, 4)
    s = measure(model, x)
    # first Linear: x (5·4 fp32); second: the first one's output (5·3); weights excluded
    assert s.total_bytes == 4 * (5 * 4 + 5 * 3)
    assert s.by_module == {"0": 80, "1": 60}
    assert s.by_op == {"AddmmBackward0": 80, "MmBackward0": 60}
    assert s.by_layer == {} and s.outside_layers == s.by_module
    _consistent(s)


def test_parameters_are_excluded_and_views_dedup():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(6, 8))

        def forward(self, x):
            y = x * 2  # a new (6, 8) tensor; multiplying by a number saves nothing
            # w·y saves w (a parameter: 0) and y; y[:, :3] and yᵀ are views of y's storage
            return (self.w * y).sum() + y[:, :3].sin().sum() + y.t().cos().sum()

    s = measure(M(), torch.randn(6, 8, requires_grad=True))
    assert s.total_bytes == 6 * 8 * 4  # y once, at its full size
    assert s.by_module == {ROOT: 192}
    assert [r.op for r in s.tensors] == ["MulBackward0"]  # the first saver names it


def test_same_tensor_two_modules_counted_once_and_dropped_branch_not_counted():
    x = torch.randn(3, 5, requires_grad=True)
    s = measure(Pair(), x)
    assert s.total_bytes == 3 * 5 * 4
    assert s.by_module == {"a": 60}
    assert s.by_op == {"SinBackward0": 60}
    assert s.tensors[0].shape == (3, 5) and s.tensors[0].dtype == torch.float32


class Checkpointed(nn.Module):
    def __init__(self, exp_first: bool = False):
        super().__init__()
        self.first = Sin()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
        self.exp_first = exp_first

    def forward(self, x):
        h = x.exp() if self.exp_first else self.first(x)  # saves h (exp) or x (sin)
        return checkpoint(self.body, h, use_reentrant=False)  # keeps h, recomputes the body


def test_checkpoint_keeps_only_its_inputs():
    x = torch.randn(4, 4, requires_grad=True)
    s = measure(Checkpointed(), x)
    # x by sin, then h = sin(x) kept by the checkpoint; nothing inside the body
    assert s.by_op == {"SinBackward0": 64, CHECKPOINT_INPUTS: 64}
    assert s.by_module == {"first": 64, "body": 64}  # the module run inside the checkpoint
    s = measure(Checkpointed(exp_first=True), x)
    assert s.by_op == {"ExpBackward0": 64}  # exp saves h, the checkpoint keeps the same h
    assert measure(Checkpointed(), x, fake=True) == measure(Checkpointed(), x)


def test_fake_equals_real_and_allocates_nothing():
    model = Llama(shapes.get("tiny"))
    ids = torch.randint(0, 256, (2, 12))
    real, fake = measure(model, ids, labels=ids), measure(model, ids, labels=ids, fake=True)
    assert real == fake
    _consistent(real)
    with torch.device("meta"):
        meta = Llama(shapes.get("tiny"))
    assert measure(meta, ids, labels=ids, fake=True) == real
    assert all(p.is_meta for p in meta.parameters())


def test_table_and_str():
    s = measure_shape(shapes.get("tiny"), 1, 8)
    assert "layer 0" in str(s) and "total" in str(s)
    for by in ("module", "layer", "op", "tensor"):
        assert f"{s.total_bytes:,}" in s.table(by)
    with pytest.raises(ValueError, match="by"):
        s.table("nope")
    with pytest.raises(ValueError, match="model"):
        measure(lambda x: x, torch.ones(1))


# --- closed forms against measure ---------------------------------------------------------

@st.composite
def small_shapes(draw) -> ModelShape:
    """Tiny LLaMA-family shapes that transformers can build: MHA/GQA/MQA, head_dim != H/N,
    Qwen2 q/k/v biases or Llama biases everywhere, tied or not."""
    N = draw(st.sampled_from([1, 2, 4]))
    kv = draw(st.sampled_from([k for k in (1, 2, 4) if N % k == 0]))
    d = draw(st.sampled_from([2, 4, 6]))
    H = draw(st.sampled_from([8, 12, 16]))
    bias = draw(st.sampled_from(["none", "qwen2", "llama"])) if H % N == 0 else "none"
    return ModelShape(
        vocab_size=draw(st.integers(8, 40)), hidden_size=H, num_layers=draw(st.integers(1, 2)),
        num_heads=N, num_kv_heads=kv, intermediate_size=draw(st.integers(4, 24)),
        max_seq_len=16, head_dim=d, tie_embeddings=draw(st.booleans()),
        attention_bias=bias != "none", o_bias=bias == "llama", mlp_bias=bias == "llama")


def _check_against_measure(shape, B, T, dtype, impl, recompute, attention=None):
    kw = dict(dtype=dtype, impl=impl, recompute=recompute, attention=attention)
    real = measure_shape(shape, B, T, fake=False, **kw)
    _consistent(real)
    assert real.total_bytes == saved_bytes(shape, B, T, **kw)
    # term by term: each decoder layer, RoPE in layer 0 (its first user), the rest outside
    terms = act.saved_bytes_terms(shape, B, T, **kw)
    layer = terms["one layer"]
    expected = {i: layer for i in range(shape.num_layers)}
    expected[0] += terms["rope cos/sin"]
    assert real.by_layer == expected
    outside = {"model.embed_tokens": terms["embedding indices"], "model.norm": terms["final norm"],
               "lm_head": terms["lm_head input"], ROOT: terms["loss"]}
    assert real.outside_layers == {k: v for k, v in outside.items() if v}
    return real


@pytest.mark.parametrize("impl, attention", [("reference", "sdpa"), ("reference", "eager"),
                                             ("hf-eager", None), ("hf-sdpa", None)])
@SETTINGS
@given(shape=small_shapes(), B=st.integers(1, 3), T=st.integers(1, 16),
       dtype=st.sampled_from(["fp32", "bf16"]), recompute=st.sampled_from(MODELLED))
def test_closed_form_equals_measure(impl, attention, shape, B, T, dtype, recompute):
    if impl != "reference" and recompute == "selective":
        recompute = "none"  # transformers has no selective recomputation
    _check_against_measure(shape, B, T, dtype, impl, recompute, attention)


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(small_shapes(), st.integers(1, 3), st.integers(1, 16),
       st.sampled_from(["fp32", "bf16", "fp16"]),
       st.sampled_from([("reference", "none"), ("reference", "selective"), ("hf-eager", "none"),
                        ("hf-sdpa", "none"), ("hf-eager", "full"), ("reference", "full")]))
def test_fake_mode_equals_real_mode(shape, B, T, dtype, impl_recompute):
    impl, recompute = impl_recompute
    kw = dict(dtype=dtype, impl=impl, recompute=recompute)
    real = measure_shape(shape, B, T, fake=False, **kw)
    assert measure_shape(shape, B, T, fake=True, **kw) == real
    assert real.total_bytes == saved_bytes(shape, B, T, **kw)


@pytest.mark.parametrize("impl", ["reference", "hf-eager", "hf-sdpa"])
def test_full_recomputation_keeps_2BTH_per_layer_in_bf16(impl):
    shape = shapes.get("tiny")  # GQA, H = 64
    B, T = 3, 10
    s = measure_shape(shape, B, T, dtype="bf16", impl=impl, recompute="full", fake=False)
    rope = 2 * T * shape.d_head * 2 if impl == "reference" else 0  # the reference passes cos, sin
    assert s.by_layer == {0: 2 * B * T * 64 + rope, 1: 2 * B * T * 64}
    assert set(s.by_op) >= {CHECKPOINT_INPUTS}


def test_large_head_dim_gqa_repeats_kv_in_hf_sdpa():
    # transformers uses enable_gqa only for d <= 256; otherwise repeat_kv copies k and v
    # (for N_kv > 1 and T > 1: one k/v head is a stride-0 view, T = 1 takes pack_gqa)
    impl = "hf-sdpa"
    for kv in (1, 2):
        shape = ModelShape(vocab_size=16, hidden_size=8, num_layers=1, num_heads=4,
                           num_kv_heads=kv, intermediate_size=8, max_seq_len=8, head_dim=258)
        for B, T in [(1, 1), (2, 3)]:
            assert (measure_shape(shape, B, T, impl=impl).total_bytes
                    == saved_bytes(shape, B, T, impl=impl))


# --- LLaMA-7B: facts.md §4 ------------------------------------------------------------------

# facts.md §4: transformers' LlamaForCausalLM, bf16, B=1, T=2048
LLAMA7B_HF = {"hf-eager": 38_314_483_724, "hf-sdpa": 12_553_068_556}


@pytest.mark.parametrize("impl", ["hf-eager", "hf-sdpa"])
def test_llama7b_transformers_fake_mode(impl):
    import transformers

    shape = shapes.get("llama-7b")
    config = shape.to_hf_config(attn_implementation=impl[3:])
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    model = model.to(torch.bfloat16)
    ids = torch.zeros(1, 2048, dtype=torch.long, device="meta")
    start = time.perf_counter()
    s = measure(model, input_ids=ids, labels=ids, fake=True)
    assert time.perf_counter() - start < 30  # seconds (about 1 s here)
    assert s.total_bytes == LLAMA7B_HF[impl] == saved_bytes(shape, 1, 2048, impl=impl)
    _consistent(s)
    assert all(p.is_meta for p in model.parameters())


def test_llama7b_reference_fake_mode_and_full_recompute():
    shape = shapes.get("llama-7b")
    with torch.device("meta"):
        model = Llama(shape).to(torch.bfloat16)
    ids = torch.zeros(1, 2048, dtype=torch.long)
    s = measure(model, ids, labels=ids, fake=True)
    assert s.total_bytes == saved_bytes(shape, 1, 2048) == 12_552_924_164
    full = measure_shape(shape, 1, 2048, recompute="full")
    assert full.by_layer[5] == 2 * 2048 * 4096  # the slides' 2BTH, exact
    assert full.total_bytes == saved_bytes(shape, 1, 2048, recompute="full")


# --- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, name", [
    (dict(impl="hf"), "impl"), (dict(dtype="int8"), "dtype"), (dict(dtype=torch.int32), "dtype"),
    (dict(recompute="sqrt"), "recompute"),
    (dict(impl="hf-sdpa", recompute="selective"), "recompute"),
    (dict(batch=0), "batch"), (dict(seq=1.5), "seq"), (dict(batch=True), "batch"),
    (dict(attention="flash"), "attention"), (dict(impl="hf-eager", attention="eager"), "attention"),
    (dict(shape="llama-8b"), "shape: unknown model name"), (dict(shape=7), "shape must be"),
])
def test_errors_name_the_argument(kwargs, name):
    args = dict(shape=shapes.get("tiny"), batch=1, seq=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        saved_bytes(args.pop("shape"), args.pop("batch"), args.pop("seq"), **args)


def test_dtype_names():
    s = shapes.get("tiny")
    assert saved_bytes(s, 2, 8, dtype="bfloat16") == saved_bytes(s, 2, 8, dtype=torch.bfloat16)
    assert saved_bytes(s, 2, 8, dtype="fp32") == saved_bytes(s, 2, 8, dtype=torch.float32)
    assert saved_bytes(s, 2, 8, dtype="float16") == saved_bytes(s, 2, 8, dtype="bf16")
