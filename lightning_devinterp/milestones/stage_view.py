"""The stage view across series: each stage of a monitor's main curve, with what every other
series it watches (L(w*), each component's refined LLC, ...) does over that stretch."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lightning_devinterp.milestones.records import TRENDS, Stage

#: A trend shared by at least this many other series is written as "N others <trend>".
OTHERS = 3


@dataclass(frozen=True)
class StageSummary:
    """One stage of the main series and the trend of every series over it.

    Attributes:
        start: first step of the stage.
        end: step that closed it (None: the current stage).
        trends: series -> trend over the stage, the main series first.
    """

    start: int
    end: int | None
    trends: dict[str, str]

    def describe(self, open_end: str = "now") -> str:
        """One line: ``steps 250-950: llc rising; rllc/l0h1, rllc/l0h0 rising; 6 others flat``;
        the current stage ends at ``open_end`` (``"now"`` while training, ``"end"`` after)."""
        (main, trend), *rest = self.trends.items()
        by_trend: dict[str, list[str]] = {}
        for series, other in rest:
            by_trend.setdefault(other, []).append(series)
        largest = max(by_trend, key=lambda t: len(by_trend[t]), default=None)
        parts = [f"{main} {trend}"]
        for other in TRENDS:
            names = by_trend.get(other, [])
            if other == largest and len(names) >= OTHERS:
                parts.append(f"{len(names)} others {other}")
            elif names:
                parts.append(f"{', '.join(names)} {other}")
        end = self.end if self.end is not None else open_end
        return f"steps {self.start}-{end}: " + "; ".join(parts)


def trend_over(stages: Sequence[Stage], start: int, end: int | None, last: int) -> str | None:
    """The trend of the stage of ``stages`` that covers most of ``start..end`` in log step
    (``last``: the last step seen, the end of open stages); None if none overlaps it."""
    lo, hi = _log(start), _log(end if end is not None else last)
    best, share = None, 0.0
    for s in stages:
        overlap = min(hi, _log(s.end if s.end is not None else last)) - max(lo, _log(s.start))
        if overlap > share or (best is None and overlap >= 0 and hi == lo):
            best, share = s.trend, overlap
    return best


def stage_view(stages: Mapping[str, Sequence[Stage]], main: str, last: int) -> list[StageSummary]:
    """Each stage of ``main`` with the trend of every series of ``stages`` over it.

    Args:
        stages: the stages of each series (``MilestoneTracker.all_stages()``).
        main: the series whose stages set the stretches (the monitor's own curve).
        last: the last step seen.
    """
    out = []
    for stage in stages.get(main, []):
        trends = {main: stage.trend}
        for series, found in stages.items():
            trend = trend_over(found, stage.start, stage.end, last) if series != main else None
            if trend is not None:
                trends[series] = trend
        out.append(StageSummary(stage.start, stage.end, trends))
    return out


def _log(step: int) -> float:
    return math.log10(max(step, 1))
