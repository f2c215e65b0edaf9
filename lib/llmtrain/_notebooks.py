"""The notebooks that exist in this copy of llmtrain (generated: do not edit).

Written by `python scripts/notebooks.py sync` from notebooks/; tests/test_build.py
checks that it matches. Used by llmtrain.chapter for the chapter map."""

NOTEBOOKS: tuple[str, ...] = (
    "00_overview",
    "01_pretraining_settings",
    "02_batch_schedules",
    "03_lr_schedules",
    "04_mixed_precision",
    "05_data_parallel_zero",
    "06_tensor_parallel",
    "07_pipeline_parallel",
    "08_3d_parallel",
    "09_activation_recomputation",
    "10_parameter_count",
    "11_memory_estimation",
    "12_memory_saving",
    "13_why_these_settings",
    "14_context_expert_parallel",
)
