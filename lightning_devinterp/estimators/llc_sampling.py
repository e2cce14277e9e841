"""The sampling half of an LLC estimate: one copy of the model, L(w*) once, chains for the
whole model and any components, and the samples of several processes merged."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_devinterp.components import Component
from lightning_devinterp.estimators.bias import GradientNoise, GradientVariance, TimedBatches
from lightning_devinterp.sampling import (
    SGLD,
    BatchStream,
    ChainSettings,
    ChainTraces,
    Draw,
    FlatModel,
    LossFn,
    batch_size_of,
    chain_seed,
    device_transfer,
    gathered_batches,
    reduce_loss,
    run_sampling,
    seeded_global_rng,
)
from lightning_devinterp.sampling.flat import selection

#: The chain settings of an estimate whose caller gives none.
DEFAULT_CHAINS = ChainSettings()


@dataclass
class LLCSamples:
    """What sampling produced in one process, before it is reduced to an estimate.

    Attributes:
        traces: the chains' per-draw losses.
        init_losses: per-batch losses of w* (for ``init_loss``).
        sampler: the SGLD settings used, ``nbeta`` resolved.
        component: the sampled component's name, or None for the whole model.
        noise: the minibatch gradient's variance at w* over the sampled entries (None with
            one L(w*) batch).
        half_step: the same chains at half the step size (``step_check``), or None.
        data_share: the share of the sampling's wall time spent fetching batches.
    """

    traces: ChainTraces
    init_losses: torch.Tensor
    sampler: SGLD
    component: str | None = None
    noise: GradientNoise | None = None
    half_step: ChainTraces | None = None
    data_share: float | None = None


def merge_samples(parts: Sequence[LLCSamples]) -> LLCSamples:
    """Combine the samples of several processes (each ran some of the chains)."""
    first = parts[0]
    half = [part.half_step for part in parts]
    shares = [part.data_share for part in parts if part.data_share is not None]
    return LLCSamples(
        merge_traces([part.traces for part in parts]),
        torch.cat([part.init_losses for part in parts]),
        first.sampler,
        first.component,
        first.noise,
        merge_traces(half) if all(h is not None for h in half) else None,
        sum(shares) / len(shares) if shares else None,
    )


def merge_traces(parts: Sequence[ChainTraces]) -> ChainTraces:
    """The chains of several processes' traces as one, in chain order."""
    rows = sorted((chain, tr, i) for tr in parts for i, chain in enumerate(tr.chains))
    first = parts[0]
    paired = first.reference is not None
    return ChainTraces(
        chains=[chain for chain, _, _ in rows],
        loss=torch.stack([tr.loss[i] for _, tr, i in rows]),
        reference=torch.stack([tr.reference[i] for _, tr, i in rows]) if paired else None,
        observables={
            name: torch.stack([tr.observables[name][i] for _, tr, i in rows])
            for name in first.observables
        },
        diverged=torch.stack([tr.diverged[i] for _, tr, i in rows]),
        mala=torch.stack([tr.mala[i] for _, tr, i in rows]) if first.mala is not None else None,
    )


def default_loss_fn(model: nn.Module) -> LossFn:
    """The loss of a LightningModule-like model: its own ``training_step(batch, 0)``."""
    if not callable(getattr(model, "training_step", None)):
        raise ValueError(
            f"{type(model).__name__} has no training_step, so no default loss exists. Pass "
            "loss_fn=lambda model, batch: F.cross_entropy(model(batch[0]), batch[1]) (any "
            "function returning the mean loss or per-sample losses)."
        )
    return lambda module, batch: module.training_step(batch, 0)


@dataclass
class SamplingCopy:
    """The model's sampling copy and what every chain run on it shares.

    Attributes:
        flat: the copy.
        loss_fn: the loss (the given one or the model's ``training_step``).
        transfer: moves a batch to the copy's device.
        init_losses: per-batch losses of w* over ``init_loss_batches`` batches.
        batch_size: the batch size (for the default nβ).
        gradient_variance: per trainable entry, the variance of the minibatch gradient at w*
            across the L(w*) batches (None with fewer than two batches).
    """

    flat: FlatModel
    loss_fn: LossFn
    transfer: Callable[[Any], Any]
    init_losses: torch.Tensor
    batch_size: int
    gradient_variance: torch.Tensor | None = None

    def noise(self, masks: Any = None) -> GradientNoise | None:
        """The minibatch noise figures over the entries of ``masks`` (None: all)."""
        if self.gradient_variance is None:
            return None
        variance = self.gradient_variance
        if masks is not None:
            variance = variance[selection(self.flat.named, masks, variance.device)]
        return GradientNoise.of(variance, self.batch_size)


def sampling_copy(
    model: nn.Module,
    dataloader: Iterable,
    loss_fn: LossFn | None,
    chains: ChainSettings,
    transfer: Callable[[Any], Any] | None = None,
) -> SamplingCopy:
    """Copy ``model`` once (in train mode with ``chains.train_mode``) and compute L(w*) over
    ``chains.init_loss_batches`` batches, then the minibatch gradient's variance at w* on the
    same batches (one forward and backward each, after all the losses); errors say what to
    change (no trainable weights, no batch, no default loss, a loss that is not a finite
    tensor)."""
    loss_fn = loss_fn or default_loss_fn(model)
    flat = FlatModel(model, train_mode=chains.train_mode)
    transfer = device_transfer(transfer, flat.device)
    keep = [] if chains.init_loss_batches > 1 else None
    init_losses, batch_size = reference_losses(
        flat, loss_fn, dataloader, chains.init_loss_batches, chains.seed, transfer, keep
    )
    variance = gradient_variance(flat, loss_fn, keep, chains.seed) if keep else None
    return SamplingCopy(flat, loss_fn, transfer, init_losses, batch_size, variance)


def gradient_variance(
    flat: FlatModel, loss_fn: LossFn, batches: Sequence[Any], seed: int
) -> torch.Tensor | None:
    """Per sampled entry, the variance across ``batches`` of the minibatch gradient at w*."""
    running = GradientVariance()
    with (
        seeded_global_rng(chain_seed(seed, -1, 9), flat.device),
        torch.inference_mode(False),
        torch.enable_grad(),
    ):
        for batch in batches:
            flat.loss_and_grad(loss_fn, batch)
            running.add(flat.grad)
            for _, p in flat.active:
                p.grad = None
    return running.variance()


def check_inputs(
    model: nn.Module,
    dataloader: Iterable,
    loss_fn: LossFn | None = None,
    transfer: Callable[[Any], Any] | None = None,
) -> None:
    """Fail early, with a message that says what to change, if sampling ``model`` on
    ``dataloader`` with ``loss_fn`` cannot work (no trainable weights, no batch, a loss that
    is not a finite tensor)."""
    sampling_copy(model, dataloader, loss_fn, ChainSettings(init_loss_batches=1), transfer)


@torch.no_grad()
def reference_losses(
    flat: FlatModel,
    loss_fn: LossFn,
    dataloader: Iterable,
    num_batches: int,
    seed: int,
    transfer: Callable[[Any], Any],
    keep: list[Any] | None = None,
) -> tuple[torch.Tensor, int]:
    """Per-batch losses of w* over ``num_batches`` batches, and the batch size; the batches
    are appended to ``keep`` when it is given.

    Raises a ``ValueError`` naming the problem if a loss is not finite.
    """
    batches = BatchStream(dataloader, chain_seed(seed, -1, 2), transfer)
    values, batch_size = [], 0
    rng = seeded_global_rng(chain_seed(seed, -1, 4), flat.device)  # dropout in train_mode
    with rng, torch.inference_mode(False), torch.no_grad():
        for _ in range(num_batches):
            batch = next(batches)
            if keep is not None:
                keep.append(batch)
            batch_size = batch_size or batch_size_of(batch)
            values.append(reduce_loss(loss_fn(flat.module, batch)).float())
    losses = torch.stack(values).cpu()
    if not bool(torch.isfinite(losses).all()):
        raise ValueError(
            f"loss_fn returned a non-finite loss at the current weights ({losses.tolist()[:4]}...): "
            "the model or data already contain NaN/Inf. Check the inputs and the weights."
        )
    return losses, batch_size


def sample_components(
    model: nn.Module,
    dataloader: Iterable,
    loss_fn: LossFn | None = None,
    *,
    components: Sequence[Component | None] = (None,),
    sampler: SGLD | None = None,
    chains: ChainSettings = DEFAULT_CHAINS,
    transfer: Callable[[Any], Any] | None = None,
    chain_ids: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    batched: bool | None = None,
    on_draw: Callable[[int, Draw], None] | None = None,
) -> list[LLCSamples]:
    """Sample the whole model (``None``) and/or components on one copy of the model.

    The copy and L(w*) are made once and shared; each component gets the same chains
    (same seeds), restricted to its entries. Returns one :class:`LLCSamples` per entry of
    ``components``, in order. ``sampler`` defaults to ``SGLD(lr=1e-3)``, nβ = m/log m.

    ``chain_ids``: the chains this process runs (default all ``chains.num_chains``), so that
    processes can split the chains and :func:`merge_samples` can combine their results.

    ``batched``: run all components x chains as one ``torch.func.vmap`` computation (same
    draws as one by one, up to rounding); None (default) chooses it on an accelerator, and
    the model falls back to one by one when it cannot be vmapped
    (:func:`~lightning_devinterp.sampling.run_sampling`).

    ``on_draw(i, draw)`` is called at every draw of the chains of ``components[i]`` (one by
    one only), for statistics gathered while sampling (susceptibilities).
    """
    for component in components:
        if component is not None:
            component.validate(model)
    dataloader = gathered_batches(dataloader)  # before the timing wrapper hides the loader
    copy = sampling_copy(model, dataloader, loss_fn, chains, transfer)
    sampler = (sampler or SGLD(lr=1e-3)).resolve(copy.batch_size)
    masks = [component.masks if component is not None else None for component in components]
    run = dict(chain_ids=chain_ids, transfer=copy.transfer, batched=batched)
    timed = TimedBatches(dataloader)
    started = time.perf_counter()
    traces, run["batched"] = run_sampling(
        copy.flat, copy.loss_fn, timed, sampler, masks=masks, chains=chains,
        progress=progress, on_draw=on_draw, **run,
    )  # fmt: skip
    share = timed.seconds / max(time.perf_counter() - started, 1e-9)
    halves: list[ChainTraces | None] = [None] * len(masks)
    if chains.step_check:  # same seeds at lr/2, burn-in as long in time
        half = dataclasses.replace(sampler, lr=sampler.lr / 2)
        halves, _ = run_sampling(
            copy.flat, copy.loss_fn, dataloader, half, masks=masks,
            chains=chains.replace(num_burnin=2 * chains.num_burnin), **run,
        )  # fmt: skip
    return [
        LLCSamples(
            tr,
            copy.init_losses,
            sampler,
            c.name if c is not None else None,
            copy.noise(mask),
            half_traces,
            share,
        )  # fmt: skip
        for tr, c, mask, half_traces in zip(traces, components, masks, halves, strict=True)
    ]


def sample_llc(
    model: nn.Module,
    dataloader: Iterable,
    loss_fn: LossFn | None = None,
    *,
    component: Component | None = None,
    **kwargs: Any,
) -> LLCSamples:
    """The sampling half of :func:`~lightning_devinterp.estimate_llc` (same arguments, plus
    ``chain_ids``: the chains this process runs, so that processes can split the chains and
    :func:`merge_samples` can combine their results)."""
    chains, options = ChainSettings.split(kwargs)
    return sample_components(
        model, dataloader, loss_fn, components=[component], chains=chains, **options
    )[0]
