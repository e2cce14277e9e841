"""ChainSettings (the chain arguments as one validated object), kept_rng_states and the
runner's batched-or-sequential choice."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch
from torch import nn

import lightning_devinterp
from lightning_devinterp import SGLD, estimate_llc
from lightning_devinterp.sampling import (
    ChainSettings,
    FlatModel,
    kept_rng_states,
    run_chains,
    run_sampling,
)
from lightning_devinterp.sampling.runner import BATCHED_MAX_ENTRIES, batching_chosen


def test_defaults_are_those_of_estimate_llc_and_the_object_is_exported():
    assert lightning_devinterp.ChainSettings is ChainSettings
    assert "ChainSettings" in lightning_devinterp.__all__
    defaults = estimate_llc.__kwdefaults__
    for field in dataclasses.fields(ChainSettings):
        assert getattr(ChainSettings(), field.name) == defaults[field.name], field.name


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        (dict(num_chains=0), "num_chains=0 is invalid; use an integer >= 1."),
        (dict(num_draws=True), "num_draws=True is invalid; use an integer >= 1."),
        (dict(num_burnin=-1), "num_burnin=-1 is invalid; use an integer >= 0."),
        (dict(steps_between_draws=1.0), "steps_between_draws=1.0 is invalid"),
        (dict(init_loss_batches=0), "init_loss_batches=0 is invalid; use an integer >= 1."),
    ],
)
def test_counts_are_checked_on_construction_and_on_replace(changes, words):
    with pytest.raises(ValueError) as info:
        ChainSettings(**changes)
    assert words in str(info.value)
    with pytest.raises(ValueError) as info:
        ChainSettings().replace(**changes)
    assert words in str(info.value)


def test_first_invalid_count_is_named_first():
    with pytest.raises(ValueError, match="num_draws=0"):
        ChainSettings(num_draws=0, num_burnin=-1, init_loss_batches=0)


def test_frozen_replace_and_split():
    chains = ChainSettings(num_chains=2, num_draws=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        chains.num_chains = 3  # type: ignore[misc]
    longer = chains.replace(num_burnin=3, steps_between_draws=2)
    assert (chains.num_burnin, longer.num_burnin, longer.num_chains) == (0, 3, 2)
    split, rest = ChainSettings.split({"num_draws": 7, "mala": True, "batched": False})
    assert split == ChainSettings(num_draws=7, mala=True) and rest == {"batched": False}


def test_the_draw_schedule_counts_every_step_and_draw():
    chains = ChainSettings(num_draws=4, num_burnin=3, steps_between_draws=2)
    assert chains.steps_per_chain == 11
    draws = [chains.draw_index(t) for t in range(chains.steps_per_chain)]
    assert draws == [None, None, None, 0, None, 1, None, 2, None, 3, None]
    assert [chains.draws_before(t) for t in (0, 3, 4, 5, 6, 11)] == [0, 0, 1, 1, 2, 4]


def test_run_chains_records_the_schedule_draws():
    """A draw's loss is the loss of the step the schedule marks (after burn-in, every
    ``steps_between_draws``)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    data = [(torch.randn(8, 3), torch.randn(8, 1)) for _ in range(4)]
    chains = ChainSettings(
        num_chains=1, num_draws=3, num_burnin=2, steps_between_draws=3, paired=False
    )
    steps = []

    def loss_fn(m, batch):
        value = nn.functional.mse_loss(m(batch[0]), batch[1])
        steps.append(float(value.detach()))
        return value

    flat = FlatModel(model)
    traces = run_chains(flat, loss_fn, data, SGLD(lr=1e-3, nbeta=5.0), chains=chains)
    assert len(steps) == chains.steps_per_chain == 11
    assert traces.loss[0].tolist() == [steps[t] for t in (2, 5, 8)]


def test_kept_rng_states_puts_every_host_generator_back():
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    expected = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    with kept_rng_states():
        torch.rand(5), np.random.rand(5), random.random()
    assert torch.equal(torch.rand(2), expected[0])
    assert np.array_equal(np.random.rand(2), expected[1])
    assert random.random() == expected[2]
    np.random.seed(2)
    with kept_rng_states(host=False):
        inside = np.random.rand()
    assert np.random.rand() != inside  # numpy left alone: its stream moved on


def test_batching_is_chosen_only_where_it_can_run():
    flat = FlatModel(nn.Linear(3, 1))
    chains = ChainSettings()
    assert not batching_chosen(None, flat, 8, chains)  # a CPU: one by one by default
    assert batching_chosen(True, flat, 8, chains)
    assert not batching_chosen(True, flat, 8, chains.replace(mala=True))  # MALA: one by one
    assert not batching_chosen(True, flat, 8, chains, on_draw=lambda i, draw: None)
    assert BATCHED_MAX_ENTRIES == 1 << 26


def test_run_sampling_says_whether_it_ran_batched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    data = [(torch.randn(8, 3), torch.randn(8, 1)) for _ in range(4)]
    chains = ChainSettings(num_chains=2, num_draws=6)
    sampler = SGLD(lr=1e-3, nbeta=5.0)

    def mse(m, batch):
        return nn.functional.mse_loss(m(batch[0]), batch[1])

    def mse_with_item(m, batch):
        value = mse(m, batch)
        assert value.item() < 1e9  # vmap refuses .item()
        return value

    flat = FlatModel(model)
    kwargs = dict(masks=[None], chains=chains, batched=True)
    (batched,), ran_batched = run_sampling(flat, mse, data, sampler, **kwargs)
    (alone,), fell_back = run_sampling(flat, mse_with_item, data, sampler, **kwargs)
    assert ran_batched and not fell_back
    torch.testing.assert_close(batched.loss, alone.loss, rtol=1e-5, atol=1e-6)
