"""What the ranks run in the notebooks, the tests and under torchrun: one module per notebook,
and the command lines.

``launch`` starts fresh processes that import their function by name, so every rank function
lives in a module, here:

- ``harness``             shared by all: tiny models and batches, ``lm_loss``, ``max_weight_diff``,
                          and ``main``, the command line of every ``python -m
                          llmtrain.parallel.demos.*`` (launches ``--nproc`` ranks itself, or is
                          one rank under torchrun)
- ``data_parallel_zero``  notebook 05: train one strategy (DP, DDP, ZeRO 0–3, FSDP2), bytes held
                          per stage and per phase, each collective once
- ``tensor_parallel``     notebook 06: tensor and sequence parallelism
- ``pipeline_parallel``   notebook 07: one step by every schedule (ours, torch's, one process),
                          padded timelines, live bytes per operation; a command line
- ``three_d``             notebook 08: 3D parallelism against one process, the groups
- ``context_parallel``    notebook 14 §§1–2: ring attention and Ulysses against one process,
                          bytes, saved activations, torch's own context parallelism
- ``expert_parallel``     notebook 14 §4: a MoE layer and a MoE LLaMA step over ep ranks

The command lines (each ``--help`` lists its flags; under torchrun each process is one rank):

    python -m llmtrain.parallel.demos.data_parallel --nproc 4
    python -m llmtrain.parallel.demos.zero --stage 3
    python -m llmtrain.parallel.demos.pipeline_parallel --nproc 4 --schedule gpipe
    python -m llmtrain.parallel.demos.parallelize --dp 2 --tp 2 --pp 2

The library modules of ``llmtrain.parallel`` import nothing from here. Nothing is imported
here either: ``from llmtrain.parallel.demos import data_parallel_zero`` loads only what it needs.
"""
