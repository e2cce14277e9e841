"""The Lightning layer: schedules, isolation from training, DDP, state."""

from lightning_devinterp.callbacks.essential_dynamics import EssentialDynamics
from lightning_devinterp.callbacks.llc_monitor import LLCMonitor
from lightning_devinterp.callbacks.schedule import Schedule
from lightning_devinterp.callbacks.scheduled import ScheduledAnalysis
from lightning_devinterp.callbacks.susceptibility_monitor import SusceptibilityMonitor

__all__ = [
    "EssentialDynamics",
    "LLCMonitor",
    "Schedule",
    "ScheduledAnalysis",
    "SusceptibilityMonitor",
]
