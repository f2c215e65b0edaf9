"""The six headlines of notebook 12: each setting's per-GPU bytes added up from the library's
counts, and what each verdict rests on."""

import dataclasses
import math
from fractions import Fraction

import pytest

from llmtrain import headlines, memory, shapes
from llmtrain import memory_methods as mm
from llmtrain.memory import GIB

ROWS = {h.setting.model + ":" + h.method: (h, r) for h, r in zip(headlines.HEADLINES,
                                                                   headlines.verdicts())}


def test_six_headlines_each_with_its_source():
    assert len(headlines.HEADLINES) == 6 and len({h.slide for h in headlines.HEADLINES}) == 6
    for h in headlines.HEADLINES:
        assert h.method in mm.METHODS
        assert ("arXiv" in h.source) or not h.identified, h.source


def test_fit_adds_up_the_parts():
    for h in headlines.HEADLINES:
        for s in (h.setting, h.baseline):
            f = headlines.fit(s)
            assert f["total"] == sum(f["parts"].values())
            assert f["fits"] == (f["total"] <= s.card_bytes)
            shape = shapes.get(s.model)
            assert f["parts"]["activations"] == memory.activation_bytes(
                shape, s.batch, s.seq, impl="korthikanti", recompute=s.recompute)
            if s.method != "adamw" and s.weight_bits is None:
                want = mm.method_state_bytes(shape, s.method, precision=s.precision, rank=s.rank,
                                             in_backward=s.in_backward)
                if not s.master:
                    want["master"] = 0
                for k, v in want.items():
                    assert f["parts"][k] == math.ceil(v / s.gpus)


def test_galore_needs_all_three():
    h, row = ROWS["llama-7b:galore8bit"]
    assert row["verdict"] == "✓" and row["fits"] and not row["baseline_fits"]
    for change in (dict(in_backward=False), dict(method="galore", in_backward=False), dict(batch=8)):
        assert not headlines.fit(dataclasses.replace(h.setting, **change))["fits"], change
    # bf16 GaLore states with per-layer updates fit too, by less than 0.1 GiB
    close = headlines.fit(dataclasses.replace(h.setting, method="galore"))
    assert close["fits"] and close["card_bytes"] - close["total"] < 0.1 * GIB


def test_lomo_needs_the_weights_split():
    h, row = ROWS["llama-65b:lomo"]
    assert row["verdict"] == "✓"
    assert 2 * memory.params_per_gpu(shapes.get("llama-65b")) > 5 * headlines.CARD_24G
    assert not headlines.fit(dataclasses.replace(h.setting, gpus=1))["fits"]


def test_four_bit_halves_only_without_a_master_copy():
    h, row = ROWS["llama-7b:adamw4bit"]
    assert row["saved"] > 0.5
    a = headlines.fit(dataclasses.replace(h.setting, master=True))
    b = headlines.fit(dataclasses.replace(h.baseline, master=True))
    assert 0.4 < 1 - a["total"] / b["total"] < 0.5


def test_unidentified_articles_are_marked():
    for key in ("llama3-8b:badam", "llama3-8b:galore8bit"):
        h, row = ROWS[key]
        assert not h.identified and row["verdict"] == "?" and row["fits"]


def test_fp8_lm_arithmetic():
    f = headlines.fp8_lm_arithmetic()
    assert f["saved"] == Fraction(5, 8) and f["share_needed_for_42"] == Fraction(84, 125)
    h, row = ROWS["llama-65b:fp8-lm"]
    assert row["verdict"] == "✓ memory, ? speed"
    P = memory.params_per_gpu(shapes.get("llama-65b"))
    assert sum(mm.method_state_bytes("llama-65b", "fp8-lm").values()) == 7 * P


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="model: unknown model name"):
        headlines.fit(headlines.Setting("gpt-9", "lomo"))
    with pytest.raises(ValueError, match="gpus must be a positive integer, got 0"):
        headlines.fit(headlines.Setting("tiny", "lomo", gpus=0))
    assert headlines.fit(headlines.Setting("tiny", "lomo"))["card_bytes"] == 24 * GIB
