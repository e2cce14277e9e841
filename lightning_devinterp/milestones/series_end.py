"""What the end of a series settles: :meth:`SeriesEnd.finish`, the judgments that no later
point can change once training is over (see the rules' step 5, "When training ends")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_devinterp.milestones.records import Milestone

if TYPE_CHECKING:
    from lightning_devinterp.milestones.state import DetectorState


class SeriesEnd:
    """The train-end part of :class:`~.detector.MilestoneDetector` (mixed into it). It reads
    the detector's state (``_state``) and settings (``confirm``, ``window``)
    and judges through the detector's own steps (``_process``, ``_noise``, ``_classify``,
    ``_verdict``, ``_settle``), so the end of a series follows the same rules as the rest."""

    _state: DetectorState
    confirm: int
    window: int

    def finish(self) -> list[Milestone]:
        """Ends the series (training is over): the open bin is closed, and the open
        segment (``confirm`` bins after its knot or more) is settled on its last verdict,
        which no later point can repeat now; if that is undecided, on its slope alone.
        A rise or fall settled on its first bins is judged again on all of them: flat
        there, it starts a plateau (a rise that slowed to a creep over the last stretch).

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
