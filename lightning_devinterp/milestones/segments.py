"""The detector's segmentation: where the current segment breaks, and the line of a segment
(steps 3 and 4 of the rule in :mod:`~lightning_devinterp.milestones.rules`)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lightning_devinterp.milestones.fit import (
    LineFit,
    best_knot,
    hinge_scan,
    line_fit,
    smoothed_extreme,
)
from lightning_devinterp.milestones.rules import STRONG
from lightning_devinterp.milestones.settings import DetectorSettings
from lightning_devinterp.milestones.state import Bins, DetectorState


def find_break(
    st: DetectorState, sigma: float, settings: DetectorSettings
) -> tuple[int | None, float, int]:
    """Best new knot in the current segment, if it passes the break test.

    Returns:
        (knot bin or None, fitted value at it, last bin to judge the segment on: before a
        bend that is building up, else the last bin).
    """
    n = len(st.bin_values) - 1
    oldest = n - settings.window + 1
    start, base = max(st.knot, oldest), None
    # back to the previous knot when possible, so that the current segment's start
    # is pinned by the previous segment (continuity)
    if st.prev_knot is not None and st.knot - max(st.prev_knot, oldest) >= 2:
        start = max(st.prev_knot, oldest)
        base = st.knot - start
    first = 2 if base is None else base + 1
    early = settings.confirm - 1  # bins after a knot whose bend is strong (STRONG x z)
    if n - early - start < first:
        return None, 0.0, n
    knots = np.arange(first, n - early - start + 1)
    gain, value = hinge_scan(*st.bins(start, n), knots, base)
    thr2 = settings.threshold**2 * sigma * sigma
    best = int(np.argmax(gain))
    k = start + int(knots[best])
    if gain[best] > (thr2 if k <= n - settings.confirm else STRONG**2 * thr2):
        return k, float(value[best]), n
    if gain[best] > 0.25 * thr2 and k >= st.knot + settings.confirm:
        return None, 0.0, k  # a bend is building up: judge the bins before it
    return None, 0.0, n


class SegmentFit(NamedTuple):
    """A segment's knot (bin, and position in log10 step), bins, line and value at the knot."""

    knot: int
    at: float
    bins: Bins
    line: LineFit
    value: float


def segment_line(st: DetectorState, a: int, n: int, settings: DetectorSettings) -> SegmentFit:
    """Line fit of the segment that starts at knot ``a`` and ends at bin ``n``.

    The knot is first re-placed at the best position between bins ``a - 2`` and ``a + 2``
    (quarter-bin grid) of a fit continuous with the previous segment (or with the line
    before it, for the first knot), since data after it have arrived since the break was
    found. The
    slope itself comes from a free line on the bins from the knot on: a continuous fit
    would have a smaller nominal error, but the knot search makes that error optimistic
    and a misplaced knot biases it.

    Returns:
        The knot (nearest bin and position between bins), the bins from it (at most
        ``window``), their line fit and the fitted value at the knot.
    """
    value = None
    at = st.bin_log_steps[a]
    prev = st.prev_knot
    lo = max(n - settings.window + 1, 0)
    if prev is not None:
        lo = max(lo, prev)
    gap = 2 if prev is None or prev < lo else 1  # bins a segment needs before the knot
    if a - lo >= gap:
        first = max(a - 2, lo + gap)
        last = max(min(a + 2, n - settings.confirm + 1), first)
        best = best_knot(*st.bins(lo, n), first - lo, last - lo)
        if best is not None:
            a, value, at = lo + best[0], best[1], best[2]
    bins = st.bins(max(a, n - settings.window + 1), n)
    line = line_fit(*bins)
    if value is None:
        value = line.at(at)
    return SegmentFit(a, at, bins, line, value)


def extremum(st: DetectorState, kind: str, window: int) -> tuple[int, float]:
    """Bin and value of the top of a peak (bottom of a trough) before the current knot.

    Used when undecided segments (a round top) lie between the last settled trend and the
    current knot: the extreme of a three-bin weighted moving average there.
    """
    lo = max(int(st.undecided_from or 0), st.knot - window)
    hi = min(st.knot + 1, len(st.bin_values) - 1)
    x0 = max(lo - 1, 0)
    _, y, w = st.bins(x0, hi + 1)
    j, value = smoothed_extreme(y, w, lo - x0, hi - x0, peak=kind == "peak")
    return x0 + j, value
