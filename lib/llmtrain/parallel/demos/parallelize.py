"""``python -m llmtrain.parallel.demos.parallelize --dp 2 --tp 2 --pp 2``: one step of the tiny
LLaMA on dp·tp·pp ranks (``parallel.parallelize``) against one process (notebook 08).

    python -m llmtrain.parallel.demos.parallelize --dp 2 --tp 2 --pp 2 --zero 1   # 8 CPU ranks
    torchrun --nproc-per-node=8 -m llmtrain.parallel.demos.parallelize --engine torch

The rank function and the report are ``three_d``'s (``cli``).
"""

from __future__ import annotations

from .three_d import cli

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default: the command line), run, print rank 0's report."""
    cli(argv)


if __name__ == "__main__":
    main()
