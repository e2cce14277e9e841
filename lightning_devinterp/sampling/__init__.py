"""The sampling engine: SGLD settings, batch streams and the chain runner (no Lightning)."""

from lightning_devinterp.sampling.batches import (
    BatchStream,
    TypedDataLoader,
    batch_size_of,
    chain_seed,
    move_to_device,
    seeded_global_rng,
)
from lightning_devinterp.sampling.chains import (
    ChainTraces,
    Draw,
    FlatModel,
    LossFn,
    LossFnError,
    Observable,
    loss_terms,
    per_sample,
    reduce_loss,
    run_chains,
)
from lightning_devinterp.sampling.sgld import SGLD, default_nbeta

__all__ = [
    "TypedDataLoader",
    "SGLD",
    "BatchStream",
    "ChainTraces",
    "Draw",
    "FlatModel",
    "LossFn",
    "LossFnError",
    "Observable",
    "batch_size_of",
    "chain_seed",
    "default_nbeta",
    "loss_terms",
    "move_to_device",
    "per_sample",
    "reduce_loss",
    "run_chains",
    "seeded_global_rng",
]
