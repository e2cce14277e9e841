"""Milestones out: a W&B table and summary entries, TensorBoard text."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from lightning_devinterp.milestones.records import Milestone

COLUMNS = ["series", "kind", "step", "detected_at", "value"]


def milestones_markdown(milestones: Sequence[Milestone]) -> str:
    """A markdown table of milestones."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for m in milestones:
        lines.append(f"| {m.series} | {m.kind} | {m.step} | {m.detected_at} | {m.value:.4g} |")
    return "\n".join(lines)


def report_milestones(
    loggers: Iterable[Any], milestones: Sequence[Milestone], step: int, tag: str
) -> None:
    """Give the milestones so far to the loggers that can show them: a table and run-summary
    entries for W&B, a text panel for TensorBoard."""
    for logger in loggers:
        kind = type(logger).__name__
        if kind == "WandbLogger":
            import wandb

            run = logger.experiment
            table = wandb.Table(
                columns=COLUMNS, data=[[getattr(m, c) for c in COLUMNS] for m in milestones]
            )
            run.log({f"{tag}/milestones": table, "trainer/global_step": step})
            for i, m in enumerate(milestones):
                run.summary[f"{tag}/milestone/{i}"] = {c: getattr(m, c) for c in COLUMNS}
        elif kind == "TensorBoardLogger":
            logger.experiment.add_text(f"{tag}/milestones", milestones_markdown(milestones), step)
            logger.experiment.flush()
