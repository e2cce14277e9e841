"""The default loss of a LightningModule while it is sampled: its own ``training_step``, run
on the sampled copy, which sees the trainer read-only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]


class FrozenOptimizer:
    """An optimizer as a sampled ``training_step`` may see it: its settings, never a step."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.param_groups = [
            {key: value for key, value in group.items() if key != "params"}
            for group in optimizer.param_groups
        ]
        self.defaults = dict(optimizer.defaults)

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            f"A sampled copy's training_step used optimizer.{name}; the monitor lets it read "
            "param_groups and defaults only. Pass loss_fn=... to the monitor."
        )


class TrainerView:
    """What the sampled copy's ``training_step`` sees of the trainer: every attribute of the
    real one, read only, except its optimizers (:class:`FrozenOptimizer`) and loggers (none).
    Nothing can be set on it."""

    def __init__(self, trainer: Trainer) -> None:
        object.__setattr__(self, "_real", trainer)

    def __getattr__(self, name: str) -> Any:
        if name == "optimizers":
            return [FrozenOptimizer(o) for o in self._real.optimizers]
        if name in ("loggers", "logger"):
            return [] if name == "loggers" else None
        return getattr(self._real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"A sampled copy's training_step set trainer.{name}; the monitor's view of the "
            "trainer is read-only. Pass loss_fn=... to the monitor."
        )


def _silent(*args: Any, **kwargs: Any) -> None:
    """``self.log`` of a sampled copy: nothing reaches training's metrics."""


def training_step_loss(trainer: Trainer) -> LossFn:
    """``loss_fn(copy, batch) = copy.training_step(batch, 0)``, with the copy (never the
    training module: sampling runs on copies) seeing :class:`TrainerView` as its trainer and
    its ``self.log``/``self.log_dict`` silenced."""
    view = TrainerView(trainer)

    def loss(module: torch.nn.Module, batch: Any) -> torch.Tensor:
        if isinstance(module, LightningModule) and module._trainer is not view:
            for sub in module.modules():
                if isinstance(sub, LightningModule):
                    sub._trainer = view  # type: ignore[assignment]
                    sub.log = sub.log_dict = _silent  # type: ignore[method-assign]
        return module.training_step(batch, 0)

    return loss


def check_optimization(pl_module: LightningModule, loss_fn: LossFn | None, label: str) -> None:
    """Refuse manual optimization without ``loss_fn``: that ``training_step`` steps the
    optimizers itself and need not return the loss, so it cannot be sampled."""
    if loss_fn is None and not pl_module.automatic_optimization:
        raise ValueError(
            f"{label} cannot sample through the training_step of "
            f"{type(pl_module).__name__}: with automatic_optimization=False it steps the "
            "optimizers itself. Pass loss_fn=lambda model, batch: <the mean loss> to the monitor."
        )
