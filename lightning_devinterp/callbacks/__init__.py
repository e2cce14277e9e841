"""The Lightning layer: schedules, isolation from training, DDP, state."""

from lightning_devinterp.callbacks.llc_monitor import LLCMonitor
from lightning_devinterp.callbacks.schedule import Schedule

__all__ = ["LLCMonitor", "Schedule"]
