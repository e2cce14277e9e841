"""Weight- and data-refined LLCs against exact answers for quadratic losses."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_devinterp import SGLD, Component, estimate_llc
from lightning_devinterp.sampling import ChainSettings, FlatModel, run_chains

D, N = 4, 2000


def data(teacher_seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    teacher = torch.randn(
        D, 1, generator=torch.Generator().manual_seed(teacher_seed), dtype=torch.float64
    )
    return TensorDataset(x, x @ teacher + 0.3 * torch.randn(N, 1, generator=g, dtype=torch.float64))


def half_mse(model, batch):
    x, y = batch
    return 0.5 * ((model(x) - y) ** 2).mean()


def fitted_model(dataset: TensorDataset) -> nn.Linear:
    x, y = dataset.tensors
    model = nn.Linear(D, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    return model


def exact_llc(w_star: torch.Tensor, dataset: TensorDataset, sgld: SGLD) -> float:
    """nbeta * E[L(w) - L(w*)] for the discretised chain on the quadratic loss
    L(w) = 1/2 mean (x.w - y)^2 (full batch, so no minibatch noise).

    The update w <- w - eps/2 (A (w - mu)) + sqrt(eps) xi, A = nbeta H + gamma, is a linear
    Gaussian recursion: its stationary law is N(mu, (A - eps A^2 / 4)^-1) exactly, with
    mu = w* - nbeta A^-1 g (g the gradient of L at w*). Then
    E[L(w) - L(w*)] = g.(mu - w*) + 1/2 tr(H S) + 1/2 (mu - w*)' H (mu - w*).
    """
    x, y = dataset.tensors
    h = x.T @ x / N
    g = x.T @ (x @ w_star - y) / N
    a = sgld.nbeta * h + sgld.localization * torch.eye(D, dtype=h.dtype)
    cov = torch.linalg.inv(a - sgld.lr * a @ a / 4)
    shift = -sgld.nbeta * torch.linalg.solve(a, g)
    excess = g.T @ shift + 0.5 * torch.trace(h @ cov) + 0.5 * shift.T @ h @ shift
    return float(sgld.nbeta * excess)


SGLD_SETTINGS = SGLD(lr=3e-3, nbeta=200.0, localization=20.0)
CHAINS = dict(num_chains=8, num_draws=1500, num_burnin=200, seed=1)


def test_llc_and_data_refined_llc_match_the_exact_values():
    """On the fitted data (g = 0) and on data from another teacher (g != 0) the estimates match
    the exact values of the discretised chain. 8 x 1500 draws with an autocorrelation time of
    about 1/(eps*gamma/2) ~ 30 steps leave ~400 effective draws: a relative Monte Carlo error
    near 3.5% for d = 4, so 12% is over three standard errors."""
    fitted, shifted = data(teacher_seed=1), data(teacher_seed=2)
    model = fitted_model(fitted)
    w_star = model.weight.detach().T.clone()
    for dataset in (fitted, shifted):
        loader = [dataset.tensors]  # full batch: no minibatch noise (any iterable of batches works)
        est = estimate_llc(model, loader, half_mse, sampler=SGLD_SETTINGS, **CHAINS)
        exact = exact_llc(w_star, dataset, SGLD_SETTINGS)
        assert abs(est.mean - exact) < 0.12 * abs(exact), (est.mean, exact)
    # the direction a user should expect: on data the model fits worse, the pull towards
    # that data's own minimum lowers the data-refined LLC (by nbeta^2 g'A^-1 g / 2 at least)
    assert exact_llc(w_star, shifted, SGLD_SETTINGS) < exact_llc(w_star, fitted, SGLD_SETTINGS)


class ThreeWeights(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


class TwoWeightsAndAConstant(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w[:2].clone())
        self.register_buffer("fixed", w[2:].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :2] @ self.w + x[:, 2:] @ self.fixed


def test_restricting_to_a_sub_block_reproduces_the_smaller_model():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(512, 3, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64) + 0.1 * torch.randn(
        512, 1, generator=g, dtype=torch.float64
    )
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    w = torch.linalg.lstsq(x, y).solution
    big, small = ThreeWeights(w).double(), TwoWeightsAndAConstant(w).double()
    mask = torch.tensor([[True], [True], [False]])
    block = Component("first_two", {"w": mask})
    kwargs = dict(sampler=SGLD(lr=1e-4, nbeta=50.0, localization=10.0), num_chains=2, num_draws=200)
    restricted = estimate_llc(big, loader, half_mse, component=block, **kwargs)
    reduced = estimate_llc(small, loader, half_mse, **kwargs)
    # same batches, same noise (two draws per step in both), same losses up to rounding
    torch.testing.assert_close(restricted.llc_trace, reduced.llc_trace, rtol=1e-6, atol=1e-9)
    assert restricted.mean > 0


class WithUnusedWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(D, 1, bias=False)
        self.unused = nn.Linear(D, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_component_that_does_not_affect_the_loss_has_zero_rllc_and_others_stay_put():
    """The paired estimator compares each draw with w* on the same batch, so a component the
    loss does not depend on gives exactly 0 (tolerance: none), whatever the noise."""
    dataset = data(teacher_seed=1)
    model = WithUnusedWeights().double()
    loader = DataLoader(dataset, batch_size=100, shuffle=True)
    unused = Component.from_patterns(model, "unused.*", name="unused")
    est = estimate_llc(
        model, loader, half_mse, component=unused, sampler=SGLD_SETTINGS, num_chains=2, num_draws=50
    )
    assert est.mean == 0.0 and est.std == 0.0

    # during restricted sampling every entry outside the component stays bit-identical
    used_before = model.used.weight.detach().clone()
    half = torch.zeros(1, D, dtype=torch.bool)
    half[0, :2] = True
    flat = FlatModel(model)
    flat.activate({"used.weight": half})
    traces = run_chains(
        flat,
        half_mse,
        loader,
        SGLD_SETTINGS.resolve(100),
        chains=ChainSettings(num_chains=1, num_draws=20),
        observables={"w": lambda m: m.used.weight.detach().clone()},
    )
    draws = traces.observables["w"][0]  # (draws, 1, D)
    assert torch.equal(draws[:, 0, 2:].double(), used_before[0, 2:].expand(20, 2))
    assert not torch.equal(draws[-1, 0, :2].double(), used_before[0, :2])
    assert torch.equal(model.used.weight, used_before)
