"""What the end of a series settles: :meth:`SeriesEnd.finish`, the judgments that no later
point can change once training is over (see the rules' step 5, "When training ends")."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lightning_devinterp.milestones.fit import line_fit
from lightning_devinterp.milestones.records import Milestone

if TYPE_CHECKING:
    from lightning_devinterp.milestones.state import DetectorState


class SeriesEnd:
    """The train-end part of :class:`~.detector.MilestoneDetector` (mixed into it). It reads
    the detector's state (``_state``) and settings (``confirm``, ``threshold``, ``window``)
    and judges through the detector's own steps (``_process``, ``_noise``, ``_classify``,
    ``_verdict``, ``_settle``), so the end of a series follows the same rules as the rest."""

    _state: DetectorState
    confirm: int
    threshold: float
    window: int

    def finish(self) -> list[Milestone]:
        """Ends the series (training is over): the open bin is closed, and the open
        segment (``confirm`` bins after its knot or more) is settled on its last verdict,
        which no later point can repeat now; if that is undecided, on its slope alone.
        A rise or fall settled on its first bins is judged again on all of them: flat
        there, it starts a plateau (a rise that slowed to a creep over the last stretch).
        A short move left unjudged before the current segment is judged too: a step if the
        series stayed at its new level.

        Returns:
            Milestones this confirmed (their ``detected_at`` is the last step).
        """
        st = self._state
        if st.last_step is None:
            return []
        found: list[Milestone] = []
        if st.open_count:
            st.close_bin(self.window)
            found = self._process(st.last_step)
        sigma = self._noise()
        end = len(st.bin_values) - 1
        if sigma is not None and not st.pending:
            found += self._last_step_up_or_down(end, sigma)
        if sigma is None or end - st.knot < self.confirm:
            return found
        if not st.pending:
            return found + self._rejudge_last(end, sigma)
        trend, fit = self._classify(st.knot, end, sigma)
        if trend is None:  # no later point can narrow the slope: judged on the slope alone
            trend = self._verdict(fit.line, fit.bins, sigma, flat_margin=0.0)
        st.place_knot(fit.knot, fit.value, fit.at)
        if trend is None:
            return found
        return found + self._settle(trend, fit.line, st.last_step, sigma)

    def _last_step_up_or_down(self, end: int, sigma: float) -> list[Milestone]:
        """A short move between two stretches of one settled trend at train end: the
        segment before the current knot, closed before ``confirm`` bins followed it, was not
        judged (a one-estimate excursion is no peak and trough). If it rises or falls and the
        series stays at its new level to the end, it is a step the run ended too soon to
        confirm: the plateau's end at its knot, the new plateau's start at the current one
        (unless too close to it)."""
        st = self._state
        a, b = st.prev_knot, st.knot
        if a is None or b - a >= self.confirm or st.trend != "flat" or a < self.confirm:
            return []
        x, y = st.bin_log_steps, st.bin_values
        if st.stage_trends[-1] != "flat" or st.stage_starts[-1] >= st.bin_steps[a]:
            return []  # the move was judged, or a milestone lies at or after its start
        move = line_fit(*st.bins(a, b))
        trend = self._verdict(move, st.bins(a, b), sigma)
        jump = float(np.mean(y[b : end + 1]) - np.mean(y[a - self.confirm : a]))
        if trend not in ("rising", "falling") or (jump > 0) != (trend == "rising"):
            return []
        if abs(jump) < self.threshold * sigma:
            return []  # back to where it was: an excursion
        after = line_fit(*st.bins(b, end))
        st.place_knot(a, move.at(x[a]), x[a])
        found = self._settle(trend, move, st.last_step, sigma)
        st.place_knot(b, after.at(x[b]), x[b])
        return found + self._settle("flat", after, st.last_step, sigma)

    def _rejudge_last(self, end: int, sigma: float) -> list[Milestone]:
        """A settled rise or fall judged again on all its bins, up to ``end``: a plateau's
        start if flat there (against the move's steepest slope, see the rules' step 4)."""
        st = self._state
        if st.trend not in ("rising", "falling"):
            return []
        trend, fit = self._classify(st.knot, end, sigma)
        if trend != "flat":
            return []
        st.place_knot(fit.knot, fit.value, fit.at)
        return self._settle(trend, fit.line, st.last_step, sigma)
