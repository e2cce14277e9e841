"""When to estimate: every n steps, a number of log-spaced steps, or explicit steps."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Log-spaced estimates when no schedule is given.
DEFAULT_NUM_ESTIMATES = 30
#: ``num_estimates`` start at step ``last_step ** FIRST_POWER`` (13 of 5,000, 32 of 100,000):
#: the log-steps before it are the first 30% of the run's, spent near the initialization.
FIRST_POWER = 0.3


class Schedule:
    """The training steps (``trainer.global_step``) at which an analysis runs.

    Give at most one of ``every_n_steps``, ``num_estimates`` or ``at_steps``; with none,
    ``num_estimates=30`` log-spaced over the run. Step 0 means before the first update.

    Args:
        every_n_steps: every n optimizer steps (n, 2n, ...).
        num_estimates: this many steps, log-spaced from :func:`first_spaced_step` to the run's
            last step.
        at_steps: exactly these steps.
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        num_estimates: int | None = None,
        at_steps: Sequence[int] | None = None,
    ) -> None:
        given = [
            n
            for n, v in (
                ("every_n_steps", every_n_steps),
                ("num_estimates", num_estimates),
                ("at_steps", at_steps),
            )
            if v is not None
        ]
        if len(given) > 1:
            raise ValueError(
                f"Give only one of every_n_steps, num_estimates, at_steps (got {', '.join(given)})."
            )
        for name, value in (("every_n_steps", every_n_steps), ("num_estimates", num_estimates)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name}={value!r} is invalid; use an integer >= 1.")
        if at_steps is not None:
            steps = list(at_steps)
            if not steps or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in steps
            ):
                raise ValueError(
                    f"at_steps={at_steps!r} is invalid; use a non-empty list of integers >= 0."
                )
            at_steps = sorted(set(steps))
        if not given:
            num_estimates = DEFAULT_NUM_ESTIMATES
        self.every_n_steps = every_n_steps
        self.num_estimates = num_estimates
        self.at_steps = at_steps
        self._steps: set[int] | None = set(at_steps) if at_steps is not None else None

    def resolve(self, last_step: float) -> None:
        """Fix the steps for a run whose last optimizer step is ``last_step``.

        Raises ``ValueError`` if the schedule selects no step of the run.
        """
        if self.num_estimates is not None:
            if not math.isfinite(last_step) or last_step < 1:
                raise ValueError(
                    "num_estimates needs the run's length, but the trainer has no finite max_steps "
                    "or max_epochs; set max_steps, or use every_n_steps or at_steps."
                )
            last = int(last_step)
            self._steps = log_spaced_steps(last, self.num_estimates, first_spaced_step(last))
        first = (
            self.every_n_steps if self.every_n_steps is not None else min(self._steps or {math.inf})
        )
        if first > last_step:
            raise ValueError(
                f"The schedule selects no step of this run (first step {first}, the run ends at "
                f"step {last_step}); choose steps up to {last_step}."
            )

    def per_decade(self, last_step: int) -> float:
        """Scheduled steps per decade of steps, from the first scheduled step to ``last_step``
        (at least one decade)."""
        if self.every_n_steps is not None:
            count, first = last_step // self.every_n_steps, self.every_n_steps
        else:
            steps = [s for s in self._steps or () if s <= last_step]
            count, first = len(steps), max(min(steps, default=1), 1)
        return count / max(math.log10(last_step / first), 1.0)

    def count_between(self, after: int, last_step: int) -> int:
        """Scheduled steps in ``(after, last_step]``."""
        if self.every_n_steps is not None:
            return max(last_step // self.every_n_steps - after // self.every_n_steps, 0)
        return sum(after < s <= last_step for s in self._steps or ())

    def first_due(self, after: int | None, step: int) -> int | None:
        """The first scheduled step in ``(after, step]`` (just ``step`` when ``after`` is
        None), or None: a step is never lost when ``global_step`` moves by more than one (two
        optimizers stepping per batch)."""
        if after is None or after >= step:
            return step if after is None and self.is_due(step) else None
        if self.every_n_steps is not None:
            first = (after // self.every_n_steps + 1) * self.every_n_steps
            return first if 0 < first <= step else None
        return min((s for s in self._steps or () if after < s <= step), default=None)

    def is_due(self, step: int) -> bool:
        """Whether ``step`` is scheduled."""
        if self.every_n_steps is not None:
            return step > 0 and step % self.every_n_steps == 0
        return self._steps is not None and step in self._steps


def first_spaced_step(last_step: int) -> int:
    """The first of ``num_estimates``' log-spaced steps in a run ending at ``last_step``:
    ``last_step ** FIRST_POWER``, rounded. The steps before it are the first 30% of the run's
    log-steps, where the weights are still near their initialization; the estimates after it
    are 1.4 times as many per decade as over the whole run (on a deep linear network's
    transitions, 30 estimates from step 13 of 5,000 find 160 of 172, from step 1 150:
    BENCHMARKS.md)."""
    return max(1, round(last_step**FIRST_POWER))


def log_spaced_steps(last_step: int, count: int, first: int = 1) -> set[int]:
    """``count`` distinct steps from ``first`` to ``last_step``, as evenly spaced in log(step)
    as integers allow (fewer when the range holds fewer than ``count`` steps)."""
    count = min(count, last_step - first + 1)
    points = count
    while True:
        grid = np.geomspace(first, last_step, points)
        steps = set(np.unique(np.round(grid)).astype(int).tolist())
        if len(steps) >= count or points > 4 * count + last_step:
            return steps
        points += 1
