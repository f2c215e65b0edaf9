"""Command line: ``llmtrain params llama-7b``, ``llmtrain params --hf-config config.json --json``,
``llmtrain plan llama-70b --gpus 64 --gpu h100-80g --batch-tokens 4M``.

Bad input prints one line to stderr and exits with status 2, never a traceback. Every flag is
checked by ``llmtrain.check``, as the library checks its arguments: integer flags when parsed
(``argument --pp: pp must be a positive integer, got 0``), the others by the function that
takes them (``impl must be one of (...), got 'x'``).
"""

from __future__ import annotations

import argparse
import json
import re
import os
import sys

from . import check
from .cost import activations, methods, params
from .model import recompute, shapes

__all__ = ["main"]


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise _UsageError(message)


def _int_flag(name: str, minimum: int = 1):
    """argparse ``type=`` for an integer flag, checked by ``check.integer``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = text
        try:
            return check.integer(name, value, minimum)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _choice_flag(name: str, choices: tuple[str, ...]):
    """argparse ``type=`` for a flag with named choices, checked by ``check.one_of`` (the error
    names the flag and lists the choices, as the library does)."""
    def parse(text: str) -> str:
        try:
            return check.one_of(name, text, choices)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = name
    return parse


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llmtrain", description="llmtrain: companion to 预训练之训练技术 (training techniques for pretraining)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    pp = sub.add_parser("params", help="count the parameters of a model (模型参数量估计)")
    _model_args(pp)
    pp.add_argument("--json", action="store_true", help='print {"total": int, "breakdown": {...}}')

    pm = sub.add_parser("memory", help="per-GPU training memory (训练显存估计)")
    _model_args(pm)
    pm.add_argument("--gpus", type=_int_flag("gpus"), default=1,
                    help="number of GPUs, dp·cp·tp·pp (default 1)")
    pm.add_argument("--batch", type=_int_flag("batch"), default=1,
                    help="micro-batch per GPU, B (default 1)")
    pm.add_argument("--seq", type=_int_flag("seq"), default=None,
                    help="sequence length T (default: the context)")
    pm.add_argument("--zero", type=int, default=3, choices=[0, 1, 2, 3], help="ZeRO stage (default 3)")
    pm.add_argument("--recompute", default=None, choices=recompute.MODELLED,
                    help="activation recomputation (default: the activation model's own)")
    pm.add_argument("--impl", default="textbook",
                    help="activation model: textbook (default: the slides' 2BTH per layer + 4BTV), "
                         f"{', '.join(activations.IMPLS[1:])}")
    pm.add_argument("--dtype", default="bf16", help="activation dtype: fp32, bf16, fp16 (default bf16)")
    pm.add_argument("--precision", default="mixed", help="mixed (default), fp32 or bf16")
    optimizers = tuple(methods.OPTIMIZERS)  # the registry: one entry per optimizer
    pm.add_argument("--optimizer", default="adamw", choices=optimizers,
                    type=_choice_flag("optimizer", optimizers), metavar="OPTIMIZER",
                    help=f"{optimizers[0]} (default), {', '.join(optimizers[1:4])}, or a "
                         f"memory-saving method (notebook 12): {', '.join(optimizers[4:])}")
    pm.add_argument("--galore-rank", type=_int_flag("galore-rank"), default=None,
                    help="GaLore's rank r with --optimizer galore/galore8bit (default h/4)")
    pm.add_argument("--attention", default=None,
                    help="attention kernel of --impl reference: sdpa (default) or eager")
    pm.add_argument("--tp", type=_int_flag("tp"), default=1, help="tensor-parallel degree")
    pm.add_argument("--pp", type=_int_flag("pp"), default=1, help="pipeline-parallel degree")
    pm.add_argument("--sp", action="store_true", help="sequence parallel (with --tp > 1)")
    pm.add_argument("--cp", type=_int_flag("cp"), default=1,
                    help="context-parallel degree: each GPU holds seq/cp of every sequence")
    pm.add_argument("--cp-method", default="ring", choices=("ring", "all-gather"),
                    help="how a --cp rank gets the others' K and V: ring (default: the next "
                         "block in flight) or all-gather (Llama 3: the whole sequence's)")
    pm.add_argument("--ep", type=_int_flag("ep"), default=1,
                    help="expert-parallel degree (a MoE model): the routed experts over ep of "
                         "the dp ranks; must divide dp")
    pm.add_argument("--microbatches", type=_int_flag("microbatches"), default=None,
                    help="micro-batches per step, with --pp > 1: how many the pipeline's first "
                         "stage holds (default: at least its warm-up)")
    pm.add_argument("--virtual", type=_int_flag("virtual"), default=1,
                    help="chunks per pipeline rank: 1 = 1F1B (default), >1 = interleaved 1F1B")
    pm.add_argument("--framework", default="slides",
                    help="whose bytes and constants: slides (default: 16P, 1 + 4 + 1 GiB, 8BTV), "
                         "deepspeed (18 bytes per sharded parameter), megatron (distributed "
                         "optimizer, 6 + 12/d), nemo (distributed_fused_adam, bf16 states: "
                         "4 + 8/d) or fsdp (16P, no ZeRO runtime)")
    pm.add_argument("--no-overheads", action="store_true",
                    help="leave out the framework's runtime / ZeRO runtime / fragmentation constants")
    pm.add_argument("--json", action="store_true", help="print parts and total in bytes, GB and GiB")

    pf = sub.add_parser("flops", help="FLOPs of one training step (forward + backward)")
    _model_args(pf)
    pf.add_argument("--batch", type=_int_flag("batch"), default=1, help="batch B (default 1)")
    pf.add_argument("--seq", type=_int_flag("seq"), default=None,
                    help="sequence length T (default: the context)")
    pf.add_argument("--attention", default="eager", help="eager (default) or sdpa")
    pf.add_argument("--recompute", default="none",
                    help="none (default), full, every (with --k), sqrt, selective")
    pf.add_argument("--k", type=_int_flag("k"), default=None,
                    help="with --recompute every: checkpoint every k-th layer")
    pf.add_argument("--json", action="store_true", help="print the parts as JSON")

    pl = sub.add_parser("plan", help="rank the 3D layouts of a model on a cluster (3D 并行规划)")
    pl.add_argument("model", help="a preset, bloom-176b, llama3-405b or llama-70b (= llama2-70b)")
    pl.add_argument("--gpus", type=_int_flag("gpus"), required=True, help="number of GPUs")
    pl.add_argument("--gpu", required=True, help="a100-40g, a100-80g or h100-80g")
    pl.add_argument("--batch-tokens", required=True,
                    help="tokens per optimizer step (the global batch, not the total training "
                         "tokens): 4M = 4·2²⁰, 512K = 512·2¹⁰, 1G = 2³⁰, or a number")
    pl.add_argument("--seq", type=_int_flag("seq"), default=None,
                    help="sequence length (default: the model's context)")
    pl.add_argument("--virtual", default="1-8",
                    help="chunks per pipeline rank to search: a list like 1,2,4 or a range 1-8 "
                         "(default 1-8: 1F1B and interleaved 1F1B with v dividing the layers "
                         "of a stage)")
    pl.add_argument("--framework", default=None,
                    help="the assumptions of a framework: " + ", ".join(_plan_frameworks())
                         + " (default: FlashAttention, data-parallel traffic overlapped, the "
                           "slides' memory constants)")
    pl.add_argument("--top", type=_int_flag("top"), default=10, help="layouts shown (default 10)")
    pl.add_argument("--explain", action="store_true",
                    help="say why the fastest layout wins against the best of each other choice")
    pl.add_argument("--json", action="store_true", help="print the ranked layouts as JSON")

    sub.add_parser("models", help="list the presets")
    return p


def _plan_frameworks() -> list[str]:
    return ["megatron-2021", "megatron-2022", "megatron-2023",
            "megatron-deepspeed", "megatron-core", "nemo", "megatron-core-2023", "fsdp",
            "fsdp-llama3"]


def _virtuals(text: str) -> tuple[int, ...]:
    """"1,2,4" or "1-8" (or one number) as a tuple of positive ints."""
    m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    try:
        vs = (tuple(range(int(m.group(1)), int(m.group(2)) + 1)) if m
              else tuple(int(x) for x in text.split(",")))
    except ValueError:
        vs = ()
    if not vs or min(vs) < 1:
        raise ValueError(f"virtual must be positive counts like 1,2,4 or a range like 1-8, "
                         f"got {text!r}")
    return vs


def _plan_cmd(args) -> str:
    from .cost import plan, plan_explain  # imports torch: only for this command

    shape = shapes.resolve(args.model, "model")
    card = plan.cluster(args.gpu)
    tokens = plan.parse_tokens(args.batch_tokens)
    if tokens > plan.LARGE_BATCH_TOKENS:
        print(f"llmtrain: note: --batch-tokens {args.batch_tokens} is {tokens:,} tokens in one "
              "optimizer step; it is the global batch of one step, not the total training "
              "tokens", file=sys.stderr)
    seq = shape.max_seq_len if args.seq is None else args.seq
    virtuals = _virtuals(args.virtual)
    a, options = plan.Assumptions(), {}
    if args.framework is not None:  # its assumptions, and only the layouts it can run
        a = plan.framework_assumptions(args.framework)
        opts = plan.FRAMEWORK_OPTIONS[args.framework]
        options = {k: opts[k] for k in ("zeros", "recomputes", "sps", "stages", "tps", "pps")
                   if k in opts}
        if opts["virtuals"] != "divisors":
            virtuals = tuple(v for v in virtuals if v in opts["virtuals"]) or (1,)
    layouts = plan.search(shape, card, args.gpus, tokens, seq, virtuals=virtuals,
                          assumptions=a, feasible_only=False, **options)
    if not layouts:
        raise ValueError(plan.no_layout_reason(shape, card, args.gpus, tokens, seq))
    plans = [p for p in layouts if p.fits]
    if not plans:
        least = min(p.memory_bytes for p in layouts)
        raise ValueError(f"no layout of {shape.name} on {args.gpus} {card.name} fits in "
                         f"{card.memory_bytes / plan.GIB:.0f} GiB per GPU (the smallest of the "
                         f"{len(layouts)} layouts needs {least / plan.GIB:.1f} GiB)")
    top = plans[:args.top]
    if args.json:
        return json.dumps({"model": shape.name, "gpu": card.name, "gpus": args.gpus,
                           "batch_tokens": tokens, "seq": seq, "feasible": len(plans),
                           "layouts": [_plan_json(p) for p in top]})
    rows = [f"{shape.name} on {args.gpus} × {card.name}, {tokens:,} tokens per step "
            f"({tokens // seq} × {seq}): {len(plans)} layouts fit; the {len(top)} fastest "
            f"(m: micro-batches per step; GiB = 2³⁰ bytes; seconds per step by part)",
            *plan_explain.table(top)]
    if args.explain:
        rows += plan_explain.explain(plans)
    rows.append("model: llmtrain.step_time (time), llmtrain.memory (memory); assumptions: "
                + (args.framework or "plan.Assumptions()"))
    return "\n".join(rows)


def _plan_json(p) -> dict:
    d = p.layout.dims
    return {"tp": d.tp, "pp": d.pp, "dp": d.dp, "zero": p.layout.zero,
            "recompute": p.layout.recompute, "micro_batch": p.layout.micro_batch,
            "microbatches": p.layout.microbatches, "virtual": p.layout.virtual,
            "sp": p.layout.sp, "memory_bytes": p.memory_bytes, "memory_parts": p.memory_parts,
            "step_time_s": p.step_time_s, "time_parts": p.time_parts,
            "tokens_per_s": p.tokens_per_s, "mfu": p.mfu, "hfu": p.hfu}


def _flops_cmd(args) -> str:
    from .cost import flops

    shape = _shape(args)
    B, T = args.batch, shape.max_seq_len if args.seq is None else args.seq
    kw = dict(attention=args.attention)
    total = flops.training_flops(shape, B, T, recompute=args.recompute, k=args.k, **kw)
    parts = {"forward": flops.forward_flops(shape, B, T),
             "backward": flops.backward_flops(shape, B, T, **kw),
             "recompute": flops.recompute_flops(shape, B, T, recompute=args.recompute, k=args.k,
                                                **kw)}
    rule = flops.six_p_tokens(shape, B * T)
    if args.json:
        return json.dumps({"total": total, "parts": parts, "six_p_tokens": rule})
    rows = [f"{shape.name}, B={B}, T={T}, {args.attention} attention, recompute={args.recompute}"]
    if shape.is_moe:
        rows.append(f"  (a mixture of experts: matmuls of the {flops.matmul_params(shape):,} "
                    f"active matmul weights, {shape.experts_per_token} of {shape.num_experts} "
                    "routed experts per token; 6·P uses the active parameters)")
    rows += [f"  {k:<10} {v:>26,} FLOPs" for k, v in parts.items()]
    rows.append(f"  {'total':<10} {total:>26,} FLOPs")
    rows.append(f"  6·P·tokens {rule:>26,} FLOPs ({100 * (rule / total - 1):+.1f} %)")
    return "\n".join(rows)


def _memory():
    from .cost import memory  # imports torch: only for the commands that need it

    return memory


def _model_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("model", nargs="?", help=f"a model: {', '.join(shapes.all_names())}")
    src.add_argument("--hf-config", metavar="PATH",
                     help="a Hugging Face config.json (Llama, Mistral, Qwen2; MoE: Mixtral, "
                          "Qwen2-MoE, DeepSeek-V3), or its folder")


def _shape(args) -> shapes.ModelShape:
    if args.hf_config:
        return shapes.ModelShape.from_hf_config(args.hf_config)
    return shapes.resolve(args.model, "model")


def _memory_cmd(args) -> str:
    memory = _memory()
    if args.attention is not None and args.impl != "reference":
        raise ValueError(f"--attention is only used with --impl reference (hf-eager and hf-sdpa "
                         f"name their kernel), got --attention {args.attention} with "
                         f"--impl {args.impl}")
    if args.galore_rank is not None and args.optimizer not in ("galore", "galore8bit"):
        raise ValueError(f"--galore-rank is only used with --optimizer galore or galore8bit, got "
                         f"--galore-rank {args.galore_rank} with --optimizer {args.optimizer}")
    for flag, value, default in (("--microbatches", args.microbatches, None),
                                 ("--virtual", args.virtual, 1)):
        if value != default and args.pp == 1:
            raise ValueError(f"{flag} is only used with --pp > 1 (a pipeline), got {flag} "
                             f"{value} with --pp 1")
    dp, rest = divmod(args.gpus, args.tp * args.cp * args.pp)
    if not rest and dp % args.ep:
        raise ValueError(f"--ep must divide dp = gpus/(tp·cp·pp) = {dp}, got --ep {args.ep}")
    shape = _shape(args)
    seq = args.seq or shape.max_seq_len
    if seq % args.cp:
        raise ValueError(f"--cp must divide the sequence length {seq} (--seq), got --cp {args.cp}")
    dims = memory.parallel_dims(args.gpus, args.tp, args.pp, args.cp, args.ep)
    est = memory.estimate(shape, dims, batch=args.batch, seq=args.seq,
                          zero=args.zero, recompute=args.recompute, dtype=args.dtype,
                          impl=args.impl, precision=args.precision, optimizer=args.optimizer,
                          sp=args.sp, attention=args.attention or "sdpa",
                          overheads=not args.no_overheads,
                          galore_rank=args.galore_rank, microbatches=args.microbatches,
                          virtual=args.virtual, framework=args.framework,
                          cp_method=args.cp_method)
    d, count = est.details, est.details["in_flight"]
    if args.json:
        return json.dumps({"parts": est.parts, "total": est.total, "gb": est.gb, "gib": est.gib,
                           "model_states": d["model states"], "dp": d["dp"],
                           "cp": args.cp, "ep": args.ep,
                           "framework": d["framework"],
                           "pipeline": {"pp": args.pp, "schedule": d["schedule"],
                                        "virtual": d["virtual"],
                                        "microbatches": d["microbatches"],
                                        "in_flight": float(count),
                                        "in_flight_fraction": str(count)}})
    if args.pp == 1:
        return est.table()
    name = {"1f1b": "1F1B", "interleaved": f"interleaved 1F1B, {args.virtual} chunks per rank"}
    m = (f"m = {args.microbatches}" if args.microbatches is not None
         else "m assumed at least the warm-up; --microbatches M sets it")
    held = str(count) if count.denominator == 1 else f"{count} = {float(count):.3g}"
    return (f"{est.table()}\nin flight: {held} micro-batches' activations on the first stage "
            f"({name[d['schedule']]}, pp = {args.pp}; {m})")


def _params(args) -> str:
    shape = _shape(args)
    if args.json:
        parts = params.breakdown(shape)
        out = {"total": sum(parts.values()), "breakdown": parts}
        if shape.is_moe:  # a mixture of experts: also what one token uses
            used = params.active_breakdown(shape)
            out.update(active=sum(used.values()), active_breakdown=used)
        return json.dumps(out)
    return params.describe(shape)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _build_parser().parse_args(argv)
        if args.command == "params":
            print(_params(args))
        elif args.command == "memory":
            print(_memory_cmd(args))
        elif args.command == "flops":
            print(_flops_cmd(args))
        elif args.command == "plan":
            print(_plan_cmd(args))
        elif args.command == "models":
            for name in shapes.names():
                print(name)
        return 0
    except (_UsageError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"llmtrain: error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # llmtrain ... | head: the reader left, not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
