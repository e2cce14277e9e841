"""When a monitor estimates: its schedule, the overhead budget, and a calibration that waits
for its step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_info

from lightning_devinterp.callbacks.budget import OverheadBudget, Sync
from lightning_devinterp.callbacks.distributed import my_chains
from lightning_devinterp.callbacks.loss_bends import (
    LossBends,
    check_extra_estimates,
    training_loss,
)
from lightning_devinterp.callbacks.sampler_plan import SamplerPlan
from lightning_devinterp.callbacks.schedule import Schedule
from lightning_devinterp.milestones import Milestone, MilestoneDetector
from lightning_devinterp.sampling import ChainSettings


class Cadence:
    """Decides, at each optimizer step, whether a monitor estimates now and which scheduled
    step the estimate stands for; times the work for the budget.

    Args:
        schedule: the steps asked for.
        budget: the overhead budget, or None.
        plan: the sampler plan (an estimate waits for ``calibrate_at_step``).
        name: the monitor's name (its training loss's series).
        label: how the log names the monitor (``"LLCMonitor(llc)"``).
        extra_estimates: the most estimates added where the training loss bends
            (:class:`LossBends`); 0 for the schedule alone.
    """

    def __init__(
        self,
        schedule: Schedule,
        budget: OverheadBudget | None,
        plan: SamplerPlan,
        name: str,
        label: str,
        extra_estimates: int = 0,
    ) -> None:
        self.schedule = schedule
        self.budget = budget
        self.plan = plan
        self.name = name
        self.label = label
        self.extra_estimates = check_extra_estimates(extra_estimates)
        self._loss_bends: LossBends | None = None
        #: The run's last step (set at train start).
        self.run_end = math.inf
        self.last_seen_step: int | None = None
        #: The scheduled step the running estimate stands for.
        self.scheduled_step: int | None = None
        #: Why an estimate was asked for, by its step, when not by the schedule.
        self.why: dict[int, str] = {}

    @property
    def loss_bends(self) -> LossBends | None:
        """The training loss's watch: the one :meth:`announce_loss_milestones` made, else
        one of its own for ``extra_estimates``, else None."""
        if self._loss_bends is None and self.extra_estimates:
            self._loss_bends = LossBends(self.extra_estimates, self.name, label=self.label)
        return self._loss_bends

    def announce_loss_milestones(self, detector: MilestoneDetector) -> None:
        """Watch the training loss with ``detector`` (a monitor's, whose milestones it
        announces), with or without ``extra_estimates``; before any other use of the watch."""
        self._loss_bends = LossBends(self.extra_estimates, self.name, detector, self.label)

    def watch(self, step: int, outputs: Any, sync: Sync) -> list[Milestone]:
        """Show the training loss's watch (:class:`LossBends`, if any) one batch's outputs.

        Returns:
            The training loss's milestones this confirmed.
        """
        if self.loss_bends is None:
            return []
        loss = training_loss(outputs)
        return self.loss_bends.observe(step, loss, self.schedule.first_due, self.run_end, sync)

    def watch_end(self, sync: Sync) -> list[Milestone]:
        """Training is over: the training loss's watch reads its last bin.

        Returns:
            The training loss's milestones this confirmed.
        """
        return self.loss_bends.finish(sync) if self.loss_bends is not None else []

    def decide(self, step: int, force: bool, done: Collection[int], sync: Sync) -> int | None:
        """The scheduled step an estimate at ``step`` stands for, or None for no estimate.

        Due: a scheduled step since the last step seen (none is lost when ``global_step``
        jumps; a repeated step, under gradient accumulation, is not due again), else an extra
        step planned after a bend of the training loss, ``force``, or a deferred estimate that
        the budget now allows. Never twice at one step (``done``).
        """
        asked = self._asked(step, force)
        self.last_seen_step = step
        waiting = self.budget is not None and self.budget.pending is not None
        if (asked is None and not waiting) or step in done:
            return None
        if not force and self.plan.waits(step):
            rank_zero_info(
                f"{self.label}: estimate at step {step} skipped: calibration "
                f"waits for step {self.plan.calibrate_at_step}."
            )
            return None
        if self.budget is None or force:
            return asked
        return self.budget.admit(step, asked is not None, sync, asked)

    def _asked(self, step: int, force: bool) -> int | None:
        """The step asked for at ``step``: itself when forced, else a scheduled step since the
        last step seen, else a loss bend's extra one; why, when not by the schedule, goes to
        :attr:`why`."""
        if force:
            self.why[step] = "train_end"
            return step
        asked = self.schedule.first_due(self.last_seen_step, step)
        if self.loss_bends is None:
            return asked
        extra = self.loss_bends.first_due(self.last_seen_step, step)
        self.loss_bends.done(step)
        if asked is None and extra is not None:
            self.why[extra] = "adaptive"
            return extra
        return asked

    def run(self, step: int, scheduled: int, estimate: Callable[[], float], sync: Sync) -> None:
        """Run ``estimate()`` (which returns the seconds it spent calibrating) for
        ``scheduled`` and charge its cost, calibration excluded, to the budget."""
        started = time.perf_counter()
        self.scheduled_step = scheduled
        try:
            calibration_seconds = estimate()
        finally:
            self.scheduled_step = None
        if self.budget is not None:
            self.budget.analysed()
            cost = time.perf_counter() - started - calibration_seconds
            self.budget.spent(step, cost, sync)

    def note_early_end(self, step: int) -> None:
        """Say so when the run stopped at ``step``, before its last scheduled estimates (early
        stopping, ``max_time``, a stop signal)."""
        end = self.run_end
        left = self.schedule.count_between(step, int(end)) if math.isfinite(end) else 0
        if left:
            rank_zero_info(
                f"{self.label}: training ended at step {step}, before {left} scheduled "
                f"estimate(s) up to step {int(end)}; at_train_end=True also estimates at the "
                "last step of a run."
            )

    def sgld_steps(self, jobs: Sequence[str], chains: ChainSettings, trainer: Trainer) -> int:
        """The SGLD steps of the next estimate on rank 0 (its share of the chains), with the
        calibration's step budget before the first estimate with ``sampler="auto"``."""
        mine = len(my_chains(chains.num_chains, 0, trainer.world_size))
        return len(jobs) * mine * chains.steps_per_chain + self.plan.extra_steps()

    def reason(self, step: int) -> str:
        """Why the estimate at ``step`` was taken: ``"scheduled"``, ``"adaptive"`` (a loss
        bend's extra estimate) or ``"train_end"``."""
        stands_for = step if self.scheduled_step is None else self.scheduled_step
        why = self.why.pop(stands_for, "scheduled")
        self.why = {s: w for s, w in self.why.items() if s > stands_for}
        return why

    def state_dict(self) -> dict[str, Any]:
        """The budget's, the loss bends watcher's and the pending reasons' state."""
        bends = self.loss_bends
        return {
            "budget": self.budget.state_dict() if self.budget is not None else None,
            "loss_bends": bends.state_dict() if bends is not None else None,
            "why": dict(self.why),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (parts the saving run did not have are left as they are)."""
        if self.budget is not None and state.get("budget") is not None:
            self.budget.load_state_dict(state["budget"])
        if self.loss_bends is not None and state.get("loss_bends") is not None:
            self.loss_bends.load_state_dict(state["loss_bends"])
        self.why = {int(step): str(why) for step, why in state.get("why", {}).items()}

    def record_fields(self, name: str, step: int) -> dict[str, Any]:
        """When the estimate stands for an earlier scheduled step (deferred by the budget, or
        passed over when ``global_step`` moved by more than one), ``<name>/deferred_from``;
        with a budget, ``<name>/overhead`` and ``<name>/skipped``."""
        fields: dict[str, Any] = {}
        if self.budget is not None:
            fields = {f"{name}/{key}": value for key, value in self.budget.record().items()}
        if self.scheduled_step is not None and self.scheduled_step != step:
            fields[f"{name}/deferred_from"] = self.scheduled_step
        return fields
