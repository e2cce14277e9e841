"""Live figures of a monitor: when to draw them, and where they go (loggers that show images,
and a PNG file each, overwritten with the latest)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_debug, rank_zero_info

from lightning_devinterp.reporting import log_figure
from lightning_devinterp.reporting.figures import figure_image, save_png

#: Draw the figures at every this many estimates by default.
DEFAULT_FIGURE_EVERY = 5


def check_figure_every(figure_every: Any) -> int | None:
    """``figure_every`` as an integer >= 1, or None.

    Raises:
        ValueError: it is not a positive integer nor None.
    """
    if figure_every is not None and (
        isinstance(figure_every, bool) or not isinstance(figure_every, int) or figure_every < 1
    ):
        raise ValueError(
            f"figure_every={figure_every!r} is invalid; use an integer >= 1 (draw the figures "
            "at every n-th estimate), or None for no figures."
        )
    return figure_every


class LiveFigures:
    """Draws a monitor's figures at a sensible cadence: at every ``every``-th estimate, at an
    estimate that confirmed a milestone, and at train end (if anything changed since); on rank
    0 only. Each figure goes to every logger that shows images (TensorBoard, W&B) at the
    current step and to ``<folder>/<tag with '/' as '_'>.png``.

    Without matplotlib, figures are skipped: one INFO message, then silence.

    Args:
        every: the cadence in estimates; None for no figures at all.
        label: how the log names the monitor ("LLCMonitor(llc)").
    """

    def __init__(self, every: int | None, label: str) -> None:
        self.every = check_figure_every(every)
        self.label = label
        self.available = True

    def due(self, estimates: int, milestone: bool) -> bool:
        """Whether the estimate that brought the count to ``estimates`` should be drawn."""
        return self.every is not None and (milestone or estimates % self.every == 0)

    def draw(
        self,
        trainer: Trainer,
        folder: Path | None,
        figures: Mapping[str, Callable[[], Any]],
        step: int,
    ) -> list[str]:
        """Build each figure (``tag -> builder``) and send it out; the tags drawn. A builder
        that raises ``ValueError`` has nothing to draw yet and is left out."""
        if self.every is None or not self.available or not trainer.is_global_zero:
            return []
        drawn = []
        for tag, build in figures.items():
            try:
                figure = build()
            except ImportError as error:
                self.available = False
                rank_zero_info(f"{self.label}: figures skipped ({error}).")
                return drawn
            except ValueError as error:
                rank_zero_debug(f"{self.label}: no {tag} figure yet ({error}).")
                continue
            image = figure_image(figure)
            if folder is not None:
                save_png(image, folder / f"{tag.replace('/', '_')}.png")
            log_figure(trainer.loggers, tag, image, step)
            drawn.append(tag)
        return drawn
