"""The global random generators: kept as found around a block, or seeded inside it."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch


@contextmanager
def kept_rng_states(
    *, host: bool = True, cuda: torch.device | Literal["all"] | None = "all"
) -> Iterator[None]:
    """Run a block, then put torch's CPU generator back as it was, and also:

    Args:
        host: numpy's and ``random``'s global states (saving numpy's costs ~60 us).
        cuda: the CUDA generators: ``"all"`` of every device once CUDA is initialised, a
            device's own when it is a GPU, or none (None or a CPU device).
    """
    cpu = torch.random.default_generator.get_state()
    host_states = (np.random.get_state(), random.getstate()) if host else None
    cuda_all = isinstance(cuda, str) and torch.cuda.is_available() and torch.cuda.is_initialized()
    one = cuda if isinstance(cuda, torch.device) and cuda.type == "cuda" else None
    cuda_states = torch.cuda.get_rng_state_all() if cuda_all else None
    cuda_state = torch.cuda.get_rng_state(one) if one is not None else None
    try:
        yield
    finally:
        torch.random.default_generator.set_state(cpu)
        if host_states is not None:
            np.random.set_state(host_states[0])
            random.setstate(host_states[1])
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, one)


@contextmanager
def seeded_global_rng(
    seed: int, device: torch.device | None = None, torch_only: bool = False
) -> Iterator[None]:
    """Run a block with the global generators seeded from ``seed``, then put them back.

    Covers torch's CPU generator (shuffling samplers, worker seeds, dropout on a CPU), the
    CUDA generator of ``device`` when it is a GPU (dropout there), and, unless
    ``torch_only``, numpy's and ``random``'s global states (data augmentation; seeding numpy
    costs ~60 us, so per-batch use skips it). Inside, they are reproducible (common random
    numbers); outside, the caller's streams never move.
    """
    with kept_rng_states(host=not torch_only, cuda=device):
        torch.random.default_generator.manual_seed(seed)
        if not torch_only:
            np.random.seed(seed % 2**32)
            random.seed(seed)
        if device is not None and device.type == "cuda":
            torch.cuda.manual_seed(seed)  # the current device's generator
        yield
