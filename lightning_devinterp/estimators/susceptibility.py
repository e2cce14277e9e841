"""Susceptibilities: how each component's posterior responds to a shift of the data.

For a perturbed distribution q' (a *probe*), the response of the observable
``phi_C = L_q(w) - L_q(w*)`` sampled by SGLD restricted to component C is (PAPERS.md)

    chi^C(q') = -nbeta * Cov[phi_C, L_q'(w) - L_q(w)]

and per probe token (x, y) with loss ``l_xy``: ``chi^C_xy = -nbeta * Cov[phi_C, l_xy(w) - L_q(w)]``,
whose mean over the probe's tokens is ``chi^C(q')``.

Estimator. ``phi`` is the draw's own SGLD minibatch loss, minus the loss of w* on the same
samples when paired (the default: it cancels batch-to-batch noise), and the probe losses come
from fixed probe batches, so ``Cov[phi, l_xy]`` is unbiased. ``Cov[phi, L_q]`` is the
posterior variance of L_q; estimating it from the same minibatch would add the minibatch
noise variance (a bias as large as the signal at realistic batch sizes), so it is estimated
as ``Cov[L_A, L_B]`` between the two halves A, B (by sample) of each minibatch, whose noises
are independent, at no extra forward pass. The loss function must therefore return
unreduced per-sample (or per-token) losses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from lightning_devinterp.components import Component
from lightning_devinterp.estimators.llc import LLCEstimate, llc_from_samples
from lightning_devinterp.estimators.llc_sampling import (
    DEFAULT_CHAINS,
    LLCSamples,
    default_loss_fn,
    merge_samples,
    sample_components,
)
from lightning_devinterp.sampling import (
    SGLD,
    BatchStream,
    ChainSettings,
    Draw,
    LossFn,
    device_transfer,
    loss_terms,
    per_sample,
)

#: Name of the whole model when no components are given.
WHOLE_MODEL = "model"


class _ChainStats:
    """Running sums of one chain's draws, enough for its covariances (float64).

    Probe tokens are one flat vector (all probes, in order); ``probe_sizes`` splits it.
    """

    def __init__(self, probe_sizes: Sequence[int]) -> None:
        self.sizes = list(probe_sizes)
        tokens = sum(self.sizes)
        self.count = 0
        self.phi = self.half_a = self.half_b = self.halves = 0.0
        self.token = torch.zeros(tokens, dtype=torch.float64)
        self.phi_token = torch.zeros(tokens, dtype=torch.float64)
        self.probe = torch.zeros(len(self.sizes), dtype=torch.float64)
        self.phi_probe = torch.zeros(len(self.sizes), dtype=torch.float64)

    def add(self, phi: float, half_a: float, half_b: float, tokens: torch.Tensor) -> None:
        """One draw: the observable, the two half-minibatch losses, the probe token losses."""
        tokens = tokens.to(torch.float64)
        means = torch.stack([part.mean() for part in tokens.split(self.sizes)])
        self.count += 1
        self.phi += phi
        self.half_a += half_a
        self.half_b += half_b
        self.halves += half_a * half_b
        self.token += tokens
        self.phi_token.add_(tokens, alpha=phi)
        self.probe += means
        self.phi_probe.add_(means, alpha=phi)

    def responses(self, nbeta: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """This chain's chi per probe and per probe token (NaN with fewer than 2 draws)."""
        n = self.count
        if n < 2:
            nan = float("nan")
            return torch.full_like(self.probe, nan), list(
                torch.full_like(self.token, nan).split(self.sizes)
            )
        variance = (self.halves - self.half_a * self.half_b / n) / (n - 1)
        probe = (self.phi_probe - self.phi * self.probe / n) / (n - 1) - variance
        token = (self.phi_token - self.phi * self.token / n) / (n - 1) - variance
        return -nbeta * probe, list((-nbeta * token).split(self.sizes))


@dataclass
class SusceptibilitySamples:
    """What one process sampled for one component, before chains are pooled.

    Attributes:
        component: the component's name.
        chains: the chain indices, in row order.
        response: (chains, probes) each chain's chi per probe.
        per_token: probe name -> (chains, tokens) each chain's chi per probe token.
        llc: the same chains' LLC samples (the component's refined LLC).
        token_shapes: probe name -> shape of each fixed batch's loss terms.
    """

    component: str
    chains: list[int]
    response: torch.Tensor
    per_token: dict[str, torch.Tensor]
    llc: LLCSamples
    token_shapes: dict[str, list[tuple[int, ...]]]


@dataclass
class Susceptibilities:
    """Susceptibilities of components to probes, with per-token attributions.

    Convention: ``chi = -nbeta * Cov[phi_C, L_q' - L_q]``, the linear response
    ``d<phi_C>/dh`` of the component's loss to the mixture ``(1-h) q + h q'``, *including*
    the factor nbeta. Negative: shifting the data toward the probe lowers the component's
    expected loss (the component expresses what the probe contains); positive: it raises it.
    :meth:`without_nbeta` gives ``-Cov[...]``, the convention without nbeta.

    Attributes:
        probes: probe names (rows of ``response``).
        components: component names (columns).
        response: (probes, components) mean over chains.
        stderr: (probes, components) standard error across chains (NaN with one chain).
        per_token: probe name -> (tokens, components); the probe's tokens are its fixed
            batches' loss terms flattened in order (batch by batch, row-major), and their mean
            is the probe's row of ``response``.
        per_chain: (chains, probes, components).
        nbeta: the inverse temperature used (and included in the values when
            ``includes_nbeta``).
        llc: component name -> its LLC estimate from the same chains.
        token_shapes: probe name -> the shape of each fixed batch's loss terms, to map a
            flat token index back to (sample, position).
        includes_nbeta: whether the values include the nbeta factor.
    """

    probes: list[str]
    components: list[str]
    response: torch.Tensor
    stderr: torch.Tensor
    per_token: dict[str, torch.Tensor]
    per_chain: torch.Tensor
    nbeta: float
    llc: dict[str, LLCEstimate] = field(default_factory=dict)
    token_shapes: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    includes_nbeta: bool = True

    def without_nbeta(self) -> Susceptibilities:
        """The same susceptibilities divided by nbeta: ``-Cov[phi_C, L_q' - L_q]``."""
        if not self.includes_nbeta:
            return self
        scale = 1.0 / self.nbeta
        return replace(
            self,
            response=self.response * scale,
            stderr=self.stderr * scale,
            per_token={k: v * scale for k, v in self.per_token.items()},
            per_chain=self.per_chain * scale,
            includes_nbeta=False,
        )

    @property
    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(probe_modes, singular_values, component_modes)`` of ``response``:
        ``response = probe_modes @ diag(singular_values) @ component_modes.T``. Each mode's
        sign is fixed so its largest component loading is positive (comparable over training).
        """
        u, s, vh = torch.linalg.svd(self.response.double(), full_matrices=False)
        v = vh.T
        sign = torch.sign(v.gather(0, v.abs().argmax(0, keepdim=True)).squeeze(0))
        sign[sign == 0] = 1
        return (u * sign).float(), s.float(), (v * sign).float()

    @property
    def singular_values(self) -> torch.Tensor:
        return self.svd[1]

    def top_tokens(self, probe: str, component: str, k: int = 10) -> list[tuple[int, float]]:
        """The ``k`` probe tokens with the largest |chi| for ``component``: (flat index, chi)."""
        values = self.per_token[probe][:, self.components.index(component)]
        order = values.abs().argsort(descending=True)[:k]
        return [(int(i), float(values[i])) for i in order]

    def token_position(self, probe: str, index: int) -> tuple[int, ...]:
        """(batch number, then the position inside that batch's loss terms) of a flat index."""
        for number, shape in enumerate(self.token_shapes[probe]):
            size = math.prod(shape)
            if index < size:
                return (number, *(int(i) for i in torch.unravel_index(torch.tensor(index), shape)))
            index -= size
        raise IndexError(f"Token index out of range for probe {probe!r}.")

    def to_record(self) -> dict[str, Any]:
        """JSON-ready summary (without per-token values)."""
        probe_modes, singular, component_modes = self.svd
        return {
            "probes": list(self.probes),
            "components": list(self.components),
            "response": self.response.tolist(),
            "stderr": self.stderr.tolist(),
            "singular_values": singular.tolist(),
            "probe_modes": probe_modes.tolist(),
            "component_modes": component_modes.tolist(),
            "nbeta": self.nbeta,
            "includes_nbeta": self.includes_nbeta,
        }


def probe_batches(
    probes: Mapping[str, Iterable],
    num_batches: int,
    seed: int,
    transfer: Callable[[Any], Any],
) -> dict[str, list[Any]]:
    """The first ``num_batches`` batches of each probe (a fresh, seeded iterator), fixed for
    the whole estimate and moved to the model's device."""
    if not probes:
        raise ValueError("probes is empty: pass {'name': dataloader} of a shifted distribution.")
    fixed = {}
    for name, loader in probes.items():
        stream = BatchStream(loader, seed, transfer)
        fixed[name] = [next(stream) for _ in range(num_batches)]
    return fixed


def _probe_losses(
    module: nn.Module, loss_fn: LossFn, batches: Mapping[str, list[Any]]
) -> torch.Tensor:
    """The loss terms of every probe's fixed batches, flattened into one vector, in order."""
    with torch.inference_mode():
        return torch.cat(
            [loss_terms(loss_fn(module, b)).reshape(-1) for fs in batches.values() for b in fs]
        )


def _checked(losses: torch.Tensor) -> torch.Tensor:
    """The minibatch's loss terms, if they can be split into two halves by sample."""
    if losses.dim() == 0 or losses.shape[0] < 2:
        raise ValueError(
            f"Susceptibilities need loss_fn to return unreduced per-sample or per-token losses "
            f"(shape [batch, ...], batch >= 2); it returned shape {tuple(losses.shape)}. Return "
            "e.g. F.cross_entropy(logits, y, reduction='none')."
        )
    return losses


def _halves(losses: torch.Tensor) -> tuple[float, float]:
    """Mean of the first and of the second half of per-sample losses."""
    half = losses.shape[0] // 2
    return float(losses[:half].double().mean()), float(losses[half:].double().mean())


def sample_susceptibilities(
    model: nn.Module,
    dataloader: Iterable,
    probes: Mapping[str, Iterable],
    components: Sequence[Component] | None = None,
    loss_fn: LossFn | None = None,
    *,
    num_probe_batches: int = 1,
    sampler: SGLD | None = None,
    chains: ChainSettings = DEFAULT_CHAINS,
    transfer: Callable[[Any], Any] | None = None,
    chain_ids: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[SusceptibilitySamples]:
    """The sampling half of :func:`estimate_susceptibilities`: per component, each chain's
    susceptibilities and its LLC samples. Takes ``chain_ids`` (see
    :func:`~lightning_devinterp.estimators.llc.sample_components`) so processes can split the
    chains; combine with :func:`susceptibilities_from_samples`."""
    loss_fn = loss_fn or default_loss_fn(model)
    transfer = device_transfer(transfer, next(model.parameters()).device)
    fixed = probe_batches(probes, num_probe_batches, chains.seed, transfer)
    with torch.no_grad():
        token_shapes = {
            name: [tuple(loss_terms(loss_fn(model, b)).shape) for b in batches]
            for name, batches in fixed.items()
        }
    sizes = [sum(math.prod(shape) for shape in shapes) for shapes in token_shapes.values()]
    targets = list(components) if components else [None]
    stats: list[dict[int, _ChainStats]] = [{} for _ in targets]

    def on_draw(i: int, draw: Draw) -> None:
        losses = per_sample(_checked(draw.losses))
        if draw.reference is not None:
            losses = losses - draw.reference
        stats[i].setdefault(draw.chain, _ChainStats(sizes)).add(
            float(losses.mean()), *_halves(losses), _probe_losses(draw.module, loss_fn, fixed)
        )

    llc = sample_components(
        model,
        dataloader,
        loss_fn,
        components=targets,
        sampler=sampler,
        chains=chains,
        transfer=transfer,
        chain_ids=chain_ids,
        progress=progress,
        on_draw=on_draw,
    )
    return [
        _component_samples(target, samples, chain_stats, list(fixed), token_shapes)
        for target, samples, chain_stats in zip(targets, llc, stats, strict=True)
    ]


def _component_samples(
    target: Component | None,
    samples: LLCSamples,
    stats: Mapping[int, _ChainStats],
    probes: Sequence[str],
    token_shapes: dict[str, list[tuple[int, ...]]],
) -> SusceptibilitySamples:
    """One component's per-chain responses from its chains' running sums (NaN for a
    diverged chain)."""
    rows = [stats[c].responses(samples.sampler.nbeta) for c in samples.traces.chains]
    diverged = samples.traces.diverged
    response = torch.stack([probe for probe, _ in rows])
    response[diverged] = float("nan")
    per_token = {}
    for k, name in enumerate(probes):
        values = torch.stack([tokens[k] for _, tokens in rows]).float()
        values[diverged] = float("nan")
        per_token[name] = values
    return SusceptibilitySamples(
        component=target.name if target is not None else WHOLE_MODEL,
        chains=list(samples.traces.chains),
        response=response.float(),
        per_token=per_token,
        llc=samples,
        token_shapes=token_shapes,
    )


def susceptibilities_from_samples(
    parts: Sequence[Sequence[SusceptibilitySamples]],
) -> Susceptibilities:
    """Pool the chains of one or more processes (each a list over the same components)."""
    first = parts[0]
    components = [s.component for s in first]
    probes = list(first[0].per_token)
    nbeta = float(first[0].llc.sampler.nbeta)
    per_chain, per_token, stderr, llc = [], [], [], {}
    for k, name in enumerate(components):
        pieces = [part[k] for part in parts]
        order = torch.tensor([c for p in pieces for c in p.chains]).argsort()
        response = torch.cat([p.response for p in pieces])[order]  # (chains, probes)
        per_chain.append(response)
        per_token.append(
            {probe: torch.cat([p.per_token[probe] for p in pieces])[order] for probe in probes}
        )
        llc[name] = llc_from_samples(merge_samples([p.llc for p in pieces]))
    chains = torch.stack(per_chain, dim=-1)  # (chains, probes, components)
    ok = ~torch.isnan(chains).any(dim=(1, 2))
    kept = chains[ok]
    response = kept.mean(0)
    stderr = (
        kept.std(0) / math.sqrt(len(kept))
        if len(kept) > 1
        else torch.full_like(response, float("nan"))
    )
    tokens = {
        probe: torch.stack([pt[probe][ok].mean(0) for pt in per_token], dim=-1) for probe in probes
    }
    return Susceptibilities(
        probes=probes,
        components=components,
        response=response,
        stderr=stderr,
        per_token=tokens,
        per_chain=chains,
        nbeta=nbeta,
        llc=llc,
        token_shapes=first[0].token_shapes,
    )


def estimate_susceptibilities(
    model: nn.Module,
    dataloader: Iterable,
    probes: Mapping[str, Iterable],
    components: Sequence[Component] | None = None,
    loss_fn: LossFn | None = None,
    *,
    sampler: SGLD | None = None,
    num_chains: int = 4,
    num_draws: int = 200,
    num_burnin: int = 0,
    steps_between_draws: int = 1,
    seed: int = 0,
    num_probe_batches: int = 1,
    init_loss_batches: int = 16,
    paired: bool = True,
    train_mode: bool = False,
    transfer: Callable[[Any], Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Susceptibilities:
    """Susceptibilities of each component to each probe distribution, with per-token
    attributions and each component's refined LLC, from one sampling run per component.

    Args:
        model: the model at w*.
        dataloader: batches of the training distribution q (SGLD minibatches).
        probes: name -> dataloader of a shifted distribution q'. Its first
            ``num_probe_batches`` batches are fixed and evaluated at every draw (forward only).
        components: the components C (SGLD restricted to each); default: the whole model.
        loss_fn: ``loss_fn(model, batch)`` returning unreduced per-sample or per-token losses
            (their mean is the loss). Default: the model's ``training_step``, which must then
            return unreduced losses.
        sampler, num_chains, num_draws, num_burnin, steps_between_draws, seed,
        init_loss_batches, paired, train_mode, transfer, progress: as for
            :func:`~lightning_devinterp.estimate_llc`.
        num_probe_batches: batches per probe.

    Returns:
        :class:`Susceptibilities` (``.response`` probes x components, ``.per_token``,
        ``.stderr``, ``.svd``, ``.llc``).
    """
    chains = ChainSettings(
        num_chains, num_draws, num_burnin, steps_between_draws, seed, init_loss_batches, paired,
        train_mode,
    )  # fmt: skip
    samples = sample_susceptibilities(
        model,
        dataloader,
        probes,
        components,
        loss_fn,
        num_probe_batches=num_probe_batches,
        sampler=sampler,
        chains=chains,
        transfer=transfer,
        progress=progress,
    )
    return susceptibilities_from_samples([samples])
