"""FP8-LM's optimizer states, emulated on the CPU (Peng et al. 2023, arXiv 2310.18313).

MS-AMP's O2 keeps the master weights in FP16, the first moment in FP8 E4M3 and the second in
FP16, each with one fp32 scale per tensor: 2 + 1 + 2 = 5 bytes of state per parameter instead
of 4 + 4 + 4 = 12. ``FP8LMAdamW`` does that with ``precision.fp8.quantize``; ``compare_fp8``
trains it beside fp32 AdamW (tests/test_memory_methods.py).
"""

from __future__ import annotations

import torch

from .. import check
from ..measure.optimizer_state import state_tensor_bytes
from ..precision.fp8 import dequantize, quantize

__all__ = ["FP8LMAdamW", "compare_fp8"]


class FP8LMAdamW(torch.optim.Optimizer):
    """AdamW with FP8-LM's states (Peng et al. 2023, arXiv 2310.18313; MS-AMP's O2): the master weights in
    FP16, the first moment in FP8 E4M3, the second in FP16, each with one fp32 scale per tensor
    (``precision.fp8.quantize``, scale = amax / format max): 2 + 1 + 2 = 5 bytes of state per
    parameter instead of 4 + 4 + 4 = 12. Each step dequantises, runs AdamW in fp32 and
    requantises; the model's own weights are then the master copy's values (FP8-LM casts them
    to FP8 for its GEMMs; here they stay fp32 tensors, as notebook 04 emulates FP8 matmuls).
    Measured: see tests/test_memory_saving.py."""

    FORMATS = {"master": "fp16", "exp_avg": "fp8_e4m3", "exp_avg_sq": "fp16"}

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        check.positive_number("lr", lr)
        check.number("eps", eps, minimum=0)
        check.number("weight_decay", weight_decay, minimum=0)
        for i, b in enumerate(check.sequence("betas", betas)):
            check.number(f"betas[{i}]", b, minimum=0, maximum=1)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            (b1, b2), lr, eps, wd = group["betas"], group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    zeros = torch.zeros_like(p, dtype=torch.float32)
                    for key, fmt in self.FORMATS.items():
                        st[key] = quantize(p.float() if key == "master" else zeros, fmt)
                w, m, v = (dequantize(*st[k]) for k in self.FORMATS)
                st["step"] += 1
                t, g = st["step"], p.grad.float()
                w.mul_(1 - lr * wd)
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v / (1 - b2 ** t)).sqrt_().add_(eps)
                w.addcdiv_(m, denom, value=-lr / (1 - b1 ** t))
                for key, x in zip(self.FORMATS, (w, m, v)):
                    st[key] = quantize(x, self.FORMATS[key])
                p.copy_(dequantize(*st["master"]))
        return loss


def compare_fp8(steps: int = 40, lr: float = 3e-3, seed: int = 0) -> dict[str, dict]:
    """fp32 ``torch.optim.AdamW`` against ``FP8LMAdamW`` on the same seeded MLP (64 → 256 → 64,
    33,088 parameters) and a fixed random regression: per optimizer the loss after each step
    (``losses``), the measured ``state_bytes`` and their count per parameter."""
    steps = check.positive_int("steps", steps)
    check.positive_number("lr", lr)
    seed = check.integer("seed", seed, 0)
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(seed))
    y = torch.randn(256, 64, generator=torch.Generator().manual_seed(seed + 1))
    out = {}
    for cls in (torch.optim.AdamW, FP8LMAdamW):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
        opt, losses = cls(net.parameters(), lr=lr), []
        for _ in range(steps):
            opt.zero_grad()
            loss = (net(x) - y).pow(2).mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        n = sum(p.numel() for p in net.parameters())
        out[cls.__name__] = {"losses": losses, "state_bytes": state_tensor_bytes(opt),
                             "num_params": n, "num_tensors": len(list(net.parameters()))}
    return out
