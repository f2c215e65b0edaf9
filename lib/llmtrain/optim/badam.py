"""BAdam: Adam on one block of layers at a time (Luo, Yu, Li 2024, arXiv 2404.02827).

Block coordinate descent: only the active block (a decoder layer) has gradients and AdamW
states, so 16-bit weights of the whole model plus gradients, master copy and m, v of one block
(``cost.methods``' "badam"; measured in tests/test_memory_methods.py).
"""

from __future__ import annotations

from typing import Any

import torch

from .. import check

__all__ = ["layer_blocks", "BlockAdam"]


def layer_blocks(model: torch.nn.Module) -> list[list[torch.nn.Parameter]]:
    """BAdam's default partition of a ``model.llama.Llama``: one block per decoder layer
    (the embedding, final norm and output layer are not trained)."""
    check.module("model", model)
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        check.fail("model", "a llmtrain.model.llama.Llama (with .model.layers)", model)
    return [list(layer.parameters()) for layer in layers]


class BlockAdam:
    """BAdam (Luo, Yu, Li 2024, arXiv 2404.02827): block coordinate descent with
    Adam inside. Only the active block requires gradients and has an AdamW (its states); every
    ``switch_every`` steps the next block becomes active and the old block's states are freed.
    So gradients, master copy and m, v exist for one block: 2P + 14·P_block bytes with 16-bit
    weights (``cost.methods``' "badam"). Parameters of ``model`` in no block are frozen.
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
