"""``python -m llmtrain.parallel.demos.zero --stage 3``: train the tiny LLaMA with hand-written
ZeRO (stage 0–3) and compare it with one process on the whole batch (notebook 05).

    python -m llmtrain.parallel.demos.zero --stage 2 --nproc 4       # launches 4 CPU ranks
    torchrun --nproc-per-node=8 -m llmtrain.parallel.demos.zero --stage 3   # or GPUs (NCCL)

The rank function and the report are ``data_parallel_zero``'s (``command``).
"""

from __future__ import annotations

from .data_parallel_zero import command

__all__ = ["PROG", "main"]

PROG = "python -m llmtrain.parallel.demos.zero"


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default: the command line), run, print rank 0's report."""
    command(PROG, zero_stage=True, argv=argv)


if __name__ == "__main__":
    main()
