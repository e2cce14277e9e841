"""The demo on a shortened run: induction heads form and a milestone marks it, online."""

from __future__ import annotations

import math

import pytest

from lightning_devinterp.callbacks.schedule import log_spaced_steps
from lightning_devinterp.demo import (
    TOLERANCE,
    _logger,
    run_demo,
    steepest_drop,
    summary,
)


def test_log_spaced_steps_from_a_first_step_and_steepest_drop():
    assert log_spaced_steps(1000, 3, first=10) == {10, 100, 1000}
    # a curve that falls fastest (per log step) between 100 and 200
    points = [(s, 2.0) for s in (10, 20, 50)] + [(100, 2.0), (200, 1.0)]
    points += [(s, 1.0) for s in (400, 800, 1600)]
    assert steepest_drop(points) == round(math.sqrt(100 * 200))
    assert steepest_drop(points[:2]) is None


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """The demo's 3000 steps with cheaper analysis: LLC on copied sequences at 48 log-spaced
    steps (2 chains x 40 draws), no per-head LLCs, no susceptibilities (about 70 s on 2 CPU
    cores)."""
    out = tmp_path_factory.mktemp("demo")
    return run_demo(
        out, max_steps=3000, num_estimates=16, num_draws=40, heads=False, susceptibilities=False
    )


def test_the_copy_loss_falls_and_a_milestone_marks_it_online(short_run):
    assert short_run.formation_step is not None and 200 < short_run.formation_step < 1500
    found = short_run.induction_milestone
    assert short_run.detected, summary(short_run)
    assert found.detected_at <= 3000 and found.series.startswith(("llc", "copies"))
    assert abs(math.log10(found.step / short_run.formation_step)) <= TOLERANCE


def test_the_summary_names_the_stages_the_milestones_and_the_outputs(short_run):
    text = summary(short_run)
    assert "Stages of the copies LLC curve" in text and "detected within 0.3" in text
    assert (short_run.output_dir / "logs").is_dir() and short_run.figures


def test_wandb_runs_offline_without_credentials_and_a_bad_logger_is_named(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE"):  # unset, and restored afterwards (Lightning
        monkeypatch.setenv(name, "")  # sets WANDB_MODE itself for an offline run)
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = _logger("wandb", tmp_path)
    assert logger._offline
    logger.log_metrics({"x": 1.0}, step=0)  # starts a real run: offline, no key asked for
    logger.experiment.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    with pytest.raises(ValueError, match="'tensorboard' or 'wandb'"):
        _logger("mlflow", tmp_path)
