"""The training loss watched at every step: its milestones, and extra estimates at its bends.

The training loss is free at every step. Averaged over log-step bins (its logarithm: a late
drop of a small loss counts like an early drop of a large one) it is a dense, quiet curve
whose bends (a plateau ending, a drop, a new plateau) mark where the model changes, and they
show a few hundredths of a decade after they happen, long before a sparse LLC curve can
confirm its own. Its :class:`MilestoneDetector` (:func:`train_loss_detector`) announces them,
and each bend it confirms soon after it can plan a few extra estimates from that step on,
closely spaced: the LLC curve gets points right after the bend, where its own detector needs
them to place and confirm it (the adaptive part of a schedule). A bend late in the run gets
its extra estimates closer together, all before the run's last step: a transition in the run's
last tenth of a decade is otherwise left with the train-end estimate alone after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_devinterp.callbacks.budget import Sync
from lightning_devinterp.milestones import Milestone, MilestoneDetector, train_loss_detector

#: Extra estimates planned at each bend of the training loss.
PER_BEND = 3
#: Their spacing, in decades of step (log10 units).
SPACING = 0.04
#: The closest spacing, for a bend so late that :data:`SPACING` would pass the run's end: the
#: LLC detector's bins are 0.01 decades wide (closer estimates would share one).
MIN_SPACING = 0.01
#: A bend confirmed later than this after it (decades) gets none: the schedule's own points
#: (0.12-0.18 decades apart at 20-30 estimates over 3-4 decades) already follow it.
LATE = 0.15

#: ``first_due(after, step)``: the schedule's first step in ``(after, step]``, or None.
FirstDue = Callable[[int, int], "int | None"]


def training_loss(outputs: Any) -> torch.Tensor | None:
    """The loss in ``training_step``'s outputs (a tensor, or a dict's ``"loss"``), or None; a
    half-precision loss in float32 (a bin's sum of thousands of them would round away)."""
    if isinstance(outputs, dict):
        outputs = outputs.get("loss")
    if not isinstance(outputs, torch.Tensor) or outputs.numel() != 1:
        return None
    loss = outputs.detach()
    return loss.float() if loss.dtype in (torch.float16, torch.bfloat16) else loss


def check_extra_estimates(value: Any) -> int:
    """``extra_estimates`` as an int >= 0.

    Raises:
        ValueError: it is not a non-negative integer.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"extra_estimates={value!r} is invalid; use the most estimates to add where the "
            "training loss bends, an integer >= 0 (0: the schedule alone)."
        )
    return value


class LossBends:
    """Watches the training loss: its milestones, and up to ``max_extra`` extra estimates
    planned at its bends.

    Args:
        max_extra: the most extra estimates in the run (checked by
            :func:`check_extra_estimates`).
        name: the monitor's name (its training loss's series).
        detector: the training loss's detector when a monitor announces its milestones (a
            :class:`MilestoneTracker`'s, which keeps its state); None: a detector of its own,
            kept in :meth:`state_dict`, only to plan the extra estimates.
        label: how the log names the monitor (default ``"LLCMonitor(<name>)"``).

    Attributes:
        planned: steps still to estimate at, in order.
        used: extra estimates planned so far (never more than ``max_extra``).
        covered: the last extra step planned so far (0: none); a bend at or before it is the
            same move as the bend that planned it (a drop, then the new plateau the loss
            reaches while its estimates run) and plans none.
        bends: the training loss's confirmed milestones, as ``(kind, step, detected_at)``.
    """

    def __init__(
        self,
        max_extra: int,
        name: str,
        detector: MilestoneDetector | None = None,
        label: str | None = None,
    ) -> None:
        self.max_extra = max_extra
        self.name = name
        self.label = label or f"LLCMonitor({name})"
        self.shared = detector is not None
        self.detector = detector if detector is not None else train_loss_detector(name)
        self.planned: list[int] = []
        self.used = 0
        self.covered = 0
        #: False once a bin's loss could not be read (the watch stops).
        self.readable = True
        self.bends: list[tuple[str, int, int]] = []
        self._bin: int | None = None
        self._last_step = 0
        self._count = 0
        self._sum: torch.Tensor | float = 0.0

    @property
    def watching(self) -> bool:
        """Whether the loss is still read: it is readable, and milestones are announced or
        extra estimates are left to plan."""
        return self.readable and (self.shared or self.used < self.max_extra)

    def observe(self, step: int, loss: torch.Tensor | None, scheduled: FirstDue,
                last_step: float, sync: Sync) -> list[Milestone]:  # fmt: skip
        """Add one batch's loss at ``step``. When ``step`` opens a new bin, the last bin's
        mean (rank 0's, ``sync``) goes to the detector, and a bend it confirms plans extra
        estimates from ``step`` on, up to ``last_step``, except where the schedule already
        has one nearby (``scheduled(after, step)``: its first step in ``(after, step]``, as
        :meth:`Schedule.first_due`).

        Returns:
            The training loss's milestones this confirmed.
        """
        if step < 1 or not self.watching:
            return []
        current = math.floor(math.log10(step) / self.detector.resolution)
        found = []
        if self._bin is not None and current != self._bin:
            found = self._close_bin(sync)
            for milestone in found:
                self._plan(step, milestone, scheduled, last_step)
        self._bin, self._last_step = current, step
        if loss is not None:
            self._sum = self._sum + loss
            self._count += 1
        return found

    def finish(self, sync: Sync) -> list[Milestone]:
        """Training is over: the open bin's mean goes to the detector (nothing is planned).

        Returns:
            The training loss's milestones this confirmed.
        """
        if not self.watching or self._bin is None:
            return []
        self._bin = None
        return self._close_bin(sync)

    def _close_bin(self, sync: Sync) -> list[Milestone]:
        """Feed the bin's mean loss to the detector; the milestones it confirmed."""
        count = self._count
        mean = sync(float(self._sum) / count if count else None)
        self._sum, self._count = 0.0, 0
        if mean is None or not 0 < mean < math.inf:
            self.readable = False
            rank_zero_info(
                f"{self.label}: the training loss is not watched from here on (no "
                "training-loss milestones, no extra estimates): it "
                + (f"is {mean:g}" if mean is not None else "is not in training_step's output")
                + " (the watch reads the logarithm of a positive, finite loss returned by "
                "training_step, or a dict's 'loss')."
            )
            return []
        found = self.detector.update(self._last_step, math.log(mean), weight=count)
        self.bends += [(m.kind, m.step, m.detected_at) for m in found]
        return found

    def _plan(self, step: int, bend: Milestone, scheduled: FirstDue,
              last_step: float) -> None:  # fmt: skip
        """Plan the extra estimates of a bend confirmed soon after it, from ``step`` on: up to
        :data:`PER_BEND` on a grid of :data:`SPACING` decades, passing over grid steps that the
        schedule has nearby, and closer (down to :data:`MIN_SPACING`) when that grid would run
        past the run's last step. A bend at or before the last extra step planned (the same
        move as the bend that planned it) plans none."""
        late = math.log10(bend.detected_at / max(bend.step, 1)) > LATE
        wanted = min(PER_BEND, self.max_extra - self.used)
        if late or wanted <= 0 or step >= last_step or bend.step <= self.covered:
            return
        spacing = max(min(SPACING, math.log10(last_step / step) / PER_BEND), MIN_SPACING)
        steps: list[int] = []
        for k in range(2 * PER_BEND):
            candidate = round(step * 10 ** (k * spacing))
            if len(steps) == wanted or candidate > last_step:
                break
            if not _scheduled_near(candidate, scheduled, spacing) and candidate not in self.planned:
                steps.append(candidate)
        if not steps:
            return
        self.used += len(steps)
        self.covered = steps[-1]
        self.planned = sorted({*self.planned, *steps})
        spent = "; none left for later bends: a larger extra_estimates follows more of them"
        rank_zero_info(
            f"{self.label}: the training loss bends at step {bend.step} "
            f"({bend.kind}); extra estimates at steps {', '.join(map(str, steps))} "
            f"({self.used} of {self.max_extra} extra estimates used"
            f"{spent if self.used == self.max_extra else ''})."
        )

    def first_due(self, after: int | None, step: int) -> int | None:
        """The first planned step in ``(after, step]`` (just ``step`` when ``after`` is None)."""
        low = step - 1 if after is None else after
        return min((s for s in self.planned if low < s <= step), default=None)

    def done(self, step: int) -> None:
        """Forget planned steps up to ``step`` (estimated, or passed by)."""
        self.planned = [s for s in self.planned if s > step]

    def state_dict(self) -> dict[str, Any]:
        """The watch's state, with its detector's when it has its own."""
        return {
            "detector": None if self.shared else self.detector.state_dict(),
            "planned": list(self.planned),
            "used": self.used,
            "covered": self.covered,
            "readable": self.readable,
            "bends": [list(b) for b in self.bends],
            "bin": self._bin,
            "last_step": self._last_step,
            "count": self._count,
            "sum": float(self._sum),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self.shared and state.get("detector") is not None:
            self.detector.load_state_dict(state["detector"])
        self.planned = [int(s) for s in state["planned"]]
        self.used, self.readable = int(state["used"]), bool(state.get("readable", True))
        self.covered = int(state.get("covered", 0))
        self.bends = [(str(k), int(s), int(d)) for k, s, d in state["bends"]]
        self._bin, self._last_step = state["bin"], int(state["last_step"])
        self._count, self._sum = int(state["count"]), float(state["sum"])


def _scheduled_near(step: int, scheduled: FirstDue, spacing: float) -> bool:
    """Whether the schedule has a step within half a ``spacing`` of ``step``."""
    low, high = step * 10 ** (-spacing / 2), step * 10 ** (spacing / 2)
    return scheduled(math.ceil(low) - 1, math.floor(high)) is not None
