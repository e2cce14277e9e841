"""An overhead budget: how often a monitor can afford to estimate, from measured wall-clock time.

Time is split in two. *Analysis*: the wall clock inside the monitor's hooks (estimates,
calibration, figures, files). *Training*: the wall clock between them (training steps, and
whatever else the run does meanwhile: validation, other callbacks, checkpoints). With a
budget ``f`` the analysis share ``A / (T + A)`` of wall-clock time should stay at most ``f``,
i.e. the run is at most ``1 / (1 - f)`` times slower than without the monitor.

The rule. After each estimate at step ``s``, with ``T`` and ``A`` the seconds of training and
analysis so far and ``c`` the expected cost of an estimate (the median of the last five), the
next one is affordable once training has reached ``T' = (A + c)(1 - f) / f`` seconds (then
``(A + c) / (T' + A + c) = f``). With ``tau`` the mean training seconds per step so far, that is
step ``s + ceil((T' - T) / tau)``: the decision is made in steps, so every process of a DDP run
makes the same one (rank 0's step is kept by all). A scheduled step before it is *deferred*:
its estimate runs at the first step the budget allows, unless the next scheduled step comes
first, which takes its place (the earlier one is *skipped*). So at most one estimate waits, the
curve never gets more points than the schedule asked for, points land on the schedule's steps
whenever the budget allows them there, and the others a few steps later, as near their step as
the budget allows (a later point is still a point of the curve; a skipped one is lost).

The first estimate always runs (there is no cost to go by yet; its cost is repaid by a longer
wait before the next one), and so does an explicitly forced one (``at_train_end``).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

#: Estimates whose cost predicts the next one (their median).
COST_WINDOW = 5


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
        name: the monitor's name, for the log.

    Attributes:
        training_seconds: wall clock spent outside the monitor's hooks so far.
        analysis_seconds: wall clock spent inside them.
        steps_trained: optimizer steps during ``training_seconds``.
        costs: seconds of the last estimates (at most :data:`COST_WINDOW`).
        next_step: the first step at which the next estimate is affordable (None: now).
        pending: the scheduled step whose estimate is deferred, if any.
        skipped: scheduled steps dropped since the last estimate.
    """

    def __init__(self, max_overhead: float, name: str = "llc") -> None:
        self.max_overhead = check_max_overhead(max_overhead)
        self.name = name
        self.training_seconds = 0.0
        self.analysis_seconds = 0.0
        self.steps_trained = 0
        self.costs: list[float] = []
        self.next_step: int | None = None
        self.pending: int | None = None
        self.skipped: list[int] = []
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

    def admit(self, step: int, due: bool) -> int | None:
        """Whether to estimate at ``step``, given whether the schedule asks for it.

        Returns the scheduled step the estimate now stands for (``step`` itself, or a deferred
        earlier one), or None to wait. Deferrals and skips are logged at INFO.
        """
        if due:
            if self.pending is not None:
                self.skipped.append(self.pending)
                rank_zero_info(
                    f"LLCMonitor({self.name}): the deferred estimate of step {self.pending} is "
                    f"skipped; step {step} is scheduled before the budget allowed it."
                )
            self.pending = step
        if self.pending is None:
            return None
        if self.next_step is not None and step < self.next_step:
            if due:
                rank_zero_info(
                    f"LLCMonitor({self.name}): estimate at step {step} deferred to step "
                    f">= {self.next_step} (max_overhead={self.max_overhead:g}; analysis so far "
                    f"{self.share:.1%} of wall-clock time)."
                )
            return None
        scheduled, self.pending = self.pending, None
        if scheduled != step:
            rank_zero_info(
                f"LLCMonitor({self.name}): the estimate of step {scheduled} runs at step {step}."
            )
        return scheduled

    def drop_pending(self, reason: str) -> None:
        """Skip the deferred estimate, if any (the run ends before the budget allows it)."""
        if self.pending is not None:
            rank_zero_info(
                f"LLCMonitor({self.name}): the deferred estimate of step {self.pending} is "
                f"skipped: {reason}."
            )
            self.skipped.append(self.pending)
            self.pending = None

    def plan(self, step: int, cost: float) -> int:
        """After an estimate at ``step`` that took ``cost`` seconds: the first step at which the
        next one is affordable (on this process; see the module's docstring)."""
        self.costs = [*self.costs, cost][-COST_WINDOW:]
        expected = statistics.median_low(self.costs)
        f = self.max_overhead
        needed = (self.analysis_seconds + expected) * (1 - f) / f - self.training_seconds
        if needed <= 0:
            return step
        if self.steps_trained == 0:  # no step time measured yet: decide after one step
            return step + 1
        per_step = self.training_seconds / self.steps_trained
        return step + max(math.ceil(needed / per_step), 1)

    def record(self) -> dict[str, Any]:
        """What the next record carries: the share so far and the steps skipped since the last
        record (the field ``<name>/deferred_from`` is added by the caller)."""
        skipped, self.skipped = self.skipped, []
        return {"overhead": self.share, "skipped": skipped}

    def state_dict(self) -> dict[str, Any]:
        return {
            "training_seconds": self.training_seconds,
            "analysis_seconds": self.analysis_seconds,
            "steps_trained": self.steps_trained,
            "costs": list(self.costs),
            "next_step": self.next_step,
            "pending": self.pending,
            "skipped": list(self.skipped),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.training_seconds = float(state["training_seconds"])
        self.analysis_seconds = float(state["analysis_seconds"])
        self.steps_trained = int(state["steps_trained"])
        self.costs = [float(c) for c in state["costs"]]
        self.next_step = state["next_step"]
        self.pending = state["pending"]
        self.skipped = list(state["skipped"])
