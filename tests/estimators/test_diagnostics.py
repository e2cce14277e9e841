"""Chain-health diagnostics: each one fires, with advice on what to change, on a setting made
to trigger it, and all stay quiet on a healthy estimate."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from lightning_devinterp import SGLD, LLCHealthWarning, LLCMonitor, estimate_llc
from lightning_devinterp.estimators.diagnostics import gelman_rubin, is_stationary, stationarity
from tests.estimators.test_llc_analytic import Batches, half_mse
from tests.helpers import RegressionModule, trainer


def linear(d: int = 8, n: int = 800, shift: float = 0.0):
    """Linear regression at its least-squares solution (plus ``shift`` in every weight);
    Hessian eigenvalues in [0.5, 2]."""
    g = torch.Generator().manual_seed(0)
    scales = torch.linspace(0.5, 2.0, d, dtype=torch.float64).sqrt()
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scales
    y = x @ torch.randn(d, 1, generator=g, dtype=torch.float64)
    y = y + 0.5 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T + shift)
    return model, Batches(x, y, 100)


def estimate(model, loader, lr, nbeta=100.0, localization=100.0, **kwargs):
    """estimate_llc, with the health warnings it issues."""
    sampler = SGLD(lr=lr, nbeta=nbeta, localization=localization)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = estimate_llc(model, loader, half_mse, sampler=sampler, **kwargs)
    issued = [str(w.message) for w in caught if issubclass(w.category, LLCHealthWarning)]
    assert issued == est.warnings  # every message, once, as an LLCHealthWarning
    return est


def test_a_healthy_estimate_is_quiet():
    """lr (nbeta h + gamma) <= 0.3 and 4 x 400 draws after 100 burn-in steps, about 10
    relaxation times of the slowest direction."""
    model, loader = linear()
    est = estimate(model, loader, 1e-3, num_draws=400, num_burnin=100)
    assert est.healthy and est.warnings == []
    assert est.stationary and est.chains_agree and est.rhat < 1.05
    assert est.metrics()["llc/health/stationary"] == 1.0
    assert est.metrics()["llc/health/rhat"] == est.rhat


def test_far_too_large_lr_diverges_and_says_use_a_smaller_lr():
    model, loader = linear()
    est = estimate(model, loader, 1.0, num_draws=100)
    assert est.diverged_chains == [0, 1, 2, 3] and not est.healthy
    assert any("diverged" in w and "smaller lr (now 1)" in w for w in est.warnings)


def test_too_few_draws_at_a_small_lr_leave_the_trace_rising():
    """lr gamma = 1e-3: the slowest direction needs ~1000 steps to fill; 200 draws from w*
    still climb (100 weights, so the climb stands out of the chains' spread), and the advice
    is more draws, burn-in or a larger lr."""
    model, loader = linear(d=100, n=2000)
    est = estimate(model, loader, 1e-5, num_draws=200)
    assert not est.stationary and est.drift > 0.1 and est.drift_z > 3
    [message] = [w for w in est.warnings if "still rising" in w]
    assert "num_draws" in message and "num_burnin" in message and "larger lr" in message


def test_weights_away_from_a_minimum_give_a_negative_llc_and_say_why():
    model, loader = linear(shift=0.2)
    est = estimate(model, loader, 1e-3, num_draws=200)
    assert est.negative and est.mean < 0 and not est.healthy
    [message] = [w for w in est.warnings if "negative" in w]
    assert "not at a local minimum" in message and "larger localization" in message


def test_chains_that_disagree_say_use_more_chains_or_draws():
    """One weight, curvature nbeta h + gamma = 2, lr = 0.01: a relaxation takes ~50 steps. After
    10 of them as burn-in each chain sits near its own offset for its 10 draws, so the chains'
    means differ far more than their draws vary."""
    x = torch.ones(100, 1, dtype=torch.float64)
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    loader = Batches(x, torch.zeros(100, 1, dtype=torch.float64), 100)
    est = estimate(
        model, loader, 1e-2, nbeta=1.0, localization=1.0, num_chains=6, num_draws=10, num_burnin=500
    )
    assert est.rhat > 2 and not est.chains_agree and not est.healthy
    [message] = [w for w in est.warnings if "disagree" in w]
    assert "num_chains" in message and "num_draws" in message


def test_gelman_rubin_on_known_samples():
    g = torch.Generator().manual_seed(0)
    same = torch.randn(8, 500, generator=g)
    assert 0.99 < gelman_rubin(same) < 1.02
    shifted = same + torch.arange(8.0)[:, None]  # chains at different levels
    assert gelman_rubin(shifted) > 2
    assert math.isnan(gelman_rubin(same[:1])) and math.isnan(gelman_rubin(same[:, :3]))


def test_stationarity_flags_a_significant_large_drift_only():
    g = torch.Generator().manual_seed(0)
    flat = 10 + torch.randn(4, 400, generator=g)
    change, z = stationarity(flat)
    assert is_stationary(change / 10, z)
    rising = flat + torch.linspace(0, 5, 400)
    change, z = stationarity(rising)
    assert change > 1 and z > 3 and not is_stationary(change / 12.5, z)
    assert is_stationary(0.5, 2.0)  # large but not significant
    assert is_stationary(0.05, 10.0)  # significant but small


def test_the_monitor_warns_with_the_category_and_logs_health_scalars(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    monitor = LLCMonitor(
        SGLD(lr=10.0, nbeta=10.0, localization=100.0),
        num_chains=2,
        num_draws=40,
        at_steps=[2],
        milestones=False,
    )
    t = trainer(tmp_path, callbacks=[monitor], max_steps=2, logger=CSVLogger(tmp_path))
    with pytest.warns(LLCHealthWarning, match="diverged"):
        t.fit(RegressionModule(noisy=False))
    header = (tmp_path / "lightning_logs/version_0/metrics.csv").read_text().splitlines()[0]
    assert "llc/health/diverged_chains" in header and "llc/health/stationary" in header
