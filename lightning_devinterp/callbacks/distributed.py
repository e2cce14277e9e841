"""The DDP split of an estimate's chains, and the gather of every process's part."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer

from lightning_devinterp.callbacks.isolation import isolated
from lightning_devinterp.callbacks.progress import SamplingProgress

#: ``sample(chain_ids, progress)``: one process's share of a sampling run.
Sample = Callable[[list[int], SamplingProgress], Any]


def all_gather_objects(obj: Any, world_size: int) -> list[Any]:
    """Every process's ``obj``, in rank order (just ``[obj]`` without a process group)."""
    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def rank_zero_value(trainer: Trainer) -> Callable[[Any], Any]:
    """``value -> rank 0's value`` (the same on every process)."""
    return lambda value: all_gather_objects(value, trainer.world_size)[0]


def my_chains(num_chains: int, rank: int, world_size: int) -> list[int]:
    """The chains this rank runs: rank, rank + world_size, ..."""
    return list(range(rank, num_chains, max(world_size, 1)))


def run_everywhere(
    trainer: Trainer,
    pl_module: LightningModule,
    sample: Sample,
    num_chains: int,
    *,
    title: str,
    jobs: Sequence[str] = (),
    raise_errors: bool = False,
) -> list[Any] | str:
    """Run ``sample(chain_ids, progress)`` on every process for its share of the chains,
    isolated from training, with the progress bar showing ``jobs``; gather the results in
    rank order. If any process failed, every process gets the first failure's text instead,
    so none waits for the others (with ``raise_errors`` and a single process, it raises)."""
    chain_ids = my_chains(num_chains, trainer.global_rank, trainer.world_size)
    with isolated(pl_module), SamplingProgress(trainer, title, jobs) as progress:
        try:
            payload: Any = sample(chain_ids, progress)
        except Exception as error:
            if raise_errors and trainer.world_size == 1:
                raise
            payload = f"{type(error).__name__}: {error}"
    parts = all_gather_objects(payload, trainer.world_size)
    failures = [part for part in parts if isinstance(part, str)]
    return failures[0] if failures else parts
