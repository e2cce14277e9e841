"""LLC estimates over saved Lightning checkpoints, after training, through :class:`LLCMonitor`.

The monitor is driven by a real ``Trainer`` through the hooks a training run would call
(``setup``, ``on_train_start``, one ``estimate`` per checkpoint, ``on_train_end``), so the
records, the JSON-lines file and ``milestones.json`` are those the callback writes live.
Checkpoints are read with ``torch.load(weights_only=True)`` unless ``unsafe_load=True``.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lightning_devinterp.callbacks.llc_monitor import LLCMonitor

#: LLCMonitor arguments that the checkpoints replace.
_FIXED = (
    *("every_n_steps", "num_estimates", "at_steps", "at_train_end", "extra_estimates"),
    *("dataloader", "output_dir"),
)


def find_checkpoints(sources: str | Path | Sequence[str | Path]) -> list[Path]:
    """``*.ckpt`` files: the files given, and those under the directories given.

    Raises:
        FileNotFoundError: a source does not exist, or no checkpoint is found.
    """
    sources = [sources] if isinstance(sources, (str, Path)) else list(sources)
    found = []
    for source in map(Path, sources):
        if source.is_dir():
            found.extend(sorted(source.rglob("*.ckpt")))
        elif source.is_file():
            found.append(source)
        else:
            raise FileNotFoundError(
                f"{source} does not exist; pass a directory of Lightning checkpoints (*.ckpt) "
                "or checkpoint files."
            )
    if not found:
        raise FileNotFoundError(
            f"No checkpoint (*.ckpt) in {', '.join(map(str, sources))}; save some with "
            "ModelCheckpoint(every_n_train_steps=..., save_top_k=-1)."
        )
    return found


def load_checkpoint(path: str | Path, unsafe_load: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint as a dict, on the CPU (memory-mapped).

    Args:
        path: the ``.ckpt`` file.
        unsafe_load: unpickle anything the file holds (``weights_only=False``). A pickle can
            run arbitrary code: only for files you trust.

    Raises:
        ValueError: the file holds objects that safe loading refuses, cannot be read, or is
            not a Lightning checkpoint (no ``state_dict``/``global_step``).
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not unsafe_load, mmap=True)
    except pickle.UnpicklingError as error:
        if unsafe_load:
            raise ValueError(f"{path} cannot be unpickled: {error}") from error
        reason = str(error).strip().splitlines()[-1]
        raise ValueError(
            f"{path} holds objects that safe loading (torch.load(weights_only=True)) refuses: "
            f"{reason}. If you trust the file, load it with --unsafe-load (unsafe_load=True), "
            "which lets it run arbitrary code."
        ) from error
    except (OSError, RuntimeError) as error:
        raise ValueError(f"{path} cannot be read as a checkpoint: {error}") from error
    if not isinstance(checkpoint, dict) or not {"state_dict", "global_step"} <= checkpoint.keys():
        raise ValueError(
            f"{path} is not a Lightning checkpoint (no 'state_dict' and 'global_step'); pass files "
            "saved by Trainer.save_checkpoint or ModelCheckpoint."
        )
    return checkpoint


def checkpoints_by_step(
    paths: Iterable[str | Path], unsafe_load: bool = False
) -> list[tuple[int, Path]]:
    """``(global_step, path)`` sorted by step; of checkpoints with the same step (``last.ckpt``
    beside its twin) only the first is kept."""
    by_step: dict[int, Path] = {}
    for path in map(Path, paths):
        step = int(load_checkpoint(path, unsafe_load)["global_step"])
        if step in by_step:
            rank_zero_info(f"{path.name} has the step of {by_step[step].name} ({step}); skipped.")
            continue
        by_step[step] = path
    return sorted(by_step.items())


def estimate_checkpoints(
    model: LightningModule,
    checkpoints: str | Path | Sequence[str | Path],
    dataloader: Iterable,
    *,
    output_dir: str | Path,
    unsafe_load: bool = False,
    accelerator: str = "auto",
    **monitor_args: Any,
) -> LLCMonitor:
    """Estimate the LLC (and refined LLCs) at each checkpoint, as :class:`LLCMonitor` would
    have during training.

    Args:
        model: a module of the architecture that saved the checkpoints; each checkpoint's
            ``state_dict`` is loaded into it in turn.
        checkpoints: a directory (searched recursively for ``*.ckpt``) or files.
        dataloader: the data to sample with (the run's training data).
        output_dir: where ``<name>.jsonl`` and ``milestones.json`` go.
        unsafe_load: see :func:`load_checkpoint`.
        accelerator: the ``Trainer`` accelerator (one device).
        **monitor_args: :class:`LLCMonitor` arguments (``sampler``, ``num_chains``,
            ``components``, ``milestones``, ...), except the schedule: each checkpoint's
            ``global_step`` is one estimate.

    Returns:
        The monitor, with its ``history``, ``milestones`` and ``jsonl_path``.

    Example::

        monitor = estimate_checkpoints(
            MyModule(), "lightning_logs/version_0/checkpoints", loader, output_dir="devinterp",
            sampler=SGLD(lr=1e-4, nbeta=30), components="heads",
        )
    """
    fixed = sorted(set(monitor_args) & set(_FIXED))
    if fixed:
        raise ValueError(
            f"{', '.join(fixed)} cannot be set here: the checkpoints are the schedule, and "
            "dataloader/output_dir are arguments of estimate_checkpoints."
        )
    found = checkpoints_by_step(find_checkpoints(checkpoints), unsafe_load)
    steps = [step for step, _ in found]
    monitor = LLCMonitor(
        at_steps=steps, dataloader=dataloader, output_dir=str(output_dir), **monitor_args
    )
    trainer = Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=max(steps[-1], 1),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=output_dir,
    )
    model = model.to(trainer.strategy.root_device)
    model.trainer = trainer
    trainer.strategy.connect(model)
    monitor.setup(trainer, model, "fit")
    _restore(trainer, model, found[0][1], unsafe_load)
    # Checks the inputs, starts the JSON-lines file afresh, estimates step 0 if it is first.
    monitor.on_train_start(trainer, model)
    for step, path in found:
        if any(record["step"] == step for record in monitor.history):
            continue
        _restore(trainer, model, path, unsafe_load)
        rank_zero_info(f"Estimating at {path.name} (step {step}).")
        monitor.estimate(trainer, model, step)
    monitor.on_train_end(trainer, model)  # refined milestones, milestones.json
    return monitor


def restore(model: LightningModule, path: str | Path, unsafe_load: bool = False) -> dict[str, Any]:
    """Load the weights of the checkpoint at ``path`` into ``model`` (after its
    ``on_load_checkpoint`` hook); returns the checkpoint.

    Raises:
        ValueError: the checkpoint cannot be loaded (see :func:`load_checkpoint`) or its
            weights do not fit ``model``.
    """
    checkpoint = load_checkpoint(path, unsafe_load)
    model.on_load_checkpoint(checkpoint)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise ValueError(
            f"The weights of {path} (step {checkpoint['global_step']}) do not fit "
            f"{type(model).__name__}: {error}. Build the model with the class and "
            "hyperparameters of the run that saved it."
        ) from error
    return checkpoint


def _restore(trainer: Trainer, model: LightningModule, path: Path, unsafe_load: bool) -> None:
    """Load the checkpoint's weights into ``model`` and its epoch into the trainer's record."""
    checkpoint = restore(model, path, unsafe_load)
    trainer.fit_loop.epoch_progress.current.completed = int(checkpoint.get("epoch", 0))
