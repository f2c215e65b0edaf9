"""Units of bytes, defined once (torch-free): GB (10⁹, what vendors and the slides write) and GiB
(2³⁰, what ``torch.cuda.memory_allocated`` and ``nvidia-smi`` report).

Names carry their unit (``*_bytes``); divide by one of these only to display, and say which.
"""

from . import check

__all__ = ["GB", "GIB", "MIB", "DTYPE_BYTES", "dtype_bytes"]

GB = 10**9
"""A gigabyte: 10⁹ bytes (the slides' and the vendors' "80 GB")."""

GIB = 2**30
"""A gibibyte: 2³⁰ = 1,073,741,824 bytes (what PyTorch and ``nvidia-smi`` report as GiB)."""

MIB = 2**20
"""A mebibyte: 2²⁰ = 1,048,576 bytes."""

# Bytes per element of the training dtypes, by every name they go by (torch's too, so a torch
# dtype is recognised by its str without importing torch).
DTYPE_BYTES = {"fp32": 4, "float32": 4, "torch.float32": 4,
               "bf16": 2, "bfloat16": 2, "torch.bfloat16": 2,
               "fp16": 2, "float16": 2, "torch.float16": 2}


def dtype_bytes(dtype) -> int:
    """Bytes per element: 4 for fp32, 2 for bf16/fp16; a name ("bf16", "float32") or a torch
    dtype. Equal to ``torch_dtype(dtype).itemsize`` (tests/test_precision.py)."""
    key = dtype if isinstance(dtype, str) else str(dtype)
    if key not in DTYPE_BYTES or (not isinstance(dtype, str) and not key.startswith("torch.")):
        check.fail("dtype", "fp32, bf16 or fp16 (or the torch dtype)", dtype)
    return DTYPE_BYTES[key]
