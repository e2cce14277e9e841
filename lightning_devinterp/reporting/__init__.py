"""Reporting: one sink per backend; sinks never compute science."""

from lightning_devinterp.milestones.series import (
    loss_series,
    milestones_filename,
    series_keys,
    write_milestones_json,
)
from lightning_devinterp.reporting.jsonl import JsonlWriter, read_jsonl
from lightning_devinterp.reporting.milestones import report_milestones
from lightning_devinterp.reporting.scalars import log_figure, log_scalars
from lightning_devinterp.reporting.tensorboard import curve_layout, write_layout
from lightning_devinterp.reporting.wandb import declare_metrics, log_group_charts, wandb_runs

__all__ = [
    "JsonlWriter",
    "curve_layout",
    "declare_metrics",
    "log_figure",
    "log_group_charts",
    "log_scalars",
    "read_jsonl",
    "report_milestones",
    "wandb_runs",
    "write_layout",
    "loss_series",
    "milestones_filename",
    "series_keys",
    "write_milestones_json",
]
