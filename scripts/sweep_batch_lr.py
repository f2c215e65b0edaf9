#!/usr/bin/env python3
"""DeepSeek's batch-size × learning-rate sweep in miniature (notebook 13, §4): a grid of
(batch, peak lr) at several compute budgets on the tiny LLaMA, one thread, written as data.

    python scripts/sweep_batch_lr.py                  # the full grid -> results/batch_lr_sweep.json
    python scripts/sweep_batch_lr.py --small --out /tmp/s.json   # a tiny grid (CI, seconds)

The file holds the grid (``llmtrain.recipes.sweep.FULL`` or ``SMALL``), one record per run
(``sweep.run``), and how it was made: the command, the seed, torch's version, the CPU, the
wall time. The notebook reads it; it never trains.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "results" / "batch_lr_sweep.json"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="the tiny grid (seconds; for CI)")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help="the JSON file to write (default results/batch_lr_sweep.json)")
    p.add_argument("--quiet", action="store_true", help="no line per run")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".json":
        p.exit(2, f"sweep_batch_lr.py: --out must name a .json file, got {args.out!r}\n")
    if out.exists() and out.is_dir():
        p.exit(2, f"sweep_batch_lr.py: --out {args.out!r} is a directory\n")
    if not out.parent.is_dir():
        p.exit(2, f"sweep_batch_lr.py: the folder of --out does not exist: {str(out.parent)!r}\n")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    import torch

    from llmtrain.device import cpu_name
    from llmtrain.recipes import sweep

    torch.set_num_threads(1)
    grid = dict(sweep.SMALL if args.small else sweep.FULL)
    n = len(grid["budgets_tokens"]) * len(grid["batch_sizes"]) * len(grid["peak_lrs"])
    done = []

    def progress(r: dict) -> None:
        done.append(r)
        if not args.quiet:
            print(f"[{len(done):>3}/{n}] D={r['budget_tokens']:>7} B={r['batch_size']:>3} "
                  f"lr={r['peak_lr']:.1e} steps={r['steps']:>4} held-out loss "
                  f"{r['eval_loss']:.4f} ({r['seconds']:.1f} s)", flush=True)

    start, cpu_start = time.perf_counter(), time.process_time()
    records = sweep.sweep(grid.pop("shape"), progress=progress, **grid)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    grid = dict(sweep.SMALL if args.small else sweep.FULL)
    command = "python scripts/sweep_batch_lr.py" + (" --small" if args.small else "")
    data = {
        "what": "DeepSeek LLM's batch x learning-rate grid (arXiv 2401.02954, §3.1) in miniature: "
                "tiny LLaMA on llmtrain.recipes.train.corpus, held-out loss in nats/token",
        "grid": {k: list(v) if isinstance(v, tuple) else v for k, v in grid.items()},
        "schedule": "AdamW (0.9, 0.95), wd 0.1, clip 1.0; linear warmup over 10% of the steps "
                    "(at least 1), cosine to peak/10 at the last step",
        "eval_tokens": sweep.EVAL_TOKENS,
        "command": command,
        "seed": grid["seed"],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 1),  # wall clock (the machine may be shared)
        "cpu_seconds": round(cpu_seconds, 1),  # this process's CPU time
        "records": records,
    }
    out = Path(args.out)
    out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(records)} runs in {seconds:.0f} s ({cpu_seconds:.0f} s of CPU) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
