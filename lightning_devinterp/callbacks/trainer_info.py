"""What the callbacks read off a trainer: the run's last step, where to write files, the data
to sample with and how its batches reach the model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from lightning_devinterp.sampling import gathered_batches


def last_step(trainer: Trainer) -> float:
    """The run's last optimizer step (``inf`` when neither max_steps nor max_epochs bound it)."""
    return trainer.max_steps if trainer.max_steps >= 0 else trainer.estimated_stepping_batches


def output_folder(trainer: Trainer, output_dir: str | None) -> Path:
    """``output_dir``, or ``<trainer.log_dir>/devinterp`` (call on every rank: log_dir is
    broadcast)."""
    return Path(output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "devinterp")


def sampling_data(trainer: Trainer, dataloader: Iterable | None, reader: str) -> Iterable:
    """The data a monitor (named ``reader`` in errors) samples with: its own ``dataloader``,
    or :func:`training_data`."""
    return dataloader if dataloader is not None else training_data(trainer, reader)


def training_data(trainer: Trainer, reader: str) -> Iterable:
    """The trainer's training data as ``training_step`` receives it, read through fresh
    iterators (training's own is never advanced): its ``DataLoader`` (one with persistent
    workers copied without them, since a second iterator would reset training's), or for
    several dataloaders (a dict or list, a ``CombinedLoader``) or another iterable,
    :class:`CombinedBatches`. ``reader`` names the callback in errors."""
    iterables = trainer.train_dataloader
    if iterables is None:
        raise ValueError(
            f"{reader} found no training dataloader on the trainer; give it data of its own "
            "(the monitors' dataloader=..., EssentialDynamics' probe=...)."
        )
    if isinstance(iterables, DataLoader):
        return _without_persistent_workers(iterables)
    return CombinedBatches(iterables, reader)


class CombinedBatches:
    """The batches of several training iterables, combined as Lightning's fit loop combines
    them (``CombinedLoader`` in ``max_size_cycle`` mode: a dict or list of their batches; a
    single iterable's own batches), through fresh iterators at every pass.

    Raises:
        ValueError: one of them is an iterator (a generator, say): reading it would take
            training's batches.
    """

    def __init__(self, iterables: Any, reader: str) -> None:
        combined = CombinedLoader(iterables, "max_size_cycle")
        for iterable in combined.flattened:
            if isinstance(iterable, Iterator):
                raise ValueError(
                    f"{reader} cannot sample from the training data: it is an iterator "
                    f"({type(iterable).__name__}), read once, so sampling would take training's "
                    "batches. Train from a DataLoader or another re-iterable object, or give the "
                    "callback data of its own (the monitors' dataloader=..., EssentialDynamics' "
                    "probe=...)."
                )
        combined.flattened = [
            gathered_batches(_without_persistent_workers(x)) if isinstance(x, DataLoader) else x
            for x in combined.flattened
        ]
        self.iterables = combined.iterables

    def __iter__(self) -> Iterator:
        batches = iter(CombinedLoader(self.iterables, "max_size_cycle"))
        return (batch for batch, _, _ in batches)


def _without_persistent_workers(loader: DataLoader) -> DataLoader:
    """``loader``, or, when its workers persist, a copy without workers."""
    if loader.num_workers > 0 and loader.persistent_workers:
        return DataLoader(
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
