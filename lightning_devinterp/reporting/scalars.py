"""Scalars to every logger a trainer has (CSV, TensorBoard, W&B, ...)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any


def log_scalars(loggers: Iterable[Any], metrics: Mapping[str, float], step: int) -> None:
    """Send finite scalars to each logger's ``log_metrics`` at ``step``, then flush it."""
    clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    if not clean:
        return
    for logger in loggers:
        logger.log_metrics(clean, step=step)
        logger.save()


def log_figure(loggers: Iterable[Any], tag: str, figure: Any, step: int) -> None:
    """Give a matplotlib figure to the loggers that show images (TensorBoard, W&B)."""
    for logger in loggers:
        kind = type(logger).__name__
        if kind == "TensorBoardLogger":
            logger.experiment.add_figure(tag, figure, step, close=False)
            logger.experiment.flush()
        elif kind == "WandbLogger":
            import wandb

            logger.experiment.log({tag: wandb.Image(figure), "trainer/global_step": step})
