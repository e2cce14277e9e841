"""Loss functions as sampling calls them: what a ``loss_fn`` may return, and its mean."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

LossFn = Callable[[nn.Module, Any], torch.Tensor]


class LossFnError(TypeError):
    """The loss function returned something that is not a usable loss."""


def loss_terms(value: Any) -> torch.Tensor:
    """The loss tensor in what a ``loss_fn`` returned, as returned (a scalar mean, or
    unreduced per-sample/per-token losses); a dict's ``"loss"`` entry (as ``training_step``
    may return)."""
    if isinstance(value, Mapping) and "loss" in value:
        value = value["loss"]
    if not isinstance(value, torch.Tensor):
        raise LossFnError(
            f"loss_fn returned {type(value).__name__}, expected a tensor: the mean loss, or "
            "unreduced per-sample/per-token losses (a dict with a 'loss' tensor also works)."
        )
    if not value.is_floating_point():
        raise LossFnError(f"loss_fn returned a {value.dtype} tensor; return a floating-point loss.")
    return value


def per_sample(terms: torch.Tensor) -> torch.Tensor:
    """Loss terms averaged over every dimension but the first (the sample); a scalar stays."""
    return terms.reshape(terms.shape[0], -1).mean(1) if terms.dim() > 1 else terms


def reduce_loss(value: Any) -> torch.Tensor:
    """The mean loss from what a ``loss_fn`` returned (see :func:`loss_terms`)."""
    value = loss_terms(value)
    return value.mean() if value.dim() else value


class LossCall(nn.Module):
    """Wraps ``loss_fn(model, batch)`` as a module so ``functional_call`` can run it at w*:
    the mean loss, or with ``terms`` the loss terms as ``loss_fn`` returned them."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, terms: bool = False) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        self.terms = terms

    def forward(self, batch: Any) -> torch.Tensor:
        value = self.loss_fn(self.model, batch)
        return loss_terms(value) if self.terms else reduce_loss(value)
