"""Sampling from a ``TensorDataset`` loader: batches gathered at once (``gathered_batches``,
what the samplers do) against torch's stacking of single samples, in one run, on the modular
addition MLP of ``benchmarks/modular_addition.py`` at its initial weights. Prints the seconds of
one LLC estimate (4 chains x 100 draws) each way per batch size, their ratio, and whether the
two estimates are equal (the same batches give the same chains).

    python benchmarks/tensor_batches.py
"""

from __future__ import annotations

import time
import warnings

import torch
from modular_addition import ModularAddition, split
from torch.utils.data import DataLoader

from lightning_devinterp import SGLD, estimate_llc
from lightning_devinterp.estimators import llc_sampling
from lightning_devinterp.sampling import batches


def seconds(loader: DataLoader, model: torch.nn.Module) -> tuple[float, float]:
    """Seconds of one estimate, and the estimate."""
    start = time.perf_counter()
    estimate = estimate_llc(
        model,
        loader,
        lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
        sampler=SGLD(lr=1e-4, nbeta=30.0, localization=100.0),
        num_draws=100,
    )
    return time.perf_counter() - start, estimate.mean


def use(gathered_batches) -> None:
    """Make the samplers read their batches with ``gathered_batches``."""
    batches.gathered_batches = llc_sampling.gathered_batches = gathered_batches


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train, _ = split(0, 0.5)
    model = ModularAddition()
    gather = batches.gathered_batches
    for batch_size in (64, 256, len(train)):
        loader = DataLoader(train, batch_size=batch_size, shuffle=True)
        use(lambda loader: loader)  # torch's own collate
        stacked, llc_stacked = seconds(loader, model)
        use(gather)
        gathered, llc_gathered = seconds(loader, model)
        print(
            f"batch {batch_size:5d}: stacked {stacked:6.2f} s, gathered {gathered:6.2f} s "
            f"({stacked / gathered:.1f}x); estimates equal: {llc_stacked == llc_gathered}"
        )


if __name__ == "__main__":
    main()
