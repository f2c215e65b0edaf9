"""The chapter map: the slides' sections in their order and the notebook for each.

Which notebooks exist is shipped inside the package (``_notebooks.py``, written by
``python scripts/notebooks.py sync`` and checked against ``notebooks/`` by
tests/test_build.py), so the map is right wherever the package runs: in a clone, or on
Colab, where the current folder holds no notebooks.
"""

from __future__ import annotations

from . import check
from ._notebooks import NOTEBOOKS

# (notebook, slide section, English topic), in the order of the slides
CHAPTER_MAP: tuple[tuple[str, str, str], ...] = (
    ("01_pretraining_settings", "现有大语言模型的预训练优化设置", "optimisation settings of real LLMs"),
    ("02_batch_schedules", "动态批次调整", "batch-size schedules"),
    ("03_lr_schedules", "学习率预热与衰减", "learning-rate warmup and decay"),
    ("04_mixed_precision", "混合精度训练", "mixed precision, loss scaling, FP8"),
    ("05_data_parallel_zero", "数据并行 · 零冗余优化器 (ZeRO)", "data parallel and ZeRO-1/2/3"),
    ("06_tensor_parallel", "张量并行", "tensor parallel"),
    ("07_pipeline_parallel", "流水线并行", "pipeline parallel, GPipe and 1F1B"),
    ("08_3d_parallel", "3D 并行训练", "combining data, tensor and pipeline parallel"),
    ("09_activation_recomputation", "激活重计算", "activation recomputation"),
    ("10_parameter_count", "模型参数量估计", "parameter count"),
    ("11_memory_estimation", "训练显存估计", "training memory"),
    ("12_memory_saving", "训练显存估计 · 显存优化方法", "memory-saving methods: the six headlines checked"),
    ("13_why_these_settings", "现有大语言模型的预训练优化设置（延伸）",
     "why those settings: optimizer, weight decay, clipping, batch and lr at scale, μP"),
    ("14_context_expert_parallel", "3D 并行训练（延伸）",
     "beyond 3D: context parallelism, mixture of experts, expert parallelism"),
)


def status(stem: str) -> str:
    """'ready' if the notebook ``stem`` ships with this copy of llmtrain, else 'planned'."""
    if not isinstance(stem, str):
        check.fail("stem", "a notebook name (str) like '02_batch_schedules'", stem)
    return "ready" if stem in NOTEBOOKS else "planned"


def table() -> str:
    """The chapter map as text: notebook, status, slide section · topic."""
    lines = [f"{'notebook':<30} {'status':<9} slide section · topic"]
    for stem, section, topic in CHAPTER_MAP:
        lines.append(f"{stem:<30} {status(stem):<9} {section} · {topic}")
    return "\n".join(lines)
