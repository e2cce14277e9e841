"""The milestone detectors of one monitor: fed its records, holding its milestones and stages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_devinterp.milestones.detector import MilestoneDetector
from lightning_devinterp.milestones.records import Milestone, Stage
from lightning_devinterp.milestones.series import loss_series, series_keys, write_milestones_json

#: What a monitor's ``milestones=`` argument may be.
MilestonesOption = bool | MilestoneDetector | Sequence[MilestoneDetector] | None


def default_detectors(name: str) -> list[MilestoneDetector]:
    """The monitor ``name``'s own curve and its L(w*), where sharp drops show."""
    return [MilestoneDetector(name), MilestoneDetector(loss_series(name), drop=2.0)]


class MilestoneTracker:
    """Feeds each detector its series from a monitor's records (:func:`series_keys`), and keeps
    what they found: milestones in order of confirmation, stages, the milestone file.

    Args:
        name: the monitor's name (its records' prefix).
        milestones: ``True`` for :func:`default_detectors`, ``False``/None for none, a
            :class:`MilestoneDetector` or a list of them.

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

    def __bool__(self) -> bool:
        return bool(self.detectors)

    def update(self, step: int, record: Mapping[str, Any]) -> list[Milestone]:
        """Give each detector its point of ``record``; the milestones this confirmed."""
        new = []
        for detector in self.detectors:
            value_key, std_key = series_keys(detector.series, self.name)
            value, std = record.get(value_key), record.get(std_key) if std_key else None
            if value is not None:
                new.extend(detector.update(step, value, std))
        return new

    @property
    def milestones(self) -> list[Milestone]:
        """Every milestone confirmed online so far, all series, in order of confirmation."""
        found = [m for d in self.detectors for m in d.milestones]
        return sorted(found, key=lambda m: (m.detected_at, m.step))

    @property
    def current_stage(self) -> int | None:
        """The stage of the first detector's series (None without detectors)."""
        return self.detectors[0].current_stage if self.detectors else None

    def stages(self, series: str) -> list[Stage]:
        """The stages of ``series`` (empty if no detector watches it)."""
        return next((d.stages for d in self.detectors if d.series == series), [])

    def refine(self) -> None:
        """Refit every series offline (each detector's ``refine()``)."""
        for detector in self.detectors:
            detector.refine()

    def write(self, path: Path) -> None:
        """Write online and refined milestones and every series' stages to ``path``."""
        write_milestones_json(
            path,
            self.milestones,
            [m for d in self.detectors for m in d.refined],
            {d.series: d.stages for d in self.detectors},
        )

    def state_dict(self) -> list[dict[str, Any]]:
        return [d.state_dict() for d in self.detectors]

    def load_state_dict(self, states: Sequence[dict[str, Any]]) -> None:
        for detector, state in zip(self.detectors, states, strict=False):
            detector.load_state_dict(state)
