"""How milestones are found: the rule, and the verdicts that apply it online and offline.

Following the stage analysis of the LLC curve (PAPERS.md, "Stages and milestones"),
milestones are the critical points of a series against ``log10(step)``: where a plateau
starts or ends, peaks and troughs. The detector reads one estimate at a time and
announces a milestone only once the data after it confirm it.

How it works:

1. **Log-step grid.** Points are averaged into bins of width ``resolution`` in
   ``log10(step)``, so the detector behaves the same whether checkpoints are
   log-spaced or every 100 steps (late in training many points share a bin). A bin is
   processed when the first point of a later bin arrives, or at once when its point lies
   more than one bin after the previous one (a sparse schedule: waiting for the next
   point would cost a whole schedule step).
2. **Noise that separates neighbours.** With common random numbers consecutive
   estimates share batches and SGLD noise, so the spread across chains (``std``) can
   be far larger than the checkpoint-to-checkpoint noise. The noise level is therefore
   measured on the series itself: each bin is compared with the straight line through
   its two neighbours, the residuals are normalized to the variance of one observation,
   and the noise is the root mean square of the smallest 90% of the last ``window``
   residuals (the few large ones at corners left out; :func:`residual_noise`), at its upper
   90% confidence bound (about ``0.45 m`` degrees of freedom for ``m`` residuals), so that a
   short history, quiet by chance, does not under-estimate it, and at most 2.5 times the
   median's reading ``1.4826 * median(|residual|)`` (robust where more than a tenth are large,
   as across a transient excursion; the offline refit takes that reading of the whole
   series, robust to its every corner). The user's
   ``std`` is only a fallback before ``min_noise_points`` residuals exist, and
   optionally a floor (``std_floor``). When the per-chain estimates are given, the noise
   is measured directly from the second point on: chain ``c`` of consecutive estimates
   shares its seed, so the spread across chains of each chain's change is the noise of
   the change (:func:`chain_step_variance`, pooled over the last ``window`` points, each
   capped at ten times their median, at the pool's upper 90% confidence bound:
   :func:`pooled_chain_noise`). A fixed ``noise`` overrides all this.
3. **Breaks.** The series since the last break is a segment. After each bin, one more
   bend of a continuous piecewise-linear fit (continuous with the previous segment) is
   tried at every bin of the current segment that has at least ``confirm`` bins after
   it (``confirm - 1`` when the bend saves :data:`STRONG` squared times as much; a new
   knot may sit one bin after the current one, a step between two estimates); if the
   best bend saves more than ``threshold**2`` noise variances of squared residuals, the
   segment is broken there and a new segment starts at that knot.
4. **Trends.** The new segment's trend is judged, once ``confirm`` bins follow its knot,
   from a line fitted to its bins (stopping before any bend that is building up). Its
   knot is first re-placed at the best position within two bins (a quarter-bin grid: a
   bend between two sparse estimates lies between them), now that data after it exist,
   and again on all the segment's bins when the next break closes it.
   ``rising``/``falling`` need a slope beyond ``trend_threshold`` standard errors and
   beyond the flat band; ``flat`` needs ``|slope| + flat_threshold * se``
   inside the flat band, whose half-width is ``flat`` times the series' mean slope
   (range of values so far over their span in decades, at least one decade, at least
   five noise levels; the slope at least ``level_slope`` times the median magnitude of the
   values, so that a drift of a few percent of the level, however well measured, is flat).
   The range is capped at 1.5 times the range of a running median
   over ``2 * confirm + 1`` bins, so a brief deep excursion (an LLC dip of a few points
   while the weights cross from one saddle to the next, ten times deeper than the
   steps between plateaus) does not make every later step look flat. A plateau is also
   flat next to its neighbours (:func:`neighbour_band`): after a rise, a segment whose
   slope is below :data:`RELATIVE` times the rise's steepest, of either sign, is flat (a
   rise slowing to a creep, at once or in steps, or sagging a little), and a plateau is
   left only by a slope beyond ``1 / RELATIVE`` times its own (both for segments of at
   least ``min_separation`` decades, a sag twice that: a shorter turn is the top of a peak
   or the bottom of a V).
   The same verdict on two consecutive bins settles the trend, or one verdict that holds
   at :data:`STRONG` times the thresholds and without the last bin; a segment closed by
   the next break is judged on all its bins, and leaves the trend unchanged while still
   undecided, or when fewer than ``confirm`` bins follow its knot (then it is not even
   undecided: a one-estimate excursion is no peak and trough).
5. **Milestones.** A settled trend that differs from the current one is a milestone at
   the segment's knot (its step ``10**knot``, between estimates where the fit puts it):
   rising to falling is a ``peak``, falling to rising a ``trough``,
   into flat a ``plateau_start``, out of flat a ``plateau_end`` (or a ``drop`` when
   ``drop`` is set and the series leaves the plateau falling at least ``drop`` times
   its mean slope: the loss-curve signature of a new stage). A plateau's end that the fit
   puts on an estimate followed by a gap wider than twice ``min_separation`` lies in the
   middle of that gap (a sparse schedule: the plateau ended somewhere in it, and a line bent
   at its last estimate fits a step across the gap best; from twice, so that a plateau's
   start on the estimate after the gap is still announced), also where it is placed again
   later. One at or before the last
   transient point is held back, except a plateau's start, which moves to the first point
   after the transient ones, and a plateau's end at that point itself: a plateau of
   transient estimates (a network's first saddle, where the LLC reads negative) ended
   there, and every point that confirms it came after; the placements below never move it
   back among its plateau's transient points. ``detected_at`` is the
   step of the point whose arrival settled it. A milestone closer than
   ``min_separation`` decades to the previous one is not announced; the current stage
   takes the newer trend instead. A trend that goes on over four times steeper
   (:func:`steepened`) makes the stretch before it a plateau, ended at the knot; so does a
   move opened by a peak or trough that, at its steepest, runs over four times steeper than
   over its stretch before the current segment (a move that steepens over several segments:
   :func:`~.announce.plateau_after_turn`). A move
   that left a plateau and then more than doubles its slope (:func:`sharper_bend`) bends
   more at its second knot than at the first, so the plateau's end was placed at a creep
   before the move: it is moved to where a line bent once best fits the plateau and the move
   so far (a new milestone that ``revises`` the first; the demo's LLC leaves its plateau
   with a slow creep and rises in earnest 0.3-0.4 decades later). When a new trend closes
   the move, the plateau's end is placed once more where a line bent once best fits the
   plateau and the whole move, and moved (a revision) if that is ``min_separation`` or more
   away, either way (a rise that steepens as it goes puts its first placement early). When
   training ends, :meth:`~.detector.MilestoneDetector.finish` settles the open segment
   on its last verdict (no later point can repeat it), once ``confirm`` bins follow its
   knot; a segment still undecided is then judged on its slope alone (``flat_threshold``
   0: no later point can narrow its error), so a rise that slows to under a quarter of
   its rate in the last few estimates ends on a plateau; a rise or fall settled on its
   first bins is judged once more on all of them, so a move that slows to a creep after
   its first few estimates past the bend (settled, but at just over a quarter of the
   rise's rate) ends on a plateau too. A move between two plateaus that was never judged
   (one or more segments, each closed before ``confirm`` bins followed its knot; or, with
   none, the largest change between neighbouring bins of the segment before, a plateau
   settled before a step arrived, which a continuous fit follows only with a bend on each
   side; or that change in the first plateau's bins when the short segments after it move
   less than :data:`RELATIVE` times as far, a creep onto the new level) is judged when the
   plateau after it settles, online or at train end
   (:func:`~.announce.step_between_plateaus`; at train end also a plateau one bin short of
   ``confirm`` bins after its knot, for that step alone: nothing else is settled from so few
   bins): if it rises or falls against the first plateau's slope on that plateau's last
   bins (its settled line may hold the move's first estimate, which sets the bar to leave
   it too high), and the new plateau lies
   ``threshold`` noise levels or more from those bins, in the move's direction, it is a
   step: the first plateau's end at the move's first bin, the second's start at its last
   (a first plateau whose start was too close to the milestone before it to be announced is
   judged from the bin after that milestone, the corner below it). An excursion of an
   estimate or two returns to the old level, so it is no step.

So nothing is announced from fewer than ``confirm`` bins after a bend (one fewer for a
strong bend; no edge effect), a straight or gently curving series gives no milestone, and
the delay is a few points for peaks, troughs and plateau ends, longer for plateau starts
at high noise (a flat slope needs enough points to be told from a slow rise).

The verdicts below are the rule's single statement, which :class:`MilestoneDetector`
(:mod:`~lightning_devinterp.milestones.detector`) applies as it reads the series. The
offline refit (:func:`~lightning_devinterp.milestones.refine.refine_milestones`), with every
point known on both sides, instead chooses the number of knots of one fit of the whole series
and shares the kinds, the separation and the noise measure. The numeric kernels are in
:mod:`~lightning_devinterp.milestones.fit`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lightning_devinterp.milestones.fit import LineFit, is_hump
from lightning_devinterp.milestones.settings import DetectorSettings

MAD_SCALE = 1.4826  # median absolute deviation to standard deviation, Gaussian noise
TRIM_KEEP = 0.9  # the smallest 90% of the neighbour residuals measure the noise
TRIM_Z = 1.6449  # |z| below which a standard normal lies 90% of the time
#: E[z^2 | |z| < TRIM_Z] of a standard normal: the kept residuals' mean square per variance
TRIM_SCALE = 1.0 - 2.0 * TRIM_Z * math.exp(-(TRIM_Z**2) / 2) / math.sqrt(2 * math.pi) / TRIM_KEEP
#: degrees of freedom of that mean square per residual (simulated: neighbour residuals of
#: independent noise, 12 to 64 of them, share points and lose a tenth to the trimming)
RESIDUAL_DOF = 0.45
#: the residuals' level is at most this many times their median's reading: where more than a
#: tenth are large (a transient excursion of a few points), the trimming does not leave them out
MEDIAN_CAP = 2.5
PERSIST = 2  # consecutive identical verdicts that settle a segment's trend
RELATIVE = 0.25  # a plateau's slope is below this fraction of its neighbours'
STRONG = 2.0  # evidence this many times the thresholds settles with one bin fewer, at once
HUMP_Z = 3.0  # end slopes of opposite signs beyond this z make a segment a round top
CHI2_Z10 = 1.2816  # the standard normal's 90% quantile
VARIANCE_CAP = 10.0  # chain step variances are capped at this many times their median
ROUND = "round"  # verdict: inside the flat band, but the round top of a peak (no trend)


def transition_kind(before: str, after: str) -> str:
    """Kind of the milestone between a trend and the next (a different one)."""
    if before == "rising" and after == "falling":
        return "peak"
    if before == "falling" and after == "rising":
        return "trough"
    if after == "flat":
        return "plateau_start"
    return "plateau_end"


def milestone_kind(
    before: str, after: str, slope: float, drop: float | None, mean_slope: float
) -> str:
    """:func:`transition_kind`, with a plateau left by a steep enough fall as a ``drop``.

    Args:
        before: Trend before the milestone.
        after: Trend after it.
        slope: Slope of the segment after it, per decade.
        drop: The detector's ``drop`` setting (None: no drops).
        mean_slope: The series' mean slope (:func:`mean_slope`).
    """
    kind = transition_kind(before, after)
    if kind == "plateau_end" and after == "falling" and drop is not None:
        if -slope >= drop * mean_slope:
            return "drop"
    return kind


def too_close(x: float, last_x: float | None, min_separation: float) -> bool:
    """Whether a milestone at log10-step ``x`` is too close to the last one at ``last_x``."""
    return last_x is not None and x - last_x < min_separation


def slope_change_z(
    before: tuple[float | None, float | None], after: LineFit, sigma: float
) -> float | None:
    """The change of slope at a milestone in noise units: ``|s_after - s_before|`` over its
    standard error. ``before`` is the previous trend's (slope, root_sxx); None if unknown."""
    slope, root_sxx = before
    if slope is None or not root_sxx or not after.root_sxx:
        return None
    se = sigma * math.hypot(1.0 / root_sxx, 1.0 / after.root_sxx)
    return abs(after.slope - slope) / se if se > 0 else None


def mean_slope(
    x_first: float, x_last: float, spread: float, sigma: float, floor: float = 0.0
) -> float:
    """The series' mean absolute slope per decade: ``spread`` over the span of x.

    The span counts at least one decade, the spread at least five noise levels and the
    slope at least ``floor`` (:func:`slope_floor`).
    """
    return max(max(spread, 5.0 * sigma) / max(x_last - x_first, 1.0), floor)


def slope_floor(values: Sequence[float] | np.ndarray, settings: DetectorSettings) -> float:
    """The least mean slope per decade a series counts: ``level_slope`` times its level, the
    median magnitude of its values (0 without any)."""
    magnitudes = np.abs(np.asarray(values, dtype=float))
    finite = magnitudes[np.isfinite(magnitudes)]
    return settings.level_slope * float(np.median(finite)) if finite.size else 0.0


def trend_verdict(
    line: LineFit,
    sigma: float,
    band: float,
    bins: tuple[np.ndarray, np.ndarray, np.ndarray],
    settings: DetectorSettings,
    previous: tuple[str | None, float | None] = (None, None),
) -> str | None:
    """The trend a line fitted to a segment's bins shows, next to the trend before it.

    A plateau is flat next to its neighbours: after a rise (fall) the band widens to
    :data:`RELATIVE` times that rise's steepest slope (a rise that slows to under a quarter
    of its rate, at once or in steps, has reached a plateau, even if it still creeps up or
    sags a little), and
    after a plateau a trend needs a slope beyond ``1 / RELATIVE`` times the plateau's (a
    creeping plateau is not left by creeping on). Both only for a segment spanning
    ``min_separation`` decades or more, a sag against the trend before twice that
    (:func:`neighbour_band`).

    Args:
        line: The line fitted to the segment's bins.
        sigma: Noise level of one observation.
        band: Half-width of the flat band (``flat`` times the mean slope).
        bins: The segment's (x, y, w), for the round-top check.
        settings: The detector's settings (``trend_threshold``, ``flat_threshold``).
        previous: The trend settled before the segment and its slope, a rise's or fall's
            steepest (None: none yet).

    Returns:
        ``"rising"`` or ``"falling"`` (slope beyond the band and ``trend_threshold``
        standard errors), ``"flat"`` (``|slope| + flat_threshold * se`` inside the band),
        :data:`ROUND` (inside the band, but the bins are the round top of a peak or the
        bottom of a trough: no trend), or None (undecided).
    """
    se = line.slope_se(sigma)
    span = bins[0][-1] - bins[0][0]
    band, floor = neighbour_band(band, line.slope, span, previous, settings.min_separation)
    bar = max(band, floor, settings.trend_threshold * se)
    if line.slope > bar:
        return "rising"
    if line.slope < -bar:
        return "falling"
    if abs(line.slope) + settings.flat_threshold * se < band:
        return ROUND if is_hump(*bins, sigma, HUMP_Z) else "flat"
    return None


def neighbour_band(
    band: float,
    slope: float,
    span: float,
    previous: tuple[str | None, float | None],
    min_separation: float,
) -> tuple[float, float]:
    """The flat band of a segment of ``slope`` spanning ``span`` decades after the
    ``previous`` (trend, slope), and the slope a trend needs at least (see
    :func:`trend_verdict`). Only for a segment of ``min_separation`` or more (a stage; a
    shorter one is the round top of a peak), and of twice that against the trend before
    (room for a milestone at each end; a shorter turn is the top of a peak or the bottom of
    a V)."""
    trend, before = previous
    if before is None or span < min_separation:
        return band, 0.0
    if trend == "flat":
        return band, abs(before) / RELATIVE
    if trend in ("rising", "falling") and (slope * before > 0 or span >= 2 * min_separation):
        return max(band, RELATIVE * abs(before)), 0.0
    return band, 0.0


def steepened(before: float | None, after: float, span: float, min_separation: float) -> bool:
    """Whether a trend that continues with a slope ``after`` more than ``1 / RELATIVE`` times
    its slope ``before`` (same sign) makes the stretch before, spanning ``span`` decades (a
    stage: at least ``min_separation``), a plateau next to it."""
    if before is None or span < min_separation or before * after < 0:
        return False
    return abs(before) < RELATIVE * abs(after)


def sharper_bend(before: float | None, after: float, span: float, min_separation: float) -> bool:
    """Whether a move that left a plateau with slope ``before`` and goes on, after a stretch of
    ``span`` decades (at least ``min_separation``), with ``after`` (same sign) bends more at the
    second knot than it did at the plateau's end: its slope more than doubles (``after -
    before`` beyond ``before - 0``)."""
    if before is None or span < min_separation or before * after <= 0:
        return False
    return abs(after) > 2.0 * abs(before)


def chain_step_variance(before: Sequence[float], after: Sequence[float]) -> float | None:
    """Variance of one observation measured by chains with common random numbers.

    Chain ``c`` of two consecutive estimates shares its seed, so its change ``after[c] -
    before[c]`` is free of what the chains share; its spread across chains, over the number
    of chains, is the variance of the change of the mean, twice that of one observation.
    None without two finite pairs (or when the chain counts differ).
    """
    if len(before) != len(after) or len(after) < 2:
        return None
    change = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    if not np.isfinite(change).all():
        return None
    return float(change.var(ddof=1)) / (2 * len(change))


def pooled_chain_noise(variances: Sequence[float], dofs: Sequence[int]) -> float | None:
    """Noise level from the chains' step variances (:func:`chain_step_variance`), pooled by
    their degrees of freedom, each capped at :data:`VARIANCE_CAP` times their median (a step
    where the chains part, as at a transition, says little of the noise), at its upper 90%
    confidence bound (a short history must not under-estimate it, or noise passes for a
    bend); None before any."""
    total = float(sum(dofs))
    if total <= 0:
        return None
    cap = VARIANCE_CAP * float(np.median(variances)) if len(variances) >= 3 else math.inf
    pooled = sum(min(v, cap) * d for v, d in zip(variances, dofs, strict=True)) / total
    return math.sqrt(pooled / chi2_quantile(total, -CHI2_Z10))


def residual_noise(residuals: Sequence[float] | np.ndarray) -> float:
    """Noise level of one observation from the last normalized neighbour residuals, online:
    the root mean square of their smallest :data:`TRIM_KEEP` (the few large ones at corners
    left out), scaled to a Gaussian's standard deviation, at its upper 90% confidence bound
    (a short history, quiet by chance, must not pass noise for a bend), and at most
    :data:`MEDIAN_CAP` times their median's reading."""
    r = sorted(abs(float(v)) for v in residuals)  # a short list: faster than numpy
    kept = r[: max(math.ceil(TRIM_KEEP * len(r) - 1e-9), 1)]
    sigma = math.sqrt(sum(v * v for v in kept) / len(kept) / TRIM_SCALE)
    sigma /= math.sqrt(chi2_quantile(RESIDUAL_DOF * len(r), -CHI2_Z10))
    return min(sigma, MEDIAN_CAP * median_reading(r))


def median_reading(magnitudes: list[float]) -> float:
    """``1.4826 * median`` of sorted residual magnitudes: a Gaussian's standard deviation,
    robust to up to half of them being large."""
    m = len(magnitudes)
    return MAD_SCALE * (0.5 * (magnitudes[(m - 1) // 2] + magnitudes[m // 2]))


def chi2_quantile(dof: float, z: float) -> float:
    """The quantile of a chi-squared variable over its degrees of freedom where a standard
    normal has ``z`` (Wilson-Hilferty: the median at ``z = 0``, the 10% quantile at
    ``z = -1.2816``, within 7% at 2 degrees of freedom and 1% from 4 on)."""
    a = 2.0 / (9.0 * dof)
    return max(1.0 - a + z * math.sqrt(a), 1e-3) ** 3


def flat_next_to(
    line: LineFit,
    after: LineFit,
    sigma: float,
    band: float,
    bins: tuple[np.ndarray, np.ndarray, np.ndarray],
    settings: DetectorSettings,
) -> bool:
    """Whether a stretch left undecided is flat, judged once the segment ``after`` it is
    settled: flat by :func:`trend_verdict`, or without a significant slope (within
    ``trend_threshold`` standard errors of 0), not a round top or bottom, and flat next to
    ``after`` (``|slope| + flat_threshold * se`` below ``flat`` times its slope). Early in a series
    the flat band is narrow (its mean slope is small until the first large change), so a
    plateau before the first large change is only seen as one once that change is."""
    verdict = trend_verdict(line, sigma, band, bins, settings)
    if verdict in ("flat", ROUND) or is_hump(*bins, sigma, HUMP_Z):
        return verdict == "flat"  # a round top or bottom is no plateau
    se = line.slope_se(sigma)
    relative = settings.flat * abs(after.slope)
    slope = abs(line.slope)
    return slope < settings.trend_threshold * se and slope + settings.flat_threshold * se < relative


def noise_level(
    residuals: Sequence[float] | np.ndarray,
    stds: Sequence[float],
    value_scale: float,
    settings: DetectorSettings,
    *,
    online: bool,
    chain_noise: float | None = None,
) -> float | None:
    """Noise level of one observation (see step 2 of the module docstring).

    Args:
        residuals: Normalized neighbour residuals (:func:`~.fit.norm_residual`).
        stds: Spreads passed with the estimates (fallback and floor).
        chain_noise: The level measured by the chains (:func:`pooled_chain_noise`); when
            given it is used instead of the residuals (it exists from the second point on
            and is not inflated by the curve's corners).
        value_scale: Largest magnitude of the values; the level is at least 1e-9 of it
            (at least of 1e-30).
        settings: The detector's settings (``noise``, ``std_floor``,
            ``min_noise_points``).
        online: Online, the residuals are trusted from ``min_noise_points`` on and read by
            :func:`residual_noise`; offline they are those of the whole series, read by
            their median (robust to every corner of it).

    Returns:
        The noise level, or None when there are neither enough residuals nor stds.
    """
    if settings.noise is not None:
        return settings.noise
    sigma = chain_noise
    if sigma is None and online and len(residuals) >= settings.min_noise_points:
        sigma = residual_noise(residuals)
    elif sigma is None and not online and len(residuals):
        sigma = median_reading(sorted(abs(float(v)) for v in residuals))
    elif sigma is None and stds:
        sigma = float(np.median(stds))
    if sigma is None:
        return None
    if settings.std_floor > 0 and stds:
        sigma = max(sigma, settings.std_floor * float(np.median(stds)))
    return max(sigma, 1e-9 * max(value_scale, 1e-30))
