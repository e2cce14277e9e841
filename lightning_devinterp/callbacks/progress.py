"""A monitor's sampling in Lightning's progress bar: a nested bar under the training bar.

While a monitor samples, the training bar stands still; a second bar under it (where Lightning
shows validation) says what is being sampled and how many SGLD steps are done, and is removed
afterwards, so the training bar's line is never rewritten. Works with ``TQDMProgressBar`` and
``RichProgressBar`` (and their subclasses); with any other bar, a disabled one (``refresh_rate=0``,
ranks other than 0) or none, it does nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

#: The longest description on a bar of its own line (TQDM).
MAX_DESCRIPTION = 24


class SamplingProgress:
    """Context manager and ``progress(done_steps, total_steps)`` callback of one sampling run.

    The sampling engine reports progress every 32 SGLD steps (when it checks the chains for
    divergence), per job: ``done`` restarts from the beginning for each job (the whole model,
    then each component, for each data set, in the order of ``jobs``), so a call whose ``done``
    is not larger than the previous one starts the next job. The bar counts SGLD steps over all
    jobs. TQDM redraws at most every 0.1 s (its ``mininterval``) and Rich from its own refresh
    thread, so a call costs microseconds.

    Args:
        trainer: the trainer whose ``progress_bar_callback`` shows the bar.
        title: the monitor's name.
        jobs: the names of the sampling jobs in the order the engine runs them (e.g.
            ``["llc", "rllc/l0h0", ...]``); empty when unknown.

    Example::

        with SamplingProgress(trainer, "llc", ["llc", "rllc/l0h0"]) as progress:
            sample_components(model, loader, components=[None, head], progress=progress)
    """

    def __init__(self, trainer: Trainer, title: str, jobs: Sequence[str] = ()) -> None:
        self.title = title
        self.jobs = list(jobs)
        self.job = 0
        self._last_done: int | None = None
        bar = trainer.progress_bar_callback
        self._view: _TqdmView | _RichView | None = None
        if isinstance(bar, TQDMProgressBar) and bar.is_enabled:
            self._view = _TqdmView(bar)
        elif isinstance(bar, RichProgressBar) and bar.is_enabled and bar.progress is not None:
            self._view = _RichView(bar)

    def describe(self, width: int = MAX_DESCRIPTION) -> str:
        """What is sampled, in at most ``width`` characters: the first that fits of
        ``"<title>: <job> <i>/<n>"``, ``"<job> <i>/<n>"``, ``"<job>"`` (``<job>`` is
        ``"sampling"`` without jobs), else the end of ``<job>`` after an ellipsis."""
        job = self.jobs[min(self.job, len(self.jobs) - 1)] if self.jobs else "sampling"
        counter = f" {self.job + 1}/{len(self.jobs)}" if len(self.jobs) > 1 else ""
        for text in (f"{self.title}: {job}{counter}", f"{job}{counter}", job):
            if len(text) <= width:
                return text
        return "\u2026" + job[len(job) - width + 1 :]

    def __enter__(self) -> SamplingProgress:
        if self._view is not None:
            self._view.open(self.describe(self._view.width))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._view is not None:
            self._view.close()

    def __call__(self, done: int, total: int) -> None:
        """Record that ``done`` of the current job's ``total`` SGLD steps have run."""
        if self._last_done is not None and done <= self._last_done:
            self.job += 1
        self._last_done = done
        if self._view is None:
            return
        jobs = max(len(self.jobs), 1)
        self._view.show(self.describe(self._view.width), self.job * total + done, jobs * total)


class _TqdmView:
    """A ``leave=False`` tqdm bar one line under the training bar (its own line, so its
    description may be longer than the training bar's)."""

    width = MAX_DESCRIPTION

    def __init__(self, bar: TQDMProgressBar) -> None:
        self.owner = bar
        self.bar: Tqdm | None = None
        self.description = ""

    def open(self, description: str) -> None:
        self.description = description
        self.bar = Tqdm(
            desc=description,
            position=2 * self.owner.process_position + 1,
            leave=False,
            dynamic_ncols=True,
            file=sys.stdout,
            bar_format=self.owner.BAR_FORMAT,
        )

    def show(self, description: str, done: int, total: int) -> None:
        assert self.bar is not None
        if self.bar.total != total or self.description != description:  # a new job: redraw
            self.description = description
            self.bar.total = total
            self.bar.set_description(description, refresh=False)
            self.bar.n = done
            self.bar.refresh()
        else:  # tqdm redraws at most every mininterval
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _RichView:
    """A task of the Rich progress display, below the training task, removed at the end. Its
    description is no wider than the training task's (or Lightning's validation description),
    so the columns they share stay where they are."""

    def __init__(self, bar: RichProgressBar) -> None:
        from rich.text import Text

        self.owner = bar
        self.task: Any = None
        self.width = len(bar.validation_description)
        if bar.train_progress_bar_id is not None:
            shown = Text.from_markup(bar.train_progress_bar.description)
            self.width = max(self.width, shown.cell_len)

    def _styled(self, description: str) -> str:
        from rich.markup import escape

        style = self.owner.theme.description
        return f"[{style}]{escape(description)}" if style else escape(description)

    def open(self, description: str) -> None:
        assert self.owner.progress is not None
        self.task = self.owner.progress.add_task(self._styled(description), total=float("inf"))
        self.owner.refresh()

    def show(self, description: str, done: int, total: int) -> None:
        assert self.owner.progress is not None
        self.owner.progress.update(
            self.task, completed=done, total=total, description=self._styled(description)
        )
        self.owner.refresh()

    def close(self) -> None:
        progress = self.owner.progress
        if progress is not None and self.task is not None and self.task in progress.task_ids:
            progress.remove_task(self.task)
            self.owner.refresh()
        self.task = None
