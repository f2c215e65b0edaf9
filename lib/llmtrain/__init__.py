"""llmtrain: the runnable companion to the chapter 预训练之训练技术 of 《大语言模型》.

The package is built in wings, one rule between them: arithmetic you can redo (``cost``) apart
from code that runs and measures it. An import only goes down this list (tests/test_architecture.py):

- ``check``, ``units``, ``show``, ``sources``: one way to check arguments; GB, GiB and the
  dtypes' bytes; display the source of what runs; the papers cited and the places read
- ``model``     the model: ``shapes`` (one registry of model sizes, ``resolve``), the reference
                LLaMA (``llama``, weights load into transformers), ``recompute`` (激活重计算)
- ``cost``      every closed form, torch-free: ``params`` (模型参数量估计), ``flops`` (计算量),
                ``activations`` (the bytes autograd saves), ``memory`` / ``states`` /
                ``frameworks`` / ``step_peak`` (训练显存估计), ``methods`` (the optimizer registry,
                显存优化方法), ``headlines``, ``slides`` (the slides' and LLMBox's formulas), ``layout``
                (``ParallelDims``), ``pp_schedule``, ``comm`` (bytes per collective), ``plan``
                (the 3D layout planner) and ``published_runs``
- ``measure``   what runs, measured: saved tensors (``activations``), live bytes (``tracker``),
                ``FlopCounterMode`` (``flops``), optimizer states (``optimizer_state``)
- ``optim``     memory-saving optimizers from their papers: ``lowbit``, ``galore``, ``lomo``,
                ``badam``, ``fp8_lm``
- ``precision`` float formats from their bits, FP8 quantisation, loss scaling (混合精度训练)
- ``recipes``   the twelve LLMs' settings, learning-rate and batch schedules, a tiny training loop
- ``parallel``  several processes on torch.distributed: launch, counted collectives, data
                parallelism, ZeRO, tensor, pipeline and 3D parallelism by hand, and PyTorch's own
- ``widgets``, ``plots``, ``cli``, ``chapter``, ``device``, ``gpu_results``: the notebooks'
  explorers, one figure style, the command line, the chapter map, the device, stored GPU results

Old flat import paths (``llmtrain.memory``, ``llmtrain.plan``, ...) still work for one release
(``llmtrain._renamed``). Every public name, with the notebook sections that use it: the API page
of the HTML build (build/html/api.html).
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
