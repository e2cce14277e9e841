"""The model, the data and the loss of a run, from the command line's sources: the run's
LightningCLI config (``--config``), class paths (``--model``, ``--datamodule``,
``--loss-fn``) and the hyperparameters saved in its checkpoints."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_devinterp.callbacks.factory import instantiate, read_yaml


def load_model_and_data(options: Namespace, checkpoint: dict[str, Any]) -> tuple[Any, Any]:
    """The model and the training dataloader, from ``--config``/``--model``/``--datamodule``
    and the checkpoint's saved hyperparameters.

    Raises:
        ValueError: the model or the data cannot be determined or built.
    """
    config = _read_config(options.config) if options.config else {}
    model_spec = _spec(
        "model",
        config.get("model"),
        options.model,
        checkpoint.get("hyper_parameters"),
        options.config,
    )
    if model_spec is None:
        raise ValueError(
            "No model: pass --model pkg.module.Class (arguments from the checkpoint's "
            "hyper_parameters) or --config with the run's model: section."
        )
    model = _build(LightningModule, model_spec, "the model")
    data_spec = _spec(
        "data",
        config.get("data"),
        options.datamodule,
        checkpoint.get("datamodule_hyper_parameters"),
        options.config,
    )
    if data_spec is not None:
        datamodule = _build(LightningDataModule, data_spec, "the datamodule")
        datamodule.prepare_data()
        datamodule.setup("fit")
        return model, datamodule.train_dataloader()
    if is_overridden("train_dataloader", model):
        return model, model.train_dataloader()
    raise ValueError(
        f"No training data: {type(model).__name__} has no train_dataloader(); pass "
        "--datamodule pkg.module.Class or --config with the run's data: section."
    )


def load_loss_fn(options: Namespace) -> Any:
    """The function ``--loss-fn`` names, or None (the model's ``training_step``)."""
    return import_object(options.loss_fn, "--loss-fn") if options.loss_fn else None


def import_object(path: str, flag: str) -> Any:
    """The object at ``pkg.module.name``.

    Raises:
        ValueError: the module or the name does not exist.
    """
    module_name, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f"{flag} {path}: cannot import it ({error}); use pkg.module.name."
        ) from error


def _read_config(path: Path) -> dict[str, Any]:
    """The run's config (its ``fit:`` section for a config of LightningCLI's subcommands).

    Raises:
        ValueError: no such file, not YAML, or no ``model:``/``data:`` section.
    """
    try:
        config = read_yaml(path, "the config.yaml LightningCLI saved for the training run")
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"--config: {error}") from error
    if isinstance(config, dict) and "fit" in config and "model" not in config:
        config = config["fit"]
    if not isinstance(config, dict) or not ({"model", "data"} & config.keys()):
        raise ValueError(
            f"--config {path} has no model: or data: section; pass the config.yaml LightningCLI "
            "wrote for the training run."
        )
    return config


def _spec(
    section: str,
    content: Any,
    class_path: str | None,
    saved: dict[str, Any] | None,
    config: Path | None,
) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` from a config section, the class given on the command
    line and the hyperparameters saved in the checkpoint (keys starting with ``_`` are
    LightningCLI's bookkeeping); None when nothing names a class."""
    if isinstance(content, dict) and "class_path" in content:
        return {
            "class_path": class_path or content["class_path"],
            "init_args": content.get("init_args") or {},
        }
    if content is not None and not isinstance(content, dict):
        raise ValueError(f"--config {config}: {section}: must be a mapping, got {content!r}.")
    if class_path is None:
        if content:
            flag = "--model" if section == "model" else "--datamodule"
            raise ValueError(
                f"--config {config}: the {section}: section has no class_path; pass {flag} "
                "pkg.module.Class."
            )
        return None
    init_args = content if content is not None else saved or {}
    return {
        "class_path": class_path,
        "init_args": {k: v for k, v in dict(init_args).items() if not str(k).startswith("_")},
    }


def _build(base: type, spec: dict[str, Any], what: str) -> Any:
    return instantiate(base, spec, f"{what} {spec['class_path']}")
