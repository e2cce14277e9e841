"""The milestone detectors of one monitor: fed its records, holding its milestones and stages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_devinterp.milestones.detector import MilestoneDetector
from lightning_devinterp.milestones.records import Milestone, Stage
from lightning_devinterp.milestones.series import (
    estimate_prefixes,
    loss_series,
    series_keys,
    train_loss_series,
    transient,
    write_milestones_json,
)
from lightning_devinterp.milestones.stage_view import StageSummary, stage_view

#: What a monitor's ``milestones=`` argument may be.
MilestonesOption = bool | MilestoneDetector | Sequence[MilestoneDetector] | None


#: Width of the log10(step) bins the training loss is averaged over.
TRAIN_LOSS_RESOLUTION = 0.02


def train_loss_detector(name: str) -> MilestoneDetector:
    """The detector of the monitor ``name``'s training loss (:func:`train_loss_series`): it
    reads the logarithm of the loss averaged over bins of 0.02 decades (a late drop of a
    small loss counts like an early drop of a large one) and names a steep fall a drop."""
    return MilestoneDetector(
        train_loss_series(name),
        drop=2.0,
        resolution=TRAIN_LOSS_RESOLUTION,
        min_noise_points=8,
        level_slope=0.0,
    )


def default_detectors(name: str) -> list[MilestoneDetector]:
    """The monitor ``name``'s own curve, its L(w*), where sharp drops show, and its training
    loss, where they show first."""
    return [
        MilestoneDetector(name),
        MilestoneDetector(loss_series(name), drop=2.0),
        train_loss_detector(name),
    ]


class MilestoneTracker:
    """Feeds each detector its series from a monitor's records (:func:`series_keys`), and keeps
    what they found: milestones in order of confirmation, stages, the milestone file.

    Each detector gets the per-chain estimates of its series (their common random numbers
    measure its noise from the second point on) and whether the point is transient
    (:func:`transient`: milestones among transient points are held back).

    Args:
        name: the monitor's name (its records' prefix).
        milestones: ``True`` for :func:`default_detectors`, and one more for every other
            estimate the records carry (each component's refined LLC, each data-refined LLC),
            added as it first appears; ``False``/None for none; a :class:`MilestoneDetector`
            or a list of them (those series only).

    Raises:
        TypeError: ``milestones`` is none of these.
    """

    def __init__(self, name: str, milestones: MilestonesOption = True) -> None:
        if milestones is True:
            detectors = default_detectors(name)
        elif milestones is False or milestones is None:
            detectors = []
        elif isinstance(milestones, MilestoneDetector):
            detectors = [milestones]
        else:
            detectors = list(milestones)
        if not all(isinstance(d, MilestoneDetector) for d in detectors):
            raise TypeError(
                f"milestones={milestones!r} is invalid; use True, False, a MilestoneDetector or "
                "a list of them."
            )
        self.name = name
        self.detectors = detectors
        self.every_series = milestones is True

    def __bool__(self) -> bool:
        return bool(self.detectors)

    @property
    def series(self) -> list[str]:
        """The series watched, in order (the monitor's own curve first by default)."""
        return [d.series for d in self.detectors]

    def detector_of(self, series: str) -> MilestoneDetector | None:
        """The detector of ``series``, or None if none watches it."""
        return next((d for d in self.detectors if d.series == series), None)

    def update(self, step: int, record: Mapping[str, Any]) -> list[Milestone]:
        """Give each detector its point of ``record``; the milestones this confirmed."""
        if self.every_series:
            self._watch(estimate_prefixes(record))
        new = []
        for detector in self.detectors:
            value_key, std_key = series_keys(detector.series, self.name)
            value = record.get(value_key)
            if value is None:
                continue
            std = record.get(std_key) if std_key else None
            chains = record.get(f"{detector.series}/per_chain") if std_key else None
            held = transient(record, detector.series) if std_key else False
            new.extend(detector.update(step, value, std, chains=chains, transient=held))
        return new

    def _watch(self, series: Sequence[str]) -> None:
        """Adds a default detector for each of ``series`` not yet watched."""
        watched = set(self.series)
        self.detectors += [MilestoneDetector(s) for s in series if s not in watched]

    def finish(self) -> list[Milestone]:
        """Training is over: each detector settles what its last point left open
        (:meth:`MilestoneDetector.finish`); the milestones this confirmed."""
        return [m for detector in self.detectors for m in detector.finish()]

    @property
    def milestones(self) -> list[Milestone]:
        """Every milestone confirmed online so far, all series, in order of confirmation."""
        found = [m for d in self.detectors for m in d.milestones]
        return sorted(found, key=lambda m: (m.detected_at, m.step))

    @property
    def held_back(self) -> list[Milestone]:
        """Milestones found among transient estimates, not announced (all series)."""
        return sorted((m for d in self.detectors for m in d.held_back), key=lambda m: m.step)

    @property
    def current_stage(self) -> int | None:
        """The stage of the first detector's series (None without detectors)."""
        return self.detectors[0].current_stage if self.detectors else None

    def stages(self, series: str) -> list[Stage]:
        """The stages of ``series`` (empty if no detector watches it)."""
        detector = self.detector_of(series)
        return detector.stages if detector is not None else []

    def all_stages(self) -> dict[str, list[Stage]]:
        """The stages of every series watched, by series."""
        return {d.series: d.stages for d in self.detectors}

    def stage_view(self, last: int) -> list[StageSummary]:
        """Each stage of the first series with what every other series does over it
        (:func:`~.stage_view.stage_view`; ``last``: the last step seen)."""
        return stage_view(self.all_stages(), self.series[0], last) if self.detectors else []

    def refine(self) -> None:
        """Refit every series offline (each detector's ``refine()``)."""
        for detector in self.detectors:
            detector.refine()

    def write(self, path: Path) -> None:
        """Write online, held-back and refined milestones and every series' stages to
        ``path``."""
        write_milestones_json(
            path,
            self.milestones,
            [m for d in self.detectors for m in d.refined],
            self.all_stages(),
            self.held_back,
        )

    def state_dict(self) -> list[dict[str, Any]]:
        return [d.state_dict() for d in self.detectors]

    def load_state_dict(self, states: Sequence[dict[str, Any]]) -> None:
        """Restores each detector from the state saved for its series; with every series
        watched, also those added during the saved run. States without a series name (version
        1) are matched by position; saved series no detector here watches are ignored."""
        named = [s.get("config", {}).get("series") for s in states]
        if self.every_series:
            self._watch([s for s in named if isinstance(s, str)])
        for i, (series, state) in enumerate(zip(named, states, strict=True)):
            if isinstance(series, str):
                detector = self.detector_of(series)
            else:
                detector = self.detectors[i] if i < len(self.detectors) else None
            if detector is not None:
                detector.load_state_dict(state)
