"""The clusters of the planner: one kind of GPU node each, with its datasheet numbers and source.

Used by ``plan`` (step time, memory per card) and ``published_runs``; checked against the
vendors' datasheets quoted in each ``source``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import check
from ..units import GIB
from . import step_time

__all__ = ["Cluster", "CLUSTERS", "cluster"]


@dataclass(frozen=True)
class Cluster:
    """One kind of GPU node. Bandwidths are per GPU and per direction (a ring sends and
    receives at once), in bytes/s; FLOPs are dense bf16 tensor-core FLOP/s per GPU;
    ``generation`` picks the fitted ``step_time.KERNELS``. The presets' numbers are the
    vendors' datasheets, quoted in each ``source``."""

    name: str
    gpus_per_node: int
    memory_bytes: int
    peak_flops: float
    intra_node_bytes_per_s: float
    inter_node_bytes_per_s: float
    hbm_bytes_per_s: float = 2.0e12
    generation: str = "ampere"
    source: str = ""

    def __post_init__(self):
        check.positive_int("gpus_per_node", self.gpus_per_node)
        check.positive_int("memory_bytes", self.memory_bytes)
        for f in ("peak_flops", "intra_node_bytes_per_s", "inter_node_bytes_per_s",
                  "hbm_bytes_per_s"):
            check.positive_number(f, getattr(self, f))
        check.one_of("generation", self.generation, tuple(step_time.KERNELS))


_A100 = ("NVIDIA A100 datasheet: 312 TFLOPS bf16 dense, NVLink 600 GB/s (both directions: "
         "300e9 B/s each way), HBM2e 1,935 GB/s (80GB PCIe) / 2,039 GB/s (80GB SXM), HBM2 "
         "1,555 GB/s (40GB); DGX A100: 8 GPUs, 8 × 200 Gb/s HDR InfiniBand (25e9 B/s per GPU)")
_H100 = ("NVIDIA H100 SXM datasheet: 989 TFLOPS bf16 dense, NVLink 900 GB/s (450e9 B/s each "
         "way), HBM3 3.35 TB/s; DGX H100: 8 GPUs, 8 × 400 Gb/s NDR (50e9 B/s per GPU; Llama 3 "
         "§3.3.1: 400 Gbps)")
CLUSTERS: dict[str, Cluster] = {c.name: c for c in [
    Cluster("a100-40g", 8, 40 * GIB, 312e12, 300e9, 25e9, 1.555e12, "ampere", _A100),
    Cluster("a100-80g", 8, 80 * GIB, 312e12, 300e9, 25e9, 2.039e12, "ampere", _A100),
    Cluster("h100-80g", 8, 80 * GIB, 989e12, 450e9, 50e9, 3.35e12, "hopper", _H100),
    # BLOOM's Jean Zay nodes: 8 A100 80GB on NVLink, "4 OmniPath links" per node (bigscience
    # train/tr11-176B-ml/README.md) of 100 Gb/s each: 50 Gb/s = 6.25e9 B/s per GPU
    Cluster("a100-80g-opa", 8, 80 * GIB, 312e12, 300e9, 6.25e9, 2.039e12, "ampere",
            _A100 + "; Omni-Path 100 Gb/s per link"),
]}  # an "80G" card is 80 GiB (81,920 MiB), as in widgets.CARD_GIB


def cluster(gpu: str | Cluster) -> Cluster:
    """A preset by name ("a100-40g", "a100-80g", "h100-80g") or a Cluster as given.

    Checked: tests/test_plan.py::test_bad_input_names_the_field (an unknown name)."""
    if isinstance(gpu, Cluster):
        return gpu
    return CLUSTERS[check.one_of("gpu", gpu, tuple(CLUSTERS))]
