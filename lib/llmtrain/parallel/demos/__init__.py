"""What the ranks run in the notebooks, the tests and under torchrun: one module per notebook.

``launch`` starts fresh processes that import their function by name, so every rank function
lives in a module, here:

- ``harness``             shared by all: tiny models and batches, ``lm_loss``, ``max_weight_diff``,
                          and ``main``, the command line of every ``python -m llmtrain.parallel.*``
                          (launches ``--nproc`` ranks itself, or is one rank under torchrun)
- ``data_parallel_zero``  notebook 05: train one strategy (DP, DDP, ZeRO 0–3, FSDP2), bytes held
                          per stage and per phase, each collective once
- ``tensor_parallel``     notebook 06: tensor and sequence parallelism

Nothing is imported here: ``from llmtrain.parallel.demos import data_parallel_zero`` loads only
what it needs.
"""
