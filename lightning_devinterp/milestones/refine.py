"""The offline refit of a detector's whole history (:meth:`MilestoneDetector.refine`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from lightning_devinterp.milestones.fit import (
    joint_slopes,
    knot_path,
    norm_residual,
    sustained_range,
)
from lightning_devinterp.milestones.records import Milestone
from lightning_devinterp.milestones.rules import (
    mean_slope,
    milestone_kind,
    noise_level,
    slope_floor,
    too_close,
    transition_kind,
)
from lightning_devinterp.milestones.settings import DetectorSettings

MAX_KNOTS = 10  # knots of the offline fit, at most
PATIENCE = 2  # knots tried beyond the best number so far before the search stops
NOISE_PASSES = 3  # rounds of (number of knots, noise from the fit's residuals)


class _Segment(NamedTuple):
    start: int  # the bin nearest its knot
    knot: float  # its knot, log10(step)
    trend: str | None  # None: too few bins after its knot to confirm
    slope: float


class _Change(NamedTuple):
    at: int  # bin of the milestone
    x: float  # its log10(step): the knot, or the bin of a peak's top (a trough's bottom)
    before: str
    after: str
    slope: float  # of the segment after it


def refine_milestones(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    *,
    stds: Sequence[float],
    last_step: int,
    settings: DetectorSettings,
) -> list[Milestone]:
    """Milestones of the continuous piecewise-linear fit of the whole series that explains it
    best for its number of knots.

    The fits with 0, 1, 2, ... knots (on a grid of ``resolution`` decades, each placed by
    coordinate descent: :func:`~lightning_devinterp.milestones.fit.knot_path`) are compared by
    their squared residuals in noise variances plus ``threshold**2`` per knot; the noise is
    first measured between neighbours, then from the residuals of the chosen fit (offline,
    every point known on both sides). Each piece of the chosen fit is rising or falling when
    its slope exceeds ``trend_threshold`` standard errors and the flat band (``flat`` times
    the series' mean slope), flat otherwise; a piece with fewer than ``confirm`` bins after
    its knot, or flat over less than ``min_separation`` decades (the round top of a peak or
    bottom of a trough), keeps the trend before it. Trend changes are milestones at the knot
    (a peak or trough at its highest or lowest bin; ``detected_at`` is ``last_step``); changes
    closer than
    ``min_separation`` are merged (a rise and a fall merge into a peak at the higher knot; a
    step from one plateau to another keeps its start; any other change that is undone is
    dropped).

    Args:
        x: log10(step) of each bin.
        y: Mean value of each bin.
        w: Points in each bin.
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
    sigma = noise_level(
        norm_residual(x, y, w), stds, float(np.abs(y).max()), settings, online=False
    )
    assert sigma is not None  # residuals exist
    knots, sigma = _best_fit(x, y, w, sigma, stds, settings)
    fitted, slopes, se = joint_slopes(x, y, w, knots)
    spread = sustained_range(y, float(fitted.max() - fitted.min()), c)
    slope_scale = mean_slope(float(x[0]), float(x[-1]), spread, sigma, slope_floor(y, settings))
    segments = _segments(x, knots, slopes, se * sigma, settings.flat * slope_scale, settings)
    return [
        Milestone(
            round(10**ch.x),
            last_step,
            milestone_kind(ch.before, ch.after, ch.slope, settings.drop, slope_scale),
            float(fitted[ch.at]),
            settings.series,
        )
        for ch in _changes(segments, x, fitted, settings.min_separation)
    ]


def _segments(
    x: np.ndarray,
    knots: list[float],
    slopes: np.ndarray,
    errors: np.ndarray,
    band: float,
    settings: DetectorSettings,
) -> list[_Segment]:
    """Each piece's trend from its slope and the slope's standard error (see
    :func:`refine_milestones`)."""
    edges = [float(x[0]), *knots, float(x[-1])]
    segments = []
    for j, (slope, err) in enumerate(zip(slopes, errors, strict=True)):
        start = int(np.argmin(np.abs(x - edges[j])))
        bar = max(band, settings.trend_threshold * err)
        trend = "rising" if slope > bar else "falling" if slope < -bar else "flat"
        short = trend == "flat" and edges[j + 1] - edges[j] < settings.min_separation
        confirmed = start <= len(x) - 1 - settings.confirm and not short
        segments.append(_Segment(start, edges[j], trend if confirmed else None, float(slope)))
    return segments


def _best_fit(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    sigma: float,
    stds: Sequence[float],
    settings: DetectorSettings,
) -> tuple[list[float], float]:
    """The knots of the fit with the least squared residuals (in noise variances) plus
    ``threshold**2`` per knot, and the noise measured from its residuals (a fixed ``noise``
    stays; ``std_floor`` holds)."""
    grid = np.arange(x[0] + settings.resolution, x[-1], settings.resolution)
    penalty = settings.threshold**2
    path: list[tuple[float, list[float]]] = []

    def chosen(sigma: float) -> int:
        return int(np.argmin([r / sigma**2 + penalty * len(k) for r, k in path]))

    for fit in knot_path(x, y, w, grid, min(MAX_KNOTS, (len(x) - 2) // 3)):
        path.append(fit)
        best = chosen(sigma)
        if len(path) - 1 - best > PATIENCE:
            break
    floor = sigma * 1e-6
    if settings.std_floor > 0 and stds:
        floor = max(floor, settings.std_floor * float(np.median(stds)))
    for _ in range(NOISE_PASSES):
        dof = len(x) - 2 - best
        if dof > 0 and settings.noise is None:
            sigma = max(math.sqrt(path[best][0] / dof), floor)
        best = chosen(sigma)
    return path[best][1], sigma


def _changes(
    segments: list[_Segment], x: np.ndarray, fitted: np.ndarray, min_separation: float
) -> list[_Change]:
    """The trend changes between settled segments, those too close together merged."""
    changes: list[_Change] = []
    current: str | None = None
    since = 0  # first knot after the last settled segment
    for lo, knot, trend, slope in segments:
        if trend is None:
            continue
        if current is not None and trend != current:
            kind = transition_kind(current, trend)
            at, at_x = lo, knot
            if kind in ("peak", "trough"):
                part = fitted[since : lo + 1]
                at = since + int(np.argmax(part) if kind == "peak" else np.argmin(part))
                at_x = float(x[at])
            if too_close(at_x, changes[-1].x if changes else None, min_separation):
                _merge(changes, _Change(at, at_x, current, trend, slope), fitted)
            else:
                changes.append(_Change(at, at_x, current, trend, slope))
        current = trend
        since = lo
    return changes


def _merge(changes: list[_Change], new: _Change, fitted: np.ndarray) -> None:
    """Merges a change into the previous one, too close to it, or drops both."""
    prev = changes.pop()
    after = new.after
    if prev.before != after:
        kind = transition_kind(prev.before, after)
        pick = prev
        if kind == "peak" and fitted[new.at] > fitted[prev.at]:
            pick = new
        if kind == "trough" and fitted[new.at] < fitted[prev.at]:
            pick = new
        changes.append(_Change(pick.at, pick.x, prev.before, after, new.slope))
    elif after == "flat":
        # a step between two plateaus: its start is the milestone, as online
        changes.append(prev)
