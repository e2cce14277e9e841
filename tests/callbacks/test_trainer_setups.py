"""The Trainer and model setups users train with: each trains bit for bit as without the
monitor, and the monitor estimates at every scheduled step."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, TensorDataset

from lightning_devinterp import SGLD, LLCMonitor, SusceptibilityMonitor
from lightning_devinterp.callbacks.trainer_info import training_data
from tests.helpers import (
    Batches,
    RegressionModule,
    TwoLoaders,
    mse_loss,
    regression_data,
    trainer,
)

FAST = dict(sampler=SGLD(lr=1e-4, nbeta=10.0, localization=100.0), num_chains=2, num_draws=8)


class Tied(RegressionModule):
    """An autoencoder-like net whose output layer reuses the input layer's weight."""

    def __init__(self) -> None:
        super().__init__(noisy=False)
        self.encode = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        hidden = torch.tanh(self.encode(x))
        return self.head(hidden @ self.encode.weight)


class Frozen(RegressionModule):
    """The first layer frozen (requires_grad=False), the rest trained."""

    def __init__(self) -> None:
        super().__init__(noisy=False)
        self.net[0].requires_grad_(False)

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)


class Validated(RegressionModule):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", mse_loss(self, batch))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", mse_loss(self, batch))

    def val_dataloader(self):
        return DataLoader(regression_data(64, seed=1), batch_size=32)

    def test_dataloader(self):
        return self.val_dataloader()


class Stream(IterableDataset):
    """Regression samples as a stream (no length, no sampler)."""

    def __iter__(self):
        data = regression_data()
        return iter(data[i] for i in range(len(data)))


class Streamed(RegressionModule):
    def train_dataloader(self):
        return DataLoader(Stream(), batch_size=32)


class Reiterable(RegressionModule):
    """Trained from an iterable of batches that is not a DataLoader."""

    def train_dataloader(self):
        x, y = regression_data().tensors
        return Batches(x, y, batch_size=32)


def per_sample_loss(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean(dim=1)


SETUPS = {
    "bf16-mixed": (RegressionModule, dict(precision="bf16-mixed"), {}),
    "gradient accumulation": (RegressionModule, dict(accumulate_grad_batches=2), {}),
    "gradient clipping": (RegressionModule, dict(gradient_clip_val=0.1), {}),
    "tied parameters": (Tied, {}, {}),
    "frozen parameters": (Frozen, {}, {}),
    "an IterableDataset": (Streamed, {}, {}),
    "validation every 2 steps": (Validated, dict(val_check_interval=2, limit_val_batches=1), {}),
    "per-sample losses": (RegressionModule, {}, dict(loss_fn=per_sample_loss)),
    "two train dataloaders (a dict)": (TwoLoaders, {}, {}),
    "a CombinedLoader (a list, min_size)": (lambda: TwoLoaders(combined=True), {}, {}),
    "an iterable of batches": (Reiterable, {}, {}),
    "torch.compile aot_eager": ("aot_eager", {}, {}),
    "torch.compile inductor": ("inductor", {}, {}),
}


def run(tmp_path, setup: str, monitor: LLCMonitor | None):
    module_class, trainer_kwargs, _ = SETUPS[setup]
    L.seed_everything(0, verbose=False)
    if isinstance(module_class, str):  # a compiled network inside the module
        module = RegressionModule(noisy=False)
        module.net = torch.compile(module.net, backend=module_class)
    else:
        module = module_class()
    callbacks = [monitor] if monitor is not None else []
    t = trainer(tmp_path, callbacks=callbacks, max_steps=6, **trainer_kwargs)
    t.fit(module)
    return module


@pytest.mark.parametrize("setup", list(SETUPS))
def test_the_setup_trains_as_without_the_monitor_and_is_estimated(tmp_path, setup):
    plain = run(tmp_path / "plain", setup, None)
    monitor = LLCMonitor(
        every_n_steps=3, extra_estimates=2, on_error="raise", **FAST, **SETUPS[setup][2]
    )
    watched = run(tmp_path / "watched", setup, monitor)
    assert monitor.cadence.loss_bends.watching  # the loss was read (too few steps for a bend)
    assert plain.losses == watched.losses
    for (k0, v0), (k1, v1) in zip(
        plain.state_dict().items(), watched.state_dict().items(), strict=True
    ):
        assert k0 == k1 and torch.equal(v0, v1), k0
    assert [r["step"] for r in monitor.history] == [3, 6]
    assert all(r["llc/mean"] == r["llc/mean"] for r in monitor.history)  # not NaN


class FromIterator(RegressionModule):
    def train_dataloader(self):
        return iter(DataLoader(regression_data(), batch_size=32))


def susceptibility_monitor() -> SusceptibilityMonitor:
    x, y = regression_data(32, seed=1).tensors
    probes = {"shifted": [(2 * x, y)]}
    return SusceptibilityMonitor(probes, loss_fn=per_sample_loss, every_n_steps=3, **FAST)


@pytest.mark.parametrize(
    ("monitor", "named"),
    [
        (lambda: LLCMonitor(every_n_steps=3, **FAST), "LLCMonitor(llc)"),
        (susceptibility_monitor, "SusceptibilityMonitor(susceptibility)"),
    ],
)
def test_training_data_read_once_is_refused_before_training_naming_the_fix(
    tmp_path, monitor, named
):
    module = FromIterator(noisy=False)
    t = trainer(tmp_path, callbacks=[monitor()])
    with pytest.raises(ValueError, match="iterator.*dataloader=") as error:
        t.fit(module)
    assert named in str(error.value)  # each monitor named by its own class
    assert module.losses == []  # refused at train start, before any training step


def test_fit_twice_validate_and_test_around_it(tmp_path):
    monitor = LLCMonitor(every_n_steps=3, **FAST)
    module = Validated()
    t = trainer(tmp_path, callbacks=[monitor], max_steps=3, limit_val_batches=1)
    t.validate(module)
    t.fit(module)
    t.test(module)
    t.fit_loop.epoch_loop.max_steps = 6
    t.fit(module)
    assert [r["step"] for r in monitor.history] == [3, 6]
    assert not monitor.errors


def test_several_train_dataloaders_are_sampled_as_the_trainer_holds_them(tmp_path):
    """Each loader's own sampler (under DDP, the rank's DistributedSampler) stays: the
    sampled batches are the trainer's shard, combined as training_step receives them."""
    numbers = TensorDataset(torch.arange(16.0).unsqueeze(1))
    shard = DistributedSampler(numbers, num_replicas=2, rank=1, shuffle=False)
    loaders = {
        "odd": DataLoader(numbers, batch_size=4, sampler=shard),
        "all": DataLoader(numbers, batch_size=8),
    }
    seen = []

    class Reads(RegressionModule):
        def training_step(self, batch, batch_idx):
            seen.append(batch)
            return self.net[0].weight.sum() * 0.0 + batch["all"][0].mean() * 0.0

    t = trainer(tmp_path, max_steps=2)
    t.fit(Reads(noisy=False), train_dataloaders=loaders)
    sampled = list(training_data(t, "test"))
    assert [set(b) for b in sampled] == [{"odd", "all"}] * 2
    assert torch.equal(sampled[0]["odd"][0], seen[0]["odd"][0])
    assert all(int(v) % 2 == 1 for b in sampled for v in b["odd"][0].flatten())
