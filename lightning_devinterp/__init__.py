"""lightning_devinterp: developmental interpretability as PyTorch Lightning callbacks."""

from lightning_devinterp.callbacks import LLCMonitor
from lightning_devinterp.components import Component
from lightning_devinterp.estimators import LLCEstimate, estimate_llc
from lightning_devinterp.sampling import SGLD

__version__ = "0.1.0"

__all__ = ["SGLD", "Component", "LLCEstimate", "LLCMonitor", "estimate_llc", "__version__"]
