"""An overhead budget: how often a monitor can afford to estimate, from measured wall-clock time.

Time is split in two. *Analysis*: the wall clock inside the monitor's hooks (estimates,
calibration, figures, files). *Training*: the wall clock between them (training steps, and
whatever else the run does meanwhile: validation, other callbacks, checkpoints). With a
budget ``f`` the analysis share ``A / (T + A)`` of wall-clock time should stay at most ``f``,
i.e. the run is at most ``1 / (1 - f)`` times slower than without the monitor.

The rule. With ``T`` and ``A`` the seconds of training and analysis so far and ``c`` the
expected cost of an estimate, an estimate is *affordable* when ``A + c <= f (T + A + c)``:
after it, the share is at most ``f``. ``c`` is the lower median of the last five estimates'
costs; before the first one, its SGLD steps times ``tau``, the mean training seconds per
optimizer step so far (an SGLD step costs about one training step, see BENCHMARKS.md; with
Lightning's per-step overhead on a small model this overestimates, so the first estimate comes
late rather than over budget), and nothing is affordable before one step has been timed. The
clock is read only at *checkpoints*, steps planned ahead: the training seconds still needed,
``(A + c)(1 - f) / f - T``, divided by ``tau`` give the step at which an estimate should be
affordable; if the clock says it is not yet (``tau`` was off), a new checkpoint is planned the
same way from there. Every process of a DDP run follows rank 0's clock (one small gather per
checkpoint), so all make the same decision.

A scheduled step at which no estimate is affordable is *deferred*: its estimate runs at the
first checkpoint where one is, unless the next scheduled step comes first and takes its place
(the earlier one is *skipped*). So at most one estimate waits, the curve never gets more points
than the schedule asked for, points land on the schedule's steps whenever the budget allows
them there and otherwise at the first step it does (a later point is still a point of the
curve; a skipped one is lost, which is why deferring is preferred to skipping).

An explicitly forced estimate (``at_train_end``) always runs.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

#: Estimates whose cost predicts the next one (the lower median of their costs).
COST_WINDOW = 5

#: ``sync(value)`` -> rank 0's value, the same on every process.
Sync = Callable[[Any], Any]


def check_max_overhead(max_overhead: Any) -> float | None:
    """``max_overhead`` as a float in (0, 1), or None for no budget.

    Raises:
        ValueError: it is not a number strictly between 0 and 1.
    """
    if max_overhead is None:
        return None
    if (
        isinstance(max_overhead, bool)
        or not isinstance(max_overhead, (int, float))
        or not 0 < max_overhead < 1
    ):
        raise ValueError(
            f"max_overhead={max_overhead!r} is invalid; use the largest share of wall-clock time "
            "for analysis, strictly between 0 and 1 (0.2: at most 20%), or None for no budget."
        )
    return float(max_overhead)


class OverheadBudget:
    """Spaces a monitor's estimates so that analysis stays within ``max_overhead`` of wall-clock
    time (see the module's docstring for the rule).

    Args:
        max_overhead: the largest share of wall-clock time for analysis, in (0, 1).
        label: how the log names the monitor ("LLCMonitor(llc)").

    Attributes:
        sgld_steps: the SGLD steps of the next estimate on this process, whose cost predicts
            the first one's (set by the monitor).
        training_seconds: wall clock spent outside the monitor's hooks so far.
        analysis_seconds: wall clock spent inside them.
        steps_trained: optimizer steps during ``training_seconds``.
        costs: seconds of the last estimates (at most :data:`COST_WINDOW`).
        checkpoint: the step at which the clock is next read (None: at the next scheduled one).
        pending: the scheduled step whose estimate is deferred, if any.
        skipped: the first and last scheduled steps dropped since the last record, and their
            number (``(first, last, count)``), or None.
    """

    def __init__(self, max_overhead: float, label: str = "LLCMonitor(llc)") -> None:
        checked = check_max_overhead(max_overhead)
        if checked is None:
            raise ValueError("OverheadBudget needs a max_overhead in (0, 1), got None.")
        self.max_overhead = checked
        self.label = label
        self.training_seconds = 0.0
        self.analysis_seconds = 0.0
        self.steps_trained = 0
        self.costs: list[float] = []
        self.sgld_steps = 0
        self.checkpoint: int | None = None
        self.pending: int | None = None
        self.skipped: tuple[int, int, int] | None = None
        self._mark = time.perf_counter()
        self._step = 0

    @property
    def share(self) -> float:
        """Analysis seconds over all seconds so far (0 before any)."""
        total = self.training_seconds + self.analysis_seconds
        return self.analysis_seconds / total if total > 0 else 0.0

    def start(self, step: int) -> None:
        """Start the clock at ``step`` (on train start, also after a resume)."""
        self._mark = time.perf_counter()
        self._step = step

    def trained(self, step: int) -> None:
        """Entering a hook at ``step``: the time since the last mark was training."""
        now = time.perf_counter()
        self.training_seconds += now - self._mark
        self.steps_trained += max(step - self._step, 0)
        self._step = step
        self._mark = now

    def analysed(self) -> None:
        """Leaving a hook: the time since the last mark was analysis."""
        now = time.perf_counter()
        self.analysis_seconds += now - self._mark
        self._mark = now

    def admit(self, step: int, due: bool, sync: Sync, asked: int | None = None) -> int | None:
        """Whether to estimate at ``step``, given whether the schedule asks for it (for the
        scheduled step ``asked``, default ``step``).

        Returns the scheduled step the estimate now stands for (``step`` itself, or a deferred
        earlier one), or None to wait. At a checkpoint the clock is read on rank 0 and
        ``sync`` shares its decision. An estimate that was deferred or comes after skipped
        steps is logged at INFO when it runs (not at every step it waits).
        """
        if due:
            if self.pending is not None:
                self._skip(self.pending)
            self.pending = step if asked is None else asked
        if self.pending is None:
            return None
        if self.checkpoint is None or step >= self.checkpoint:
            self.checkpoint = sync(self._next_checkpoint(step))
        if self.checkpoint is not None and step < self.checkpoint:
            return None
        scheduled, self.pending = self.pending, None
        if scheduled != step or self.skipped is not None:
            rank_zero_info(
                f"{self.label}: within max_overhead={self.max_overhead:g}, the "
                f"estimate of step {scheduled} runs at step {step}{self._skipped_text()}."
            )
        return scheduled

    def drop_pending(self, reason: str) -> None:
        """Skip the deferred estimate, if any, saying why at INFO."""
        if self.pending is not None:
            self._skip(self.pending)
            self.pending = None
            rank_zero_info(
                f"{self.label}: within max_overhead={self.max_overhead:g}, "
                f"{self._skipped_text().removeprefix('; ')}: {reason}."
            )

    def _skip(self, step: int) -> None:
        first, _, count = self.skipped or (step, step, 0)
        self.skipped = (first, step, count + 1)

    def _skipped_text(self) -> str:
        if self.skipped is None:
            return ""
        first, last, count = self.skipped
        steps = f"step {first}" if count == 1 else f"{count} scheduled steps from {first} to {last}"
        return f"; skipped since the last estimate: {steps}"

    def spent(self, step: int, cost: float, sync: Sync) -> None:
        """After an estimate at ``step`` that took ``cost`` seconds: plan the next checkpoint."""
        self.costs = [*self.costs, cost][-COST_WINDOW:]
        self.checkpoint = sync(self._next_checkpoint(step))

    def _next_checkpoint(self, step: int) -> int | None:
        """None if an estimate is affordable now, else the step at which it should be."""
        if self.steps_trained == 0:  # no step timed yet: look again after one
            return step + 1
        per_step = self.training_seconds / self.steps_trained
        expected = statistics.median_low(self.costs) if self.costs else self.sgld_steps * per_step
        f = self.max_overhead
        needed = (self.analysis_seconds + expected) * (1 - f) / f - self.training_seconds
        if needed <= 0:
            return None
        return step + max(math.ceil(needed / per_step), 1)

    def record(self) -> dict[str, Any]:
        """What the next record carries: the share so far and the number of scheduled steps
        skipped since the last record (the caller adds ``deferred_from``)."""
        skipped = self.skipped[2] if self.skipped is not None else 0
        self.skipped = None
        return {"overhead": self.share, "skipped": skipped}

    def state_dict(self) -> dict[str, Any]:
        return {
            "training_seconds": self.training_seconds,
            "analysis_seconds": self.analysis_seconds,
            "steps_trained": self.steps_trained,
            "costs": list(self.costs),
            "checkpoint": self.checkpoint,
            "pending": self.pending,
            "skipped": list(self.skipped) if self.skipped is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.training_seconds = float(state["training_seconds"])
        self.analysis_seconds = float(state["analysis_seconds"])
        self.steps_trained = int(state["steps_trained"])
        self.costs = [float(c) for c in state["costs"]]
        self.checkpoint = state["checkpoint"]
        self.pending = state["pending"]
        self.skipped = tuple(state["skipped"]) if state["skipped"] is not None else None
