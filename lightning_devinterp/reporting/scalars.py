"""Scalars to every logger a trainer has (CSV, TensorBoard, W&B, ...)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from lightning_devinterp.reporting.figures import figure_image


def log_scalars(loggers: Iterable[Any], metrics: Mapping[str, float], step: int) -> None:
    """Send finite scalars to each logger's ``log_metrics`` at ``step``, then flush it."""
    clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    if not clean:
        return
    for logger in loggers:
        logger.log_metrics(clean, step=step)
        logger.save()


def log_figure(loggers: Iterable[Any], tag: str, figure: Any, step: int) -> None:
    """Give a matplotlib figure, or its :func:`~.figures.figure_image`, to the loggers that
    show images (TensorBoard, W&B); a figure is drawn once, and only if one of them does."""
    shows = [lg for lg in loggers if type(lg).__name__ in ("TensorBoardLogger", "WandbLogger")]
    if not shows:
        return
    image = figure if isinstance(figure, np.ndarray) else figure_image(figure)
    for logger in shows:
        if type(logger).__name__ == "TensorBoardLogger":
            logger.experiment.add_image(tag, image, step, dataformats="HWC")
            logger.experiment.flush()
        else:
            import wandb

            logger.experiment.log({tag: wandb.Image(image), "trainer/global_step": step})
