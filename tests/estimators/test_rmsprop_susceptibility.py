"""Susceptibilities sampled with RMSpropSGLD against the closed form of a quadratic loss."""

from __future__ import annotations

import torch

from lightning_devinterp import Component, RMSpropSGLD, estimate_susceptibilities
from tests.estimators.test_susceptibility import (
    COMPONENTS,
    D,
    Shuffled,
    quadratic_form,
    regression_problem,
    squared_errors,
)


def test_susceptibilities_and_refined_llcs_with_the_preconditioned_sampler():
    """Runs through the same engine (on_draw hooks, components, one chain state each).
    Against the closed form (test_susceptibility's problem, lr 0.01/curvature, frozen
    preconditioner, 4 chains x 1500 draws) the responses measured 18-23% low; SGLD at the same
    chain length reads low too (-12% at lr 0.1/curvature, -29% at 0.03/curvature), and with
    4x longer chains both halve (-9%, -6%): a shortfall of short chains that grows as the
    step shrinks, not a bias of the preconditioned sampler (benchmarks/rmsprop_susceptibility.py,
    BENCHMARKS.md). Not yet a band this test can assert at this length."""
    model, data, probes, _ = regression_problem()
    curvature = 50.0 * float(torch.linalg.eigvalsh(quadratic_form(*data)[0]).max()) + 10.0
    components = [
        Component(name, {"weight": torch.isin(torch.arange(D), torch.tensor(entries))[None]})
        for name, entries in COMPONENTS.items()
    ]
    sampler = RMSpropSGLD(lr=0.01 / curvature, nbeta=50.0, localization=10.0)
    result = estimate_susceptibilities(
        model,
        Shuffled(*data, batch_size=256),
        {name: [probe] for name, probe in probes.items()},
        components,
        squared_errors,
        sampler=sampler,
        num_chains=2,
        num_draws=50,
        init_loss_batches=1,
        paired=False,
    )
    assert result.response.shape == (len(probes), len(COMPONENTS))
    assert bool(torch.isfinite(result.response).all())
    assert set(result.llc) == set(COMPONENTS)
    assert all(est.sampler == sampler for est in result.llc.values())
