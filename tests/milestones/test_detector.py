"""MilestoneDetector: accuracy on synthetic curves with planted critical points, delays,
online vs refined, state round trip, cost, and input validation.

Synthetic curves are piecewise linear in log10(step) (so every critical point is a
well-defined corner), sampled at log-spaced steps between 10 and 100000 (4 decades),
with i.i.d. Gaussian noise. A found milestone matches a planted critical point when it
is within ``TOL`` decades of it (one-to-one, nearest first). Run with ``pytest -s`` to
see the table.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from lightning_devinterp.milestones import Milestone, MilestoneDetector, Stage
from lightning_devinterp.milestones.state import fields_since

TOL = 0.15  # decades of step
SEEDS = range(8)

# (log10-step knots, values): the smallest change between critical points is 0.6
CURVES = {
    "rise-plateau-rise": ([1, 2, 2.6, 3.6, 4.2, 5], [0, 0, 1, 1, 2, 2]),
    "peak-trough": ([1, 2, 3, 3.8, 5], [0, 1, 0.2, 0.2, 1.2]),
    "llc-like": ([1, 1.6, 2.2, 3.0, 3.5, 4.2, 5], [0, 0.9, 1.2, 1.2, 0.6, 1.4, 1.4]),
}
NOISES = (0.02, 0.05, 0.1)
SIZES = (60, 200)


def planted(kx: list[float], ky: list[float]) -> list[tuple[float, str]]:
    """Critical points of a piecewise-linear curve: corners where the trend changes."""

    def trend(s: float) -> str:
        return "rising" if s > 0 else "falling" if s < 0 else "flat"

    out = []
    for i in range(1, len(kx) - 1):
        before = trend((ky[i] - ky[i - 1]) / (kx[i] - kx[i - 1]))
        after = trend((ky[i + 1] - ky[i]) / (kx[i + 1] - kx[i]))
        if before == after:
            continue
        if (before, after) == ("rising", "falling"):
            kind = "peak"
        elif (before, after) == ("falling", "rising"):
            kind = "trough"
        elif after == "flat":
            kind = "plateau_start"
        else:
            kind = "plateau_end"
        out.append((kx[i], kind))
    return out


def log_steps(n: int) -> np.ndarray:
    return np.unique(np.round(np.logspace(1, 5, n)).astype(int))


def noisy_series(
    kx: list[float], ky: list[float], noise: float, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The table's series: the curve through (kx, ky) at ``n`` log-spaced steps, with
    Gaussian noise of sd ``noise`` (seeded by ``n`` and ``seed``): (steps, values)."""
    steps = log_steps(n)
    rng = np.random.default_rng(1000 * n + seed)
    values = np.interp(np.log10(steps), kx, ky)
    return steps, values + noise * rng.standard_normal(len(steps))


def run_detector(steps: np.ndarray, values: np.ndarray, **kw) -> MilestoneDetector:
    det = MilestoneDetector(**kw)
    for s, v in zip(steps, values, strict=True):
        det.update(int(s), float(v))
    return det


def match(found: list[float], truth: list[float], tol: float) -> list[tuple[int, int]]:
    """One-to-one matching of found to true positions (pairs of indices), nearest first."""
    pairs = sorted(
        (abs(f - t), i, j)
        for i, f in enumerate(found)
        for j, t in enumerate(truth)
        if abs(f - t) <= tol
    )
    used_f: set[int] = set()
    used_t: set[int] = set()
    out = []
    for _, i, j in pairs:
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
            out.append((i, j))
    return out


def accuracy_table(seeds=SEEDS, tol: float = TOL) -> dict[tuple[float, int], dict[str, float]]:
    """Online and refined detection quality per (noise, points) over all curves and seeds."""
    table = {}
    for noise in NOISES:
        for n in SIZES:
            tp = n_found = n_true = kind_ok = ref_tp = ref_found = 0
            delays: list[int] = []
            delays_dec: list[float] = []
            delays_fast: list[int] = []  # milestones after which the series moves
            delays_fast_dec: list[float] = []
            dist: list[float] = []
            for kx, ky in CURVES.values():
                truth = planted(kx, ky)
                for seed in seeds:
                    steps, values = noisy_series(kx, ky, noise, n, seed)
                    det = run_detector(steps, values)
                    found = [math.log10(m.step) for m in det.milestones]
                    pairs = match(found, [t for t, _ in truth], tol)
                    tp += len(pairs)
                    kind_ok += sum(det.milestones[i].kind == truth[j][1] for i, j in pairs)
                    n_found += len(found)
                    n_true += len(truth)
                    for m in det.milestones:
                        # points from the one nearest the milestone (which may lie between
                        # two, at its fitted knot) to the one that confirmed it
                        at = np.argmin(np.abs(np.log10(steps) - math.log10(m.step)))
                        delays.append(int(np.searchsorted(steps, m.detected_at) - at))
                        delays_dec.append(math.log10(m.detected_at / m.step))
                        # a plateau start is told from a slow move late; a milestone moved
                        # later (``revises``) was announced at its first place before
                        if m.kind != "plateau_start" and m.revises is None:
                            delays_fast.append(delays[-1])
                            delays_fast_dec.append(delays_dec[-1])
                    refined = [math.log10(m.step) for m in det.refine()]
                    ref_tp += len(match(refined, [t for t, _ in truth], tol))
                    ref_found += len(refined)
                    dist += [min((abs(f - r) for r in refined), default=math.inf) for f in found]
            table[(noise, n)] = {
                "recall": tp / n_true,
                "precision": tp / max(n_found, 1),
                "kind_ok": kind_ok / max(tp, 1),
                "delay_med": float(np.median(delays)),
                "delay_max": float(np.max(delays)),
                "delay_med_dec": float(np.median(delays_dec)),
                "delay_fast_med": float(np.median(delays_fast)),
                "delay_fast_max": float(np.max(delays_fast)),
                "delay_fast_med_dec": float(np.median(delays_fast_dec)),
                "delay_max_dec": float(np.max(delays_dec)),
                "ref_recall": ref_tp / n_true,
                "ref_precision": ref_tp / max(ref_found, 1),
                "dist_med": float(np.median(dist)),
                "dist_p90": float(np.percentile(dist, 90)),
            }
    return table


def false_alarm_table(seeds=SEEDS) -> dict[str, float]:
    """Milestones per 100 points on series without critical points.

    ``flat`` is pure noise, ``line`` a straight rise in log step, ``convex`` and
    ``concave`` monotone curves whose slope changes threefold. None has a critical
    point, so every milestone is a false alarm (the detector never marks the start or
    the end of a series).
    """
    out = {}
    for kind in ("flat", "line", "convex", "concave"):
        count = points = 0
        for n in SIZES:
            steps = log_steps(n)
            u = np.log10(steps) - 1
            base = {
                "flat": 0 * u,
                "line": 0.25 * u,
                "convex": (u + 0.25 * u**2) / 8,
                "concave": -(u + 0.25 * u**2)[::-1] / 8,
            }[kind]
            for noise in NOISES:
                for seed in seeds:
                    rng = np.random.default_rng(seed)
                    det = run_detector(steps, base + noise * rng.standard_normal(len(steps)))
                    count += len(det.milestones)
                    points += len(steps)
        out[kind] = 100.0 * count / points
    return out


@pytest.fixture(scope="module")
def accuracy():
    table = accuracy_table()
    print(f"\nMilestoneDetector on planted critical points (tolerance {TOL} decades)")
    print(
        "noise  pts | recall prec kind | delay pts med/max  dec med/max  non-plateau-start "
        "| refined rec prec | online-refined dec med/p90"
    )
    for (noise, n), r in table.items():
        print(
            f"{noise:5.2f} {n:4d} |  {r['recall']:.2f}  {r['precision']:.2f} {r['kind_ok']:.2f} "
            f"|   {r['delay_med']:4.0f} /{r['delay_max']:4.0f}    "
            f"{r['delay_med_dec']:.2f} / {r['delay_max_dec']:.2f}  "
            f"{r['delay_fast_med']:3.0f} /{r['delay_fast_max']:3.0f} "
            f"({r['delay_fast_med_dec']:.2f} dec) "
            f"|      {r['ref_recall']:.2f} {r['ref_precision']:.2f} "
            f"|   {r['dist_med']:.3f} / {r['dist_p90']:.3f}"
        )
    return table


def test_recall_and_precision_on_planted_critical_points(accuracy):
    for noise in (0.02, 0.05):
        for n in SIZES:
            r = accuracy[(noise, n)]
            low = noise == 0.02 or n == 200
            assert r["recall"] >= (0.9 if low else 0.8), (noise, n, r)
            assert r["precision"] >= (0.9 if low else 0.85), (noise, n, r)
            assert r["kind_ok"] >= 0.9, (noise, n, r)
    # at high noise (sd 1/6 of the smallest change) recall drops, false alarms stay rare
    # (measured: 0.80 / 0.86 at 60 points, 0.88 / 0.92 at 200; issue 13's bar, 0.8 / 0.9,
    # held at 200 points: at 60 no offline fit told the number of corners reaches it)
    assert accuracy[(0.1, 60)]["precision"] >= 0.82, accuracy[(0.1, 60)]
    assert accuracy[(0.1, 60)]["recall"] >= 0.72, accuracy[(0.1, 60)]
    assert accuracy[(0.1, 200)]["recall"] >= 0.8, accuracy[(0.1, 200)]
    assert accuracy[(0.1, 200)]["precision"] >= 0.9, accuracy[(0.1, 200)]


def test_detection_delay_is_bounded(accuracy):
    # peaks, troughs and plateau ends are confirmed a few points after they happen;
    # plateau starts take longer at high noise (a flat slope has to be told from a slow
    # rise, which takes a stretch of log-step rather than a number of points)
    for n in SIZES:
        r = accuracy[(0.02, n)]
        assert r["delay_fast_med"] <= 6, r
        assert r["delay_fast_max"] <= 15, r
        assert r["delay_med"] <= 8, r
        assert r["delay_max_dec"] <= 0.8, r
        r = accuracy[(0.05, n)]
        assert r["delay_fast_med"] <= 6 or r["delay_fast_med_dec"] <= 0.25, r
        assert r["delay_med_dec"] <= 0.6, r


def test_online_milestones_close_to_refined(accuracy):
    for noise in (0.02, 0.05):
        for n in SIZES:
            r = accuracy[(noise, n)]
            assert r["dist_med"] <= 0.05, r
            assert r["dist_p90"] <= 0.2, r
            assert r["ref_recall"] >= 0.85, r
            assert r["ref_precision"] >= 0.85, r


def test_the_refit_chooses_its_bends_at_high_noise(accuracy):
    # the offline refit compares fits with 0, 1, 2, ... knots (measured: 0.76 / 0.84 at 60
    # points, 0.90 / 0.93 at 200; a refit that adds knots one at a time while each saves
    # threshold**2 and judges each segment alone reached 0.52 / 0.81 and 0.86 / 0.93)
    assert accuracy[(0.1, 60)]["ref_recall"] >= 0.72, accuracy[(0.1, 60)]
    assert accuracy[(0.1, 60)]["ref_precision"] >= 0.8, accuracy[(0.1, 60)]
    assert accuracy[(0.1, 200)]["ref_recall"] >= 0.88, accuracy[(0.1, 200)]
    assert accuracy[(0.1, 200)]["ref_precision"] >= 0.9, accuracy[(0.1, 200)]
    assert accuracy[(0.02, 60)]["ref_recall"] >= 0.98, accuracy[(0.02, 60)]


def test_false_alarms_on_series_without_critical_points():
    fa = false_alarm_table()
    print("\nfalse alarms per 100 points:", {k: round(v, 3) for k, v in fa.items()})
    # issue 13's bar: at most 0.07 per 100 points (measured 0, 0, 0.016, 0.016)
    assert all(rate <= 0.07 for rate in fa.values()), fa


def test_pure_noise_gives_almost_no_milestone_over_many_seeds():
    """The table's eight seeds say little of a rate near zero: pure noise over 192 other
    seeds (both sizes; the detector reads any noise level alike). A short history quiet by
    chance (first residuals small, or neighbours that wander together) measured the noise at
    half its level by a median with a fixed inflation, and 22 wanders of the level passed for
    peaks and troughs (0.045 per 100 points); measured 1 (0.002) now."""
    count = points = 0
    for n in SIZES:
        steps = log_steps(n)
        for seed in range(64, 256):
            noise = np.random.default_rng(seed).standard_normal(len(steps))
            count += len(run_detector(steps, noise).milestones)
            points += len(steps)
    assert 100.0 * count / points <= 0.01, count


def test_smooth_peak_and_steps_every_100():
    """A smooth bump in log step, sampled every 100 steps (many points per bin late)."""
    steps = np.arange(100, 100_001, 100)
    x = np.log10(steps)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        values = np.exp(-(((x - 3.6) / 0.25) ** 2)) + 0.02 * rng.standard_normal(len(x))
        det = run_detector(steps, values)
        assert [m.kind for m in det.milestones] == ["plateau_end", "peak", "plateau_start"]
        peak = det.milestones[1]
        assert abs(math.log10(peak.step) - 3.6) <= 0.05
        assert peak.detected_at > peak.step
        assert abs(peak.value - 1.0) < 0.1
        assert [s.trend for s in det.stages] == ["flat", "rising", "falling", "flat"]
        assert [m.kind for m in det.refine()] == ["plateau_end", "peak", "plateau_start"]


def test_stages_follow_milestones():
    steps = log_steps(200)
    kx, ky = CURVES["rise-plateau-rise"]
    values = np.interp(np.log10(steps), kx, ky)
    values = values + 0.02 * np.random.default_rng(3).standard_normal(len(steps))
    det = run_detector(steps, values)
    kinds = [m.kind for m in det.milestones]
    assert kinds == ["plateau_end", "plateau_start", "plateau_end", "plateau_start"]
    stages = det.stages
    assert [s.trend for s in stages] == ["flat", "rising", "flat", "rising", "flat"]
    assert stages[0].start == int(steps[0])
    for prev, nxt, m in zip(stages, stages[1:], det.milestones, strict=False):
        assert prev.end == nxt.start == m.step
    assert stages[-1].end is None
    assert det.current_stage == len(stages) - 1 == 4
    assert all(isinstance(s, Stage) for s in stages)
    assert json.loads(json.dumps([s.to_dict() for s in stages]))[1]["trend"] == "rising"
    for m in det.milestones:
        assert m.series == "llc"
        assert m.detected_at > m.step
        assert Milestone.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    # the refined answer is kept apart from the online one
    refined = det.refine()
    assert det.refined == refined and det.milestones != [] and len(refined) == 4


def test_no_milestone_from_the_last_points():
    """A corner with fewer than ``confirm - 1`` points after it is never announced; with
    ``confirm - 1`` only when its bend is strong (twice the thresholds, as this one), and at
    the corner."""
    steps = log_steps(100)
    x = np.log10(steps)
    rng = np.random.default_rng(0)
    values = np.where(x < 3.0, 1.0, 1.0 + 3.0 * (x - 3.0)) + 0.01 * rng.standard_normal(len(x))
    corner = int(np.searchsorted(x, 3.0))
    for extra in range(0, 2):
        det = run_detector(steps[: corner + extra], values[: corner + extra], confirm=3)
        assert det.milestones == [], extra
        assert det.refine() == [], extra
    det = run_detector(steps[: corner + 2], values[: corner + 2], confirm=3)
    assert [m.kind for m in det.milestones] == ["plateau_end"]
    assert abs(math.log10(det.milestones[0].step) - 3.0) <= 0.05
    assert det.milestones[0].evidence > 2 * det.threshold
    det = run_detector(steps, values, confirm=3)
    assert [m.kind for m in det.milestones] == ["plateau_end"]
    assert abs(math.log10(det.milestones[0].step) - 3.0) <= 0.05


def test_the_last_stretch_is_judged_on_its_slope_alone_at_train_end():
    """A rise that slows to under a quarter of its rate for the last four estimates: too few
    for its slope to be told from the flat band's edge while points may still come, so at
    train end it is judged on the slope alone (a plateau from the bend); a rise that slows
    to three eighths stays a rise."""
    steps = np.unique(np.round(np.logspace(1, math.log10(3000), 16)).astype(int))
    x = np.log10(steps)
    for creep, kinds in ((1.5, ["plateau_end", "plateau_start"]), (3.0, ["plateau_end"])):
        values = 5.0 + 8.0 * np.clip(x - 2.4, 0.0, 0.55) + creep * np.maximum(x - 2.95, 0.0)
        det = run_detector(steps, values, noise=0.3)
        assert [m.kind for m in det.milestones] == ["plateau_end"], creep
        det.finish()
        assert [m.kind for m in det.milestones] == kinds, creep
        last = det.milestones[-1]
        assert abs(math.log10(last.step) - (2.4 if creep == 3.0 else 2.95)) <= 0.05
        assert last.detected_at == steps[-1] or creep == 3.0


@pytest.mark.parametrize("at", [-4, -12])
def test_a_one_estimate_dip_is_no_step(at):
    """A plateau with one estimate 1.0 below it (mid-run, or three estimates before the end):
    the two short segments around it are never judged on their own, and the series is back
    at its level after it, so the move out of the dip is no step (no milestone after the
    first plateau's start, online or at train end)."""
    steps = np.unique(np.round(np.geomspace(1, 5000, 21)).astype(int))
    values = np.zeros(len(steps))
    values[:4] = [-3.0, -2.0, -1.0, -0.5]
    values[at] = -1.0
    values += 0.01 * np.random.default_rng(0).standard_normal(len(steps))
    det = run_detector(steps, values, noise=0.01)
    det.finish()
    assert [m.kind for m in det.milestones] == ["plateau_start"], det.milestones


@pytest.mark.parametrize("gap", [2, 3])
def test_a_step_between_two_estimates_is_announced_when_the_plateau_after_it_settles(gap):
    """A jump by 10 onto a plateau of ``gap`` estimates, then a step by 2.5 between two
    estimates onto a second plateau. Three estimates on: the first plateau, settled flat next
    to the jump, holds the step's first estimate in its line (its slope sets the bar to leave
    it), and the step, one estimate long, is never judged on its own. Two: the first plateau
    settled before the step came, and the break that ends it, one bend, lies past the step
    (a continuous fit needs a bend on each side of a jump). Either way the step is judged when
    the plateau after it settles, against the first plateau's own last bins: the plateau's
    end is announced online, 0.4-0.5 decades after it, not at train end or never."""
    steps = np.unique(np.round(np.geomspace(1, 5000, 21)).astype(int))
    values = np.zeros(len(steps))
    values[10:] = 10.0
    values[10 + gap :] = 12.5
    values += 0.05 * np.random.default_rng(0).standard_normal(len(steps))
    det = run_detector(steps, values, noise=0.05)
    kinds = [m.kind for m in det.milestones]
    assert kinds == ["plateau_end", "plateau_start"] * 2, det.milestones
    end, start = det.milestones[2:]
    assert (end.step, start.step) == (steps[9 + gap], steps[10 + gap])
    assert end.detected_at == start.detected_at <= steps[13 + gap] < steps[-1]


def test_a_step_after_a_plateau_too_short_to_announce_is_judged_from_that_plateau():
    """A jump by 10 at the seventh of 30 estimates, then a step by 2.5 two estimates later.
    The plateau between them starts too close to the jump's plateau end to be announced, so
    its stage starts at that milestone, on the corner bin below the jump: the step is judged
    against the plateau's own bins from the one after it, not a slope that holds the jump."""
    steps = np.unique(np.round(np.geomspace(1, 5000, 30)).astype(int))
    values = np.zeros(len(steps))
    values[6:] = 10.0
    values[8:] = 12.5
    values += 0.05 * np.random.default_rng(0).standard_normal(len(steps))
    det = run_detector(steps, values, noise=0.05)
    found = [(m.kind, m.step) for m in det.milestones]
    assert found == [
        ("plateau_end", steps[5]),
        ("plateau_end", steps[7]),
        ("plateau_start", steps[8]),
    ], det.milestones


def test_a_rise_that_slows_in_steps_reaches_a_plateau_against_its_steepest_slope():
    """A rise at 10 per decade slows to 4 (0.4 of it: still a rise), then to 1.5 (0.375 of the
    4, but 0.15 of the rise's steepest slope): a plateau from the second bend. Slowing to 3
    instead (0.3 of the steepest) stays a rise. (Against the last slope alone, neither.)"""
    steps = np.unique(np.round(np.geomspace(1, 3000, 30)).astype(int))
    x = np.log10(steps)
    for late, kinds in ((1.5, ["plateau_end", "plateau_start"]), (3.0, ["plateau_end"])):
        values = 5.0 + 10.0 * np.clip(x - 2.3, 0, 0.4) + 4.0 * np.clip(x - 2.7, 0.0, 0.3)
        det = run_detector(steps, values + late * np.maximum(x - 3.0, 0.0), noise=0.08)
        det.finish()
        assert [m.kind for m in det.milestones] == kinds, (late, det.milestones)
        assert abs(math.log10(det.milestones[-1].step) - (3.0 if late < 2 else 2.3)) <= 0.05


def test_drop_on_a_loss_curve():
    steps = log_steps(150)
    x = np.log10(steps)
    loss = np.interp(x, [1, 2.5, 2.8, 5], [5.0, 5.0, 2.0, 1.9])
    loss = loss + 0.02 * np.random.default_rng(1).standard_normal(len(x))
    det = run_detector(steps, loss, series="loss", drop=2.0)
    assert det.milestones[0].kind == "drop"
    assert abs(math.log10(det.milestones[0].step) - 2.5) <= TOL
    assert det.milestones[0].series == "loss"
    plain = run_detector(steps, loss, series="loss")
    assert plain.milestones[0].kind == "plateau_end"


def test_noise_is_measured_between_neighbours_not_taken_from_std():
    """Common random numbers: std across chains is 1.0 but neighbours differ by 0.01."""
    steps = log_steps(120)
    kx, ky = [1, 2.5, 3.0, 5], [0.0, 0.0, 0.3, 0.3]
    values = np.interp(np.log10(steps), kx, ky)
    values = values + 0.01 * np.random.default_rng(2).standard_normal(len(steps))
    det = MilestoneDetector()
    det.update(int(steps[0]), float(values[0]), std=1.0)
    det.update(int(steps[1]), float(values[1]), std=1.0)
    det.update(int(steps[2]), float(values[2]), std=1.0)
    assert det.noise_level == pytest.approx(1.0)  # fallback before enough residuals
    for s, v in zip(steps[3:], values[3:], strict=True):
        det.update(int(s), float(v), std=1.0)
    assert det.noise_level < 0.05
    found = sorted(round(math.log10(m.step), 1) for m in det.milestones)
    assert [m.kind for m in det.milestones] == ["plateau_end", "plateau_start"]
    assert abs(found[0] - 2.5) <= TOL and abs(found[1] - 3.0) <= TOL
    # with std as a floor the same change is within the noise: nothing is announced
    floored = MilestoneDetector(std_floor=1.0)
    for s, v in zip(steps, values, strict=True):
        floored.update(int(s), float(v), std=1.0)
    assert floored.milestones == []


@pytest.mark.parametrize("schedule", ["log", "every-100"])
def test_state_dict_round_trip_gives_the_same_milestones(schedule):
    if schedule == "log":
        steps = log_steps(200)
    else:
        steps = np.arange(100, 100_001, 100)
    kx, ky = CURVES["llc-like"]
    values = np.interp(np.log10(steps), kx, ky)
    values = values + 0.03 * np.random.default_rng(5).standard_normal(len(steps))
    values[len(values) // 3] = np.nan  # a failed estimate is skipped
    full = run_detector(steps, values)
    assert len(full.milestones) >= 3
    for cut in (7, len(steps) // 3 + 1, len(steps) // 2, len(steps) - 5):
        first = run_detector(steps[:cut], values[:cut])
        state = json.loads(json.dumps(first.state_dict()))
        resumed = MilestoneDetector()
        resumed.load_state_dict(state)
        for s, v in zip(steps[cut:], values[cut:], strict=True):
            resumed.update(int(s), float(v))
        assert resumed.milestones == full.milestones, cut
        assert resumed.stages == full.stages
        assert resumed.refine() == full.refine()
        assert resumed.state_dict() == full.state_dict()


def as_version_1(state: dict) -> dict:
    """A state dict in the layout saved before the state was a dataclass (version 1)."""
    return {
        "version": 1,
        "config": state["config"],
        "bins": {
            "x": state["bin_log_steps"],
            "y": state["bin_values"],
            "w": state["bin_counts"],
            "step": state["bin_steps"],
        },
        "open_bin": {
            "index": state["open_index"],
            "n": state["open_count"],
            "sx": state["open_sum_log_step"],
            "sy": state["open_sum_value"],
            "step": state["open_first_step"],
        },
        "last_step": state["last_step"],
        "stds": state["stds"],
        "resid": state["residuals"],
        "ymin": state["value_min"],
        "ymax": state["value_max"],
        "anchor": state["knot"],
        "prev_anchor": state["prev_knot"],
        "pending": state["pending"],
        "candidate": state["candidate"],
        "candidate_count": state["candidate_count"],
        "undecided_from": state["undecided_from"],
        "knot_value": state["knot_value"],
        "trend": state["trend"],
        "last_ms_x": state["last_milestone_log_step"],
        "milestones": state["milestones"],
        "stage_starts": state["stage_starts"],
        "stage_trends": state["stage_trends"],
        "refined": state["refined"],
    }


def without(state: dict, keys: set[str]) -> dict:
    return {k: v for k, v in state.items() if k not in keys and k != "version"}


since_3 = fields_since(3)


def test_a_version_1_state_dict_resumes_the_run():
    """Version 1 kept neither the chains' noise nor the settled slopes: from a state with
    nothing settled the resumed run is the same; from one inside a move, whose steepest slope
    is lost, the same milestones come, each within 0.02 decades of where the full run puts it
    (its confirmation may come later)."""
    steps = log_steps(200)
    kx, ky = CURVES["peak-trough"]
    values = np.interp(np.log10(steps), kx, ky)
    values = values + 0.03 * np.random.default_rng(6).standard_normal(len(steps))
    full = run_detector(steps, values)
    assert len(full.milestones) >= 2
    for cut in (2, len(steps) // 2):
        first = run_detector(steps[:cut], values[:cut])
        first.refine()
        resumed = MilestoneDetector()
        resumed.load_state_dict(json.loads(json.dumps(as_version_1(first.state_dict()))))
        assert without(resumed.state_dict(), since_3) == without(first.state_dict(), since_3)
        for s, v in zip(steps[cut:], values[cut:], strict=True):
            resumed.update(int(s), float(v))
        if cut == 2:
            assert resumed.milestones == full.milestones
            assert resumed.stages == full.stages
            assert resumed.refine() == full.refine()
        assert [m.kind for m in resumed.milestones] == [m.kind for m in full.milestones]
        for got, want in zip(resumed.milestones, full.milestones, strict=True):
            assert abs(math.log10(got.step / want.step)) <= 0.02, (got, want)


@pytest.mark.parametrize("version", [3, 4, 5, 6])
def test_a_version_3_to_6_state_dict_resumes_the_same_run(version):
    """Version 3 did not keep the knot's place between bins (it starts unknown: the knot's bin,
    set again at the next verdict), nor version 4 the steepest slope of the current move (the
    last settled slope stands for it until the next one), nor version 5 the first knot of the
    short segments just before the current one (none, until the next short one), nor version
    6 the last transient point of the plateau the last milestone ended (none)."""
    steps = log_steps(200)
    kx, ky = CURVES["llc-like"]
    values = np.interp(np.log10(steps), kx, ky)
    values = values + 0.03 * np.random.default_rng(2).standard_normal(len(steps))
    full = run_detector(steps, values)
    cut = len(steps) // 2
    state = run_detector(steps[:cut], values[:cut]).state_dict()
    state = {**without(state, fields_since(version + 1)), "version": version}
    resumed = MilestoneDetector()
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert all(resumed.state_dict()[name] is None for name in fields_since(version + 1))
    for s, v in zip(steps[cut:], values[cut:], strict=True):
        resumed.update(int(s), float(v))
    assert [m.kind for m in resumed.milestones] == [m.kind for m in full.milestones]
    gaps = [
        abs(math.log10(a.step / b.step))
        for a, b in zip(resumed.milestones, full.milestones, strict=True)
    ]
    assert max(gaps) <= 0.05, (resumed.milestones, full.milestones)


def test_a_milestone_lies_at_its_fitted_knot_between_estimates():
    """16 log-spaced estimates (0.165 decades apart), a plateau, a rise and a plateau whose
    bends lie midway between two estimates (the nearest 0.083 decades away), 6 seeds: online,
    the plateau's end is placed within 0.03 decades of its bend (measured: 0.00 on all six;
    0.083 when milestones were rounded to the nearest estimate) and the second plateau's start
    within the table's 0.15 (0.00-0.12: three estimates after it); refined, both within 0.02
    (0.00-0.01; 0.08-0.09 rounded)."""
    steps = np.round(np.geomspace(10, 3000, 16)).astype(int)
    x = np.log10(steps)
    bends = ((x[5] + x[6]) / 2, (x[11] + x[12]) / 2)
    top = 5 + 10 * (bends[1] - bends[0])
    curve = np.interp(x, [x[0], *bends, x[-1]], [5, 5, top, top])
    for seed in range(6):
        det = run_detector(steps, curve + 0.05 * np.random.default_rng(seed).standard_normal(16))
        det.finish()
        online = {m.kind: math.log10(m.step) for m in det.milestones}
        assert set(online) == {"plateau_end", "plateau_start"}, det.milestones
        assert abs(online["plateau_end"] - bends[0]) <= 0.03, det.milestones
        assert abs(online["plateau_start"] - bends[1]) <= 0.15, det.milestones
        refined = [math.log10(m.step) for m in det.refine()]
        assert np.allclose(refined, bends, atol=0.02), det.refined


def test_update_cost_under_a_millisecond():
    # 1000 points, one bin each (worst case), with changes to follow
    steps = np.unique(np.round(np.logspace(1, 7, 1000)).astype(int))
    values = np.interp(np.log10(steps), [1, 3, 4, 5, 6, 7], [0, 1, 1, 0.5, 2, 2])
    values = values + 0.02 * np.random.default_rng(0).standard_normal(len(steps))
    det = MilestoneDetector(resolution=0.001)
    start = time.perf_counter()
    for s, v in zip(steps, values, strict=True):
        det.update(int(s), float(v))
    per_call = (time.perf_counter() - start) / len(steps)
    print(f"\nupdate: {1e6 * per_call:.0f} us per call over {len(steps)} points")
    assert len(det.milestones) >= 3
    assert per_call < 1e-3


def test_non_finite_values_are_skipped():
    det = MilestoneDetector()
    assert det.update(10, 1.0) == []
    assert det.update(20, float("nan")) == []
    assert det.update(30, float("inf")) == []
    state = det.state_dict()
    assert state["last_step"] == 30 and state["open_count"] == 1
    with pytest.raises(ValueError, match="not after the previous step 30"):
        det.update(30, 1.0)


def test_a_weighted_point_counts_as_that_many_observations():
    """A bin mean of n observations (``weight=n``) is weighted n in the fits, and its
    neighbour residual is normalized by its variance, the noise's over n."""
    det = MilestoneDetector(resolution=0.1)
    for step, value, weight in ((10, 1.0, 1), (100, 2.0, 4), (1000, 2.0, 16)):
        det.update(step, value, weight=weight)
    det.finish()
    state = det.state_dict()
    assert state["bin_counts"] == [1.0, 4.0, 16.0]
    # the middle bin's residual from its neighbours' line: 0.5, over sqrt(1/4 + 1/4/1 + 1/4/16)
    expected = 0.5 / math.sqrt(1 / 4 + 0.25 / 1 + 0.25 / 16)
    assert state["residuals"] == [pytest.approx(expected)]


def test_bad_steps_and_values():
    det = MilestoneDetector()
    det.update(100, 1.0)
    with pytest.raises(ValueError, match="step=100 is not after the previous step 100"):
        det.update(100, 2.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        det.update(50, 2.0)
    with pytest.raises(ValueError, match="step=-1"):
        MilestoneDetector().update(-1, 1.0)
    with pytest.raises(ValueError, match="integer"):
        MilestoneDetector().update(1.5, 1.0)
    with pytest.raises(ValueError, match="std=-0.1"):
        MilestoneDetector().update(1, 1.0, std=-0.1)
    with pytest.raises(ValueError, match="value='a'"):
        MilestoneDetector().update(1, "a")
    for weight in (0, -1.0, math.inf, True, "3"):
        with pytest.raises(ValueError, match="weight=.*number of observations"):
            MilestoneDetector().update(1, 1.0, weight=weight)
    det0 = MilestoneDetector()
    det0.update(0, 1.0)  # step 0 sits at step 1 on the log axis
    det0.update(1, 1.0)
    with pytest.raises(ValueError, match="load_state_dict expects"):
        det0.load_state_dict({"version": 99})


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"series": ""}, "series=''"),
        ({"confirm": 0}, "confirm=0"),
        ({"confirm": 2.5}, "confirm=2.5 must be an integer"),
        ({"min_separation": -0.1}, "min_separation=-0.1"),
        ({"noise": 0.0}, "noise=0.0"),
        ({"threshold": float("nan")}, "threshold=nan"),
        ({"trend_threshold": -1}, "trend_threshold=-1"),
        ({"flat": "x"}, "flat='x'"),
        ({"resolution": 0}, "resolution=0"),
        ({"window": 8}, "window=8 must be >= 16"),
        ({"drop": 0}, "drop=0"),
        ({"std_floor": -1}, "std_floor=-1"),
        ({"min_noise_points": 2}, "min_noise_points=2"),
        ({"level_slope": -0.1}, "level_slope=-0.1"),
    ],
)
def test_constructor_validates(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        MilestoneDetector(**kwargs)
