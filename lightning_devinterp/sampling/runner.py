"""One entry point for every estimate's chains: batched when it pays and works, else one by
one, with the fallback between them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from lightning_devinterp.sampling.batched import BatchingUnsupported, run_chains_batched
from lightning_devinterp.sampling.batches import chain_seed, seeded_global_rng
from lightning_devinterp.sampling.chains import ChainTraces, Draw, run_chains
from lightning_devinterp.sampling.flat import FlatModel
from lightning_devinterp.sampling.losses import LossFn
from lightning_devinterp.sampling.settings import ChainSettings
from lightning_devinterp.sampling.sgld import SGLD

log = logging.getLogger(__name__)

#: Largest (jobs x sampled entries) that batched chains stack by default.
BATCHED_MAX_ENTRIES = 1 << 26


def batching_chosen(
    batched: bool | None,
    flat: FlatModel,
    jobs: int,
    chains: ChainSettings,
    on_draw: Callable[..., None] | None = None,
) -> bool:
    """Whether ``jobs`` (components x chains) run as one vmapped computation.

    Never with the MALA diagnostic or an ``on_draw`` hook (the batched runner has neither).
    Otherwise ``batched``, or when None: on an accelerator, with several jobs and at most
    ``BATCHED_MAX_ENTRIES`` stacked weights (on a CPU batching measured slower for attention
    models, see BENCHMARKS.md).
    """
    if chains.mala or on_draw is not None:
        return False
    if batched is not None:
        return batched
    return (
        jobs > 1 and flat.device.type != "cpu" and jobs * flat.params.numel() <= BATCHED_MAX_ENTRIES
    )


def run_sampling(
    flat: FlatModel,
    loss_fn: LossFn,
    dataloader: Iterable,
    sampler: SGLD,
    *,
    masks: Sequence[Mapping[str, torch.Tensor] | None],
    chains: ChainSettings,
    chain_ids: Sequence[int] | None = None,
    transfer: Callable[[Any], Any] | None = None,
    batched: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_draw: Callable[[int, Draw], None] | None = None,
) -> tuple[list[ChainTraces], bool]:
    """The chains ``chain_ids`` (default all of ``chains``) for every entry of ``masks``
    (None: all trainable entries), on one copy; one :class:`ChainTraces` per mask.

    Batched as :func:`batching_chosen` decides; when the model cannot be vmapped
    (for example dropout in train mode, in-place ops on weights, ``.item()`` in the loss) the
    chains run one by one instead, which is logged at INFO. Also returns whether they ran
    batched (pass it as ``batched`` to later calls on the same model to skip a failed try).
    ``on_draw(i, draw)`` is called at every draw of the chains of ``masks[i]``.
    """
    ids = list(range(chains.num_chains)) if chain_ids is None else list(chain_ids)
    if batching_chosen(batched, flat, len(masks) * len(ids), chains, on_draw):
        try:
            with seeded_global_rng(chain_seed(chains.seed, -1, 5), flat.device):  # augmentation
                traces = run_chains_batched(
                    flat,
                    loss_fn,
                    dataloader,
                    sampler,
                    masks=masks,
                    chains=chains,
                    chain_ids=ids,
                    transfer=transfer,
                )
            return traces, True
        except BatchingUnsupported as error:
            log.info(
                "Batched chains unavailable for this model (%s); running them one by one.", error
            )
    references: dict = {}  # w*'s losses on each chain's minibatches, shared by the masks
    results = []
    for i, mask in enumerate(masks):
        flat.activate(mask)
        results.append(
            run_chains(
                flat,
                loss_fn,
                dataloader,
                sampler,
                chains=chains,
                chain_ids=ids,
                transfer=transfer,
                progress=progress,
                on_draw=on_draw and (lambda draw, i=i: on_draw(i, draw)),
                references=references,
            )
        )
    return results, False
