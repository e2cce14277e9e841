"""ScheduledAnalysis: the base of the monitors. It owns *when* an analysis runs (schedule,
overhead budget, deferral, calibration first) and *how safely* (isolation from training, the
DDP split and gather, failures, checkpointed state, resume); a subclass says *what* it
computes at a step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_devinterp.callbacks.budget import OverheadBudget, check_max_overhead
from lightning_devinterp.callbacks.cadence import Cadence
from lightning_devinterp.callbacks.distributed import Sample, rank_zero_value, run_everywhere
from lightning_devinterp.callbacks.figures import DEFAULT_FIGURE_EVERY, LiveFigures
from lightning_devinterp.callbacks.isolation import isolated
from lightning_devinterp.callbacks.progress import SamplingProgress
from lightning_devinterp.callbacks.sampler_plan import SamplerPlan, announce_calibration
from lightning_devinterp.callbacks.schedule import Schedule
from lightning_devinterp.callbacks.target import Components, SamplingRun, SamplingTarget
from lightning_devinterp.callbacks.trainer_info import (
    batch_transfer,
    check_strategy,
    check_unique_name,
    last_step,
    output_folder,
)
from lightning_devinterp.callbacks.trainer_view import check_optimization
from lightning_devinterp.estimators import check_inputs
from lightning_devinterp.milestones import Milestone
from lightning_devinterp.reporting.recorder import Recorder
from lightning_devinterp.sampling import SGLD, ChainSettings


class ScheduledAnalysis(Callback):
    r"""Runs a subclass's analysis at scheduled steps of training, isolated from it.

    A subclass implements :meth:`sample` (one process's share of the chains), :meth:`reduce`
    (the processes' parts into a result) and :meth:`record` (the result into
    :attr:`history` and out through :attr:`recorder`). Everything else is here.

    Args:
        sampler: SGLD settings; ``"auto"`` calibrates them (:func:`calibrate`) once, at the
            first estimate (or at ``calibrate_at_step``), and keeps them for the run; None: the
            published small-transformer settings (``lr=1e-3``, ``localization=200``,
            ``nbeta=m/log m``), not calibrated for your model.
        num_chains, num_draws, num_burnin, steps_between_draws, seed, init_loss_batches,
            paired, train_mode, mala, step_check: the chains of each estimate
            (:class:`ChainSettings`; ``step_check`` also runs them at half the step size and
            records the step bias and the estimate extrapolated to lr -> 0, at twice the cost).
        every_n_steps, num_estimates, at_steps: the schedule (:class:`Schedule`; default 30
            estimates, log-spaced from step ``T ** 0.3`` of a run of ``T`` steps).
        at_train_end: also estimate at the last step, if not already scheduled.
        extra_estimates: the most estimates to add right after bends of the training loss
            (the adaptive schedule, :class:`LossBends`); 0: the schedule alone.
        dataloader: data for sampling; default the trainer's training data as
            ``training_step`` receives it (several train dataloaders combined), through fresh
            iterators (training's is never advanced).
        loss_fn: ``loss_fn(model, batch)``; default the module's ``training_step``.
        components: ``"heads"`` or a list of :class:`Component`.
        on_error: ``"warn"`` reports a failed estimate and training goes on; ``"raise"`` stops.
        name: prefix of the metrics and name of the output files.
        output_dir: default ``<trainer.log_dir>/devinterp``.
        calibration, calibrate_at_step: with ``sampler="auto"`` (:class:`SamplerPlan`).
        max_overhead: the largest share of wall-clock time the analysis may take
            (:class:`OverheadBudget`); None: no budget.
        figure_every: draw figures at every n-th estimate (None: none).
    """

    def __init__(
        self,
        sampler: SGLD | Literal["auto"] | None = None,
        *,
        num_chains: int = 4,
        num_draws: int = 200,
        num_burnin: int = 0,
        steps_between_draws: int = 1,
        seed: int = 0,
        init_loss_batches: int = 16,
        paired: bool = True,
        train_mode: bool = False,
        mala: bool = False,
        step_check: bool = False,
        every_n_steps: int | None = None,
        num_estimates: int | None = None,
        at_steps: Sequence[int] | None = None,
        at_train_end: bool = False,
        extra_estimates: int = 0,
        dataloader: Iterable | None = None,
        loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
        components: Components = None,
        on_error: Literal["warn", "raise"] = "warn",
        name: str = "llc",
        output_dir: str | None = None,
        calibration: dict[str, Any] | None = None,
        calibrate_at_step: int | None = None,
        max_overhead: float | None = None,
        figure_every: int | None = DEFAULT_FIGURE_EVERY,
    ) -> None:
        super().__init__()
        self.plan = SamplerPlan(sampler, calibration, calibrate_at_step)
        self.chains = ChainSettings(
            num_chains, num_draws, num_burnin, steps_between_draws, seed, init_loss_batches,
            paired, train_mode, mala, step_check,
        )  # fmt: skip
        _check_callback_args(on_error, name)
        #: ``"<class>(<name>)"``, how the log and errors name this monitor.
        self.label = f"{type(self).__name__}({name})"
        self.schedule = Schedule(every_n_steps, num_estimates, at_steps)
        self.max_overhead = check_max_overhead(max_overhead)
        self.budget = OverheadBudget(self.max_overhead, self.label) if self.max_overhead else None
        self.cadence = Cadence(
            self.schedule, self.budget, self.plan, name, self.label, extra_estimates
        )
        self.figures = LiveFigures(figure_every, self.label)
        self.at_train_end = at_train_end
        self.target = SamplingTarget(dataloader, loss_fn, components, self.label)
        self.on_error = on_error
        self.name = name
        self.output_dir = output_dir
        self.history: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.recorder = Recorder(None, type(self).__name__)
        self._active = False
        self._calibration_seconds = 0.0
        self._set_up = False

    # ---------------------------------------------------------------- what a subclass says

    def sample(self, trainer: Trainer, run: SamplingRun) -> Any:
        """This process's share of the sampling at the current weights (``run``)."""
        raise NotImplementedError

    def reduce(self, parts: list[Any]) -> Any:
        """Every process's :meth:`sample` (rank order) into the step's result."""
        raise NotImplementedError

    def record(self, trainer: Trainer, step: int, result: Any, seconds: float) -> None:
        """Add the result to :attr:`history` and send it out (:meth:`publish`)."""
        raise NotImplementedError

    def job_names(self) -> list[str]:
        """What one estimate samples, in order (for the progress bar and the budget)."""
        return [self.name]

    def chart_families(self) -> list[str]:
        """Metric families drawn one chart per component group."""
        return []

    # ---------------------------------------------------------------- settings and state

    @property
    def sampler(self) -> SGLD | Literal["auto"] | None:
        """The sampler as given (``"auto"``, an :class:`SGLD` or None)."""
        return self.plan.sampler

    @property
    def calibrate_at_step(self) -> int | None:
        return self.plan.calibrate_at_step

    @property
    def calibrated(self) -> dict[str, Any] | None:
        """With ``sampler="auto"``: the choice (``Calibration.to_record()`` and the step)."""
        return self.plan.calibrated

    @property
    def components(self) -> Components:
        """The components as given (``"heads"``, a list, or None)."""
        return self.target.components

    @property
    def loss_fn(self) -> Callable[[torch.nn.Module, Any], torch.Tensor] | None:
        return self.target.loss_fn

    @property
    def jsonl_path(self) -> Path | None:
        """The JSON-lines file this monitor writes (known once training has been set up)."""
        return self.recorder.path

    @property
    @override
    def state_key(self) -> str:
        """Keyed by class and ``name``. Until a trainer has set the callback up, the key is
        also unique per instance, so that two monitors sharing a name reach :meth:`setup`,
        whose error names ``name=`` (Lightning's own check at ``Trainer(...)`` does not)."""
        if not self._set_up:
            return self._generate_state_key(name=self.name, instance=id(self))
        return self._generate_state_key(name=self.name)

    @override
    def state_dict(self) -> dict[str, Any]:
        calibrated = self.plan.calibrated
        return {
            "history": [dict(r) for r in self.history],
            "errors": list(self.errors),
            "calibrated": dict(calibrated) if calibrated is not None else None,
            **self.cadence.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state_dict.get("history", [])]
        self.errors = list(state_dict.get("errors", []))
        calibrated = state_dict.get("calibrated")
        self.plan.calibrated = dict(calibrated) if calibrated is not None else None
        self.cadence.load_state_dict(state_dict)

    # ---------------------------------------------------------------- hooks

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_strategy(trainer)
        check_unique_name(self, trainer.callbacks)
        self._set_up = True
        path = output_folder(trainer, self.output_dir) / f"{self.name}.jsonl"
        self.recorder = Recorder(
            path, type(self).__name__, trainer.loggers, enabled=trainer.is_global_zero
        )
        self.recorder.claim()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.recorder.release()

    @override
    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self.recorder.release()

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._active = not trainer.fast_dev_run
        if not self._active:
            rank_zero_info(f"{self.label}: skipped under fast_dev_run.")
            return
        if self.budget is not None:
            self.budget.start(trainer.global_step)
        self.cadence.run_end = last_step(trainer)
        self.schedule.resolve(self.cadence.run_end)
        self.check_run(trainer)
        check_optimization(pl_module, self.target.loss_fn, self.label)
        with isolated(pl_module):
            check_inputs(
                pl_module,
                self.target.data(trainer),
                self.target.loss(trainer),
                batch_transfer(pl_module),
            )
        self.target.resolve(pl_module)
        self.recorder.chart(self.target.groups(), self.chart_families())
        if self.budget is not None:
            chains = self.plan.chains(self.chains)
            self.budget.sgld_steps = self.cadence.sgld_steps(self.job_names(), chains, trainer)
        self.plan.warn_if_default(self.label)
        self.recorder.rewrite(self.history)
        self.resume(trainer)
        self._maybe_estimate(trainer, pl_module, trainer.global_step)
        if self.budget is not None:
            self.budget.analysed()

    def check_run(self, trainer: Trainer) -> None:
        """At train start, after the schedule is resolved: say what the run should know."""

    def resume(self, trainer: Trainer) -> None:
        """At train start, with :attr:`history` restored: show what a resumed run had."""

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._active and self.cadence.loss_bends is not None:
            sync = rank_zero_value(trainer)
            self.loss_milestones(trainer, self.cadence.watch(trainer.global_step, outputs, sync))
        if self.budget is None or not self._active:
            self._maybe_estimate(trainer, pl_module, trainer.global_step)
            return
        self.budget.trained(trainer.global_step)
        self._maybe_estimate(trainer, pl_module, trainer.global_step)
        self.budget.analysed()

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._active and self.budget is not None:
            self.budget.trained(trainer.global_step)
            self.budget.drop_pending(
                "the estimate at train end replaces it"
                if self.at_train_end
                else "the run ended before the budget allowed it"
            )
        if self.at_train_end:
            self._maybe_estimate(trainer, pl_module, trainer.global_step, force=True)
        elif self._active:
            self.cadence.note_early_end(trainer.global_step)
        if self._active:
            self.loss_milestones(trainer, self.cadence.watch_end(rank_zero_value(trainer)))
            self.finish(trainer)
        if self._active and self.budget is not None:
            self.budget.analysed()

    def finish(self, trainer: Trainer) -> None:
        """At train end, after the last estimate."""

    def loss_milestones(self, trainer: Trainer, new: list[Milestone]) -> None:
        """Milestones of the training loss just confirmed (often none; with a detector given to
        :meth:`Cadence.announce_loss_milestones`)."""

    # ---------------------------------------------------------------- when

    def _maybe_estimate(
        self, trainer: Trainer, pl_module: LightningModule, step: int, force: bool = False
    ) -> None:
        """Estimate at ``step`` if the cadence says so (:meth:`Cadence.decide`)."""
        if not self._active or trainer.sanity_checking:
            return
        sync = rank_zero_value(trainer)
        done = {record["step"] for record in self.history}
        scheduled = self.cadence.decide(step, force, done, sync)
        if scheduled is not None:
            self.cadence.run(step, scheduled, lambda: self._timed(trainer, pl_module, step), sync)

    def _timed(self, trainer: Trainer, pl_module: LightningModule, step: int) -> float:
        """:meth:`estimate`; the seconds it spent calibrating (not charged to the budget)."""
        self._calibration_seconds = 0.0
        self.estimate(trainer, pl_module, step)
        return self._calibration_seconds

    # ---------------------------------------------------------------- how safely

    def estimate(self, trainer: Trainer, pl_module: LightningModule, step: int) -> Any | None:
        """Run the analysis of one step now (calibrating first if it is due), record and
        report it. Returns the result, or None if it failed."""
        started = time.perf_counter()
        if self.plan.needs_calibration and not self._calibrate(trainer, pl_module, step):
            return None
        self.target.resolve(pl_module)
        parts = self.run_everywhere(
            trainer, pl_module, step, self._sampling_call(trainer, pl_module), jobs=self.job_names()
        )
        if parts is None:
            return None
        result = self.reduce(parts)
        self.record(trainer, step, result, time.perf_counter() - started)
        return result

    def _sampling_call(self, trainer: Trainer, pl_module: LightningModule) -> Sample:
        """``(chain_ids, progress) -> sample(trainer, run)`` with this estimate's settings."""
        sampler, chains = self.plan.sgld(), self.plan.chains(self.chains)
        loss_fn, transfer = self.target.loss(trainer), batch_transfer(pl_module)

        def call(chain_ids: list[int], progress: SamplingProgress) -> Any:
            run = SamplingRun(pl_module, loss_fn, sampler, chains, transfer, chain_ids, progress)
            return self.sample(trainer, run)

        return call

    def run_everywhere(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        step: int,
        sample: Sample,
        failure: str = "",
        jobs: Sequence[str] = (),
    ) -> list[Any] | None:
        """:func:`run_everywhere` for this monitor's chains; None if a process failed (the
        failure, prefixed by ``failure``, is reported on every rank alike)."""
        parts = run_everywhere(
            trainer,
            pl_module,
            sample,
            self.chains.num_chains,
            title=self.name,
            jobs=jobs,
            raise_errors=self.on_error == "raise",
        )
        if isinstance(parts, str):
            self._fail(trainer, step, failure + parts)
            return None
        return parts

    def _calibrate(self, trainer: Trainer, pl_module: LightningModule, step: int) -> bool:
        """Calibrate the SGLD settings at the current weights and freeze them; False if it
        failed (reported like a failed estimate). Every process calibrates; rank 0's choice
        is kept by all."""
        started = time.perf_counter()
        job = self.plan.calibration_job(
            pl_module, self.target.data(trainer), self.target.loss(trainer), self.chains
        )
        parts = self.run_everywhere(
            trainer, pl_module, step, job, "calibration failed: ", jobs=["calibrate"]
        )
        if parts is not None:
            self.plan.calibrated = {**parts[0], "step": step}
            folder = self.recorder.path.parent if self.recorder.path else None
            announce_calibration(
                trainer,
                self.label,
                self.name,
                self.plan.calibrated,
                job.result,
                self.figures,
                folder,
            )
        self._calibration_seconds = time.perf_counter() - started
        return parts is not None

    def _fail(self, trainer: Trainer, step: int, message: str) -> None:
        if self.on_error == "raise":
            raise RuntimeError(f"{self.label}: estimate at step {step} failed: {message}")
        failure = {"step": step, "error": message}
        self.errors.append(failure)
        self.recorder.append(failure)
        rank_zero_warn(
            f"{self.label}: the estimate at step {step} failed ({message}); training "
            "continues. Pass on_error='raise' to stop instead."
        )

    # ---------------------------------------------------------------- out

    def publish(
        self,
        trainer: Trainer,
        record: dict[str, Any],
        metrics: dict[str, float],
        health: dict[str, list[str]],
    ) -> None:
        """Keep ``record``, with why it was taken (``<name>/why``, :meth:`Cadence.reason`), in
        :attr:`history`, put ``metrics`` in ``trainer.callback_metrics`` (every process) and
        send everything out through the recorder (rank 0)."""
        record[f"{self.name}/why"] = self.cadence.reason(record["step"])
        self.history.append(record)
        for key, value in metrics.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        self.recorder.publish(record, metrics, self.history, health)

    def show_in_progress_bar(self, trainer: Trainer, value: float | None) -> None:
        """Put ``value`` among the progress bar's metrics, as ``<name>``. The bar reads
        ``trainer.progress_bar_metrics``; nothing reaches the loggers or the training metrics."""
        if value is not None and math.isfinite(value):
            trainer.progress_bar_metrics[self.name] = float(value)


def _check_callback_args(on_error: Any, name: Any) -> None:
    """Raise naming the first invalid argument and the fix."""
    if on_error not in ("warn", "raise"):
        raise ValueError(f"on_error={on_error!r} is invalid; use 'warn' or 'raise'.")
    if not name or not isinstance(name, str) or "/" in name:
        raise ValueError(f"name={name!r} is invalid; use a non-empty name without '/'.")
