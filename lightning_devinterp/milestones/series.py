"""Which record entries each detector reads, and where a monitor's milestone file lives."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from lightning_devinterp.milestones.records import Milestone, Stage


def milestones_filename(name: str) -> str:
    """The milestone file of the monitor ``name``, beside its ``<name>.jsonl``:
    ``milestones.json`` for the default ``llc``, else ``<name>_milestones.json``."""
    return "milestones.json" if name == "llc" else f"{name}_milestones.json"


def loss_series(name: str) -> str:
    """The series of the monitor ``name``'s L(w*) detector: ``loss`` for the default ``llc``,
    else ``<name>/loss`` (a detector named ``loss`` reads L(w*) in any monitor)."""
    return "loss" if name == "llc" else f"{name}/loss"


def series_keys(series: str, name: str) -> tuple[str, str | None]:
    """The entries of the monitor ``name``'s records that a detector of ``series`` reads: its
    value and its std (L(w*), series ``loss`` or :func:`loss_series`, is ``<name>/init_loss``
    without a std; any other series ``<series>/mean`` and ``<series>/std``)."""
    if series in ("loss", loss_series(name)):
        return f"{name}/init_loss", None
    return f"{series}/mean", f"{series}/std"


def write_milestones_json(
    path: Path,
    online: Sequence[Milestone],
    refined: Sequence[Milestone],
    stages: dict[str, Sequence[Stage]],
) -> None:
    """Write the online and refined milestones and the stages of each series to ``path``
    (atomically: a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {
        "online": [m.to_dict() for m in online],
        "refined": [m.to_dict() for m in refined],
        "stages": {series: [s.to_dict() for s in found] for series, found in stages.items()},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content, indent=2))
    tmp.replace(path)
