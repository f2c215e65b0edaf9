"""Notebook 10's widget: the parameters of a LLaMA-shaped model by component
(``llmtrain.cost.params``)."""

from __future__ import annotations

from .. import plots
from ..cost import params
from ..model import shapes
from .explorer import Explorer, nice_limit

__all__ = ["ParamsExplorer"]


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
