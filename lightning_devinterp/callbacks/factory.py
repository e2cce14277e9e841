"""Callbacks for an unchanged training script, from a YAML file named by an environment variable.

Lightning calls every function registered in the entry-point group
``lightning.pytorch.callbacks_factory`` in ``Trainer.__init__`` and appends what it returns to
the trainer's callbacks. This package registers :func:`callbacks_from_env`: with
``LIGHTNING_DEVINTERP_CONFIG=monitors.yaml`` set, every Trainer gets the callbacks that file
lists, in the ``trainer.callbacks`` format of a LightningCLI config::

    - class_path: lightning_devinterp.LLCMonitor
      init_args:
        num_estimates: 30
        sampler:
          class_path: lightning_devinterp.SGLD
          init_args: {lr: 1e-4, nbeta: 30, localization: 100}

Without the variable it returns no callback.
"""

from __future__ import annotations

import os
from argparse import ArgumentError
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

#: The environment variable that names the YAML file of callbacks.
ENV_VAR = "LIGHTNING_DEVINTERP_CONFIG"


def callbacks_from_env() -> list[Callback]:
    """The callbacks listed in the file ``$LIGHTNING_DEVINTERP_CONFIG`` names; ``[]`` when the
    variable is unset or empty.

    Raises:
        ValueError: the file is missing or unreadable, or a callback cannot be built; the
            message names the variable, the file and the problem.
    """
    path = os.environ.get(ENV_VAR, "").strip()
    if not path:
        return []
    try:
        return callbacks_from_yaml(path)
    except (OSError, ValueError, TypeError, ImportError) as error:
        raise ValueError(f"{ENV_VAR}={path}: {error}") from error


def callbacks_from_yaml(path: str | Path) -> list[Callback]:
    """The callbacks a YAML file lists: a list of ``class_path``/``init_args`` entries, or a
    LightningCLI config whose ``trainer.callbacks`` (or top-level ``callbacks``) holds one.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not YAML, no list of callbacks, or a callback that cannot be built.
    """
    content = read_yaml(path, "a YAML file of callbacks")
    if isinstance(content, dict):
        trainer = content.get("trainer")
        inner = trainer if isinstance(trainer, dict) and "callbacks" in trainer else content
        content = inner.get("callbacks")
    if not isinstance(content, list):
        raise ValueError(
            f"{path} lists no callbacks; write a YAML list of entries such as "
            "'- class_path: lightning_devinterp.LLCMonitor' with their 'init_args'."
        )
    return instantiate(list[Callback], content, f"the callbacks of {path}")


def read_yaml(path: str | Path, expected: str) -> Any:
    """The content of the YAML file at ``path`` (``yaml.safe_load``): the one reader of
    configuration files, for this factory and the command line's ``--config``.

    Args:
        path: the file.
        expected: what the file should be, for the message when it is missing.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not valid YAML.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}; point it to {expected}.")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML ({error}).") from error


def instantiate(kind: Any, value: Any, what: str) -> Any:
    """``value`` built as ``kind`` the way LightningCLI builds its config: ``class_path`` and
    ``init_args`` mappings (nested ones too), arguments converted and checked against the
    classes' signatures (jsonargparse).

    Raises:
        ValueError: ``value`` does not describe a ``kind``; the message names ``what``.
        ImportError: jsonargparse is missing.
    """
    try:
        from jsonargparse import ArgumentParser
    except ImportError as error:
        raise ImportError(
            "Building classes from a config needs jsonargparse: "
            "pip install lightning-devinterp[cli]"
        ) from error
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--value", type=kind)
    try:
        config = parser.parse_object({"value": value})
    except ArgumentError as error:
        raise ValueError(f"cannot build {what}: {error}") from error
    return parser.instantiate(config).value
