"""calibrate: from deliberately poor grids to settings whose estimates meet the analytic
tolerances of tests/estimators/test_llc_analytic.py; the selection rule, the budget, the
figures and the arguments."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from torch import nn

from lightning_devinterp import SGLD, calibrate, estimate_llc
from lightning_devinterp.estimators import calibrate_with, llc_from_samples, sample_llc
from lightning_devinterp.estimators.calibration import (
    CALIBRATE_OPTIONS,
    DEFAULT_STEP_FRACTIONS,
    CalibrationOptions,
    select,
)
from lightning_devinterp.estimators.calibration_rule import bounded, predicted_ratio
from lightning_devinterp.reporting.calibration_figures import (
    plot_calibration_llc,
    plot_calibration_traces,
)
from lightning_devinterp.sampling import BatchStream, ChainSettings, chain_seed, default_nbeta
from tests.estimators.test_llc_analytic import (
    RRR_SHAPES,
    Batches,
    NormalCrossing,
    half_mse,
    normal_crossing_exact,
    rrr_problem,
)

#: A log grid with ratio sqrt(10) from far too large (every chain diverges at once) to far too
#: small (the chains barely move from w*).
POOR_GRID = [10 ** (-k / 2) for k in range(15)]


def regular(d: int = 50, n: int = 2000, seed: int = 0):
    """Linear regression at its least-squares solution, Hessian eigenvalues spread over
    [0.42, 2.3] (as in the analytic test, smaller). Returns model, loader and the Hessian's
    eigenvalues."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(math.log10(0.5), math.log10(2.0), d, dtype=torch.float64).sqrt()
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scales
    y = x @ torch.randn(d, 1, generator=g, dtype=torch.float64)
    y = y + 0.5 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    return model, Batches(x, y, 100), torch.linalg.eigvalsh(x.T @ x / n)


def test_regular_model_from_a_poor_grid_meets_the_exact_value_within_5_percent():
    """nbeta = gamma = 100: the exact value is 1/2 sum_i nbeta h_i / (nbeta h_i + gamma) = 12.5.
    Stiffness a = nbeta h + gamma runs from 142 to 330, so lr >= 0.03 diverges (lr a > 4) and
    lr <= 1e-5 leaves the chains at w* (relaxation 1/(lr gamma) >= 1000 steps). The walk comes
    down from lr = 1 and stops at the first two neighbours that agree within 10%; the
    recommended lr is the smaller of them (Euler bias lr a / 4 <= 3%). Checked with a longer
    estimate at the recommended settings and burn-in: 4 x 1000 draws, standard error ~1%."""
    model, loader, h = regular()
    nbeta, gamma = 100.0, 100.0
    exact = 0.5 * float((nbeta * h / (nbeta * h + gamma)).sum())
    result = calibrate(
        model,
        loader,
        half_mse,
        nbeta=nbeta,
        localizations=[gamma],
        lrs=POOR_GRID,
        num_draws=400,
        max_steps=None,
    )
    table = result.table
    assert [r["lr"] for r in table] == POOR_GRID[: len(table)]  # walked from the top
    assert all(r["diverged_chains"] == 4 for r in table if r["lr"] >= 0.1)
    assert result.confirmed and result.healthy and not result.warnings
    assert 1e-4 <= result.sampler.lr <= 1e-3
    assert result.sampler.nbeta == nbeta and result.sampler.localization == gamma
    chosen = table[result.chosen]
    assert chosen["agrees_with_larger"] and table[result.chosen - 1]["healthy"]
    assert result.num_burnin >= 200
    est = estimate_llc(
        model,
        loader,
        half_mse,
        sampler=result.sampler,
        num_draws=1000,
        num_burnin=result.num_burnin,
        seed=1,
    )
    assert abs(est.mean - exact) < 0.05 * exact, (est.mean, exact, table)


def test_full_sweep_flags_far_too_small_steps_and_agrees_with_the_walk():
    """Every setting of a coarse grid, without early stops: far too large diverges, far too
    small is flagged (it cannot relax through the localization; far below the plateau), and
    the choice is the walk's."""
    model, loader, _ = regular(d=8, n=800)
    kwargs = dict(
        nbeta=100.0, localizations=[100.0], lrs=POOR_GRID[::2], num_draws=200, max_steps=None
    )
    walk = calibrate(model, loader, half_mse, **kwargs)
    full = calibrate(model, loader, half_mse, full_sweep=True, **kwargs)
    assert len(full.table) == len(POOR_GRID[::2]) > len(walk.table)
    assert full.sampler == walk.sampler
    by_lr = {r["lr"]: r for r in full.table}
    assert by_lr[1.0]["diverged_chains"] == 4 and not by_lr[1.0]["healthy"]
    tiny = by_lr[1e-7]
    assert not tiny["healthy"] and tiny["llc"] < 0.05 * by_lr[walk.sampler.lr]["llc"]
    assert any("relaxation" in w for w in tiny["warnings"]), tiny["warnings"]
    for key in ("llc", "std", "per_chain", "drift", "rhat", "stationary", "steps", "chosen"):
        assert key in tiny


@pytest.mark.slow
def test_normal_crossing_from_a_poor_grid_is_within_30_percent_of_one_quarter():
    """The normal crossing of the analytic test (nbeta = n / log n, gamma = 1, ratio 143; exact
    finite-temperature value 0.202). lr >= 0.1 diverges; lr = 1e-6 cannot relax through the
    localization (1/(lr gamma) = 1e6 steps). The trace of this two-parameter model is
    heavy-tailed, so 8 chains x 2000 draws run batched per setting (with 1000 draws the
    chains at 10^-2.5 often looked unsettled and the walk stopped at 1e-2, at the edge of
    stability).
    Checked with a longer estimate at the recommended settings: 16 x 3000 draws, standard
    error ~0.012 (the finite-temperature value plus the step's bias, ~0.21, is 3 of them
    inside the tolerance)."""
    n = 1000
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    noise = torch.randn(n, 1, generator=g, dtype=torch.float64)
    y = 0.5 * (noise - x * (x.T @ noise) / (x.T @ x))
    data = [(x, y)] * 64
    nbeta = n / math.log(n)
    assert 0.19 < normal_crossing_exact(nbeta * float(x.square().mean())) < 0.21
    result = calibrate(
        NormalCrossing(),
        data,
        half_mse,
        nbeta=nbeta,
        localizations=[1.0],
        lrs=[1.0, 0.1, 1e-2, 10**-2.5, 1e-3, 1e-6],
        num_chains=8,
        num_draws=2000,
        max_steps=None,
        paired=False,
        batched=True,
    )
    assert all(r["diverged_chains"] == 8 for r in result.table if r["lr"] >= 0.1)
    assert result.healthy and 1e-3 <= result.sampler.lr <= 1e-2
    samples = sample_llc(
        NormalCrossing(),
        data,
        half_mse,
        sampler=result.sampler,
        num_chains=16,
        num_draws=3000,
        num_burnin=result.num_burnin,
        paired=False,
        seed=1,
        batched=True,
    )
    est = llc_from_samples(samples)
    assert not est.diverged_chains
    assert abs(est.mean - 0.25) < 0.3 * 0.25, (est.mean, result.table)


def test_reduced_rank_regression_from_a_poor_grid_is_within_40_percent_of_lambda():
    """Reduced-rank regression (4, 2, 4, 1), lambda = 5, n = 4000, nbeta = n / log n, with
    localizations 10 and 100 (weakest tried first). lr >= 0.01 diverges, 3e-3 is unstable
    in the stiffest direction (an estimate ~15 x lambda), small lr cannot relax through the
    localization in the burn-in. Checked with a longer estimate at the recommended settings
    (4 x 600 draws); at gamma = 100 the finite-n value itself is ~30% below lambda (seeds 0-2:
    -27%, -29%, -28%)."""
    shape, n = (4, 2, 4, 1), 4000
    lam = RRR_SHAPES[shape][0]
    model, x, y = rrr_problem(*shape, n=n)
    loader = Batches(x, y, 250)
    result = calibrate(
        model,
        loader,
        half_mse,
        nbeta=n / math.log(n),
        localizations=[100.0, 10.0],
        lrs=POOR_GRID[::2][:6] + [10**-3.5, 1e-7],
        num_draws=300,
        max_steps=None,
    )
    assert result.healthy
    assert [r["localization"] for r in result.table][0] == 10.0  # weakest first
    assert all(r["llc"] > 10 * lam for r in result.table if r["lr"] == 10**-2.5)
    est = estimate_llc(
        model,
        loader,
        half_mse,
        sampler=result.sampler,
        num_draws=600,
        num_burnin=result.num_burnin,
        seed=1,
    )
    assert abs(est.mean - lam) < 0.4 * lam, (est.mean, result.table)


def test_default_grid_is_scaled_by_the_measured_curvature():
    """Without lrs the grid is DEFAULT_STEP_FRACTIONS / (nbeta h + gamma), with h the top
    eigenvalue of the Hessian on one batch (x^T x / m here), from 20 power iterations on
    finite differences of gradients: a Rayleigh quotient, so at most h and close below it."""
    model, loader, _ = regular(d=8, n=800)
    result = calibrate(
        model, loader, half_mse, nbeta=50.0, localizations=[10.0], num_draws=16, max_steps=64
    )
    x, _ = next(BatchStream(loader, chain_seed(0, -1, 6)))  # the batch it measures on
    top = float(torch.linalg.eigvalsh(x.T @ x / len(x)).max())
    assert 0.9 * top < result.curvature < top * (1 + 1e-6)
    stiffness = 50.0 * result.curvature + 10.0
    lrs = [r["lr"] for r in result.table]
    assert lrs == pytest.approx([f / stiffness for f in DEFAULT_STEP_FRACTIONS[: len(lrs)]])
    assert any("budget" in w for w in result.warnings)


def test_weights_away_from_a_minimum_move_to_a_smaller_nbeta():
    """0.05 from the least-squares solution, the gradient at w* pulls the chains downhill by
    about nbeta^2 |g|^2 / (nbeta h + gamma), against the LLC's own nbeta tr(H) / (2 (nbeta h +
    gamma)): at nbeta = 1000 the estimate is negative (with the advice that says so), at
    nbeta = 100 it is positive and the calibration settles there."""
    model, loader, _ = regular(d=8, n=800)
    with torch.no_grad():
        model.weight.add_(0.05)
    result = calibrate(
        model,
        loader,
        half_mse,
        nbetas=[100.0, 1000.0],
        localizations=[100.0],
        lrs=[1e-3, 10**-3.5, 1e-4],
        num_draws=100,
        max_steps=None,
    )
    hot = [r for r in result.table if r["nbeta"] == 1000.0]
    assert len(hot) == 3 and not any(r["healthy"] for r in hot)  # tried first, all of them
    assert sum(r["negative"] for r in hot) >= 2
    negative = next(r for r in hot if r["negative"])
    assert any("negative" in w and "smaller nbeta" in w for w in negative["warnings"])
    assert result.sampler.nbeta == 100.0 and result.healthy


def test_nbeta_is_swept_only_when_not_given():
    model, loader, _ = regular(d=4, n=400)
    kwargs = dict(localizations=[100.0], lrs=[1e-3], num_draws=16, max_steps=None)
    swept = calibrate(model, loader, half_mse, **kwargs)
    m = default_nbeta(100)
    assert [r["nbeta"] for r in swept.table] == pytest.approx([m, m / 4])  # largest first
    fixed = calibrate(model, loader, half_mse, nbeta=7.0, **kwargs)
    assert [r["nbeta"] for r in fixed.table] == [7.0]
    chosen = calibrate(model, loader, half_mse, nbetas=[3.0, 9.0], **kwargs)
    assert [r["nbeta"] for r in chosen.table] == [9.0, 3.0]


def test_budget_stops_the_walk_and_is_reported():
    """A tolerance of 2% that no setting meets (the second setting's predicted step bias is
    8.6%, which a 10% tolerance accepts and the walk would stop there)."""
    model, loader, _ = regular(d=4, n=400)
    result = calibrate(
        model,
        loader,
        half_mse,
        nbeta=10.0,
        localizations=[100.0],
        num_draws=50,
        max_steps=450,
        tolerance=0.02,
    )
    assert len(result.table) == 2 and result.steps <= 450
    assert any("max_steps" in w for w in result.warnings)
    with pytest.raises(ValueError, match="max_steps=100 cannot afford one setting"):
        calibrate(model, loader, half_mse, num_draws=50, max_steps=100)


def test_the_model_and_global_rng_are_left_as_found():
    model, loader, _ = regular(d=4, n=400)
    before = [p.detach().clone() for p in model.parameters()]
    state = torch.random.get_rng_state()
    calibrate(model, loader, half_mse, nbeta=10.0, localizations=[100.0], num_draws=16)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_selection_rule_on_a_hand_made_table():
    """Confirmed beats closest pair, the preferred group beats a later one, and the
    recommendation is the smaller lr of the agreeing pair."""

    def row(group, lr, healthy=True, difference=None, tolerance=0.1):
        return {
            "group": group,
            "lr": lr,
            "healthy": healthy,
            "difference": difference,
            "agrees_with_larger": difference is not None and difference <= tolerance,
            "llc": 1.0,
            "diverged_chains": 0,
            "chains_agree": True,
            "stationary": healthy,
        }

    a, b = (10.0, 1.0), (10.0, 100.0)
    rows = [row(a, 1e-2), row(a, 1e-3, difference=0.3), row(b, 1e-2), row(b, 1e-3, difference=0.05)]
    assert select(rows, [a, b]) == (3, True)
    rows[1] = row(a, 1e-3, difference=0.08)
    assert select(rows, [a, b]) == (1, True)
    unconfirmed = [row(a, 1e-2), row(a, 1e-3, difference=0.4), row(a, 1e-4, difference=0.2)]
    assert select(unconfirmed, [a]) == (2, False)
    lonely = [row(a, 1e-2, healthy=False), row(a, 1e-3), row(a, 1e-4, healthy=False)]
    assert select(lonely, [a]) == (1, False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(nbeta=10.0, nbetas=[1.0]), "not both"),
        (dict(nbeta=-1.0), r"nbeta=-1\.0 is invalid"),
        (dict(lrs=[]), r"lrs=\[\] is invalid"),
        (dict(lrs=[1e-3, 0.0]), r"lrs=\[0\.001, 0\.0\] is invalid"),
        (dict(localizations=[-1.0]), "localizations"),
        (dict(nbetas=[float("nan")]), "nbetas"),
        (dict(tolerance=0.0), "tolerance=0.0"),
        (dict(min_acceptance=1.5), "min_acceptance=1.5"),
        (dict(max_steps=0), "max_steps=0"),
        (dict(num_chains=1), "at least 2 chains"),
        (dict(num_draws=8), "16 draws"),
    ],
)
def test_bad_arguments_name_the_value_and_the_fix(kwargs, match):
    model, loader, _ = regular(d=4, n=400)
    with pytest.raises(ValueError, match=match):
        calibrate(model, loader, half_mse, **kwargs)


def test_figures_llc_against_lr_per_nbeta_and_candidate_traces(tmp_path):
    model, loader, _ = regular(d=4, n=400)
    result = calibrate(
        model,
        loader,
        half_mse,
        nbetas=[50.0, 10.0],
        localizations=[100.0],
        lrs=[1.0, 1e-3, 10**-3.5],
        num_draws=40,
        full_sweep=True,
    )
    fig = plot_calibration_llc(result)
    assert len(fig.axes) == 2  # one panel per nbeta, largest first
    assert [ax.get_title() for ax in fig.axes] == ["nβ = 50", "nβ = 10"]
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == [10**-3.5, 1e-3]  # lr = 1 diverged: no value
    traces = plot_calibration_traces(result)
    (ax,) = traces.axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sum("recommended" in label for label in labels) == 1
    assert len(labels) == sum(r["healthy"] for r in result.table) or not result.healthy


def test_figures_without_matplotlib_name_the_extra(monkeypatch):
    model, loader, _ = regular(d=4, n=400)
    result = calibrate(model, loader, half_mse, nbeta=10.0, lrs=[1e-3], num_draws=16)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install lightning-devinterp\[plot\]"):
        plot_calibration_llc(result)


def test_result_record_is_flat_and_json_ready():
    import json

    model, loader, _ = regular(d=4, n=400)
    result = calibrate(model, loader, half_mse, nbeta=10.0, lrs=[1e-3, 1e-4], num_draws=16)
    record = result.to_record()
    assert json.loads(json.dumps(record)) == record
    assert SGLD(**{k: record[k] for k in ("lr", "nbeta", "localization")}) == result.sampler
    assert record["num_burnin"] == result.num_burnin


def test_calibrate_with_takes_chain_counts_from_its_options_only():
    """calibrate_with (what the monitors call) runs calibrate's computation; the counts of
    ``chains`` play no part, its seed, burn-in and steps between draws do."""
    model, loader, _ = regular(d=4, n=400)
    grid = dict(nbeta=10.0, lrs=[1e-3, 1e-4])
    chains = ChainSettings(num_chains=1, num_draws=3, num_burnin=2, steps_between_draws=2, seed=5)
    given = calibrate_with(model, loader, half_mse, chains=chains, num_draws=16, **grid)
    plain = calibrate(
        model, loader, half_mse, num_draws=16, num_burnin=2, steps_between_draws=2, seed=5, **grid
    )
    assert given.estimate.loss_trace.shape == (4, 16)  # calibrate's 4 chains, the option's draws
    assert given.table == plain.table and given.sampler == plain.sampler
    assert given.num_burnin == plain.num_burnin and given.steps == plain.steps
    with pytest.raises(ValueError, match=r"Unknown calibration option\(s\) \['seed'\]"):
        calibrate_with(model, loader, half_mse, chains=chains, seed=1)


def test_calibrate_defaults_are_the_options_defaults():
    defaults = calibrate.__kwdefaults__
    options = CalibrationOptions()
    assert list(CALIBRATE_OPTIONS) == [
        "nbeta",
        "lrs",
        "localizations",
        "nbetas",
        "num_chains",
        "num_draws",
        "tolerance",
        "min_acceptance",
        "max_steps",
        "full_sweep",
        "batched",
        "sampler",
    ]
    for name in CALIBRATE_OPTIONS:
        assert getattr(options, name) == defaults[name], name


def test_burnin_is_extended_to_the_relaxation_time_when_the_budget_affords_it():
    """lr = 2e-4, localization 10: the relaxation time 1/(lr gamma) = 500 steps is longer
    than the plateau's 50-step lead (half of 100 draws; at nbeta = 500 the loss's own
    directions relax within 25 steps); the setting's chains run 450 more burn-in steps when
    the budget affords it, else they run as they are, flagged, and the advice says the
    budget, not the chains, is at fault."""
    model, loader, _ = regular(d=8, n=800)
    kwargs = dict(nbeta=500.0, localizations=[10.0], lrs=[2e-4], num_draws=100)
    extended = calibrate(model, loader, half_mse, max_steps=3000, **kwargs)
    [row] = extended.table
    assert row["relaxation"] == 500 and row["burnin"] == 500
    assert row["steps"] == 4 * (450 + 100) and row["healthy"], row["warnings"]
    assert extended.num_burnin == 500
    short = calibrate(model, loader, half_mse, **kwargs)  # the default budget, 1800 steps
    [row] = short.table
    assert row["burnin"] == 50 and row["steps"] == 4 * 100 and not row["healthy"]
    assert any("relaxation" in w for w in row["warnings"])
    assert any("raise max_steps to check" in w for w in short.warnings), short.warnings
    assert short.sampler == extended.sampler and short.num_burnin == 500


def test_a_step_whose_predicted_biases_are_small_is_confirmed_by_them():
    """Default grid (the curvature h measured): the first setting, lr = 1/(nbeta h + gamma),
    has an Euler bound of 33% (lr a / 4 = 1/4); the next, sqrt(10) smaller, 8.6% plus a
    minibatch-noise bias under 1%: within the 10% tolerance, and the first reads 30% above
    it, as the bounds predict (23%, with 20% slack); so the walk stops there, confirmed,
    although the two estimates differ by more than 10%."""
    model, loader, _ = regular(d=8, n=800)
    result = calibrate(model, loader, half_mse, nbeta=10.0, localizations=[100.0], num_draws=50)
    first, second = result.table
    assert first["step_bias"] == pytest.approx(1 / 3)
    assert second["step_bias"] == pytest.approx(0.25 / math.sqrt(10) / (1 - 0.25 / math.sqrt(10)))
    assert second["bounded"] and not second["agrees_with_larger"]
    assert result.confirmed and result.chosen == 1 and not result.warnings
    explicit = calibrate(
        model, loader, half_mse, nbeta=10.0, localizations=[100.0], num_draws=50,
        lrs=[first["lr"], second["lr"]],
    )  # fmt: skip
    assert explicit.table[1]["step_bias"] is None and not explicit.confirmed  # no curvature


def test_bias_bounds_confirm_only_when_the_larger_step_bears_them_out():
    """The larger step's estimate over the row's is predicted as (1 + step)(1 + noise) of each;
    reading more than twice the tolerance above that, it says the bounds do not hold."""
    row = {"healthy": True, "step_bias": 0.05, "minibatch_bias": 0.02, "llc": 1.0}
    larger = {"diverged_chains": 0, "step_bias": 0.2, "minibatch_bias": 0.1, "llc": 1.3}
    assert predicted_ratio(row, larger) == pytest.approx(1.2 * 1.1 / (1.05 * 1.02))
    assert bounded(row, larger, 0.1)  # 1.3 <= 1.23 x 1.2
    assert not bounded(row, {**larger, "llc": 1.6}, 0.1)
    assert not bounded(row, None, 0.1)  # nothing to bear them out
    assert not bounded(row, {**larger, "diverged_chains": 4}, 0.1)
    assert not bounded({**row, "step_bias": 0.09}, larger, 0.1)  # 0.09 + 0.02 > 0.1
    assert not bounded({**row, "healthy": False}, larger, 0.1)
