"""What the end of a series settles: :meth:`SeriesEnd.finish`, the judgments that no later
point can change once training is over (see the rules' step 5, "When training ends")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_devinterp.milestones.announce import step_between_plateaus
from lightning_devinterp.milestones.records import Milestone

if TYPE_CHECKING:
    from lightning_devinterp.milestones.segments import SegmentFit
    from lightning_devinterp.milestones.state import DetectorState


class SeriesEnd:
    """The train-end part of :class:`~.detector.MilestoneDetector` (mixed into it). It reads
    the detector's state (``_state``) and settings (``confirm``, ``window``)
    and judges through the detector's own steps (``_process``, ``_noise``, ``_classify``,
    ``_verdict``, ``_settle``, ``_settings``, ``_mean_slope``), so the end of a series follows
    the same rules as the rest."""

    _state: DetectorState
    confirm: int
    window: int

    def finish(self) -> list[Milestone]:
        """Ends the series (training is over): the open bin is closed, and the open
        segment (``confirm`` bins after its knot or more) is settled on its last verdict,
        which no later point can repeat now; if that is undecided, on its slope alone.
        A rise or fall settled on its first bins is judged again on all of them: flat
        there, it starts a plateau (a rise that slowed to a creep over the last stretch).
        A segment one bin short of ``confirm`` is judged only as a plateau after a plateau,
        for the step between them (:meth:`_step_at_end`).

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
        if sigma is not None and end - st.knot == self.confirm - 1 >= 1:
            return found + self._step_at_end(end, sigma)
        if sigma is None or end - st.knot < self.confirm:
            return found
        if not st.pending:
            return found + self._rejudge_last(end, sigma)
        trend, fit = self._last_verdict(end, sigma)
        st.place_knot(fit.knot, fit.value, fit.at)
        if trend is None:
            return found
        return found + self._settle(trend, fit.line, st.last_step, sigma)

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

    def _last_verdict(self, end: int, sigma: float) -> tuple[str | None, SegmentFit]:
        """The open segment's trend up to ``end`` and its fit; undecided, judged on its slope
        alone (no later point can narrow it)."""
        trend, fit = self._classify(self._state.knot, end, sigma)
        if trend is None:
            trend = self._verdict(fit.line, fit.bins, sigma, flat_margin=0.0)
        return trend, fit

    def _step_at_end(self, end: int, sigma: float) -> list[Milestone]:
        """The open segment, one bin short of ``confirm``, is flat after a plateau: the move
        between them is judged by the step rule (:func:`~.announce.step_between_plateaus`),
        and nothing else is settled (a plateau's start, or a trend, from that few bins gave
        false alarms at train end)."""
        st = self._state
        if not st.pending or st.trend != "flat":
            return []
        trend, fit = self._last_verdict(end, sigma)
        if trend != "flat":
            return []
        knot = (st.knot, st.knot_value, st.knot_log_step)
        st.place_knot(fit.knot, fit.value, fit.at)
        scale = self._mean_slope(sigma)
        found = step_between_plateaus(st, self._settings(), fit.line, st.last_step, sigma, scale)
        if found is None:
            st.place_knot(*knot)
            return []
        return found
