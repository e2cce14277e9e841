"""Leave training exactly as found: RNG streams, modes and requires_grad flags."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn


@contextmanager
def isolated(module: nn.Module) -> Iterator[None]:
    """Run a block, then restore the torch (CPU and CUDA), numpy and ``random`` RNG states and
    every submodule's train/eval mode and every parameter's ``requires_grad`` flag.

    Sampling works on its own copy of the weights; this guards the rest of what a loss
    function or a data pipeline could touch.
    """
    cpu = torch.get_rng_state()
    cuda = (
        torch.cuda.get_rng_state_all()
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else None
    )
    np_state = np.random.get_state()
    py_state = random.getstate()
    modes = [(m, m.training) for m in module.modules()]
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(np_state)
        random.setstate(py_state)
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)
