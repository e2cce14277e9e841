"""LLCMonitor(max_overhead=...): the share of wall-clock time spent in the monitor, measured
from outside by callbacks around it in a real Trainer run, and the deferral rule."""

from __future__ import annotations

import time

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_devinterp import SGLD, LLCMonitor, SusceptibilityMonitor
from lightning_devinterp.callbacks.budget import OverheadBudget
from tests.helpers import RegressionModule, regression_data, trainer

#: About 0.1 s per estimate on the 2-core CI machine: 50 training steps' worth.
EXPENSIVE = dict(
    sampler=SGLD(lr=1e-4, nbeta=10.0, localization=100.0),
    num_chains=2,
    num_draws=60,
    milestones=False,
    figure_every=None,
)


def same(value):
    """``sync`` of a single process."""
    return value


class Stopwatch(Callback):
    """Placed before and after the monitor: the time between its two instances' hooks is the
    monitor's, measured from outside."""

    def __init__(self, marks: list[float]):
        self.marks = marks

    def on_train_start(self, *args):
        self.marks.append(time.perf_counter())

    def on_train_batch_end(self, *args):
        self.marks.append(time.perf_counter())

    def on_train_end(self, *args):
        self.marks.append(time.perf_counter())


def test_an_expensive_monitor_stays_within_its_budget_and_still_estimates(tmp_path):
    """Estimating at every step would take ~98% of the time; with max_overhead=0.2 the share
    measured from outside ends within 0.05 of the budget (one estimate's cost, 0.1 s, is about
    0.05 of the run: an estimate dearer than predicted overshoots by its excess) and above half
    of it (estimates run as soon as the budget allows; between the last one and the end of
    the run the share falls by at most a factor ~0.7)."""
    marks: list[float] = []
    monitor = LLCMonitor(every_n_steps=1, max_overhead=0.2, **EXPENSIVE)
    L.seed_everything(0, verbose=False)
    callbacks = [Stopwatch(marks), monitor, Stopwatch(marks)]
    trainer(tmp_path, callbacks=callbacks, max_steps=2000).fit(RegressionModule())

    inside = sum(after - before for before, after in zip(marks[::2], marks[1::2], strict=True))
    share = inside / (marks[-1] - marks[0])
    assert 0.1 <= share <= 0.25, share
    assert monitor.budget.share == pytest.approx(share, abs=0.02)
    steps = [r["step"] for r in monitor.history]
    assert len(steps) >= 4  # the first after ~500 steps (its cost predicted), then every ~300
    # every step was scheduled: each record counts the steps skipped since the one before
    assert [r["llc/skipped"] for r in monitor.history] == [
        b - a - 1 for a, b in zip([0, *steps], steps, strict=False)
    ]
    assert all(0 < r["llc/overhead"] < 0.2 for r in monitor.history)


def test_a_deferred_estimate_runs_later_and_says_from_which_step(tmp_path):
    """An estimate of 120 SGLD steps is predicted to cost 120 training steps; at
    max_overhead=0.3 it is affordable after 120 * 0.7 / 0.3 = 280 steps of training: the
    estimate scheduled at step 2 waits until then."""
    monitor = LLCMonitor(at_steps=[2], max_overhead=0.3, **EXPENSIVE)
    L.seed_everything(0, verbose=False)
    trainer(tmp_path, callbacks=[monitor], max_steps=400).fit(RegressionModule())
    (record,) = monitor.history
    assert record["llc/deferred_from"] == 2 and record["llc/skipped"] == 0
    assert 250 <= record["step"] <= 310 and record["llc/overhead"] < 0.3


def test_the_rule_defers_then_skips_then_runs_when_the_clock_allows():
    budget = OverheadBudget(0.2)
    budget.sgld_steps = 10
    assert budget.admit(0, due=True, sync=same) is None  # no step timed yet
    assert budget.checkpoint == 1
    budget.training_seconds, budget.steps_trained = 0.1, 1
    # the first estimate is predicted at 10 steps of 0.1 s: 1 s, so 4 s of training first
    assert budget.admit(1, due=False, sync=same) is None and budget.checkpoint == 40
    budget.training_seconds, budget.steps_trained = 4.0, 40
    assert budget.admit(40, due=False, sync=same) == 0
    budget.analysis_seconds = 1.0
    budget.spent(40, cost=1.0, sync=same)
    # then the measured cost: (A + c)(1 - f) / f - T = (1 + 1) * 4 - 4 = 4 s more, 40 steps
    assert budget.checkpoint == 80
    assert budget.admit(50, due=True, sync=same) is None
    assert budget.admit(60, due=True, sync=same) is None  # replaces step 50
    assert budget.admit(79, due=False, sync=same) is None
    # at the checkpoint the clock says no (training was faster than planned): look again later
    budget.training_seconds, budget.steps_trained = 6.0, 80
    assert budget.admit(80, due=False, sync=same) is None and budget.checkpoint == 107
    budget.training_seconds = 8.0
    assert budget.admit(107, due=False, sync=same) == 60
    assert budget.record() == {"overhead": 1.0 / 9.0, "skipped": 1}
    assert budget.pending is None and budget.record()["skipped"] == 0


def test_budget_state_survives_a_resume(tmp_path):
    def module():
        m = RegressionModule(noisy=False)
        m.train_dataloader = lambda: DataLoader(regression_data(), batch_size=32)
        return m

    cheap = {**EXPENSIVE, "num_draws": 10}
    first = LLCMonitor(every_n_steps=1, max_overhead=0.5, **cheap)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=60)
    L.seed_everything(0, verbose=False)
    trainer(tmp_path / "a", callbacks=[first, ckpt], enable_checkpointing=True, max_steps=60).fit(
        module()
    )
    path = next((tmp_path / "ck").glob("*.ckpt"))
    saved = torch.load(path, weights_only=False)["callbacks"][first.state_key]["budget"]
    resumed = LLCMonitor(every_n_steps=1, max_overhead=0.5, **cheap)
    L.seed_everything(0, verbose=False)
    trainer(tmp_path / "b", callbacks=[resumed], max_steps=61).fit(module(), ckpt_path=str(path))
    assert saved["costs"] and resumed.budget.costs[: len(saved["costs"])] == saved["costs"]
    assert resumed.budget.analysis_seconds >= saved["analysis_seconds"]
    assert resumed.budget.steps_trained == saved["steps_trained"] + 1
    assert resumed.history[: len(first.history)] == first.history


@pytest.mark.parametrize("value", [0, 1, -0.1, 1.5, True, "0.2"])
def test_bad_max_overhead_fails_at_construction(value):
    with pytest.raises(ValueError, match=f"max_overhead={value!r} is invalid.*between 0 and 1"):
        LLCMonitor(max_overhead=value)


def test_susceptibility_monitor_inherits_the_budget():
    monitor = SusceptibilityMonitor({"p": [None]}, max_overhead=0.3)
    assert monitor.budget is not None and monitor.budget.max_overhead == 0.3
    assert LLCMonitor().budget is None
