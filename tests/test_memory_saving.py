"""measure.optimizer_state, optim.fp8_lm, optim.badam, optim.packages (was memory_saving): measuring what optimizers keep, FP8-LM's states, BAdam's blocks."""

import os
import sys

import pytest
import torch

from llmtrain.measure import optimizer_state
from llmtrain.optim import badam, fp8_lm, packages
from llmtrain.model import shapes
from llmtrain.model.llama import Llama


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))


def _step(net, opt):
    opt.zero_grad()
    net(torch.ones(4, 16)).pow(2).mean().backward()
    opt.step()


@pytest.mark.parametrize("make,per_param", [
    (lambda ps: torch.optim.AdamW(ps), 8), (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), 4),
    (lambda ps: torch.optim.SGD(ps, lr=0.1), 0), (lambda ps: torch.optim.Adam(ps, amsgrad=True), 12)])
def test_state_bytes_of_torch_optimizers(make, per_param):
    net = _net()
    opt = make(net.parameters())
    _step(net, opt)
    n = sum(p.numel() for p in net.parameters())
    assert optimizer_state.state_tensor_bytes(opt) == per_param * n
    assert optimizer_state.measured_bytes_per_param(opt) == per_param
    if per_param == 8:  # torch's AdamW keeps a 0-dim fp32 step per tensor: 4 tensors × 4 bytes
        assert optimizer_state.state_tensor_bytes(opt, count_steps=True) == 8 * n + 4 * 4


def test_shared_storage_is_counted_once():
    net = _net()
    opt = torch.optim.AdamW(net.parameters())
    _step(net, opt)
    first = next(iter(opt.state.values()))
    first["alias"] = first["exp_avg"].view(-1)  # a view of a state: no new memory
    n = sum(p.numel() for p in net.parameters())
    assert optimizer_state.state_tensor_bytes(opt) == 8 * n


def test_eager_restores_the_environment(monkeypatch):
    monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)
    with packages.eager():
        assert os.environ["TORCHDYNAMO_DISABLE"] == "1"
        f = torch.compile(lambda x: x + 1)
        assert f(torch.ones(1)).item() == 2
    assert "TORCHDYNAMO_DISABLE" not in os.environ
    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "0")
    with packages.eager():
        pass
    assert os.environ["TORCHDYNAMO_DISABLE"] == "0"


def test_packages_reports_each():
    found = packages.packages()
    assert set(found) == set(packages.PACKAGES) and all(isinstance(v, bool) for v in found.values())


def test_fp8_lm_states_have_their_formats():
    net = _net()
    opt = fp8_lm.FP8LMAdamW(net.parameters(), lr=1e-2)
    _step(net, opt)
    st = opt.state[net[0].weight]
    assert (st["master"][0].dtype, st["exp_avg"][0].dtype, st["exp_avg_sq"][0].dtype) == \
        (torch.float16, torch.float8_e4m3fn, torch.float16)
    # the model's weights are the master copy's values
    from llmtrain.precision.fp8 import dequantize
    assert torch.equal(net[0].weight.detach(), dequantize(*st["master"]))


def test_block_adam_trains_one_layer_at_a_time():
    torch.manual_seed(0)
    model = Llama(shapes.get("tiny"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = badam.BlockAdam(model, lr=1e-2, switch_every=1)
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(0))
    opt.zero_grad()
    model(ids, ids).loss.backward()
    opt.step()  # layer 0 stepped; layer 1 now active
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all(n.startswith("model.layers.0.") for n in changed)
    assert opt.active == 1 and all(p.requires_grad == n.startswith("model.layers.1.")
                                   for n, p in model.named_parameters())


@pytest.mark.parametrize("make,message", [
    (lambda: optimizer_state.state_tensor_bytes(object()), "optimizer must be a torch.optim.Optimizer"),
    (lambda: fp8_lm.FP8LMAdamW(_net().parameters(), lr=0), "lr must be a positive finite number, got 0"),
    (lambda: fp8_lm.FP8LMAdamW(_net().parameters(), betas=(0.9, 2)), "betas[1] must be"),
    (lambda: badam.BlockAdam(_net()), "model must be a llmtrain.model.llama.Llama"),
    (lambda: badam.BlockAdam(Llama(shapes.get("tiny")), switch_every=0),
     "switch_every must be a positive integer, got 0"),
    (lambda: optimizer_state.grad_bytes("net"), "model must be"),
])
def test_bad_input_is_named(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value).startswith(message), str(info.value)


def test_runs_without_the_optional_packages(monkeypatch):
    # On Colab the notebook runs without llmtrain[optim]: every demo then runs ours only
    from llmtrain.optim import galore, lomo, lowbit

    for name in packages.PACKAGES:
        monkeypatch.setitem(sys.modules, name, None)  # import name -> ImportError
    assert packages.packages() == {name: False for name in packages.PACKAGES}
    assert set(lowbit.compare_run(steps=2)) == {"fp32 AdamW", "ours 8-bit", "ours 4-bit"}
    assert set(galore.compare_run(steps=2, ranks=(4,))) == {"AdamW", "GaLore r=4"}
    assert "lomo-optim" not in lomo.compare_run(steps=1)["methods"]
