"""The six headlines of notebook 12: each setting's per-GPU bytes added up from the library's
counts, and what each verdict rests on."""

import dataclasses
import math
from fractions import Fraction

import pytest

from llmtrain.cost import headlines, memory
from llmtrain.model import shapes
from llmtrain.cost import methods as mm
from llmtrain.cost.memory import GIB

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


def test_low_bit_weights_are_not_what_makes_llama3_fit():
    """Counted as galore-torch keeps them (8-bit states for the embedding and output layer
    too), bf16 weights + 8-bit GaLore at rank 64 fit in 24 GiB: 19.31 GiB (the reviewer's
    19.3); the 2.2-bit weights only widen the margin."""
    h, row = ROWS["llama3-8b:galore8bit"]
    bf16_weights = headlines.fit(dataclasses.replace(h.setting, weight_bits=None))
    assert bf16_weights["fits"] and round(bf16_weights["gib"], 2) == 19.31
    assert round(row["gib"], 2) == 6.41
    # what 8-bit GaLore r=64 keeps: 2.30 GiB, of which 1.99 GiB the two 128,256 × 4,096 matrices
    assert round(bf16_weights["parts"]["optimizer"] / GIB, 2) == 2.30
    assert round(2 * 1_067_089_920 / GIB, 2) == 1.99


def test_each_baseline_is_named_by_what_it_keeps():
    names = {key: row["baseline"] for key, (h, row) in ROWS.items()}
    assert names == {
        "llama-7b:galore8bit": "pure-bf16 AdamW (8 B/param)",
        "llama3-8b:badam": "mixed-precision AdamW (16 B/param)",
        "llama3-8b:galore8bit": "16-bit AdamW, fp32 m and v, no master copy (12 B/param)",
        "llama-7b:adamw4bit": "16-bit AdamW, fp32 m and v, no master copy (12 B/param)",
        "llama-65b:fp8-lm": "mixed-precision AdamW (16 B/param), split over 8 GPUs",
        "llama-65b:lomo": "pure-bf16 AdamW (8 B/param), split over 8 GPUs"}
    for key, (h, row) in ROWS.items():  # the B/param in the name is what fit counts
        states = memory.model_state_bytes(shapes.get(h.baseline.model), precision=h.baseline.precision)
        if not h.baseline.master:
            states["master"] = 0
        P = memory.params_per_gpu(shapes.get(h.baseline.model))
        assert f"({sum(states.values()) // P} B/param)" in row["baseline"], key
        assert ("mixed-precision" in row["baseline"]) == (states["master"] > 0), key


def test_unidentified_articles_are_marked():
    for key in ("llama3-8b:badam", "llama3-8b:galore8bit"):
        h, row = ROWS[key]
        assert not h.identified and row["verdict"] == "?" and row["fits"]


def test_fp8_lm_arithmetic():
    f = headlines.fp8_lm_arithmetic()
    assert f["saved"] == Fraction(5, 8) and f["share_needed_for_42"] == Fraction(84, 125)
    h, row = ROWS["llama-65b:fp8-lm"]
    # the setting is not the claim's (GPT-175B on H100): "consistent", not ✓, and it says what
    assert row["verdict"] == "consistent (memory), ? speed" and row["fits"]
    assert "not recomputed" in h.checked and row["saved"] > 0.42
    P = memory.params_per_gpu(shapes.get("llama-65b"))
    assert sum(mm.method_state_bytes("llama-65b", "fp8-lm").values()) == 7 * P


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="model: unknown model name"):
        headlines.fit(headlines.Setting("gpt-9", "lomo"))
    with pytest.raises(ValueError, match="gpus must be a positive integer, got 0"):
        headlines.fit(headlines.Setting("tiny", "lomo", gpus=0))
    assert headlines.fit(headlines.Setting("tiny", "lomo"))["card_bytes"] == 24 * GIB
