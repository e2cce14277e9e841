"""An importable tiny attention model, data module and training run for the command-line
tests (the CLI rebuilds them from class paths in a subprocess)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_devinterp.demos import AttentionOnlyTransformer, InductionData, token_loss


def token_loader(size: int = 64, length: int = 8, vocab_size: int = 8, batch_size: int = 16):
    data = InductionData(size=size, length=length, vocab_size=vocab_size, seed=0)
    return DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=data.collate)


class TinyTransformer(L.LightningModule):
    """Two attention layers of two heads; its own train_dataloader."""

    def __init__(self, vocab_size: int = 8, d_model: int = 8, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = AttentionOnlyTransformer(vocab_size, d_model, n_heads=2, n_layers=2, context=8)

    def training_step(self, batch, batch_idx):
        loss = token_loss(self.net, batch).mean()
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self):
        return token_loader(vocab_size=self.hparams.vocab_size)


class TinyTokens(L.LightningDataModule):
    """The same tokens as a data module."""

    def __init__(self, vocab_size: int = 8, batch_size: int = 16):
        super().__init__()
        self.save_hyperparameters()

    def train_dataloader(self):
        return token_loader(vocab_size=self.hparams.vocab_size, batch_size=self.hparams.batch_size)


class Trap:
    """Unpickling it creates the file ``path``: the arbitrary code a checkpoint can carry."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def train(folder: Path, callbacks=(), max_steps: int = 6, every: int = 2) -> Path:
    """A short run that saves a checkpoint every ``every`` steps (and last.ckpt); returns the
    checkpoint folder."""
    L.seed_everything(0, verbose=False)
    checkpoints = folder / "checkpoints"
    saver = ModelCheckpoint(
        dirpath=checkpoints, every_n_train_steps=every, save_top_k=-1, save_last=True
    )
    L.Trainer(
        default_root_dir=folder,
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[saver, *callbacks],
    ).fit(TinyTransformer())
    return checkpoints
