"""RMSpropSGLD against learning coefficients known in closed form, at n = 20,000 samples and
nbeta = n / log n = 2019, loss 1/2 |y - f(x)|^2 with unit label noise, chains from the true
parameters w*: the regular model, and the singular cases of test_calibrated_analytic.py
(reduced-rank regression and the deep linear network, same data and model helpers) at
eps = 1e-2 and an lr in the log-middle of the in-band range of
benchmarks/preconditioned_sampler.py (BENCHMARKS.md, "The singular cases, both samplers")."""

from __future__ import annotations

import math
import warnings

import pytest

from lightning_devinterp import LLCHealthWarning, RMSpropSGLD, estimate_llc
from lightning_devinterp.demos.deep_linear import half_mse
from tests.estimators.test_calibrated_analytic import deep_linear, regular

N = 20_000
NBETA = N / math.log(N)


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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("widths", "singular_values", "lr"),
    [((4, 3, 4), (2.0,), 1.8e-6), ((5, 4, 3, 4, 5), (2.0, 1.0), 3.2e-7)],
    ids=["rrr-4-3-4-rank-1", "dln-5-4-3-4-5-rank-2"],
)
def test_singular_models_at_eps_1e_2_are_within_40_percent_of_lambda(widths, singular_values, lr):
    """RMSpropSGLD(eps=1e-2, adapting), localization 100, 2 chains x (500 burn-in + 1000
    draws). lr: the log-middle of the measured in-band range (rrr 3.2e-7 to 1e-5, dln 3.2e-8
    to 3.2e-6). Measured over seeds 0-2: rrr (lambda 6) 4.17, 4.41, 4.53; dln (lambda 9)
    6.91, 9.04, 7.48; no chain diverged. Below lambda, as SGLD's: localization 100 holds the
    degenerate directions. At the default eps = 1e-8 both run away (seed 0: 1.4e9, 2.9e11)."""
    model, batches, llc = deep_linear(widths, singular_values)
    est = estimate_llc(
        model,
        batches,
        half_mse,
        sampler=RMSpropSGLD(lr=lr, nbeta=NBETA, localization=100.0, eps=1e-2),
        num_chains=2,
        num_draws=1000,
        num_burnin=500,
        init_loss_batches=4,
        seed=0,
    )
    assert not est.diverged_chains
    assert abs(est.mean - llc) < 0.4 * llc, (est.mean, llc)


@pytest.mark.parametrize(("eps", "warns"), [(1e-8, True), (1e-2, False)])
def test_zero_gradient_entries_at_the_eps_ceiling_warn(eps, warns):
    """The deep linear network's unused units (36 of 64 entries) have zero gradient at w*: at
    eps = 1e-8 their factor 1/eps is ~4e6x the others' (gradients ~0.04), at 1e-2 ~5x."""
    model, batches, _ = deep_linear((5, 4, 3, 4, 5), (2.0, 1.0))
    sampler = RMSpropSGLD(lr=3.2e-7, nbeta=NBETA, localization=100.0, eps=eps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCHealthWarning)
        est = estimate_llc(
            model,
            batches,
            half_mse,
            sampler=sampler,
            num_chains=1,
            num_draws=10,
            init_loss_batches=4,
        )
    found = [w for w in est.warnings if "zero gradient at w*" in w]
    assert bool(found) == warns, est.warnings
    assert not warns or "36 of 64" in found[0] and "1e-2" in found[0], found
