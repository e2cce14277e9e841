"""Susceptibilities against the closed form of a quadratic loss, and their bookkeeping."""

import math

import pytest
import torch
from torch import nn

from lightning_devinterp import SGLD, Component, estimate_susceptibilities
from lightning_devinterp.estimators.susceptibility import _ChainStats

D = 6
COMPONENTS = {"first": [0, 1, 2], "last": [3, 4, 5]}


class Shuffled:
    """Minibatches of a fixed regression data set, reshuffled on every pass."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size

    def __iter__(self):
        order = torch.randperm(len(self.x))
        for start in range(0, len(self.x) - self.batch_size + 1, self.batch_size):
            rows = order[start : start + self.batch_size]
            yield self.x[rows], self.y[rows]


def squared_errors(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return (model(x).squeeze(-1) - y) ** 2


def quadratic_form(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, p) with mean squared error = 1/2 w'Pw + p'w + const."""
    return 2 * x.T @ x / len(x), -2 * x.T @ y / len(x)


def closed_form(data, probes, w_star, nbeta, gamma) -> torch.Tensor:
    """chi = -nbeta Cov(phi, L_q' - L_q) under the localized Gaussian posterior (PAPERS.md):
    Cov(1/2 w'Pw + p'w, 1/2 w'Qw + q'w) = 1/2 tr(P S Q S) + (P mu + p)' S (Q mu + q)."""
    P, p = quadratic_form(*data)
    truth = torch.zeros(len(probes), len(COMPONENTS), dtype=torch.float64)
    for j, entries in enumerate(COMPONENTS.values()):
        s = torch.tensor(entries)
        sigma = torch.linalg.inv(nbeta * P[s][:, s] + gamma * torch.eye(len(s), dtype=P.dtype))
        w = w_star.clone()
        w[s] = w_star[s] - sigma @ (nbeta * (P @ w_star + p)[s])  # the posterior mean
        for i, probe in enumerate(probes.values()):
            Q, q = quadratic_form(*probe)
            Q, q = Q - P, q - p  # the quadratic form of L_q' - L_q
            cov = 0.5 * torch.trace(P[s][:, s] @ sigma @ Q[s][:, s] @ sigma)
            cov = cov + (P @ w + p)[s] @ sigma @ (Q @ w + q)[s]
            truth[i, j] = -nbeta * cov
    return truth


def regression_problem():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(D, generator=g, dtype=torch.float64)

    def sample(n, scale):
        x = torch.randn(n, D, generator=g, dtype=torch.float64) * torch.tensor(scale).double()
        return x, x @ teacher

    x = torch.randn(4096, D, generator=g, dtype=torch.float64)
    y = x @ teacher + 0.01 * torch.randn(4096, generator=g, dtype=torch.float64)
    probes = {
        "wide": sample(512, scale=[2, 2, 2, 1, 1, 1]),  # larger inputs on the first weights
        "narrow": sample(512, scale=[1, 1, 1, 0.5, 0.5, 0.5]),  # smaller on the last ones
        "mixed": sample(512, scale=[0.5, 0.5, 0.5, 1.5, 1.5, 1.5]),
    }
    # w* a little off the least-squares point, so the first-order term of Cov is not zero
    w_star = torch.linalg.lstsq(x, y).solution
    w_star = w_star + 0.05 * torch.tensor([1, -1, 0, 1, 0, -1], dtype=torch.float64)
    model = nn.Linear(D, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w_star[None])
    return model, (x, y), probes, w_star


def test_matches_the_closed_form_of_a_quadratic_loss():
    """Linear regression: the localized posterior of each component is Gaussian and chi has a
    closed form. SGLD minibatches of 256, nbeta = 50 (minibatch gradient noise adds under 1%
    to the posterior variance here), gamma = 10, eps = 0.1 / largest curvature (the chain's
    stationary variance is within 2.5% of the posterior's), 8 chains x 3000 draws.
    Entries with signal (|chi| > 3 standard errors) are within 15% and every such sign
    matches; measured errors were 3.4-5.5% (standard errors 6-7%)."""
    model, data, probes, w_star = regression_problem()
    nbeta, gamma = 50.0, 10.0
    curvature = nbeta * float(torch.linalg.eigvalsh(quadratic_form(*data)[0]).max()) + gamma
    components = [
        Component(name, {"weight": torch.isin(torch.arange(D), torch.tensor(entries))[None]})
        for name, entries in COMPONENTS.items()
    ]
    result = estimate_susceptibilities(
        model,
        Shuffled(*data, batch_size=256),
        {name: [probe] for name, probe in probes.items()},
        components,
        squared_errors,
        sampler=SGLD(lr=0.1 / curvature, nbeta=nbeta, localization=gamma),
        num_chains=8,
        num_draws=3000,
        num_burnin=100,
        init_loss_batches=1,
        paired=False,  # minibatch noise is tiny here: pairing would only cost time
    )
    truth = closed_form(data, probes, w_star, nbeta, gamma).float()
    assert result.probes == list(probes) and result.components == list(COMPONENTS)
    signal = truth.abs() > 3 * result.stderr
    assert int(signal.sum()) >= 5  # several probes and components
    assert len({i for i, _ in signal.nonzero().tolist()}) == 3
    assert len({j for _, j in signal.nonzero().tolist()}) == 2
    relative = ((result.response - truth) / truth).abs()
    assert (relative[signal] < 0.15).all(), (result.response, truth)
    assert (torch.sign(result.response) == torch.sign(truth))[signal].all()
    # the same chains give each component's refined LLC
    assert set(result.llc) == set(COMPONENTS)
    assert all(math.isfinite(est.mean) and est.mean > 0 for est in result.llc.values())


def _classification_setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(256, 5), torch.randint(0, 3, (256,))
    data = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]
    probe = [(torch.randn(7, 5) * 2, torch.randint(0, 3, (7,))), (torch.randn(12, 5), y[:12])]

    def per_sample(model, batch):
        inputs, labels = batch
        return nn.functional.cross_entropy(model(inputs), labels, reduction="none")

    return model, data, probe, per_sample


def test_per_token_values_average_to_the_response():
    model, data, probe, loss_fn = _classification_setup()
    components = [
        Component.from_patterns(model, "0.*", name="in"),
        Component.from_patterns(model, "2.*", name="out"),
    ]
    result = estimate_susceptibilities(
        model,
        data,
        {"shifted": probe, "same": data},
        components,
        loss_fn,
        sampler=SGLD(lr=1e-3, nbeta=20.0),
        num_chains=2,
        num_draws=30,
        num_probe_batches=2,
        init_loss_batches=2,
    )
    assert result.per_token["shifted"].shape == (7 + 12, 2)
    assert result.per_token["same"].shape == (32 + 32, 2)
    assert result.token_shapes["shifted"] == [(7,), (12,)]
    for i, name in enumerate(result.probes):
        assert torch.allclose(result.per_token[name].mean(0), result.response[i], atol=1e-6)
    assert result.token_position("shifted", 9) == (1, 2)
    top = result.top_tokens("shifted", "out", k=3)
    assert [abs(v) for _, v in top] == sorted((abs(v) for _, v in top), reverse=True)
    # the other convention: without nbeta
    plain = result.without_nbeta()
    assert torch.allclose(plain.response * result.nbeta, result.response)
    assert not plain.includes_nbeta and result.includes_nbeta
    # the SVD reconstructs the response matrix
    u, s, v = result.svd
    assert torch.allclose(u @ torch.diag(s) @ v.T, result.response, atol=1e-6)
    assert (v.abs().argmax(0) == v.argmax(0)).all()  # sign convention
    assert set(result.to_record()) >= {"response", "singular_values", "probes", "components"}


def test_same_seed_same_susceptibilities_and_model_untouched():
    model, data, probe, loss_fn = _classification_setup()
    before = [p.detach().clone() for p in model.parameters()]
    kwargs = dict(sampler=SGLD(lr=1e-3, nbeta=20.0), num_chains=2, num_draws=10, seed=3)
    first = estimate_susceptibilities(model, data, {"p": probe}, None, loss_fn, **kwargs)
    second = estimate_susceptibilities(model, data, {"p": probe}, None, loss_fn, **kwargs)
    assert first.components == ["model"]
    assert torch.equal(first.response, second.response)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_needs_unreduced_losses_and_probes():
    model, data, probe, _ = _classification_setup()

    def mean_loss(model, batch):
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    with pytest.raises(ValueError, match="reduction='none'"):
        estimate_susceptibilities(model, data, {"p": probe}, None, mean_loss, num_draws=2)
    with pytest.raises(ValueError, match="probes is empty"):
        estimate_susceptibilities(model, data, {}, None, mean_loss, num_draws=2)


def test_half_batch_covariance_removes_the_minibatch_noise_bias():
    """Draws whose half-batch noise is 3x the posterior spread of the loss: the same-batch
    variance would be 5.5x too large; the covariance of independent halves is not."""
    g = torch.Generator().manual_seed(0)
    stats = _ChainStats([4])
    spread, noise = 0.01, 0.03
    for _ in range(40000):
        loss = spread * float(torch.randn((), generator=g))  # L_q(w) - L_q(w*) at this draw
        a, b = (loss + noise * float(torch.randn((), generator=g)) for _ in range(2))
        probe = torch.full((4,), 2 * loss)  # probe loss moves twice as much as L_q
        stats.add((a + b) / 2, a, b, probe)
    probe_chi, token_chi = stats.responses(nbeta=1.0)
    # chi = -(Cov(phi, 2L) - Var L) = -Var L = -spread^2
    assert float(probe_chi[0]) == pytest.approx(-(spread**2), rel=0.15)
    assert torch.allclose(token_chi[0], probe_chi[0].expand(4).double())
