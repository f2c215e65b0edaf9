"""Which device and which 16-bit dtype to use on this machine.

Order: CUDA > Apple MPS > CPU; the environment variable ``LLMTRAIN_DEVICE`` (``cpu``,
``cuda``, ``cuda:1``, ``mps``) overrides it. The 16-bit dtype is bfloat16 where the
hardware computes it natively (CUDA compute capability ≥ 8.0: A100, H100, RTX 30xx+;
CPUs; MPS) and float16 otherwise (T4, V100), which needs loss scaling: fp16's range
ends at 65504 and small gradients underflow (notebook 04).

Everything the choice depends on can be passed in, so tests can play a T4 on a laptop.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Mapping

# OpenMP threads that wait sleep instead of spinning on a core: on a machine shared by several
# kernels (a classroom server, JupyterLab with two notebooks open) spinning threads took cores the
# others needed, 20x slower (tests/test_load.py). OpenMP reads this once, when torch loads it, so
# it is set here, before `import torch`, and only if the user has not set it. Every notebook's
# setup cell imports this module first (Colab and JupyterLab kernels included); `make` sets it too.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402  (after the line above, on purpose)

from . import check

__all__ = ["Choice", "choose", "report", "cpu_name"]

ENV_VAR = "LLMTRAIN_DEVICE"


@dataclass(frozen=True)
class Choice:
    device: torch.device
    dtype: torch.dtype  # the 16-bit training dtype for this device
    name: str  # human-readable device name, e.g. "NVIDIA H100 80GB HBM3" or "x86_64 CPU"
    note: str  # one line on the dtype choice

    @property
    def needs_loss_scaling(self) -> bool:
        return self.dtype == torch.float16


def choose(env: Mapping[str, str] | None = None, *, cuda: bool | None = None,
           mps: bool | None = None, capability: tuple[int, int] | None = None,
           gpu_name: str | None = None) -> Choice:
    """Pick device and 16-bit dtype. Arguments left as None are read from this machine."""
    if env is not None and not isinstance(env, Mapping):
        check.fail("env", "a mapping of environment variables (like os.environ)", env)
    check.optional(check.boolean, "cuda", cuda)
    check.optional(check.boolean, "mps", mps)
    if capability is not None and (
            len(check.sequence("capability", capability, item=check.integer)) != 2):
        check.fail("capability", "a pair (major, minor) such as (8, 0)", capability)
    if gpu_name is not None and not isinstance(gpu_name, str):
        check.fail("gpu_name", "a string", gpu_name)
    env = os.environ if env is None else env
    cuda = torch.cuda.is_available() if cuda is None else cuda
    mps = _mps_available() if mps is None else mps
    wanted = env.get(ENV_VAR, "").strip()
    if wanted:
        try:
            device = torch.device(wanted)
        except RuntimeError:
            raise ValueError(f"{ENV_VAR}={wanted!r} is not a device name (try cpu, cuda, mps)") from None
        if device.type == "cuda" and not cuda:
            raise ValueError(f"{ENV_VAR}={wanted!r} but CUDA is not available on this machine")
        if device.type == "mps" and not mps:
            raise ValueError(f"{ENV_VAR}={wanted!r} but MPS is not available on this machine")
        if device.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"{ENV_VAR}={wanted!r}: only cpu, cuda and mps are supported")
    elif cuda:
        device = torch.device("cuda")
    elif mps:
        device = torch.device("mps")
    else:
        device = torch.device("cpu")

    if device.type == "cuda":
        if capability is None:
            capability = torch.cuda.get_device_capability(device)
        name = gpu_name or torch.cuda.get_device_name(device)
        if tuple(capability) >= (8, 0):
            return Choice(device, torch.bfloat16, name,
                          f"bf16: compute capability {capability[0]}.{capability[1]} has native bf16")
        return Choice(device, torch.float16, name,
                      f"fp16 with loss scaling: compute capability {capability[0]}.{capability[1]} "
                      "has no fast bf16")
    if device.type == "mps":
        return Choice(device, torch.bfloat16, "Apple MPS", "bf16 on MPS")
    return Choice(device, torch.bfloat16, f"{platform.machine()} CPU",
                  "bf16 on CPU: same range as fp32, no loss scaling needed")


def report(choice: Choice | None = None) -> str:
    """One line: device, dtype, torch version. Printed by every notebook's setup cell."""
    if choice is not None and not isinstance(choice, Choice):
        check.fail("choice", "a Choice from choose()", choice)
    c = choose() if choice is None else choice
    dt = str(c.dtype).removeprefix("torch.")
    return f"device: {c.device} [{c.name}] · 16-bit dtype: {dt} ({c.note}) · torch {torch.__version__}"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def cpu_name() -> str:
    """The CPU's model name, for the record of a measurement: /proc/cpuinfo's "model name" on
    Linux, else ``platform.processor()``, else the machine type (e.g. "x86_64")."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
