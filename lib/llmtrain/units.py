"""Units of bytes, defined once (torch-free): GB (10⁹, what vendors and the slides write) and GiB
(2³⁰, what ``torch.cuda.memory_allocated`` and ``nvidia-smi`` report).

Names carry their unit (``*_bytes``); divide by one of these only to display, and say which.
"""

__all__ = ["GB", "GIB", "MIB"]

GB = 10**9
"""A gigabyte: 10⁹ bytes (the slides' and the vendors' "80 GB")."""

GIB = 2**30
"""A gibibyte: 2³⁰ = 1,073,741,824 bytes (what PyTorch and ``nvidia-smi`` report as GiB)."""

MIB = 2**20
"""A mebibyte: 2²⁰ = 1,048,576 bytes."""
