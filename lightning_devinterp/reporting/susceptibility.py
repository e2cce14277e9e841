"""Susceptibilities out: an ``.npz`` per checkpoint, W&B tables and heatmap, TensorBoard
figure and text."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_devinterp.reporting.scalars import log_figure

TOKEN_COLUMNS = ["probe", "component", "rank", "token", "chi"]


def write_npz(path: Path, arrays: Mapping[str, Any]) -> Path:
    """Write ``arrays`` (name -> array-like or list of strings) to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **{name: np.asarray(value) for name, value in arrays.items()})
    tmp.replace(path)
    return path


def top_tokens_markdown(top_tokens: Mapping[str, Mapping[str, Sequence[Sequence[Any]]]]) -> str:
    """Markdown tables of the top tokens: per probe, rows ``component | rank | token | chi``."""
    lines = []
    for probe, by_component in top_tokens.items():
        lines += [f"**{probe}**", "", "| component | rank | token | chi |", "|---|---|---|---|"]
        for component, tokens in by_component.items():
            for rank, (token, value) in enumerate(tokens, 1):
                lines.append(f"| {component} | {rank} | {token} | {value:+.4g} |")
        lines.append("")
    return "\n".join(lines)


def report_susceptibilities(
    loggers: Iterable[Any],
    step: int,
    tag: str,
    response: Sequence[Sequence[float]],
    probes: Sequence[str],
    components: Sequence[str],
    top_tokens: Mapping[str, Mapping[str, Sequence[Sequence[Any]]]],
    figure: Any | None,
) -> None:
    """Give one checkpoint's susceptibilities to the loggers that show more than scalars:
    W&B gets the response matrix and the top tokens as tables and the heatmap as an image;
    TensorBoard gets the heatmap as an image and the top tokens as text."""
    loggers = list(loggers)
    if figure is not None:
        log_figure(loggers, f"{tag}/response", figure, step)
    for logger in loggers:
        kind = type(logger).__name__
        if kind == "WandbLogger":
            import wandb

            matrix = wandb.Table(
                columns=["probe", *components],
                data=[
                    [probe, *map(float, row)] for probe, row in zip(probes, response, strict=True)
                ],
            )
            tokens = wandb.Table(
                columns=TOKEN_COLUMNS,
                data=[
                    [probe, component, rank, str(token), float(value)]
                    for probe, by_component in top_tokens.items()
                    for component, found in by_component.items()
                    for rank, (token, value) in enumerate(found, 1)
                ],
            )
            logger.experiment.log(
                {
                    f"{tag}/response_table": matrix,
                    f"{tag}/top_tokens": tokens,
                    "trainer/global_step": step,
                }
            )
        elif kind == "TensorBoardLogger" and top_tokens:
            logger.experiment.add_text(f"{tag}/top_tokens", top_tokens_markdown(top_tokens), step)
            logger.experiment.flush()
