"""SGLD settings: validation, the update rule of PAPERS.md, and nbeta's default."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_devinterp import SGLD
from lightning_devinterp.sampling import default_nbeta
from lightning_devinterp.sampling.sgld import NOISE_CHUNK


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        (dict(lr=0.0, nbeta=10), "lr=0.0"),
        (dict(lr=-1e-3, nbeta=10), "lr=-0.001"),
        (dict(lr=1e-3, nbeta=0), "nbeta=0"),
        (dict(lr=1e-3, nbeta=-5.0), "nbeta=-5.0"),
        (dict(lr=1e-3, nbeta=10, localization=-1.0), "localization=-1.0"),
        (dict(lr=1e-3, nbeta=10, weight_decay=-0.1), "weight_decay=-0.1"),
        (dict(lr=1e-3, nbeta=10, noise_level=0.0), "noise_level=0.0"),
    ],
)
def test_out_of_range_values_raise_naming_the_value(kwargs, shown):
    with pytest.raises(ValueError) as info:
        SGLD(**kwargs)
    assert shown in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "name", "shown"),
    [
        (dict(lr="1e-3", nbeta=10), "lr", "'1e-3'"),
        (dict(lr=None, nbeta=10), "lr", "None"),
        (dict(lr=True, nbeta=10), "lr", "True"),
        (dict(lr=1e-3, nbeta="30"), "nbeta", "'30'"),
        (dict(lr=1e-3, nbeta=float("nan")), "nbeta", "nan"),
        (dict(lr=float("inf"), nbeta=10), "lr", "inf"),
        (dict(lr=1e-3, nbeta=10, localization=[100]), "localization", "[100]"),
        (dict(lr=1e-3, nbeta=10, localization=torch.tensor(1.0)), "localization", "tensor"),
    ],
)
def test_non_numbers_raise_naming_the_value(kwargs, name, shown):
    with pytest.raises(TypeError) as info:
        SGLD(**kwargs)
    message = str(info.value)
    assert name in message and shown in message and "finite number" in message


def test_valid_settings_are_kept():
    s = SGLD(lr=1e-3, nbeta=30, localization=0.0)
    assert (s.lr, s.nbeta, s.localization, s.weight_decay, s.noise_level) == (
        1e-3,
        30,
        0.0,
        0.0,
        1.0,
    )
    with pytest.raises(AttributeError):  # frozen: settings cannot drift after validation
        s.lr = -1.0  # type: ignore[misc]


def _by_hand(w, g, w_star, lr, nbeta, gamma, delta, xi, noise_level=1.0):
    return (
        w
        - lr / 2 * (nbeta * g + gamma * (w - w_star) + delta * w)
        + noise_level * (math.sqrt(lr) * xi)
    )


@pytest.mark.parametrize("delta", [0.0, 0.3])
def test_step_is_the_update_rule_of_the_papers(delta):
    """w <- w - eps/2 (nbeta grad + gamma (w - w*) + delta w) + N(0, eps), the noise drawn from
    the given generator: computed by hand with a generator in the same state."""
    w = torch.tensor([0.5, -1.0, 2.0, 0.25, -0.75], dtype=torch.float64)
    g = torch.tensor([1.0, 0.5, -2.0, 3.0, 0.0], dtype=torch.float64)
    w_star = torch.tensor([0.4, -1.2, 2.5, 0.0, -0.5], dtype=torch.float64)
    lr, nbeta, gamma = 0.01, 30.0, 200.0
    xi = torch.empty(5, dtype=torch.float64).normal_(generator=torch.Generator().manual_seed(7))
    expected = _by_hand(w, g, w_star, lr, nbeta, gamma, delta, xi)

    params, grad = w.clone(), g.clone()
    sgld = SGLD(lr=lr, nbeta=nbeta, localization=gamma, weight_decay=delta)
    sgld.step(params, grad, w_star.clone(), torch.Generator().manual_seed(7))
    torch.testing.assert_close(params, expected, rtol=0, atol=1e-15)
    # the drift alone (noise removed) is what the formula says, not e.g. eps instead of eps/2
    drift = params - math.sqrt(lr) * xi - w
    torch.testing.assert_close(
        drift, -lr / 2 * (nbeta * g + gamma * (w - w_star) + delta * w), rtol=0, atol=1e-14
    )


def test_step_draws_noise_chunk_by_chunk_from_the_generator():
    """A work buffer of 3 entries for 7 parameters: the noise is three consecutive draws of
    3, 3 and 1 values from the generator, in parameter order."""
    w = torch.linspace(-1, 1, 7, dtype=torch.float64)
    w_star = torch.zeros(7, dtype=torch.float64)
    g = torch.full((7,), 0.5, dtype=torch.float64)
    ref = torch.Generator().manual_seed(3)
    xi = torch.cat([torch.empty(k, dtype=torch.float64).normal_(generator=ref) for k in (3, 3, 1)])
    expected = _by_hand(w, g, w_star, 1e-2, 10.0, 5.0, 0.0, xi)
    params = w.clone()
    buffer = torch.empty(3, dtype=torch.float64)
    SGLD(lr=1e-2, nbeta=10.0, localization=5.0).step(
        params, g.clone(), w_star, torch.Generator().manual_seed(3), buffer
    )
    torch.testing.assert_close(params, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("tail", [0, 1, 5, 15, 16, 21])
def test_chunked_noise_equals_one_draw_of_the_whole_vector(tail):
    """In default chunks, the noise is one ``torch.randn`` of the whole vector, also when the
    last chunk would be shorter than 16 entries (torch draws such short runs differently), so
    batched chains, which draw each vector at once, see the same noise."""
    n = 2 * NOISE_CHUNK + tail
    params = torch.zeros(n)
    SGLD(lr=1.0, nbeta=1.0, localization=0.0).step(
        params, torch.zeros(n), torch.zeros(n), torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(
        params, torch.randn(n, generator=torch.Generator().manual_seed(5)), rtol=0, atol=0
    )


def test_noise_level_scales_only_the_noise():
    w, g, w_star = torch.ones(4), torch.ones(4), torch.zeros(4)
    xi = torch.empty(4).normal_(generator=torch.Generator().manual_seed(1))
    params = w.clone()
    SGLD(lr=0.04, nbeta=2.0, localization=1.0, noise_level=0.5).step(
        params, g.clone(), w_star, torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(params, _by_hand(w, g, w_star, 0.04, 2.0, 1.0, 0.0, xi, 0.5))


def test_step_without_nbeta_asks_for_resolve():
    with pytest.raises(ValueError, match="resolve"):
        SGLD(lr=1e-3).step(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.Generator())


def test_resolve_fills_nbeta_with_m_over_log_m():
    s = SGLD(lr=1e-3, localization=50.0)
    assert s.nbeta is None
    r = s.resolve(64)
    assert r.nbeta == pytest.approx(64 / math.log(64), rel=1e-12)  # 15.39
    assert (r.lr, r.localization) == (1e-3, 50.0)
    assert s.resolve(1024).nbeta == pytest.approx(1024 / math.log(1024))
    assert default_nbeta(1) == 1.0  # log 1 = 0: no division by zero
    explicit = SGLD(lr=1e-3, nbeta=30.0)
    assert explicit.resolve(64) is explicit  # an explicit nbeta is never overwritten
