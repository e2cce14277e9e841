"""Gathering results across processes, through the trainer's strategy."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def all_gather_objects(obj: Any, world_size: int) -> list[Any]:
    """Every process's ``obj``, in rank order (just ``[obj]`` without a process group)."""
    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def my_chains(num_chains: int, rank: int, world_size: int) -> list[int]:
    """The chains this rank runs: rank, rank + world_size, ..."""
    return list(range(rank, num_chains, max(world_size, 1)))
