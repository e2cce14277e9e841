"""What a monitor samples: its data, its loss and its components."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer

from lightning_devinterp.callbacks.trainer_info import sampling_data
from lightning_devinterp.callbacks.trainer_view import training_step_loss
from lightning_devinterp.components import Component, attention_heads
from lightning_devinterp.sampling import SGLD, ChainSettings

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]
Components = Literal["heads"] | Sequence[Component] | None


@dataclass(frozen=True)
class SamplingRun:
    """One process's share of one sampling run, as the estimators take it."""

    model: LightningModule
    loss_fn: LossFn
    sampler: SGLD
    chains: ChainSettings
    transfer: Callable[[Any], Any]
    chain_ids: list[int]
    progress: Callable[[int, int], None]

    def keywords(self) -> dict[str, Any]:
        """The keyword arguments every sampling function of the estimators takes."""
        return {
            "sampler": self.sampler,
            "chains": self.chains,
            "transfer": self.transfer,
            "chain_ids": self.chain_ids,
            "progress": self.progress,
        }


class SamplingTarget:
    """A monitor's data (its own loader or the trainer's), loss (its own ``loss_fn`` or the
    module's ``training_step`` run on the sampled copy) and components (``"heads"``,
    discovered once, or a list).

    Raises:
        TypeError, ValueError: ``loss_fn`` is not callable, or ``components`` is neither
            ``"heads"`` nor a list of uniquely named :class:`Component`.
    """

    def __init__(
        self,
        dataloader: Iterable | None,
        loss_fn: LossFn | None,
        components: Components,
        label: str,
    ) -> None:
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(model, batch), got {loss_fn!r}.")
        _check_components(components)
        self.dataloader = dataloader
        self.loss_fn = loss_fn
        self.components = components
        self.label = label
        #: The components, once resolved against the model (empty before).
        self.resolved: list[Component] = []
        self._resolved = False

    def data(self, trainer: Trainer) -> Iterable:
        """The data sampled with (:func:`sampling_data`)."""
        return sampling_data(trainer, self.dataloader, self.label)

    def loss(self, trainer: Trainer) -> LossFn:
        """``loss_fn``, or the module's ``training_step`` on the copy (:func:`training_step_loss`)."""
        return self.loss_fn or training_step_loss(trainer)

    def resolve(self, pl_module: LightningModule) -> list[Component]:
        """The components, discovered (``"heads"``) and checked against the model once."""
        if not self._resolved:
            found = attention_heads(pl_module) if self.components == "heads" else self.components
            self.resolved = list(found or [])
            for component in self.resolved:
                component.validate(pl_module)
            self._resolved = True
        return self.resolved

    def groups(self) -> dict[str, list[str]]:
        """Component names by group (a layer's heads), for dashboards."""
        groups: dict[str, list[str]] = {}
        for component in self.resolved:
            groups.setdefault(component.group or "components", []).append(component.name)
        return groups


def _check_components(components: Any) -> None:
    if components is None or components == "heads":
        return
    if isinstance(components, str) or not all(isinstance(c, Component) for c in components):
        raise TypeError(
            f"components={components!r} is invalid; use 'heads' or a list of Component."
        )
    names = [c.name for c in components]
    if len(set(names)) != len(names):
        raise ValueError(f"Component names must be unique, got {names}.")
