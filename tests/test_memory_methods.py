"""cost.methods' counts, tensor by tensor, against the bytes real optimizers keep.

Each method's count (``method_state_bytes``) is compared with ``optimizer_state.state_tensor_bytes``
(or the live gradients) measured after real steps, on LLaMA shapes the formulas were not written
for: GQA, tied embeddings, biases, tensors under 4096 elements and not whole blocks. fp32 models:
the counts' ``precision="fp32"`` (4-byte weights and gradients, 4-byte states, no master).
"""

import math

import pytest
import torch

from llmtrain.optim import galore, lomo, lowbit
from llmtrain.cost import memory
from llmtrain.model import shapes
from llmtrain.cost import methods as mm
from llmtrain.model.llama import Llama
from llmtrain.measure.optimizer_state import grad_bytes, state_tensor_bytes
from llmtrain.optim.packages import eager
from llmtrain.optim.badam import BlockAdam
from llmtrain.optim.fp8_lm import FP8LMAdamW

SHAPES = [
    shapes.get("tiny"),
    # GQA, tied embeddings, biases; the vocabulary (100·48 = 4800 elements) not a whole number
    # of 128- or 256-blocks, q/k/v/o under 4096 elements (48·48 = 2304)
    shapes.ModelShape(vocab_size=100, hidden_size=48, num_layers=3, num_heads=4, num_kv_heads=2,
                      intermediate_size=128, max_seq_len=32, tie_embeddings=True,
                      attention_bias=True, name="unseen-a"),
    shapes.ModelShape(vocab_size=512, hidden_size=96, num_layers=2, num_heads=6, num_kv_heads=6,
                      intermediate_size=256, max_seq_len=32, mlp_bias=True, name="unseen-b"),
]


def _model(shape):
    torch.manual_seed(0)
    return Llama(shape)


def _steps(model, opt, n=2):
    ids = torch.randint(0, model.shape.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(n):
        opt.zero_grad()
        model(ids, ids).loss.backward()
        opt.step()


# param_shapes is a closed form: the meta-device model's named_parameters for presets too, and
# for shapes with o/MLP biases (Llama attention_bias=True, mlp_bias=True), GQA, tying
ODD = [shapes.ModelShape(vocab_size=70, hidden_size=40, num_layers=2, num_heads=5, num_kv_heads=1,
                         intermediate_size=72, max_seq_len=16, attention_bias=True, o_bias=True,
                         mlp_bias=True, tie_embeddings=True, name="odd-biases-tied"),
       shapes.ModelShape(vocab_size=33, hidden_size=24, num_layers=1, num_heads=3, num_kv_heads=3,
                         intermediate_size=50, max_seq_len=16, o_bias=True, name="odd-o-bias")]


@pytest.mark.parametrize("shape", SHAPES + ODD + [shapes.get(n) for n in ("llama-7b", "llama2-70b",
                                                                          "llama3-8b")],
                         ids=lambda s: s.name)
def test_param_shapes_are_the_model_s(shape):
    with torch.device("meta"):  # allocates nothing, even for 70B
        model = Llama(shape)
    want = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    assert mm.param_shapes(shape) == want
    assert sum(math.prod(d) for _, d in want) == memory.params_per_gpu(shape)
    # the same tensors as memory.param_numels' closed form (one GPU): two listings, one model
    assert sorted(math.prod(d) for _, d in want) == sorted(memory.param_numels(shape, 1, 0))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("bits", [8, 4])
def test_lowbit_count_equals_ours_and_torchao_measured(shape, bits):
    from torchao.optim import AdamW4bit, AdamW8bit

    want = mm.method_state_bytes(shape, f"adamw{bits}bit", precision="fp32")["optimizer"]
    model = _model(shape)
    opt = lowbit.AdamWLowBit(model.parameters(), bits=bits)
    _steps(model, opt)
    assert state_tensor_bytes(opt) == want
    model = _model(shape)
    with eager():  # torchao compiles its step with gcc otherwise (tens of seconds)
        opt = (AdamW8bit if bits == 8 else AdamW4bit)(model.parameters())
        _steps(model, opt, 1)
    assert state_tensor_bytes(opt) == want


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("rank", [4, 16])
def test_galore_count_equals_measured(shape, rank):
    model = _model(shape)
    named = list(model.named_parameters())
    proj = [p for n, p in named if galore.is_target(n, p)]
    rest = [p for n, p in named if not galore.is_target(n, p)]
    opt = galore.GaLoreAdamW([{"params": rest}, {"params": proj, "rank": rank}])
    _steps(model, opt)
    assert state_tensor_bytes(opt) == mm.method_state_bytes(shape, "galore", precision="fp32",
                                                            rank=rank)["optimizer"]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("rank", [4, 16])
def test_galore8bit_count_equals_galore_torch_measured(shape, rank, monkeypatch):
    """The oracle: galore-torch's GaLoreAdamW8bit, a bitsandbytes Optimizer2State (8-bit states,
    min_8bit_size=4096), stepped on this CPU (its step calls torch.cuda.synchronize, a no-op
    here). Its init_state decides per state tensor: under 4096 elements fp32 m and v, else uint8
    codes + an fp32 absmax per block of 256, whether GaLore projects the tensor or not."""
    bnb_galore = pytest.importorskip("galore_torch")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    model = _model(shape).to(torch.bfloat16)  # bf16: the projector is a copy, r·min(m, n)
    named = list(model.named_parameters())
    proj = [p for n, p in named if galore.is_target(n, p)]
    rest = [p for n, p in named if not galore.is_target(n, p)]
    opt = bnb_galore.GaLoreAdamW8bit([{"params": rest}, {"params": proj, "rank": rank,
                                       "update_proj_gap": 200, "scale": 0.25, "proj_type": "std"}])
    _steps(model, opt)
    kinds = set()
    for name, p in named:  # tensor by tensor: the moments bitsandbytes allocated, our rule
        st = opt.state[p]
        if galore.is_target(name, p):
            each = galore.state_numel(*p.shape, rank)["moments"] // 2
        else:
            each = p.numel()
        moments = sum(st[k].nbytes for k in ("state1", "state2", "absmax1", "absmax2") if k in st)
        assert moments == lowbit.state_bytes(each, 8, layout="bitsandbytes"), name
        kinds.add((each >= 4096, st["state1"].dtype))
    assert kinds == {(True, torch.uint8), (False, torch.float32)}  # both sides of 4096 seen
    # the whole state: our count, plus one shared pair of 256-entry fp32 maps and a 4-byte
    # unorm_vec per tensor (galore-torch 1.0 passes percentile_clipping=100 where bitsandbytes
    # 0.50 now takes max_unorm: an artefact of the two versions, not of the method)
    want = mm.method_state_bytes(shape, "galore8bit", precision="bf16", rank=rank)["optimizer"]
    assert state_tensor_bytes(opt) == want + 2 * 256 * 4 + 4 * len(named)


def test_galore8bit_keeps_8bit_states_for_the_embeddings():
    """Llama 3-8B: GaLore leaves the 128,256 × 4,096 embedding and output matrices unprojected;
    8-bit GaLore still keeps their m and v in 8 bits (2 bytes + 8/256 of scales per element),
    not fp32 (8 bytes)."""
    n = 128_256 * 4096
    assert lowbit.state_bytes(n, 8, layout="bitsandbytes") == 2 * (n + 4 * n // 256) == 1_067_089_920
    with_8bit = mm.method_state_bytes("llama3-8b", "galore8bit", rank=64)["optimizer"]
    plain = mm.method_state_bytes("llama3-8b", "galore", rank=64)["optimizer"]
    # plain GaLore: fp32 m, v (8 B/element) for both matrices; 8-bit: 2 + 8/256
    assert plain - with_8bit > 2 * (8 * n - 1_067_089_920)


def test_galore_rank_above_the_matrices_is_refused(capsys):
    from llmtrain import cli

    assert mm.galore_max_rank("llama-7b") == 4096 and mm.galore_max_rank("tiny") == 64
    assert mm.method_state_bytes("llama-7b", "galore", rank=4096)  # the largest allowed
    with pytest.raises(ValueError, match=r"rank must be at most 4,096 for llama-7b, the largest "
                                         r"min\(m, n\) .*, got 4097"):
        mm.method_state_bytes("llama-7b", "galore8bit", rank=4097)
    with pytest.raises(ValueError, match="galore_rank must be at most 4,096 .* got 100000"):
        memory.estimate(shapes.get("llama-7b"), 1, batch=1, seq=256, zero=0,
                        optimizer="galore8bit", galore_rank=100000)
    assert cli.main(["memory", "llama-7b", "--optimizer", "galore8bit", "--galore-rank",
                     "100000", "--zero", "0"]) == 2
    assert "galore_rank must be at most 4,096" in capsys.readouterr().err


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_badam_counts_one_block(shape):
    model = _model(shape)
    opt = BlockAdam(model, switch_every=3)
    ids = torch.randint(0, shape.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    want = mm.method_state_bytes(shape, "badam", precision="fp32")
    seen = set()
    for _ in range(3 * shape.num_layers):
        opt.zero_grad()
        model(ids, ids).loss.backward()
        assert grad_bytes(model) <= want["gradients"]
        opt.step()
        if opt.steps % 3:  # not just switched: the block's states exist
            assert state_tensor_bytes(opt.optimizer) <= want["optimizer"]
            seen.add((grad_bytes(model), state_tensor_bytes(opt.optimizer)))
    # the largest block (all layers are alike here) reaches the count exactly
    assert (want["gradients"], want["optimizer"]) in seen
    assert opt.active == 0  # every block had its turn


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("method", ["lomo", "adamw in backward"])
def test_fused_gradients_are_the_largest_parameter(shape, method):
    ids = torch.randint(0, shape.vocab_size, (1, 8), generator=torch.Generator().manual_seed(2))
    peaks = lomo.measure_step(_model(shape), lambda m: m(ids, ids).loss, method)
    name = "lomo" if method == "lomo" else "adamw-in-backward"
    assert peaks.grad_bytes == mm.method_state_bytes(shape, name, precision="fp32")["gradients"]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_fp8_lm_states_measured(shape):
    model = _model(shape)
    opt = FP8LMAdamW(model.parameters())
    _steps(model, opt)
    n_tensors = len(list(model.parameters()))
    counted = mm.method_state_bytes(shape, "fp8-lm")
    # master 2 + m 1 + v 2 bytes per parameter, and one fp32 scale per tensor and state
    assert state_tensor_bytes(opt) == counted["master"] + counted["optimizer"] + 3 * 4 * n_tensors
    assert counted["master"] + counted["optimizer"] == 5 * memory.params_per_gpu(shape)


def test_fp8_lm_trains_like_adamw():
    # 40 steps of a small regression: FP8-LM's rounded states track fp32 AdamW's loss closely
    # (FP8 E4M3 keeps 3 mantissa bits of m: about 6 % relative error per element, which
    # averages out over the steps); measured 0.2833 vs 0.2827 at lr 3e-3.
    from llmtrain.optim.fp8_lm import compare_fp8

    run = compare_fp8(steps=40)
    adamw, fp8 = run["AdamW"]["losses"], run["FP8LMAdamW"]["losses"]
    assert fp8[-1] < 0.5 * fp8[0]  # it trains
    assert abs(fp8[-1] - adamw[-1]) < 0.01 * adamw[-1]  # 5x the gap measured
    n, t = run["AdamW"]["num_params"], run["AdamW"]["num_tensors"]
    assert run["AdamW"]["state_bytes"] == 8 * n and run["FP8LMAdamW"]["state_bytes"] == 5 * n + 12 * t


def test_memory_offers_the_methods():
    shape = shapes.get("llama-7b")
    for name in mm.METHODS:
        assert name in memory.OPTIMIZERS
        parts = memory.model_state_bytes(shape, optimizer=name)
        assert parts == mm.method_state_bytes(shape, name)
        z3 = memory.model_state_bytes(shape, optimizer=name, zero=3, dims=8)
        assert z3 == {k: -(-v // 8) for k, v in parts.items()}
        est = memory.estimate(shape, 1, batch=1, seq=256, zero=0, optimizer=name)
        assert (est.step_peak is None) == (name in memory.NO_STEP_PEAK)
        assert est.parts["model states"] == sum(parts.values())
    P = memory.params_per_gpu(shape)
    per = {m: sum(mm.method_state_bytes(shape, m).values()) / P for m in mm.METHODS}
    assert per["lomo"] < per["badam"] < 3 < per["fp8-lm"] == 7 < per["galore8bit"] \
        < per["adamw4bit"] < per["adamw8bit"] < 16


def test_per_tensor_methods_need_a_shape():
    with pytest.raises(ValueError, match="optimizer='lomo' needs a ModelShape"):
        memory.model_state_bytes(7_000_000_000, optimizer="lomo")
    with pytest.raises(ValueError, match="depends on the model's tensors"):
        memory.state_bytes_per_param("mixed", "galore")
    with pytest.raises(ValueError, match="counted for tp=1, pp=1 only"):
        memory.model_state_bytes("llama-7b", optimizer="galore", dims=memory.parallel_dims(2, 2))
    with pytest.raises(ValueError, match="method must be one of"):
        mm.method_state_bytes("tiny", "adam8")
    with pytest.raises(ValueError, match="rank must be a positive integer, got 0"):
        mm.method_state_bytes("tiny", "galore", rank=0)
    with pytest.raises(ValueError, match="precision must be 'mixed' for method='fp8-lm'"):
        mm.method_state_bytes("tiny", "fp8-lm", precision="bf16")


def test_galore_rank_default_and_cli(capsys):
    from llmtrain import cli

    shape = shapes.get("llama-7b")
    assert mm.method_state_bytes(shape, "galore") == mm.method_state_bytes(shape, "galore", rank=1024)
    assert cli.main(["memory", "llama-7b", "--optimizer", "galore8bit", "--galore-rank", "1024",
                     "--zero", "0", "--batch", "1", "--seq", "256"]) in (0, None)
    out = capsys.readouterr().out
    est = memory.estimate(shape, 1, batch=1, seq=256, zero=0, optimizer="galore8bit",
                          galore_rank=1024)
    assert f"{est.total:,}" in out


def test_the_registry_is_every_optimizer_once():
    """One registry: memory's names, the per-tensor and no-step-peak lists are its views."""
    assert memory.OPTIMIZERS == tuple(mm.OPTIMIZERS) == (
        "adamw", "adam", "sgd", "adafactor", *mm.METHODS)
    assert all(name == spec.name for name, spec in mm.OPTIMIZERS.items())
    assert memory.PER_TENSOR == ("galore", "galore8bit", "adamw-in-backward", "lomo", "badam")
    assert memory.NO_STEP_PEAK == ("adamw-in-backward", "lomo", "badam")
    assert list(mm.METHODS) == ["adamw8bit", "adamw4bit", "galore", "galore8bit",
                                "adamw-in-backward", "lomo", "badam", "fp8-lm"]
    assert lowbit.quantised is mm.lowbit_quantised and galore.state_numel is mm.galore_state_numel
