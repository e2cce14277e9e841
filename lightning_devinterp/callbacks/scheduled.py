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
from lightning_devinterp.callbacks.distributed import all_gather_objects, my_chains
from lightning_devinterp.callbacks.figures import DEFAULT_FIGURE_EVERY, LiveFigures
from lightning_devinterp.callbacks.isolation import isolated
from lightning_devinterp.callbacks.progress import SamplingProgress
from lightning_devinterp.callbacks.sampler_plan import (
    DEFAULT_LOCALIZATION,
    DEFAULT_LR,
    SamplerPlan,
    announce_calibration,
)
from lightning_devinterp.callbacks.schedule import Schedule
from lightning_devinterp.callbacks.trainer_info import (
    batch_transfer,
    check_strategy,
    last_step,
    output_folder,
    sampling_data,
)
from lightning_devinterp.callbacks.trainer_view import check_optimization, training_step_loss
from lightning_devinterp.components import Component, attention_heads
from lightning_devinterp.estimators import calibrate_with, check_inputs
from lightning_devinterp.reporting.recorder import Recorder
from lightning_devinterp.sampling import SGLD, ChainSettings

Components = Literal["heads"] | Sequence[Component] | None


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
            paired, train_mode, mala: the chains of each estimate (:class:`ChainSettings`).
        every_n_steps, num_estimates, at_steps: the schedule (:class:`Schedule`; default 30
            log-spaced estimates).
        at_train_end: also estimate at the last step, if not already scheduled.
        dataloader: data for sampling; default the trainer's train dataloader (a fresh
            iterator; training's is never advanced).
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
        every_n_steps: int | None = None,
        num_estimates: int | None = None,
        at_steps: Sequence[int] | None = None,
        at_train_end: bool = False,
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
            num_chains=num_chains,
            num_draws=num_draws,
            num_burnin=num_burnin,
            steps_between_draws=steps_between_draws,
            seed=seed,
            init_loss_batches=init_loss_batches,
            paired=paired,
            train_mode=train_mode,
            mala=mala,
        )
        _check_callback_args(on_error, loss_fn, name, components)
        self.schedule = Schedule(every_n_steps, num_estimates, at_steps)
        self.max_overhead = check_max_overhead(max_overhead)
        self.budget = OverheadBudget(self.max_overhead, name) if self.max_overhead else None
        self.figures = LiveFigures(figure_every, name)
        self.at_train_end = at_train_end
        self.dataloader = dataloader
        self.loss_fn = loss_fn
        self.components = components
        self.on_error = on_error
        self.name = name
        self.output_dir = output_dir
        self.history: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.recorder = Recorder(None, type(self).__name__)
        self._components: list[Component] | None = None
        self._active = False
        self._progress: SamplingProgress | None = None
        self._last_seen_step: int | None = None
        self._scheduled_step: int | None = None
        self._calibration_seconds = 0.0
        self._set_up = False

    # ---------------------------------------------------------------- what a subclass says

    def sample(self, trainer: Trainer, pl_module: LightningModule, chain_ids: list[int]) -> Any:
        """This process's share (``chain_ids``) of the sampling at the current weights."""
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
            "budget": self.budget.state_dict() if self.budget is not None else None,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state_dict.get("history", [])]
        self.errors = list(state_dict.get("errors", []))
        calibrated = state_dict.get("calibrated")
        self.plan.calibrated = dict(calibrated) if calibrated is not None else None
        if self.budget is not None and state_dict.get("budget") is not None:
            self.budget.load_state_dict(state_dict["budget"])

    # ---------------------------------------------------------------- hooks

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        _check_unique_name(self, trainer.callbacks)
        self._set_up = True
        if stage != "fit":
            return
        check_strategy(trainer)
        path = output_folder(trainer, self.output_dir) / f"{self.name}.jsonl"
        self.recorder = Recorder(
            path, type(self).__name__, trainer.loggers, enabled=trainer.is_global_zero
        )

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._active = not trainer.fast_dev_run
        if not self._active:
            rank_zero_info(f"LLCMonitor({self.name}): skipped under fast_dev_run.")
            return
        if self.budget is not None:
            self.budget.start(trainer.global_step)
        self.schedule.resolve(last_step(trainer))
        self.check_run(trainer)
        check_optimization(pl_module, self.loss_fn, self.name)
        with isolated(pl_module):
            check_inputs(pl_module, self._data(trainer), self._loss(trainer), batch_transfer(pl_module))
        self.resolve_components(pl_module)
        self.recorder.chart(self.component_groups(), self.chart_families())
        if self.budget is not None:
            self.budget.sgld_steps = self._sgld_steps(trainer)
        if self.plan.sampler is None:
            rank_zero_warn(
                f"LLCMonitor({self.name}): no sampler given, using lr={DEFAULT_LR}, "
                f"localization={DEFAULT_LOCALIZATION}, nbeta=batch_size/log(batch_size) "
                "(published small-transformer settings, not calibrated for this model; "
                "sampler='auto' calibrates them)."
            )
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
        if self._active:
            self.finish(trainer)
        if self._active and self.budget is not None:
            self.budget.analysed()

    def finish(self, trainer: Trainer) -> None:
        """At train end, after the last estimate."""

    # ---------------------------------------------------------------- when

    def _maybe_estimate(
        self, trainer: Trainer, pl_module: LightningModule, step: int, force: bool = False
    ) -> None:
        """Estimate at ``step`` if it is scheduled (once per step, also under gradient
        accumulation), forced, or a deferred estimate that the budget now allows."""
        if not self._active or trainer.sanity_checking:
            return
        asked = step if force else self.schedule.first_due(self._last_seen_step, step)
        self._last_seen_step = step
        waiting = self.budget is not None and self.budget.pending is not None
        if (asked is None and not waiting) or any(r["step"] == step for r in self.history):
            return
        if not force and self.plan.waits(step):
            rank_zero_info(
                f"LLCMonitor({self.name}): estimate at step {step} skipped: calibration "
                f"waits for step {self.plan.calibrate_at_step}."
            )
            return
        scheduled = asked
        if self.budget is not None and not force:
            sync = self._rank_zero_value(trainer)
            scheduled = self.budget.admit(step, asked is not None, sync, asked)
        if scheduled is None:
            return
        started = time.perf_counter()
        self._calibration_seconds = 0.0
        self._scheduled_step = scheduled
        try:
            self.estimate(trainer, pl_module, step)
        finally:
            self._scheduled_step = None
        if self.budget is not None:
            self.budget.analysed()
            cost = time.perf_counter() - started - self._calibration_seconds
            self.budget.spent(step, cost, self._rank_zero_value(trainer))

    def _sgld_steps(self, trainer: Trainer) -> int:
        """The SGLD steps of the next estimate on rank 0 (its share of the chains), with the
        calibration's step budget before the first estimate with ``sampler="auto"``."""
        chains = self.plan.chains(self.chains)
        mine = len(my_chains(chains.num_chains, 0, trainer.world_size))
        steps = len(self.job_names()) * mine * chains.steps_per_chain
        return steps + self.plan.extra_steps()

    @staticmethod
    def _rank_zero_value(trainer: Trainer) -> Callable[[Any], Any]:
        """``value -> rank 0's value`` (the same on every process)."""
        return lambda value: all_gather_objects(value, trainer.world_size)[0]

    # ---------------------------------------------------------------- how safely

    def estimate(self, trainer: Trainer, pl_module: LightningModule, step: int) -> Any | None:
        """Run the analysis of one step now (calibrating first if it is due), record and
        report it. Returns the result, or None if it failed."""
        started = time.perf_counter()
        if self.plan.needs_calibration and not self._calibrate(trainer, pl_module, step):
            return None
        self.resolve_components(pl_module)
        parts = self.run_everywhere(
            trainer, pl_module, step, lambda ids: self.sample(trainer, pl_module, ids),
            jobs=self.job_names(),
        )  # fmt: skip
        if parts is None:
            return None
        result = self.reduce(parts)
        self.record(trainer, step, result, time.perf_counter() - started)
        return result

    def run_everywhere(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        step: int,
        sample: Callable[[list[int]], Any],
        failure: str = "",
        jobs: Sequence[str] = (),
    ) -> list[Any] | None:
        """Run ``sample(chain_ids)`` on every process, isolated from training, for its share
        of the chains, and gather the results (rank order). None if any process failed: the
        failure (prefixed by ``failure``) is reported on every rank alike, so none waits for
        the others. Meanwhile the progress bar shows ``jobs``."""
        chain_ids = my_chains(self.chains.num_chains, trainer.global_rank, trainer.world_size)
        with isolated(pl_module), SamplingProgress(trainer, self.name, jobs) as progress:
            self._progress = progress
            try:
                payload: Any = sample(chain_ids)
            except Exception as error:
                if self.on_error == "raise" and trainer.world_size == 1:
                    raise
                payload = f"{type(error).__name__}: {error}"
            finally:
                self._progress = None
        parts = all_gather_objects(payload, trainer.world_size)
        failures = [p for p in parts if isinstance(p, str)]
        if failures:
            self._fail(trainer, step, failure + failures[0])
            return None
        return parts

    def _calibrate(self, trainer: Trainer, pl_module: LightningModule, step: int) -> bool:
        """Calibrate the SGLD settings at the current weights and freeze them; False if it
        failed (reported like a failed estimate). Every process calibrates; rank 0's choice
        is kept by all."""
        started = time.perf_counter()
        found = {}

        def run(chain_ids: list[int]) -> dict[str, Any]:
            found["result"] = result = calibrate_with(
                pl_module,
                self._data(trainer),
                self._loss(trainer),
                chains=self.chains,
                transfer=batch_transfer(pl_module),
                **self.plan.options,
            )
            return {**result.to_record(), "warnings": list(result.warnings)}

        parts = self.run_everywhere(
            trainer, pl_module, step, run, "calibration failed: ", jobs=["calibrate"]
        )
        if parts is not None:
            self.plan.calibrated = {**parts[0], "step": step}
            folder = self.recorder.path.parent if self.recorder.path else None
            announce_calibration(
                trainer, self.name, self.plan.calibrated, found.get("result"), self.figures, folder
            )
        self._calibration_seconds = time.perf_counter() - started
        return parts is not None

    def _fail(self, trainer: Trainer, step: int, message: str) -> None:
        if self.on_error == "raise":
            raise RuntimeError(
                f"LLCMonitor({self.name}): estimate at step {step} failed: {message}"
            )
        failure = {"step": step, "error": message}
        self.errors.append(failure)
        self.recorder.append(failure)
        rank_zero_warn(
            f"LLCMonitor({self.name}): the estimate at step {step} failed ({message}); training "
            "continues. Pass on_error='raise' to stop instead."
        )

    # ---------------------------------------------------------------- what is sampled

    def _data(self, trainer: Trainer) -> Iterable:
        """The data sampled with (:func:`sampling_data`)."""
        return sampling_data(trainer, self.dataloader, self.name)

    def _loss(self, trainer: Trainer) -> Callable[[torch.nn.Module, Any], torch.Tensor]:
        """``loss_fn``, or the module's ``training_step`` run on the sampled copy
        (:func:`training_step_loss`)."""
        return self.loss_fn or training_step_loss(trainer)

    def resolve_components(self, pl_module: LightningModule) -> list[Component]:
        """The components, discovered (``"heads"``) and checked against the model once."""
        if self._components is None:
            if self.components == "heads":
                self._components = attention_heads(pl_module)
            else:
                self._components = list(self.components or [])
            for component in self._components:
                component.validate(pl_module)
        return self._components

    def component_groups(self) -> dict[str, list[str]]:
        """Component names by group (a layer's heads), for dashboards."""
        groups: dict[str, list[str]] = {}
        for component in self._components or []:
            groups.setdefault(component.group or "components", []).append(component.name)
        return groups

    def sampling_settings(self) -> tuple[SGLD, ChainSettings]:
        """The SGLD and chain settings of the next estimate."""
        return self.plan.sgld(), self.plan.chains(self.chains)

    # ---------------------------------------------------------------- out

    def publish(
        self,
        trainer: Trainer,
        record: dict[str, Any],
        metrics: dict[str, float],
        health: dict[str, list[str]],
    ) -> None:
        """Keep ``record`` in :attr:`history`, put ``metrics`` in ``trainer.callback_metrics``
        (every process) and send everything out through the recorder (rank 0)."""
        self.history.append(record)
        for key, value in metrics.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        self.recorder.publish(record, metrics, self.history, health)

    def run_fields(self, step: int) -> dict[str, Any]:
        """When the estimate stands for an earlier scheduled step (deferred by the budget, or
        passed over when ``global_step`` moved by more than one), ``<name>/deferred_from``;
        with ``max_overhead``, ``<name>/overhead`` and ``<name>/skipped``."""
        fields: dict[str, Any] = {}
        if self.budget is not None:
            fields = {f"{self.name}/{k}": value for k, value in self.budget.record().items()}
        if self._scheduled_step is not None and self._scheduled_step != step:
            fields[f"{self.name}/deferred_from"] = self._scheduled_step
        return fields

    def show_in_progress_bar(self, trainer: Trainer, value: float | None) -> None:
        """Put ``value`` among the progress bar's metrics, as ``<name>``. The bar reads
        ``trainer.progress_bar_metrics``; nothing reaches the loggers or the training metrics."""
        if value is not None and math.isfinite(value):
            trainer.progress_bar_metrics[self.name] = float(value)


def _check_callback_args(on_error: Any, loss_fn: Any, name: Any, components: Any) -> None:
    """Raise naming the first invalid argument and the fix."""
    if on_error not in ("warn", "raise"):
        raise ValueError(f"on_error={on_error!r} is invalid; use 'warn' or 'raise'.")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(model, batch), got {loss_fn!r}.")
    if not name or not isinstance(name, str) or "/" in name:
        raise ValueError(f"name={name!r} is invalid; use a non-empty name without '/'.")
    if components is None or components == "heads":
        return
    if isinstance(components, str) or not all(isinstance(c, Component) for c in components):
        raise TypeError(f"components={components!r} is invalid; use 'heads' or a list of Component.")
    names = [c.name for c in components]
    if len(set(names)) != len(names):
        raise ValueError(f"Component names must be unique, got {names}.")


def _check_unique_name(monitor: ScheduledAnalysis, callbacks: Iterable[Callback]) -> None:
    """Raise if another callback of the same class has the same ``name``: their metrics,
    files and checkpointed state would collide."""
    for other in callbacks:
        if other is not monitor and type(other) is type(monitor) and other.name == monitor.name:
            kind = type(monitor).__name__
            raise ValueError(
                f"Two {kind} callbacks have name={monitor.name!r}; their metrics, files and "
                f"checkpointed state would collide. Give each its own name=, e.g. "
                f"{kind}(name={monitor.name + '_2'!r})."
            )
