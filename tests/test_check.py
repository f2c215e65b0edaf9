"""Bad input, everywhere the same way (issue 10 §6): every public function × zero, negative,
wrong type and wrong name must raise ValueError naming the argument and the rule it broke,
from the one shared helper ``llmtrain.check``.

The table ``CASES`` lists, per public function, a valid call and the kind of each argument;
``test_bad_value_names_the_argument`` feeds each argument bad values of its kind (hypothesis
draws them: zero, negatives, floats, strings, None, booleans, unknown names) and expects
``<argument> must be …`` (or ``<argument>: unknown model name …``).
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings, strategies as st

from llmtrain.cost import (activations as activation_formulas, flops, memory,
    methods as memory_methods, params, plan, step_peak)
from llmtrain.measure import activations
from llmtrain.precision import amp, fp8, formats as precision
from llmtrain.recipes import batch, schedules, train
from llmtrain import check, device, plots, show, widgets
from llmtrain.model import llama, recompute, shapes
from llmtrain.recipes import settings as slide_settings
from llmtrain.parallel import parallelize, pipeline_parallel, tp_comm
from llmtrain.cost import pp_schedule
from llmtrain.cost.layout import ParallelDims
from llmtrain.measure import tracker
from llmtrain.cost import slides as slides_formulas
from llmtrain.measure import flops as measured

TINY = shapes.get("tiny")


def _net():
    torch.manual_seed(0)
    return llama.Llama(TINY)


IDS = torch.zeros(2, 8, dtype=torch.long)

# --- bad values by kind ---------------------------------------------------------------------

_wrong_type = st.sampled_from([None, "8", 2.5, [3], b"x", object()])
_bools = st.booleans()
BAD = {
    # a positive integer (a size, a count, a degree)
    "pos": st.integers(max_value=0) | _wrong_type | _bools
           | st.floats(allow_nan=True, allow_infinity=True),
    # an integer >= 0
    "nonneg": st.integers(max_value=-1) | _wrong_type | _bools | st.floats(),
    # an integer >= 2
    "ge2": st.integers(max_value=1) | _wrong_type | _bools,
    # a positive finite real number
    "posnum": st.floats(max_value=0.0) | st.integers(max_value=0) | _bools
              | st.sampled_from([math.nan, math.inf, None, "1e-3", [1.0]]),
    # a finite real number >= 0
    "nonnegnum": st.floats(max_value=-1e-300) | st.integers(max_value=-1) | _bools
                 | st.sampled_from([math.nan, math.inf, None, "0.1"]),
    "bool": st.sampled_from([0, 1, "yes", "True", None, 1.0, [True]]),
    "callable": st.sampled_from([None, 3, "cosine", [1, 2]]),
    "seq": st.sampled_from([None, 5, 2.0, "abc", {"a": 1}]),
    "tensor": st.sampled_from([None, 3, [[1, 2]], "ids", (1, 2)]),
    "module": st.sampled_from([None, "model", 3, [torch.nn.Parameter(torch.ones(2))],
                               (torch.ones(2),)]),
    # a ModelShape or a preset name: unknown names, wrong types
    "shape": st.text(min_size=1, max_size=12).filter(lambda s: s not in shapes.PRESETS)
             | st.sampled_from([None, 7, 0, -1, 2.5, ["tiny"], {"hidden_size": 64}]),
}


def _choice(choices, none_ok=False):
    """Wrong names for an argument that takes one of ``choices`` (or None, with ``none_ok``)."""
    others = [v for v in (None, 0, -1, 3.5, True, ["x"])
              if not (v is None and none_ok) and not any(v == c and type(v) is type(c)
                                                         for c in choices)]
    return st.text(max_size=10).filter(lambda s: s not in choices) | st.sampled_from(others)


# --- the table: function, valid arguments, kind of each argument ----------------------------
# One row: (label, call, valid kwargs, {argument: kind or strategy}). ``call(**kwargs)`` must
# succeed with the valid kwargs (checked by test_valid_calls_run).

def _opt():
    return torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)


CASES = [
    ("ModelShape", lambda **k: shapes.ModelShape(**k),
     dict(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
          intermediate_size=176, max_seq_len=64),
     {**{f: "pos" for f in ("vocab_size", "hidden_size", "num_layers", "num_heads",
                             "num_kv_heads", "intermediate_size", "max_seq_len")},
      "tie_embeddings": "bool", "attention_bias": "bool", "o_bias": "bool", "mlp_bias": "bool",
      "norm_eps": "posnum", "rope_theta": "posnum"}),
    ("shapes.get", shapes.get, dict(name="tiny"), {"name": "shape"}),
    # params
    *[(f"params.{f.__name__}", f, dict(shape=TINY), {"shape": "shape"})
      for f in (params.count, params.breakdown, params.slides_count, params.describe,
                params.subs)],
    ("params.formula", params.formula, dict(gqa=True),
     {"gqa": "bool", "tied": "bool", "bias": "bool"}),
    # flops
    ("flops.matmul_params", flops.matmul_params, dict(shape=TINY), {"shape": "shape"}),
    ("flops.forward_flops", flops.forward_flops, dict(shape=TINY, batch=2, seq=8),
     {"shape": "shape", "batch": "pos", "seq": "pos"}),
    ("flops.backward_flops", flops.backward_flops, dict(shape=TINY, batch=2, seq=8),
     {"shape": "shape", "batch": "pos", "seq": "pos", "attention": _choice(llama.ATTN_IMPLS)}),
    ("flops.recompute_flops", flops.recompute_flops,
     dict(shape=TINY, batch=2, seq=8, recompute="full"),
     {"shape": "shape", "batch": "pos", "seq": "pos", "attention": _choice(llama.ATTN_IMPLS),
      "recompute": _choice(flops.STRATEGIES), "early_stop": "bool"}),
    ("flops.training_flops", flops.training_flops, dict(shape=TINY, batch=2, seq=8),
     {"shape": "shape", "batch": "pos", "seq": "pos", "attention": _choice(llama.ATTN_IMPLS),
      "recompute": _choice(flops.STRATEGIES), "backward": "bool", "early_stop": "bool"}),
    ("flops.six_p_tokens", flops.six_p_tokens, dict(shape=TINY, tokens=100),
     {"shape": "shape", "tokens": "pos"}),
    ("measure.flops.measured_flops", lambda **k: measured.measured_flops(**k),
     dict(model=None, input_ids=IDS), {"model": "module", "input_ids": "tensor",
                                       "backward": "bool"}),
    # precision: dtype names
    *[(f"precision.{f.__name__}", f, dict(dtype="bf16"),
       {"dtype": _choice(("fp32", "float32", "bf16", "bfloat16", "fp16", "float16"))})
      for f in (precision.torch_dtype, precision.dtype_bytes, precision.dtype_name)],
    # memory; the layout
    ("ParallelDims", ParallelDims, dict(dp=2, tp=2, pp=2), {"dp": "pos", "tp": "pos", "pp": "pos"}),
    ("memory.parallel_dims", memory.parallel_dims, dict(gpus=8, tp=2, pp=2),
     {"gpus": "pos", "tp": "pos", "pp": "pos"}),
    ("memory.state_bytes_per_param", memory.state_bytes_per_param, dict(),
     {"precision": _choice(memory.PRECISIONS), "optimizer": _choice(memory.OPTIMIZERS)}),
    ("memory_methods.method_state_bytes", memory_methods.method_state_bytes,
     dict(shape=TINY, method="galore"),
     {"shape": "shape", "method": _choice(tuple(memory_methods.METHODS)),
      "precision": _choice(memory.PRECISIONS), "rank": "pos?", "in_backward": "bool"}),
    ("memory.params_per_gpu", memory.params_per_gpu,
     dict(shape=TINY, dims=ParallelDims(tp=2, pp=2), rank=3),
     {"shape": "shape", "dims": "pos", "rank": "nonneg?"}),
    ("memory.model_state_bytes", memory.model_state_bytes, dict(num_params=10**6, dims=4),
     {"num_params": "pos", "zero": _choice((0, 1, 2, 3)), "dims": "pos",
      "precision": _choice(memory.PRECISIONS), "optimizer": _choice(memory.OPTIMIZERS)}),
    ("memory.activation_bytes", memory.activation_bytes, dict(shape=TINY, batch=2, seq=8),
     {"shape": "shape", "batch": "pos", "seq": "pos", "tp": "pos", "sp": "bool",
      "impl": _choice(activation_formulas.IMPLS), "attention": _choice(llama.ATTN_IMPLS),
      "recompute": _choice(recompute.MODELLED, none_ok=True),
      "dtype": _choice(("fp32", "float32", "bf16", "bfloat16", "fp16", "float16"))}),
    ("memory.estimate", memory.estimate, dict(shape="llama-7b", dims=8, batch=2, seq=512),
     {"shape": "shape", "dims": "pos", "batch": "pos", "seq": "pos?",
      "zero": _choice((0, 1, 2, 3)), "sp": "bool", "softmax_extra": "bool", "overheads": "bool",
      "impl": _choice(activation_formulas.IMPLS), "precision": _choice(memory.PRECISIONS),
      "optimizer": _choice(memory.OPTIMIZERS), "set_to_none": "bool",
      "attention": _choice(llama.ATTN_IMPLS), "recompute": _choice(recompute.MODELLED, none_ok=True),
      "optimizer_impl": _choice(step_peak.OPTIMIZER_IMPLS)}),
    ("memory.step_peak", memory.step_peak, dict(shape=TINY, batch=2, seq=16),
     {"shape": "shape", "batch": "pos", "seq": "pos?", "dims": "pos",
      "set_to_none": "bool", "zero": _choice((0, 1, 2, 3))}),
    ("step_peak.param_sizes", step_peak.param_sizes, dict(shape=TINY),
     {"shape": "shape", "impl": _choice(("reference", "hf", "hf-eager", "hf-sdpa"))}),
    ("step_peak.optimizer_temporary_bytes", step_peak.optimizer_temporary_bytes,
     dict(sizes=[4, 8], element_bytes=4),
     {"element_bytes": "pos", "impl": _choice(step_peak.OPTIMIZER_IMPLS)}),
    ("slides_formulas.llmbox_memory_bytes", slides_formulas.llmbox_memory_bytes,
     dict(num_params=7 * 10**9, gpus=2, L=32, B=8, T=2048, H=4096, V=32000),
     {**{k: "pos" for k in ("num_params", "gpus", "L", "B", "T", "H", "V")},
      "zero": _choice((0, 1, 2, 3)), "model_dtype": _choice(("bf16", "fp16", "int8", "fp8", "int4"))}),
    ("slides_formulas.llmbox_gpus_needed", slides_formulas.llmbox_gpus_needed,
     dict(num_params=7 * 10**9, L=32, B=8, T=2048, H=4096, V=32000),
     {**{k: "pos" for k in ("num_params", "L", "B", "T", "H", "V", "card_bytes", "max_gpus")},
      "usable": st.sampled_from([0, -0.5, 1.5, math.nan, None, "0.95"])}),
    ("slides_formulas.slides_formula", slides_formulas.slides_formula,
     dict(num_params=7 * 10**9, gpus=2, L=32, B=8, T=2048, H=4096, V=32000),
     {k: "pos" for k in ("num_params", "gpus", "L", "B", "T", "H", "V", "other_unit")}),
    ("slides_formulas.llmbox_activation_bytes", slides_formulas.llmbox_activation_bytes,
     dict(L=32, B=8, T=2048, H=4096, V=32000), {k: "pos" for k in ("L", "B", "T", "H", "V")}),
    ("tracker.measure_peak", tracker.measure_peak, dict(fn=lambda: torch.ones(3)),
     {"fn": "callable"}),
    # activations: measured; the models; the closed forms
    ("activations.measure", lambda model: activations.measure(model, IDS, labels=IDS),
     dict(model=None), {"model": "module"}),
    ("activations.build", activations.build, dict(shape=TINY),
     {"shape": "shape", "impl": _choice(activations.MODELS),
      "recompute": _choice(recompute.MODELLED), "attention": _choice(llama.ATTN_IMPLS, none_ok=True),
      "dtype": _choice(("fp32", "float32", "bf16", "bfloat16", "fp16", "float16"))}),
    ("activations.measure_shape", activations.measure_shape,
     dict(shape=TINY, batch=1, seq=4),
     {"shape": "shape", "batch": "pos", "seq": "pos", "fake": "bool"}),
    ("activation_formulas.textbook_bytes", activation_formulas.textbook_bytes,
     dict(shape=TINY, batch=2, seq=8),
     {"shape": "shape", "batch": "pos", "seq": "pos", "tp": "pos", "sp": "bool",
      "dtype": _choice(("fp32", "float32", "bf16", "bfloat16", "fp16", "float16"))}),
    ("activation_formulas.korthikanti_bytes", activation_formulas.korthikanti_bytes,
     dict(shape=TINY, batch=2, seq=8),
     {"shape": "shape", "batch": "pos", "seq": "pos", "tp": "pos", "sp": "bool",
      "recompute": _choice(recompute.MODELLED)}),
    ("activation_formulas.saved_bytes", activation_formulas.saved_bytes,
     dict(shape=TINY, batch=2, seq=8),
     {"shape": "shape", "batch": "pos", "seq": "pos",
      "impl": _choice(activations.MODELS),
      "recompute": _choice(recompute.MODELLED)}),
    ("activation_formulas.saved_bytes_terms", activation_formulas.saved_bytes_terms,
     dict(shape=TINY, batch=2, seq=8),
     {"shape": "shape", "batch": "pos", "seq": "pos",
      "impl": _choice(activations.MODELS),
      "attention": _choice(llama.ATTN_IMPLS, none_ok=True)}),
    ("activation_formulas.tp_saved_bytes", activation_formulas.tp_saved_bytes,
     dict(shape=TINY, batch=2, seq=8, tp=2),
     {"shape": "shape", "batch": "pos", "seq": "pos", "tp": "pos", "sequence_parallel": "bool",
      "attention": _choice(llama.ATTN_IMPLS)}),
    # tensor parallel: the communication formulas
    ("tp_comm.comm_per_layer", tp_comm.comm_per_layer,
     dict(tp=2, sequence_parallel=False, batch=2, seq=8, hidden=64),
     {"tp": "pos", "sequence_parallel": "bool", "batch": "pos", "seq": "pos", "hidden": "pos",
      "fused": "bool"}),
    ("tp_comm.comm_per_model", tp_comm.comm_per_model,
     dict(shape=TINY, tp=2, sequence_parallel=True, batch=2, seq=8),
     {"shape": "shape", "tp": "pos", "sequence_parallel": "bool", "batch": "pos", "seq": "pos"}),
    # pipeline parallel: the schedules, the simulator, the formulas, the split
    ("pp_schedule.schedule", pp_schedule.schedule,
     dict(schedule="interleaved", p=2, microbatches=4, rank=1, virtual=2),
     {"schedule": _choice(pp_schedule.SCHEDULES), "p": "pos", "microbatches": "pos",
      "rank": "nonneg", "virtual": "ge2"}),
    ("pp_schedule.simulate", pp_schedule.simulate, dict(schedule="1f1b", p=2, microbatches=4),
     {"schedule": _choice(pp_schedule.SCHEDULES), "p": "pos", "microbatches": "pos",
      "t_f": "nonnegnum", "t_b": "nonnegnum", "p2p": "nonnegnum"}),
    ("pp_schedule.bubble_formula", pp_schedule.bubble_formula, dict(p=4, microbatches=8, virtual=2),
     {"p": "pos", "microbatches": "pos", "virtual": "pos"}),
    ("pp_schedule.p2p_messages", pp_schedule.p2p_messages, dict(p=4, microbatches=8),
     {"p": "pos", "microbatches": "pos", "virtual": "pos"}),
    ("pipeline_parallel.stage_layers", pipeline_parallel.stage_layers,
     dict(num_layers=5, stages=2), {"num_layers": "nonneg", "stages": "pos"}),
    # 3D parallel: the bytes per axis, the layout drawn
    ("parallelize.axis_bytes", parallelize.axis_bytes,
     dict(shape=TINY, dims=ParallelDims(dp=2, tp=2, pp=2), rank=5, batch=8, seq=16),
     {"shape": "shape", "dims": st.sampled_from([None, 8, (2, 2, 2), "2x2x2"]), "rank": "nonneg",
      "batch": "pos", "seq": "pos", "microbatches": "pos?",
      "zero": st.sampled_from([4, -1, True, "1", None, 1.0]),
      "recompute": _choice(("none", "full", "sqrt", "selective")), "dtype_bytes": "pos",
      "loss_bytes": "pos?"}),
    # the planner
    ("shapes.resolve", shapes.resolve, dict(model="llama-70b"), {"model": "shape"}),
    ("plan.cluster", plan.cluster, dict(gpu="h100-80g"), {"gpu": _choice(tuple(plan.CLUSTERS))}),
    ("plan.parse_tokens", plan.parse_tokens, dict(batch_tokens="4M"),
     {"batch_tokens": st.sampled_from(["0", "-4M", "4Q", "", None, 0, -3, True, 2.5, "4.5M"])}),
    ("plan.layout", plan.layout, dict(shape="llama-7b", gpus=8, batch_tokens=2**22, seq=2048,
                                      tp=2, pp=2),
     {"shape": "shape", "gpus": "pos", "batch_tokens": "pos", "seq": "pos", "tp": "pos",
      "pp": "pos", "zero": _choice((0, 1, 2, 3)), "recompute": _choice(("none", "selective",
                                                                          "full")),
      "micro_batch": "pos", "virtual": "pos", "sp": "bool"}),
    ("plan.search", plan.search, dict(shape="tiny", gpu="a100-80g", gpus=2, batch_tokens=2**10,
                                      seq=64, zeros=(1,), recomputes=("none",)),
     {"shape": "shape", "gpu": _choice(tuple(plan.CLUSTERS)), "gpus": "pos",
      "batch_tokens": "pos", "seq": "pos?"}),
    # batch
    ("batch.linear_ramp", batch.linear_ramp,
     dict(tokens_seen=10, start_tokens=32, end_tokens=3200, ramp_tokens=1000),
     {"tokens_seen": "nonneg", "start_tokens": "pos", "end_tokens": "pos", "ramp_tokens": "nonneg",
      "micro_batch_tokens": "pos?"}),
    ("batch.stepwise", batch.stepwise, dict(tokens_seen=5, stages=batch.PALM_STAGES),
     {"tokens_seen": "nonneg", "stages": st.sampled_from([5, 2.0, "abc", {"a": 1}])}),
    ("batch.steps_and_tokens", batch.steps_and_tokens,
     dict(schedule=lambda t: 10, total_tokens=100),
     {"schedule": "callable", "total_tokens": "nonneg"}),
    ("batch.accumulation_steps", batch.accumulation_steps,
     dict(batch_tokens=1024, micro_batch_tokens=256),
     {"batch_tokens": "pos", "micro_batch_tokens": "pos"}),
    ("batch.accumulate_gradients", batch.accumulate_gradients, dict(model=None, batches=[IDS]),
     {"model": "module", "batches": "seq", "reduction": _choice(batch.REDUCTIONS)}),
    ("batch.per_example_grads", batch.per_example_grads, dict(model=None, input_ids=IDS),
     {"model": "module", "input_ids": "tensor", "method": _choice(("vmap", "loop"))}),
    ("batch.noise_terms_from_norms", batch.noise_terms_from_norms,
     dict(b_small=1, sq_norm_small=2.0, b_big=8, sq_norm_big=1.0),
     {"b_small": "pos", "b_big": "pos", "sq_norm_small": "nonnegnum",
      "sq_norm_big": "nonnegnum"}),
    # schedules
    *[(f"schedules.{f.__name__}", f,
       dict(step=3, peak_lr=1e-3, warmup_steps=2, total_steps=10),
       {"step": "nonneg", "peak_lr": "posnum", "warmup_steps": "nonneg", "total_steps": "nonneg",
        "min_lr": "nonnegnum"})
      for f in (schedules.warmup_cosine, schedules.warmup_linear)],
    ("schedules.inverse_sqrt", schedules.inverse_sqrt, dict(step=3, peak_lr=1e-2, warmup_steps=2),
     {"step": "nonneg", "peak_lr": "posnum", "warmup_steps": "pos",
      "warmup": _choice(("constant", "linear"))}),
    ("schedules.warmup_stable_decay", schedules.warmup_stable_decay,
     dict(step=3, peak_lr=1e-3, warmup_steps=2, stable_steps=5, decay_steps=3),
     {"step": "nonneg", "peak_lr": "posnum", "warmup_steps": "nonneg", "stable_steps": "nonneg",
      "decay_steps": "pos", "min_lr": "nonnegnum",
      "decay": _choice(schedules.DECAYS + ("1-sqrt",))}),
    ("schedules.step_decay", schedules.step_decay,
     dict(step=3, peak_lr=1e-3, drops=[(5, 0.5)]),
     {"step": "nonneg", "peak_lr": "posnum", "warmup_steps": "nonneg", "drops": "seq"}),
    ("schedules.lr_lambda", schedules.lr_lambda,
     dict(fn=schedules.warmup_cosine, peak_lr=1e-3, warmup_steps=2, total_steps=10),
     {"fn": "callable", "peak_lr": "posnum"}),
    ("schedules.scheduler", schedules.scheduler,
     dict(optimizer=None, fn=schedules.warmup_cosine, peak_lr=1e-3, warmup_steps=2,
          total_steps=10),
     {"optimizer": "module", "fn": "callable"}),
    ("schedules.symbolic", schedules.symbolic, dict(), {"decay": _choice(("cosine", "linear"))}),
    # train
    ("train.successor_table", train.successor_table, dict(vocab_size=16),
     {"vocab_size": "pos", "seed": "nonneg", "k": "pos"}),
    ("train.corpus", train.corpus, dict(n_tokens=100, vocab_size=16),
     {"n_tokens": "pos", "vocab_size": "pos", "seed": "nonneg", "probs": "seq"}),
    ("train.entropy_rate_nats", train.entropy_rate_nats, dict(), {"probs": "seq"}),
    ("train.batches", train.batches, dict(tokens=torch.arange(100), batch_size=2, seq_len=8),
     {"tokens": "tensor", "batch_size": "pos", "seq_len": "pos", "seed": "nonneg"}),
    ("train.train", train.train,
     dict(shape_or_model=TINY, steps=1, batch_size=2, seq_len=8, peak_lr=1e-3, tokens=IDS[0]),
     {"shape_or_model": "shape", "steps": "pos", "batch_size": "pos", "seq_len": "ge2",
      "peak_lr": "posnum", "optimizer": _choice(train.OPTIMIZERS),
      "weight_decay": "nonnegnum", "grad_clip": "posnum?", "micro_batch_size": "pos?",
      "seed": "nonneg", "progress": "bool", "lr_schedule": "callable?"}),
    # precision
    ("precision.format_info", precision.format_info, dict(name="bf16"),
     {"name": _choice(precision.FORMATS)}),
    ("precision.decode", precision.decode, dict(magnitude_code=5, name="bf16"),
     {"magnitude_code": "nonneg", "name": _choice(precision.FORMATS)}),
    *[(f"precision.{f.__name__}", f, dict(value=1.5, name="fp16"),
       {"value": st.sampled_from([None, "1.5", [1.0], True]), "name": _choice(precision.FORMATS)})
      for f in (precision.round_exact, precision.bits_of, precision.neighbours)],
    ("precision.round_to", precision.round_to, dict(x=torch.ones(4), name="bf16"),
     {"x": "tensor", "name": _choice(precision.FORMATS)}),
    ("fp8.quantize", fp8.quantize, dict(x=torch.ones(2, 8), tile=4),
     {"x": "tensor", "name": _choice(precision.FORMATS),
      "granularity": _choice(fp8.GRANULARITIES), "tile": "pos", "pow2_scales": "bool"}),
    ("fp8.quantization_error", fp8.quantization_error,
     dict(x=torch.ones(2, 8), tile=4),
     {"x": "tensor", "name": _choice(precision.FORMATS),
      "granularity": _choice(fp8.GRANULARITIES), "tile": "pos"}),
    ("fp8.fp8_matmul", fp8.fp8_matmul,
     dict(a=torch.ones(4, 4), b=torch.ones(4, 4), tile=4),
     {"a": "tensor", "b": "tensor", "granularity": _choice(("fine", "tensor")), "tile": "pos"}),
    ("fp8.realistic_activations", fp8.realistic_activations, dict(shape=(4, 8)),
     {"shape": "seq", "outlier_fraction": st.sampled_from([-0.1, 1.5, None, "0.1", math.nan]),
      "outlier_scale": "posnum", "seed": "nonneg"}),
    # amp
    ("amp.LossScaler", amp.LossScaler, dict(),
     {"init_scale": "posnum", "growth_factor": "posnum", "backoff_factor": "posnum",
      "growth_interval": "pos", "enabled": "bool"}),
    ("amp.MixedPrecisionTrainer", amp.MixedPrecisionTrainer, dict(model=None),
     {"model": "module", "lr": "posnum", "eps": "posnum", "weight_decay": "nonnegnum",
      "grad_clip": "posnum?", "master_weights": "bool", "betas": "seq",
      "dtype": st.sampled_from([torch.float32, "bf16", None, 16])}),
    ("amp.lost_update_fraction", amp.lost_update_fraction,
     dict(weights=torch.ones(3), update=torch.ones(3)), {"weights": "tensor", "update": "tensor"}),
    ("amp.gradient_underflow", amp.gradient_underflow,
     dict(grads=[torch.ones(3)], dtype=torch.float16),
     {"grads": st.sampled_from([None, 5, 2.0, "abc"]), "scale": "posnum",
      "dtype": st.sampled_from([None, "fp16", torch.int32, 16])}),
    # recompute, llama
    ("recompute.segments", recompute.segments, dict(num_layers=4, strategy="sqrt"),
     {"num_layers": "pos", "strategy": _choice(recompute.STRATEGIES)}),
    ("recompute.apply", recompute.apply, dict(model=None), {"model": "module",
                                                            "strategy": _choice(recompute.STRATEGIES)}),
    ("llama.Llama", llama.Llama, dict(shape=TINY),
     {"shape": "shape", "attn_impl": _choice(llama.ATTN_IMPLS)}),
    ("Llama.forward", lambda **k: _NET(**k), dict(input_ids=IDS), {"input_ids": "tensor"}),
    ("Llama.init_weights", lambda **k: _NET.init_weights(**k), dict(), {"std": "posnum"}),
    ("widgets.nice_limit", widgets.nice_limit, dict(x=3.7), {"x": "posnum"}),
    # settings, device, plots, show
    ("settings.get", slide_settings.get, dict(name="GPT-3"),
     {"name": st.sampled_from([None, 3, ["GPT-3"], "GPT-5"])}),
    ("settings.parse_tokens", slide_settings.parse_tokens, dict(text="3.2M"),
     {"text": st.sampled_from([None, 32000, ["32K"], "32Q", "-1K"])}),
    ("settings.parse_batch", slide_settings.parse_batch, dict(text="32K → 3.2M"),
     {"text": st.sampled_from([None, 32000, ["32K"]])}),
    ("settings.format_lr", slide_settings.format_lr, dict(lr=6e-5), {"lr": "posnum"}),
    ("settings.format_table", slide_settings.format_table, dict(), {"settings": "seq"}),
    ("device.choose", device.choose, dict(env={}, cuda=False, mps=False),
     {"env": st.sampled_from(["cpu", ["cpu"], 3]), "cuda": "bool?", "mps": "bool?",
      "capability": st.sampled_from([8, "8.0", (8,), (8, "0")])}),
    ("device.report", device.report, dict(choice=device.choose({}, cuda=False, mps=False)),
     {"choice": st.sampled_from(["cpu", 3, torch.device("cpu")])}),
    ("plots.save", plots.save, dict(fig=None, name="x"),
     {"fig": st.sampled_from([None, "fig", 3]),
      "name": st.sampled_from([None, 3, "", "a/b", ".hidden", ["x"]])}),
    ("plots.rank_cube", plots.rank_cube, dict(ax=None, dims=ParallelDims(dp=2, tp=2, pp=2)),
     {"dims": st.sampled_from([None, 8, (2, 2, 2)]), "title": st.sampled_from([3, ["t"]])}),
    ("plots.gantt", plots.gantt, dict(ax=None, events=pp_schedule.simulate("1f1b", 2, 2)),
     {"events": "seq", "stages": "pos?", "title": st.sampled_from([3, ["t"], b"t"]),
      "unit": st.sampled_from([None, 3, ["s"]])}),
    ("show.show", show, dict(obj=check.integer), {"lines": st.sampled_from(
        [3, "1-2", (2, 1), (0, 3), (1,), (1.0, 2), (True, 2), [1, 2, 3]])}),
]

_NET = _net()
# valid values that cannot be built at import time (a fresh model per call)
_LAZY = {"model": _net}
_CALLS_WITH_NONE_MODEL = {"measure.flops.measured_flops", "activations.measure",
                          "batch.accumulate_gradients", "batch.per_example_grads",
                          "amp.MixedPrecisionTrainer", "recompute.apply"}


def _valid(label, kwargs):
    out = dict(kwargs)
    if label in _CALLS_WITH_NONE_MODEL:
        out["model"] = _net()
    if label == "schedules.scheduler":
        out["optimizer"] = _opt()
    if label == "plots.save":
        import matplotlib.pyplot as plt
        out["fig"] = plt.figure()
    if label in ("plots.gantt", "plots.rank_cube"):  # a Figure outside pyplot: nothing to close
        from matplotlib.figure import Figure
        out["ax"] = Figure().add_subplot()
    return out


PARAMS = [pytest.param(label, call, kwargs, arg, kind, id=f"{label}:{arg}")
          for label, call, kwargs, kinds in CASES for arg, kind in kinds.items()]


def _message_names(msg: str, arg: str) -> bool:
    """``<arg> must be <rule>, got …`` or ``<arg>: …`` at the start; ``<arg>[i]…`` for an item."""
    return re.match(rf"{re.escape(arg)}(\[\d+\][^ ]*)?( \(\w+\))?( [\w ]+)?( must |: | and )",
                    msg) is not None or re.match(rf"{re.escape(arg)}=", msg) is not None


@pytest.mark.parametrize("label,call,kwargs", [pytest.param(c[0], c[1], c[2], id=c[0])
                                               for c in CASES])
def test_valid_calls_run(label, call, kwargs, tmp_path, monkeypatch):
    """The table's valid arguments are valid: the bad ones below are the only difference."""
    monkeypatch.setenv("LLMTRAIN_FIGURES", str(tmp_path))
    result = call(**_valid(label, kwargs))
    if label == "train.batches":
        assert next(result).shape == (2, 8)


@pytest.mark.parametrize("label,call,kwargs,arg,kind", PARAMS)
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_bad_value_names_the_argument(label, call, kwargs, arg, kind, data, tmp_path_factory):
    if isinstance(kind, str):  # "pos?": None is allowed (it means the default)
        strategy = BAD[kind.rstrip("?")]
        if kind.endswith("?"):
            strategy = strategy.filter(lambda v: v is not None)
    else:
        strategy = kind
    bad = data.draw(strategy, label=arg)
    args = _valid(label, kwargs)
    args[arg] = bad
    if label == "plots.save":
        import os
        os.environ["LLMTRAIN_FIGURES"] = str(tmp_path_factory.mktemp("fig"))
    with pytest.raises(ValueError) as info:
        result = call(**args)
        if label == "train.batches":  # a generator: its arguments are checked at the call
            pytest.fail("train.batches did not check its arguments when called")
        pytest.fail(f"{label}({arg}={bad!r}) returned {result!r}")
    msg = str(info.value)
    assert _message_names(msg, arg), f"{label}({arg}={bad!r}): {msg}"
    assert "\n" not in msg.strip() or label == "show.show"


# --- the ten cases of issue 10 §6 ----------------------------------------------------------

@pytest.mark.parametrize("make,message", [
    (lambda: ParallelDims(pp=0), "pp must be a positive integer, got 0"),
    (lambda: ParallelDims(tp=0), "tp must be a positive integer, got 0"),
    (lambda: ParallelDims(tp=-2), "tp must be a positive integer, got -2"),  # was reported as dp
    (lambda: memory.parallel_dims(2, pp=-1), "pp must be a positive integer, got -1"),
    (lambda: memory.parallel_dims(0), "gpus must be a positive integer, got 0"),
    (lambda: memory.estimate(TINY, 0),
     "dims must be a ParallelDims or a positive integer (= ParallelDims(dp=dims)), got 0"),
])
def test_zero_or_negative_degree_is_named(make, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make()


def test_a_preset_name_is_its_model_shape():
    for name in ("tiny", "llama-7b", "llama3-8b"):
        s = shapes.get(name)
        assert params.count(name) == params.count(s)
        assert memory.estimate(name, seq=128).total == memory.estimate(s, seq=128).total
        assert flops.training_flops(name, 1, 16) == flops.training_flops(s, 1, 16)
        assert memory.model_state_bytes(name) == memory.model_state_bytes(s)
    assert llama.Llama("tiny").shape == TINY
    with pytest.raises(ValueError, match=r"^shape: unknown model name 'llama-8b'; known: .*llama3-8b"):
        params.count("llama-8b")


def test_num_key_value_heads_zero_is_not_multi_head():
    cfg = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4)
    assert shapes.ModelShape.from_hf_config(cfg).num_kv_heads == 4  # absent: MHA
    with pytest.raises(ValueError, match=r"^config\['num_key_value_heads'\] must be a positive "
                                         r"integer, got 0$"):
        shapes.ModelShape.from_hf_config({**cfg, "num_key_value_heads": 0})


def test_none_where_a_list_is_expected():
    net = _net()
    with pytest.raises(ValueError, match="^batches must be a non-empty list or tuple, got None$"):
        batch.accumulate_gradients(net, None)
    with pytest.raises(ValueError, match="^drops must be a list or tuple, got None$"):
        schedules.step_decay(3, peak_lr=1e-3, drops=None)
    with pytest.raises(ValueError, match="^probs must be a non-empty list or tuple, got None$"):
        train.corpus(10, probs=None)


def test_parameters_where_a_module_is_expected():
    ps = list(_net().parameters())
    hint = r"\(pass the model itself, not its parameters\)$"
    for fn in (lambda: batch.accumulate_gradients(ps, [IDS]),
               lambda: amp.MixedPrecisionTrainer(ps),
               lambda: measured.measured_flops(ps, IDS),
               lambda: recompute.apply(ps, "full"),
               lambda: train.train(ps, steps=1, batch_size=1, seq_len=4, peak_lr=1e-3)):
        with pytest.raises(ValueError, match=rf"^(model|shape_or_model) must be .*{hint}"):
            fn()


def test_config_file_that_is_not_text(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match=rf"^config file {re.escape(repr(str(path)))} is not UTF-8"):
        shapes.ModelShape.from_hf_config(path)


# --- the helper itself ----------------------------------------------------------------------

@given(st.integers(min_value=1))
def test_positive_int_accepts_and_returns_ints(n):
    assert check.positive_int("n", n) == n and type(check.positive_int("n", n)) is int


@given(st.integers(max_value=0) | st.booleans() | st.floats() | st.text() | st.none())
def test_positive_int_message(v):
    with pytest.raises(ValueError, match=r"^n must be a positive integer, got "):
        check.positive_int("n", v)


def test_messages_are_stable():
    """Messages that notebooks, the CLI and other tests rely on."""
    cases = [
        (lambda: check.integer("tokens_seen", -1, 0), "tokens_seen must be an integer >= 0, got -1"),
        (lambda: check.integer("x", 5, 0, 3), "x must be an integer in [0, 3], got 5"),
        (lambda: check.positive_number("lr", math.inf), "lr must be a positive finite number, got inf"),
        (lambda: check.number("f", 2, 0, 1), "f must be a finite number in [0, 1], got 2"),
        (lambda: check.one_of("impl", "x", ("a", "b")), "impl must be one of ('a', 'b'), got 'x'"),
        (lambda: check.one_of("zero", True, (0, 1)), "zero must be one of (0, 1), got True"),
        (lambda: check.boolean("sp", 1), "sp must be True or False, got 1"),
        (lambda: check.sequence("s", None), "s must be a list or tuple, got None"),
        (lambda: check.tensor("ids", torch.ones(2), dim=2, floating=False),
         "ids must be a 2-D integer tensor, got shape (2,) and dtype torch.float32"),
        (lambda: check.function("fn", 3), "fn must be callable (a function), got 3"),
        (lambda: shapes.resolve(3.0, "shape"), "shape must be a ModelShape or a preset name"),
    ]
    for fn, message in cases:
        with pytest.raises(ValueError) as info:
            fn()
        assert str(info.value).startswith(message), str(info.value)


def test_long_values_are_described_not_printed():
    msg = check.describe(list(range(1000)))
    assert msg == "a list of 1000 int"
    assert check.describe(torch.zeros(3, 4)).startswith("a Tensor of shape (3, 4)")
    assert check.describe("short") == "'short'"


def test_optional_passes_none_only():
    assert check.optional(check.positive_int, "seq", None) is None
    with pytest.raises(ValueError, match="^seq must be a positive integer, got 0$"):
        check.optional(check.positive_int, "seq", 0)


def test_check_does_not_import_torch():
    """The CLI imports check before it knows whether it needs torch."""
    import subprocess
    import sys

    code = "import sys, llmtrain.check, llmtrain.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def _imports_of(path, module: str) -> set[str]:
    """The llmtrain modules ``path`` (module ``module``) imports, at any depth of its code
    (functions too: a lazy import is still an edge). Aside: ``if TYPE_CHECKING:`` (never run)
    and ``if __name__ == "__main__":`` (``python -m``: the module then runs as ``__main__``, a
    module of its own, so what it imports may import the library module back)."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and any(k in ast.unparse(node.test)
                                            for k in ("TYPE_CHECKING", "__main__")):
            node.body = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # ``from . import memory``
    return found


# No import against the layers, not even at call time (tests/test_architecture.py checks the
# layers themselves).
_CALL_TIME_ONLY: set = set()


def test_no_import_cycle():
    """The llmtrain modules import each other in one direction only (issue 11 §1: memory ->
    step_peak -> activation_formulas -> activations -> precision, never the reverse), lazy
    imports in functions included. Importing a module imports its packages' ``__init__`` too."""
    from pathlib import Path

    import llmtrain

    root = Path(llmtrain.__file__).parent
    modules = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        edges = set()
        for target in _imports_of(path, name):
            while target and target not in modules:  # ``from .mesh import ParallelDims``
                target = target.rpartition(".")[0]
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # the module and the packages above it
                t = ".".join(parts[:i])
                if (t and t != name and not name.startswith(t + ".")  # not its own packages
                        and (name, t) not in _CALL_TIME_ONLY):
                    edges.add(t)
        graph[name] = edges
    assert {"llmtrain.cost.memory", "llmtrain.cost.activations"} <= set(graph)
    assert "llmtrain.cost.activations" in graph["llmtrain.cost.memory"]
    done: set[str] = set()
    cycles = []

    def visit(name, path):
        if name in path:
            cycles.append(" -> ".join(path[path.index(name):] + [name]))
            return
        if name in done:
            return
        for t in sorted(graph[name]):
            visit(t, path + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("kwargs,message", [
    (dict(world_size=0), "world_size must be a positive integer, got 0"),
    (dict(world_size=-2), "world_size must be a positive integer, got -2"),
    (dict(world_size="2"), "world_size must be a positive integer, got '2'"),
    (dict(world_size=2, timeout=0), "timeout must be a positive finite number, got 0"),
    (dict(world_size=2, backend="mpi"), "backend must be one of ('gloo', 'nccl'), got 'mpi'"),
])
def test_launch_checks_before_starting_ranks(kwargs, message):
    from llmtrain.parallel import launch

    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        launch(check.integer, **kwargs)


def test_step_peak_sizes_must_be_a_list_of_counts():
    with pytest.raises(ValueError, match=r"^sizes must be a list or tuple, got None"):
        step_peak.optimizer_temporary_bytes(None)
    with pytest.raises(ValueError, match=r"^sizes\[1\] must be"):
        step_peak.optimizer_temporary_bytes([4, -1])
