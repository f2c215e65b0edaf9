"""Token counts as the planner reads them: "4M" = 4·2²⁰ tokens (``parse_tokens``), and the count
above which the CLI reminds that --batch-tokens is one step's batch. Re-exported by ``plan``.
"""

from __future__ import annotations

import re

from .. import check

__all__ = ["MI", "LARGE_BATCH_TOKENS", "parse_tokens"]

# Above this many tokens per step the CLI reminds that --batch-tokens is one step's global batch
# (a student may type the total training tokens): 2³⁰, 64× the 16M of Llama 3 405B
# (published_runs). The search itself takes the same time for any count.
LARGE_BATCH_TOKENS = 2**30
MI = 2**20  # "4M tokens": 4·2²⁰ (Llama 3's 16M = 16 seqs × 8,192 × DP 128 = 2²⁴; BLOOM's
#             "4.2M tokens" = 2,048 × 2,048 = 4·2²⁰)


def parse_tokens(batch_tokens: str | int) -> int:
    """"4M" = 4·2²⁰, "512K" = 512·2¹⁰, "1G" = 2³⁰, "32768" = 32768 (binary prefixes: see MI).

    Checked: tests/test_plan.py::test_parse_tokens."""
    if isinstance(batch_tokens, int) and not isinstance(batch_tokens, bool):
        return check.positive_int("batch_tokens", batch_tokens)
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*", str(batch_tokens), re.IGNORECASE)
    if not m or int(m.group(1)) == 0:
        check.fail("batch_tokens", "a positive count of tokens like 4M, 512K or 32768", batch_tokens)
    return int(m.group(1)) * 2 ** (10 * " KMG".index(m.group(2).upper() or " "))
