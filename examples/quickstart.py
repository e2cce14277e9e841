"""Quick start: train a small MLP on a teacher-student regression with an LLCMonitor and print
the LLC curve. Runs in about a minute on a laptop CPU.

    python examples/quickstart.py [--max-steps 400]
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_devinterp import SGLD, LLCMonitor


def teacher_student_data(n: int = 4096, d: int = 8, seed: int = 0) -> TensorDataset:
    """Inputs x ~ N(0, I) and targets from a random two-layer teacher network, plus noise."""
    g = torch.Generator().manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(d, 4), nn.Tanh(), nn.Linear(4, 1))
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        x = torch.randn(n, d, generator=g)
        y = teacher(x) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


class Student(L.LightningModule):
    def __init__(self, d: int = 8, hidden: int = 32, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--estimates", type=int, default=8)
    args = parser.parse_args()

    L.seed_everything(0)
    data = teacher_student_data()
    loader = DataLoader(data, batch_size=128, shuffle=True)
    monitor = LLCMonitor(
        SGLD(lr=1e-4, nbeta=100.0, localization=100.0),
        num_chains=4,
        num_draws=100,
        num_burnin=50,
        num_estimates=args.estimates,
    )
    trainer = L.Trainer(
        max_steps=args.max_steps,
        callbacks=[monitor],
        logger=CSVLogger("runs", name="quickstart"),
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(Student(), loader)

    print(f"\nLLC curve ({len(monitor.history)} estimates, written to {monitor.jsonl_path}):")
    print(f"{'step':>6}  {'LLC':>8}  {'std':>7}  {'init loss':>9}  health")
    for record in monitor.history:
        health = "ok" if not record["llc/warnings"] else "; ".join(record["llc/warnings"])
        print(
            f"{record['step']:>6}  {record['llc/mean']:>8.3f}  {record['llc/std']:>7.3f}  "
            f"{record['llc/init_loss']:>9.4f}  {health}"
        )
    print("\nEarly on the weights are far from a minimum, so the LLC is negative and flagged.")
    for m in monitor.milestones:
        print(f"milestone: {m.series} {m.kind} at step {m.step} (confirmed at {m.detected_at})")
    print(f"milestones file: {monitor.milestones_path}")


if __name__ == "__main__":
    main()
