"""Components: named subsets of parameters, and attention-head discovery."""

from lightning_devinterp.components.component import Component
from lightning_devinterp.components.heads import attention_heads

__all__ = ["Component", "attention_heads"]
