from fractions import Fraction

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from llmtrain.cost import params
from llmtrain import plots, show  # noqa: E402
from llmtrain.show import source  # noqa: E402


def _figure():
    plots.use_style()
    fig, ax = plt.subplots()
    ax.bar(["a", "b"], [1, 2])
    ax.set_title("t")
    return fig


def test_save_writes_png_and_svg_byte_identical_twice(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMTRAIN_FIGURES", str(tmp_path))
    fig = _figure()
    first = [p.read_bytes() for p in plots.save(fig, "demo")]
    second = [p.read_bytes() for p in plots.save(fig, "demo")]
    plt.close(fig)
    assert [p.name for p in tmp_path.iterdir()] and sorted(p.name for p in tmp_path.iterdir()) == ["demo.png", "demo.svg"]
    assert first[0][:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in first[1]
    assert first == second


@pytest.mark.parametrize("name", ["", "a/b", "../x", ".hidden"])
def test_save_rejects_bad_names(name, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMTRAIN_FIGURES", str(tmp_path))
    with pytest.raises(ValueError, match="name"):
        plots.save(_figure(), name)


def test_figures_dir_is_the_repository_folder_in_a_checkout(monkeypatch, root):
    monkeypatch.delenv("LLMTRAIN_FIGURES", raising=False)
    assert plots.figures_dir() == root / "figures"


def test_show_displays_the_running_source():
    shown = show(params.count)
    assert "def count(shape" in repr(shown) and repr(shown).startswith("# llmtrain.cost.params.count")
    html = shown._repr_html_()
    assert "<pre" in html and "count" in html
    assert source(params.count) == source(params.count).lstrip()  # dedented


def test_show_line_range_and_errors():
    text = repr(show(params.count, lines=(1, 1)))
    assert text.splitlines()[1].startswith("def count")
    assert len(text.splitlines()) == 2
    with pytest.raises(ValueError, match="lines"):
        show(params.count, lines=(3, 1))
    with pytest.raises(ValueError, match="no source"):
        show(42)


# --- gantt: pipeline schedules -------------------------------------------------------------

def _gantt(events, **kwargs):
    plots.use_style()
    fig, ax = plt.subplots()
    assert plots.gantt(ax, events, **kwargs) is ax
    return fig, ax


def _boxes(ax):
    """(row, x, width) of every box, the row centre being the rank."""
    return sorted((round(r.get_y() + r.get_height() / 2, 9), r.get_x(), r.get_width())
                  for r in ax.patches)


@pytest.mark.parametrize("name,p,m,v", [("gpipe", 4, 8, 1), ("1f1b", 3, 5, 1),
                                        ("interleaved", 2, 4, 2)])
def test_gantt_one_box_per_event_at_its_times(name, p, m, v):
    from llmtrain.cost import pp_schedule

    events = pp_schedule.simulate(name, p, m, v, t_f=Fraction(1, 3), t_b=Fraction(2, 3))
    fig, ax = _gantt(events, title=name)
    assert len(ax.patches) == len(events) == 2 * m * v * p
    got, want = _boxes(ax), sorted((e.rank, float(e.start), float(e.end - e.start)) for e in events)
    assert [b[0] for b in got] == [w[0] for w in want]  # rows: exact
    # x and width, float(Fraction) up to the last bit (matplotlib stores corners, not widths)
    flat = [x for b in got for x in b[1:]]
    assert flat == pytest.approx([x for w in want for x in w[1:]], abs=1e-12)
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"rank {r}" for r in range(p)]
    assert ax.get_ylim() == (p - 0.5, -0.5)  # rank 0 on top
    assert ax.get_xlabel() == "time (s)" and ax.get_title() == name
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    chunks = [f"{kind}, chunk {c}" for kind in ("forward", "backward") for c in range(v)]
    assert labels == (["forward", "backward"] if v == 1 else chunks)
    faces = {(e.kind, e.stage // p): None for e in events}
    for e, patch in zip(sorted(events, key=lambda e: (e.kind == "B", e.stage // p)), ax.patches):
        faces[e.kind, e.stage // p] = patch.get_facecolor()
    assert len(set(faces.values())) == 2 * v  # forward/backward and each chunk: their own colour
    plt.close(fig)


def test_gantt_measured_float_events_are_shifted_to_zero():
    from llmtrain.cost.pp_schedule import Event

    t = 1_700_000_000.25  # a wall-clock start, as the runtime measures
    events = [Event(0, 0, "F", 0, t, t + 0.5), Event(1, 1, "F", 0, t + 0.75, t + 1.25),
              Event(1, 1, "B", 0, t + 1.25, t + 2.25), Event(0, 0, "B", 0, t + 2.5, t + 3.5)]
    fig, ax = _gantt(events, unit="ms")
    assert _boxes(ax) == [(0, 0.0, 0.5), (0, 2.5, 1.0), (1, 0.75, 0.5), (1, 1.25, 1.0)]
    assert ax.get_xlim() == (0, 3.5) and ax.get_xlabel() == "time (ms)"
    assert sorted(t.get_text() for t in ax.texts) == ["0"] * 4  # wide boxes are labelled
    plt.close(fig)


def test_gantt_labels_only_boxes_wide_enough():
    from llmtrain.cost import pp_schedule

    fig, ax = _gantt(pp_schedule.simulate("gpipe", 2, 10, t_f=1, t_b=30))
    texts = [t.get_text() for t in ax.texts]
    assert texts and len(texts) == 2 * 10  # the 20 backwards, none of the 20 thin forwards
    plt.close(fig)


def test_gantt_saves_byte_identical_twice(tmp_path, monkeypatch):
    from llmtrain.cost import pp_schedule

    monkeypatch.setenv("LLMTRAIN_FIGURES", str(tmp_path))
    fig, _ = _gantt(pp_schedule.simulate("interleaved", 4, 8, 2), title="interleaved")
    first = [p.read_bytes() for p in plots.save(fig, "gantt")]
    assert first == [p.read_bytes() for p in plots.save(fig, "gantt")]
    plt.close(fig)


@pytest.mark.parametrize("kwargs,arg", [(dict(events=[]), "events"), (dict(events=None), "events"),
                                        (dict(stages=3), "stages"), (dict(stages=0), "stages"),
                                        (dict(stages=1), "stages"), (dict(unit=None), "unit"),
                                        (dict(title=3), "title")])
def test_gantt_bad_arguments_are_named(kwargs, arg):
    from llmtrain.cost import pp_schedule

    args = dict(events=pp_schedule.simulate("1f1b", 2, 2)) | kwargs
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match=rf"^{arg} must"):
        plots.gantt(ax, args.pop("events"), **args)
    plt.close(fig)


@pytest.mark.parametrize("dp, tp, pp", [(2, 2, 2), (1, 4, 2), (3, 1, 1), (2, 2, 4)])
def test_rank_cube_one_box_per_rank_none_overlapping(dp, tp, pp):
    from matplotlib.patches import FancyBboxPatch

    from llmtrain.cost.layout import ParallelDims

    dims = ParallelDims(dp=dp, tp=tp, pp=pp)
    fig, ax = plt.subplots()
    plots.rank_cube(ax, dims, {r: f"r{r}" for r in range(dims.world_size)})
    boxes = [p for p in ax.patches if isinstance(p, FancyBboxPatch)]
    assert len(boxes) == dims.world_size
    texts = [t.get_text() for t in ax.texts]
    assert all(f"rank {r}" in texts and f"r{r}" in texts for r in range(dims.world_size))
    spans = [(b.get_x(), b.get_y(), b.get_x() + b.get_width(), b.get_y() + b.get_height())
             for b in boxes]
    for i, a in enumerate(spans):  # every label readable: no box covers another
        for b in spans[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    plt.close(fig)


def test_rank_cube_refuses_what_it_cannot_draw():
    from llmtrain.cost.layout import ParallelDims

    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="dims must be"):
        plots.rank_cube(ax, (2, 2, 2))
    with pytest.raises(ValueError, match="tp must be at most 4"):
        plots.rank_cube(ax, ParallelDims(tp=8))
    plt.close(fig)
