"""RMSpropSGLD against learning coefficients known in closed form, at n = 20,000 samples and
nbeta = n / log n = 2019, loss 1/2 |y - f(x)|^2 with unit label noise, chains from the true
parameters w*. The singular cases (reduced-rank regression, deep linear network) are in
benchmarks/preconditioned_sampler.py, not yet here."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_devinterp import RMSpropSGLD, estimate_llc
from lightning_devinterp.demos.deep_linear import half_mse
from tests.helpers import Batches

N = 20_000
NBETA = N / math.log(N)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def regular(batch: int, d: int = 8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, d, generator=g, dtype=torch.float64)
    w = torch.randn(1, d, generator=g, dtype=torch.float64)
    y = x @ w.T + torch.randn(N, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w)
    return model, Batches(x, y, batch)


def estimate(model, batches, lr, localization, draws, burnin):
    return estimate_llc(
        model,
        batches,
        half_mse,
        sampler=RMSpropSGLD(
            lr=lr, nbeta=NBETA, localization=localization, freeze_after_burnin=True
        ),
        num_chains=2,
        num_draws=draws,
        num_burnin=burnin,
        init_loss_batches=4,
        seed=0,
    )


@pytest.mark.slow
def test_regular_model_within_15_percent_of_d_over_2():
    """Linear regression, d = 8, lambda = 4 (at this data set and localization 1 the exact
    finite-n value with w* the true parameters is 3.63). lr 1e-6 (lr * G about 3e-5), batch
    1000: minibatch noise under 1% of the injected noise."""
    model, batches = regular(batch=1000)
    est = estimate(model, batches, lr=1e-6, localization=1.0, draws=1500, burnin=300)
    assert abs(est.mean - 4.0) < 0.15 * 4.0, est.mean
