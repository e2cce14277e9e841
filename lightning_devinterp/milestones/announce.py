"""Settled trends into milestones and stages (step 5 of the rule in
:mod:`~lightning_devinterp.milestones.rules`), for :class:`~.detector.MilestoneDetector`.

Each function reads and updates the detector's :class:`~.state.DetectorState`; ``scale``
is the series' mean slope (:func:`~.rules.mean_slope`), whose ``flat`` times is the flat band.
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from lightning_devinterp.milestones.fit import LineFit, best_knot, line_fit
from lightning_devinterp.milestones.records import Milestone
from lightning_devinterp.milestones.rules import (
    RELATIVE,
    flat_next_to,
    milestone_kind,
    sharper_bend,
    slope_change_z,
    slope_floor,
    steepened,
    too_close,
    trend_verdict,
)
from lightning_devinterp.milestones.segments import extremum
from lightning_devinterp.milestones.settings import DetectorSettings
from lightning_devinterp.milestones.state import DetectorState


def settle(
    st: DetectorState,
    settings: DetectorSettings,
    trend: str,
    line: LineFit,
    now: int,
    sigma: float,
    scale: float,
) -> list[Milestone]:
    """The current segment's trend is known: the milestones it makes (confirmed at ``now``)."""
    if trend == "flat" and st.trend == "flat":
        step = step_between_plateaus(st, settings, line, now, sigma, scale)
        if step is not None:
            return step
    st.pending = False
    found = flat_before(st, settings, line, now, sigma, scale) if trend == st.trend else []
    prev, st.trend = st.trend, trend
    previous_line = (st.trend_slope, st.trend_root_sxx)
    st.trend_slope, st.trend_root_sxx = line.slope, line.root_sxx
    st.move_slope = steeper(st.move_slope, line.slope) if trend == prev else line.slope
    evidence = slope_change_z(previous_line, line, sigma)
    if trend == prev and trend in ("rising", "falling") and st.prev_knot is not None:
        found += move_plateau_end(st, settings, previous_line[0], line, now, sigma, scale)
    if prev is None:
        st.stage_trends[-1] = trend
    elif plateau := plateau_before(st, settings, prev, trend, previous_line, line, sigma):
        at, evidence = plateau
        milestone = announce(st, settings, "flat", trend, line, now, scale, evidence, at)
        if milestone is not None:
            st.stage_trends[-2] = "flat"
            found.append(milestone)
    elif trend != prev:
        if prev in ("rising", "falling") and st.stage_trends[-1] == prev:
            found += place_plateau_end_at_close(st, settings, now, sigma)
        milestone = announce(st, settings, prev, trend, line, now, scale, evidence)
        if milestone is None:  # too close to the last one, or held back
            st.stage_trends[-1] = trend  # the stage changes trend
        else:
            found.append(milestone)
    st.undecided_from = st.short_since = None
    return found


def step_between_plateaus(
    st: DetectorState,
    settings: DetectorSettings,
    after: LineFit,
    now: int,
    sigma: float,
    scale: float,
) -> list[Milestone] | None:
    """A plateau settled after a plateau, ``after`` its line, with a move between them that was
    never judged: the segments since ``short_since`` (each closed before ``confirm`` bins
    followed its knot: a one-estimate excursion is no peak and trough), unless the first
    plateau's own bins hold a change between neighbours that those segments move less than
    :data:`RELATIVE` times (:func:`largest_change`; the short segments are then the new
    plateau's first bins, a creep after the step), or, with no short segment, the largest
    change between neighbouring bins of the segment before. The move is
    a step if it rises or falls against the old plateau's slope on its last ``confirm`` bins
    (its settled line may hold the move's first estimate) and the new plateau lies
    ``threshold`` noise levels or more from those bins in the move's direction (an excursion
    returns to the old level), and further than the flat band's floor (``flat * level_slope``
    times the series' level per decade) lets the old plateau drift over its own span: the old
    plateau ends at the move's first bin, the new one
    starts at its last (unless too close). None when there is no such step (nothing is
    settled then)."""
    if st.stage_trends[-1] != "flat":
        return None
    start = st.first_bin_from(st.stage_starts[-1])
    if len(st.stage_starts) > 1 and st.milestones[-1].kind != "plateau_start":
        start += 1  # a stage that turned flat after its milestone: that bin is the corner
    if st.short_since is not None:
        a, b = st.short_since, st.knot
        inside = largest_change(st, after, start, a, settings.confirm)
        if change(st, a, b) < RELATIVE * change(st, *inside):
            a, b = inside
    elif st.prev_knot is not None:
        a, b = largest_change(st, after, max(st.prev_knot, start), st.knot, settings.confirm)
    else:
        return None
    if b <= a:
        return None
    lo = max(a - settings.confirm, start)
    if lo >= a:
        return None  # a milestone lies at or after the move's start
    bins = st.bins(a, b)
    move = line_fit(*bins)
    before = line_fit(*st.bins(lo, a))  # the old plateau's last bins, weighted as the new one's
    previous = ("flat", before.slope)
    trend = trend_verdict(move, sigma, settings.flat * scale, bins, settings, previous)
    jump = after.ybar - before.ybar
    if trend not in ("rising", "falling") or (jump > 0) != (trend == "rising"):
        return None
    x = st.bin_log_steps
    drift = settings.flat * slope_floor(st.bin_values, settings)  # a plateau's, per decade
    if abs(jump) < max(settings.threshold * sigma, drift * (x[a] - x[start])):
        return None  # back at the old level (an excursion), or no further than a plateau drifts
    st.place_knot(a, move.at(x[a]), x[a])
    found = settle(st, settings, trend, move, now, sigma, scale)
    st.place_knot(b, after.at(x[b]), x[b])
    return found + settle(st, settings, "flat", after, now, sigma, scale)


def largest_change(
    st: DetectorState, after: LineFit, start: int, end: int, confirm: int
) -> tuple[int, int]:
    """The two neighbouring bins between bins ``start`` and ``end`` between which the series
    changes most toward the level of the plateau ``after`` them (``(end, end)`` when there is
    one bin): a step between two estimates, which a continuous fit, one bend at a time, follows
    only with a bend on each side of it, so the segment settled flat before it kept it."""
    if end - start < 1:
        return end, end
    y = np.asarray(st.bin_values[start : end + 1])
    toward = 1.0 if after.ybar > float(np.mean(y[:confirm])) else -1.0
    j = start + 1 + int(np.argmax(toward * np.diff(y)))
    return j - 1, j


def change(st: DetectorState, a: int, b: int) -> float:
    """How far the series moves from bin ``a`` to bin ``b``."""
    return abs(st.bin_values[b] - st.bin_values[a])


def move_plateau_end(
    st: DetectorState,
    settings: DetectorSettings,
    before: float | None,
    line: LineFit,
    now: int,
    sigma: float,
    scale: float,
) -> list[Milestone]:
    """The trend that left the last plateau goes on from the current knot more than twice as
    steep (:func:`~.rules.sharper_bend`): the plateau's end (the last milestone, this stage's
    start) was placed at a creep before the move. It moves to where a line bent once best fits
    the plateau and the move so far (searched between it and the knot), as a new milestone
    that ``revises`` it, when that is ``min_separation`` or more later."""
    last = last_plateau_end(st)
    if last is None:
        return []
    span = st.bin_log_steps[st.knot] - st.bin_log_steps[st.prev_knot]
    if not sharper_bend(before, line.slope, span, settings.min_separation):
        return []
    start = st.first_bin_from(last.step)
    kind = milestone_kind("flat", st.trend, line.slope, settings.drop, scale)
    end = len(st.bin_values) - 1
    return move_to_bend(st, settings, (start, st.knot, end), kind, now, sigma, later_only=True)


def place_plateau_end_at_close(
    st: DetectorState, settings: DetectorSettings, now: int, sigma: float
) -> list[Milestone]:
    """The move that left the last plateau is closed by a new trend at the current knot: the
    plateau's end (placed when the move was confirmed, from its first few points) moves to
    where a line bent once best fits the plateau and the whole move, when that is
    ``min_separation`` or more away (a rise that steepens as it goes puts the first
    placement early)."""
    last = last_plateau_end(st)
    if last is None:
        return []
    plateau = st.first_bin_from(st.stage_starts[-2])
    span = (plateau + 1, st.knot - 1, st.knot)
    return move_to_bend(st, settings, span, last.kind, now, sigma, later_only=False)


def last_plateau_end(st: DetectorState) -> Milestone | None:
    """The last milestone, if it is the end of a plateau that starts the current stage."""
    if len(st.stage_trends) < 2 or st.stage_trends[-2] != "flat" or not st.milestones:
        return None
    last = st.milestones[-1]
    if last.kind not in ("plateau_end", "drop") or last.step != st.stage_starts[-1]:
        return None
    return last


def move_to_bend(
    st: DetectorState,
    settings: DetectorSettings,
    span: tuple[int, int, int],
    kind: str,
    now: int,
    sigma: float,
    *,
    later_only: bool,
) -> list[Milestone]:
    """Moves the plateau's end (:func:`last_plateau_end`) to the best knot between bins
    ``first`` and ``last`` of a line bent once over the plateau's bins up to ``end`` (``span``),
    as a new milestone of ``kind`` that ``revises`` it, when that is ``min_separation`` or more
    from it (``later_only``: after it) and from the plateau's start. Its evidence is the change
    of slope there, between lines on the bins before and after it."""
    last = st.milestones[-1]
    first, last_bin, end = span
    plateau = st.first_bin_from(st.stage_starts[-2])
    if st.plateau_transient_until is not None:  # the plateau's transient points stay in it
        first = max(first, st.last_bin_to(st.plateau_transient_until))
    if last_bin < first:
        return []
    knot = best_knot(*st.bins(plateau, end), first - plateau, last_bin - plateau)
    if knot is None:
        return []
    _, value, x = knot
    x = inside_gap(st, x, settings.min_separation)
    shift = x - math.log10(last.step)
    if (shift if later_only else abs(shift)) < settings.min_separation:
        return []  # where it was, near enough
    if too_close(x, st.bin_log_steps[plateau], settings.min_separation):
        return []
    step = round(10**x)
    # lines on the bins up to the knot and from it (both hold a bin at the knot itself)
    before_line = line_fit(*st.bins(plateau, st.last_bin_to(step)))
    after_line = line_fit(*st.bins(st.first_bin_from(step), end))
    evidence = slope_change_z((before_line.slope, before_line.root_sxx), after_line, sigma)
    moved = Milestone(step, now, kind, value, settings.series, evidence, revises=last.step)
    st.move_last(moved, x)
    return [moved]


def steeper(a: float | None, b: float) -> float:
    """The steeper of two slopes (``b`` if ``a`` is None)."""
    return b if a is None or abs(b) > abs(a) else a


def was_plateau(
    st: DetectorState,
    prev: str,
    trend: str,
    before: float | None,
    after: float,
    min_separation: float,
) -> bool:
    """Whether the trend ``prev`` goes on as ``trend`` so much steeper (see
    :func:`~.rules.steepened`) that the stretch before was a plateau next to it; not when
    that stretch follows a plateau (it is the start of this trend, found early)."""
    if trend != prev or prev == "flat" or st.prev_knot is None:
        return False
    if len(st.stage_trends) > 1 and st.stage_trends[-2] == "flat":
        return False
    span = st.bin_log_steps[st.knot] - st.bin_log_steps[st.prev_knot]
    return steepened(before, after, span, min_separation)


def flat_before(
    st: DetectorState,
    settings: DetectorSettings,
    after: LineFit,
    now: int,
    sigma: float,
    scale: float,
) -> list[Milestone]:
    """Judges again the stretch left undecided between the last trend and the current knot,
    once the segment ``after`` it is settled with the same trend (a pause between two moves
    in one direction; a round top between a rise and a fall is a peak): if it is flat next
    to that segment (see :func:`~.rules.flat_next_to`), the last trend ended at its start (a
    ``plateau_start``), and the plateau at the knot."""
    start = st.undecided_from
    if start is None or st.trend in (None, "flat") or st.knot - start < settings.confirm:
        return []
    bins = st.bins(start, st.knot)
    line = line_fit(*bins)
    if not flat_next_to(line, after, sigma, settings.flat * scale, bins, settings):
        return []
    evidence = slope_change_z((st.trend_slope, st.trend_root_sxx), line, sigma)
    at = (start, line.at(st.bin_log_steps[start]))
    milestone = announce(st, settings, st.trend, "flat", line, now, scale, evidence, at)
    st.trend, st.trend_slope, st.trend_root_sxx = "flat", line.slope, line.root_sxx
    st.move_slope = line.slope
    if milestone is None:
        st.stage_trends[-1] = "flat"
        return []
    return [milestone]


def announce(
    st: DetectorState,
    settings: DetectorSettings,
    before: str,
    after: str,
    line: LineFit,
    now: int,
    scale: float,
    evidence: float | None,
    at: tuple[int, float] | None = None,
) -> Milestone | None:
    """Records the milestone at the current knot (where it lies between bins), or at ``at``
    (bin and value), unless it is too close to the last or held back."""
    where, value = at if at is not None else (st.knot, st.knot_value)
    x, step = st.bin_log_steps[where], st.bin_steps[where]
    if at is None and st.knot_log_step is not None:
        x, step = st.knot_log_step, round(10**st.knot_log_step)
    gap = settings.min_separation
    if too_close(x, st.last_milestone_log_step, gap):
        return None
    kind = milestone_kind(before, after, line.slope, settings.drop, scale)
    if kind in ("plateau_end", "drop") and (moved := inside_gap(st, x, gap)) != x:
        x, step = moved, round(10**moved)
    if kind in ("peak", "trough") and st.undecided_from is not None:
        where, value = extremum(st, kind, settings.window)
        x, step = st.bin_log_steps[where], st.bin_steps[where]
        if too_close(x, st.last_milestone_log_step, gap):
            return None
    milestone = Milestone(step, now, kind, float(value), settings.series, evidence)
    return st.record(milestone, after, x)


def inside_gap(st: DetectorState, x: float, min_separation: float) -> float:
    """A plateau's end at ``x``, moved to the middle of the gap after it when it lies on a bin
    followed by a gap wider than ``2 * min_separation`` (the data cannot place it within)."""
    xs = st.bin_log_steps
    k = bisect.bisect_left(xs, x - 1e-9)
    if k + 1 < len(xs) and abs(xs[k] - x) < 1e-9 and xs[k + 1] - xs[k] > 2 * min_separation:
        return (xs[k] + xs[k + 1]) / 2
    return x


def plateau_before(
    st: DetectorState,
    settings: DetectorSettings,
    prev: str | None,
    trend: str,
    previous_line: tuple[float | None, float | None],
    line: LineFit,
    sigma: float,
) -> tuple[tuple[int, float] | None, float | None] | None:
    """Whether the move settled on ``line`` leaves a stretch that was a plateau: the segment
    before it (:func:`was_plateau`; the plateau ends at the current knot, ``None``), or the
    stretch since a turn (:func:`plateau_after_turn`; it ends at that stretch's end, bin and
    value). Returns (where it ends, the change of slope in noise units), or None."""
    if was_plateau(st, prev, trend, previous_line[0], line.slope, settings.min_separation):
        return None, slope_change_z(previous_line, line, sigma)
    turned = plateau_after_turn(st, settings, trend, prev)
    if turned is None:
        return None
    plateau, at = turned
    return at, slope_change_z((plateau.slope, plateau.root_sxx), line, sigma)


def plateau_after_turn(
    st: DetectorState, settings: DetectorSettings, trend: str, prev: str | None
) -> tuple[LineFit, tuple[int, float]] | None:
    """The move a peak or trough opened goes on (``trend``, as ``prev``) over ``1 / RELATIVE``
    times steeper, at its steepest, than over its stretch before the current segment (from the
    turn, past any transient points, to the current segment's previous knot; at least
    ``min_separation`` decades): that stretch was a plateau the turn led onto, ended at that
    knot. :func:`~.rules.steepened` compares neighbouring segments only; a move that steepens
    over several (the demo's LLC: 3, then 8.6, then 12.7 per decade after an early dip) needs
    the whole stretch. Returns its line and the plateau's end (bin, value), or None."""
    if trend != prev or trend not in ("rising", "falling") or st.prev_knot is None:
        return None
    if not st.milestones or st.milestones[-1].kind not in ("peak", "trough"):
        return None  # (a milestone opened a stage: stage_trends has two or more)
    if st.stage_trends[-2] == "flat" or st.move_slope is None:
        return None
    start = st.first_bin_from(st.stage_starts[-1])
    if st.transient_until is not None:
        start = max(start, st.last_bin_to(st.transient_until) + 1)
    end = st.prev_knot
    if end <= start:
        return None
    line = line_fit(*st.bins(start, end))
    span = st.bin_log_steps[end] - st.bin_log_steps[start]
    # of either sign, as a plateau next to a move (rules.neighbour_band)
    if not steepened(abs(line.slope), abs(st.move_slope), span, settings.min_separation):
        return None
    return line, (end, line.at(st.bin_log_steps[end]))
