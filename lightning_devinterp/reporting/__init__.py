"""Reporting: one sink per backend; sinks never compute science."""

from lightning_devinterp.reporting.jsonl import JsonlWriter, read_jsonl
from lightning_devinterp.reporting.scalars import log_scalars
from lightning_devinterp.reporting.tensorboard import curve_layout, write_layout

__all__ = ["JsonlWriter", "curve_layout", "log_scalars", "read_jsonl", "write_layout"]
