"""Memory-saving training (slides: the six headlines of 训练显存估计), measured.

``state_tensor_bytes`` measures what an optimizer really keeps, from its state tensors
(torch's, torchao's, bitsandbytes', galore-torch's, ours); ``FP8LMAdamW`` emulates FP8-LM's
optimizer states on the CPU. The methods themselves are in ``llmtrain.lowbit`` (8-/4-bit
optimizer states), ``llmtrain.galore`` (gradient low-rank projection) and ``llmtrain.lomo``
(the update fused into backward); what each changes in the 16 bytes per parameter is counted
in ``llmtrain.memory_methods``, the six headlines recomputed in ``llmtrain.headlines``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from .. import check

__all__ = ["state_tensor_bytes", "measured_bytes_per_param", "eager", "packages", "FP8LMAdamW",
           "compare_fp8", "BlockAdam", "layer_blocks", "grad_bytes"]


def _tensors(obj: Any, seen: set[int], skip: tuple[str, ...]):
    """Every plain tensor reachable from ``obj`` (dicts, lists, tensor subclasses' inner
    tensors, plain objects' attributes such as galore-torch's projector), once per object;
    dict entries named in ``skip`` are left out."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if hasattr(obj, "__tensor_flatten__") and type(obj) is not torch.Tensor:
            names, _ = obj.__tensor_flatten__()  # torchao's OptimState8bit: codes, scale, qmap
            for name in names:
                yield from _tensors(getattr(obj, name), seen, skip)
        else:
            yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if k not in skip:
                yield from _tensors(v, seen, skip)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v, seen, skip)
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.nn.Module)):
        yield from _tensors(vars(obj), seen, skip)


def state_tensor_bytes(optimizer: torch.optim.Optimizer, *, count_steps: bool = False) -> int:
    """Bytes of every tensor an optimizer keeps in its state, measured from the tensors
    themselves (each storage once): ``torch.optim.AdamW``'s exp_avg/exp_avg_sq, torchao's
    quantised subclasses (codes + scales + quantisation map), bitsandbytes' state1/state2 +
    absmax + qmap, galore-torch's projected moments and projection matrices. The per-tensor
    ``step`` counters are left out unless ``count_steps``: they are not per-parameter memory.
    Measured: see tests/test_memory_saving.py."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        check.fail("optimizer", "a torch.optim.Optimizer", optimizer)
    check.boolean("count_steps", count_steps)
    seen: set[int] = set()
    storages: dict[int, int] = {}
    skip = () if count_steps else ("step",)
    for state in optimizer.state.values():
        for t in _tensors(state, seen, skip):
            st = t.untyped_storage()
            storages[st.data_ptr() or id(st)] = st.nbytes()
    return sum(storages.values())


def measured_bytes_per_param(optimizer: torch.optim.Optimizer, **kw: Any) -> float:
    """``state_tensor_bytes(optimizer)`` divided by the number of parameters it updates."""
    n = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    return state_tensor_bytes(optimizer, **kw) / n


PACKAGES = ("torchao", "bitsandbytes", "galore_torch", "lomo_optim")


def packages() -> dict[str, bool]:
    """Which of the packages notebook 12 checks against are installed (``pip install
    'llmtrain[optim]'``), each imported once here with its import-time chatter silenced:
    torchao and bitsandbytes log the CUDA kernels a CPU build cannot load, with the time and
    process id in the line."""
    import importlib
    import io
    import logging
    import warnings

    found = {}
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            for name in PACKAGES:
                try:
                    importlib.import_module(name)
                    found[name] = True
                except ImportError:
                    found[name] = False
    finally:
        logging.disable(logging.NOTSET)
    return found


@contextlib.contextmanager
def eager():
    """Inside the block ``torch.compile(fn)`` returns ``fn`` unchanged (``TORCHDYNAMO_DISABLE``,
    read by torch at each call). torchao's low-bit optimizers compile their step with gcc on the
    CPU (~20-50 s on the first step, measured); eager, they run in ~0.1 s a step on 2M
    parameters, with the same states."""
    old = os.environ.get("TORCHDYNAMO_DISABLE")
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TORCHDYNAMO_DISABLE"]
        else:
            os.environ["TORCHDYNAMO_DISABLE"] = old


# --- FP8-LM's optimizer, emulated on the CPU ------------------------------------------------

class FP8LMAdamW(torch.optim.Optimizer):
    """AdamW with FP8-LM's states (Peng et al. 2023, arXiv 2310.18313; MS-AMP's O2): the master weights in
    FP16, the first moment in FP8 E4M3, the second in FP16, each with one fp32 scale per tensor
    (``precision.quantize``, scale = amax / format max): 2 + 1 + 2 = 5 bytes of state per
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
        from ..precision.formats import dequantize, quantize

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


# --- BAdam: Adam on one block at a time ------------------------------------------------------

def layer_blocks(model: torch.nn.Module) -> list[list[torch.nn.Parameter]]:
    """BAdam's default partition of a ``llmtrain.llama.Llama``: one block per decoder layer
    (the embedding, final norm and output layer are not trained)."""
    check.module("model", model)
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        check.fail("model", "a llmtrain.llama.Llama (with .model.layers)", model)
    return [list(layer.parameters()) for layer in layers]


class BlockAdam:
    """BAdam (Luo, Yu, Li 2024, arXiv 2404.02827): block coordinate descent with
    Adam inside. Only the active block requires gradients and has an AdamW (its states); every
    ``switch_every`` steps the next block becomes active and the old block's states are freed.
    So gradients, master copy and m, v exist for one block: 2P + 14·P_block bytes with 16-bit
    weights (``memory_methods``' "badam"). Parameters of ``model`` in no block are frozen.
    ``step()`` and ``zero_grad()`` as an optimizer's."""

    def __init__(self, model: torch.nn.Module, blocks: list[list[torch.nn.Parameter]] | None = None,
                 lr: float = 1e-3, switch_every: int = 1, **adamw_kw: Any):
        check.module("model", model)
        self.blocks = check.sequence("blocks", layer_blocks(model) if blocks is None else blocks,
                                     nonempty=True)
        self.lr = check.positive_number("lr", lr)
        self.switch_every = check.positive_int("switch_every", switch_every)
        self.adamw_kw, self.steps, self.active = adamw_kw, 0, 0
        for p in model.parameters():
            p.requires_grad_(False)
        self._activate(0)

    def _activate(self, i: int) -> None:
        for p in self.blocks[self.active]:
            p.requires_grad_(False)
            p.grad = None
        self.active = i
        for p in self.blocks[i]:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(self.blocks[i], lr=self.lr, **self.adamw_kw)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.optimizer.step()
        self.steps += 1
        if self.steps % self.switch_every == 0:
            self._activate((self.active + 1) % len(self.blocks))


def grad_bytes(model: torch.nn.Module) -> int:
    """Bytes of the gradients a model holds now (``p.grad`` that are not None)."""
    check.module("model", model)
    return sum(p.grad.numel() * p.grad.element_size() for p in model.parameters()
               if p.grad is not None)
