"""TensorBoard extras: a custom-scalars layout that draws related curves in one chart."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def curve_layout(groups: Mapping[str, Sequence[str]], metric_prefix: str) -> dict[str, Any]:
    """A custom-scalars layout with one multi-line chart per group of components.

    ``groups`` maps a group (for example a layer, ``"l0"``) to its component names; each chart
    draws ``<metric_prefix>/<component>/mean`` for every component of the group.
    """
    charts = {
        group: [
            "Multiline",
            [f"^{re.escape(metric_prefix)}/({'|'.join(map(re.escape, names))})/mean$"],
        ]
        for group, names in groups.items()
        if names
    }
    return {metric_prefix: charts} if charts else {}


def write_layout(loggers: Iterable[Any], layout: dict[str, Any]) -> None:
    """Give ``layout`` to every TensorBoard logger among ``loggers``."""
    if not layout:
        return
    for logger in loggers:
        writer = getattr(logger, "experiment", None)
        if type(logger).__name__ == "TensorBoardLogger" and hasattr(writer, "add_custom_scalars"):
            writer.add_custom_scalars(layout)
            writer.flush()
