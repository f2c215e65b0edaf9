"""Command line: ``llmtrain params llama-7b``, ``llmtrain params --hf-config config.json --json``.

Bad input prints one line to stderr and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import params, shapes

__all__ = ["main"]


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise _UsageError(message)


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llmtrain", description="llmtrain: companion to 预训练之训练技术 (training techniques for pretraining)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    pp = sub.add_parser("params", help="count the parameters of a model (模型参数量估计)")
    src = pp.add_mutually_exclusive_group(required=True)
    src.add_argument("model", nargs="?", help=f"a preset: {', '.join(shapes.names())}")
    src.add_argument("--hf-config", metavar="PATH",
                     help="a Hugging Face config.json (Llama, Mistral or Qwen2), or its folder")
    pp.add_argument("--json", action="store_true", help='print {"total": int, "breakdown": {...}}')

    sub.add_parser("models", help="list the presets")
    return p


def _params(args) -> str:
    shape = shapes.ModelShape.from_hf_config(args.hf_config) if args.hf_config else shapes.get(args.model)
    if args.json:
        parts = params.breakdown(shape)
        return json.dumps({"total": sum(parts.values()), "breakdown": parts})
    return params.describe(shape)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _build_parser().parse_args(argv)
        if args.command == "params":
            print(_params(args))
        elif args.command == "models":
            for name in shapes.names():
                print(name)
        return 0
    except (_UsageError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"llmtrain: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
