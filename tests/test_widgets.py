"""The notebooks' widgets (llmtrain.widgets): what they show equals the library; bad settings
give the library's message; the fast (blitted) PNG is pixel for pixel a full draw.

Their speed is measured by scripts/bench_widgets.py, not here (timings are no test).
"""

from __future__ import annotations

import html
import io

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from llmtrain.cost import memory, params, plan
from llmtrain.recipes import schedules
from llmtrain.model import shapes
from llmtrain import widgets
from llmtrain.units import GIB
from llmtrain.cost.layout import ParallelDims
from llmtrain.widgets import MemoryCalculator, ParamsExplorer, PlannerExplorer, ScheduleExplorer


def _pixels_of_png(explorer) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(explorer.png())).convert("RGBA"))


def _pixels_of_full_draw(explorer) -> np.ndarray:
    explorer.fig.canvas.draw()
    return np.asarray(explorer.fig.canvas.buffer_rgba()).copy()


# --- what is shown equals the library ------------------------------------------------------

@pytest.mark.parametrize("setting", [
    {}, dict(peak_lr=1e-2, decay="linear"), dict(warmup_frac=0.0, min_frac=0.0),
    dict(warmup_frac=0.37, min_frac=1.0), dict(peak_lr=1e-5, warmup_frac=0.5, min_frac=0.55),
    dict(warmup_frac=1.0),
])
def test_schedule_explorer_shows_the_schedule(setting):
    e = ScheduleExplorer(**setting)
    s = {**ScheduleExplorer.DEFAULTS, **setting}
    W = round(s["warmup_frac"] * 1000)
    fn = schedules.warmup_cosine if s["decay"] == "cosine" else schedules.warmup_linear
    want = [fn(t, peak_lr=s["peak_lr"], warmup_steps=W, total_steps=1000,
               min_lr=s["min_frac"] * s["peak_lr"]) for t in range(1001)]
    assert e.values["lrs"] == want
    assert list(e._line.get_ydata()) == want  # the learning rate itself, not lr / peak
    mean = sum(want) / len(want)
    assert list(e._mean.get_ydata()) == [mean] * 2
    assert e.ax.get_ylim() == (0, widgets.nice_limit(1.05 * s["peak_lr"]))
    assert list(e._warm.get_xdata()) == [W, W]
    assert e.text.startswith(f"average lr = {mean:.3g} ({mean / s['peak_lr']:.3f} × peak)")
    assert f"warmup {W} steps, {s['decay']}" in e.headline


def test_moving_the_peak_lr_changes_the_schedule_figure():
    # issue 21 §5: the axis was lr/peak, so the peak slider left the picture unchanged
    e = ScheduleExplorer()
    before = _pixels_of_png(e)
    e.update(peak_lr=1e-2)
    after = _pixels_of_png(e)
    assert before.shape == after.shape and (before != after).any()
    assert e.ax.get_ylim() == (0, 0.012)  # nice_limit(1.05e-2)
    assert max(e._line.get_ydata()) == 1e-2


def test_schedule_explorer_default_average_is_the_closed_form_one():
    # warmup W, cosine to a tenth over T: average ≈ (W/2 + 0.55(T − W))/T = 0.5475 at W/T = 0.05
    e = ScheduleExplorer()
    assert abs(e.values["mean"] / e.values["peak_lr"] - 0.5475) < 2e-3


@pytest.mark.parametrize("name", ["llama-7b", "llama2-70b", "llama3-8b", "tiny"])
def test_params_explorer_shows_the_breakdown(name):
    shape = shapes.get(name)
    e = ParamsExplorer(H=shape.hidden_size, L=shape.num_layers, Hp=shape.intermediate_size,
                       N=shape.num_heads, N_kv=shape.num_kv_heads, V=shape.vocab_size)
    parts, total = params.breakdown(shape), params.count(shape)
    assert e.values["parts"] == parts and e.values["total"] == total
    left = 0.0
    for part in params.COMPONENTS:
        bar = e._bars[part]
        assert (bar.get_x(), bar.get_width()) == (left, parts[part] / 1e9)
        left += parts[part] / 1e9
    assert list(e._slides.get_xdata()) == [params.slides_count(shape) / 1e9] * 2
    # the text is params.describe of the same shape, named by its settings
    first, rest = e.text.split("\n", 1)
    assert rest == params.describe(shape).split("\n", 1)[1]
    assert first.startswith(f"H={shape.hidden_size}, L={shape.num_layers}, "
                            f"H'={shape.intermediate_size}, N={shape.num_heads}, "
                            f"N_kv={shape.num_kv_heads}, V={shape.vocab_size}: {total:,} parameters")
    assert e.headline.startswith(f"{total:,} parameters")
    assert e.ax.get_xlim()[1] >= max(total, params.slides_count(shape)) / 1e9


def test_params_explorer_defaults_are_llama_7b():
    assert ParamsExplorer().values["total"] == params.count(shapes.get("llama-7b")) == 6_738_415_616


@pytest.mark.parametrize("setting", [
    {}, dict(zero=0), dict(model="llama2-70b", gpus=64, zero=2, batch=1, seq=4096),
    dict(impl="reference", recompute="selective", dtype="fp32"),
    dict(impl="korthikanti", recompute="none", model="llama-13b", gpus=8, zero=1),
    dict(impl="hf-sdpa", recompute="none", model="tiny", gpus=1, batch=3, seq=128),
    dict(model="llama2-70b", gpus=64, tp=8, pp=4, zero=1, batch=1, seq=4096),
    dict(optimizer="galore8bit", gpus=1, zero=0, batch=1, seq=256),
    dict(optimizer="lomo", model="llama-65b", gpus=8, batch=1, seq=512),
])
def test_memory_calculator_shows_the_estimate(setting):
    e = MemoryCalculator(**setting)
    s = {**MemoryCalculator.DEFAULTS, **setting}
    dims = ParallelDims(dp=s["gpus"] // (s["tp"] * s["pp"]), tp=s["tp"], pp=s["pp"])
    est = memory.estimate(shapes.get(s["model"]), dims, batch=s["batch"], seq=s["seq"],
                          zero=s["zero"], recompute=s["recompute"], impl=s["impl"],
                          dtype=s["dtype"], optimizer=s["optimizer"])
    assert e.values.parts == est.parts
    left = 0
    for part, value in est.parts.items():
        bar = e._bars[part]
        assert (bar.get_x(), bar.get_width()) == (left / GIB, value / GIB)
        left += value
    assert all(bar.get_width() == 0 for p, bar in e._bars.items() if p not in est.parts)
    labels = [t.get_text() for t in e.ax.get_legend().get_texts()]
    if s["optimizer"] in memory.NO_STEP_PEAK:  # no step_peak model for steps inside backward
        assert est.peak_bytes is None and not e._peak.get_visible() and "step peak" not in e.headline
        assert labels == [*est.parts, f"{widgets.CARD_GIB} GiB card"]
    else:
        assert labels == [*est.parts, "step peak", f"{widgets.CARD_GIB} GiB card"]
        assert list(e._peak.get_xdata()) == [est.peak_bytes / GIB] * 2 and e._peak.get_visible()
        assert f"step peak {est.peak_bytes / GIB:.2f} GiB ({est.step_peak.phase})" in e.headline
    assert e.text == est.table()
    assert f"{est.total / GIB:.2f} GiB per GPU" in e.headline
    assert ("does not fit" in e.headline) == (est.total > widgets.CARD_GIB * GIB)
    assert (f"(TP {s['tp']} × PP {s['pp']})" in e.headline) == (s["tp"] * s["pp"] > 1)


def test_memory_calculator_default_is_the_slides_example():
    e = MemoryCalculator()
    assert e.settings == dict(model="llama-7b", gpus=2, tp=1, pp=1, zero=3, batch=8, seq=2048,
                              recompute="full", impl="textbook", dtype="bf16", optimizer="adamw")
    assert e.values.total == memory.estimate(shapes.get("llama-7b"), ParallelDims(dp=2),
                                             batch=8, seq=2048).total


def test_memory_calculator_bar_colours_do_not_depend_on_history():
    a = MemoryCalculator()
    b = MemoryCalculator(zero=0)  # no "ZeRO runtime" part at first
    b.update(zero=3)
    assert {p: bar.get_facecolor() for p, bar in a._bars.items()} == \
        {p: bar.get_facecolor() for p, bar in b._bars.items()}


@pytest.mark.parametrize("setting", [{}, dict(top=8), dict(gpus=64, model="llama2-70b",
                                                             gpu="h100-80g", seq=4096,
                                                             batch_tokens=4 * 2**20)])
def test_planner_explorer_shows_the_search(setting):
    e = PlannerExplorer(**setting)
    s = {**PlannerExplorer.DEFAULTS, **setting}
    plans = plan.search(s["model"], s["gpu"], s["gpus"], s["batch_tokens"], s["seq"],
                        virtuals=range(1, 9))
    top = plans[:s["top"]]
    assert [p.layout for p in e.values["plans"]] == [p.layout for p in top]
    assert e.values["feasible"] == len(plans)
    for i in range(PlannerExplorer.ROWS):
        left = 0.0
        for part in PlannerExplorer.PARTS:
            bar = e._bars[part][i]
            width = top[i].time_parts[part] if i < len(top) else 0.0
            assert (bar.get_x(), bar.get_width()) == (left, width)
            left += width
    labels = [t.get_text() for t in e.ax.get_yticklabels()][:len(top)]
    assert labels == [f"{p.layout.label()}, {p.memory_bytes / GIB:.1f} GiB" for p in top]
    assert f"; {len(plans)} layouts fit; fastest (row 1): {top[0].step_time_s:.3g} s" in e.headline
    assert e.text.splitlines()[1].split()[1:3] == top[0].layout.label().split()[:2]
    assert e.ax.get_xlim()[1] >= top[0].step_time_s


def test_planner_explorer_default_is_the_slides_example():
    # 2 × A100 80G, LLaMA-7B, B = 8 sequences of 2,048 per GPU: 16 sequences per step
    e = PlannerExplorer()
    assert (e.settings["model"], e.settings["gpus"], e.settings["gpu"]) == (
        "llama-7b", 2, "a100-80g")
    assert e.settings["batch_tokens"] == 2 * 8 * e.settings["seq"] == 32768
    assert all(p.fits and p.layout.dims.world_size == 2 for p in e.values["plans"])


# --- bad settings ------------------------------------------------------------------------

@pytest.mark.parametrize("cls, bad, message", [
    (ScheduleExplorer, dict(peak_lr=0), "peak_lr must be a positive finite number, got 0"),
    (ScheduleExplorer, dict(peak_lr="3e-4"),
     "peak_lr must be a positive finite number, got '3e-4'"),
    (ScheduleExplorer, dict(warmup_frac=1.5),
     "warmup_frac must be a finite number in [0, 1], got 1.5"),
    (ScheduleExplorer, dict(min_frac=-0.1), "min_frac must be a finite number in [0, 1], got -0.1"),
    (ScheduleExplorer, dict(decay="cos"), "decay must be one of ('cosine', 'linear'), got 'cos'"),
    (ParamsExplorer, dict(N=3), "num_heads=3 must divide hidden_size=4096"),
    (ParamsExplorer, dict(N_kv=5), "num_kv_heads=5 must divide num_heads=32"),
    (ParamsExplorer, dict(H=0), "hidden_size must be a positive integer, got 0"),
    (MemoryCalculator, dict(model="gpt-9"), "model must be one of ("),
    (MemoryCalculator, dict(gpus=0), "gpus must be a positive integer, got 0"),
    (MemoryCalculator, dict(zero=4), "zero must be one of (0, 1, 2, 3), got 4"),
    (MemoryCalculator, dict(optimizer="adam8"), "optimizer must be one of ("),
    (MemoryCalculator, dict(optimizer="lomo", gpus=2, tp=2), "optimizer='lomo' is counted for tp=1"),
    (MemoryCalculator, dict(zero=True), "zero must be one of (0, 1, 2, 3), got True"),
    (MemoryCalculator, dict(recompute="none"), "impl='textbook' keeps each layer's input"),
    (MemoryCalculator, dict(dtype="int8"),
     "dtype must be one of ('fp32', 'bf16', 'fp16'), got 'int8'"),
    (MemoryCalculator, dict(tp=4), "gpus must be a multiple of tp·pp=4, got 2"),
    (MemoryCalculator, dict(pp=0), "pp must be a positive integer, got 0"),
    (MemoryCalculator, dict(tp=4, gpus=4, model="tiny"), "tp must divide num_kv_heads=2, got tp=4"),
    (PlannerExplorer, dict(model="gpt-9"), "model must be one of ("),
    (PlannerExplorer, dict(gpu="v100"), "gpu must be one of ('a100-40g'"),
    (PlannerExplorer, dict(gpus=12), "gpus must be a multiple of the 8 GPUs of a node"),
    (PlannerExplorer, dict(batch_tokens=1000), "batch_tokens must be a positive multiple of seq"),
    (PlannerExplorer, dict(top=9), "top must be an integer in [1, 8], got 9"),
    (PlannerExplorer, dict(model="llama2-70b"),
     "no layout of llama2-70b on 2 × a100-80g fits in 80 GiB per GPU"),
])
def test_a_bad_setting_shows_the_message_and_keeps_the_last_good_state(cls, bad, message):
    e = cls()
    good_values, good_png = e.values, e.png()
    text = e.update(**bad)
    assert text == e.error == f"{cls.ERROR_PREFIX}: " + text.split(": ", 1)[1]
    assert message in text
    assert e.values is good_values  # nothing recomputed from the bad setting
    assert all(a.get_alpha() == 0.25 for a in e._artists) and e._banner.get_visible()
    assert message.replace("'", "&#x27;")[:20] in e.html()
    assert e.png() != good_png  # dimmed, with the banner
    with pytest.raises(ValueError, match=message[:12].replace("(", r"\(").replace("[", r"\[")):
        cls(**bad)  # a bad setting at construction raises
    e.update(**{k: cls.DEFAULTS[k] for k in bad})  # back to a good setting: restored
    assert e.error is None and not e._banner.get_visible()
    assert all(a.get_alpha() is None for a in e._artists)
    assert e.png() == good_png


@pytest.mark.parametrize("cls", [ScheduleExplorer, ParamsExplorer, MemoryCalculator,
                                 PlannerExplorer])
def test_unknown_setting_names_raise(cls):
    with pytest.raises(ValueError, match=r"settings must be among .*got \['typo'\]"):
        cls().update(typo=1)
    with pytest.raises(ValueError, match="settings must be among"):
        cls(typo=1)


# --- drawing ------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, moves", [
    (ScheduleExplorer, [{}, dict(peak_lr=1e-2), dict(decay="linear", warmup_frac=0.3),
                        dict(peak_lr=-1), dict(peak_lr=3e-4)]),
    (ParamsExplorer, [{}, dict(N_kv=8), dict(H=8192, Hp=28672, L=80, N=64), dict(N=3),
                      dict(N=32), dict(V=256000)]),
    (MemoryCalculator, [{}, dict(zero=0), dict(model="llama2-70b", gpus=8), dict(zero=3),
                        dict(recompute="none"), dict(recompute="full", model="llama-7b"),
                        dict(zero=0), dict(zero=1)]),
    (PlannerExplorer, [{}, dict(top=8), dict(gpus=8), dict(gpus=12), dict(model="llama-13b"),
                       dict(top=3), dict(gpu="h100-80g", batch_tokens=2**20)]),
])
def test_the_fast_png_is_a_full_draw_pixel_for_pixel(cls, moves):
    e = cls()
    for m in moves:
        e.update(**m)
        fast = _pixels_of_png(e)
        assert np.array_equal(fast, _pixels_of_full_draw(e)), (m, e.error)
    assert e.png() == e.png()  # and repeatable, byte for byte


@pytest.mark.parametrize("cls", [ScheduleExplorer, ParamsExplorer, MemoryCalculator,
                                 PlannerExplorer])
def test_static_is_the_default_state_with_its_headline_as_title(cls):
    view, live = cls.static(), cls()
    assert view.settings == cls.DEFAULTS and view.text == live.text
    assert view.headline == live.headline
    assert view.ax.get_title() == view.headline.replace("; ", "\n")
    assert live.ax.get_title() == ""  # the live figure leaves the headline to the HTML


@pytest.mark.parametrize("cls", [ScheduleExplorer, ParamsExplorer, MemoryCalculator,
                                 PlannerExplorer])
def test_widget_controls_drive_the_explorer(cls):
    e = cls()
    box = e.widget()
    assert e.widget() is box
    controls, image, text, _ = e._ui
    assert {k: c.value for k, c in controls.items()} == cls.DEFAULTS
    assert bytes(image.value) == e.png() and e.headline in html.unescape(text.value)
    name, c = next((k, c) for k, c in controls.items()
                   if type(c).__name__ in ("IntSlider", "FloatSlider"))
    c.value = c.max  # what a reader's slider does
    assert e.settings[name] == c.max
    assert bytes(image.value) == e.png()
    assert (e.error or e.headline) in html.unescape(text.value)


# --- nice_limit ---------------------------------------------------------------------------

@pytest.mark.parametrize("x, want", [(1, 1), (7.14, 8), (84.8, 100), (0.00031, 0.0004),
                                     (1001, 1200), (2.5, 2.5), (9e-7, 1e-6)])
def test_nice_limit_examples(x, want):
    assert widgets.nice_limit(x) == pytest.approx(want, rel=1e-12)


@given(st.floats(min_value=1e-12, max_value=1e15))
def test_nice_limit_is_above_and_close(x):
    y = widgets.nice_limit(x)
    assert x <= y < 1.34 * x


@pytest.mark.parametrize("x", [0, -1, float("nan"), float("inf"), "1", True])
def test_nice_limit_refuses_non_positive_numbers(x):
    with pytest.raises(ValueError, match="x must be a positive finite number"):
        widgets.nice_limit(x)


def test_the_package_docstring_lists_every_explorer_and_counts_them():
    words = {3: "Three", 4: "Four", 5: "Five", 6: "Six"}
    assert f"{words[len(widgets.EXPLORERS)]} explorers" in widgets.__doc__
    for cls in widgets.EXPLORERS.values():
        assert f"``{cls.__name__}``" in widgets.__doc__
        assert f"``{cls.__module__.rsplit('.', 1)[1]}``" in widgets.__doc__  # its module
        assert getattr(widgets, cls.__name__) is cls and cls.__name__ in widgets.__all__
