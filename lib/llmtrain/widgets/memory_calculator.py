"""Notebook 11's (and 12's) widget: per-GPU training memory by part (``llmtrain.cost.memory.estimate``)."""

from __future__ import annotations

from .. import check, plots
from ..cost import activations as activation_formulas, memory
from ..model import recompute as _recompute  # ``recompute`` is a setting here
from ..model import shapes
from ..precision import formats as precision
from ..units import GIB
from .explorer import Explorer, nice_limit

__all__ = ["MemoryCalculator", "CARD_GIB"]

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
