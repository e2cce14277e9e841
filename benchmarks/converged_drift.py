"""Milestones where nothing develops: an MLP fitted to a teacher (regression, Adam at 3e-3
for 6000 steps), then trained on for 3000 steps with an `LLCMonitor` at its defaults, at a
thirtieth of that learning rate (`--lr 1e-4`: the loss settles, the weights barely move) or
at the same one (`--lr 3e-3`: it goes on learning slowly). Prints, per seed, the LLC's and
L(w*)'s range and the milestones announced online, and those the same records give without
the flat band's floor from the series' level (`level_slope=0`, the detectors before it).

    python benchmarks/converged_drift.py [--lr 1e-4] [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_devinterp import LLCMonitor, MilestoneDetector
from lightning_devinterp.milestones import MilestoneTracker, loss_series


class Regression(L.LightningModule):
    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def teacher_data(seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    for p in teacher.parameters():
        p.data = torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5
    x = torch.randn(2048, 8, generator=g)
    with torch.no_grad():
        y = teacher(x) + 0.1 * torch.randn(2048, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)


def run(seed: int, lr: float, folder: str) -> list[dict]:
    """The monitor's records over the 3000 steps after the fit."""
    data = teacher_data(seed)
    L.seed_everything(seed, verbose=False)
    model = Regression(lr=3e-3)
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    quiet.update(enable_model_summary=False, default_root_dir=folder)
    L.Trainer(max_steps=6000, **quiet).fit(model, data)
    model.lr = lr
    monitor = LLCMonitor()
    L.Trainer(max_steps=3000, callbacks=[monitor], **quiet).fit(model, data)
    return monitor.history


def milestones(history: list[dict], level_slope: float | None) -> list[str]:
    """The LLC's and L(w*)'s milestones the records give (the defaults when None)."""
    detectors = True
    if level_slope is not None:
        detectors = [
            MilestoneDetector("llc", level_slope=level_slope),
            MilestoneDetector(loss_series("llc"), drop=2.0, level_slope=level_slope),
        ]
    tracker = MilestoneTracker("llc", detectors)
    for record in history:
        tracker.update(record["step"], record)
    tracker.finish()
    return [f"{m.series} {m.kind} {m.step}" for m in tracker.milestones if m.series != "train_loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    totals = {"now": 0, "before": 0}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as folder:
            history = run(seed, args.lr, folder)
        llc = [r["llc/mean"] for r in history]
        loss = [r["llc/init_loss"] for r in history]
        now, before = milestones(history, None), milestones(history, 0.0)
        totals["now"] += len(now)
        totals["before"] += len(before)
        print(
            f"seed {seed}: LLC {min(llc):.4f}-{max(llc):.4f}, L(w*) {min(loss):.5f}-{max(loss):.5f}"
        )
        print(f"  now:                  {now}")
        print(f"  without level_slope:  {before}")
    print(f"milestones (LLC and L(w*)), {len(args.seeds)} runs: {totals}")


if __name__ == "__main__":
    main()
