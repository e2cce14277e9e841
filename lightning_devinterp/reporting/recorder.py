"""One monitor's records out to every sink: the JSON-lines file, the loggers' scalars, W&B's
metric declarations and per-group charts, TensorBoard's chart layout, health warnings and the
milestone tables. Free of Lightning: loggers are whatever objects the trainer holds."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_devinterp.estimators.diagnostics import LLCHealthWarning
from lightning_devinterp.milestones.records import Milestone
from lightning_devinterp.reporting.jsonl import JsonlWriter
from lightning_devinterp.reporting.milestones import report_milestones
from lightning_devinterp.reporting.scalars import log_scalars
from lightning_devinterp.reporting.tensorboard import curve_layout, write_layout
from lightning_devinterp.reporting.wandb import declare_metrics, log_group_charts, wandb_runs


class Recorder:
    """Sends each record of a monitor to every sink. Only the process that reports (rank 0)
    has an enabled recorder; on the others every call does nothing.

    Args:
        path: the JSON-lines file (None: no file).
        label: who speaks in warnings (``"LLCMonitor"``).
        loggers: the trainer's loggers.
        enabled: whether this process reports.
    """

    def __init__(
        self, path: Path | None, label: str, loggers: Iterable[Any] = (), enabled: bool = True
    ) -> None:
        self.writer = JsonlWriter(path) if path is not None else None
        self.label = label
        self.loggers = list(loggers)
        self.enabled = enabled
        self.groups: dict[str, list[str]] = {}
        self.families: list[str] = []
        self._declared: set[str] = set()
        self._layout_written = False

    @property
    def path(self) -> Path | None:
        """The JSON-lines file."""
        return self.writer.path if self.writer is not None else None

    def chart(self, groups: Mapping[str, Sequence[str]], families: Sequence[str]) -> None:
        """Draw ``<family>/<component>/mean`` of each group's components in one chart."""
        self.groups = {group: list(names) for group, names in groups.items()}
        self.families = list(families)

    def layout(self) -> dict[str, Any]:
        """TensorBoard's custom-scalars layout: one chart per group, for each family."""
        layout: dict[str, Any] = {}
        for family in self.families:
            layout.update(curve_layout(self.groups, family))
        return layout

    def claim(self) -> None:
        """Refuse to share the file with another run writing it now (:meth:`JsonlWriter.claim`)."""
        if self.enabled and self.writer is not None:
            self.writer.claim()

    def release(self) -> None:
        """Let another run write the file."""
        if self.writer is not None:
            self.writer.release()

    def rewrite(self, history: Iterable[Mapping[str, Any]]) -> None:
        """Make the file hold exactly ``history`` (a resumed run drops later, lost records)."""
        if self.enabled and self.writer is not None:
            self.writer.rewrite(history)

    def append(self, entry: Mapping[str, Any]) -> None:
        """Append an entry (a record or a failure) to the file only."""
        if self.enabled and self.writer is not None:
            self.writer.append(entry)

    def publish(
        self,
        record: Mapping[str, Any],
        metrics: Mapping[str, float],
        history: Sequence[Mapping[str, Any]],
        health: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Send one estimate out: the record to the file, ``metrics`` to every logger at the
        record's step, the group charts over ``history``, and each ``health`` warning (by
        what it is about) as an :class:`LLCHealthWarning`."""
        if not self.enabled:
            return
        step = record["step"]
        self.append(record)
        if not self._layout_written:
            write_layout(self.loggers, self.layout())
            self._layout_written = True
        runs = wandb_runs(self.loggers)
        declare_metrics(runs, metrics, self._declared)
        log_scalars(self.loggers, metrics, step)
        for family in self.families:
            log_group_charts(runs, history, self.groups, family, step)
        for subject, messages in (health or {}).items():
            for message in messages:
                warnings.warn(
                    f"{self.label}: {subject} at step {step}: {message}",
                    LLCHealthWarning,
                    stacklevel=2,
                )

    def publish_milestones(
        self, milestones: Sequence[Milestone], step: int, tag: str, stages: Sequence[str] = ()
    ) -> None:
        """The milestones and the stage view so far as W&B tables and summary, and TensorBoard
        text."""
        if self.enabled:
            report_milestones(self.loggers, milestones, step, tag, stages)
