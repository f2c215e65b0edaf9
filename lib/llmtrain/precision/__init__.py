"""Number formats (notebook 04): float formats from their bits and the dtype table (``formats``),
FP8 quantisation with tile and block scales (``fp8``), loss scaling and mixed precision (``amp``).
"""

import importlib as _importlib

_HOMES = ("formats", "fp8")


def __getattr__(name: str):
    # ``llmtrain.precision.X`` for the names of the old flat module (kept for one release)
    for home in _HOMES:
        if name == home:  # a submodule not imported yet: let the import system load it
            break
        try:
            module = _importlib.import_module(f"{__name__}.{home}")
        except ModuleNotFoundError:
            continue
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
