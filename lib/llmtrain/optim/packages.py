"""The optional packages notebook 12 checks against, imported quietly, and torch.compile off.

``pip install 'llmtrain[optim]'`` installs them: torchao (8-/4-bit AdamW), bitsandbytes
(AdamW8bit, GaLore's 8-bit Adam), galore-torch, lomo-optim.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["PACKAGES", "packages", "eager"]

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
