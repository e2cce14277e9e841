"""The sampling copy of a model: its sampled parameters are views into one flat vector, so
each SGLD step is one forward+backward and a handful of vectorized ops."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from lightning_devinterp.sampling.losses import LossCall, LossFn, loss_terms
from lightning_devinterp.sampling.sgld import NOISE_CHUNK, SGLD


class FlatModel:
    """A private copy of ``model`` prepared for sampling.

    The copy is made once; the entries that are sampled (all trainable parameters, or those
    of one component) become views into one flat vector ``params``. Gradients are applied
    and freed in backward (:meth:`gradient_steps_in_backward`) or stay where autograd puts
    them until the step (``.grad``, freed after it); w* is read from the original model's own
    weights (never written), so an estimate holds at most two extra copies of the weights:
    the chain and its gradient (about 1.5 when the gradient is applied in backward).
    Parameters that do not require grad are never touched.

    A LightningModule-style ``log``/``log_dict`` on the copy is replaced by a no-op, so a
    ``training_step`` used as the loss logs nothing.

    Args:
        model: the model at w*. It is deep-copied; the original is never modified.
        train_mode: run the copy in train mode (dropout on, BatchNorm batch statistics).
            The default, eval mode, makes the loss a deterministic function of the weights.
    """

    def __init__(self, model: nn.Module, train_mode: bool = False):
        self.source = {name: p.detach() for name, p in model.named_parameters()}
        self.module = copy.deepcopy(model)
        self.module.train(train_mode)
        for name in ("log", "log_dict"):
            if callable(getattr(self.module, name, None)):
                setattr(self.module, name, _ignore)
        self.named = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        if not self.named:
            raise ValueError(
                "The model has no trainable parameters (requires_grad=True); there is nothing "
                "to sample. Unfreeze the weights whose LLC you want."
            )
        kinds = {(p.dtype, p.device) for _, p in self.named}
        if len(kinds) > 1:
            raise ValueError(
                f"Trainable parameters have mixed dtypes/devices {sorted(map(str, kinds))}; "
                "sampling needs them on one device and dtype (cast the model first)."
            )
        self.dtype, self.device = kinds.pop()
        self.masks: Mapping[str, torch.Tensor] | None = None
        self.early_gradient = False
        self.activate(None)

    def activate(self, masks: Mapping[str, torch.Tensor] | None) -> None:
        """Sample only the entries marked in ``masks`` (all trainable entries when None).

        The copy must be at w* (as after construction or :meth:`reset`).
        """
        if masks is None and getattr(self, "active", None) is not None and self.masks is None:
            self.reset()  # already sampling everything: keep the buffers (no second copy)
            return
        if masks is not None:
            known = {n for n, _ in self.named}
            unknown = [n for n in masks if n not in known]
            if unknown:
                raise KeyError(
                    f"Masks name parameters that are not trainable parameters of the model: "
                    f"{unknown[:5]}. Known names look like {sorted(known)[:5]}."
                )
        active = [
            (n, p) for n, p in self.named if masks is None or (n in masks and bool(masks[n].any()))
        ]
        if not active:
            raise ValueError("The component owns no entry of any trainable parameter.")
        for _, p in self.named:
            p.requires_grad_(False)
        total = sum(p.numel() for _, p in active)
        flat = torch.empty(total, dtype=self.dtype, device=self.device)
        self.views = []
        offset = 0
        for _, p in active:
            n = p.numel()
            view = flat[offset : offset + n].view_as(p)
            view.copy_(p.detach())
            p.data = view  # the copy's own storage for p is freed here
            p.requires_grad_(True)
            self.views.append(view)
            offset += n
        self.active = active
        self.params = flat
        self.anchor_parts = [self.source[name] for name, _ in active]
        self.masks = masks
        self.index = None
        if masks is not None:
            selected = selection(active, masks, self.device)
            if not bool(selected.all()):
                self.index = selected.nonzero().squeeze(1)
                self.anchor_sub = flat[self.index]  # a copy of the component's w* entries
        size = self.index.numel() if self.index is not None else total
        self.noise = torch.empty(min(size, NOISE_CHUNK), dtype=self.dtype, device=self.device)

    def reset(self) -> None:
        """Put the sampled entries back at w*."""
        with torch.no_grad():
            for view, anchor in zip(self.views, self.anchor_parts, strict=True):
                view.copy_(anchor)

    def anchor(self) -> torch.Tensor:
        """w* of the sampled parameters as one flat vector (a new tensor)."""
        return torch.cat([a.reshape(-1) for a in self.anchor_parts])

    def loss_and_grad(self, loss_fn: LossFn, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss at the current weights, and the loss terms as ``loss_fn`` returned them
        (detached); the mean's gradient goes to the parameters' ``.grad``."""
        terms = loss_terms(loss_fn(self.module, batch))
        loss = terms.mean() if terms.dim() else terms
        if loss.requires_grad:  # False when no sampled entry affects the loss
            loss.backward()
        return loss.detach(), terms.detach()

    def grads(self) -> list[torch.Tensor]:
        """The gradient of each sampled parameter (zeros where the loss does not reach it)."""
        return [
            p.grad if p.grad is not None else torch.zeros_like(view)
            for (_, p), view in zip(self.active, self.views, strict=True)
        ]

    @property
    def grad(self) -> torch.Tensor:
        """The gradient of the sampled parameters as one flat vector (a new tensor)."""
        return torch.cat([g.reshape(-1) for g in self.grads()])

    @torch.no_grad()
    def loss_at_anchor(self, loss_fn: LossFn, batch: Any) -> torch.Tensor:
        """Loss terms of w* on ``batch`` (as ``loss_fn`` returns them), without moving the
        chain."""
        weights = {
            "model." + name: anchor
            for (name, _), anchor in zip(self.active, self.anchor_parts, strict=True)
        }
        call = LossCall(self.module, loss_fn, terms=True)
        return functional_call(call, weights, (batch,), strict=False)

    def sampled(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sampled entries, their gradient and their value at w* (flat)."""
        if self.index is None:
            return self.params, self.grad, self.anchor()
        return self.params[self.index], self.grad[self.index], self.anchor_sub

    @contextmanager
    def gradient_steps_in_backward(self, sampler: SGLD) -> Iterator[bool]:
        """Within it, each parameter's share of the gradient step is added as soon as backward
        has accumulated its gradient, which is then freed: the whole model's gradient is never
        held (an estimate's extra memory falls from two copies of the weights towards one),
        and :meth:`step` applies the rest of the update. Yields whether that is done: only
        when whole parameters are sampled and ``sampler.shrink >= 0.5`` (else the early
        gradient's scale ``1 / shrink`` would amplify rounding) and the sampler is not
        preconditioned; the plain way otherwise.

        Safe because autograd accumulates a parameter's gradient only after every node that
        uses the parameter has run, and the update writes through ``views`` (the flat
        vector), not the parameters whose versions those nodes saved.
        """
        if self.index is not None or sampler.preconditioned or sampler.shrink < 0.5:
            yield False
            return
        scale = sampler.early_gradient_scale

        def add_then_free(view: torch.Tensor) -> Callable[[torch.Tensor], None]:
            def hook(param: torch.Tensor) -> None:
                with torch.no_grad():
                    view.add_(param.grad, alpha=scale)
                param.grad = None

            return hook

        handles = [
            p.register_post_accumulate_grad_hook(add_then_free(view))
            for (_, p), view in zip(self.active, self.views, strict=True)
        ]
        self.early_gradient = True
        try:
            yield True
        finally:
            self.early_gradient = False
            for handle in handles:
                handle.remove()

    def chain_state(self, sampler: SGLD, num_burnin: int = 0) -> Any:
        """A new chain's sampler state (:meth:`SGLD.chain_state`) for the sampled entries."""
        return sampler.chain_state(
            self.anchor_sub if self.index is not None else self.params, num_burnin
        )

    @torch.no_grad()
    def step(self, sampler: SGLD, generator: torch.Generator, state: Any = None) -> None:
        """One SGLD update of the sampled entries from the gradients in their ``.grad`` (or
        already added, inside :meth:`gradient_steps_in_backward`); ``state``: the chain's
        :meth:`chain_state`."""
        if self.early_gradient:
            sampler.step(self.params, None, self.anchor_parts, generator, self.noise, self.views)
            return
        if self.index is None:
            grads, anchor = self.grads(), self.anchor_parts
            sampler.step(self.params, grads, anchor, generator, self.noise, self.views, state)
        else:
            sub = self.params[self.index]
            grad = self.grad[self.index]
            sampler.step(sub, grad, self.anchor_sub, generator, self.noise, state=state)
            self.params.index_copy_(0, self.index, sub)
        for _, p in self.active:
            p.grad = None  # autograd allocates the next gradient afresh: no stale memory


def selection(
    params: Sequence[tuple[str, torch.Tensor]],
    masks: Mapping[str, torch.Tensor],
    device: torch.device,
) -> torch.Tensor:
    """The masks of ``params`` (in order) as one flat boolean vector; missing names: False."""
    return torch.cat(
        [
            masks[n].to(device).reshape(-1)
            if n in masks
            else torch.zeros(p.numel(), dtype=torch.bool, device=device)
            for n, p in params
        ]
    )


def _ignore(*args: Any, **kwargs: Any) -> None:
    """Stands in for ``self.log`` on the sampling copy."""
