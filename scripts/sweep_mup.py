"""μP learning-rate transfer: a grid of widths × learning rates × {SP, μP} on the Markov corpus,
the held-out loss after a fixed number of steps (``llmtrain.recipes.mup.transfer_sweep``).

    .venv/bin/python scripts/sweep_mup.py            # the full grid -> results/mup_transfer.json
    .venv/bin/python scripts/sweep_mup.py --small --out /tmp/m.json   # a few seconds (CI)

One thread (torch.set_num_threads(1)). The file records the grid, the records, how long it took
(wall-clock and CPU seconds, and the load average when it started: on a shared machine the CPU
seconds are the comparable number), on what CPU, with which torch, the command and the seed. Notebook 13 (§5) reads results/mup_transfer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "mup_transfer.json"
PROG = "python scripts/sweep_mup.py"

# The grid: the base width 32 (tiny's d_head 16, 2 heads), widths m = 1, 2, 4, 8 times it.
FULL = {"base_d_model": 32, "widths": [32, 64, 128, 256],
        "lrs": [2.0 ** k for k in range(-11, -2)], "steps": 150, "batch_size": 8,
        "seq_len": 32, "n_tokens": 2**18, "seed": 0}
SMALL = {"base_d_model": 32, "widths": [32, 64], "lrs": [2.0 ** -8, 2.0 ** -5], "steps": 10,
         "batch_size": 4, "seq_len": 16, "n_tokens": 2**12, "seed": 0}


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse adds the usage otherwise)
        self.exit(2, f"{self.prog}: error: {message}\n")


def run(grid: dict, command: str, progress: bool = False) -> dict:
    import torch

    from llmtrain.device import cpu_name
    from llmtrain.recipes import mup

    torch.set_num_threads(1)
    base = mup.width_shape(grid["base_d_model"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0, c0 = time.perf_counter(), time.process_time()
    records = mup.transfer_sweep(grid["widths"], grid["lrs"], mup.PARAMETRISATIONS,
                                 steps=grid["steps"], batch_size=grid["batch_size"],
                                 seq_len=grid["seq_len"], base=base, seed=grid["seed"],
                                 n_tokens=grid["n_tokens"], progress=progress)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    return {"what": "held-out loss after a fixed number of AdamW steps (constant lr, no weight "
                    "decay, clipping 1.0) on the Markov corpus, SP and muP, per width and lr",
            "grid": {**grid, "base": base.name}, "records": records,
            "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
            "load_average_at_start": load, "cpu": cpu_name(), "threads": 1,
            "torch": torch.__version__, "python": platform.python_version(),
            "command": command, "seed": grid["seed"]}


def main(argv: list[str]) -> int:
    p = Parser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true",
                   help="a 2-width, 2-lr, 10-step grid (seconds): checks the script runs")
    p.add_argument("--out", type=Path, default=OUT,
                   help="where to write the JSON (default results/mup_transfer.json)")
    p.add_argument("--progress", action="store_true", help="print one line per run")
    args = p.parse_args(argv)
    if args.out.suffix != ".json":
        p.error(f"--out must be a path ending in .json, got {str(args.out)!r}")
    if not args.out.parent.is_dir():
        p.error(f"--out's folder {str(args.out.parent)!r} does not exist")
    command = " ".join([PROG, *argv])
    result = run(SMALL if args.small else FULL, command, args.progress)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"{len(result['records'])} runs in {result['seconds']} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
