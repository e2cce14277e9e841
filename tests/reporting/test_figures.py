"""Figures rendered headless from plain data: axes content, log axes, PNG files."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba

from lightning_devinterp.milestones import Milestone, Stage
from lightning_devinterp.reporting.figures import (
    TREND_COLORS,
    component_groups,
    figure_image,
    plot_curve,
    plot_formation,
    plot_llc_curve,
    plot_response_matrix,
    plot_rllc_heads,
    plot_train_loss,
    plot_trajectory,
    save_png,
)

STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128]


def history(heads=("l0h0", "l0h1", "l0h2", "l1h0", "l1h1")):
    records = []
    for i, step in enumerate(STEPS):
        record = {"step": step, "llc/mean": 10.0 + i, "llc/std": 0.5}
        for j, head in enumerate(heads):
            record[f"rllc/{head}/mean"] = float(i * (j + 1))
        records.append(record)
    records.insert(3, {"step": 3, "error": "RuntimeError: diverged"})  # a failed estimate
    records.append({"step": 256, "llc/mean": None, "llc/std": None})  # NaN written as null
    return records


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_llc_curve_on_a_log_axis_with_stages_shaded_and_milestones_marked(tmp_path):
    stages = [Stage(0, 0, 8, "rising"), Stage(1, 8, 32, "flat"), Stage(2, 32, None, "falling")]
    milestones = [
        Milestone(8, 16, "plateau_start", 13.0, "llc"),
        Milestone(32, 64, "peak", 15.0, "llc"),
    ]
    fig = plot_llc_curve(history(), stages, milestones)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    data = [line for line in ax.lines if line.get_marker() == "o"]
    assert len(data) == 1
    assert list(data[0].get_xdata()) == STEPS[1:]  # step 0, the failure and the null left out
    assert list(data[0].get_ydata()) == [11.0 + i for i in range(8)]
    assert len(ax.collections) >= 1  # the ±std band
    spans = ax.patches
    assert [to_rgba(p.get_facecolor(), 1) for p in spans] == [
        to_rgba(TREND_COLORS[t], 1) for t in ("rising", "flat", "falling")
    ]
    assert spans[0].get_x() == 1.0 and spans[2].get_x() + spans[2].get_width() == 128.0
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert sorted(line.get_xdata()[0] for line in dashed) == [8, 32]
    assert {t.get_text() for t in ax.texts} == {"plateau_start", "peak"}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["rising", "flat", "falling"]
    assert_png(save_png(fig, tmp_path / "figures" / "llc.png"))


def test_a_figure_drawn_once_to_pixels_keeps_its_dpi_and_canvas(tmp_path):
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    fig = Figure(figsize=(4, 2), dpi=72)
    fig.add_subplot().plot([0, 1], [1, 0])
    canvas = fig.canvas
    image = figure_image(fig)  # at 100 dpi
    assert image.shape == (200, 400, 3) and image.dtype == np.uint8 and image.min() < 255
    assert fig.dpi == 72 and fig.canvas is canvas
    path = save_png(image, tmp_path / "pixels.png")
    assert_png(path)
    assert np.array_equal((imread(path)[..., :3] * 255).round().astype(np.uint8), image)


def test_other_series_milestones_are_faint_and_unlabelled_on_a_curve():
    """A head's milestones on the LLC curve: dotted grey lines without labels (theirs would
    hide the curve's own), one legend entry for them all."""
    milestones = [
        Milestone(8, 16, "plateau_end", 13.0, "llc"),
        Milestone(8, 16, "plateau_end", 0.5, "rllc/l0h1"),
        Milestone(16, 64, "peak", 0.7, "rllc/l1h0"),
    ]
    (ax,) = plot_llc_curve(history(), (), milestones).axes
    assert [t.get_text() for t in ax.texts] == ["plateau_end"]
    dashed = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--"]
    dotted = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":"]
    assert dashed == [8] and dotted == [8, 16]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["other series' milestones"]
    canvas = FigureCanvasAgg(ax.figure)  # the legend beside the axes: it hides no label, no point
    canvas.draw()
    renderer = canvas.get_renderer()
    assert ax.get_legend().get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
    (ax,) = plot_curve(history(), "llc/mean", milestones=milestones).axes  # no series: all alike
    assert [t.get_text() for t in ax.texts] == [
        "llc plateau_end",
        "rllc/l0h1 plateau_end",
        "rllc/l1h0 peak",
    ]


def test_training_loss_as_its_detector_reads_it(tmp_path):
    points = [(step, 0.5 - 0.1 * i) for i, step in enumerate([2, 4, 8, 16, 32])]
    drop = Milestone(8, 16, "drop", 0.3, "train_loss")
    fig = plot_train_loss(points, [Stage(0, 2, 8, "flat"), Stage(1, 8, None, "falling")], [drop])
    (ax,) = fig.axes
    [data] = [line for line in ax.lines if line.get_marker() == "o"]
    assert list(data.get_xdata()) == [2, 4, 8, 16, 32]
    assert list(data.get_ydata()) == [value for _, value in points]
    assert [t.get_text() for t in ax.texts] == ["drop"]  # its own series: the kind alone
    assert "log training loss" in ax.get_ylabel()
    assert_png(save_png(fig, tmp_path / "train_loss.png"))
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_train_loss([])


def test_llc_curve_without_a_finite_estimate_says_so():
    with pytest.raises(ValueError, match="'llc_code/mean'"):
        plot_llc_curve(history(), prefix="llc_code")


def test_rllc_one_panel_per_layer_one_line_per_head(tmp_path):
    fig = plot_rllc_heads(history())
    assert [ax.get_title() for ax in fig.axes] == ["l0", "l1"]
    assert [len(ax.lines) for ax in fig.axes] == [3, 2]
    assert [line.get_label() for line in fig.axes[1].lines] == ["l1h0", "l1h1"]
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    assert list(fig.axes[0].lines[2].get_ydata()) == [3.0 * i for i in range(1, 9)]
    custom = plot_rllc_heads(history(), {"early": ["l0h0"], "late": ["l1h0", "l1h1"]})
    assert [len(ax.lines) for ax in custom.axes] == [1, 2]
    assert_png(save_png(fig, tmp_path / "rllc.png"))


def test_each_head_s_milestones_are_marked_on_its_line():
    milestones = [
        Milestone(4, 8, "plateau_end", 2.5, "rllc/l1h0"),
        Milestone(16, 32, "plateau_start", 3.5, "rllc/l1h0"),
        Milestone(8, 16, "peak", 9.0, "llc"),  # another series: not on the heads' panels
        Milestone(8, 16, "peak", 9.0, "rllc_code/l1h0"),  # another family
    ]
    fig = plot_rllc_heads(history(), milestones=milestones)
    assert [len(ax.lines) for ax in fig.axes] == [3, 3]
    head, marks, _ = fig.axes[1].lines  # l1h0, its milestones, l1h1
    assert marks.get_marker() == "D" and marks.get_color() == head.get_color()
    assert list(marks.get_xdata()) == [4, 16] and list(marks.get_ydata()) == [2.5, 3.5]
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["l1h0", "l1h1"]
    assert fig.get_suptitle() == "rllc per component (diamonds: milestones)"
    assert plot_rllc_heads(history()).get_suptitle() == "rllc per component"


def test_rllc_without_refined_estimates_says_how_to_get_them():
    with pytest.raises(ValueError, match="components='heads'"):
        plot_rllc_heads(history(heads=()))


def test_component_groups_by_layer():
    assert component_groups(["l0h1", "l12h0", "mlp", "l0h0"]) == {
        "l0": ["l0h1", "l0h0"],
        "l12": ["l12h0"],
        "components": ["mlp"],
    }


def test_response_matrix_heatmap_is_centred_at_zero(tmp_path):
    matrix = np.array([[0.5, -2.0, 0.0], [1.0, np.nan, -0.25]])
    fig = plot_response_matrix(matrix, ["code", "prose"], ["l0h0", "l0h1", "l1h0"], title="chi")
    ax, colorbar = fig.axes
    (image,) = ax.images
    assert image.get_clim() == (-2.0, 2.0)
    assert image.get_cmap().name == "RdBu_r"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["l0h0", "l0h1", "l1h0"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["code", "prose"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("component", "probe", "chi")
    assert colorbar.get_ylabel() == "response"
    assert_png(save_png(fig, tmp_path / "chi.png"))
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*3 probes"):
        plot_response_matrix(matrix, ["a", "b", "c"], ["l0h0", "l0h1", "l1h0"])


def test_trajectory_marks_milestones_at_the_nearest_checkpoint(tmp_path):
    steps = np.array([1, 2, 4, 8, 16])
    scores = np.arange(15.0).reshape(5, 3)
    fig = plot_trajectory(steps, scores, [Milestone(7, 16, "cusp", 1.0, "ed")])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["7"]
    assert tuple(ax.texts[0].xy) == (9.0, 10.0)  # checkpoint at step 8
    assert len(ax.collections[0].get_offsets()) == 5
    assert_png(save_png(fig, tmp_path / "ed.png"))
    with pytest.raises(ValueError, match="at least two components"):
        plot_trajectory(steps, scores[:, :1])


def test_without_matplotlib_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install lightning-devinterp\[plot\]"):
        plot_llc_curve(history())


def test_a_series_without_std_is_drawn_without_band_or_error_bars():
    fig = plot_curve(history(), "llc/mean", ylabel="L(w*)")
    (ax,) = fig.axes
    assert len(ax.collections) == 0 and len(ax.lines) == 1
    assert (ax.get_ylabel(), ax.get_title(), ax.get_xscale()) == ("L(w*)", "llc/mean", "log")


def test_formation_figure_keeps_its_panels_with_long_milestone_labels(tmp_path):
    """Four milestones at one step make a label taller than a panel: it must not shrink the
    panels (measured: 0.43 of the figure's height each, 0.19 if the label took part in the
    layout)."""
    loss = [(s, 2.0 - 0.1 * i) for i, s in enumerate(STEPS) if s > 0]
    llc = [(s, 5.0 + i) for i, s in enumerate(STEPS) if s > 0]
    many = [Milestone(16, 32, "plateau_end", 1.0, f"rllc/l{i}h{i}") for i in range(4)]
    fig = plot_formation(loss, llc, many, formation=16, tolerance=0.3)
    assert_png(save_png(fig, tmp_path / "formation.png"))  # lays the figure out
    top, bottom = fig.axes
    assert top.get_position().height > 0.35 and bottom.get_position().height > 0.35
    assert bottom.get_lines()[0].get_ydata()[-1] == llc[-1][1]
    with pytest.raises(ValueError, match="no LLC"):
        plot_formation(loss, [], many, formation=None, tolerance=0.3)
