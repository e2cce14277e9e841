"""An LLCMonitor at its defaults on a model it was not tuned on: an MLP learning addition mod p
(embeddings of both operands, one hidden ReLU layer; AdamW with weight decay, 40% of the pairs
for training; at these settings it memorises: training accuracy 1 by step 500, test accuracy
near 0 for 4000 steps). Prints each estimate (step, LLC, spread, why taken, first health
warning), the test accuracy along training, and the milestones announced online.

    python benchmarks/modular_addition.py [--seed 0] [--steps 4000] [--sampler auto]
    python benchmarks/modular_addition.py --lr 3e-3 --train-share 0.5 --batch-size 0  # groks
"""

from __future__ import annotations

import argparse
import tempfile
import warnings

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_devinterp import LLCMonitor

P = 47


class ModularAddition(L.LightningModule):
    def __init__(self, width: int = 128, lr: float = 1e-3, weight_decay: float = 1.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(P, width)
        self.mlp = nn.Sequential(nn.Linear(2 * width, width), nn.ReLU(), nn.Linear(width, P))
        self.lr, self.weight_decay = lr, weight_decay
        self.accuracy: list[tuple[int, float]] = []

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embed(pairs).flatten(1))

    def training_step(self, batch, batch_idx):
        pairs, sums = batch
        return nn.functional.cross_entropy(self(pairs), sums)

    def validation_step(self, batch, batch_idx):
        pairs, sums = batch
        correct = (self(pairs).argmax(-1) == sums).float().mean().item()
        self.accuracy.append((self.global_step, correct))

    def configure_optimizers(self):
        return torch.optim.AdamW(
            self.parameters(), lr=self.lr, weight_decay=self.weight_decay, betas=(0.9, 0.98)
        )


def split(seed: int, train_share: float = 0.4) -> tuple[TensorDataset, TensorDataset]:
    """All pairs (a, b) with a + b mod P, shuffled by ``seed``: (train, test)."""
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    pairs = torch.stack([a.flatten(), b.flatten()], 1)
    sums = pairs.sum(1) % P
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
    n = int(train_share * len(pairs))
    train, test = order[:n], order[n:]
    return TensorDataset(pairs[train], sums[train]), TensorDataset(pairs[test], sums[test])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--sampler", choices=["default", "auto"], default="default")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-share", type=float, default=0.4)
    parser.add_argument("--batch-size", type=int, default=256, help="0: the whole training set")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    L.seed_everything(args.seed, verbose=False)
    train, test = split(args.seed, args.train_share)
    sampler = "auto" if args.sampler == "auto" else None
    monitor = LLCMonitor(sampler, seed=args.seed, at_train_end=True)
    model = ModularAddition(lr=args.lr)
    with tempfile.TemporaryDirectory() as folder:
        L.Trainer(
            max_steps=args.steps,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            val_check_interval=max(1, args.steps // 20),
            check_val_every_n_epoch=None,
            num_sanity_val_steps=0,
            default_root_dir=folder,
            callbacks=[monitor],
        ).fit(
            model,
            DataLoader(train, batch_size=args.batch_size or len(train), shuffle=True),
            DataLoader(test, batch_size=len(test)),
        )
    for r in monitor.history:
        warning = r["llc/warnings"][0][:70] if r["llc/warnings"] else ""
        print(f"{r['step']:6d} {r['llc/mean']:8.2f} {r['llc/std']:6.2f} {r['llc/why']} {warning}")
    print("test accuracy:", [(s, round(a, 2)) for s, a in model.accuracy])
    for m in monitor.milestones:
        print(f"milestone {m.series} {m.kind} at {m.step}, confirmed at {m.detected_at}")


if __name__ == "__main__":
    main()
