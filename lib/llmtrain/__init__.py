"""llmtrain: the runnable companion to the chapter 预训练之训练技术 of 《大语言模型》.

Each module mirrors a topic of the chapter and of the notebooks:

- ``settings`` the slides' table of how twelve real LLMs were trained (预训练优化设置)
- ``schedules`` learning-rate schedules: warmup → peak → decay (学习率预热与衰减)
- ``batch``   batch-size schedules, gradient accumulation, gradient noise scale (动态批次调整)
- ``train``   a tiny deterministic training loop on a generated Markov corpus
- ``precision`` float formats from their bits (fp32 … FP8), FP8 quantisation with block scaling;
              the dtype names (fp32, bf16, fp16) and their bytes
- ``amp``     a from-scratch loss scaler and mixed-precision training step (混合精度训练)
- ``shapes``  model sizes (ModelShape) and presets of the Llama family
- ``params``  parameter counts, per component, and their SymPy formula (模型参数量估计)
- ``llama``   a from-scratch reference LLaMA whose weights load into transformers
- ``recompute`` activation recomputation strategies for it (激活重计算)
- ``activations`` what autograd saves for backward, measured exactly (and at 7B with fake tensors);
              the models it measures (build, measure_shape)
- ``activation_formulas`` every closed form of those bytes: the slides' textbook count, Korthikanti
              et al.'s, and the exact ones (reference and transformers' LLaMA, tensor parallel)
- ``flops``   training FLOPs, equal to FlopCounterMode's count; the 6·P·tokens rule
- ``memory``  training memory: model states, ZeRO, activations, estimates, peak measurement (训练显存估计)
- ``memory_methods`` what each memory-saving method keeps, tensor by tensor (显存优化方法, notebook 12)
- ``memory_saving`` the bytes optimizers really keep, measured; FP8-LM's states; BAdam
- ``lowbit``  8-bit and 4-bit optimizer states (block-wise quantisation)
- ``galore``  GaLore: Adam on a low-rank projection of each gradient
- ``lomo``    LOMO and the optimizer step inside backward
- ``headlines`` the slides' six memory-saving headlines, each recomputed
- ``step_peak`` the peak of one training step, phase by phase (forward, backward, optimizer step)
- ``parallel`` several processes on torch.distributed: launch, the dp × tp × pp layout,
              counted collectives, data parallelism, ZeRO 1/2/3 and tensor parallelism by hand
              (数据并行, 零冗余优化器, 张量并行)
- ``device``  which device and 16-bit dtype to use here
- ``plots``   one figure style; ``save`` writes figures/
- ``show``    display the source of what runs, so notebooks never copy library code
- ``widgets`` the notebooks' explorers and calculator: one figure updated in place, a static default
- ``chapter`` the chapter map: which section has its notebook (right on Colab too)
- ``gpu_results`` GPU measurements stored by scripts/gpu_check.py, for machines without a GPU
- ``check``   one way to check arguments: ValueError "<name> must be <rule>, got <value>"
"""

import logging as _logging

from . import _renamed
from .show import show

_renamed.install()  # old import paths (llmtrain.memory, ...) still work for one release

# Packages installed for notebook 12's cross-checks log at import time what their CPU builds
# cannot load (torchao's CUDA kernels, bitsandbytes' optional CPU kernels) and torch logs a
# deprecation when torchao registers its enums; transformers imports torchao whenever it is
# installed, so these lines (with a time and a process id in them) would land in every notebook
# that builds a transformers model. Errors still show.
for _name in ("torchao", "bitsandbytes", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)

__version__ = "0.1.0"
__all__ = ["show", "__version__"]
