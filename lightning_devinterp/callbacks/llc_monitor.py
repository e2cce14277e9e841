"""LLCMonitor: the local learning coefficient of the model, on a schedule, during training."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_devinterp.callbacks.scheduled import ScheduledAnalysis
from lightning_devinterp.callbacks.target import SamplingRun
from lightning_devinterp.callbacks.trainer_info import last_step
from lightning_devinterp.components import Component
from lightning_devinterp.estimators import (
    LLCEstimate,
    llc_from_samples,
    merge_samples,
    sample_components,
)
from lightning_devinterp.milestones import (
    Milestone,
    MilestoneDetector,
    MilestoneTracker,
    milestones_filename,
    train_loss_series,
)
from lightning_devinterp.reporting.figures import (
    plot_llc_curve,
    plot_rllc_heads,
    plot_train_loss,
)
from lightning_devinterp.sampling import SGLD

#: Below this many estimates per decade of steps, a note says online milestones will be rare
#: (planted critical points one decade apart: 5 per decade confirm 35% of them, 7 confirm 88%).
MIN_ESTIMATES_PER_DECADE = 6


class LLCMonitor(ScheduledAnalysis):
    r"""Estimate the local learning coefficient (LLC) of the model on a schedule.

    At each scheduled ``trainer.global_step`` it runs SGLD chains on a private copy of the
    model (training is never disturbed: weights, optimizer state, RNG streams, modes and the
    training data iterator are left exactly as found), then sends ``<name>/mean``,
    ``<name>/std`` and health scalars to every logger and to ``trainer.callback_metrics``
    (so ``ModelCheckpoint``/``EarlyStopping`` can monitor ``llc/mean``), appends the record to
    ``<log_dir>/devinterp/<name>.jsonl`` and to :attr:`history`.

    While it samples, Lightning's progress bar (``TQDMProgressBar`` or ``RichProgressBar``) gets
    a second line saying what is sampled and how many SGLD steps are done (removed afterwards),
    and the latest LLC is among the bar's metrics (as ``<name>``).

    Args:
        sampler: SGLD settings; ``"auto"`` to calibrate them (:func:`calibrate`) once, at
            the first estimate (or at ``calibrate_at_step``), and keep them for the whole run
            (points of one curve are comparable only at equal settings). The chosen values go
            to every logger's hyperparameters, to the first record after the calibration
            (``<name>/calibration``) and to the checkpoint, so a resumed run does not
            recalibrate; the burn-in used is at least the calibrated one. Default:
            ``SGLD(lr=1e-3, nbeta=m/log m, localization=200)`` (published small-transformer
            settings, not calibrated for your model).
        data: named extra data sets, e.g. ``{"code": code_loader}``: each gives a data-refined
            LLC (``llc_code/mean``), and with ``components`` a refined one per component
            (``rllc_code/l0h3/mean``). ``loss_fn`` must accept their batches.
        milestones: ``True`` (default) detects milestones online on every series the monitor
            estimates: the LLC (series ``name``), L(w*) (series ``"loss"``, or
            ``"<name>/loss"`` for another ``name``, where sharp drops show), each
            component's refined LLC (``"rllc/l0h1"``) and each data-refined LLC; and on the
            training loss ``training_step`` returns (series ``"train_loss"`` or
            ``"<name>/train_loss"``; read at every step, averaged over bins of 0.02 decades,
            judged on its logarithm (a milestone's ``value`` is the log of the loss), its
            milestones announced between estimates, a few hundredths of a decade after
            a sharp transition); or one or more configured :class:`MilestoneDetector` (those
            series only; one named as the training loss's series reads it); ``False`` for
            none. Each estimate's detector measures its noise from the chains' common random
            numbers and holds back milestones among transient estimates (negative, chains
            that disagree). Confirmed milestones go to :attr:`milestones`, ``milestones.json``
            beside the JSON-lines file, a ``<name>/stage`` scalar, a W&B table and summary,
            and TensorBoard text; the stage view across series (each stage of the LLC with
            what every other series does in it) to ``<name>/stage_view`` in each record, a
            W&B table and TensorBoard text.
        on_milestone: called as ``on_milestone(trainer, pl_module, milestone)`` for each
            confirmed milestone.
        checkpoint_on_milestone: save a checkpoint at each milestone (``milestone-*.ckpt``
            beside the JSON-lines file).
        name: prefix of the metrics and name of the JSON-lines file (two monitors need two
            names).
        **kwargs: the chains, schedule, data, components, budget, calibration, failure and
            figure settings of :class:`ScheduledAnalysis`: ``num_chains=4``,
            ``num_draws=200``, ``num_burnin=0``, ``steps_between_draws=1``, ``seed=0`` (the
            same dice at every estimate: common random numbers, so the curve moves with the
            weights, not the noise), ``init_loss_batches=16``, ``paired=True``,
            ``train_mode=False``, ``mala=False``; ``every_n_steps``, ``num_estimates`` (default
            30, log-spaced from step ``T ** 0.3`` of a run of ``T`` steps), ``at_steps``,
            ``at_train_end``, ``extra_estimates`` (the most estimates to add right after bends
            of the training loss, the adaptive schedule; default 0); ``dataloader``, ``loss_fn``
            (``loss_fn(model, batch)`` returning the mean loss or per-sample losses; default
            the module's ``training_step`` with ``self.log`` silenced); ``components``
            (``"heads"`` or a list of :class:`Component`: each gets a refined LLC logged as
            ``r<name>/<component>/mean``); ``on_error``; ``output_dir``; ``calibration``
            (options of :func:`calibrate`) and ``calibrate_at_step``; ``max_overhead`` (the
            largest share of wall-clock time the monitor may take; records then carry
            ``<name>/overhead``, ``<name>/skipped`` and ``<name>/deferred_from``);
            ``figure_every`` (the LLC curve with stages and milestones, ``<name>/curve``, and
            with components ``r<name>/heads``, at every n-th estimate, at a milestone and at
            train end).

    Example::

        trainer = L.Trainer(max_steps=2000, callbacks=[LLCMonitor(every_n_steps=200)])
        trainer.fit(model, datamodule)
        monitor.history[-1]["llc/mean"]
    """

    def __init__(
        self,
        sampler: SGLD | Literal["auto"] | None = None,
        *,
        data: Mapping[str, DataLoader | Iterable] | None = None,
        milestones: bool | MilestoneDetector | Sequence[MilestoneDetector] = True,
        on_milestone: Callable[[Trainer, LightningModule, Milestone], None] | None = None,
        checkpoint_on_milestone: bool = False,
        name: str = "llc",
        **kwargs: Any,
    ) -> None:
        super().__init__(sampler, name=name, **kwargs)
        for data_name in data or {}:
            if not isinstance(data_name, str) or not data_name.isidentifier():
                raise ValueError(
                    f"data name {data_name!r} is invalid; use names like 'code' or 'prose' "
                    "(letters, digits, underscores)."
                )
        if on_milestone is not None and not callable(on_milestone):
            raise TypeError(
                "on_milestone must be callable as on_milestone(trainer, module, milestone)."
            )
        self.data = dict(data) if data is not None else None
        self.tracker = MilestoneTracker(name, milestones)
        train_loss = self.tracker.detector_of(train_loss_series(name))
        if train_loss is not None:
            self.cadence.announce_loss_milestones(train_loss)
        self.on_milestone = on_milestone
        self.checkpoint_on_milestone = checkpoint_on_milestone
        self.last_estimates: dict[str, LLCEstimate] = {}
        self._figures_for = 0  # the history length the figures were last drawn for
        self._view: list[str] = []  # the stage view last published

    @property
    def detectors(self) -> list[MilestoneDetector]:
        return self.tracker.detectors

    @property
    def milestones(self) -> list[Milestone]:
        """Every milestone confirmed online so far, all series, in order of confirmation."""
        return self.tracker.milestones

    @property
    def milestones_path(self) -> Path | None:
        """The milestone file beside the JSON-lines file (:func:`milestones_filename`)."""
        path = self.jsonl_path
        return path.with_name(milestones_filename(self.name)) if path else None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "detectors": self.tracker.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.tracker.load_state_dict(state_dict.get("detectors", []))

    # ---------------------------------------------------------------- train start and end

    @override
    def check_run(self, trainer: Trainer) -> None:
        """Say so when the schedule is too sparse for the detectors to confirm milestones."""
        last = last_step(trainer)
        if not self.tracker or not math.isfinite(last):
            return
        density = self.schedule.per_decade(int(last))
        if density < MIN_ESTIMATES_PER_DECADE:
            rank_zero_info(
                f"{self.label}: {density:.1f} estimates per decade of steps, too few to "
                "confirm most milestones online (on test curves 5 per decade confirm half of "
                "the critical points, 7 nineteen in twenty). Schedule more (num_estimates), or read "
                "the detectors' refine() after training."
            )

    @override
    def resume(self, trainer: Trainer) -> None:
        if self.history:  # a resumed run shows its last value until the next estimate
            self.show_in_progress_bar(trainer, self.history[-1].get(f"{self.name}/mean"))

    @override
    def finish(self, trainer: Trainer) -> None:
        settled = False
        if self.tracker:
            settled = self._settle_last(trainer)
            self.tracker.refine()
            self._write_milestones()
        if self.history and (settled or len(self.history) != self._figures_for):
            self._draw_figures(trainer, self.history[-1]["step"])

    # ---------------------------------------------------------------- what is sampled

    def _datasets(self, trainer: Trainer) -> dict[str | None, Iterable]:
        """The training data (key None) and each named data set for data-refined LLCs."""
        return {None: self.target.data(trainer), **(self.data or {})}

    def _family(self, data_name: str | None, refined: bool) -> str:
        """``llc``, ``rllc``, ``llc_<data>`` or ``rllc_<data>``."""
        base = f"r{self.name}" if refined else self.name
        return f"{base}_{data_name}" if data_name is not None else base

    def _prefix(self, data_name: str | None, component: Component | None) -> str:
        """``llc``, ``rllc/<component>``, ``llc_<data>``, ``rllc_<data>/<component>``."""
        family = self._family(data_name, component is not None)
        return family if component is None else f"{family}/{component.name}"

    @override
    def job_names(self) -> list[str]:
        data_names = [None, *(self.data or {})]
        return [self._prefix(d, c) for d in data_names for c in [None, *self.target.resolved]]

    @override
    def chart_families(self) -> list[str]:
        return [self._family(d, refined=True) for d in [None, *(self.data or {})]]

    @override
    def sample(self, trainer: Trainer, run: SamplingRun) -> Any:
        components = [None, *self.target.resolve(run.model)]
        return {
            data_name: sample_components(
                run.model, loader, run.loss_fn, components=components, **run.keywords()
            )
            for data_name, loader in self._datasets(trainer).items()
        }

    @override
    def reduce(self, parts: list[Any]) -> dict[str, LLCEstimate]:
        """The estimates by metric prefix (``"llc"``, ``"rllc/l0h1"``, ``"llc_code"``, ...)."""
        estimates = {}
        for data_name in parts[0]:
            for i, component in enumerate([None, *self.target.resolved]):
                merged = merge_samples([part[data_name][i] for part in parts])
                estimates[self._prefix(data_name, component)] = llc_from_samples(merged)
        return estimates

    # ---------------------------------------------------------------- out

    @override
    def record(
        self, trainer: Trainer, step: int, estimates: dict[str, LLCEstimate], seconds: float
    ) -> None:
        record, metrics = self._record_of(trainer, step, estimates)
        new = self.tracker.update(step, record)
        stage = self.tracker.current_stage
        view = [summary.describe() for summary in self.tracker.stage_view(step)]
        if stage is not None:
            metrics[f"{self.name}/stage"] = float(stage)
            record[f"{self.name}/stage"] = stage
        if view:
            record[f"{self.name}/stage_view"] = view[-1]
        self._add_run_fields(record, metrics, estimates[self.name], step, seconds)
        self.last_estimates = estimates
        self.publish(trainer, record, metrics, {p: e.warnings for p, e in estimates.items()})
        self.show_in_progress_bar(trainer, estimates[self.name].mean)
        if new or view != self._view:
            self._write_milestones()
            self.recorder.publish_milestones(self.milestones, step, self.name, view)
        self._view = view
        if self.figures.due(len(self.history), milestone=bool(new)):
            self._draw_figures(trainer, step)
        for milestone in new:
            self._announce(trainer, milestone, step)

    def _settle_last(self, trainer: Trainer) -> bool:
        """Announce what the detectors settle now that no estimate follows the last; whether
        they settled any milestone."""
        new = self.tracker.finish()
        if new and self.history:
            self._publish_new(trainer, new, self.history[-1]["step"])
        return bool(new)

    @override
    def loss_milestones(self, trainer: Trainer, new: list[Milestone]) -> None:
        """Announce the training loss's milestones as they are confirmed (between estimates)."""
        if not new:
            return
        self._write_milestones()
        self._publish_new(trainer, new, trainer.global_step)

    def _publish_new(self, trainer: Trainer, new: list[Milestone], step: int) -> None:
        """Send the milestones and the stage view to the loggers; announce ``new``."""
        view = [summary.describe() for summary in self.tracker.stage_view(step)]
        self.recorder.publish_milestones(self.milestones, step, self.name, view)
        self._view = view
        for milestone in new:
            self._announce(trainer, milestone, step)

    def _record_of(
        self, trainer: Trainer, step: int, estimates: dict[str, LLCEstimate]
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """The record of one step's estimates, and its scalars."""
        metrics: dict[str, float] = {}
        record: dict[str, Any] = {"step": step, "epoch": trainer.current_epoch}
        for prefix, est in estimates.items():
            metrics.update(est.metrics(prefix))
            record[f"{prefix}/per_chain"] = [float(v) for v in est.per_chain]
            record[f"{prefix}/warnings"] = list(est.warnings)
        record.update(metrics)
        return record, metrics

    def _add_run_fields(
        self,
        record: dict[str, Any],
        metrics: dict[str, float],
        main: LLCEstimate,
        step: int,
        seconds: float,
    ) -> None:
        """The settings of the estimate, the calibration once, its cost and the budget."""
        record[f"{self.name}/nbeta"] = float(main.sampler.nbeta)
        record[f"{self.name}/lr"] = float(main.sampler.lr)
        record[f"{self.name}/localization"] = float(main.sampler.localization)
        key = f"{self.name}/calibration"
        if self.calibrated is not None and not any(key in r for r in self.history):
            record[key] = dict(self.calibrated)  # the first record after the calibration
        record[f"{self.name}/seconds"] = seconds
        record.update(self.cadence.record_fields(self.name, step))
        if f"{self.name}/overhead" in record:
            metrics[f"{self.name}/overhead"] = record[f"{self.name}/overhead"]

    def _announce(self, trainer: Trainer, milestone: Milestone, step: int) -> None:
        """Log a confirmed milestone, checkpoint at it if asked, call ``on_milestone``."""
        moved = f" (moved from step {milestone.revises})" if milestone.revises is not None else ""
        rank_zero_info(
            f"LLCMonitor: milestone ({milestone.series} {milestone.kind}) at step "
            f"{milestone.step}{moved}, confirmed at step {step}."
        )
        if self.checkpoint_on_milestone and self.jsonl_path is not None:
            series = milestone.series.replace("/", "_")
            name = f"milestone-{series}-{milestone.kind}-step{milestone.step}.ckpt"
            trainer.save_checkpoint(self.jsonl_path.with_name(name))
        if self.on_milestone is not None:
            self.on_milestone(trainer, trainer.lightning_module, milestone)

    def _write_milestones(self) -> None:
        if self.milestones_path is not None and self.recorder.enabled:
            self.tracker.write(self.milestones_path)

    def _draw_figures(self, trainer: Trainer, step: int) -> None:
        self._figures_for = len(self.history)
        folder = self.jsonl_path.parent if self.jsonl_path is not None else None
        self.figures.draw(trainer, folder, self._figure_builders(), step)

    def _figure_builders(self) -> dict[str, Callable[[], Any]]:
        """The live figures by tag: the LLC curve with its stages and milestones, the training
        loss with its own, and with components the refined LLC of each."""
        stages = self.tracker.stages(self.name)
        builders: dict[str, Callable[[], Any]] = {
            f"{self.name}/curve": lambda: plot_llc_curve(
                self.history, stages, self.milestones, prefix=self.name
            )
        }
        train_loss = self.tracker.detector_of(train_loss_series(self.name))
        if train_loss is not None:
            builders[f"{self.name}/train_loss"] = lambda: plot_train_loss(
                train_loss.points, train_loss.stages, train_loss.milestones, train_loss.series
            )
        if self.target.resolved:
            family = self._family(None, refined=True)
            builders[f"{family}/heads"] = lambda: plot_rllc_heads(
                self.history, self.target.groups(), family=family, milestones=self.milestones
            )
        return builders
