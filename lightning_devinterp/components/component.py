"""A named subset of a model's parameter entries (for refined LLCs)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class Component:
    """A named subset of parameter entries: SGLD restricted to it moves only these.

    Args:
        name: how the component is reported, for example ``"l0h3"`` or ``"mlp"``.
        masks: parameter name (as in ``model.named_parameters()``) to a boolean tensor of
            that parameter's shape; ``True`` marks the entries the component owns.
        group: optional group label (for example the layer, ``"l0"``) so dashboards can
            draw related components in one chart.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> Component.from_patterns(model, "weight").numel()
        6
    """

    name: str
    masks: Mapping[str, torch.Tensor] = field(repr=False)
    group: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("Component name must be a non-empty string, e.g. 'l0h3'.")
        for pname, mask in self.masks.items():
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                raise TypeError(
                    f"Component {self.name!r}: mask for {pname!r} must be a bool tensor, got "
                    f"{type(mask).__name__}"
                    + (f" of dtype {mask.dtype}" if isinstance(mask, torch.Tensor) else "")
                    + "; build it with e.g. torch.zeros_like(param, dtype=torch.bool)."
                )

    @classmethod
    def from_patterns(
        cls, model: nn.Module, patterns: str | Iterable[str], name: str | None = None
    ) -> Component:
        """All entries of the parameters whose names match any glob pattern (``"layers.0.mlp.*"``)."""
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        masks = {
            pname: torch.ones_like(p, dtype=torch.bool)
            for pname, p in model.named_parameters()
            if any(fnmatch.fnmatchcase(pname, pat) for pat in patterns)
        }
        if not masks:
            names = [n for n, _ in model.named_parameters()]
            raise ValueError(
                f"No parameter matches {patterns}. Parameter names look like {names[:6]}; "
                "use glob patterns over these names."
            )
        return cls(name or ",".join(patterns), masks)

    def numel(self) -> int:
        """Number of parameter entries the component owns."""
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def validate(self, model: nn.Module) -> None:
        """Raise if a mask names a parameter the model lacks or has the wrong shape."""
        params = dict(model.named_parameters())
        for pname, mask in self.masks.items():
            if pname not in params:
                raise KeyError(
                    f"Component {self.name!r} names parameter {pname!r}, which the model does not "
                    f"have; available: {list(params)[:8]}..."
                )
            if mask.shape != params[pname].shape:
                raise ValueError(
                    f"Component {self.name!r}: mask for {pname!r} has shape {tuple(mask.shape)}, "
                    f"the parameter has {tuple(params[pname].shape)}."
                )
        if self.numel() == 0:
            raise ValueError(f"Component {self.name!r} owns no parameter entry (all masks False).")
