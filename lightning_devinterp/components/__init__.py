"""Components: named subsets of parameters, and attention-head discovery."""

from lightning_devinterp.components.component import Component

__all__ = ["Component"]
