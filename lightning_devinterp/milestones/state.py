"""The milestone detector's mutable state, and its plain-dict form for checkpoints."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, get_args, get_origin, get_type_hints

import numpy as np

from lightning_devinterp.milestones.fit import norm_residual
from lightning_devinterp.milestones.records import Milestone, Stage

STATE_VERSION = 7
#: the version that added each field after the first (an earlier state starts it at its
#: default): 3 the chains' noise and the settled slope, 4 the knot's place between bins, 5
#: the steepest slope of the current rise or fall, 6 the first knot of the short segments,
#: 7 the last transient point of the plateau the last milestone ended
FIELD_VERSION = {
    "last_chains": 3,
    "chain_variances": 3,
    "chain_dofs": 3,
    "trend_slope": 3,
    "trend_root_sxx": 3,
    "transient_until": 3,
    "held_back": 3,
    "knot_log_step": 4,
    "move_slope": 5,
    "short_since": 6,
    "plateau_transient_until": 7,
}


def fields_since(version: int) -> set[str]:
    """The fields a state of a version before ``version`` lacks."""
    return {name for name, added in FIELD_VERSION.items() if added >= version}


Bins = tuple[np.ndarray, np.ndarray, np.ndarray]  # log10(step), value and count of bins

# version 1 (before the state was a dataclass): where each field was saved, if elsewhere
_V1_PATHS = {
    "bin_log_steps": ("bins", "x"),
    "bin_values": ("bins", "y"),
    "bin_counts": ("bins", "w"),
    "bin_steps": ("bins", "step"),
    "open_index": ("open_bin", "index"),
    "open_count": ("open_bin", "n"),
    "open_sum_log_step": ("open_bin", "sx"),
    "open_sum_value": ("open_bin", "sy"),
    "open_first_step": ("open_bin", "step"),
    "residuals": ("resid",),
    "value_min": ("ymin",),
    "value_max": ("ymax",),
    "knot": ("anchor",),
    "prev_knot": ("prev_anchor",),
    "last_milestone_log_step": ("last_ms_x",),
}


@dataclass
class DetectorState:
    """Everything a :class:`MilestoneDetector` has learned from its series.

    A bin (see the rule in :mod:`~lightning_devinterp.milestones.rules`) is closed when
    a point of a later bin arrives; the points of the newest bin are kept as sums.
    Indices of bins count closed bins from 0.
    """

    # closed bins, the whole history (refine reads them all)
    bin_log_steps: list[float] = field(default_factory=list)  # mean log10(step) of each
    bin_values: list[float] = field(default_factory=list)  # mean value of each
    bin_counts: list[float] = field(default_factory=list)  # points in each (fit weights)
    bin_steps: list[int] = field(default_factory=list)  # step each stands for
    # the open bin
    open_index: int | None = None  # its index on the log-step grid (None: empty)
    open_count: float = 0.0  # points in it (their weights)
    open_sum_log_step: float = 0.0  # sum of their log10(step)
    open_sum_value: float = 0.0  # sum of their values
    open_first_step: int = 0  # step of its first point
    last_step: int | None = None  # last step passed to update, finite value or not
    stds: list[float] = field(default_factory=list)  # the last `window` stds passed
    residuals: list[float] = field(default_factory=list)  # the last `window` residuals
    last_chains: list[float] = field(default_factory=list)  # per-chain values of the last point
    chain_variances: list[float] = field(default_factory=list)  # noise variances they measured
    chain_dofs: list[int] = field(default_factory=list)  # and the degrees of freedom of each
    value_min: float | None = None  # smallest bin value (None before the first bin)
    value_max: float | None = None  # largest bin value (None before the first bin)
    # segmentation
    knot: int = 0  # bin where the current segment starts
    prev_knot: int | None = None  # bin where the segment before it started
    pending: bool = True  # the current segment's trend is not settled yet
    candidate: str | None = None  # the current segment's latest verdict
    candidate_count: int = 0  # consecutive bins that gave that verdict
    undecided_from: int | None = None  # first knot of the undecided segments since a trend
    short_since: int | None = None  # first knot of the short segments just before this one
    knot_value: float | None = None  # fitted value at the knot (None before the first fit)
    knot_log_step: float | None = None  # log10(step) of the knot, between bins (None: at one)
    trend: str | None = None  # the last settled trend
    trend_slope: float | None = None  # slope of the line that settled it
    trend_root_sxx: float | None = None  # and its sqrt(sum w (x - xbar)^2)
    move_slope: float | None = None  # steepest slope of the current rise or fall
    last_milestone_log_step: float | None = None  # log10(step) of the last milestone
    # results
    milestones: list[Milestone] = field(default_factory=list)  # announced online
    stage_starts: list[int] = field(default_factory=list)  # first step of each stage
    stage_trends: list[str] = field(default_factory=list)  # trend of each stage
    refined: list[Milestone] = field(default_factory=list)  # of the last refine()
    transient_until: int | None = None  # last step whose estimate was transient
    plateau_transient_until: int | None = None  # the same, in the plateau the last milestone ended
    held_back: list[Milestone] = field(default_factory=list)  # found among transient points

    def add_point(
        self, index: int, step: int, log_step: float, value: float, weight: float = 1.0
    ) -> None:
        """Adds a finite estimate, counted ``weight`` times, to the open bin (grid index
        ``index``)."""
        if self.open_count == 0:
            self.open_index = index
            self.open_first_step = step
        self.open_count += weight
        self.open_sum_log_step += weight * log_step
        self.open_sum_value += weight * value

    def open_bin(self) -> tuple[float, float, float, int]:
        """The open bin as a bin: (mean log10 step, mean value, count, step)."""
        n = self.open_count
        x = self.open_sum_log_step / n
        step = self.open_first_step if n == 1 else round(10**x)
        return x, self.open_sum_value / n, float(n), step

    def close_bin(self, window: int) -> None:
        """Closes the open bin, and keeps the last ``window`` neighbour residuals."""
        for column, v in zip(self._columns(), self.open_bin(), strict=True):
            column.append(v)
        y = self.bin_values[-1]
        self.value_min = min(math.inf if self.value_min is None else self.value_min, y)
        self.value_max = max(-math.inf if self.value_max is None else self.value_max, y)
        self.open_index = None
        self.open_count = 0.0
        self.open_sum_log_step = self.open_sum_value = 0.0
        n = len(self.bin_values)
        if n >= 3:
            keep_last(self.residuals, float(norm_residual(*self.bins(n - 3, n - 1))[0]), window)

    def value_scale(self) -> float:
        """Largest magnitude of the bin values (infinite before the first bin)."""
        if self.value_min is None or self.value_max is None:
            return math.inf
        return max(abs(self.value_min), abs(self.value_max))

    def record(self, milestone: Milestone, after: str, log_step: float) -> Milestone | None:
        """Keeps a milestone (at ``log_step``), opens the stage of trend ``after`` and returns
        the milestone kept. One at or before the last transient point is held back instead
        (returns None), except a plateau's start, which moves to the first bin after the
        transient points (the stable stage that follows a transient excursion starts there),
        and a plateau's end at that point itself (the transient stage ended there; every point
        that confirmed it came after)."""
        ends = milestone.kind in ("plateau_end", "drop")
        until = self.transient_until
        if until is not None and (milestone.step < until or (milestone.step == until and not ends)):
            first = self.last_bin_to(until) + 1
            if milestone.kind != "plateau_start" or first >= len(self.bin_steps):
                self.held_back.append(milestone)
                return None
            milestone = replace(milestone, step=self.bin_steps[first], value=self.bin_values[first])
            log_step = self.bin_log_steps[first]
        self.plateau_transient_until = until if ends else None
        self.milestones.append(milestone)
        self.stage_starts.append(milestone.step)
        self.stage_trends.append(after)
        self.last_milestone_log_step = log_step
        return milestone

    def first_bin_from(self, step: int) -> int:
        """Index of the first closed bin at or after ``step`` (the number of bins if none)."""
        return bisect.bisect_left(self.bin_steps, step)

    def last_bin_to(self, step: int) -> int:
        """Index of the last closed bin at or before ``step`` (-1 if none)."""
        return bisect.bisect_right(self.bin_steps, step) - 1

    def place_knot(self, index: int, value: float, log_step: float) -> None:
        """Puts the current knot at bin ``index``, its fitted ``value`` and its place
        ``log_step`` between bins."""
        self.knot, self.knot_value, self.knot_log_step = index, value, log_step

    def move_last(self, milestone: Milestone, log_step: float) -> None:
        """Puts ``milestone`` (at ``log_step``) in place of the last one, its stage starting
        there (the last milestone moved by later points)."""
        self.milestones[-1] = milestone
        self.stage_starts[-1] = milestone.step
        self.last_milestone_log_step = log_step

    def stages(self) -> list[Stage]:
        """Stages between consecutive milestones; the last one is open."""
        starts, trends = self.stage_starts, self.stage_trends
        return [
            Stage(
                index=i,
                start=start,
                end=starts[i + 1] if i + 1 < len(starts) else None,
                trend=trend,
            )
            for i, (start, trend) in enumerate(zip(starts, trends, strict=True))
        ]

    def bins(self, lo: int, hi: int) -> Bins:
        """(log10 step, value, count) of the closed bins lo..hi, as arrays."""
        return (
            np.asarray(self.bin_log_steps[lo : hi + 1]),
            np.asarray(self.bin_values[lo : hi + 1]),
            np.asarray(self.bin_counts[lo : hi + 1]),
        )

    def history(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
        """(log10 step, value, count, step) of every bin, the open one included."""
        x, y, w, steps = (list(column) for column in self._columns())
        if self.open_count:
            for column, v in zip((x, y, w, steps), self.open_bin(), strict=True):
                column.append(v)
        return np.asarray(x), np.asarray(y), np.asarray(w), steps

    def _columns(self) -> tuple[list[float], list[float], list[float], list[int]]:
        return self.bin_log_steps, self.bin_values, self.bin_counts, self.bin_steps

    def to_dict(self) -> dict[str, Any]:
        """The state as plain JSON-serializable Python types: its version, then its fields."""
        return {"version": STATE_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorState:
        """Builds the state from :meth:`to_dict`'s output, this version's or an earlier one's.

        Raises:
            ValueError: If ``data`` is not a dict of a known version.
        """
        version = data.get("version") if isinstance(data, dict) else None
        if version not in range(1, STATE_VERSION + 1):
            raise ValueError(
                "load_state_dict expects a dict produced by MilestoneDetector.state_dict() "
                f"(version 1 to {STATE_VERSION}); got {type(data).__name__} with version "
                f"{version!r}."
            )
        values = {}
        for f in fields(cls):
            if version < FIELD_VERSION.get(f.name, 1):
                continue  # the dataclass default
            value: Any = data
            for key in _V1_PATHS.get(f.name, (f.name,)) if version == 1 else (f.name,):
                value = value[key]
            values[f.name] = _CONVERTERS[f.name](value)
        return cls(**values)


def keep_last(values: list[float], value: float, size: int) -> None:
    """Appends ``value``, dropping the oldest entry if there are more than ``size``."""
    values.append(value)
    if len(values) > size:
        del values[0]


def _converter(hint: Any) -> Callable[[Any], Any]:
    """A function that turns a saved value back into a field of type ``hint``."""
    args = get_args(hint)
    if get_origin(hint) is list:
        item = _converter(args[0])
        return lambda value: [item(v) for v in value]
    if type(None) in args:  # X | None
        inner = _converter(next(a for a in args if a is not type(None)))
        return lambda value: None if value is None else inner(value)
    if hint is Milestone:
        return Milestone.from_dict
    return hint


_CONVERTERS = {name: _converter(hint) for name, hint in get_type_hints(DetectorState).items()}
