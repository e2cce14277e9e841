"""Biases the chains' health does not show: the drift's minibatch noise (measured at w* on the
L(w*) batches), the step size (the chains again at lr/2), the data loader's share of the time,
and a calibration that avoids the first. The regular model of issue 14: linear regression,
d = 8, n = 20000, MSE with unit noise, w* = the true parameters, nbeta = n / log n."""

from __future__ import annotations

import math
import time
import warnings

import pytest
import torch
from torch import nn

from lightning_devinterp import SGLD, calibrate, estimate_llc
from lightning_devinterp.estimators.bias import GradientNoise, noise_bias
from tests.helpers import Batches

N = 20000
NBETA = N / math.log(N)


def mse(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def regular(seed: int = 0, d: int = 8):
    """Model at the true parameters, x and y."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, 1, generator=g, dtype=torch.float64)
    y = x @ w + torch.randn(N, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w.T)
    return model, x, y


def exact(model: nn.Module, x: torch.Tensor, y: torch.Tensor, gamma: float) -> float:
    """E[nbeta (L(w) - L(w*))] under exp(-nbeta L(w) - gamma |w - w*|^2 / 2) (Gaussian: L is
    quadratic); w* is not the empirical minimum, so the gradient term enters."""
    w = model.weight.detach().T
    hessian = 2 * x.T @ x / N
    grad = -2 * x.T @ (y - x @ w) / N
    a = NBETA * hessian + gamma * torch.eye(x.shape[1], dtype=x.dtype)
    shift = -torch.linalg.solve(a, NBETA * grad)
    value = grad.T @ shift + 0.5 * shift.T @ hessian @ shift
    return float(NBETA * (value + 0.5 * torch.trace(hessian @ torch.linalg.inv(a))))


def noise_messages(est) -> list[str]:
    return [m for m in est.warnings if "minibatch gradient's noise" in m]


def test_the_issues_biased_setting_warns_with_a_sound_lr_and_the_sound_one_does_not():
    """lr = 2.1e-4 with batches of 500: r = lr nbeta^2 Var/4 ~ 1.5 (issue: 1.7), the warning
    names the lr, the mechanism, the bias and a sound lr; lr = 5e-6 with batches of 2000: none."""
    model, x, y = regular()
    sampler = SGLD(lr=2.1e-4, nbeta=NBETA, localization=1.0)
    with pytest.warns(Warning) as caught:
        est = estimate_llc(model, Batches(x, y, 500), mse, sampler=sampler, num_chains=2,
                           num_draws=100, num_burnin=20)  # fmt: skip
    assert 1.2 < est.minibatch_noise < 2.0 and est.minibatch_noise_max >= est.minibatch_noise
    assert est.minibatch_bias > 1.0  # the regular model: the mean ratio
    [message] = noise_messages(est)
    assert "lr=0.00021" in message and "drift" in message and "biased up by +" in message
    assert any(message in str(w.message) for w in caught)
    sound_lr = float(message.split("Use lr <= ")[1].split(",")[0])
    assert 5e-6 < sound_lr < 3e-5  # measured: 1e-5 gives r = 0.07
    metrics = est.metrics()
    assert metrics["llc/health/minibatch_noise"] == est.minibatch_noise
    assert metrics["llc/health/minibatch_bias"] == est.minibatch_bias
    record = est.to_record()
    assert record["minibatch_noise"] == est.minibatch_noise

    sound = SGLD(lr=5e-6, nbeta=NBETA, localization=1.0)
    est = estimate_llc(model, Batches(x, y, 2000), mse, sampler=sound, num_chains=2,
                       num_draws=60, num_burnin=200)  # fmt: skip
    assert est.minibatch_noise < 0.02 and not noise_messages(est), est.warnings


def test_noise_bias_is_the_larger_of_the_mean_ratio_and_the_excess_share():
    noise = GradientNoise(total=8 * 4 / 500, largest=4.2 / 500, entries=8, batch_size=500)
    sampler = SGLD(lr=1e-5, nbeta=NBETA, localization=1.0)
    ratio, largest = noise.ratios(sampler)
    assert ratio == pytest.approx(1e-5 * NBETA**2 * 4 / 500 / 4)
    assert largest == pytest.approx(1e-5 * NBETA**2 * 4.2 / 500 / 4)
    assert noise.excess(sampler) == pytest.approx(8 * ratio / 2)
    assert noise_bias(noise, sampler, 4.0) == pytest.approx(ratio / (1 - ratio))
    assert noise_bias(noise, sampler, 100.0) == pytest.approx(ratio)  # regular: the mean ratio
    assert noise_bias(noise, sampler, 0.1) == math.inf  # the excess is all of the estimate
    assert math.isnan(noise_bias(noise, sampler, math.nan))


def test_the_gradient_noise_costs_one_backward_per_reference_batch_and_is_off_with_one():
    calls = []

    def counting(model, batch):
        calls.append(torch.is_grad_enabled())
        return mse(model, batch)

    model, x, y = regular()
    sampler = SGLD(lr=1e-6, nbeta=NBETA, localization=1.0)
    loader = Batches(x[:4000], y[:4000], 500)
    est = estimate_llc(model, loader, counting, sampler=sampler, num_chains=1, num_draws=4,
                       init_loss_batches=6, paired=False)  # fmt: skip
    assert calls[:12] == [False] * 6 + [True] * 6 and len(calls) == 12 + 4
    assert math.isfinite(est.minibatch_noise)
    calls.clear()
    est = estimate_llc(model, loader, counting, sampler=sampler, num_chains=1, num_draws=4,
                       init_loss_batches=1, paired=False)  # fmt: skip
    assert len(calls) == 1 + 4 and math.isnan(est.minibatch_noise)


def test_step_check_measures_the_step_bias_and_extrapolates_towards_the_exact_value():
    """At lr = 1e-4 (batches of 2000: r = 0.18, Euler lr a / 4 = 0.1) the estimate is ~35% high;
    the chains at lr/2 with the same seeds measure it, and 2 lambda(lr/2) - lambda(lr) is
    nearer the exact value."""
    model, x, y = regular(seed=3)
    truth = exact(model, x, y, gamma=1.0)
    sampler = SGLD(lr=1e-4, nbeta=NBETA, localization=1.0)
    est = estimate_llc(model, Batches(x, y, 2000), mse, sampler=sampler, num_chains=4,
                       num_draws=100, num_burnin=40, step_check=True, seed=5)  # fmt: skip
    assert est.step_bias > 0.1 and est.mean > 1.15 * truth, (est.mean, truth, est.step_bias)
    assert abs(est.extrapolated - truth) < abs(est.mean - truth) / 2, (est.extrapolated, truth)
    assert est.metrics()["llc/health/step_bias"] == est.step_bias
    assert est.metrics()["llc/extrapolated"] == est.extrapolated
    assert any("Halving the step" in m for m in est.warnings), est.warnings


class SlowBatches(Batches):
    """Batches that take 5 ms each to fetch."""

    def __iter__(self):
        for batch in super().__iter__():
            time.sleep(0.005)
            yield batch


def test_a_slow_loader_is_named_with_the_fix_and_a_fast_one_is_not():
    model, x, y = regular()
    sampler = SGLD(lr=1e-6, nbeta=NBETA, localization=1.0)
    kwargs = dict(sampler=sampler, num_chains=1, num_draws=30, init_loss_batches=2)
    est = estimate_llc(model, SlowBatches(x, y, 500), mse, **kwargs)
    assert est.data_share > 0.5 and est.metrics()["llc/health/data_share"] == est.data_share
    assert any("Fetching batches took" in m and "num_workers" in m for m in est.warnings)
    est = estimate_llc(model, [(x[:500], y[:500])] * 4, mse, **kwargs)
    assert est.data_share < 0.5 and not any("Fetching" in m for m in est.warnings)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1])
def test_calibrate_then_estimate_meets_the_regular_model_within_15_percent(seed):
    """The issue's default calibration chose lr = 2.1e-4 (+254%). With the noise condition the
    biased steps are unhealthy and skipped; the choice (lr ~ 6e-6, gamma = 100, its burn-in
    covering 1/(lr gamma)) gives an estimate within 15% of d/2. The exact value at w* (the
    true parameters, not the empirical minimum) is ~20% below d/2; batches drawn without
    replacement add ~+10% to the paired estimate (their within-epoch anticorrelation, absent
    with independent batches: BENCHMARKS.md), so the estimate is held within 25% of it.
    Budget: 300 draws per setting, 2400 steps = 3 estimates of 4 x 200."""
    model, x, y = regular(seed)
    loader = Batches(x, y, 500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = calibrate(model, loader, mse, nbeta=NBETA, num_draws=300, max_steps=2400,
                           seed=seed)  # fmt: skip
        est = estimate_llc(model, loader, mse, sampler=result.sampler,
                           num_burnin=result.num_burnin, num_chains=2, seed=seed + 7)  # fmt: skip
    assert result.steps <= 2400
    truth = exact(model, x, y, result.sampler.localization)
    assert abs(est.mean - truth) < 0.25 * truth, (est.mean, truth, result.table)
    assert abs(est.mean - 4.0) < 0.15 * 4.0, est.mean
    assert est.minibatch_bias < 0.1
