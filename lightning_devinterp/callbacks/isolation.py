"""Leave training exactly as found: RNG streams, modes and requires_grad flags."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from lightning_devinterp.sampling.rng import kept_rng_states


@contextmanager
def isolated(module: nn.Module) -> Iterator[None]:
    """Run a block, then restore the torch (CPU and CUDA), numpy and ``random`` RNG states and
    every submodule's train/eval mode and every parameter's ``requires_grad`` flag.

    Sampling works on its own copy of the weights; this guards the rest of what a loss
    function or a data pipeline could touch.
    """
    modes = [(m, m.training) for m in module.modules()]
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        with kept_rng_states():
            yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)
