"""The part every notebook's rank functions share: models, batches, loss, one command line.

- ``make_model``, ``make_batches``, ``lm_loss``: the tiny LLaMA (or an odd-sized MLP) on the
  Markov corpus of ``llmtrain.train``, the same on every rank for the same seed.
- ``max_weight_diff``: how far two sets of weights are apart (parallel run vs one process).
- ``main(prog, fn, report, ...)``: the one entry-point style. ``fn(options)`` is the rank
  function (module level, so ``launch`` can import it), ``options`` the parsed flags as a dict;
  ``report(result, world_size)`` prints rank 0's result. Under ``torchrun`` (``RANK`` set) this
  process is one rank: it joins the group and runs ``fn``; otherwise it launches ``--nproc``
  ranks itself. Both print the same thing. Bad flags, flags that do not fit together, a
  rank's ``ValueError`` (an argument check) and an incomplete torchrun environment (``RANK``
  without ``WORLD_SIZE``) are one line on stderr and exit status 2, as ``llmtrain``'s CLI.

To add a notebook's module (``demos/<topic>.py``): write its rank functions at module level,
taking and returning plain data (tensors, dicts, numbers: ``launch`` pickles them back);
import the shared pieces from here; for a command line, give ``main`` a rank function, a
report, the flags (``options``) and their cross-checks (``validate``), and call it from the
``if __name__ == "__main__":`` block of a module here (``demos/zero.py``), never from a library
module::

    python -m llmtrain.parallel.demos.data_parallel                          # launches 2 CPU ranks
    torchrun --nproc-per-node=4 -m llmtrain.parallel.demos.zero --stage 3    # GPUs or many machines
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ... import check
from ...model import shapes
from ...model.llama import Llama
from ...recipes.train import batches, corpus
from ..launch import RankError, init_from_env, launch, shutdown

__all__ = ["DTYPES", "MODELS", "make_model", "make_batches", "lm_loss", "max_weight_diff",
           "main", "positive", "seconds", "TORCHRUN_VARS"]

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
MODELS = ("tiny", "mlp")


def make_model(model: str = "tiny", dtype: str = "float32", seed: int = 0) -> nn.Module:
    """"tiny": the reference LLaMA of the ``tiny`` preset; "mlp": embedding → MLP → logits,
    sizes chosen so some weights do not split evenly over 4 ranks (padding shows)."""
    check.one_of("dtype", dtype, tuple(DTYPES))
    check.one_of("model", model, MODELS)
    torch.manual_seed(seed)
    if model == "tiny":
        m = Llama(shapes.get("tiny"))
    else:
        m = nn.Sequential(nn.Embedding(256, 30), nn.Linear(30, 50), nn.GELU(), nn.Linear(50, 256))
    return m.to(DTYPES[dtype])


def make_batches(steps: int, batch: int, seq: int, seed: int = 0) -> list[torch.Tensor]:
    """``steps`` full batches (batch × seq token ids), the same on every rank."""
    it = batches(corpus(20_000, seed=seed), batch, seq, seed=seed)
    return [next(it) for _ in range(steps)]


def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy, mean over tokens, in the model's own dtype."""
    out = model(ids)
    logits = out.logits if hasattr(out, "logits") else out
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten().to(logits.device))


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest |a − b| over all weights of two {name: tensor} dicts with the same names."""
    if a.keys() != b.keys():
        raise ValueError(f"the two sets of weights differ in names: {sorted(a.keys() ^ b.keys())}")
    return max((a[k].double().cpu() - b[k].double().cpu()).abs().max().item() for k in a)


# ---------------------------------------------------------------------------- command line

def positive(text: str) -> int:
    """argparse ``type=`` for a positive integer flag."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def seconds(text: str) -> float:
    """argparse ``type=`` for a duration flag: a positive finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number of seconds, got {text}")
    return value


# what torchrun sets in every rank's environment; RANK alone means this process is a rank
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump, exit 2 (as llmtrain's CLI)
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0] if message else 'bad flag'}\n")


def _torchrun_world() -> int | None:
    """WORLD_SIZE under torchrun (``RANK`` set), else None; ValueError naming what is missing."""
    if "RANK" not in os.environ:
        return None
    missing = [v for v in TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise ValueError(f"RANK={os.environ['RANK']} is set, so this process would be one rank "
                         f"of torchrun's, but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                         f"not: start it with torchrun, or unset RANK to launch --nproc ranks here")
    try:
        return check.positive_int("WORLD_SIZE", int(os.environ["WORLD_SIZE"]))
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be a positive integer, got "
                         f"{os.environ['WORLD_SIZE']!r}") from None


def rank_value_error(error: RankError) -> str | None:
    """The message of a ``ValueError`` a rank raised (an argument check), else None: the last
    unindented ``Name: message`` line of its traceback."""
    last = None
    for line in error.remote_traceback.splitlines():
        m = re.match(r"([A-Za-z_][\w.]*): (.+)", line)
        if m:
            last = m
    return last.group(2) if last and last.group(1).split(".")[-1] == "ValueError" else None


def main(prog: str, fn: Callable[[dict], Any], report: Callable[[Any, int], None], *,
         description: str, options: Callable[[argparse.ArgumentParser], None] | None = None,
         validate: Callable[[dict, int], None] | None = None, nproc: int = 2,
         timeout: float = 600.0, argv: list[str] | None = None) -> None:
    """Parse the flags, run ``fn(options)`` on every rank, ``report`` rank 0's result.

    ``options(parser)`` adds the demo's flags (``--nproc``, the number of ranks to launch
    when not under torchrun, is always there); ``validate(options, world_size)`` raises
    ``ValueError`` for flags that do not fit together, which becomes a usage error (exit
    status 2). Under torchrun the world size is torchrun's and only rank 0 reports.
    """
    ap = _Parser(prog=prog, description=description)
    ap.add_argument("--nproc", type=positive, default=nproc,
                    help="ranks to launch when not under torchrun")
    if options is not None:
        options(ap)
    args = vars(ap.parse_args(argv))
    try:
        world = _torchrun_world()
    except ValueError as e:
        ap.error(str(e))
    under_torchrun = world is not None
    n = world if under_torchrun else args.pop("nproc")
    args.pop("nproc", None)
    if validate is not None:
        try:
            validate(args, n)
        except ValueError as e:
            ap.error(str(e))
    try:
        if under_torchrun:  # this process is one rank
            init_from_env(timeout=timeout)
            try:
                out = fn(args)
                if dist.get_rank() == 0:
                    report(out, n)
            finally:
                shutdown()
            # As launch's ranks do: leave without the interpreter's teardown. A rank that ran its
            # static destructors while the others still left the group was seen to abort
            # (SIGABRT, "terminate called without an active exception") on a loaded machine.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        else:
            report(launch(fn, n, args, timeout=timeout)[0], n)
    except ValueError as e:  # under torchrun: this rank's argument check
        ap.error(str(e))
    except RankError as e:
        msg = rank_value_error(e)
        if msg is None:
            raise
        ap.error(f"{msg} (rank {e.rank})")
    except KeyboardInterrupt:  # Ctrl-C: launch has stopped every rank
        ap.exit(130, f"{prog}: interrupted\n")
