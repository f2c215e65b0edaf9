import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from llmtrain import params, plots, show  # noqa: E402
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
    assert "def count(shape" in repr(shown) and repr(shown).startswith("# llmtrain.params.count")
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
