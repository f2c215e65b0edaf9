"""Memory-saving optimizers written from their papers and checked against their packages
(notebook 12): 8-bit and 4-bit states (``lowbit``), ``galore``, ``lomo``, BAdam (``badam``),
FP8-LM's states (``fp8_lm``).
"""
