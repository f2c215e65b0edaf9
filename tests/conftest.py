"""Shared helpers for the tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# CI runs the same examples every time (a red CI is then a real regression, never a new random
# draw); locally hypothesis explores new examples on each run. No deadlines: 2 shared cores.
settings.register_profile("ci", derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # scripts/notebooks.py for the notebook checks


def hf_numel(config) -> int:
    """Parameters of the transformers causal LM for ``config``, built on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.fixture
def root() -> Path:
    return ROOT
