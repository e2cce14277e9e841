"""The sampling engine: SGLD settings, batch streams and the chain runner (no Lightning)."""

from lightning_devinterp.sampling.batches import (
    BatchStream,
    TypedDataLoader,
    batch_size_of,
    chain_seed,
    device_transfer,
    gathered_batches,
    move_to_device,
)
from lightning_devinterp.sampling.chains import ChainTraces, Draw, Observable, run_chains
from lightning_devinterp.sampling.flat import FlatModel
from lightning_devinterp.sampling.losses import (
    LossFn,
    LossFnError,
    loss_terms,
    per_sample,
    reduce_loss,
)
from lightning_devinterp.sampling.rmsprop import PreconditionerState, RMSpropSGLD
from lightning_devinterp.sampling.rng import kept_rng_states, seeded_global_rng
from lightning_devinterp.sampling.runner import run_sampling
from lightning_devinterp.sampling.settings import ChainSettings
from lightning_devinterp.sampling.sgld import SGLD, default_nbeta

__all__ = [
    "TypedDataLoader",
    "SGLD",
    "BatchStream",
    "PreconditionerState",
    "RMSpropSGLD",
    "ChainSettings",
    "ChainTraces",
    "Draw",
    "FlatModel",
    "LossFn",
    "LossFnError",
    "Observable",
    "batch_size_of",
    "chain_seed",
    "default_nbeta",
    "device_transfer",
    "gathered_batches",
    "kept_rng_states",
    "loss_terms",
    "move_to_device",
    "per_sample",
    "reduce_loss",
    "run_chains",
    "run_sampling",
    "seeded_global_rng",
]
