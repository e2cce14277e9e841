"""The chain runner: SGLD chains from w*, one after another, on a :class:`FlatModel`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lightning_devinterp.sampling.batches import (
    BatchStream,
    chain_seed,
    device_transfer,
    seeded_global_rng,
)
from lightning_devinterp.sampling.flat import FlatModel
from lightning_devinterp.sampling.losses import LossFn, per_sample
from lightning_devinterp.sampling.mala import MalaAcceptance
from lightning_devinterp.sampling.settings import ChainSettings
from lightning_devinterp.sampling.sgld import SGLD

Observable = Callable[[nn.Module], torch.Tensor]


def cut_after_divergence(
    draws: torch.Tensor, step_loss: torch.Tensor, chains: ChainSettings
) -> None:
    """Set to NaN, in place, the draws from the first non-finite step loss on."""
    first = int((~torch.isfinite(step_loss)).nonzero()[0])
    draws[chains.draws_before(first) :] = float("nan")


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
    chains: ChainSettings,
    chain_ids: Sequence[int] | None = None,
    observables: Mapping[str, Observable] | None = None,
    transfer: Callable[[Any], Any] | None = None,
    check_every: int = 32,
    progress: Callable[[int, int], None] | None = None,
    on_draw: Callable[[Draw], None] | None = None,
    references: dict[tuple[int, int], torch.Tensor] | None = None,
) -> ChainTraces:
    """Run SGLD chains from w* on ``flat`` and record a draw every ``steps_between_draws`` steps
    after ``num_burnin`` steps (``chains``). With ``chains.mala``, also the MALA acceptance
    rate of the steps (a diagnostic: four extra vector passes and one extra copy of the
    sampled entries). ``chain_ids``: the chains to run (default all ``chains.num_chains``).
    ``on_draw`` is called at every draw, under ``torch.no_grad``, for statistics computed as
    the chain runs (they need not be stored per draw). ``references`` caches the paired
    reference losses by (chain, draw): share one dict between calls with the same data and
    seed (for example the components of one estimate, whose chains see the same minibatches)
    and each is computed once.

    Chain ``c`` owns a generator and a batch order seeded from ``(seed, c)``: the same seed gives
    the same noise and batches on every call (common random numbers), whatever the weights.
    """
    ids = list(range(chains.num_chains)) if chain_ids is None else list(chain_ids)
    transfer = device_transfer(transfer, flat.device)
    run = _ChainRun(
        flat,
        loss_fn,
        sampler,
        chains,
        dict(observables or {}),
        on_draw,
        references if references is not None else {},
        check_every,
    )
    total = chains.steps_per_chain
    rows = []
    early = nullcontext(False) if chains.mala else flat.gradient_steps_in_backward(sampler)
    with torch.inference_mode(False), torch.enable_grad(), early:
        for done, chain in enumerate(ids):
            # dropout (train_mode) and any other global draws inside the chain are seeded by
            # the chain; the caller's generators never move
            with seeded_global_rng(chain_seed(chains.seed, chain, 3), flat.device):
                flat.reset()
                generator = torch.Generator(device=flat.device)
                generator.manual_seed(chain_seed(chains.seed, chain))
                batches = BatchStream(dataloader, chain_seed(chains.seed, chain, 1), transfer)
                report = progress and (lambda t, d=done: progress(d * total + t, len(ids) * total))
                rows.append(run.chain(chain, batches, generator, report))
    flat.reset()
    return run.traces(ids, rows)


@dataclass
class _ChainResult:
    loss: torch.Tensor
    reference: torch.Tensor | None
    observables: dict[str, Any]
    diverged: bool = False
    mala: float | None = None


@dataclass
class _ChainRun:
    """What every chain of one :func:`run_chains` call shares."""

    flat: FlatModel
    loss_fn: LossFn
    sampler: SGLD
    chains: ChainSettings
    observables: dict[str, Observable]
    on_draw: Callable[[Draw], None] | None
    references: dict[tuple[int, int], torch.Tensor]
    check_every: int

    def chain(
        self,
        chain: int,
        batches: BatchStream,
        generator: torch.Generator,
        progress: Callable[[int], None] | None,
    ) -> _ChainResult:
        """One chain from w*: its draws, until the end or its first non-finite loss."""
        flat, chains = self.flat, self.chains
        tracker = MalaAcceptance(self.sampler) if chains.mala else None
        total = chains.steps_per_chain
        state = flat.chain_state(self.sampler, chains.num_burnin)
        step_loss = torch.full((total,), float("nan"), device=flat.device)
        draws = _ChainResult(
            loss=torch.full((chains.num_draws,), float("nan"), device=flat.device),
            reference=torch.full((chains.num_draws,), float("nan"), device=flat.device)
            if chains.paired
            else None,
            observables={k: [] for k in self.observables},
        )
        for t in range(total):
            batch = next(batches)
            loss, terms = flat.loss_and_grad(self.loss_fn, batch)
            step_loss[t] = loss
            k = chains.draw_index(t)
            if k is not None:
                self._draw(draws, chain, k, batch, loss, terms)
            if tracker is not None:
                tracker.observe(*flat.sampled(), loss)
            flat.step(self.sampler, generator, state)
            if (t + 1) % self.check_every == 0 or t + 1 == total:
                if not bool(torch.isfinite(step_loss[: t + 1]).all()):
                    draws.diverged = True
                    cut_after_divergence(draws.loss, step_loss, chains)
                    break
                if progress is not None:
                    progress(t + 1)
        return _ChainResult(
            loss=draws.loss.cpu(),
            reference=draws.reference.cpu() if draws.reference is not None else None,
            observables={k: _pad_draws(v, chains.num_draws) for k, v in draws.observables.items()},
            diverged=draws.diverged,
            mala=tracker.rate() if tracker is not None else None,
        )

    def _draw(
        self,
        draws: _ChainResult,
        chain: int,
        k: int,
        batch: Any,
        loss: torch.Tensor,
        terms: torch.Tensor,
    ) -> None:
        """Record draw ``k`` of ``chain``: its loss, w*'s loss on the same minibatch (paired),
        the observables, and the ``on_draw`` hook."""
        draws.loss[k] = loss
        reference = None
        if draws.reference is not None:
            reference = self.references.get((chain, k))
            if reference is None:
                reference = per_sample(self.flat.loss_at_anchor(self.loss_fn, batch))
                self.references[(chain, k)] = reference
            draws.reference[k] = reference.mean()
        with torch.no_grad():
            for name, fn in self.observables.items():
                draws.observables[name].append(fn(self.flat.module).detach())
            if self.on_draw is not None:
                self.on_draw(Draw(chain, k, self.flat.module, terms, reference))

    def traces(self, ids: list[int], rows: Sequence[_ChainResult]) -> ChainTraces:
        """The chains' results as one :class:`ChainTraces`, rows in the order of ``ids``."""
        chains = self.chains
        return ChainTraces(
            chains=ids,
            loss=torch.stack([r.loss for r in rows]) if rows else torch.zeros(0, chains.num_draws),
            reference=torch.stack([r.reference for r in rows]) if chains.paired and rows else None,
            observables={
                k: torch.stack([r.observables[k] for r in rows]) for k in self.observables if rows
            },
            diverged=torch.tensor([r.diverged for r in rows], dtype=torch.bool),
            mala=torch.tensor([r.mala for r in rows]) if chains.mala else None,
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
