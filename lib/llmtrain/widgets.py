"""The notebooks' widgets: one figure each, updated in place, readable without a kernel.

Three explorers, one per notebook that lets the reader play:

- ``ScheduleExplorer``  notebook 03: warmup + cosine or linear decay (``schedules``)
- ``ParamsExplorer``    notebook 10: parameters of a LLaMA-shaped model by component (``params``)
- ``MemoryCalculator``  notebook 11: per-GPU training memory by part (``memory.estimate``)
- ``PlannerExplorer``   notebook 08: the fastest 3D layouts of a model on a cluster (``plan``)

Each is a plain object, usable without Jupyter:

- ``compute(**settings)`` validates the settings and asks the library; it returns what is shown
  (a bad setting raises ``ValueError`` naming the setting and the rule);
- ``update(**changes)`` computes, then moves the artists of the explorer's *one* matplotlib
  figure (no new figure, no pyplot) and returns the text shown under it; a bad setting leaves
  the last good state drawn, dimmed, and the text is the error message;
- ``png()`` renders that figure (Agg, fixed layout, blitted: the frame, legend and ticks are
  kept as pixels, so an update draws the data and, only when an axis limit moves, the ticks;
  the pixels equal a full draw's);
- ``widget()`` wraps it in ipywidgets controls, an ``Image`` and an ``HTML`` text; a control's
  change calls ``set`` = ``update`` + ``png`` + two widget values.

Rebuilding a figure and its PNG on every change, as ``ipywidgets.interact`` with ``plt.show``
did, cost 135–155 ms of CPU per update, nearly all of it drawing text; ``set`` stays well
under a 50 ms budget (``scripts/bench_widgets.py`` measures both). ``static()`` draws the
default state with its headline as the title: the notebooks store it as a figure and a text,
which is what a reader sees on GitHub or in the HTML build, where the widget itself is blank.
Tested in tests/test_widgets.py.
"""

from __future__ import annotations

import functools
import html
import io
import math
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from .cost import activations as activation_formulas, memory, params, plan
from . import check, plots
from .precision import formats as precision
from .recipes import schedules
from .model import shapes
from .model import recompute as _recompute  # ``recompute`` is a setting here
from .cost.memory import GIB

__all__ = ["nice_limit", "Explorer", "ScheduleExplorer", "ParamsExplorer", "MemoryCalculator",
           "PlannerExplorer", "EXPLORERS", "CARD_GIB"]


def nice_limit(x: float) -> float:
    """The smallest of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 (× 10^k) that is >= x > 0: an axis
    limit that stays put while a slider moves a little, so its ticks need no redrawing."""
    check.positive_number("x", x)
    k = math.floor(math.log10(x))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 12):
        if m * 10.0 ** k >= x:
            return m * 10.0 ** k
    raise AssertionError(x)  # unreachable: 12·10^k > 10^(k+1) > x


class Explorer:
    """Settings → library call → one figure updated in place, plus a text.

    Subclasses give ``DEFAULTS`` (the settings and their default values), ``FIGSIZE``,
    ``compute``, ``_build`` (create the artists once), ``_draw`` (move them, set the axis
    limits), ``_headline`` (one line) and ``_text`` (the text under the figure).

    The live figure has no title (text is the costly part of a draw: the headline goes into
    the widget's HTML, which the browser renders); ``static()`` makes one with the headline
    as its title, for the rendering stored in the notebook and saved to figures/.
    """

    DEFAULTS: dict[str, Any] = {}
    FIGSIZE: tuple[float, float] = (6.5, 2.5)
    MARGINS: dict[str, float] = dict(left=0.1, right=0.97, bottom=0.2, top=0.88)
    ERROR_PREFIX = "invalid setup"

    def __init__(self, *, title: bool = False, **settings: Any):
        self._check_names(settings)
        plots.use_style()
        self.settings = {**self.DEFAULTS, **settings}
        self.values = self.compute(**self.settings)  # bad settings here raise
        self.error: str | None = None
        self._title = bool(title)
        self.fig = Figure(figsize=self.FIGSIZE, dpi=100)
        FigureCanvasAgg(self.fig)
        self.fig.subplots_adjust(**self.MARGINS)
        self.ax = self.fig.add_subplot()
        self._artists: list = []  # the data: dimmed on a bad setting, redrawn on each update
        self._banner = self.fig.text(0.5, 0.55, "", ha="center", va="center", fontsize=11,
                                     color="#D55E00", visible=False, zorder=10,
                                     bbox=dict(facecolor="white", edgecolor="#D55E00"))
        self._build()
        self._show(self.values)
        self._ui = None
        self._static_bg: dict = {}  # layout -> pixels: frame, axis labels, legend
        self._axes_bg: dict = {}  # (layout, limits, title) -> pixels: the above + ticks, grid

    @classmethod
    def static(cls, **settings: Any) -> "Explorer":
        """An explorer drawn once with its headline as the figure's title: by default the
        widget's default state, what a reader without a kernel is shown."""
        return cls(title=True, **settings)

    # --- the logic, without Jupyter -------------------------------------------------------

    def compute(self, **settings: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_names(self, settings: dict) -> None:
        unknown = sorted(set(settings) - set(self.DEFAULTS))
        if unknown:
            raise ValueError(f"settings must be among {tuple(self.DEFAULTS)}, got {unknown}")

    def _show(self, values: Any) -> None:
        self._draw(values)
        self.headline = self._headline(values)
        self.text = self._text(values)
        if self._title:
            self.ax.set_title(self.headline.replace("; ", "\n"), fontsize=10)

    def update(self, **changes: Any) -> str:
        """Apply ``changes`` to the settings and redraw; returns the text shown.

        Unknown setting names raise ``ValueError``. A setting the library refuses is shown:
        the text becomes ``"<ERROR_PREFIX>: <the library's message>"`` and the figure keeps its
        last good state, dimmed, with a banner; the next good setting restores it.
        """
        self._check_names(changes)
        self.settings = {**self.settings, **changes}
        try:
            values = self.compute(**self.settings)
        except ValueError as e:
            self.error = f"{self.ERROR_PREFIX}: {e}"
            self._dim(True)
            self.text = self.error
            return self.text
        self.values, self.error = values, None
        self._dim(False)
        self._show(values)
        return self.text

    def _dim(self, on: bool) -> None:
        for a in self._artists:
            a.set_alpha(0.25 if on else None)
        self._banner.set_text(f"{self.ERROR_PREFIX}: see the message below" if on else "")
        self._banner.set_visible(on)

    def _layout(self) -> Any:
        """What else than the data, the limits and the title changes the picture (a legend)."""
        return None

    def png(self) -> bytes:
        """The figure as PNG bytes at 100 dpi, blitted in two layers of kept pixels:

        1. the static part (frame, axis labels, legend), for each ``_layout()`` seen;
        2. that plus the ticks, tick labels, grid and title, for the last 32 axis limits;

        then the data, the spines and the banner drawn on top, in z-order: the same order as
        a full draw, so the pixels are the same (tests/test_widgets.py). Text is the costly
        part of a draw, so an update whose limits did not change draws no text at all. The
        figure is left a normal figure: ``plots.save(explorer.fig, ...)`` draws everything.
        """
        canvas, ax = self.fig.canvas, self.ax
        # what a full draw puts above the ticks and grid (z-order > 1.5): data, spines, banner
        data = sorted([*self._artists, *ax.spines.values(), self._banner],
                      key=lambda a: a.get_zorder())
        axes = [ax.xaxis, ax.yaxis, ax.title]
        layout = self._layout()
        key = (layout, ax.get_xlim(), ax.get_ylim(), ax.get_title())
        if key in self._axes_bg:
            canvas.restore_region(self._axes_bg[key])
        else:
            if layout in self._static_bg:
                canvas.restore_region(self._static_bg[layout])
            else:
                for a in data + axes:
                    a.set_animated(True)
                try:
                    canvas.draw()
                finally:
                    for a in data + axes:
                        a.set_animated(False)
                self._static_bg[layout] = canvas.copy_from_bbox(self.fig.bbox)
            renderer = canvas.get_renderer()
            for a in axes:
                a.draw(renderer)
            if len(self._axes_bg) >= 32:
                self._axes_bg.pop(next(iter(self._axes_bg)))
            self._axes_bg[key] = canvas.copy_from_bbox(self.fig.bbox)
        renderer = canvas.get_renderer()
        for a in data:
            a.draw(renderer)
        buf = io.BytesIO()
        Image.fromarray(np.asarray(canvas.buffer_rgba())).save(buf, format="png", compress_level=1)
        return buf.getvalue()

    def html(self) -> str:
        """The headline (bold) and the text, or the error message (in colour)."""
        if self.error:
            return (f'<pre style="font-size: 12px; color: #D55E00; margin: 0">'
                    f"{html.escape(self.error)}</pre>")
        return (f"<b>{html.escape(self.headline)}</b>"
                f'<pre style="font-size: 12px; line-height: 1.3; margin: 0">'
                f"{html.escape(self.text)}</pre>")

    # --- the widget -----------------------------------------------------------------------

    def _controls(self, w) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def widget(self):
        """Controls, the figure (an ``ipywidgets.Image``) and the text (``HTML``), in a VBox."""
        import ipywidgets as w

        if self._ui is None:
            controls = self._controls(w)
            for name, c in controls.items():
                c.value = self.settings[name]
                c.observe(lambda change, name=name: self.set(**{name: change["new"]}),
                          names="value")
            image = w.Image(value=self.png(), format="png")
            text = w.HTML(self.html())
            rows = list(controls.values())
            box = w.VBox([w.HBox(rows[i:i + 2]) for i in range(0, len(rows), 2)] + [image, text])
            self._ui = (controls, image, text, box)
        return self._ui[3]

    def set(self, **changes: Any) -> str:
        """What a control's change runs: ``update``, then the widget's image and text."""
        text = self.update(**changes)
        if self._ui is not None:
            _, image, out, _ = self._ui
            image.value = self.png()
            out.value = self.html()
        return text



# --- notebook 03 ---------------------------------------------------------------------------

class ScheduleExplorer(Explorer):
    """Warmup then cosine or linear decay to ``min_frac``·peak over ``STEPS`` steps
    (``schedules.warmup_cosine`` / ``warmup_linear``); the text gives the average lr."""

    STEPS = 1000
    DEFAULTS = dict(peak_lr=3e-4, warmup_frac=0.05, min_frac=0.1, decay="cosine")
    DECAYS = ("cosine", "linear")

    def compute(self, *, peak_lr, warmup_frac, min_frac, decay) -> dict:
        check.positive_number("peak_lr", peak_lr)
        check.number("warmup_frac", warmup_frac, 0, 1)
        check.number("min_frac", min_frac, 0, 1)
        check.one_of("decay", decay, self.DECAYS)
        W = round(warmup_frac * self.STEPS)
        fn = schedules.warmup_cosine if decay == "cosine" else schedules.warmup_linear
        lrs = [fn(s, peak_lr=peak_lr, warmup_steps=W, total_steps=self.STEPS,
                  min_lr=min_frac * peak_lr) for s in range(self.STEPS + 1)]
        return dict(lrs=lrs, warmup_steps=W, peak_lr=float(peak_lr), min_lr=min_frac * peak_lr,
                    mean=sum(lrs) / len(lrs), decay=decay)

    def _build(self) -> None:
        # The learning rate itself, so that the peak slider moves the curve and the axis (the
        # y limit is nice_limit(1.05·peak): it stays put while the peak moves a little).
        ax = self.ax
        steps = range(self.STEPS + 1)
        (self._line,) = ax.plot(steps, [0.0] * len(steps), color=plots.PALETTE[0], lw=2)
        self._mean = ax.axhline(0.0, color=plots.PALETTE[1], ls="--", lw=1)
        self._warm = ax.axvline(0.0, color="gray", ls=":", lw=1)
        self._artists = [self._line, self._mean, self._warm]
        ax.set_xlim(0, self.STEPS)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        ax.set_xlabel("step")
        ax.set_ylabel("learning rate")

    def _draw(self, v: dict) -> None:
        self._line.set_ydata(v["lrs"])
        self._mean.set_ydata([v["mean"]] * 2)
        self._warm.set_xdata([v["warmup_steps"]] * 2)
        self.ax.set_ylim(0, nice_limit(1.05 * v["peak_lr"]))

    def _headline(self, v: dict) -> str:
        return (f"peak lr {v['peak_lr']:.3g}: warmup {v['warmup_steps']} steps, {v['decay']} "
                f"to {v['min_lr'] / v['peak_lr']:.2f} × peak; dashed: the average")

    def _text(self, v: dict) -> str:
        return (f"average lr = {v['mean']:.3g} ({v['mean'] / v['peak_lr']:.3f} × peak); "
                f"peak {v['peak_lr']:.3g} at step {v['warmup_steps']}, "
                f"min {v['min_lr']:.3g} from step {self.STEPS}")

    def _controls(self, w) -> dict:
        return dict(
            peak_lr=w.FloatLogSlider(base=10, min=-5, max=-1, step=0.1, description="peak lr"),
            warmup_frac=w.FloatSlider(min=0.0, max=0.5, step=0.01, description="warmup"),
            min_frac=w.FloatSlider(min=0.0, max=1.0, step=0.05, description="min/peak"),
            decay=w.Dropdown(options=list(self.DECAYS), description="decay"))


# --- notebook 10 ---------------------------------------------------------------------------

class ParamsExplorer(Explorer):
    """A LLaMA-shaped model from H, L, H', N, N_kv, V: ``params.breakdown`` drawn as one
    stacked bar (billions), with the slides' formula's total dashed; the text is
    ``params.describe``. The defaults are LLaMA-7B."""

    DEFAULTS = dict(H=4096, L=32, Hp=11008, N=32, N_kv=32, V=32000)
    FIGSIZE = (6.5, 2.0)
    MARGINS = dict(left=0.03, right=0.97, bottom=0.42, top=0.84)
    ERROR_PREFIX = "invalid shape"

    def compute(self, *, H, L, Hp, N, N_kv, V) -> dict:
        shape = shapes.ModelShape(vocab_size=V, hidden_size=H, num_layers=L, num_heads=N,
                                  num_kv_heads=N_kv, intermediate_size=Hp, max_seq_len=4096,
                                  name=f"H={H}, L={L}, H'={Hp}, N={N}, N_kv={N_kv}, V={V}")
        parts = params.breakdown(shape)
        return dict(shape=shape, parts=parts, total=sum(parts.values()),
                    slides=params.slides_count(shape))

    def _build(self) -> None:
        ax = self.ax
        self._bars = {}
        for i, part in enumerate(params.COMPONENTS):
            (self._bars[part],) = ax.barh([0], [0.0], left=0.0, height=0.6, zorder=2,
                                          color=plots.PALETTE[i])
            self._bars[part].set_label(part)
        self._slides = ax.axvline(0.0, color="black", ls="--", lw=1.2,
                                  label="slides' formula")
        self._artists = [*self._bars.values(), self._slides]
        ax.set_yticks([])
        ax.set_ylim(-0.5, 0.5)
        ax.set_xlabel("parameters (billions)")
        ax.grid(axis="y", visible=False)
        ax.legend(handles=self._artists, ncols=6, fontsize=7, loc="upper center",
                  bbox_to_anchor=(0.5, -0.55), handlelength=1.2, columnspacing=1.0)

    def _draw(self, v: dict) -> None:
        left = 0.0
        for part, bar in self._bars.items():
            width = v["parts"][part] / 1e9
            bar.set_x(left)
            bar.set_width(width)
            left += width
        self._slides.set_xdata([v["slides"] / 1e9] * 2)
        self.ax.set_xlim(0, nice_limit(1.06 * max(v["total"], v["slides"]) / 1e9))

    def _headline(self, v: dict) -> str:
        return f"{v['total']:,} parameters ({v['total'] / 1e9:.2f} B); dashed: the slides' formula"

    def _text(self, v: dict) -> str:
        return params.describe(v["shape"])

    def _controls(self, w) -> dict:
        return dict(H=w.IntSlider(min=256, max=16384, step=256, description="H"),
                    L=w.IntSlider(min=1, max=128, description="L"),
                    Hp=w.IntSlider(min=256, max=65536, step=256, description="H'"),
                    N=w.IntSlider(min=1, max=128, description="N"),
                    N_kv=w.IntSlider(min=1, max=128, description="N_kv"),
                    V=w.IntSlider(min=1000, max=256000, step=1000, description="V"))


# --- notebook 11 ---------------------------------------------------------------------------

CARD_GIB = 80  # an "80G" card (A100/H100 80GB) has 80 GiB = 81,920 MiB


class MemoryCalculator(Explorer):
    """``memory.estimate`` for a preset, a number of GPUs as tp × pp model-parallel groups (a
    ``ParallelDims``), ZeRO stage, batch, sequence length, recomputation, activation count and
    dtype, and optimizer (AdamW, or a memory-saving method of notebook 12: ``memory.OPTIMIZERS``):
    each part per GPU as one stacked bar (GiB), the peak of one training step
    (``estimate(...).peak_bytes``, ``llmtrain.step_peak``) dotted, the 80 GiB of an 80G card
    dashed; the text is the estimate's table."""

    DEFAULTS = dict(model="llama-7b", gpus=2, tp=1, pp=1, zero=3, batch=8, seq=2048,
                    recompute="full", impl="textbook", dtype="bf16", optimizer="adamw")
    FIGSIZE = (6.5, 2.0)
    MARGINS = dict(left=0.03, right=0.97, bottom=0.42, top=0.84)

    def compute(self, *, model, gpus, tp, pp, zero, batch, seq, recompute, impl,
                dtype, optimizer) -> memory.Estimate:
        check.one_of("model", model, shapes.names())
        dims = memory.parallel_dims(gpus, tp, pp)  # ParallelDims(dp=gpus/(tp·pp), tp, pp)
        check.one_of("zero", zero, (0, 1, 2, 3))
        check.one_of("recompute", recompute, _recompute.MODELLED)
        check.one_of("impl", impl, activation_formulas.IMPLS)
        check.one_of("dtype", dtype, precision.DTYPES)
        check.one_of("optimizer", optimizer, memory.OPTIMIZERS)
        return memory.estimate(shapes.get(model), dims, batch=batch, seq=seq, zero=zero,
                               recompute=recompute, impl=impl, dtype=dtype, optimizer=optimizer)

    def _build(self) -> None:
        self._bars: dict = {}
        self._legend_parts: tuple = ()
        self._card = self.ax.axvline(CARD_GIB, color="gray", ls="--", lw=1,
                                     label=f"{CARD_GIB} GiB card")
        self._peak = self.ax.axvline(0.0, color="black", ls=":", lw=1.5, zorder=3,
                                     label="step peak")
        self._artists = [self._card, self._peak]
        self.ax.set_yticks([])
        self.ax.set_ylim(-0.5, 0.5)
        self.ax.set_xlabel("GiB per GPU")
        self.ax.grid(axis="y", visible=False)
        # One bar per part, coloured in the estimate's own order (with every part present).
        for part in memory.estimate(shapes.get("tiny"), zero=1).parts:
            self._bar(part)

    def _bar(self, part: str):
        if part not in self._bars:  # the first time a part appears: one bar, kept from then on
            (bar,) = self.ax.barh([0], [0.0], left=0.0, height=0.6, label=part, zorder=2,
                                  color=plots.PALETTE[len(self._bars) % len(plots.PALETTE)])
            bar.set_label(part)
            self._bars[part] = bar
            self._artists.append(bar)
        return self._bars[part]

    def _layout(self) -> tuple:
        return self._legend_parts

    def _draw(self, est: memory.Estimate) -> None:
        left = 0.0
        for part, value in est.parts.items():
            bar = self._bar(part)
            bar.set_x(left / GIB)
            bar.set_width(value / GIB)
            left += value
        for part, bar in self._bars.items():
            if part not in est.parts:
                bar.set_width(0.0)
        peak = est.peak_bytes
        self._peak.set_visible(peak is not None)
        if peak is not None:
            self._peak.set_xdata([peak / GIB] * 2)
        present = (*est.parts, peak is not None)
        if present != self._legend_parts:  # the legend lists the parts of this estimate
            handles = [self._bars[p] for p in est.parts] + [self._peak] * (peak is not None)
            handles.append(self._card)
            self.ax.legend(handles=handles, ncols=4, fontsize=7, loc="upper center",
                           bbox_to_anchor=(0.5, -0.55), handlelength=1.2, columnspacing=1.0)
            self._legend_parts = present
        self.ax.set_xlim(0, nice_limit(1.06 * max(est.total / GIB, CARD_GIB)))

    def _headline(self, est: memory.Estimate) -> str:
        s = self.settings
        fits = "fits" if est.total <= CARD_GIB * GIB else "does not fit"
        layout = f" (TP {s['tp']} × PP {s['pp']})" if s["tp"] * s["pp"] > 1 else ""
        line = (f"{s['model']}, {s['gpus']} GPU{'s' if s['gpus'] > 1 else ''}{layout}, "
                f"ZeRO-{s['zero']}: {est.total / GIB:.2f} GiB per GPU ({fits} in {CARD_GIB} GiB)")
        if est.peak_bytes is not None:
            line += f"; step peak {est.peak_bytes / GIB:.2f} GiB ({est.step_peak.phase})"
        return line

    def _text(self, est: memory.Estimate) -> str:
        return est.table()

    def _controls(self, w) -> dict:
        return dict(model=w.Dropdown(options=shapes.names(), description="model"),
                    gpus=w.IntSlider(min=1, max=64, description="GPUs"),
                    tp=w.IntSlider(min=1, max=8, description="TP"),
                    pp=w.IntSlider(min=1, max=16, description="PP"),
                    zero=w.Dropdown(options=[0, 1, 2, 3], description="ZeRO"),
                    batch=w.IntSlider(min=1, max=64, description="batch"),
                    seq=w.IntSlider(min=128, max=8192, step=128, description="seq"),
                    recompute=w.Dropdown(options=list(_recompute.MODELLED),
                                         description="recompute"),
                    impl=w.Dropdown(options=list(activation_formulas.IMPLS),
                                    description="activations"),
                    dtype=w.Dropdown(options=list(precision.DTYPES), description="dtype"),
                    optimizer=w.Dropdown(options=list(memory.OPTIMIZERS), description="optimizer"))


# --- notebook 08 ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _planner_search(model, gpu, gpus, batch_tokens, seq) -> tuple:
    """``plan.search`` kept for the last settings: moving ``top`` searches nothing again.
    Interleaving with up to 8 chunks per rank is searched, as the CLI does."""
    return tuple(plan.search(model, gpu, gpus, batch_tokens, seq, virtuals=range(1, 9)))


class PlannerExplorer(Explorer):
    """``plan.search`` for a model, a number of GPUs of one kind and a global batch: the
    ``top`` fastest layouts that fit, one row each, its step time split into compute, TP
    communication, pipeline bubble, DP communication, point-to-point and the optimizer step
    (seconds); the row's label names the layout and its GiB per GPU; the text is the ranked
    table. The defaults are
    the slides' example: LLaMA-7B on 2 A100 80G, B = 8 sequences of 2,048 per GPU."""

    DEFAULTS = dict(model="llama-7b", gpus=2, gpu="a100-80g", batch_tokens=32768, seq=2048,
                    top=5)
    ROWS = 8  # the most rows ``top`` can show
    FIGSIZE = (6.5, 3.4)
    MARGINS = dict(left=0.43, right=0.97, bottom=0.3, top=0.8)
    PARTS = ("compute", "TP comm", "bubble", "DP comm", "PP p2p", "optimizer")
    ERROR_PREFIX = "invalid setup"

    def compute(self, *, model, gpus, gpu, batch_tokens, seq, top) -> dict:
        check.one_of("model", model, plan.model_names())
        check.integer("top", top, 1, self.ROWS)
        plans = _planner_search(model, gpu, gpus, batch_tokens, seq)
        if not plans:
            raise ValueError(f"no layout of {model} on {gpus} × {gpu} fits in "
                             f"{plan.cluster(gpu).memory_bytes / GIB:.0f} GiB per GPU")
        return dict(plans=plans[:top], feasible=len(plans))

    def _build(self) -> None:
        ax = self.ax
        self._bars = {part: ax.barh(range(self.ROWS), [0.0] * self.ROWS, height=0.6, zorder=2,
                                    color=plots.PALETTE[i], label=part)
                      for i, part in enumerate(self.PARTS)}
        self._artists = [bar for bars in self._bars.values() for bar in bars]
        ax.set_ylim(self.ROWS - 0.5, -0.5)
        ax.set_yticks(range(self.ROWS))
        ax.set_xlabel("seconds per step")
        ax.grid(axis="y", visible=False)
        ax.legend(handles=[bars[0] for bars in self._bars.values()], labels=list(self.PARTS),
                  ncols=6, fontsize=7, loc="upper center", bbox_to_anchor=(0.3, -0.3),
                  handlelength=1.2, columnspacing=1.0)
        self._labels: tuple = ()

    def _layout(self) -> tuple:
        return self._labels

    def _draw(self, v: dict) -> None:
        plans = v["plans"]
        for i in range(self.ROWS):
            left = 0.0
            for part, bars in self._bars.items():
                width = plans[i].time_parts[part] if i < len(plans) else 0.0
                bars[i].set_x(left)
                bars[i].set_width(width)
                left += width
        labels = tuple(f"{p.layout.label()}, {p.memory_bytes / GIB:.1f} GiB" for p in plans)
        if labels != self._labels:
            self.ax.set_yticklabels(list(labels) + [""] * (self.ROWS - len(labels)), fontsize=7)
            self._labels = labels
        self.ax.set_xlim(0, nice_limit(1.06 * max(p.step_time_s for p in plans)))

    def _headline(self, v: dict) -> str:
        s, best = self.settings, v["plans"][0]
        return (f"{s['model']}, {s['gpus']} × {s['gpu']}, {s['batch_tokens']:,} tokens/step; "
                f"{v['feasible']} layouts fit; fastest (row 1): {best.step_time_s:.3g} s per "
                f"step, MFU {100 * best.mfu:.1f} %")

    def _text(self, v: dict) -> str:
        rows = [f"{'#':>2} {'layout':<40} {'GiB/GPU':>8} {'s/step':>9} {'MFU':>6}"]
        for i, p in enumerate(v["plans"], 1):
            rows.append(f"{i:>2} {p.layout.label():<40} {p.memory_bytes / GIB:>8.1f} "
                        f"{p.step_time_s:>9.3f} {100 * p.mfu:>5.1f}%")
        return "\n".join(rows)

    def _controls(self, w) -> dict:
        return dict(model=w.Dropdown(options=plan.model_names(), description="model"),
                    gpus=w.Dropdown(options=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
                                    description="GPUs"),
                    gpu=w.Dropdown(options=list(plan.CLUSTERS), description="GPU"),
                    batch_tokens=w.Dropdown(options=[2**k for k in range(14, 25)],
                                            description="tokens"),
                    seq=w.Dropdown(options=[2048, 4096, 8192], description="seq"),
                    top=w.IntSlider(min=1, max=self.ROWS, description="top"))


EXPLORERS = {"03": ScheduleExplorer, "08": PlannerExplorer, "10": ParamsExplorer,
             "11": MemoryCalculator}
