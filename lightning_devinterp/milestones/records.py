"""Plain records for milestones and the developmental stages between them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MILESTONE_KINDS = ("plateau_start", "plateau_end", "peak", "trough", "drop", "cusp")
TRENDS = ("rising", "falling", "flat")


@dataclass(frozen=True)
class Milestone:
    """A critical point of a series over training.

    Attributes:
        step: Training step where the milestone happened (the critical point).
        detected_at: Step of the observation that confirmed it. For an online detector
            this is a few points after ``step``; for an offline fit it is the last step
            of the series.
        kind: One of ``"plateau_start"``, ``"plateau_end"``, ``"peak"``, ``"trough"``,
            ``"drop"`` (a plateau left by a steep fall) or ``"cusp"`` (a sharp turn of an
            essential-dynamics trajectory).
        value: The series' fitted value at ``step`` (for a cusp: the turning angle in
            radians).
        series: Name of the series the milestone belongs to (``"llc"``, ``"loss"``, ...).
        evidence: How sure: the change of slope at the milestone in noise units (its
            z-score; above 3 is clear), or None where not measured.
        revises: The step where this milestone was first announced, when later points moved
            it (a plateau's end announced at the start of a slow move, moved to where the
            move steepens); None for a milestone announced where it is.
    """

    step: int
    detected_at: int
    kind: str
    value: float
    series: str
    evidence: float | None = field(default=None, compare=False)
    revises: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Returns the record as a JSON-serializable dict."""
        return {
            "step": int(self.step),
            "detected_at": int(self.detected_at),
            "kind": str(self.kind),
            "value": float(self.value),
            "series": str(self.series),
            "evidence": None if self.evidence is None else float(self.evidence),
            "revises": None if self.revises is None else int(self.revises),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Milestone:
        """Builds a milestone from the output of :meth:`to_dict`."""
        return cls(
            step=int(d["step"]),
            detected_at=int(d["detected_at"]),
            kind=str(d["kind"]),
            value=float(d["value"]),
            series=str(d["series"]),
            evidence=None if d.get("evidence") is None else float(d["evidence"]),
            revises=None if d.get("revises") is None else int(d["revises"]),
        )


@dataclass(frozen=True)
class Stage:
    """A developmental stage: the interval between two consecutive milestones.

    Attributes:
        index: Position of the stage, counting from 0.
        start: First step of the stage (the first observed step, or a milestone step).
        end: Step of the milestone that closed it; ``None`` for the current stage.
        trend: ``"rising"``, ``"falling"`` or ``"flat"``: what the series does in it.
    """

    index: int
    start: int
    end: int | None
    trend: str

    def to_dict(self) -> dict[str, Any]:
        """Returns the record as a JSON-serializable dict."""
        return asdict(self)
