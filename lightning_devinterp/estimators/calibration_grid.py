"""The settings a calibration tries: nβ values, localizations, and step sizes scaled by the
top curvature of the loss at w*."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from lightning_devinterp.estimators.calibration_options import CalibrationOptions
from lightning_devinterp.sampling import (
    BatchStream,
    FlatModel,
    LossFn,
    chain_seed,
    default_nbeta,
    seeded_global_rng,
)

#: Default ε grid, as fractions of 1/a (a = nβ h + γ, h the top curvature of the loss at w*):
#: ratio sqrt(10) from 1 (Euler's stability limit for the stiffest direction is 4) to 1e-3.
DEFAULT_STEP_FRACTIONS = tuple(10 ** (-k / 2) for k in range(7))
#: Default nβ values when none is given, as multiples of m / log m (m: batch size).
DEFAULT_NBETA_FACTORS = (1.0, 0.25)


def setting_groups(options: CalibrationOptions, batch_size: int) -> list[tuple[float, float]]:
    """The (nβ, γ) pairs to try, in order of preference: largest nβ, then smallest γ."""
    if options.nbeta is not None:
        nbetas = [float(options.nbeta)]
    elif options.nbetas is not None:
        nbetas = sorted({float(v) for v in options.nbetas}, reverse=True)
    else:
        nbetas = [f * default_nbeta(batch_size) for f in DEFAULT_NBETA_FACTORS]
    localizations = sorted({float(v) for v in options.localizations})
    return [(b, g) for b in nbetas for g in localizations]


def step_grid(
    lrs: Sequence[float] | None, curvature: float | None, nbeta: float, localization: float
) -> list[float]:
    """The ε values of one (nβ, γ), largest first."""
    if lrs is not None:
        return sorted({float(v) for v in lrs}, reverse=True)
    stiffness = nbeta * float(curvature or 0.0) + localization
    if stiffness <= 0:
        raise ValueError(
            "The loss has no curvature at w* and localization is 0, so no step size scale "
            "exists; pass lrs=[...] or a localization > 0."
        )
    return [fraction / stiffness for fraction in DEFAULT_STEP_FRACTIONS]


@torch.no_grad()
def top_curvature(
    flat: FlatModel,
    loss_fn: LossFn,
    dataloader: Iterable,
    seed: int,
    transfer: Callable[[Any], Any],
    iterations: int = 20,
) -> float:
    """The largest absolute eigenvalue of the loss's Hessian at w* on one batch, by power
    iteration with finite differences of gradients (first derivatives only, so any model
    works). Costs ``iterations + 1`` forward-backward passes; the copy is left at w*."""
    batch = next(BatchStream(dataloader, chain_seed(seed, -1, 6), transfer))
    anchor = flat.anchor()
    scale = max(float(anchor.double().square().mean().sqrt()), 1e-2)
    delta = 1e-3 * scale * math.sqrt(anchor.numel())  # 0.1% of the weights' rms per entry
    generator = torch.Generator(device=flat.device).manual_seed(chain_seed(seed, -1, 7))
    v = torch.randn(anchor.shape, generator=generator, device=flat.device, dtype=anchor.dtype)
    v /= v.norm()
    with seeded_global_rng(chain_seed(seed, -1, 8), flat.device):
        g0 = _gradient(flat, loss_fn, batch)
        value = 0.0
        for _ in range(iterations):
            flat.params.copy_(anchor + delta * v)
            hv = (_gradient(flat, loss_fn, batch) - g0) / delta
            value = float(torch.dot(v.double(), hv.double()))
            norm = hv.norm()
            if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
                break
            v = hv / norm
    flat.reset()
    return abs(value)


def _gradient(flat: FlatModel, loss_fn: LossFn, batch: Any) -> torch.Tensor:
    with torch.inference_mode(False), torch.enable_grad():
        flat.loss_and_grad(loss_fn, batch)
    grad = flat.grad
    for _, p in flat.active:
        p.grad = None
    return grad
