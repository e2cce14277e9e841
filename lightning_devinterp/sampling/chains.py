"""The chain runner: SGLD chains on one private copy of a model whose sampled
parameters are views into a single flat vector, so each step is one forward+backward
and a handful of vectorized ops."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from lightning_devinterp.sampling.batches import (
    BatchStream,
    chain_seed,
    move_to_device,
    seeded_global_rng,
)
from lightning_devinterp.sampling.mala import MalaAcceptance
from lightning_devinterp.sampling.sgld import NOISE_CHUNK, SGLD

LossFn = Callable[[nn.Module, Any], torch.Tensor]
Observable = Callable[[nn.Module], torch.Tensor]


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


class _LossCall(nn.Module):
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
        call = _LossCall(self.module, loss_fn, terms=True)
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
        gradient's scale ``1 / shrink`` would amplify rounding); the plain way otherwise.

        Safe because autograd accumulates a parameter's gradient only after every node that
        uses the parameter has run, and the update writes through ``views`` (the flat
        vector), not the parameters whose versions those nodes saved.
        """
        if self.index is not None or sampler.shrink < 0.5:
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

    @torch.no_grad()
    def step(self, sampler: SGLD, generator: torch.Generator) -> None:
        """One SGLD update of the sampled entries from the gradients in their ``.grad`` (or
        already added, inside :meth:`gradient_steps_in_backward`)."""
        if self.early_gradient:
            sampler.step(self.params, None, self.anchor_parts, generator, self.noise, self.views)
            return
        if self.index is None:
            grads = self.grads()
            sampler.step(self.params, grads, self.anchor_parts, generator, self.noise, self.views)
        else:
            sub = self.params[self.index]
            sampler.step(sub, self.grad[self.index], self.anchor_sub, generator, self.noise)
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


def cut_after_divergence(
    draws: torch.Tensor, step_loss: torch.Tensor, num_burnin: int, steps_between_draws: int
) -> None:
    """Set to NaN, in place, the draws from the first non-finite step loss on."""
    first = int((~torch.isfinite(step_loss)).nonzero()[0])
    draws[max(0, -(-(first - num_burnin) // steps_between_draws)) :] = float("nan")


def _ignore(*args: Any, **kwargs: Any) -> None:
    """Stands in for ``self.log`` on the sampling copy."""


@dataclass
class Draw:
    """One draw of one chain, as given to an ``on_draw`` hook.

    Attributes:
        chain: the chain's index.
        index: the draw's index within the chain.
        module: the sampling copy, at the draw's weights (read only; no grad needed).
        losses: the loss terms of the step's minibatch as ``loss_fn`` returned them (the
            mean, or unreduced per-sample/per-token losses), detached.
        reference: the per-sample losses of w* on the same minibatch (:func:`per_sample` of
            its loss terms; paired form), or None.
    """

    chain: int
    index: int
    module: nn.Module
    losses: torch.Tensor
    reference: torch.Tensor | None


@dataclass
class ChainTraces:
    """What the chains produced: per-draw losses and observables, and which chains diverged.

    Attributes:
        chains: the chain indices, in row order.
        loss: (chains, draws) minibatch mean loss at each draw; NaN after a divergence.
        reference: (chains, draws) loss of w* on the same minibatch (paired form), or None.
        observables: name -> (chains, draws, ...) values of each observable at each draw.
        diverged: (chains,) True where a chain produced a non-finite loss and was stopped.
        mala: (chains,) mean MALA acceptance probability of each chain's steps, or None.
    """

    chains: list[int]
    loss: torch.Tensor
    reference: torch.Tensor | None
    observables: dict[str, torch.Tensor] = field(default_factory=dict)
    diverged: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    mala: torch.Tensor | None = None


def run_chains(
    flat: FlatModel,
    loss_fn: LossFn,
    dataloader: Iterable,
    sampler: SGLD,
    *,
    chains: Sequence[int],
    num_draws: int,
    num_burnin: int = 0,
    steps_between_draws: int = 1,
    seed: int = 0,
    paired: bool = True,
    observables: Mapping[str, Observable] | None = None,
    transfer: Callable[[Any], Any] | None = None,
    check_every: int = 32,
    progress: Callable[[int, int], None] | None = None,
    mala: bool = False,
    on_draw: Callable[[Draw], None] | None = None,
    references: dict[tuple[int, int], torch.Tensor] | None = None,
) -> ChainTraces:
    """Run SGLD chains from w* on ``flat`` and record a draw every ``steps_between_draws`` steps
    after ``num_burnin`` steps. With ``mala``, also the MALA acceptance rate of the steps
    (a diagnostic: four extra vector passes and one extra copy of the sampled entries).
    ``on_draw`` is called at every draw, under ``torch.no_grad``, for statistics computed as
    the chain runs (they need not be stored per draw). ``references`` caches the paired
    reference losses by (chain, draw): share one dict between calls with the same data and
    seed (for example the components of one estimate, whose chains see the same minibatches)
    and each is computed once.

    Chain ``c`` owns a generator and a batch order seeded from ``(seed, c)``: the same seed gives
    the same noise and batches on every call (common random numbers), whatever the weights.
    """
    observables = dict(observables or {})
    transfer = transfer or (lambda batch: move_to_device(batch, flat.device))
    total = num_burnin + num_draws * steps_between_draws
    rows = []
    early = nullcontext(False) if mala else flat.gradient_steps_in_backward(sampler)
    with torch.inference_mode(False), torch.enable_grad(), early:
        for done, chain in enumerate(chains):
            # dropout (train_mode) and any other global draws inside the chain are seeded by
            # the chain; the caller's generators never move
            with seeded_global_rng(chain_seed(seed, chain, 3), flat.device):
                flat.reset()
                generator = torch.Generator(device=flat.device)
                generator.manual_seed(chain_seed(seed, chain))
                rows.append(
                    _run_chain(
                        chain,
                        flat,
                        loss_fn,
                        BatchStream(dataloader, chain_seed(seed, chain, 1), transfer),
                        sampler,
                        generator,
                        num_draws=num_draws,
                        num_burnin=num_burnin,
                        steps_between_draws=steps_between_draws,
                        paired=paired,
                        observables=observables,
                        tracker=MalaAcceptance(sampler) if mala else None,
                        on_draw=on_draw,
                        references=references if references is not None else {},
                        check_every=check_every,
                        progress=progress
                        and (lambda t, d=done: progress(d * total + t, len(chains) * total)),
                    )
                )
    flat.reset()
    return ChainTraces(
        chains=list(chains),
        loss=torch.stack([r.loss for r in rows]) if rows else torch.zeros(0, num_draws),
        reference=torch.stack([r.reference for r in rows]) if paired and rows else None,
        observables={k: torch.stack([r.observables[k] for r in rows]) for k in observables if rows},
        diverged=torch.tensor([r.diverged for r in rows], dtype=torch.bool),
        mala=torch.tensor([r.mala for r in rows]) if mala else None,
    )


@dataclass
class _ChainResult:
    loss: torch.Tensor
    reference: torch.Tensor | None
    observables: dict[str, torch.Tensor]
    diverged: bool
    mala: float | None


def _run_chain(
    chain: int,
    flat: FlatModel,
    loss_fn: LossFn,
    batches: BatchStream,
    sampler: SGLD,
    generator: torch.Generator,
    *,
    num_draws: int,
    num_burnin: int,
    steps_between_draws: int,
    paired: bool,
    observables: Mapping[str, Observable],
    tracker: MalaAcceptance | None,
    on_draw: Callable[[Draw], None] | None,
    references: dict[tuple[int, int], torch.Tensor],
    check_every: int,
    progress: Callable[[int], None] | None,
) -> _ChainResult:
    """One chain from w*: its draws, until the end or its first non-finite loss."""
    total = num_burnin + num_draws * steps_between_draws
    step_loss = torch.full((total,), float("nan"), device=flat.device)
    draw_loss = torch.full((num_draws,), float("nan"), device=flat.device)
    draw_ref = torch.full((num_draws,), float("nan"), device=flat.device) if paired else None
    draw_obs: dict[str, list[torch.Tensor]] = {k: [] for k in observables}
    bad = False
    for t in range(total):
        batch = next(batches)
        loss, terms = flat.loss_and_grad(loss_fn, batch)
        step_loss[t] = loss
        k, offset = divmod(t - num_burnin, steps_between_draws)
        if t >= num_burnin and offset == 0:
            draw_loss[k] = loss
            reference = None
            if draw_ref is not None:
                reference = references.get((chain, k))
                if reference is None:
                    reference = per_sample(flat.loss_at_anchor(loss_fn, batch))
                    references[(chain, k)] = reference
                draw_ref[k] = reference.mean()
            with torch.no_grad():
                for name, fn in observables.items():
                    draw_obs[name].append(fn(flat.module).detach())
                if on_draw is not None:
                    on_draw(Draw(chain, k, flat.module, terms, reference))
        if tracker is not None:
            tracker.observe(*flat.sampled(), loss)
        flat.step(sampler, generator)
        if (t + 1) % check_every == 0 or t + 1 == total:
            if not bool(torch.isfinite(step_loss[: t + 1]).all()):
                bad = True
                break
            if progress is not None:
                progress(t + 1)
    if bad:
        cut_after_divergence(draw_loss, step_loss, num_burnin, steps_between_draws)
    return _ChainResult(
        loss=draw_loss.cpu(),
        reference=draw_ref.cpu() if draw_ref is not None else None,
        observables={k: _pad_draws(v, num_draws) for k, v in draw_obs.items()},
        diverged=bad,
        mala=tracker.rate() if tracker is not None else None,
    )


def _pad_draws(values: list[torch.Tensor], num_draws: int) -> torch.Tensor:
    """Stack one chain's observable values, padding a chain cut short with NaN."""
    if not values:
        return torch.full((num_draws,), float("nan"))
    stacked = torch.stack(values).cpu().float()
    if len(values) < num_draws:
        pad = torch.full((num_draws - len(values), *stacked.shape[1:]), float("nan"))
        stacked = torch.cat([stacked, pad])
    return stacked
