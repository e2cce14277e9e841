"""What the callbacks read off a trainer: the run's last step and where to write files."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Trainer


def last_step(trainer: Trainer) -> float:
    """The run's last optimizer step (``inf`` when neither max_steps nor max_epochs bound it)."""
    return trainer.max_steps if trainer.max_steps >= 0 else trainer.estimated_stepping_batches


def output_folder(trainer: Trainer, output_dir: str | None) -> Path:
    """``output_dir``, or ``<trainer.log_dir>/devinterp`` (call on every rank: log_dir is
    broadcast)."""
    return Path(output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "devinterp")
