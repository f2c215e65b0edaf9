"""Notebook 08's widget: the fastest 3D layouts of a model on a cluster (``llmtrain.cost.plan.search``)."""

from __future__ import annotations

import functools

from .. import check, plots
from ..cost import plan
from ..model import shapes
from ..units import GIB
from .explorer import Explorer, nice_limit

__all__ = ["PlannerExplorer"]


@functools.lru_cache(maxsize=64)
def dense_names() -> list[str]:
    """The models the planner searches: every name ``shapes.resolve`` knows but MoE and MLA ones
    (``plan.search`` has no expert parallelism)."""
    return [n for n in shapes.all_names()
            if not shapes.resolve(n).is_moe and not shapes.resolve(n).is_mla]


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
        check.one_of("model", model, dense_names())
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
        return dict(model=w.Dropdown(options=dense_names(), description="model"),
                    gpus=w.Dropdown(options=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
                                    description="GPUs"),
                    gpu=w.Dropdown(options=list(plan.CLUSTERS), description="GPU"),
                    batch_tokens=w.Dropdown(options=[2**k for k in range(14, 25)],
                                            description="tokens"),
                    seq=w.Dropdown(options=[2048, 4096, 8192], description="seq"),
                    top=w.IntSlider(min=1, max=self.ROWS, description="top"))
