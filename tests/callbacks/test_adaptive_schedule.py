"""The training loss watched at every step: its milestones, announced between estimates, and
the adaptive schedule (extra estimates right after its bends, ``extra_estimates``); why each
estimate was taken (``<name>/why``); resume."""

from __future__ import annotations

import json
import math

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_devinterp import SGLD, LLCMonitor
from lightning_devinterp.callbacks.loss_bends import (
    LATE,
    MIN_SPACING,
    PER_BEND,
    SPACING,
    LossBends,
    training_loss,
)
from lightning_devinterp.callbacks.schedule import log_spaced_steps
from lightning_devinterp.demos.deep_linear import (
    DeepLinearNetwork,
    TeacherData,
    half_mse,
    transition_steps,
)
from lightning_devinterp.milestones import train_loss_detector
from lightning_devinterp.reporting.figures import plot_llc_curve


def same(value):
    return value


def first_of(scheduled):
    """``first_due(after, step)`` of a schedule of these steps."""
    return lambda after, step: min((s for s in scheduled if after < s <= step), default=None)


def feed(bends: LossBends, losses, steps, scheduled=(), last_step=10_000):
    for step, loss in zip(steps, losses, strict=True):
        bends.observe(int(step), torch.tensor(loss), first_of(scheduled), last_step, same)


def dropping_loss(seed: int, at: int = 120, last: int = 600, noise: float = 0.03):
    """A loss flat at 1, falling to 0.2 over a tenth of a decade from ``at``, multiplicative
    noise ``noise`` per batch."""
    rng = np.random.default_rng(seed)
    steps = np.arange(1, last + 1)
    fall = np.clip((np.log10(steps) - math.log10(at)) / 0.1, 0, 1)
    return steps, np.exp(np.log(0.2) * fall + noise * rng.standard_normal(len(steps)))


@pytest.mark.parametrize("seed", range(5))
def test_a_drop_of_the_loss_plans_extra_estimates_right_after_it(seed):
    steps, losses = dropping_loss(seed)
    bends = LossBends(PER_BEND, "llc")
    feed(bends, losses, steps)
    assert bends.bends, "the drop is seen"
    kind, at, seen = bends.bends[0]
    assert abs(math.log10(at / 120)) <= 0.1 and math.log10(seen / at) <= 0.12, bends.bends
    planned = bends.planned
    assert len(planned) == PER_BEND and planned[0] == seen + 1
    assert np.allclose(np.diff(np.log10(planned)), SPACING, atol=0.01)
    assert bends.used == PER_BEND and not bends.watching  # the cap is reached


@pytest.mark.parametrize("seed", range(5))
def test_a_power_law_loss_plans_nothing(seed):
    """A loss falling as a power of the step (a straight line on log-log axes) has no bend."""
    rng = np.random.default_rng(seed)
    steps = np.arange(1, 3001)
    losses = 3.0 * steps**-0.4 * np.exp(0.05 * rng.standard_normal(len(steps)))
    bends = LossBends(6, "llc")
    feed(bends, losses, steps)
    assert bends.bends == [] and bends.planned == []


@pytest.mark.parametrize("noise", [0.2, 0.5])
def test_a_power_law_with_noisy_batches_gives_no_milestone(noise):
    """Bins late in a run average hundreds of batches, early ones one: each bin's mean counts
    as that many observations (``weight``), so the noisy early bins do not pass for bends
    next to the quiet late ones (counted as one each, 5 of these 16 runs had one)."""
    steps = np.arange(1, 10_001)
    for seed in range(8):
        rng = np.random.default_rng(seed)
        noisy = 3.0 * steps**-0.3 * np.exp(noise * rng.standard_normal(len(steps)))
        bends = LossBends(0, "llc", train_loss_detector("llc"))
        feed(bends, noisy, steps)
        assert bends.finish(same) == [] and bends.detector.milestones == [], (seed, bends.bends)


@pytest.mark.parametrize("seed", range(4))
def test_a_bend_seen_late_plans_nothing(seed):
    """A gentle fall from a plateau (0.2 per decade in log loss) is confirmed 0.18-0.3
    decades after it: the schedule's own points already follow it."""
    rng = np.random.default_rng(seed)
    steps = np.arange(1, 5001)
    fall = -0.2 * np.clip(np.log10(steps) - 2.5, 0, None)
    bends = LossBends(9, "llc")
    feed(bends, np.exp(fall + 0.05 * rng.standard_normal(len(steps))), steps)
    assert any(abs(math.log10(at / 316)) <= 0.15 for _, at, _ in bends.bends), bends.bends
    assert all(math.log10(seen / at) > LATE for _, at, seen in bends.bends)
    assert bends.planned == [] and bends.used == 0


def test_the_cap_the_schedule_and_the_run_end_limit_the_extra_estimates(caplog):
    steps, losses = dropping_loss(0)
    capped = LossBends(2, "llc")
    feed(capped, losses, steps)
    assert len(capped.planned) == 2
    spent = "(2 of 2 extra estimates used; none left for later bends: a larger extra_estimates"
    assert spent in caplog.text
    caplog.clear()
    free = LossBends(3, "llc")
    feed(free, losses, steps)
    assert "(3 of 3 extra estimates used; none left" in caplog.text
    roomy = LossBends(4, "llc")
    feed(roomy, losses, steps)
    assert "(3 of 4 extra estimates used)." in caplog.text
    first, second, third = free.planned
    near = LossBends(3, "llc")  # a scheduled step next to the second: the grid's fourth instead
    feed(near, losses, steps, scheduled={second + 1})
    fourth = round(first * 10 ** (3 * SPACING))
    assert near.planned == [first, third, fourth]
    short = LossBends(3, "llc")  # a run ending at the second: all three before it, closer
    feed(short, losses, steps, last_step=second)
    assert len(short.planned) == 3 and short.planned[0] == first and short.planned[-1] < second
    gaps = np.diff(np.log10(short.planned))
    assert np.allclose(gaps, SPACING / 3, atol=0.004)  # steps near 130 are rounded
    shorter = LossBends(3, "llc")  # never closer than MIN_SPACING: two fit before its end
    end = round(first * 10 ** (1.5 * MIN_SPACING))
    feed(shorter, losses, steps, last_step=end)
    assert shorter.planned == [first, round(first * 10**MIN_SPACING)]


@pytest.mark.parametrize("seed", range(5))
def test_the_new_plateau_after_a_drop_is_the_same_move(seed):
    """The loss reaches its new level (a plateau's start) while the drop's extra estimates
    run: no more are planned for it, and the rest are kept for later bends."""
    steps, losses = dropping_loss(seed, last=2000)
    bends = LossBends(9, "llc")
    feed(bends, losses, steps)
    assert [kind for kind, _, _ in bends.bends] == ["drop", "plateau_start"], bends.bends
    assert bends.bends[1][1] <= bends.covered == bends.planned[-1]
    assert len(bends.planned) == bends.used == PER_BEND


@pytest.mark.parametrize("cut", [110, 140])
def test_the_state_round_trips_and_the_watch_goes_on_as_if_uninterrupted(cut):
    """Saved before the drop, or after it and before the new plateau."""
    steps, losses = dropping_loss(1, last=2000)
    whole = LossBends(9, "llc")
    feed(whole, losses, steps)
    first = LossBends(9, "llc")
    feed(first, losses[:cut], steps[:cut])
    state = json.loads(json.dumps(first.state_dict()))
    resumed = LossBends(9, "llc")
    resumed.load_state_dict(state)
    feed(resumed, losses[cut:], steps[cut:])
    assert resumed.planned == whole.planned and resumed.bends == whole.bends
    assert resumed.used == whole.used and resumed.covered == whole.covered


def test_a_loss_that_cannot_be_read_stops_the_watch_and_says_why(caplog):
    bends = LossBends(3, "llc")
    for step in range(1, 5):
        bends.observe(step, None, first_of(()), 100, same)
    assert not bends.watching
    assert "not in training_step's output" in caplog.text
    negative = LossBends(3, "llc")
    feed(negative, [-1.0, -1.0, -1.0], [1, 2, 3])
    assert (
        not negative.watching
        and "not watched from here on (no training-loss milestones, no extra estimates): it is -1"
        in caplog.text
    )
    broken = LossBends(3, "llc")
    feed(broken, [1.0, math.nan, 1.0], [1, 2, 3])
    assert not broken.watching and "it is nan" in caplog.text


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_loss_is_averaged_in_float32(dtype):
    """A bin late in a run holds hundreds of steps (steps 10,001-10,471 here): summed in half
    precision, the sum would stop growing long before its end."""
    bends = LossBends(0, "llc", train_loss_detector("llc"))
    loss = torch.tensor(1.7, dtype=dtype)
    for step in range(10_001, 10_472):
        bends.observe(step, training_loss(loss), first_of(()), 20_000, same)
    bends.finish(same)
    bends.detector.finish()
    [value] = bends.detector.state_dict()["bin_values"]
    assert value == pytest.approx(math.log(loss.item()), abs=1e-6)


@pytest.mark.parametrize("bad", [-1, 1.5, 0.0, True, "3", None])
def test_bad_extra_estimates_are_refused_with_the_fix(bad):
    with pytest.raises(ValueError, match=r"extra_estimates=.* integer >= 0"):
        LLCMonitor(extra_estimates=bad)


# ---------------------------------------------------------------- in a real Trainer

STOP_AT = 280  # between the second transition's first and last extra estimates (264, 289, 317)


class StopAt(L.Callback):
    """Stops training after step ``step`` (an interrupted run)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def dln_fit(root, callbacks, ckpt_path=None, max_steps=800):
    """A deep linear network (transitions near steps 65, 250 and 780), unshuffled so that a
    resumed run retraces the same weights."""
    data = TeacherData(2048, input_dim=16, output_dim=16, singular_values=(3.0, 1.0, 0.33))
    model = DeepLinearNetwork((16, 4, 4, 16), init_scale=0.03, lr=0.1, seed=0, data=data)
    trainer = L.Trainer(
        default_root_dir=root,
        max_steps=max_steps,
        callbacks=callbacks,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(data, batch_size=256, collate_fn=TeacherData.collate)
    trainer.fit(model, loader, ckpt_path=ckpt_path)
    return model


def adaptive_monitor(**overrides) -> LLCMonitor:
    settings = dict(
        sampler=SGLD(lr=8e-4, nbeta=30.0, localization=100.0),
        num_chains=2,
        num_draws=20,
        num_burnin=10,
        init_loss_batches=2,
        loss_fn=half_mse,
        at_steps=[10, 30, 100, 200, 400, 800],
        extra_estimates=6,
        at_train_end=True,
        figure_every=None,
        milestones=False,
    )
    return LLCMonitor(**(settings | overrides))


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    monitor = adaptive_monitor(milestones=True)
    model = dln_fit(tmp_path_factory.mktemp("whole"), [monitor], max_steps=801)
    return monitor, [t for t in transition_steps(model.modes) if t is not None]


def test_extra_estimates_follow_the_transitions_and_say_why(whole_run):
    monitor, transitions = whole_run
    why = {r["step"]: r["llc/why"] for r in monitor.history}
    adaptive = [s for s, w in why.items() if w == "adaptive"]
    assert 3 <= len(adaptive) <= 6, why
    for step in adaptive:  # each right after a transition
        assert min(abs(math.log10(step / t) - 0.1) for t in transitions) <= 0.1, (step, why)
    assert why[801] == "train_end"
    assert {why[s] for s in (10, 30, 100, 200, 400, 800)} == {"scheduled"}
    written = [json.loads(line) for line in monitor.jsonl_path.read_text().splitlines()]
    assert [r["llc/why"] for r in written] == list(why.values())
    # the LLC curve rings them
    figure = plot_llc_curve(monitor.history)
    [ringed] = [line for line in figure.axes[0].lines if line.get_label() == "after a loss bend"]
    assert list(ringed.get_xdata()) == adaptive


def test_the_training_loss_milestones_come_right_after_the_transitions(whole_run):
    """The training loss drops at each transition; each drop is announced within 0.1 decades
    of it (measured 0.04-0.06), as it is confirmed, between two estimates, and it reaches the
    milestone file and the stage view."""
    monitor, transitions = whole_run
    drops = [m for m in monitor.milestones if m.series == "train_loss"]
    assert [m.kind for m in drops] == ["drop"] * len(transitions), drops
    for m, t in zip(drops, transitions, strict=True):
        assert abs(math.log10(m.step / t)) <= 0.1 and m.detected_at > m.step, (m, t)
        assert math.log10(m.detected_at / m.step) <= 0.1, m
    estimated = {r["step"] for r in monitor.history}
    assert all(m.detected_at not in estimated for m in drops)
    saved = json.loads(monitor.milestones_path.read_text())
    assert [m["step"] for m in saved["online"] if m["series"] == "train_loss"] == [
        m.step for m in drops
    ]
    assert len(saved["stages"]["train_loss"]) == len(drops) + 1
    assert "train_loss" in monitor.history[-1]["llc/stage_view"]


def test_a_resumed_run_takes_the_same_extra_estimates(whole_run, tmp_path):
    whole, _ = whole_run
    first = adaptive_monitor(milestones=True)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=STOP_AT)
    dln_fit(tmp_path / "a", [first, checkpoints, StopAt(STOP_AT)], max_steps=801)
    pending = first.cadence.loss_bends.planned
    assert pending, "the interruption falls between a bend's extra estimates"
    resumed = adaptive_monitor(milestones=True)
    ckpt = str(next((tmp_path / "ck").glob("*.ckpt")))
    dln_fit(tmp_path / "b", [resumed], ckpt_path=ckpt, max_steps=801)
    steps = [(r["step"], r["llc/why"]) for r in resumed.history]
    assert steps == [(r["step"], r["llc/why"]) for r in whole.history]
    assert set(pending) <= {s for s, why in steps if why == "adaptive"}
    # the training loss's detector (the tracker's) goes on where it was
    assert resumed.milestones == whole.milestones


def test_extra_estimates_stay_within_max_overhead(tmp_path):
    """Extra estimates are asked for like scheduled ones: the budget defers or skips them, and
    the monitor's share of the run stays within max_overhead up to each estimate (its record's
    overhead). The whole run's share also counts the estimate forced at train end, which runs
    whatever the budget (about 0.04 s of this run's 1.3 s: 0.03 more, or up to 0.05 on a busy
    machine); without the budget the share is 0.33."""
    monitor = adaptive_monitor(max_overhead=0.2)
    dln_fit(tmp_path, [monitor], max_steps=801)
    assert all(r["llc/overhead"] < 0.2 for r in monitor.history)
    assert monitor.budget.share <= 0.25, monitor.budget.share
    assert any(r["llc/why"] == "adaptive" for r in monitor.history)


def test_extra_estimates_confirm_the_transitions_sooner_than_a_fixed_grid(tmp_path):
    """12 log-spaced estimates plus up to 9 after loss bends against 21 fixed ones, on the
    same 1500 steps: both find each of the three transitions (an LLC milestone within 0.2
    decades), the adaptive schedule with fewer estimates confirms each within 0.15 decades
    of its step (measured 0.07-0.11; the fixed grid's spacing, 0.13 decades, makes it wait
    0.23 for each)."""
    found = {}
    for extra, base in ((0, 21), (9, 12)):
        monitor = adaptive_monitor(
            milestones=True,
            num_draws=100,
            num_burnin=50,
            at_steps=sorted(log_spaced_steps(1500, base, 8)),
            extra_estimates=extra,
            at_train_end=False,
        )
        model = dln_fit(tmp_path / str(extra), [monitor], max_steps=1500)
        transitions = transition_steps(model.modes)
        llc = [m for m in monitor.milestones if m.series == "llc"]
        nearest = [min(llc, key=lambda m, t=t: abs(math.log10(m.step / t))) for t in transitions]
        assert all(
            abs(math.log10(m.step / t)) <= 0.2 for m, t in zip(nearest, transitions, strict=True)
        ), (extra, transitions, llc)
        found[extra] = ([math.log10(m.detected_at / m.step) for m in nearest], monitor.history)
    (fixed, fixed_history), (adaptive, adaptive_history) = found[0], found[9]
    assert max(adaptive) <= 0.15 and np.median(fixed) >= 0.2, (adaptive, fixed)
    assert len(adaptive_history) <= len(fixed_history)
