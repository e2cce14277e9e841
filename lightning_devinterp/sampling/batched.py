"""Batched chains: every (component, chain) pair of an estimate as one ``torch.func.vmap``
computation. Each pair draws the same noise and batches as it would sequentially, so both
runners give the same draws up to floating-point rounding."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.func import functional_call, grad_and_value, vmap
from torch.utils._pytree import tree_map

from lightning_devinterp.sampling.batches import BatchStream, chain_seed, move_to_device
from lightning_devinterp.sampling.chains import (
    ChainTraces,
    FlatModel,
    LossFn,
    _LossCall,
    cut_after_divergence,
    selection,
)
from lightning_devinterp.sampling.sgld import SGLD

log = logging.getLogger(__name__)


class BatchingUnsupported(RuntimeError):
    """The model or loss cannot run under ``torch.func.vmap``."""


def run_chains_batched(
    flat: FlatModel,
    loss_fn: LossFn,
    dataloader: Iterable,
    sampler: SGLD,
    *,
    masks: Sequence[Mapping[str, torch.Tensor] | None],
    chains: Sequence[int],
    num_draws: int,
    num_burnin: int = 0,
    steps_between_draws: int = 1,
    seed: int = 0,
    paired: bool = True,
    transfer: Callable[[Any], Any] | None = None,
) -> list[ChainTraces]:
    """Run ``chains`` for every entry of ``masks`` (None: the whole model) at once.

    Returns one :class:`ChainTraces` per entry of ``masks``. Raises
    :class:`BatchingUnsupported` (before any sampling) when the model cannot be vmapped.
    """
    flat.activate(None)
    transfer = transfer or (lambda batch: move_to_device(batch, flat.device))
    call = _LossCall(flat.module, loss_fn)
    layout = [(f"model.{name}", p.shape, p.numel()) for name, p in flat.active]

    def loss_of(theta: torch.Tensor, batch: Any) -> torch.Tensor:
        params, offset = {}, 0
        for name, shape, n in layout:
            params[name] = theta[offset : offset + n].view(shape)
            offset += n
        return functional_call(call, params, (batch,), strict=False)

    grad_fn = vmap(grad_and_value(loss_of))
    value_fn = vmap(loss_of, in_dims=(None, 0))
    jobs = [(j, c) for j in range(len(masks)) for c in range(len(chains))]
    size = flat.params.numel()
    selected = [_flat_mask(flat, m) for m in masks]
    keep = torch.stack([selected[j] for j, _ in jobs])  # (K, P) entries each job moves
    index = [sel.nonzero().squeeze(1) for sel in selected]
    anchor = flat.anchor()
    theta = anchor.expand(len(jobs), size).clone()
    generators = [
        torch.Generator(device=flat.device).manual_seed(chain_seed(seed, chains[c]))
        for _, c in jobs
    ]
    streams = [BatchStream(dataloader, chain_seed(seed, c, 1), transfer) for c in chains]
    total = num_burnin + num_draws * steps_between_draws
    step_loss = torch.empty(len(jobs), total, device=flat.device)
    draw_loss = torch.empty(len(jobs), num_draws, device=flat.device)
    draw_ref = torch.empty(len(chains), num_draws, device=flat.device) if paired else None
    noise = torch.zeros_like(theta)
    scale = sampler.noise_level * sampler.lr**0.5
    for t in range(total):
        per_chain = [next(stream) for stream in streams]
        batch = tree_map(lambda *xs: torch.stack(xs), *[per_chain[c] for _, c in jobs])
        if t == 0:
            try:
                grads, losses = grad_fn(theta, batch)
            except Exception as error:  # vmap refuses many patterns; the caller falls back
                raise BatchingUnsupported(f"{type(error).__name__}: {error}") from error
        else:
            grads, losses = grad_fn(theta, batch)
        with torch.no_grad():
            step_loss[:, t] = losses
            k, offset = divmod(t - num_burnin, steps_between_draws)
            if t >= num_burnin and offset == 0:
                draw_loss[:, k] = losses
                if draw_ref is not None:
                    chain_batches = tree_map(lambda *xs: torch.stack(xs), *per_chain)
                    draw_ref[:, k] = value_fn(anchor, chain_batches)
            for row, ((j, _), generator) in enumerate(zip(jobs, generators, strict=True)):
                noise[row, index[j]] = torch.randn(
                    index[j].numel(), generator=generator, device=flat.device, dtype=theta.dtype
                )
            # the same arithmetic as SGLD.step, entry by entry, on every job at once
            moved = sampler.drift(theta.clone(), grads, anchor).add_(noise, alpha=scale)
            theta = torch.where(keep, moved, theta)
    results = []
    for j in range(len(masks)):
        rows = [row for row, (jj, _) in enumerate(jobs) if jj == j]
        loss = draw_loss[rows].clone()
        diverged = []
        for r, row in enumerate(rows):
            bad = not bool(torch.isfinite(step_loss[row]).all())
            if bad:
                cut_after_divergence(loss[r], step_loss[row], num_burnin, steps_between_draws)
            diverged.append(bad)
        results.append(
            ChainTraces(
                chains=list(chains),
                loss=loss.cpu(),
                reference=draw_ref.cpu() if draw_ref is not None else None,
                diverged=torch.tensor(diverged, dtype=torch.bool),
            )
        )
    return results


def _flat_mask(flat: FlatModel, masks: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
    """Which entries of the full flat vector a component moves."""
    if masks is None:
        return torch.ones(flat.params.numel(), dtype=torch.bool, device=flat.device)
    return selection(flat.active, masks, flat.device)
