"""What the callbacks read off a trainer: the run's last step, where to write files, the data
to sample with and how its batches reach the model."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader


def last_step(trainer: Trainer) -> float:
    """The run's last optimizer step (``inf`` when neither max_steps nor max_epochs bound it)."""
    return trainer.max_steps if trainer.max_steps >= 0 else trainer.estimated_stepping_batches


def output_folder(trainer: Trainer, output_dir: str | None) -> Path:
    """``output_dir``, or ``<trainer.log_dir>/devinterp`` (call on every rank: log_dir is
    broadcast)."""
    return Path(output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "devinterp")


def sampling_data(trainer: Trainer, dataloader: Iterable | None, name: str) -> Iterable:
    """The data a monitor samples with: its own ``dataloader``, or the trainer's train
    dataloader through a fresh iterator (a persistent-workers loader is copied without workers,
    since a second iterator over it would reset training's)."""
    if dataloader is not None:
        return dataloader
    loader = trainer.train_dataloader
    if not isinstance(loader, DataLoader):
        raise ValueError(
            f"LLCMonitor({name}) cannot sample from a train dataloader of type "
            f"{type(loader).__name__}; pass LLCMonitor(dataloader=...) with one DataLoader."
        )
    if loader.num_workers > 0 and loader.persistent_workers:
        loader = DataLoader(
            loader.dataset,
            batch_sampler=loader.batch_sampler,
            collate_fn=loader.collate_fn,
            num_workers=0,
        )
    return loader


def batch_transfer(pl_module: LightningModule) -> Callable[[Any], Any]:
    """``batch -> batch`` as Lightning prepares a training batch: the precision plugin's input
    conversion (``64-true``, ``bf16-true``, ...), the module's transfer hooks and the move to
    its device."""
    trainer = pl_module._trainer

    def transfer(batch: Any) -> Any:
        if trainer is not None:
            batch = trainer.precision_plugin.convert_input(batch)
        batch = pl_module.on_before_batch_transfer(batch, 0)
        batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
        return pl_module.on_after_batch_transfer(batch, 0)

    return transfer


def check_strategy(trainer: Trainer) -> None:
    """Refuse strategies that shard the weights: a monitor samples a full copy of them."""
    name = type(trainer.strategy).__name__
    if "FSDP" in name or "DeepSpeed" in name or "ModelParallel" in name:
        raise ValueError(
            f"LLCMonitor cannot run under {name} yet: it samples a full copy of the weights. "
            "Use DDP (strategy='ddp') for the analysed run, or estimate after training with "
            "estimate_llc on the gathered model."
        )


def check_unique_name(monitor: Callback, callbacks: Iterable[Callback]) -> None:
    """Raise if another callback of the same class has the same ``name``: their metrics,
    files and checkpointed state would collide."""
    for other in callbacks:
        if (
            other is not monitor
            and type(other) is type(monitor)
            and getattr(other, "name", None) == monitor.name
        ):
            kind = type(monitor).__name__
            raise ValueError(
                f"Two {kind} callbacks have name={monitor.name!r}; their metrics, files and "
                f"checkpointed state would collide. Give each its own name=, e.g. "
                f"{kind}(name={monitor.name + '_2'!r})."
            )
