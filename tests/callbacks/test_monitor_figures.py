"""LLCMonitor's live figures in real Trainer runs: TensorBoard images read back with
TensorBoard's own reader, PNG files beside the JSON-lines file, the cadence, the calibration
figures, and a run without matplotlib."""

from __future__ import annotations

import io
import logging
import sys

import lightning as L
import numpy as np
import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_devinterp import SGLD, Component, LLCMonitor
from tests.helpers import AnnouncesAt, AnnouncesAtFinish, RegressionModule, trainer

FAST = dict(sampler=SGLD(lr=1e-4, nbeta=10.0, localization=100.0), num_chains=2, num_draws=10)
PNG = b"\x89PNG\r\n\x1a\n"


def components():
    probe = RegressionModule()
    return [
        Component("a", Component.from_patterns(probe, "net.0.weight").masks, group="l0"),
        Component("b", Component.from_patterns(probe, "net.4.*").masks, group="l1"),
    ]


def fit(tmp_path, monitor, max_steps):
    logger = TensorBoardLogger(tmp_path, name="tb")
    L.seed_everything(0, verbose=False)
    trainer(tmp_path, callbacks=[monitor], max_steps=max_steps, logger=logger).fit(
        RegressionModule()
    )
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    return events


def image_steps(events, tag):
    return [e.step for e in events.Images(tag)] if tag in events.Tags()["images"] else []


def test_each_figure_is_drawn_once_for_its_png_and_tensorboard(tmp_path, monkeypatch):
    """One Agg draw per figure and update: the PNG file and the TensorBoard image are the same
    pixels (they were drawn twice, by savefig and by add_figure)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.image import imread

    draws = []
    original = FigureCanvasAgg.draw
    monkeypatch.setattr(FigureCanvasAgg, "draw", lambda canvas: draws.append(1) or original(canvas))
    monitor = LLCMonitor(every_n_steps=2, milestones=False, figure_every=2, **FAST)
    events = fit(tmp_path, monitor, max_steps=7)
    images = events.Images("llc/curve")
    assert [e.step for e in images] == [4, 6] and len(draws) == 2
    on_disk = imread(monitor.jsonl_path.parent / "llc_curve.png")
    logged = imread(io.BytesIO(images[-1].encoded_image_string))
    assert on_disk.shape == logged.shape and np.array_equal(on_disk, logged)


def test_curve_and_heads_at_every_nth_estimate_and_at_train_end(tmp_path):
    monitor = LLCMonitor(
        every_n_steps=2, components=components(), milestones=False, figure_every=2, **FAST
    )
    events = fit(tmp_path, monitor, max_steps=7)
    # estimates at 2, 4, 6: drawn after the second one and, with a newer one, at train end
    assert image_steps(events, "llc/curve") == [4, 6]
    assert image_steps(events, "rllc/heads") == [4, 6]
    for image in events.Images("llc/curve"):
        assert image.encoded_image_string.startswith(PNG) and image.width > 100
    folder = monitor.jsonl_path.parent
    for name in ("llc_curve.png", "rllc_heads.png"):
        assert (folder / name).read_bytes().startswith(PNG)
    assert not list(folder.glob("*calibration*"))


def test_the_training_loss_figure_shows_the_bins_its_detector_reads(tmp_path):
    monitor = LLCMonitor(every_n_steps=2, figure_every=2, **FAST)
    events = fit(tmp_path, monitor, max_steps=7)
    assert image_steps(events, "llc/train_loss") == [4, 6]
    assert (monitor.jsonl_path.parent / "llc_train_loss.png").read_bytes().startswith(PNG)
    detector = monitor.tracker.detector_of("train_loss")
    figure = monitor._figure_builders()["llc/train_loss"]()
    [data] = [line for line in figure.axes[0].lines if line.get_marker() == "o"]
    assert list(data.get_xdata()) == [step for step, _ in detector.points] == list(range(1, 8))


def test_a_confirmed_milestone_draws_the_figure_with_it_marked(tmp_path):
    monitor = LLCMonitor(every_n_steps=2, milestones=AnnouncesAt(4), figure_every=10, **FAST)
    events = fit(tmp_path, monitor, max_steps=6)
    assert image_steps(events, "llc/curve") == [4, 6]  # the milestone, then train end
    assert image_steps(events, "rllc/heads") == []  # no components
    figure = monitor._figure_builders()["llc/curve"]()
    (axes,) = figure.axes
    marked = [line.get_xdata()[0] for line in axes.lines if line.get_linestyle() == "--"]
    assert marked == [3]


def test_a_milestone_settled_at_train_end_is_drawn(tmp_path):
    """The last estimate drew the figures; the milestone the detector settles after it (no
    estimate follows) draws them again, with it marked."""
    monitor = LLCMonitor(every_n_steps=2, milestones=AnnouncesAtFinish(), figure_every=3, **FAST)
    events = fit(tmp_path, monitor, max_steps=6)
    assert image_steps(events, "llc/curve") == [6, 6]  # the third estimate, then the milestone
    (axes,) = monitor._figure_builders()["llc/curve"]().axes
    assert [line.get_xdata()[0] for line in axes.lines if line.get_linestyle() == "--"] == [5]


def test_calibration_figures_once_after_calibrating(tmp_path):
    calibration = dict(nbeta=10.0, localizations=[100.0], lrs=[1e-2, 1e-3], num_draws=20)
    monitor = LLCMonitor(
        sampler="auto",
        every_n_steps=2,
        num_chains=2,
        num_draws=10,
        calibration=calibration,
        milestones=False,
        figure_every=10,
    )
    events = fit(tmp_path, monitor, max_steps=4)
    assert image_steps(events, "llc/calibration/llc") == [2]
    assert image_steps(events, "llc/calibration/traces") == [2]
    assert image_steps(events, "llc/curve") == [4]  # train end
    folder = monitor.jsonl_path.parent
    assert sorted(p.name for p in folder.glob("*.png")) == [
        "llc_calibration_llc.png",
        "llc_calibration_traces.png",
        "llc_curve.png",
    ]


def test_figure_every_none_draws_nothing(tmp_path):
    monitor = LLCMonitor(every_n_steps=1, figure_every=None, **FAST)
    events = fit(tmp_path, monitor, max_steps=2)
    assert events.Tags()["images"] == [] and not list(monitor.jsonl_path.parent.glob("*.png"))


def test_without_matplotlib_figures_are_skipped_with_one_message(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    caplog.set_level(logging.INFO)
    monitor = LLCMonitor(every_n_steps=1, figure_every=1, **FAST)
    events = fit(tmp_path, monitor, max_steps=4)
    assert len(monitor.history) == 4
    skipped = [r.message for r in caplog.records if "figures skipped" in r.message]
    assert len(skipped) == 1 and "pip install lightning-devinterp[plot]" in skipped[0]
    assert events.Tags()["images"] == []
    assert not list(monitor.jsonl_path.parent.glob("*.png"))


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_bad_figure_every_fails_at_construction(value):
    with pytest.raises(ValueError, match=f"figure_every={value!r} is invalid"):
        LLCMonitor(figure_every=value)
