"""The MALA acceptance diagnostic falls as the step size grows past what the posterior allows."""

from __future__ import annotations

import torch
from torch import nn

from lightning_devinterp import SGLD, estimate_llc


def test_mala_acceptance_is_near_one_for_small_steps_and_falls_for_large_ones():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 4, generator=g)
    y = x @ torch.randn(4, 1, generator=g) + 0.3 * torch.randn(2000, 1, generator=g)
    model = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)

    def loss(m, batch):
        return 0.5 * ((m(batch[0]) - batch[1]) ** 2).mean()

    rates = []
    for lr in (1e-4, 1e-3, 1e-2):
        est = estimate_llc(
            model,
            [(x, y)],
            loss,
            sampler=SGLD(lr=lr, nbeta=200.0, localization=20.0),
            num_chains=2,
            num_draws=300,
            mala=True,
        )
        rates.append(est.mala_acceptance)
        assert est.metrics()["llc/health/mala_acceptance"] == est.mala_acceptance
    # the posterior's stiffest direction has curvature ~ nbeta*h + gamma ~ 220: eps = 1e-4 is
    # far below 2/220, eps = 1e-2 is close to it
    assert rates[0] > 0.99 and rates[0] > rates[1] > rates[2] and rates[2] < 0.8
    assert (
        estimate_llc(
            model, [(x, y)], loss, sampler=SGLD(lr=1e-4, nbeta=200.0), num_draws=5
        ).mala_acceptance
        is None
    )
