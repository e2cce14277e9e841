"""Properties of the sampling engine, checked through ``estimate_llc``: isolation from the
caller's model and RNG, reproducible chains, batch cycling, the draw schedule, divergence and
negative-LLC flags, component masks and input errors."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_devinterp import SGLD, Component, estimate_llc
from lightning_devinterp.sampling import LossFnError
from lightning_devinterp.sampling.batches import BatchStream, gathered_batches

SMALL = SGLD(lr=1e-4, nbeta=10.0, localization=100.0)


def regression(n: int = 64, d: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return TensorDataset(
        x, x @ torch.randn(d, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    )


def mse(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1)
    )


class Recorder:
    """A loss function that records what the engine asks of it.

    The first ``init_calls`` calls compute L(w*) (``init_loss_batches`` of them, before any
    chain), without autograd; with more than one, the next ``init_calls`` take the gradient
    at w* on the same batches (the minibatch noise); after that a call with gradients on is an SGLD step and one without is the paired
    reference at w*. For each step it records the weights it saw, the batch, and the chain: a
    chain starts exactly at w*, so a step whose weights equal w* bit for bit opens a chain.
    ``phase`` tells the wrapped loss function which kind of call it is serving.
    """

    def __init__(self, w_star: nn.Module, loss_fn=mse, init_calls: int = 16) -> None:
        self.w_star = [p.detach().clone() for p in w_star.parameters()]
        self.loss_fn = loss_fn
        self.init_calls = init_calls
        self.calls = 0
        self.init_grad_modes: list[bool] = []
        self.phase = ""
        self.steps: list[list[torch.Tensor]] = []  # weights at each step
        self.chain_of_step: list[int] = []
        self.step_in_chain: list[int] = []
        self.batches: list = []
        self.reference_calls = 0

    def __call__(self, model: nn.Module, batch) -> torch.Tensor:
        self.calls += 1
        if self.calls <= self.init_calls:
            self.phase = "init"
            self.init_grad_modes.append(torch.is_grad_enabled())
        elif self.init_calls > 1 and self.calls <= 2 * self.init_calls:
            self.phase = "noise"
        elif not torch.is_grad_enabled():
            self.phase = "reference"
            self.reference_calls += 1
        else:
            self.phase = "step"
            weights = [p.detach().clone() for p in model.parameters()]
            starts = all(torch.equal(a, b) for a, b in zip(weights, self.w_star, strict=True))
            chain = (self.chain_of_step[-1] if self.chain_of_step else -1) + int(starts)
            self.step_in_chain.append(0 if starts else self.step_in_chain[-1] + 1)
            self.chain_of_step.append(chain)
            self.steps.append(weights)
            self.batches.append(batch)
        return self.loss_fn(model, batch)

    @property
    def chains(self) -> int:
        return self.chain_of_step[-1] + 1 if self.chain_of_step else 0


# --------------------------------------------------------------------------------------------
# Isolation from the caller
# --------------------------------------------------------------------------------------------


def test_module_is_copied_once_per_estimate(monkeypatch):
    model = mlp()
    real = copy.deepcopy
    copies = []

    def counting(obj, memo=None, _nil=None):
        if obj is model:
            copies.append(1)
        return real(obj, memo)

    monkeypatch.setattr(copy, "deepcopy", counting)
    loader = DataLoader(regression(), batch_size=16)
    estimate_llc(model, loader, mse, sampler=SMALL, num_chains=3, num_draws=5)
    assert len(copies) == 1  # not once per chain


@pytest.mark.parametrize("train_mode", [False, True])
def test_original_model_is_left_exactly_as_found(train_mode):
    """Weights, grads, buffers (BatchNorm statistics move on the copy in train mode), each
    submodule's mode, requires_grad flags and the Parameter objects themselves."""
    model = mlp()
    model[0].bias.requires_grad_(False)
    mse(model, regression()[:16]).backward()  # grads exist and must survive
    model.train()
    model[1].eval()  # mixed modes
    params = {
        n: (p, p.detach().clone(), p.grad.clone() if p.grad is not None else None)
        for n, p in model.named_parameters()
    }
    grads = {n: p.grad for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]

    est = estimate_llc(
        model,
        DataLoader(regression(), batch_size=16, shuffle=True),
        mse,
        sampler=SGLD(lr=1e-3, nbeta=10.0, localization=10.0),
        num_chains=2,
        num_draws=20,
        train_mode=train_mode,
    )
    assert math.isfinite(est.mean)
    for name, p in model.named_parameters():
        obj, value, grad = params[name]
        assert p is obj and torch.equal(p, value), name
        assert p.grad is grads[name], name  # the same grad tensor object ...
        if grad is None:
            assert p.grad is None
        else:
            assert torch.equal(p.grad, grad), name  # ... with the same values
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags


def test_parameters_that_do_not_require_grad_never_move():
    model = mlp()
    model[0].weight.requires_grad_(False)
    model[4].bias.requires_grad_(False)
    rec = Recorder(model)
    estimate_llc(
        model,
        DataLoader(regression(), batch_size=16),
        rec,
        sampler=SGLD(lr=1e-3, nbeta=10.0, localization=10.0),
        num_chains=2,
        num_draws=30,
    )
    names = [n for n, _ in model.named_parameters()]
    frozen = [names.index("0.weight"), names.index("4.bias")]
    moving = [names.index("0.bias"), names.index("4.weight")]
    assert len(rec.steps) == 60
    for weights in rec.steps:
        for i in frozen:
            assert torch.equal(weights[i], rec.w_star[i])
    for i in moving:  # the others do move, so the check above can fail
        assert not torch.equal(rec.steps[-1][i], rec.w_star[i])


# --------------------------------------------------------------------------------------------
# Random numbers
# --------------------------------------------------------------------------------------------


def test_chains_are_seeded_from_seed_and_chain_index():
    """Same seed: identical traces on two calls (common random numbers). Chain c does not depend
    on how many chains run. Another seed, or another chain: different traces."""
    model = nn.Linear(3, 1)
    loader = DataLoader(regression(), batch_size=16, shuffle=True)
    kwargs = dict(sampler=SGLD(lr=1e-3, nbeta=10.0, localization=10.0), num_draws=25)
    a = estimate_llc(model, loader, mse, num_chains=3, seed=5, **kwargs)
    b = estimate_llc(model, loader, mse, num_chains=3, seed=5, **kwargs)
    assert torch.equal(a.loss_trace, b.loss_trace) and torch.equal(a.llc_trace, b.llc_trace)
    assert a.mean == b.mean and a.init_loss == b.init_loss
    two = estimate_llc(model, loader, mse, num_chains=2, seed=5, **kwargs)
    assert torch.equal(two.loss_trace, a.loss_trace[:2])
    assert not torch.equal(a.loss_trace[0], a.loss_trace[1])
    other = estimate_llc(model, loader, mse, num_chains=3, seed=6, **kwargs)
    for c in range(3):
        assert not torch.equal(other.loss_trace[c], a.loss_trace[c])


def rng_states():
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def assert_rng_unchanged(before):
    torch_state, np_state, py_state = before
    assert torch.equal(torch.get_rng_state(), torch_state), "torch global RNG moved"
    now = np.random.get_state()
    assert np_state[0] == now[0] and np.array_equal(np_state[1], now[1]), "numpy RNG moved"
    assert np_state[2:] == now[2:], "numpy RNG moved"
    assert random.getstate() == py_state, "random RNG moved"


def test_global_rng_states_are_unchanged_with_a_shuffling_loader():
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    loader = DataLoader(regression(), batch_size=8, shuffle=True)
    model = nn.Linear(3, 1)
    before = rng_states()
    est = estimate_llc(model, loader, mse, sampler=SMALL, num_chains=2, num_draws=20)
    assert math.isfinite(est.mean)
    assert_rng_unchanged(before)
    # and the loader did shuffle: a second estimate sees the same (seeded) order, a plain
    # iteration of the loader from the caller's stream is a different order
    rec = Recorder(model)
    estimate_llc(model, loader, rec, sampler=SMALL, num_chains=1, num_draws=8)
    seen = torch.cat([x for x, _ in rec.batches])
    assert not torch.equal(seen, regression().tensors[0])


def test_global_torch_rng_is_unchanged_by_dropout_in_train_mode():
    model = mlp()
    loader = DataLoader(regression(), batch_size=16, shuffle=True)
    before = rng_states()
    estimate_llc(model, loader, mse, sampler=SMALL, num_chains=2, num_draws=10, train_mode=True)
    assert_rng_unchanged(before)


def test_same_seed_same_chains_with_dropout_in_train_mode():
    model = mlp()
    loader = DataLoader(regression(), batch_size=16, shuffle=True)
    kwargs = dict(sampler=SMALL, num_chains=2, num_draws=10, train_mode=True, seed=1)
    torch.manual_seed(0)
    a = estimate_llc(model, loader, mse, **kwargs)
    torch.manual_seed(1)
    b = estimate_llc(model, loader, mse, **kwargs)
    assert torch.equal(a.loss_trace, b.loss_trace)


class Augmented(Dataset):
    """A dataset whose items draw from numpy and random (as augmentations do)."""

    def __init__(self) -> None:
        self.data = regression()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return x + 1e-3 * float(np.random.rand()) + 1e-3 * random.random(), y


def test_numpy_and_random_states_are_unchanged_by_an_augmenting_dataset():
    loader = DataLoader(Augmented(), batch_size=16, shuffle=True)
    model = nn.Linear(3, 1)
    before = rng_states()
    estimate_llc(model, loader, mse, sampler=SMALL, num_chains=2, num_draws=10)
    assert_rng_unchanged(before)


# --------------------------------------------------------------------------------------------
# Batches and the draw schedule
# --------------------------------------------------------------------------------------------


def indexed_loader(shuffle: bool) -> DataLoader:
    """6 samples whose x[:, 0] is the sample index, in 3 batches of 2."""
    x = torch.zeros(6, 3)
    x[:, 0] = torch.arange(6.0)
    return DataLoader(TensorDataset(x, torch.zeros(6, 1)), batch_size=2, shuffle=shuffle)


def test_batches_cycle_when_the_loader_runs_out():
    """10 steps over a loader of 3 batches: 0 1 2 0 1 2 0 1 2 0 in order; with shuffling, each
    pass (3 steps) sees all 6 samples once and the passes are in different orders."""
    model = nn.Linear(3, 1)
    rec = Recorder(model, init_calls=1)
    kwargs = dict(sampler=SMALL, num_chains=1, num_draws=10, paired=False, init_loss_batches=1)
    estimate_llc(model, indexed_loader(shuffle=False), rec, **kwargs)
    assert [int(x[0, 0]) // 2 for x, _ in rec.batches] == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]

    rec = Recorder(model, init_calls=1)
    estimate_llc(model, indexed_loader(shuffle=True), rec, num_burnin=2, **kwargs)
    order = [sorted(x[:, 0].int().tolist()) for x, _ in rec.batches]  # 12 steps: 4 passes
    passes = [sorted(sum(order[i : i + 3], [])) for i in range(0, 12, 3)]
    assert passes == [list(range(6))] * 4
    assert len({tuple(map(tuple, order[i : i + 3])) for i in range(0, 12, 3)}) > 1


@pytest.mark.parametrize("shuffle, drop_last", [(True, False), (True, True), (False, False)])
def test_a_tensor_dataset_s_batches_are_gathered_at_once_and_the_same(shuffle, drop_last):
    data = TensorDataset(torch.randn(50, 3), torch.arange(50))
    loader = DataLoader(data, batch_size=16, shuffle=shuffle, drop_last=drop_last)
    fast = gathered_batches(loader)
    assert isinstance(fast.dataset, Dataset) and fast.dataset is not data
    # from the same torch seed: the same batches, pass after pass, of the same types (lists,
    # as torch's collate makes them)
    for seed in (7, 8):
        torch.manual_seed(seed)
        plain = [batch for _ in range(3) for batch in loader]
        torch.manual_seed(seed)
        gathered = [batch for _ in range(3) for batch in fast]
        assert len(plain) == len(gathered) == 3 * len(loader)
        for a, b in zip(plain, gathered, strict=True):
            assert type(a) is type(b) is list
            assert all(torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(a, b, strict=True))
    assert gathered_batches(fast) is fast and BatchStream(loader, 0).dataloader is not loader
    # a loader with its own collate, with workers, or over another dataset is left as it is
    rows = [data[i] for i in range(50)]
    for other in (
        DataLoader(data, batch_size=16, collate_fn=lambda batch: batch),
        DataLoader(data, batch_size=16, num_workers=1),
        DataLoader(rows, batch_size=16),
    ):
        assert gathered_batches(other) is other


@pytest.mark.parametrize("paired", [True, False])
def test_burn_in_is_excluded_and_draws_are_spaced(paired):
    """num_burnin=3, steps_between_draws=2, num_draws=4: each chain takes 3 + 4*2 = 11 steps
    (one forward+backward each) and records steps 3, 5, 7, 9. The paired form adds one forward
    at w* per draw (and none per step), on the same batch as the draw."""
    model = nn.Linear(3, 1)

    def loss_fn(m, batch):
        x, _ = batch
        base = 0.0 * m(x).sum()  # depends on the weights (so it has a gradient), value 0
        if rec.phase != "step":
            return base + 0.5  # losses at w*: the init loss and the paired reference
        return base + float(rec.step_in_chain[-1])

    rec = Recorder(model, loss_fn, init_calls=3)
    est = estimate_llc(
        model,
        DataLoader(regression(), batch_size=16),
        rec,
        sampler=SGLD(lr=1e-3, nbeta=10.0),
        num_chains=2,
        num_draws=4,
        num_burnin=3,
        steps_between_draws=2,
        paired=paired,
        init_loss_batches=3,
    )
    assert rec.chains == 2 and len(rec.steps) == 2 * 11
    assert rec.step_in_chain[-1] == 10
    assert est.loss_trace.shape == (2, 4)
    assert est.loss_trace.tolist() == [[3.0, 5.0, 7.0, 9.0]] * 2
    assert rec.reference_calls == (2 * 4 if paired else 0)
    assert est.init_loss == 0.5
    # llc = nbeta * mean(step - 0.5) = 10 * 5.5 in both forms (reference 0.5 either way)
    assert est.mean == pytest.approx(55.0)


# --------------------------------------------------------------------------------------------
# Health flags
# --------------------------------------------------------------------------------------------


def test_a_diverging_step_size_stops_every_chain_and_flags_it():
    """lr = 10 on a quadratic loss multiplies the offset by |1 - lr nbeta h / 2| ~ 100 per step:
    non-finite within ~20 steps. The chains are stopped long before their 500 steps."""
    model = nn.Linear(3, 1)
    rec = Recorder(model)
    est = estimate_llc(
        model,
        DataLoader(regression(), batch_size=16),
        rec,
        sampler=SGLD(lr=10.0, nbeta=20.0, localization=1.0),
        num_chains=2,
        num_draws=500,
    )
    assert est.diverged_chains == [0, 1]
    assert math.isnan(est.mean) and bool(torch.isnan(est.per_chain).all())
    assert not est.healthy
    assert any("diverged" in w and "smaller lr" in w for w in est.warnings), est.warnings
    assert len(rec.steps) < 2 * 100  # stopped early, not run to 2 x 500 steps
    assert est.to_record()["per_chain"] == [None, None]  # JSON-safe


def test_one_diverging_chain_is_excluded_from_the_mean():
    """Chain 1's loss turns NaN at its 6th step: that chain is stopped and marked, its draws
    from there on are NaN, and the mean is that of chains 0 and 2."""
    model = nn.Linear(3, 1)

    def loss_fn(m, batch):
        value = mse(m, batch)
        if rec.phase == "step" and rec.chain_of_step[-1] == 1 and rec.step_in_chain[-1] >= 5:
            return value * float("nan")
        return value

    rec = Recorder(model, loss_fn)
    est = estimate_llc(
        model,
        DataLoader(regression(), batch_size=16),
        rec,
        sampler=SGLD(lr=1e-4, nbeta=10.0, localization=100.0),
        num_chains=3,
        num_draws=200,
    )
    assert est.diverged_chains == [1]
    assert math.isnan(float(est.per_chain[1]))
    assert torch.isfinite(est.loss_trace[1, :5]).all() and torch.isnan(est.loss_trace[1, 5:]).all()
    healthy = est.per_chain[[0, 2]].double()
    assert est.mean == pytest.approx(float(healthy.mean()), rel=1e-6)
    assert math.isfinite(est.mean)
    assert any("1 of 3 chains diverged" in w for w in est.warnings), est.warnings
    steps_per_chain = [rec.chain_of_step.count(c) for c in range(3)]
    assert steps_per_chain[0] == steps_per_chain[2] == 200
    assert steps_per_chain[1] < 100  # stopped


def test_negative_llc_is_flagged_away_from_a_minimum():
    """At the least-squares solution shifted by 0.5 in every weight, sampling slides downhill:
    the loss falls below L(w*) and the LLC is negative. At the solution itself it is not."""
    data = regression(n=256)
    x, y = data.tensors
    solution = torch.linalg.lstsq(torch.cat([x, torch.ones(256, 1)], 1), y).solution.squeeze(1)
    kwargs = dict(sampler=SGLD(lr=1e-3, nbeta=100.0, localization=1.0), num_chains=2, num_draws=100)
    loader = DataLoader(data, batch_size=64, shuffle=True)
    model = nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.copy_(solution[:3] + 0.5)
        model.bias.copy_(solution[3:] + 0.5)
    est = estimate_llc(model, loader, mse, **kwargs)
    assert est.mean < 0 and est.negative and not est.healthy
    assert any("negative" in w for w in est.warnings), est.warnings
    with torch.no_grad():
        model.weight.copy_(solution[:3])
        model.bias.copy_(solution[3:])
    est = estimate_llc(model, loader, mse, **kwargs)
    assert est.mean > 0 and not est.negative
    assert not any("negative" in w for w in est.warnings)


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------


def test_component_masks_leave_unmasked_entries_bit_identical():
    """A component owning a checkerboard of the first weight, one entry of the last bias and
    nothing of the others: at every step every other entry equals w* bit for bit, and the owned
    entries move."""
    model = mlp()
    board = torch.arange(24).view(8, 3) % 2 == 0
    last_bias = torch.tensor([True])
    masks = {
        "0.weight": board,
        "4.bias": last_bias,
        "4.weight": torch.zeros(1, 8, dtype=torch.bool),
    }
    component = Component("part", masks)
    rec = Recorder(model)
    est = estimate_llc(
        model,
        DataLoader(regression(), batch_size=16, shuffle=True),
        rec,
        sampler=SGLD(lr=1e-3, nbeta=10.0, localization=10.0),
        num_chains=2,
        num_draws=25,
        component=component,
    )
    assert est.component == "part"
    names = [n for n, _ in model.named_parameters()]
    owned = {
        n: masks.get(n, torch.zeros_like(p, dtype=torch.bool)) for n, p in model.named_parameters()
    }
    assert len(rec.steps) == 50
    for weights in rec.steps:
        for name, w, w0 in zip(names, weights, rec.w_star, strict=True):
            assert torch.equal(w[~owned[name]], w0[~owned[name]]), name
    last = dict(zip(names, rec.steps[-1], strict=True))
    start = dict(zip(names, rec.w_star, strict=True))
    for name in ("0.weight", "4.bias"):
        moved = last[name][owned[name]] != start[name][owned[name]]
        assert bool(moved.all()), name


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def bad_call(**overrides):
    kwargs = dict(
        model=nn.Linear(3, 1),
        dataloader=DataLoader(regression(), batch_size=16),
        loss_fn=mse,
        sampler=SMALL,
        num_chains=2,
        num_draws=5,
    )
    kwargs.update(overrides)
    return estimate_llc(
        kwargs.pop("model"), kwargs.pop("dataloader"), kwargs.pop("loss_fn"), **kwargs
    )


@pytest.mark.parametrize(
    ("overrides", "error", "words"),
    [
        (dict(num_chains=0), ValueError, ["num_chains=0", ">= 1"]),
        (dict(num_draws=0), ValueError, ["num_draws=0", ">= 1"]),
        (dict(num_burnin=-1), ValueError, ["num_burnin=-1", ">= 0"]),
        (dict(steps_between_draws=0), ValueError, ["steps_between_draws=0"]),
        (dict(num_chains=2.5), ValueError, ["num_chains=2.5", "integer"]),
        (dict(init_loss_batches=0), ValueError, ["init_loss_batches=0"]),
        (dict(dataloader=[]), ValueError, ["yields no batch"]),
        (
            dict(dataloader=DataLoader(TensorDataset(torch.zeros(0, 3), torch.zeros(0, 1)))),
            ValueError,
            ["yields no batch"],
        ),
        (
            dict(dataloader=DataLoader(regression(n=10), batch_size=16, drop_last=True)),
            ValueError,
            ["yields no batch", "drop_last"],
        ),
        (dict(loss_fn=lambda m, b: 1.0), LossFnError, ["returned float", "expected a tensor"]),
        (dict(loss_fn=lambda m, b: (mse(m, b),)), LossFnError, ["returned tuple"]),
        (
            dict(loss_fn=lambda m, b: torch.tensor(1)),
            LossFnError,
            ["torch.int64", "floating-point"],
        ),
        (
            dict(loss_fn=lambda m, b: mse(m, b) * float("nan")),
            ValueError,
            ["non-finite loss", "current weights"],
        ),
        (
            dict(loss_fn=lambda m, b: mse(m, b) + float("inf")),
            ValueError,
            ["non-finite loss"],
        ),
        (
            dict(model=nn.Linear(3, 1).requires_grad_(False)),
            ValueError,
            ["no trainable parameters"],
        ),
    ],
)
def test_bad_input_is_a_clear_error(overrides, error, words):
    with pytest.raises(error) as info:
        bad_call(**overrides)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)


def test_a_loss_that_is_no_tensor_is_a_type_error_naming_the_forms_that_work():
    """Callers catching the standard TypeError see a LossFnError; a dict without a "loss"
    entry is refused with the forms a loss_fn may return."""
    with pytest.raises(TypeError) as info:
        bad_call(loss_fn=lambda m, b: {"value": mse(m, b)})
    assert info.type is LossFnError
    for words in ("returned dict", "the mean loss", "a dict with a 'loss' tensor also works"):
        assert words in str(info.value), (words, str(info.value))


def test_reference_losses_at_w_star_are_computed_without_autograd():
    model = nn.Linear(3, 1)
    rec = Recorder(model, init_calls=4)
    loader = DataLoader(regression(), batch_size=16)
    estimate_llc(model, loader, rec, sampler=SMALL, num_chains=1, num_draws=2, init_loss_batches=4)
    assert rec.init_grad_modes == [False] * 4


def test_gradient_steps_in_backward_match_the_plain_update_and_free_each_gradient():
    """The whole-model update adds each parameter's gradient step during backward (scaled by
    1 / shrink, the rest of the drift scales it back); MALA turns that off, not the chain."""
    from lightning_devinterp.sampling import ChainSettings, FlatModel, run_chains

    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    loader = DataLoader(regression(), batch_size=16)
    sampler = SGLD(lr=1e-3, nbeta=20.0, localization=100.0, weight_decay=1.0)
    flat = FlatModel(model)
    chains = ChainSettings(num_chains=2, num_draws=30, num_burnin=5, seed=2)
    early = run_chains(flat, mse, loader, sampler, chains=chains)
    plain = run_chains(flat, mse, loader, sampler, chains=chains.replace(mala=True))
    torch.testing.assert_close(early.loss, plain.loss, rtol=1e-5, atol=1e-7)
    assert not torch.equal(early.loss[0], early.loss[1])
    with flat.gradient_steps_in_backward(sampler) as used:
        before = flat.params.clone()
        flat.loss_and_grad(mse, next(iter(loader)))
        assert used and all(p.grad is None for _, p in flat.active)  # freed in backward
        assert not torch.equal(flat.params, before)  # the gradient step is already in
    flat.reset()
    with flat.gradient_steps_in_backward(SGLD(lr=1.5e-2, nbeta=20.0, localization=100.0)) as used:
        assert not used  # shrink 0.25: the plain update
