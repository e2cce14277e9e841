"""Which record entries each detector reads, and where a monitor's milestone file lives."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_devinterp.milestones.records import Milestone, Stage

PER_CHAIN = "/per_chain"
#: Chains whose R-hat exceeds this disagree: the estimate is transient.
RHAT_TRANSIENT = 1.5


def milestones_filename(name: str) -> str:
    """The milestone file of the monitor ``name``, beside its ``<name>.jsonl``:
    ``milestones.json`` for the default ``llc``, else ``<name>_milestones.json``."""
    return "milestones.json" if name == "llc" else f"{name}_milestones.json"


def loss_series(name: str) -> str:
    """The series of the monitor ``name``'s L(w*) detector: ``loss`` for the default ``llc``,
    else ``<name>/loss`` (a detector named ``loss`` reads L(w*) in any monitor)."""
    return "loss" if name == "llc" else f"{name}/loss"


def train_loss_series(name: str) -> str:
    """The series of the monitor ``name``'s training-loss detector: ``train_loss`` for the
    default ``llc``, else ``<name>/train_loss``. Not in the records: the monitor feeds it the
    loss ``training_step`` returns, averaged over log-step bins."""
    return "train_loss" if name == "llc" else f"{name}/train_loss"


def series_keys(series: str, name: str) -> tuple[str, str | None]:
    """The entries of the monitor ``name``'s records that a detector of ``series`` reads: its
    value and its std (L(w*), series ``loss`` or :func:`loss_series`, is ``<name>/init_loss``
    without a std; any other series ``<series>/mean`` and ``<series>/std``)."""
    if series in ("loss", loss_series(name)):
        return f"{name}/init_loss", None
    return f"{series}/mean", f"{series}/std"


def estimate_prefixes(record: Mapping[str, Any]) -> list[str]:
    """The prefixes of the estimates in a monitor's record (each with ``<prefix>/per_chain``:
    ``llc``, ``rllc/l0h1``, ``llc_code``, ...), in record order."""
    return [key[: -len(PER_CHAIN)] for key in record if key.endswith(PER_CHAIN)]


def transient(record: Mapping[str, Any], series: str) -> bool:
    """Whether the estimate of ``series`` in ``record`` is not yet trustworthy: negative (the
    weights are not near a minimum), with diverged chains, or chains that disagree (R-hat
    above :data:`RHAT_TRANSIENT`)."""
    health = {k: record.get(f"{series}/health/{k}") for k in ("negative", "diverged_chains")}
    rhat = record.get(f"{series}/health/rhat")
    flagged = any(isinstance(v, int | float) and v > 0 for v in health.values())
    return flagged or (isinstance(rhat, int | float) and rhat > RHAT_TRANSIENT)


def write_milestones_json(
    path: Path,
    online: Sequence[Milestone],
    refined: Sequence[Milestone],
    stages: dict[str, Sequence[Stage]],
    held_back: Sequence[Milestone] = (),
) -> None:
    """Write the online, refined and held-back milestones and the stages of each series to
    ``path`` (atomically: a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {
        "online": [m.to_dict() for m in online],
        "refined": [m.to_dict() for m in refined],
        "held_back": [m.to_dict() for m in held_back],
        "stages": {series: [s.to_dict() for s in found] for series, found in stages.items()},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content, indent=2))
    tmp.replace(path)
