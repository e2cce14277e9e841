"""Batched chains: every (component, chain) pair of an estimate as one ``torch.func.vmap``
computation. Each pair draws the same noise and batches as it would sequentially, so both
runners give the same draws up to floating-point rounding."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.func import functional_call, grad_and_value, vmap
from torch.utils._pytree import tree_map

from lightning_devinterp.sampling.batches import BatchStream, chain_seed, device_transfer
from lightning_devinterp.sampling.chains import ChainTraces, cut_after_divergence
from lightning_devinterp.sampling.flat import FlatModel, selection
from lightning_devinterp.sampling.losses import LossCall, LossFn
from lightning_devinterp.sampling.settings import ChainSettings
from lightning_devinterp.sampling.sgld import SGLD

Masks = Mapping[str, torch.Tensor]


class BatchingUnsupported(RuntimeError):
    """The model or loss cannot run under ``torch.func.vmap``."""


def run_chains_batched(
    flat: FlatModel,
    loss_fn: LossFn,
    dataloader: Iterable,
    sampler: SGLD,
    *,
    masks: Sequence[Masks | None],
    chains: ChainSettings,
    chain_ids: Sequence[int] | None = None,
    transfer: Callable[[Any], Any] | None = None,
) -> list[ChainTraces]:
    """Run the chains ``chain_ids`` (default all of ``chains``) for every entry of ``masks``
    (None: the whole model) at once; ``chains.mala`` and ``train_mode`` play no part.

    Returns one :class:`ChainTraces` per entry of ``masks``. Raises
    :class:`BatchingUnsupported` (before any sampling) when the model cannot be vmapped.
    """
    ids = list(range(chains.num_chains)) if chain_ids is None else list(chain_ids)
    flat.activate(None)
    transfer = device_transfer(transfer, flat.device)
    grad_fn, value_fn = _loss_functions(flat, loss_fn)
    jobs = [(j, c) for j in range(len(masks)) for c in range(len(ids))]
    selected = [_flat_mask(flat, m) for m in masks]
    keep = torch.stack([selected[j] for j, _ in jobs])  # (K, P) entries each job moves
    index = [sel.nonzero().squeeze(1) for sel in selected]
    anchor = flat.anchor()
    theta = anchor.expand(len(jobs), flat.params.numel()).clone()
    generators = [
        torch.Generator(device=flat.device).manual_seed(chain_seed(chains.seed, ids[c]))
        for _, c in jobs
    ]
    streams = [BatchStream(dataloader, chain_seed(chains.seed, c, 1), transfer) for c in ids]
    step_loss = torch.empty(len(jobs), chains.steps_per_chain, device=flat.device)
    draw_loss = torch.empty(len(jobs), chains.num_draws, device=flat.device)
    paired = chains.paired
    draw_ref = torch.empty(len(ids), chains.num_draws, device=flat.device) if paired else None
    noise = torch.zeros_like(theta)
    state = sampler.chain_state(theta, chains.num_burnin)  # every job's, stacked
    for t in range(chains.steps_per_chain):
        per_chain = [next(stream) for stream in streams]
        batch = _stacked([per_chain[c] for _, c in jobs])
        grads, losses = _first_step(grad_fn, theta, batch) if t == 0 else grad_fn(theta, batch)
        with torch.no_grad():
            step_loss[:, t] = losses
            k = chains.draw_index(t)
            if k is not None:
                draw_loss[:, k] = losses
                if draw_ref is not None:
                    draw_ref[:, k] = value_fn(anchor, _stacked(per_chain))
            for row, ((j, _), generator) in enumerate(zip(jobs, generators, strict=True)):
                noise[row, index[j]] = torch.randn(
                    index[j].numel(), generator=generator, device=flat.device, dtype=theta.dtype
                )
            # the same arithmetic as the sampler's step, entry by entry, on every job at once
            moved = sampler.move(theta.clone(), grads, anchor, noise, state)
            theta = torch.where(keep, moved, theta)
    return _split(jobs, len(masks), ids, step_loss, draw_loss, draw_ref, chains)


def _loss_functions(flat: FlatModel, loss_fn: LossFn) -> tuple[Callable, Callable]:
    """``(theta, batch) -> (grad, loss)`` vmapped over jobs, and ``(w*, batch) -> loss``
    vmapped over batches, of the loss as a function of the flat parameters."""
    call = LossCall(flat.module, loss_fn)
    layout = [(f"model.{name}", p.shape, p.numel()) for name, p in flat.active]

    def loss_of(theta: torch.Tensor, batch: Any) -> torch.Tensor:
        params, offset = {}, 0
        for name, shape, n in layout:
            params[name] = theta[offset : offset + n].view(shape)
            offset += n
        return functional_call(call, params, (batch,), strict=False)

    return vmap(grad_and_value(loss_of)), vmap(loss_of, in_dims=(None, 0))


def _first_step(
    grad_fn: Callable, theta: torch.Tensor, batch: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first vmapped step, whose failure means the model cannot be vmapped."""
    try:
        return grad_fn(theta, batch)
    except Exception as error:  # vmap refuses many patterns; the caller falls back
        raise BatchingUnsupported(f"{type(error).__name__}: {error}") from error


def _stacked(batches: Sequence[Any]) -> Any:
    """Batches stacked along a new first dimension, tensor by tensor."""
    return tree_map(lambda *xs: torch.stack(xs), *batches)


def _split(
    jobs: Sequence[tuple[int, int]],
    num_masks: int,
    ids: list[int],
    step_loss: torch.Tensor,
    draw_loss: torch.Tensor,
    draw_ref: torch.Tensor | None,
    chains: ChainSettings,
) -> list[ChainTraces]:
    """One :class:`ChainTraces` per mask from the jobs' rows, draws cut after a divergence."""
    results = []
    for j in range(num_masks):
        rows = [row for row, (jj, _) in enumerate(jobs) if jj == j]
        loss = draw_loss[rows].clone()
        diverged = []
        for r, row in enumerate(rows):
            bad = not bool(torch.isfinite(step_loss[row]).all())
            if bad:
                cut_after_divergence(loss[r], step_loss[row], chains)
            diverged.append(bad)
        results.append(
            ChainTraces(
                chains=list(ids),
                loss=loss.cpu(),
                reference=draw_ref.cpu() if draw_ref is not None else None,
                diverged=torch.tensor(diverged, dtype=torch.bool),
            )
        )
    return results


def _flat_mask(flat: FlatModel, masks: Masks | None) -> torch.Tensor:
    """Which entries of the full flat vector a component moves."""
    if masks is None:
        return torch.ones(flat.params.numel(), dtype=torch.bool, device=flat.device)
    return selection(flat.active, masks, flat.device)
