"""Online detection of developmental milestones in a series measured over training.

Milestones are the critical points of a series against ``log10(step)``: where a plateau
starts or ends, peaks and troughs. The detector reads one estimate at a time and announces
a milestone only once the data after it confirm it. How (log-step bins, noise measured
between neighbours, breaks of a piecewise-linear fit, trends, milestones) is described in
:mod:`lightning_devinterp.milestones.rules`, which holds the rules this detector shares
with its offline refit (:mod:`lightning_devinterp.milestones.refine`).

Example:
    >>> det = MilestoneDetector("llc")
    >>> for step, llc in history:  # doctest: +SKIP
    ...     for m in det.update(step, llc):
    ...         print(m.kind, m.step, "confirmed at", m.detected_at)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from typing import Any

import numpy as np

from lightning_devinterp.milestones.announce import settle, steeper
from lightning_devinterp.milestones.fit import (
    LineFit,
    line_fit,
    sustained_range,
)
from lightning_devinterp.milestones.records import Milestone, Stage
from lightning_devinterp.milestones.refine import refine_milestones
from lightning_devinterp.milestones.rules import (
    PERSIST,
    ROUND,
    STRONG,
    chain_step_variance,
    mean_slope,
    noise_level,
    pooled_chain_noise,
    slope_floor,
    trend_verdict,
)
from lightning_devinterp.milestones.segments import SegmentFit, find_break, segment_line
from lightning_devinterp.milestones.series_end import SeriesEnd
from lightning_devinterp.milestones.settings import (
    DetectorSettings,
    check_point,
    check_settings,
    check_weight,
)
from lightning_devinterp.milestones.state import Bins, DetectorState, keep_last

log = logging.getLogger(__name__)


class MilestoneDetector(SeriesEnd):
    """Online detector of critical points of a series against log(step).

    See :mod:`lightning_devinterp.milestones.rules` for the method. Feed it one estimate
    at a time with :meth:`update`; it returns the milestones that the new point confirmed
    (usually none). All confirmed milestones are in :attr:`milestones`, the stages between
    them in :attr:`stages`. :meth:`refine` re-fits the whole history offline (both sides
    of every point known) into :attr:`refined`, leaving the online answers untouched.
    Each setting below is kept as an attribute of the same name.

    Args:
        series: Name stored in each milestone (``"llc"``, ``"loss"``, ...).
        confirm: Bins that must follow a knot before the segment after it is judged
            (and before a break there can be found); one fewer for a bend twice the
            thresholds. Larger is safer and slower.
        min_separation: Minimum distance between announced milestones, in decades of
            step (``log10`` units).
        noise: Fixed noise level of one observation, in the series' units. ``None``
            (default) measures it from the series (see the rules' step 2).
        threshold: A break is accepted when the extra bend saves more than
            ``threshold**2`` noise variances of squared residuals (a z-score for the
            change of slope).
        trend_threshold: z-score a segment's slope needs to count as rising or falling.
        flat_threshold: A segment is flat when ``|slope| + flat_threshold * se`` is
            inside the flat band (0 judges on the slope alone).
        flat: Half-width of the flat band, as a fraction of the series' mean slope per
            decade (range of values so far over their span in decades, at least one
            decade; excursions of at most ``confirm`` bins count only up to 1.5 times
            the range of the rest). A straight series is never flat; a slope below this is flat
            however well it is measured.
        resolution: Width of the log10(step) bins.
        window: Number of recent bins used by the break test and by the noise
            estimate; bounds the cost of :meth:`update`.
        drop: If set, a plateau left by a fall at least ``drop`` times the series' mean
            slope is announced as ``"drop"`` instead of ``"plateau_end"`` (useful for a
            loss series, e.g. ``drop=2.0``).
        std_floor: If positive, the noise level is at least ``std_floor`` times the
            median ``std`` passed to :meth:`update`.
        min_noise_points: Residuals needed before the measured noise is trusted; until
            then the median ``std`` passed to :meth:`update` is used, or, without one,
            nothing is announced.
        level_slope: The series' mean slope (the unit of the flat band) counts at least
            ``level_slope`` times the median magnitude of its values per decade: a series
            moving by a few percent of its level is flat however well it is measured (the
            LLC of a converged model drifting 1% a decade, its noise far smaller with common
            random numbers). 0 for a series whose level means nothing (a logarithm).

    Example:
        >>> det = MilestoneDetector("llc", confirm=3)
        >>> new = det.update(1000, 12.5, std=0.4)
        >>> det.milestones, det.current_stage
        ([], 0)
    """

    def __init__(
        self,
        series: str = "llc",
        *,
        confirm: int = 3,
        min_separation: float = 0.1,
        noise: float | None = None,
        threshold: float = 4.0,
        trend_threshold: float = 3.0,
        flat_threshold: float = 1.0,
        flat: float = 0.5,
        resolution: float = 0.01,
        window: int = 64,
        drop: float | None = None,
        std_floor: float = 0.0,
        min_noise_points: int = 12,
        level_slope: float = 0.1,
    ) -> None:
        settings = DetectorSettings(
            series, confirm, min_separation, noise, threshold, trend_threshold, flat_threshold,
            flat, resolution, window, drop, std_floor, min_noise_points, level_slope,
        )  # fmt: skip
        vars(self).update(asdict(check_settings(settings)))
        self._state = DetectorState()
        self._range_cache = (-1, 0.0, 0.0)  # (closed bins, their sustained range, level)

    # ------------------------------------------------------------------ state
    def _settings(self) -> DetectorSettings:
        """The settings as they are now (the attributes of the same names)."""
        return DetectorSettings(**{f.name: getattr(self, f.name) for f in fields(DetectorSettings)})

    def state_dict(self) -> dict[str, Any]:
        """Returns the detector's full state as plain JSON-serializable Python types."""
        return {"config": asdict(self._settings()), **self._state.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the state saved by :meth:`state_dict` (this version's or version 1's).

        The constructor's settings are kept; a warning is logged if they differ from
        the saved ones (the continuation then differs from an uninterrupted run).
        """
        restored = DetectorState.from_dict(state)
        saved = state.get("config", {})
        config = asdict(self._settings())
        diff = {k: (v, saved.get(k)) for k, v in config.items() if saved.get(k) != v}
        if diff:
            log.warning("MilestoneDetector settings differ from the saved state: %s", diff)
        self._state = restored
        self._range_cache = (-1, 0.0, 0.0)

    # ------------------------------------------------------------- public view
    @property
    def milestones(self) -> list[Milestone]:
        """All milestones confirmed online, in order."""
        return list(self._state.milestones)

    @property
    def held_back(self) -> list[Milestone]:
        """Milestones found among transient estimates (see :meth:`update`), not announced."""
        return list(self._state.held_back)

    @property
    def refined(self) -> list[Milestone]:
        """Milestones of the last :meth:`refine` call (empty before one)."""
        return list(self._state.refined)

    @property
    def stages(self) -> list[Stage]:
        """Stages between consecutive online milestones; the last one is open."""
        return self._state.stages()

    @property
    def current_stage(self) -> int:
        """Index of the current (open) stage; 0 before any milestone."""
        return max(len(self._state.stage_starts) - 1, 0)

    @property
    def points(self) -> list[tuple[int, float]]:
        """The series as binned so far: (step, mean value) of each bin, the open one included."""
        _, values, _, steps = self._state.history()
        return [(int(step), float(value)) for step, value in zip(steps, values, strict=True)]

    @property
    def noise_level(self) -> float | None:
        """The noise level of one observation currently in use (``None`` if unknown)."""
        return self._noise()

    # ------------------------------------------------------------------ online
    def update(
        self,
        step: int,
        value: float,
        std: float | None = None,
        chains: Sequence[float] | None = None,
        transient: bool = False,
        weight: float = 1.0,
    ) -> list[Milestone]:
        """Adds one estimate and returns the milestones it confirmed.

        A non-finite ``value`` (a failed estimate) is skipped: the step is recorded as
        seen, nothing else changes, and an empty list is returned.

        Args:
            step: Training step of the estimate; strictly larger than the previous one.
                Step 0 is placed at step 1 on the log axis.
            value: The estimate (e.g. the LLC mean).
            std: Optional spread of the estimate (e.g. std across chains), used only as
                a fallback noise level early on and for ``std_floor``.
            chains: Optional per-chain estimates, drawn with the same seeds at every
                point (common random numbers): from the second point on, the spread of
                each chain's change measures the noise (the rules' step 2).
            transient: The estimate is not yet trustworthy (negative, chains that
                disagree): the weights are far from any minimum. A milestone at or before
                the last such point is held back (:attr:`held_back`) instead of
                announced; the stage takes the newer trend.
            weight: The number of observations ``value`` averages (e.g. the training steps
                of a bin of the training loss): its variance is the noise's over ``weight``,
                and its bin counts that many points.

        Returns:
            Milestones confirmed by this point (their ``detected_at`` is ``step``).

        Raises:
            ValueError: If ``step`` is not an integer >= 0 larger than the previous step,
                ``std`` is negative or ``weight`` is not positive.
        """
        st = self._state
        step, value, std = check_point(step, value, std, st.last_step)
        weight = check_weight(weight)
        st.last_step = step
        if transient:
            st.transient_until = step
        if not math.isfinite(value):
            return []
        if std is not None and math.isfinite(std):
            keep_last(st.stds, std, self.window)
        self._add_chains(chains, transient)
        x = math.log10(max(step, 1))
        index = math.floor(x / self.resolution + 1e-9)
        out: list[Milestone] = []
        if st.open_index is not None and index > st.open_index:
            st.close_bin(self.window)
            out = self._process(step)
        if not st.stage_starts:
            st.stage_starts.append(step)
            st.stage_trends.append("flat")
        st.add_point(index, step, x, value, weight)
        if st.bin_log_steps and x - st.bin_log_steps[-1] > self.resolution:
            # a sparse schedule (one point per bin): the bin is complete now, not when
            # the next point arrives a whole schedule step later
            st.close_bin(self.window)
            out += self._process(step)
        return out

    def _add_chains(self, chains: Sequence[float] | None, transient: bool) -> None:
        """Keeps the noise the chains measure between the previous point and this one
        (not from a transient point: chains that part there say nothing of the noise)."""
        st = self._state
        now = [float(v) for v in chains] if chains is not None else []
        variance = chain_step_variance(st.last_chains, now)
        if variance is not None:
            keep_last(st.chain_variances, variance, self.window)
            keep_last(st.chain_dofs, len(now) - 1, self.window)
        st.last_chains = now if not transient else []

    def _noise(self) -> float | None:
        st = self._state
        chain_noise = pooled_chain_noise(st.chain_variances, st.chain_dofs)
        return noise_level(
            st.residuals,
            st.stds,
            st.value_scale(),
            self._settings(),
            online=True,
            chain_noise=chain_noise,
        )

    def _mean_slope(self, sigma: float) -> float:
        """The series' mean absolute slope per decade so far (see the rules' step 4)."""
        st = self._state
        x, y = st.bin_log_steps, st.bin_values
        if st.value_min is None or st.value_max is None:
            return 0.0
        if self._range_cache[0] != len(y):
            raw = st.value_max - st.value_min
            values = np.asarray(y)
            sustained = sustained_range(values, raw, self.confirm)
            self._range_cache = (len(y), sustained, slope_floor(values, self._settings()))
        _, sustained, floor = self._range_cache
        return mean_slope(x[0], x[-1], sustained - 4.0 * sigma, sigma, floor)

    def _process(self, now: int) -> list[Milestone]:
        """Looks for breaks, then judges the current segment, after a bin is closed."""
        sigma = self._noise()
        if sigma is None:
            return []
        found: list[Milestone] = []
        while True:
            knot, value, end = find_break(self._state, sigma, self._settings())
            if knot is None:
                break
            found += self._break(knot, value, now, sigma)
        return found + self._judge(end, now, sigma)

    def _break(self, k: int, value: float, now: int, sigma: float) -> list[Milestone]:
        """Closes the current segment at a new knot ``k`` and starts the next."""
        st = self._state
        found: list[Milestone] = []
        if st.pending:
            found = self._close(k, now, sigma)
        elif st.trend in ("rising", "falling"):
            # the settled segment is closed: its slope from all its bins
            line = line_fit(*st.bins(max(st.knot, k - self.window + 1), k))
            st.trend_slope, st.trend_root_sxx = line.slope, line.root_sxx
            st.move_slope = steeper(st.move_slope, line.slope)
        st.prev_knot, st.knot, st.knot_value = st.knot, k, value
        st.knot_log_step = st.bin_log_steps[k]
        st.pending, st.candidate, st.candidate_count = True, None, 0
        return found

    def _close(self, k: int, now: int, sigma: float) -> list[Milestone]:
        """The open segment is closed at knot ``k``: its trend is decided with all its points;
        if still undecided, it does not change the trend. One closed before ``confirm`` bins
        follow its knot is not judged, as while it was open (a one-estimate excursion is no
        peak and trough); the first knot of such short segments is kept until the next
        judgment, which weighs them as one move if a plateau then follows a plateau."""
        st = self._state
        if k - st.knot < self.confirm:
            if st.short_since is None:
                st.short_since = st.knot
            return []
        trend, fit = self._classify(st.knot, k, sigma)
        if trend is None and st.trend is None and k - st.knot >= 2 * self.confirm:
            trend = "flat"  # the series has not moved significantly yet
        if trend is None:
            if st.undecided_from is None:
                st.undecided_from = st.knot
            st.short_since = None
            return []
        if fit.knot == st.knot:  # placed between bins on all the segment's points
            st.knot_log_step = fit.at
        return self._settle(trend, fit.line, now, sigma)

    def _judge(self, end: int, now: int, sigma: float) -> list[Milestone]:
        """Judges the open segment on bins up to ``end``; settles it on a repeated verdict,
        or on one strong verdict (see the rules' step 4)."""
        st = self._state
        if not st.pending or end - st.knot < self.confirm - 1:
            return []
        early = end - st.knot < self.confirm
        fit = segment_line(st, st.knot, end, self._settings())
        line = fit.line
        trend = self._verdict(line, fit.bins, sigma)
        if trend is None:
            return []
        # strong: twice the thresholds, and the same verdict without the last bin
        strong = (
            self._verdict(line, fit.bins, sigma, STRONG) == trend
            and self._classify(st.knot, end - 1, sigma)[0] == trend
        )
        if early and not strong:
            return []
        st.place_knot(fit.knot, fit.value, fit.at)
        if trend == st.candidate:
            st.candidate_count += 1
        else:
            st.candidate, st.candidate_count = trend, 1
        if st.candidate_count < PERSIST and not strong:
            return []
        return self._settle(trend, line, now, sigma)

    def _classify(self, a: int, n: int, sigma: float) -> tuple[str | None, SegmentFit]:
        """Trend of the segment from knot ``a`` to bin ``n`` (None while undecided), and the
        segment's fit (its knot re-placed)."""
        fit = segment_line(self._state, a, n, self._settings())
        return self._verdict(fit.line, fit.bins, sigma), fit

    def _verdict(
        self,
        line: LineFit,
        bins: Bins,
        sigma: float,
        margin: float = 1.0,
        flat_margin: float | None = None,
    ) -> str | None:
        """The trend of a segment's ``line`` (None while undecided or a round top), with the
        trend and flat thresholds times ``margin`` (the flat one ``flat_margin`` if given)."""
        band = self.flat * self._mean_slope(sigma)
        st = self._state
        moving = st.trend in ("rising", "falling") and st.move_slope is not None
        previous = (st.trend, st.move_slope if moving else st.trend_slope)
        settings = self._settings()
        if margin != 1.0 or flat_margin is not None:
            flat_threshold = margin * max(settings.flat_threshold, 0.5)
            settings = replace(
                settings,
                trend_threshold=margin * settings.trend_threshold,
                flat_threshold=flat_threshold if flat_margin is None else flat_margin,
            )
        trend = trend_verdict(line, sigma, band, bins, settings, previous)
        return None if trend == ROUND else trend

    def _settle(self, trend: str, line: LineFit, now: int, sigma: float) -> list[Milestone]:
        """The current segment's trend is known: announce the milestones it makes."""
        scale = self._mean_slope(sigma)
        return settle(self._state, self._settings(), trend, line, now, sigma, scale)

    # ----------------------------------------------------------------- offline
    def refine(self) -> list[Milestone]:
        """Re-fits the whole history offline and returns the final milestones.

        The series (on the same log-step grid, the open bin included) is fitted with the
        continuous piecewise-linear function of ``log10(step)`` whose number of knots
        explains it best (``threshold**2`` noise variances per knot) and each piece judged
        by its slope: see :func:`~.refine.refine_milestones`. The result is
        stored in :attr:`refined`; :attr:`milestones` is unchanged.

        Returns:
            The refined milestones.
        """
        st = self._state
        st.refined = []
        if st.last_step is not None:
            x, y, w, _ = st.history()
            st.refined = refine_milestones(
                x, y, w, stds=st.stds, last_step=st.last_step, settings=self._settings()
            )
        return list(st.refined)
