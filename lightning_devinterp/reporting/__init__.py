"""Reporting: one sink per backend; sinks never compute science."""

from lightning_devinterp.reporting.jsonl import JsonlWriter, read_jsonl
from lightning_devinterp.reporting.scalars import log_scalars

__all__ = ["JsonlWriter", "log_scalars", "read_jsonl"]
