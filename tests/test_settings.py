"""The slides' table of pretraining settings, as data (llmtrain.recipes.settings)."""

import dataclasses

import pytest

from llmtrain.recipes import settings
from llmtrain.recipes.settings import LR_SQUARED, TABLE, get, parse_batch, parse_tokens

SLIDE_ORDER = ["GPT-3", "OPT", "PaLM", "BLOOM", "LLaMA-2", "Baichuan-2", "Qwen-1.5", "InternLM-2",
               "Falcon", "DeepSeek", "YuLan", "GLM-130B"]

# The slides' table, transcribed once more by hand, column by column:
# model: (batch start, batch end, warmup, peak lr, decay, optimizer, precision, weight decay, clip)
SLIDES = {
    "GPT-3": (32_000, 3_200_000, True, 6e-5, "cosine", "Adam", "FP16", 0.1, 1.0),
    "OPT": (2_000_000, 2_000_000, True, 1.2e-4, "manual", "AdamW", "FP16", 0.1, None),
    "PaLM": (1_000_000, 4_000_000, False, 1e-2, "inverse_sqrt", "Adafactor", "BF16", "lr^2", 1.0),
    "BLOOM": (4_000_000, 4_000_000, True, 6e-5, "cosine", "Adam", "BF16", 0.1, 1.0),
    "LLaMA-2": (4_000_000, 4_000_000, True, 1.5e-4, "cosine", "AdamW", None, 0.1, 1.0),
    "Baichuan-2": (None, None, True, 1.5e-4, "cosine", "AdamW", "BF16", 0.1, 0.5),
    "Qwen-1.5": (4_000_000, 4_000_000, True, 3e-4, "cosine", "AdamW", "BF16", 0.1, 1.0),
    "InternLM-2": (5_000_000, 5_000_000, True, 3e-4, "cosine", "AdamW", None, 0.1, None),
    "Falcon": (None, 4_000_000, True, 1.25e-4, "cosine", "AdamW", "BF16", 0.1, 0.4),
    "DeepSeek": (18_000_000, 18_000_000, True, 3.2e-4, "cosine", "AdamW", "BF16", 0.1, 1.0),
    "YuLan": (4_500_000, 4_500_000, True, 3e-4, "cosine", "Adam", "BF16", 0.1, 1.0),
    "GLM-130B": (400_000, 8_250_000, True, 8e-5, "cosine", "AdamW", "FP16", 0.1, 1.0),
}
FIELDS = ("batch_tokens_start", "batch_tokens_end", "warmup", "peak_lr", "decay", "optimizer",
          "precision", "weight_decay", "grad_clip")


def test_twelve_rows_in_slide_order():
    assert len(TABLE) == 12
    assert [s.model for s in TABLE] == SLIDE_ORDER == settings.names()


@pytest.mark.parametrize("model", SLIDE_ORDER)
def test_every_cell_equals_the_slides(model):
    row = get(model)
    got = tuple(getattr(row, f) for f in FIELDS)
    assert got == SLIDES[model]  # exact, including every None


def test_nones_exactly_where_the_slide_has_a_dash():
    dashes = {(s.model, f) for s in TABLE for f in FIELDS if getattr(s, f) is None}
    assert dashes == {("Baichuan-2", "batch_tokens_start"), ("Baichuan-2", "batch_tokens_end"),
                      ("Falcon", "batch_tokens_start"),  # "预热 → 4M": no start value given
                      ("LLaMA-2", "precision"), ("InternLM-2", "precision"),
                      ("OPT", "grad_clip"), ("InternLM-2", "grad_clip")}
    assert get("Baichuan-2").batch_ramp is None and get("Baichuan-2").batch_text == "-"


def test_batch_ramps():
    ramps = [s.model for s in TABLE if s.batch_ramp]
    assert ramps == ["GPT-3", "PaLM", "Falcon", "GLM-130B"]
    assert get("Falcon").batch_text == "warmup → 4M"
    assert get("GLM-130B").batch_text == "0.4M → 8.25M"
    assert get("OPT").batch_text == "2M"


def test_palm_weight_decay_is_lr_squared_and_only_palm_lacks_warmup():
    palm = get("PaLM")
    assert palm.weight_decay == LR_SQUARED == "lr^2"
    assert [s.model for s in TABLE if isinstance(s.weight_decay, str)] == ["PaLM"]
    assert [s.model for s in TABLE if not s.warmup] == ["PaLM"]
    assert palm.lr_text == "1e-2 → inverse_sqrt"


def test_every_row_cites_a_paper_and_a_size():
    for s in TABLE:
        assert "arXiv" in s.source, s.model
        assert s.params_b is not None and s.params_b > 0, s.model
    assert get("GPT-3").params_b == 175 and get("PaLM").params_b == 540
    assert "2005.14165" in get("GPT-3").source and "2204.02311" in get("PaLM").source


def test_known_disagreements_are_noted_not_silently_fixed():
    assert get("DeepSeek").decay == "cosine"  # the slide's value stays
    assert "multi-step" in get("DeepSeek").notes
    assert "3e-4" in get("LLaMA-2").notes  # 7B/13B rate
    assert "without factorization" in get("PaLM").notes


@pytest.mark.parametrize("text, tokens", [("32K", 32_000), ("3.2M", 3_200_000), ("0.4M", 400_000),
                                          ("8.25M", 8_250_000), ("18M", 18_000_000), ("4.5M", 4_500_000),
                                          ("2m", 2_000_000), ("1,024", 1024), ("1.5B", 1_500_000_000)])
def test_parse_tokens(text, tokens):
    assert parse_tokens(text) == tokens
    assert isinstance(parse_tokens(text), int)


@pytest.mark.parametrize("bad", ["", "M", "3.2X", "abc", "1.5", "0.0001K", "-4M"])
def test_parse_tokens_rejects(bad):
    with pytest.raises(ValueError, match="text must"):
        parse_tokens(bad)


@pytest.mark.parametrize("text, pair", [("32K → 3.2M", (32_000, 3_200_000)), ("32K->3.2M", (32_000, 3_200_000)),
                                        ("2M", (2_000_000, 2_000_000)), ("预热 → 4M", (None, 4_000_000)),
                                        ("warmup -> 4M", (None, 4_000_000)), ("-", (None, None)),
                                        ("", (None, None)), ("0.4M → 8.25M", (400_000, 8_250_000))])
def test_parse_batch(text, pair):
    assert parse_batch(text) == pair


@pytest.mark.parametrize("bad", ["4M → 1M", "1M → 2M → 4M", "→ 4M", "1M →"])
def test_parse_batch_rejects(bad):
    with pytest.raises(ValueError):
        parse_batch(bad)


def test_batch_text_round_trips():
    for s in TABLE:
        assert parse_batch(s.batch_text) == (s.batch_tokens_start, s.batch_tokens_end)


def test_get_is_case_insensitive_and_lists_names_on_error():
    assert get("llama-2") is get("LLaMA-2")
    with pytest.raises(ValueError, match="unknown model 'LLaMA-3'.*GPT-3.*GLM-130B"):
        get("LLaMA-3")


def test_setting_is_frozen_and_validated():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get("OPT").peak_lr = 1.0
    base = dataclasses.asdict(get("OPT"))
    with pytest.raises(ValueError, match="decay must be one of"):
        settings.Setting(**{**base, "decay": "linear-ish"})
    with pytest.raises(ValueError, match="weight_decay"):
        settings.Setting(**{**base, "weight_decay": "lr^3"})
    with pytest.raises(ValueError, match="batch_tokens_start"):
        settings.Setting(**{**base, "batch_tokens_start": 10**9})


def test_rows_and_printed_table():
    rows = settings.as_rows()
    assert rows[0] == settings.HEADER and len(rows) == 13
    assert rows[1] == ("GPT-3", "32K → 3.2M", "warmup → 6e-5 → cosine", "Adam", "FP16", "0.1", "1.0")
    assert rows[3][5] == "lr^2"
    text = settings.format_table()
    assert len(text.splitlines()) == 14
    assert all(name in text for name in SLIDE_ORDER)


@pytest.mark.parametrize("lr, text", [(6e-5, "6e-5"), (1.25e-4, "1.25e-4"), (1e-2, "1e-2"), (3.2e-4, "3.2e-4")])
def test_format_lr(lr, text):
    assert settings.format_lr(lr) == text


def test_paper_batches_show_the_slides_m_is_often_two_to_the_twenty():
    exact = {s.model: s.paper_batch_tokens for s in TABLE if s.paper_batch is not None}
    assert exact == {"PaLM": 2048 * 2048, "BLOOM": 2048 * 2048, "DeepSeek": 4608 * 4096,
                     "GLM-130B": 4224 * 2048}
    for model, tokens in exact.items():
        slide_m = get(model).batch_tokens_end // 10**6 if model != "GLM-130B" else 8.25
        assert tokens == slide_m * 2**20  # "4M" = 4·2²⁰, "18M" = 18·2²⁰, "8.25M" = 8.25·2²⁰
    assert get("OPT").paper_batch is None and get("OPT").paper_batch_tokens is None


# --- what the slides do not say, with its source (issue 21: BLOOM's optimizer, β2) ----------

def test_bloom_ran_adamw_with_beta2_095_although_the_slide_says_adam():
    # BigScience's training README (tr11-176B-ml, "Optimizer"): "AdamW, β1=0.9, β2=0.95"
    bloom = get("BLOOM")
    assert bloom.optimizer == "Adam"  # the slide's cell, kept as printed
    assert bloom.paper_optimizer == "AdamW" and bloom.betas == (0.9, 0.95)
    assert "tr11-176B-ml/README.md" in bloom.optimizer_source


def test_every_recorded_beta2_is_095_and_names_its_source():
    # GPT-3 (Appendix B), BLOOM (README), Llama 2 and DeepSeek LLM (§2.3) all state β2 = 0.95,
    # not torch's default 0.999
    recorded = {s.model: s.betas for s in TABLE if s.betas is not None}
    assert recorded == {m: (0.9, 0.95) for m in ("GPT-3", "BLOOM", "LLaMA-2", "DeepSeek")}
    assert all(s.optimizer_source for s in TABLE if s.betas is not None)
    assert all(not s.optimizer_source for s in TABLE if s.betas is None and s.paper_optimizer is None)


def test_deepseek_multi_step_decay_from_its_paper():
    # DeepSeek LLM §2.3: 31.6 % of the peak after 80 % of the tokens, 10 % after 90 %
    d = get("DeepSeek")
    assert d.paper_lr_steps == ((0.8, 0.316), (0.9, 0.1))
    assert [d.paper_lr_factor(f) for f in (0.0, 0.79, 0.8, 0.89, 0.9, 1.0)] == [1, 1, 0.316, 0.316, 0.1, 0.1]
    assert get("GPT-3").paper_lr_factor(0.5) is None
    with pytest.raises(ValueError, match="frac must be a finite number in"):
        d.paper_lr_factor(1.5)


def test_glm_ramp_starts_at_192_sequences_which_is_0375_of_two_to_the_twenty():
    g = get("GLM-130B")
    assert g.paper_batch_start_tokens == 192 * 2048 == 393_216 == 3 * 2**20 // 8
    assert g.paper_batch_tokens == 4224 * 2048 == 8_650_752 == 33 * 2**20 // 4


def test_betas_are_validated():
    with pytest.raises(ValueError, match="betas must be two numbers in"):
        dataclasses.replace(get("BLOOM"), betas=(0.9, 1.0))
