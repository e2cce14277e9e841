"""RMSpropSGLD: its update rule, its state per chain, and its place in the engine."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from lightning_devinterp import SGLD, Component, RMSpropSGLD, estimate_llc
from lightning_devinterp.sampling import ChainSettings, FlatModel, run_chains
from lightning_devinterp.sampling.batched import run_chains_batched


def test_is_an_sgld_that_replace_and_resolve_keep():
    sampler = RMSpropSGLD(lr=1e-4, localization=10.0, alpha=0.9, eps=1e-6)
    assert isinstance(sampler, SGLD) and sampler.preconditioned and not SGLD.preconditioned
    moved = dataclasses.replace(sampler, lr=3e-4)
    assert type(moved) is RMSpropSGLD and (moved.lr, moved.alpha, moved.eps) == (3e-4, 0.9, 1e-6)
    resolved = sampler.resolve(100)
    assert type(resolved) is RMSpropSGLD and resolved.alpha == 0.9 and resolved.nbeta > 0
    assert sampler != SGLD(lr=1e-4, localization=10.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(alpha=1.0), ValueError, "alpha=1.0"),
        (dict(eps=0.0), ValueError, "eps=0.0"),
        (dict(alpha="0.9"), TypeError, "alpha"),
        (dict(freeze_after_burnin=1), TypeError, "freeze_after_burnin"),
        (dict(lr=-1.0), ValueError, "lr=-1.0"),
    ],
)
def test_bad_settings_name_the_value_and_the_fix(kwargs, error, match):
    with pytest.raises(error, match=match):
        RMSpropSGLD(**{"lr": 1e-3, **kwargs})


def reference_steps(sampler, w, anchor, grads, seed):
    """The update written out with plain tensor arithmetic, for a list of gradients."""
    g = torch.Generator().manual_seed(seed)
    v = torch.zeros_like(w)
    for t, grad in enumerate(grads, start=1):
        v = sampler.alpha * v + (1 - sampler.alpha) * grad**2
        precond = 1 / ((v / (1 - sampler.alpha**t)).sqrt() + sampler.eps)
        force = (
            sampler.nbeta * grad + sampler.localization * (w - anchor) + sampler.weight_decay * w
        )
        noise = torch.randn(w.numel(), generator=g, dtype=w.dtype)
        w = w - sampler.lr / 2 * precond * force + (sampler.lr * precond).sqrt() * noise
    return w


def test_step_is_the_documented_update():
    sampler = RMSpropSGLD(lr=1e-2, nbeta=5.0, localization=3.0, weight_decay=0.5, alpha=0.9)
    anchor = torch.randn(40, dtype=torch.float64)
    grads = [torch.randn(40, dtype=torch.float64) * s for s in (1.0, 0.1, 3.0)]
    params = anchor.clone()
    state = sampler.chain_state(params)
    generator = torch.Generator().manual_seed(5)
    for grad in grads:
        sampler.step(params, grad, anchor, generator, state=state)
    expected = reference_steps(sampler, anchor.clone(), anchor, grads, 5)
    torch.testing.assert_close(params, expected)
    assert state.steps == 3


def test_frozen_preconditioner_stops_adapting_after_the_burnin():
    sampler = RMSpropSGLD(lr=1e-3, nbeta=1.0, freeze_after_burnin=True)
    params = torch.zeros(8)
    state = sampler.chain_state(params, num_burnin=2)
    generator = torch.Generator().manual_seed(0)
    for t, size in enumerate((1.0, 2.0, 100.0, 1e4)):
        sampler.step(params, torch.full((8,), size), params.clone(), generator, state=state)
        if t == 1:
            frozen = state.scale.clone()
    assert state.steps == 2 and torch.equal(state.scale, frozen)
    # no burn-in: the first step still sets the preconditioner
    assert sampler.chain_state(params, num_burnin=0).adapt_steps == 1


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


def test_batched_and_sequential_chains_agree_with_components():
    """Each chain and each component has its own preconditioner in both runners."""
    model, batches, components = problem()
    sampler = RMSpropSGLD(lr=1e-4, nbeta=20.0, localization=100.0)
    chains = ChainSettings(num_chains=2, num_draws=20, num_burnin=5, seed=4)
    flat = FlatModel(model)
    masks = [c.masks if c is not None else None for c in components]
    together = run_chains_batched(flat, loss, batches, sampler, masks=masks, chains=chains)
    for component_masks, batched in zip(masks, together, strict=True):
        flat.activate(component_masks)
        alone = run_chains(flat, loss, batches, sampler, chains=chains)
        torch.testing.assert_close(batched.loss, alone.loss, rtol=1e-5, atol=1e-6)
    again = run_chains(flat, loss, batches, sampler, chains=chains)  # state reset per chain
    torch.testing.assert_close(again.loss, alone.loss, rtol=0, atol=0)
    plain = run_chains(
        flat, loss, batches, SGLD(lr=1e-4, nbeta=20.0, localization=100.0), chains=chains
    )
    assert not torch.allclose(plain.loss, alone.loss)


def test_estimates_with_components_and_refuses_mala():
    model, batches, components = problem()
    sampler = RMSpropSGLD(lr=1e-4, nbeta=20.0, localization=100.0)
    settings = dict(num_chains=2, num_draws=20, seed=1)
    first = estimate_llc(model, batches, loss, sampler=sampler, component=components[1], **settings)
    again = estimate_llc(model, batches, loss, sampler=sampler, component=components[1], **settings)
    assert first.mean == again.mean and first.sampler == sampler  # common random numbers
    assert first.to_record()["sampler"]["alpha"] == 0.99
    with pytest.raises(ValueError, match="mala=False"):
        estimate_llc(model, batches, loss, sampler=sampler, mala=True, **settings)
