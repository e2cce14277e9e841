"""Small models and data shared by the tests."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_devinterp.milestones import Milestone, MilestoneDetector


def regression_data(n: int = 256, d: int = 4, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    y = x @ w + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


class RegressionModule(L.LightningModule):
    """An MLP with dropout and BatchNorm whose training_step also draws from numpy and random."""

    def __init__(
        self,
        d: int = 4,
        hidden: int = 16,
        lr: float = 0.01,
        batch_size: int = 32,
        noisy: bool = True,
    ):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(0.1 if noisy else 0.0),
            nn.Linear(hidden, 1),
        )
        self.noisy = noisy
        self.lr = lr
        self.batch_size = batch_size
        self.losses: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        jitter = float(np.random.rand()) * 1e-3 + random.random() * 1e-3 if self.noisy else 0.0
        loss = nn.functional.mse_loss(self(x + jitter), y)
        self.log("train_loss", loss)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def train_dataloader(self):
        return DataLoader(regression_data(), batch_size=self.batch_size, shuffle=True)


def mse_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


class TwoLoaders(RegressionModule):
    """Trained on two dataloaders at once: Lightning combines their batches (a dict or list)."""

    def __init__(self, combined: bool = False) -> None:
        super().__init__(noisy=False)
        self.combined = combined

    def training_step(self, batch, batch_idx):
        parts = batch.values() if isinstance(batch, dict) else batch
        loss = sum(mse_loss(self, part) for part in parts)
        self.losses.append(loss.item())
        return loss

    def train_dataloader(self):
        first = DataLoader(regression_data(), batch_size=32, shuffle=True)
        second = DataLoader(regression_data(48, seed=1), batch_size=16, shuffle=True)
        if self.combined:
            return CombinedLoader([first, second], "min_size")
        return {"main": first, "extra": second}


def trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(
        default_root_dir=tmp_path,
        max_steps=6,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        deterministic=True,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


class AnnouncesAt(MilestoneDetector):
    """A real LLC detector that also announces a planted milestone when it sees ``step``."""

    def __init__(self, step: int):
        super().__init__("llc")
        self.planted = step
        self.announced: list[Milestone] = []

    def update(self, step, value, std=None, chains=None, transient=False):
        found = super().update(step, value, std, chains, transient)
        if step == self.planted:
            self.announced.append(Milestone(step - 1, step, "plateau_end", value, "llc"))
            found = [*found, self.announced[-1]]
        return found

    @property
    def milestones(self):
        return [*super().milestones, *self.announced]


class AnnouncesAtFinish(AnnouncesAt):
    """A real LLC detector that announces a planted milestone when training ends."""

    def __init__(self):
        super().__init__(step=-1)

    def finish(self):
        found = super().finish()
        last = self._state.last_step
        self.announced.append(Milestone(last - 1, last, "plateau_start", 1.0, "llc"))
        return [*found, self.announced[-1]]


class Batches:
    """Minibatches of a fixed data set, reshuffled each pass with the global torch generator
    (which the engine seeds per chain), without the per-sample collation of a DataLoader."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size

    def __iter__(self):
        order = torch.randperm(len(self.x))
        for start in range(0, len(self.x) - self.batch_size + 1, self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.x[index], self.y[index]
