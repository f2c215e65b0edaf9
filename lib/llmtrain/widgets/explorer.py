"""The base of the notebooks' widgets: ``Explorer`` (settings → library call → one matplotlib
figure updated in place, a blitted PNG, ipywidgets controls) and ``nice_limit`` (axis limits
that stay put while a slider moves). Each notebook's explorer subclasses it in its own module
(``llmtrain.widgets``' docstring lists them). Tested in tests/test_widgets.py.
"""

from __future__ import annotations

import html
import io
import math
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from .. import check, plots

__all__ = ["nice_limit", "Explorer"]


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
