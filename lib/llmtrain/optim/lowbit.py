"""8-bit and 4-bit optimizer states (低比特优化器): AdamW whose m and v are stored quantised.

Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization" (arXiv 2110.02861): cut a
moment into blocks of B values, divide each block by its absmax (one fp32 scale per block),
store each value as the index of the nearest entry of a 256-value "dynamic" map. An outlier
then spoils only its own block. The paper's blocks hold 2048 values; bitsandbytes and torchao
use B = 256, and so do we. Li, Chen, Zhu 2023, "Memory Efficient Optimizers with 4-bit States"
(arXiv 2309.01507) go to 16 values: smaller blocks (B = 128) and, for v, a linear map without 0
(their zero-point problem: a v rounded to 0 makes m/(√v + ε) explode).

Each step: dequantise m and v, do the fp32 AdamW update, requantise. Tensors under
``min_quantize_numel`` = 4096 elements (biases, norms) stay fp32, as in torchao and bitsandbytes.
State bytes per parameter: 2·(bits/8 + 4/B), plus the maps, and 8 for the small tensors
(``state_bytes``). The byte rules (``BLOCK_SIZE``, ``quantised``, ``state_bytes``) have one home,
``llmtrain.cost.methods`` (torch-free, as ``LOWBIT_BLOCK_SIZE``, ``lowbit_quantised``,
``lowbit_state_bytes``), and are the same objects here.

Checked in tests/test_lowbit.py against torchao 0.18 (``AdamW8bit``, ``AdamW4bit``: the same maps,
blocks and rounding, so the same codes, scales and bytes) and bitsandbytes 0.50 (``AdamW8bit``).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Iterable

import torch

from .. import check
from ..measure.optimizer_state import state_tensor_bytes
from ..cost.methods import LOWBIT_BLOCK_SIZE as BLOCK_SIZE
from ..cost.methods import LOWBIT_LAYOUTS as LAYOUTS
from ..cost.methods import lowbit_quantised as quantised
from ..cost.methods import lowbit_state_bytes as state_bytes
from .packages import eager

__all__ = ["BLOCK_SIZE", "LAYOUTS", "dynamic_map", "linear_map", "quantize_blockwise",
           "dequantize_blockwise", "AdamWLowBit", "quantised", "state_bytes", "bytes_per_param",
           "train_mlp", "compare_run"]

def _bits(bits: Any) -> int:
    return check.one_of("bits", bits, (4, 8))


def dynamic_map(signed: bool = True, bits: int = 8) -> torch.Tensor:
    """Dettmers' dynamic (tree) map: 2**bits sorted fp32 values in [-1, 1] (signed) or [0, 1].

    After the sign bit, E = bits - 1 bits hold a decimal exponent (10^-(E-1) … 10^0) and a
    fraction: decade i holds 2^i values (2^(i+1) unsigned), the midpoints of an even split of
    [0.1, 1]; then 0 and 1. Dettmers et al. 2022's dynamic data type (Dettmers 2015, arXiv
    1511.04561). Equal to torchao's maps (``create_dynamic_map(signed)``,
    ``create_dynamic_map(True, 3, 4)``) and, for 8 bits, to bitsandbytes'
    ``create_dynamic_map(signed)``; bitsandbytes pads a 4-bit map with 240 zeros to 256 entries
    (tests/test_lowbit.py::test_maps_equal_the_packages).
    Note the asymmetry: +1 is in the map, -1 is not (the most negative value is -0.993 at 8 bits,
    -0.8875 at 4).
    """
    check.boolean("signed", signed)
    e = _bits(bits) - 1
    values = [torch.tensor([0.0, 1.0])]
    for i in range(e):
        n = 2 ** i if signed else 2 ** (i + 1)
        edges = torch.linspace(0.1, 1, n + 1)
        decade = 10.0 ** (i - e + 1) * (edges[:-1] + edges[1:]) / 2.0
        values += [decade, -decade] if signed else [decade]
    return torch.cat(values).sort().values


def linear_map(bits: int = 4) -> torch.Tensor:
    """The linear map without 0 for v: T(i) = (i + 1) / 2**bits, i = 0 … 2**bits - 1.
    Li et al. 2023 ("Linear", for the second moment); torchao's 4-bit unsigned map
    ``linspace(0, 1, 17)[1:]``."""
    n = 2 ** _bits(bits)
    return torch.arange(1, n + 1, dtype=torch.float32) / n


def _nearest(x: torch.Tensor, qmap: torch.Tensor) -> torch.Tensor:
    """Index of the map value nearest to each x; a tie goes up (torchao's rule)."""
    i = (torch.searchsorted(qmap, x, right=True) - 1).clamp(0, len(qmap) - 2)  # qmap[i] <= x
    lo, hi = qmap[i], qmap[i + 1]
    return i + (x - lo >= (hi - lo) * 0.5).long()


def quantize_blockwise(x: torch.Tensor, qmap: torch.Tensor,
                       block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, scales): scale = absmax of each block of ``block_size`` values (fp32, floored at
    1e-12 as torchao does), code = nearest ``qmap`` index to x / scale (uint8). With a 16-value map
    two codes share a byte, the first in the high nibble (torchao's packing): codes.numel() = n/2.
    Dettmers et al. 2022 (with their B = 2048; bitsandbytes and torchao use 256)."""
    check.tensor("x", x, floating=True)
    check.tensor("qmap", qmap, dim=1, dtype=torch.float32)
    check.one_of("len(qmap)", len(qmap), (16, 256))
    block_size = check.positive_int("block_size", block_size)
    if x.numel() % block_size:
        check.fail("x.numel()", f"a multiple of block_size={block_size}", x.numel())
    blocks = x.detach().float().reshape(-1, block_size)
    scales = blocks.abs().amax(dim=1).clamp(min=1e-12)
    codes = _nearest(blocks / scales[:, None], qmap).to(torch.uint8).reshape(-1)
    if len(qmap) == 16:
        codes = codes[0::2] << 4 | codes[1::2]
    return codes, scales


def dequantize_blockwise(codes: torch.Tensor, scales: torch.Tensor, qmap: torch.Tensor,
                         shape: Iterable[int]) -> torch.Tensor:
    """x ≈ qmap[code] · scale of its block, as an fp32 tensor of ``shape``."""
    check.tensor("codes", codes, dim=1, dtype=torch.uint8)
    check.tensor("scales", scales, dim=1, dtype=torch.float32)
    check.tensor("qmap", qmap, dim=1, dtype=torch.float32)
    shape = tuple(check.sequence("shape", shape, item=lambda n, v: check.integer(n, v, 0)))
    if len(qmap) == 16:
        codes = torch.stack([codes >> 4, codes & 0xF], dim=-1)  # unpack two codes per byte
    x = qmap[codes.long()].reshape(len(scales), -1) * scales[:, None]
    if x.numel() != math.prod(shape):
        check.fail("shape", f"of {x.numel()} elements (the codes')", shape)
    return x.reshape(shape)


class AdamWLowBit(torch.optim.Optimizer):
    """AdamW (torch.optim.AdamW's update, decoupled weight decay) with m and v kept block-wise
    quantised: per moment ``{"codes", "scales", "qmap"}``. bits 8: dynamic maps for m and v,
    B = 256 (bitsandbytes' and torchao's block; Dettmers et al. use 2048). bits 4: dynamic map for m and the linear map without 0 for v, both
    B = 128. Li et al.'s own 4-bit AdamW normalises v rank-1 (each value by min(row absmax,
    column absmax): ``default.yml`` of their code, lpmm) instead of in blocks; we follow torchao
    (and lpmm's ``2nd_moment_group_128.yml``): one normalisation for both moments, and codes
    that can be checked against torchao's byte for byte. A tensor is quantised when it has
    >= ``min_quantize_numel`` elements and a whole number of blocks (torchao's rule), else kept
    fp32. Like torchao, each quantised moment keeps its own copy of the map (4·2**bits bytes).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, bits: int = 8,
                 block_size: int | None = None, min_quantize_numel: int = 4096):
        check.number("lr", lr, 0)
        check.number("eps", eps, 0)
        check.number("weight_decay", weight_decay, 0)
        betas = check.sequence("betas", betas, item=lambda n, v: check.number(n, v, 0, 1))
        if len(betas) != 2 or max(betas) >= 1:
            check.fail("betas", "two numbers in [0, 1)", betas)
        self.bits = _bits(bits)
        self.block_size = check.optional(check.positive_int, "block_size", block_size) \
            or BLOCK_SIZE[self.bits]
        self.min_quantize_numel = check.integer("min_quantize_numel", min_quantize_numel, 0)
        self.maps = ((dynamic_map(True, 8), dynamic_map(False, 8)) if self.bits == 8
                     else (dynamic_map(True, 4), linear_map(4)))
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))

    def _quantised(self, p: torch.Tensor) -> bool:
        return quantised(p.numel(), self.bits, self.block_size, self.min_quantize_numel)

    def _load(self, state: dict, name: str, p: torch.Tensor) -> torch.Tensor:
        """The moment as an fp32 tensor (zeros before the first step)."""
        s = state.get(name)
        if s is None:
            return torch.zeros_like(p, dtype=torch.float32)
        if isinstance(s, torch.Tensor):
            return s
        return dequantize_blockwise(s["codes"], s["scales"], s["qmap"], p.shape)

    def _store(self, state: dict, name: str, x: torch.Tensor, qmap: torch.Tensor) -> None:
        if self._quantised(x):
            codes, scales = quantize_blockwise(x, qmap, self.block_size)
            state[name] = {"codes": codes, "scales": scales, "qmap": qmap.clone()}
        else:
            state[name] = x

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] = t = state.get("step", 0) + 1
                g, w = p.grad.float(), p.float()
                m = self._load(state, "exp_avg", p).lerp_(g, 1 - beta1)
                v = self._load(state, "exp_avg_sq", p).lerp_(g * g, 1 - beta2)
                # stored quantised for the next step; this step's update uses the fp32 m, v
                self._store(state, "exp_avg", m, self.maps[0])
                self._store(state, "exp_avg_sq", v, self.maps[1])
                w.mul_(1 - lr * group["weight_decay"])
                denom = v.sqrt() / math.sqrt(1 - beta2 ** t) + eps
                w.addcdiv_(m, denom, value=-lr / (1 - beta1 ** t))
                p.copy_(w)
        return loss


def bytes_per_param(numels: Iterable[int], bits: int, block_size: int | None = None,
                    min_quantize_numel: int = 4096, layout: str = "torchao") -> Fraction:
    """Σ state_bytes / Σ numel over a model's tensors (exact), plus bitsandbytes' shared map pair
    (2 × 256 fp32) when it quantises any tensor. → 2 + 8/B = 2.03 (8-bit), 1 + 8/B = 1.06
    (4-bit) for large tensors. Measured: see
    tests/test_lowbit.py::test_state_bytes_equal_measured."""
    numels = check.sequence("numels", numels, nonempty=True,
                            item=lambda n, v: check.integer(n, v, 0))
    total = sum(state_bytes(n, bits, block_size, min_quantize_numel, layout) for n in numels)
    if layout == "bitsandbytes" and any(n >= min_quantize_numel for n in numels):
        total += 2 * 256 * 4
    if sum(numels) == 0:
        check.fail("numels", "a list with a positive sum", numels)
    return Fraction(total, sum(numels))


def _optimizers() -> dict[str, Any]:
    """name -> constructor(params, lr) of each AdamW that ``compare_run`` runs (packages: if
    installed)."""
    out: dict[str, Any] = {"fp32 AdamW": torch.optim.AdamW,
                           "ours 8-bit": lambda ps, lr: AdamWLowBit(ps, lr, bits=8),
                           "ours 4-bit": lambda ps, lr: AdamWLowBit(ps, lr, bits=4)}
    try:
        import torchao.optim as ao
        out["torchao AdamW8bit"], out["torchao AdamW4bit"] = ao.AdamW8bit, ao.AdamW4bit
    except ImportError:
        pass
    try:
        import bitsandbytes as bnb
        out["bitsandbytes AdamW8bit"] = bnb.optim.AdamW8bit
    except ImportError:
        pass
    return out


def compare_run(steps: int = 20, seed: int = 0, lr: float = 1e-3) -> dict[str, dict]:
    """Train the same seeded MLP (64 → 512 → 64, 66k parameters: two 32768-element weights,
    quantised; biases of 512 and 64, kept fp32) on a fixed random regression task with each
    optimizer; per optimizer: ``losses`` (one per step, before it), ``state_bytes`` and
    ``bytes_per_param`` measured from its state tensors (``measure.optimizer_state.state_tensor_bytes``).
    torchao's optimizers run inside ``optim.packages.eager()`` (no gcc compile). One CPU thread
    (restored after): on matrices this small threads only contend, 1.2 s for the whole run
    against 17 s with 2 threads on 2 busy cores (measured)."""
    steps = check.positive_int("steps", steps)
    seed = check.integer("seed", seed, 0)
    check.positive_number("lr", lr)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(128, 64, generator=g), torch.randn(128, 64, generator=g)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: _run_one(make, x, y, steps, seed, lr)
                for name, make in _optimizers().items()}
    finally:
        torch.set_num_threads(threads)


def train_mlp(make, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int = 0,
              lr: float = 1e-3) -> tuple[torch.nn.Module, torch.optim.Optimizer, list[float]]:
    """The MLP of ``compare_run`` (64 → 512 → 64, seeded with ``seed``) trained on (x, y) with the
    MSE loss by ``make(params, lr)`` for ``steps`` steps, inside ``optim.packages.eager()``:
    (model, optimizer, the loss before each step)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.GELU(), torch.nn.Linear(512, 64))
    opt = make(model.parameters(), lr)
    losses = []
    with eager():
        for _ in range(steps):
            loss = torch.nn.functional.mse_loss(model(x), y)
            losses.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model, opt, losses


def _run_one(make, x, y, steps: int, seed: int, lr: float) -> dict:
    """One optimizer's run for ``compare_run``: its losses, tensor sizes, measured state bytes."""
    model, opt, losses = train_mlp(make, x, y, steps, seed, lr)
    nbytes = state_tensor_bytes(opt)
    numels = [p.numel() for p in model.parameters()]
    return {"losses": losses, "numels": numels, "state_bytes": nbytes,
            "bytes_per_param": nbytes / sum(numels)}
