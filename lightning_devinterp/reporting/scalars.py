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
