"""Milestones out: a W&B table and summary entries, TensorBoard text."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from lightning_devinterp.milestones.records import Milestone

COLUMNS = ["series", "kind", "step", "detected_at", "value", "evidence", "revises"]


def milestones_markdown(milestones: Sequence[Milestone]) -> str:
    """A markdown table of milestones."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for m in milestones:
        evidence = f"{m.evidence:.1f}" if m.evidence is not None else ""
        moved = f"moved from {m.revises}" if m.revises is not None else ""
        lines.append(
            f"| {m.series} | {m.kind} | {m.step} | {m.detected_at} | {m.value:.4g} | {evidence} "
            f"| {moved} |"
        )
    return "\n".join(lines)


def report_milestones(
    loggers: Iterable[Any],
    milestones: Sequence[Milestone],
    step: int,
    tag: str,
    stages: Sequence[str] = (),
) -> None:
    """Give the milestones and the stage view so far (``stages``: one line per stage) to the
    loggers that can show them: tables and run-summary entries for W&B, text panels for
    TensorBoard."""
    for logger in loggers:
        kind = type(logger).__name__
        if kind == "WandbLogger":
            import wandb

            run = logger.experiment
            table = wandb.Table(
                columns=COLUMNS, data=[[getattr(m, c) for c in COLUMNS] for m in milestones]
            )
            view = wandb.Table(columns=["stage", "stretch"], data=list(enumerate(stages)))
            run.log(
                {f"{tag}/milestones": table, f"{tag}/stages": view, "trainer/global_step": step}
            )
            for i, m in enumerate(milestones):
                run.summary[f"{tag}/milestone/{i}"] = {c: getattr(m, c) for c in COLUMNS}
            if stages:
                run.summary[f"{tag}/current_stage"] = stages[-1]
        elif kind == "TensorBoardLogger":
            logger.experiment.add_text(f"{tag}/milestones", milestones_markdown(milestones), step)
            if stages:
                text = "\n".join(f"{i}. {line}" for i, line in enumerate(stages))
                logger.experiment.add_text(f"{tag}/stages", text, step)
            logger.experiment.flush()
