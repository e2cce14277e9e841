"""Batched chains (torch.func.vmap) against the one-by-one runner."""

from __future__ import annotations

import logging

import torch
from torch import nn

from lightning_devinterp import SGLD, Component, estimate_llc
from lightning_devinterp.estimators import llc_from_samples, sample_components
from lightning_devinterp.sampling import ChainSettings, FlatModel, run_chains
from lightning_devinterp.sampling.batched import run_chains_batched


def problem():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 8, generator=g), torch.randint(0, 3, (256,), generator=g)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    components = [
        None,
        Component.from_patterns(model, "0.*", name="first"),
        Component("some", {"2.weight": torch.rand(3, 16, generator=g) > 0.5}),
    ]
    return model, batches, components


def loss(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def test_batched_and_sequential_give_the_same_draws():
    model, batches, components = problem()
    sampler = SGLD(lr=1e-3, nbeta=20.0, localization=100.0)
    chains = ChainSettings(num_chains=3, num_draws=30, num_burnin=5, steps_between_draws=2, seed=4)
    flat = FlatModel(model)
    masks = [c.masks if c is not None else None for c in components]
    together = run_chains_batched(flat, loss, batches, sampler, masks=masks, chains=chains)
    for component_masks, batched in zip(masks, together, strict=True):
        flat.activate(component_masks)
        alone = run_chains(flat, loss, batches, sampler, chains=chains)
        # same noise and batches; only the rounding of batched matmuls differs (float32)
        torch.testing.assert_close(batched.loss, alone.loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(batched.reference, alone.reference, rtol=1e-5, atol=1e-6)
    first = together[0].loss
    assert not torch.allclose(first[0], first[1])  # chains differ from each other


def test_falls_back_to_one_by_one_when_vmap_cannot_run(caplog):
    model, batches, _ = problem()

    def loss_with_item(m, batch):
        value = loss(m, batch)
        if value.item() > 1e9:  # data-dependent control flow: vmap refuses .item()
            raise AssertionError
        return value

    sampler = SGLD(lr=1e-3, nbeta=20.0, localization=100.0)
    with caplog.at_level(logging.INFO, logger="lightning_devinterp"):
        fallback = sample_components(
            model,
            batches,
            loss_with_item,
            sampler=sampler,
            chains=ChainSettings(num_chains=2, num_draws=10),
            batched=True,
        )
    assert "one by one" in caplog.text
    plain = sample_components(
        model,
        batches,
        loss,
        sampler=sampler,
        chains=ChainSettings(num_chains=2, num_draws=10),
        batched=False,
    )
    torch.testing.assert_close(fallback[0].traces.loss, plain[0].traces.loss)


def test_estimate_is_the_same_batched_or_not():
    model, batches, components = problem()
    sampler = SGLD(lr=1e-3, nbeta=20.0, localization=100.0)
    chains = ChainSettings(num_chains=3, num_draws=40)
    a, b = (
        llc_from_samples(
            sample_components(
                model,
                batches,
                loss,
                components=components[1:2],
                sampler=sampler,
                chains=chains,
                batched=flag,
            )[0]
        )
        for flag in (True, False)
    )
    assert abs(a.mean - b.mean) < 1e-4 * max(1.0, abs(a.mean))
    # on a CPU estimate_llc runs chains one by one by default
    kwargs = dict(sampler=sampler, num_chains=3, num_draws=40)
    assert b.mean == estimate_llc(model, batches, loss, component=components[1], **kwargs).mean
