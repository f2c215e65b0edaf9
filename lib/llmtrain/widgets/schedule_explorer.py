"""Notebook 03's widget: warmup then cosine or linear decay (``llmtrain.recipes.schedules``)."""

from __future__ import annotations

from .. import check, plots
from ..recipes import schedules
from .explorer import Explorer, nice_limit

__all__ = ["ScheduleExplorer"]


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
