"""Memory-saving optimizers from their papers, checked against their packages (notebook 12).

8-bit and 4-bit states (``lowbit``), ``galore``, ``lomo``, BAdam (``badam``), FP8-LM's states
(``fp8_lm``); ``packages`` imports the optional packages quietly.

Three of them write AdamW's update by hand, and AdamW is not one formula: implementations differ
in where ε goes (after bias correction, as torch.optim.AdamW: m̂ / (√v̂ + ε); or before it, as
transformers' old AdamW: m / (√v + ε) with the step scaled by √(1−β₂ᵗ)/(1−β₁ᵗ)) and in when the
weight decays (before the update, as torch; or after it). Each follows the package it is
checked against, so the comparison is exact or bounded by rounding alone:

===============  ====================  ===============  =====================================
optimizer        ε                     weight decay     matches
===============  ====================  ===============  =====================================
``AdamWLowBit``  after bias corr.      before update    torchao AdamW8bit/4bit: the same
                 (torch's)             (torch's)        codes, scales and maps after a step,
                                                        bit for bit; weights within 1e-7
                                                        (torchao's lr, step: fp32 tensors)
``GaLoreAdamW``  before bias corr.     after update     galore-torch 1.0 GaLoreAdamW, bit for
                 (transformers' old)   (p -= lr·wd·p)   bit (measured 0.0 over 12 steps)
``FP8LMAdamW``   after bias corr.      before update    no package on the CPU (MS-AMP needs a
                 (torch's)             (torch's)        GPU): fp32 torch.optim.AdamW's loss
                                                        within 1 % after 40 steps
===============  ====================  ===============  =====================================

Measured: tests/test_lowbit.py, tests/test_galore.py, tests/test_memory_methods.py.
"""
