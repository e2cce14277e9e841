"""Biases that healthy-looking chains do not show, and the figures that announce them.

**Minibatch noise in the drift.** One SGLD step adds ``-(ε/2) nβ ∇L_B(w)``; the minibatch
gradient's noise gives the drift a variance ``(ε/2)² nβ² Var(∂L_B/∂w_i)`` per entry, next to
the injected ``ε``: a ratio ``r_i = ε nβ² Var(∂L_B/∂w_i) / 4``, so the chains sample a
posterior ``1 + r_i`` times too hot along entry ``i``. For a quadratic loss the stationary
covariance then solves ``AΣ + ΣA = 2(I + R)`` (``A = nβH + γ``, small-ε limit); the trace of
that equation gives the excess of the estimate ``nβ/2 tr(H ΔΣ) = tr(R)/2 - γ/2 tr(ΔΣ)``,
at most ``Δλ = tr(R)/2 = ε nβ² tr(Var ∇L_B) / 8``, reached where the noisy directions are
stiff (``nβh >> γ``, as for a regular model). Relative to the estimate without it, the bias
is ``Δλ / (λ̂ - Δλ)``; for a regular model that is the mean of ``r_i`` over the entries.
(Batches drawn without replacement are slightly anticorrelated within an epoch, which
lowers the effect on directions slower than an epoch: ``Δλ`` is an upper bound there.)

**Step size.** Euler's discretisation inflates the variance of a direction of stiffness
``a`` by ``1 / (1 - εa/4)``; with the minibatch term both are first order in ε, so running
the same chains at ε/2 (same seeds: common random numbers) measures the bias directly, and
``2 λ̂(ε/2) - λ̂(ε)`` extrapolates to ε -> 0.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from lightning_devinterp.sampling import SGLD, RMSpropSGLD

#: Predicted relative bias from minibatch noise above which an estimate warns: the size of
#: calibration's tolerance, and above the few-percent standard error of a default estimate.
NOISE_BIAS_MAX = 0.1
#: Relative step bias (measured with ``step_check``) above which an estimate warns.
STEP_BIAS_MAX = 0.1
#: Share of sampling wall time spent fetching batches above which an estimate warns.
DATA_SHARE_MAX = 0.5
#: RMSpropSGLD warns when over this share of the entries have zero gradient at w* and its
#: ceiling 1/eps (their factor) is over :data:`CEILING_RATIO_MAX` times the others' factor.
ZERO_GRADIENT_SHARE_MAX = 0.01
CEILING_RATIO_MAX = 100.0


@dataclass(frozen=True)
class GradientNoise:
    """The minibatch gradient's variance at w*, across the batches of L(w*).

    Attributes:
        total: sum over the sampled entries of the variance of ``∂L_B/∂w_i``.
        largest: its largest entry.
        entries: the number of sampled entries.
        batch_size: the batch size ``m`` it was measured at.
        still: the entries whose minibatch gradient never varied (zero at w*: unused units).
        typical: the median standard deviation of the other entries' minibatch gradients.
    """

    total: float
    largest: float
    entries: int
    batch_size: int
    still: int = 0
    typical: float = math.nan

    @classmethod
    def of(cls, variance: torch.Tensor, batch_size: int) -> GradientNoise:
        """The figures of a per-entry variance vector."""
        variance = variance.double()
        moving = variance[variance > 0].sqrt()
        typical = float(moving.median()) if moving.numel() else math.nan
        entries, still = variance.numel(), variance.numel() - moving.numel()
        return cls(
            float(variance.sum()), float(variance.max()), entries, batch_size, still, typical
        )

    def ratios(self, sampler: SGLD) -> tuple[float, float]:
        """``r = ε nβ² Var / 4`` averaged over the entries, and its largest value."""
        scale = sampler.lr * float(sampler.nbeta) ** 2 / 4
        return scale * self.total / self.entries, scale * self.largest

    def excess(self, sampler: SGLD) -> float:
        """``Δλ = ε nβ² tr(Var ∇L_B) / 8``: the most the noise adds to the estimate."""
        return sampler.lr * float(sampler.nbeta) ** 2 * self.total / 8


class GradientVariance:
    """Running per-entry mean and variance of gradient vectors (Welford's update)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def add(self, grad: torch.Tensor) -> None:
        grad = grad.detach().to(torch.float64 if grad.dtype == torch.float64 else torch.float32)
        self.count += 1
        if self.mean is None:
            self.mean, self.squares = grad.clone(), torch.zeros_like(grad)
            return
        delta = grad - self.mean
        self.mean.add_(delta, alpha=1 / self.count)
        self.squares.add_(delta * (grad - self.mean))

    def variance(self) -> torch.Tensor | None:
        """The unbiased per-entry variance, or None with fewer than two gradients."""
        if self.count < 2 or self.squares is None:
            return None
        return self.squares / (self.count - 1)


def noise_bias(noise: GradientNoise, sampler: SGLD, mean: float) -> float:
    """The relative bias the drift's minibatch noise is expected to give the estimate
    ``mean``: the larger of ``Δλ / (λ̂ - Δλ)`` (exact in the small-step limit with weak
    localization, but an understatement when Euler's bias also inflates ``λ̂``) and the mean
    ratio ``r`` (the bias of a regular model, whose every direction is stiff). ``inf`` when
    ``Δλ`` is all of the estimate, NaN when the estimate is not finite."""
    excess = noise.excess(sampler)
    if not math.isfinite(mean) or not math.isfinite(excess):
        return math.nan
    if excess <= 0:
        return 0.0
    clean = mean - excess
    return max(excess / clean, noise.ratios(sampler)[0]) if clean > 0 else math.inf


def noise_warning(noise: GradientNoise, sampler: SGLD, mean: float) -> str | None:
    """The warning for an estimate biased by more than :data:`NOISE_BIAS_MAX` by the drift's
    minibatch noise, with the largest sound lr and smallest sound batch; else None."""
    bias = noise_bias(noise, sampler, mean)
    if not bias > NOISE_BIAS_MAX or mean <= 0:
        return None
    excess, (ratio, _) = noise.excess(sampler), noise.ratios(sampler)
    factor = min(bias, 1 / NOISE_BIAS_MAX) / NOISE_BIAS_MAX  # the bias is linear in lr
    expected = f"+{bias:.0%}" if math.isfinite(bias) else "more than the whole estimate"
    return (
        f"At lr={sampler.lr:.3g} the minibatch gradient's noise in the drift "
        f"((lr/2)^2 nbeta^2 Var(grad L_B) = {ratio:.2f} x the injected noise lr, per entry on "
        f"average) heats the sampled posterior: the estimate is expected to be biased up by "
        f"{expected} ({excess:.3g} of {mean:.4g}). Use lr <= {sampler.lr / factor:.2g}, or "
        f"batches of at least {math.ceil(noise.batch_size * factor)} samples (now "
        f"{noise.batch_size})."
    )


def preconditioner_warning(noise: GradientNoise, sampler: SGLD) -> str | None:
    """The warning for an :class:`RMSpropSGLD` whose ceiling ``1/eps``, the factor of the
    entries with zero gradient at w*, is over :data:`CEILING_RATIO_MAX` times the others'
    typical ``1/(|g| + eps)`` (when they are over :data:`ZERO_GRADIENT_SHARE_MAX` of all)."""
    if (
        not isinstance(sampler, RMSpropSGLD)
        or noise.still <= ZERO_GRADIENT_SHARE_MAX * noise.entries
    ):
        return None
    ratio = (noise.typical + sampler.eps) / sampler.eps
    if not ratio > CEILING_RATIO_MAX:  # False for nan: no other entries to compare with
        return None
    return (
        f"{noise.still} of {noise.entries} sampled entries have zero gradient at w* (unused "
        f"units): RMSpropSGLD's preconditioner gives them its ceiling 1/eps = "
        f"{1 / sampler.eps:.3g}, {ratio:.2g}x the other entries' factor: their steps are that much "
        "larger, and the chains can run far from w* without a non-finite loss (estimates "
        "orders of magnitude too high). Use a larger eps near the gradients' scale (such as "
        f"1e-2; their typical size here is {noise.typical:.2g}), or plain SGLD."
    )


def step_sensitivity(full: torch.Tensor, half: torch.Tensor) -> tuple[float, float, float]:
    """From per-chain estimates at ε and at ε/2 (same chains): the relative bias of the
    estimate at ε, ``2 (λ̂(ε) - λ̂(ε/2)) / λ̂(0)``; the first-order extrapolation
    ``λ̂(0) = 2 λ̂(ε/2) - λ̂(ε)``; and the difference's z-score across chains."""
    ok = torch.isfinite(full) & torch.isfinite(half)
    if not bool(ok.any()):
        return math.nan, math.nan, math.nan
    full, half = full[ok].double(), half[ok].double()
    extrapolated = float((2 * half - full).mean())
    difference = full - half
    bias = 2 * float(difference.mean()) / abs(extrapolated) if extrapolated else math.inf
    spread = float(difference.std()) / math.sqrt(difference.numel()) if ok.sum() > 1 else 0.0
    z = float(difference.mean()) / spread if spread > 0 else math.inf
    return bias, extrapolated, z


def step_warning(sampler: SGLD, bias: float, z: float, extrapolated: float) -> str | None:
    """The warning for a significant (z > 2) step bias above :data:`STEP_BIAS_MAX`."""
    if not (abs(bias) > STEP_BIAS_MAX and abs(z) > 2):
        return None
    return (
        f"Halving the step (lr={sampler.lr:.3g} -> {sampler.lr / 2:.3g}, same chains) changes "
        f"the estimate: at this lr it is biased by {bias:+.0%} (z={z:.1f}); the estimate "
        f"extrapolated to lr -> 0 is {extrapolated:.4g}. Use lr <= "
        f"{sampler.lr * STEP_BIAS_MAX / abs(bias):.2g}."
    )


def data_warning(share: float) -> str | None:
    """The warning for an estimate whose sampling waited mostly on its batches."""
    if not share > DATA_SHARE_MAX:
        return None
    return (
        f"Fetching batches took {share:.0%} of the sampling time: the estimate waits on the "
        "data loader, not on the model. Sample from a DataLoader over an indexable dataset "
        "with a batch sampler (DataLoader(dataset, batch_size=None, sampler=BatchSampler(...)) "
        "or a dataset with __getitems__), use num_workers > 0, or pass a cached loader of "
        "pre-made tensor batches for sampling (dataloader=...)."
    )


class TimedBatches:
    """An iterable over ``batches`` that adds the time spent in its iterators' ``next()``
    (and in ``iter()``) to :attr:`seconds`."""

    def __init__(self, batches: Iterable) -> None:
        self.batches = batches
        self.seconds = 0.0

    def __iter__(self) -> Iterator[Any]:
        started = time.perf_counter()
        iterator = iter(self.batches)
        self.seconds += time.perf_counter() - started
        return _TimedIterator(iterator, self)


class _TimedIterator:
    def __init__(self, iterator: Iterator[Any], owner: TimedBatches) -> None:
        self.iterator, self.owner = iterator, owner

    def __iter__(self) -> _TimedIterator:
        return self

    def __next__(self) -> Any:
        started = time.perf_counter()
        try:
            return next(self.iterator)
        finally:
            self.owner.seconds += time.perf_counter() - started
