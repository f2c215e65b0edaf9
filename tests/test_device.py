import pytest
import torch

from llmtrain.device import choose, report


def test_cpu_only_machine_uses_bf16_without_loss_scaling():
    c = choose({}, cuda=False, mps=False)
    assert c.device == torch.device("cpu") and c.dtype == torch.bfloat16
    assert not c.needs_loss_scaling


@pytest.mark.parametrize("capability,dtype", [((7, 5), torch.float16),   # Colab T4
                                              ((7, 0), torch.float16),   # V100
                                              ((8, 0), torch.bfloat16),  # A100
                                              ((9, 0), torch.bfloat16)]) # H100
def test_cuda_dtype_follows_capability(capability, dtype):
    c = choose({}, cuda=True, mps=False, capability=capability, gpu_name="GPU")
    assert c.device.type == "cuda" and c.dtype == dtype
    assert c.needs_loss_scaling == (dtype == torch.float16)
    if c.needs_loss_scaling:
        assert "loss scaling" in c.note


def test_order_cuda_then_mps_then_cpu():
    assert choose({}, cuda=True, mps=True, capability=(8, 0), gpu_name="x").device.type == "cuda"
    assert choose({}, cuda=False, mps=True).device.type == "mps"


def test_env_override():
    assert choose({"LLMTRAIN_DEVICE": "cpu"}, cuda=True, mps=False, capability=(9, 0)).device.type == "cpu"
    c = choose({"LLMTRAIN_DEVICE": "cuda:1"}, cuda=True, capability=(7, 5), gpu_name="T4")
    assert c.device == torch.device("cuda:1") and c.dtype == torch.float16


@pytest.mark.parametrize("value,message", [("cuda", "CUDA is not available"),
                                           ("mps", "MPS is not available"),
                                           ("gpu", "not a device name"),
                                           ("meta", "only cpu, cuda and mps")])
def test_env_override_errors_name_the_variable(value, message):
    with pytest.raises(ValueError, match=f"LLMTRAIN_DEVICE='{value}'.*{message}"):
        choose({"LLMTRAIN_DEVICE": value}, cuda=False, mps=False)


def test_report_is_one_line():
    line = report(choose({}, cuda=False, mps=False))
    assert "\n" not in line and line.startswith("device: cpu") and torch.__version__ in line


@pytest.mark.parametrize("preset, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_the_device_module_makes_openmp_wait_passively_unless_set(preset, expected):
    """A notebook's setup cell imports llmtrain.device before anything loads torch: OpenMP then
    reads OMP_WAIT_POLICY=PASSIVE (a value the user set is kept)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    code = ("import sys, os, llmtrain; assert 'torch' not in sys.modules; "
            "import llmtrain.device; print(os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_cpu_name_reads_the_model_name_or_says_what_machine_it_is():
    from llmtrain.device import cpu_name

    name = cpu_name()
    assert isinstance(name, str) and name and "\n" not in name
    try:
        text = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return
    models = [l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")]
    if models:
        assert name == models[0]
