"""Published runs as data (lib/llmtrain/published_runs.py): every layout multiplies out to the
GPUs its source states (the oracle: the source's own GPU count; Llama 3, v3 of arXiv 2407.21783,
Table 4; BLOOM's README). Table 1 of Narayanan et al. 2021 is checked in tests/test_plan.py."""

from __future__ import annotations

import pytest

from llmtrain import published_runs as pr


@pytest.mark.parametrize("run", [*pr.LLAMA3_405B, pr.LLAMA3_405B_LONG_CONTEXT, pr.BLOOM_176B],
                         ids=lambda r: f"{r['model']}-{r['gpus']}-{r['seq']}")
def test_each_layout_multiplies_out_to_its_gpus(run):
    assert run["tp"] * run.get("cp", 1) * run["pp"] * run["dp"] == run["gpus"]


def test_llama3_long_context_row_is_table_4_v3():
    r = pr.LLAMA3_405B_LONG_CONTEXT
    assert (r["gpus"], r["tp"], r["cp"], r["pp"], r["dp"], r["seq"]) == (16384, 8, 16, 16, 8, 131072)
    assert r["batch_tokens"] == 2**24  # 16M tokens, as the two 8K rows
    assert r["batch_tokens"] // r["seq"] == 128  # sequences per step: 16 per DP rank
