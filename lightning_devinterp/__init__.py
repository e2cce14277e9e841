"""lightning_devinterp: developmental interpretability as PyTorch Lightning callbacks."""

from lightning_devinterp.callbacks import EssentialDynamics, LLCMonitor, SusceptibilityMonitor
from lightning_devinterp.components import Component, attention_heads
from lightning_devinterp.estimators import (
    Calibration,
    LLCEstimate,
    LLCHealthWarning,
    Susceptibilities,
    calibrate,
    estimate_llc,
    estimate_susceptibilities,
)
from lightning_devinterp.milestones import Milestone, MilestoneDetector, Stage
from lightning_devinterp.sampling import SGLD, ChainSettings, RMSpropSGLD, TypedDataLoader

__version__ = "0.1.0"

__all__ = [
    "SGLD",
    "Calibration",
    "ChainSettings",
    "Component",
    "EssentialDynamics",
    "LLCEstimate",
    "LLCHealthWarning",
    "LLCMonitor",
    "Milestone",
    "MilestoneDetector",
    "RMSpropSGLD",
    "Stage",
    "Susceptibilities",
    "SusceptibilityMonitor",
    "TypedDataLoader",
    "attention_heads",
    "calibrate",
    "estimate_llc",
    "estimate_susceptibilities",
    "__version__",
]
