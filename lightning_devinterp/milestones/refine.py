"""The offline refit of a detector's whole history (:meth:`MilestoneDetector.refine`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from lightning_devinterp.milestones.fit import (
    line_fit,
    norm_residual,
    piecewise_fit,
    place_knots,
    sustained_range,
)
from lightning_devinterp.milestones.records import Milestone
from lightning_devinterp.milestones.rules import (
    ROUND,
    mean_slope,
    milestone_kind,
    noise_level,
    too_close,
    transition_kind,
    trend_verdict,
)
from lightning_devinterp.milestones.settings import DetectorSettings


class _Segment(NamedTuple):
    start: int  # its knot (bin)
    trend: str | None  # None: undecided or unconfirmed
    slope: float


class _Change(NamedTuple):
    at: int  # bin of the milestone
    before: str
    after: str
    slope: float  # of the segment after it


def refine_milestones(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    steps: Sequence[int],
    *,
    stds: Sequence[float],
    last_step: int,
    settings: DetectorSettings,
) -> list[Milestone]:
    """Milestones of a continuous piecewise-linear fit of the whole series.

    Knots are placed by :func:`~lightning_devinterp.milestones.fit.place_knots` (each
    saving more than ``threshold**2`` noise variances). Each segment's trend is judged
    with the online rules on all its bins; an undecided segment, or one with fewer than
    ``confirm`` bins after its knot, keeps the trend before it, and a first segment
    that is neither rising, falling nor within the flat band is flat (the series has
    not moved yet). Trend changes are milestones (``detected_at`` is ``last_step``; a
    peak or trough sits at the extreme of the fit between the last two settled
    segments), and changes closer than ``min_separation`` are merged (a rise and a
    fall merge into a peak at the higher knot; a step from one plateau to another
    keeps its start; any other change that is undone is dropped).

    Args:
        x: log10(step) of each bin.
        y: Mean value of each bin.
        w: Points in each bin.
        steps: The step each bin stands for.
        stds: Spreads passed with the recent estimates (noise floor).
        last_step: The last step seen.
        settings: The detector's settings.

    Returns:
        The milestones, in the order of the segments (none for fewer than
        ``2 * confirm + 4`` bins).
    """
    c = settings.confirm
    if len(x) < 2 * c + 4:
        return []
    residuals = norm_residual(x, y, w)
    sigma = noise_level(residuals, stds, float(np.abs(y).max()), settings, online=False)
    assert sigma is not None  # residuals exist
    knots = place_knots(x, y, w, settings.threshold**2 * sigma * sigma)
    fitted = piecewise_fit(x, y, w, knots)
    spread = sustained_range(y, float(fitted.max() - fitted.min()), c)
    slope_scale = mean_slope(float(x[0]), float(x[-1]), spread, sigma)
    segments = _segments(x, y, w, knots, sigma, settings.flat * slope_scale, settings)
    changes = _changes(segments, x, fitted, settings.min_separation)
    return [
        Milestone(
            int(steps[ch.at]),
            last_step,
            milestone_kind(ch.before, ch.after, ch.slope, settings.drop, slope_scale),
            float(fitted[ch.at]),
            settings.series,
        )
        for ch in changes
    ]


def _segments(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    knots: list[int],
    sigma: float,
    band: float,
    settings: DetectorSettings,
) -> list[_Segment]:
    """Each segment's trend, from a line on its own bins."""
    n = len(x)
    bounds = [0, *knots, n - 1]
    out = []
    previous: tuple[str | None, float | None] = (None, None)  # the last settled segment's
    for j in range(len(bounds) - 1):
        lo, hi = bounds[j], bounds[j + 1]
        bins = x[lo : hi + 1], y[lo : hi + 1], w[lo : hi + 1]
        line = line_fit(*bins)
        trend: str | None = None
        if lo <= n - 1 - settings.confirm:  # else too few bins after the knot to confirm
            trend = trend_verdict(line, sigma, band, bins, settings, previous)
            if trend == ROUND:
                trend = None
            elif trend is None and j == 0:
                trend = "flat"  # the series has not moved significantly yet
        if trend is not None:
            previous = (trend, line.slope)
        out.append(_Segment(lo, trend, line.slope))
    return out


def _changes(
    segments: list[_Segment], x: np.ndarray, fitted: np.ndarray, min_separation: float
) -> list[_Change]:
    """The trend changes between settled segments, those too close together merged."""
    changes: list[_Change] = []
    current: str | None = None
    since = 0  # first knot after the last settled segment
    for lo, trend, slope in segments:
        if trend is None:
            continue
        if current is not None and trend != current:
            kind = transition_kind(current, trend)
            at = lo
            if kind in ("peak", "trough"):
                part = fitted[since : lo + 1]
                at = since + int(np.argmax(part) if kind == "peak" else np.argmin(part))
            last_x = float(x[changes[-1].at]) if changes else None
            if too_close(float(x[at]), last_x, min_separation):
                _merge(changes, at, trend, slope, fitted)
            else:
                changes.append(_Change(at, current, trend, slope))
        current = trend
        since = lo
    return changes


def _merge(changes: list[_Change], at: int, after: str, slope: float, fitted: np.ndarray) -> None:
    """Merges a change into the previous one, too close to it, or drops both."""
    prev = changes.pop()
    if prev.before != after:
        kind = transition_kind(prev.before, after)
        pick = prev.at
        if kind == "peak" and fitted[at] > fitted[pick]:
            pick = at
        if kind == "trough" and fitted[at] < fitted[pick]:
            pick = at
        changes.append(_Change(pick, prev.before, after, slope))
    elif after == "flat":
        # a step between two plateaus: its start is the milestone, as online
        changes.append(prev)
