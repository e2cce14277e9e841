"""LLCMonitor: the local learning coefficient of the model, on a schedule, during training."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_devinterp.callbacks.budget import OverheadBudget, check_max_overhead
from lightning_devinterp.callbacks.distributed import all_gather_objects, my_chains
from lightning_devinterp.callbacks.figures import DEFAULT_FIGURE_EVERY, LiveFigures
from lightning_devinterp.callbacks.isolation import isolated
from lightning_devinterp.callbacks.progress import SamplingProgress
from lightning_devinterp.callbacks.schedule import Schedule
from lightning_devinterp.callbacks.trainer_info import last_step, output_folder
from lightning_devinterp.components import Component, attention_heads
from lightning_devinterp.estimators import (
    Calibration,
    LLCEstimate,
    LLCHealthWarning,
    calibrate,
    check_inputs,
    llc_from_samples,
    merge_samples,
    sample_components,
)
from lightning_devinterp.estimators.calibration import DEFAULT_MAX_STEPS, check_calibrate_options
from lightning_devinterp.milestones import Milestone, MilestoneDetector
from lightning_devinterp.reporting import (
    JsonlWriter,
    curve_layout,
    declare_metrics,
    log_group_charts,
    log_scalars,
    loss_series,
    milestones_filename,
    report_milestones,
    series_keys,
    wandb_runs,
    write_layout,
    write_milestones_json,
)
from lightning_devinterp.reporting.calibration_figures import (
    plot_calibration_llc,
    plot_calibration_traces,
)
from lightning_devinterp.reporting.figures import plot_llc_curve, plot_rllc_heads
from lightning_devinterp.sampling import SGLD, ChainSettings

#: Published small-transformer settings (rLLC paper): used when no sampler is given.
DEFAULT_LR = 1e-3
DEFAULT_LOCALIZATION = 200.0
#: Below this many estimates per decade of steps, a note says online milestones will be rare
#: (planted critical points one decade apart: 5 per decade confirm 35% of them, 7 confirm 88%).
MIN_ESTIMATES_PER_DECADE = 6


class LLCMonitor(Callback):
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
        num_chains: chains per estimate (split across processes under DDP).
        num_draws: draws per chain.
        num_burnin: SGLD steps discarded per chain before the first draw.
        steps_between_draws: SGLD steps from one draw to the next.
        seed: seed of the chains' noise and batch order; the same dice at every estimate
            (common random numbers), so the curve moves with the weights, not the noise.
        init_loss_batches: batches averaged for L(w*).
        paired: paired estimator (each draw minus w*'s loss on the same minibatch).
        train_mode: sample with the model in train mode (default eval).
        mala: also log the MALA acceptance rate (``llc/health/mala_acceptance``).
        every_n_steps: estimate every n optimizer steps.
        num_estimates: estimate at this many log-spaced steps over the run (default 30 when no
            schedule is given).
        at_steps: estimate at exactly these steps (0 = before training).
        at_train_end: also estimate at the last step, if not already scheduled.
        dataloader: data for sampling; default the trainer's train dataloader (a fresh iterator;
            the training iterator is never advanced).
        loss_fn: ``loss_fn(model, batch)`` returning the mean loss or per-sample losses. Default:
            the module's ``training_step`` with ``self.log`` silenced.
        components: ``"heads"`` (one component per attention head, see
            :func:`attention_heads`) or a list of :class:`Component`: each gets a refined LLC
            logged as ``r<name>/<component>/mean`` and ``/std`` (for example ``rllc/l0h3/mean``).
        data: named extra data sets, e.g. ``{"code": code_loader}``: each gives a data-refined
            LLC (``llc_code/mean``), and with ``components`` a refined one per component
            (``rllc_code/l0h3/mean``). ``loss_fn`` must accept their batches.
        milestones: ``True`` (default) detects milestones online on the LLC (series ``name``)
            and on L(w*) (series ``"loss"``, or ``"<name>/loss"`` for another ``name``, where
            sharp drops show); or one or more configured :class:`MilestoneDetector` (series
            ``name``, ``"loss"`` or ``"<name>/loss"``, a refined-LLC prefix such as
            ``"rllc/l0h1"``, ...); ``False`` for none. Confirmed milestones go to
            :attr:`milestones`, ``milestones.json`` beside the JSON-lines file, a ``<name>/stage``
            scalar, a W&B table and summary, and TensorBoard text.
        on_milestone: called as ``on_milestone(trainer, pl_module, milestone)`` for each
            confirmed milestone.
        checkpoint_on_milestone: save a checkpoint at each milestone (``milestone-*.ckpt``
            beside the JSON-lines file).
        on_error: ``"warn"`` reports a failed estimate and training goes on; ``"raise"`` stops.
        name: prefix of the metrics and name of the JSON-lines file (two monitors need two
            names).
        output_dir: where the JSON-lines file goes; default ``<trainer.log_dir>/devinterp``.
        calibration: options of :func:`calibrate` with ``sampler="auto"``, e.g.
            ``{"nbeta": 30.0, "localizations": [100.0, 300.0], "max_steps": 4000}``; the
            monitor's seed, burn-in, steps between draws, L(w*) batches, paired, train mode and
            MALA settings are passed on.
        calibrate_at_step: with ``sampler="auto"``, calibrate at the first scheduled estimate
            at or after this step (for example once the weights are past the initial transient,
            where w* is nearer a minimum); scheduled estimates before it are skipped.
        max_overhead: the largest share of wall-clock time the monitor may take (0.2: the run is
            at most 1.25x slower), measured as it goes: an estimate the budget cannot afford
            yet is deferred to the first step it can, or skipped if the next scheduled step
            comes first (the rule: :mod:`lightning_devinterp.callbacks.budget`; the first
            estimate's cost is predicted from its SGLD steps and the training step time). The
            estimate ``at_train_end`` always runs. Records then carry
            ``<name>/overhead`` (the share so far), ``<name>/skipped`` (scheduled steps dropped
            since the previous record) and, for a deferred estimate, ``<name>/deferred_from``.
            None: no budget.
        figure_every: draw the figures at every n-th estimate, at an estimate that confirmed a
            milestone and at train end: the LLC curve on a log-step axis with stages shaded and
            milestones marked (``<name>/curve``) and, with components, the refined LLC of each
            (``r<name>/heads``); with ``sampler="auto"``, the calibration's figures once
            (``<name>/calibration/llc`` and ``/traces``). Each goes to TensorBoard and W&B and to
            a PNG beside the JSON-lines file. Needs matplotlib (``plot`` extra; without it
            figures are skipped). None: no figures.

    Example::

        trainer = L.Trainer(max_steps=2000, callbacks=[LLCMonitor(every_n_steps=200)])
        trainer.fit(model, datamodule)
        monitor.history[-1]["llc/mean"]
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
        dataloader: DataLoader | Iterable | None = None,
        loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
        components: Literal["heads"] | Sequence[Component] | None = None,
        data: Mapping[str, DataLoader | Iterable] | None = None,
        milestones: bool | MilestoneDetector | Sequence[MilestoneDetector] = True,
        on_milestone: Callable[[Trainer, LightningModule, Milestone], None] | None = None,
        checkpoint_on_milestone: bool = False,
        on_error: Literal["warn", "raise"] = "warn",
        name: str = "llc",
        output_dir: str | None = None,
        calibration: Mapping[str, Any] | None = None,
        calibrate_at_step: int | None = None,
        max_overhead: float | None = None,
        figure_every: int | None = DEFAULT_FIGURE_EVERY,
    ) -> None:
        super().__init__()
        if isinstance(sampler, str) and sampler != "auto":
            raise ValueError(f"sampler={sampler!r} is invalid; use an SGLD, 'auto' or None.")
        if sampler is not None and sampler != "auto" and not isinstance(sampler, SGLD):
            raise TypeError(
                f"sampler must be an SGLD, 'auto' or None, got {type(sampler).__name__}."
            )
        if sampler != "auto" and (calibration is not None or calibrate_at_step is not None):
            raise ValueError(
                "calibration and calibrate_at_step apply to sampler='auto' only; pass "
                "LLCMonitor(sampler='auto', ...) or drop them."
            )
        check_calibrate_options(calibration or {})
        if calibrate_at_step is not None and (
            isinstance(calibrate_at_step, bool)
            or not isinstance(calibrate_at_step, int)
            or calibrate_at_step < 0
        ):
            raise ValueError(
                f"calibrate_at_step={calibrate_at_step!r} is invalid; use an integer >= 0."
            )
        ChainSettings(
            num_chains, num_draws, num_burnin, steps_between_draws, seed, init_loss_batches
        )
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error={on_error!r} is invalid; use 'warn' or 'raise'.")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(model, batch), got {loss_fn!r}.")
        if not name or "/" in name:
            raise ValueError(f"name={name!r} is invalid; use a non-empty name without '/'.")
        self.schedule = Schedule(every_n_steps, num_estimates, at_steps)
        self.max_overhead = check_max_overhead(max_overhead)
        self.budget = OverheadBudget(self.max_overhead, name) if self.max_overhead else None
        self.figures = LiveFigures(figure_every, name)
        self.sampler = sampler
        self.calibration_options = dict(calibration or {})
        self.calibrate_at_step = calibrate_at_step
        #: With ``sampler="auto"``: the choice (``Calibration.to_record()`` and the step), once made.
        self.calibrated: dict[str, Any] | None = None
        self.sampling = dict(
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
        self.at_train_end = at_train_end
        self.dataloader = dataloader
        self.loss_fn = loss_fn
        self.on_error = on_error
        self.name = name
        self.output_dir = output_dir
        if components is not None and components != "heads":
            if isinstance(components, str) or not all(isinstance(c, Component) for c in components):
                raise TypeError(
                    f"components={components!r} is invalid; use 'heads' or a list of Component."
                )
            names = [c.name for c in components]
            if len(set(names)) != len(names):
                raise ValueError(f"Component names must be unique, got {names}.")
        for data_name in data or {}:
            if not isinstance(data_name, str) or not data_name.isidentifier():
                raise ValueError(
                    f"data name {data_name!r} is invalid; use names like 'code' or 'prose' "
                    "(letters, digits, underscores)."
                )
        if milestones is True:
            detectors = [MilestoneDetector(name), MilestoneDetector(loss_series(name), drop=2.0)]
        elif milestones is False or milestones is None:
            detectors = []
        elif isinstance(milestones, MilestoneDetector):
            detectors = [milestones]
        else:
            detectors = list(milestones)
        if not all(isinstance(d, MilestoneDetector) for d in detectors):
            raise TypeError(
                f"milestones={milestones!r} is invalid; use True, False, a MilestoneDetector or "
                "a list of them."
            )
        if on_milestone is not None and not callable(on_milestone):
            raise TypeError(
                "on_milestone must be callable as on_milestone(trainer, module, milestone)."
            )
        self.detectors = detectors
        self.on_milestone = on_milestone
        self.checkpoint_on_milestone = checkpoint_on_milestone
        self.components = components
        self.data = dict(data) if data is not None else None
        self._components: list[Component] | None = None
        self.history: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.last_estimates: dict[str, LLCEstimate] = {}
        self._writer: JsonlWriter | None = None
        self._active = False
        self._layout_written = False
        self._declared: set[str] = set()
        self._progress: SamplingProgress | None = None
        self._figures_for = 0  # the history length the figures were last drawn for
        self._last_seen_step: int | None = None
        self._scheduled_step: int | None = None
        self._calibration_seconds = 0.0

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    @property
    def jsonl_path(self) -> Path | None:
        """The JSON-lines file this monitor writes (known once training has been set up)."""
        return self._writer.path if self._writer else None

    # ---------------------------------------------------------------- hooks

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        _check_strategy(trainer)
        self._writer = JsonlWriter(output_folder(trainer, self.output_dir) / f"{self.name}.jsonl")

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._active = not trainer.fast_dev_run
        if not self._active:
            rank_zero_info(f"LLCMonitor({self.name}): skipped under fast_dev_run.")
            return
        if self.budget is not None:
            self.budget.start(trainer.global_step)
        last = last_step(trainer)
        self.schedule.resolve(last)
        self._note_a_sparse_schedule(last)
        with isolated(pl_module):
            check_inputs(pl_module, self._data(trainer), self.loss_fn, self._transfer(pl_module))
        self._resolve_components(pl_module)
        if self.budget is not None:
            self.budget.sgld_steps = self._sgld_steps(trainer)
        if self.sampler is None:
            rank_zero_warn(
                f"LLCMonitor({self.name}): no sampler given, using lr={DEFAULT_LR}, "
                f"localization={DEFAULT_LOCALIZATION}, nbeta=batch_size/log(batch_size) "
                "(published small-transformer settings, not calibrated for this model; "
                "sampler='auto' calibrates them)."
            )
        if trainer.is_global_zero and self._writer is not None:
            self._writer.rewrite(self.history)
        if self.history:  # a resumed run shows its last value until the next estimate
            self._show_in_progress_bar(trainer, self.history[-1].get(f"{self.name}/mean"))
        self._maybe_estimate(trainer, pl_module, trainer.global_step)
        if self.budget is not None:
            self.budget.analysed()

    def _note_a_sparse_schedule(self, last: float) -> None:
        """Say so when the schedule is too sparse for the detectors to confirm milestones."""
        if not self.detectors or not math.isfinite(last):
            return
        density = self.schedule.per_decade(int(last))
        if density < MIN_ESTIMATES_PER_DECADE:
            rank_zero_info(
                f"LLCMonitor({self.name}): {density:.1f} estimates per decade of steps, too few to "
                "confirm most milestones online (on test curves 5 per decade confirm a third of "
                "the critical points, 7 nine in ten). Schedule more (num_estimates), or read "
                "the detectors' refine() after training."
            )

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
        if self._active and self.detectors:
            for detector in self.detectors:
                detector.refine()
            if trainer.is_global_zero:
                self._write_milestones()
        if self._active and self.history and len(self.history) != self._figures_for:
            self._draw_figures(trainer, self.history[-1]["step"])
        if self._active and self.budget is not None:
            self.budget.analysed()

    @property
    def milestones(self) -> list[Milestone]:
        """Every milestone confirmed online so far, all series, in order of confirmation."""
        found = [m for d in self.detectors for m in d.milestones]
        return sorted(found, key=lambda m: (m.detected_at, m.step))

    @property
    def milestones_path(self) -> Path | None:
        """The milestone file beside the JSON-lines file (:func:`milestones_filename`)."""
        return self._writer.path.with_name(milestones_filename(self.name)) if self._writer else None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [dict(r) for r in self.history],
            "errors": list(self.errors),
            "detectors": [d.state_dict() for d in self.detectors],
            "calibrated": dict(self.calibrated) if self.calibrated is not None else None,
            "budget": self.budget.state_dict() if self.budget is not None else None,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state_dict.get("history", [])]
        self.errors = list(state_dict.get("errors", []))
        calibrated = state_dict.get("calibrated")
        self.calibrated = dict(calibrated) if calibrated is not None else None
        for detector, state in zip(self.detectors, state_dict.get("detectors", []), strict=False):
            detector.load_state_dict(state)
        if self.budget is not None and state_dict.get("budget") is not None:
            self.budget.load_state_dict(state_dict["budget"])

    # ---------------------------------------------------------------- work

    def _maybe_estimate(
        self, trainer: Trainer, pl_module: LightningModule, step: int, force: bool = False
    ) -> None:
        """Estimate at ``step`` if it is scheduled (once per step, also under gradient
        accumulation), forced, or a deferred estimate that the budget now allows."""
        if not self._active or trainer.sanity_checking:
            return
        repeated = step == self._last_seen_step
        self._last_seen_step = step
        due = force or (self.schedule.is_due(step) and not repeated)
        waiting = self.budget is not None and self.budget.pending is not None
        if not (due or waiting) or any(r["step"] == step for r in self.history):
            return
        if self._waits_for_calibration(step, force):
            return
        scheduled: int | None = step
        if self.budget is not None and not force:
            scheduled = self.budget.admit(step, due, self._rank_zero_value(trainer))
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
        sampling = self._sampling()
        chains = len(my_chains(sampling["num_chains"], 0, trainer.world_size))
        per_chain = sampling["num_burnin"] + sampling["num_draws"] * sampling["steps_between_draws"]
        jobs = (1 + len(self._components or [])) * (1 + len(self.data or {}))
        steps = jobs * chains * per_chain
        if self.sampler == "auto" and self.calibrated is None:
            steps += self.calibration_options.get("max_steps", DEFAULT_MAX_STEPS) or 0
        return steps

    @staticmethod
    def _rank_zero_value(trainer: Trainer) -> Callable[[Any], Any]:
        """``value -> rank 0's value`` (the same on every process)."""
        return lambda value: all_gather_objects(value, trainer.world_size)[0]

    def estimate(
        self, trainer: Trainer, pl_module: LightningModule, step: int
    ) -> dict[str, LLCEstimate] | None:
        """Run the estimates of one step now, record and report them.

        Returns the estimates by metric prefix (``"llc"``, ``"rllc/l0h1"``, ``"llc_code"``, ...),
        or None if sampling failed.
        """
        started = time.perf_counter()
        if self.sampler == "auto" and self.calibrated is None:
            if not self._calibrate(trainer, pl_module, step):
                return None
        components = self._resolve_components(pl_module)
        datasets = self._datasets(trainer)
        parts = self._sample_everywhere(
            trainer,
            pl_module,
            step,
            lambda chain_ids: {
                data_name: sample_components(
                    pl_module,
                    loader,
                    self.loss_fn,
                    components=[None, *components],
                    sampler=self._sampler(),
                    transfer=self._transfer(pl_module),
                    chain_ids=chain_ids,
                    progress=self._progress,
                    chains=ChainSettings(**self._sampling()),
                )
                for data_name, loader in datasets.items()
            },
            jobs=[self._prefix(d, c) for d in datasets for c in [None, *components]],
        )
        if parts is None:
            return None
        estimates = {}
        for data_name in parts[0]:
            for i, component in enumerate([None, *components]):
                merged = merge_samples([part[data_name][i] for part in parts])
                estimates[self._prefix(data_name, component)] = llc_from_samples(merged)
        self._record(trainer, step, estimates, time.perf_counter() - started)
        return estimates

    def _sample_everywhere(
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
        the others.

        Meanwhile the progress bar shows ``jobs`` (the names of what is sampled, in order);
        ``sample`` may pass ``self._progress`` to the sampling engine as its ``progress``."""
        chain_ids = my_chains(self.sampling["num_chains"], trainer.global_rank, trainer.world_size)
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

    # ---------------------------------------------------------------- calibration

    def _sampler(self) -> SGLD:
        """The settings of every estimate: the given, calibrated or default ones."""
        if self.sampler == "auto":
            assert self.calibrated is not None
            return SGLD(
                lr=self.calibrated["lr"],
                nbeta=self.calibrated["nbeta"],
                localization=self.calibrated["localization"],
                weight_decay=self.calibrated["weight_decay"],
            )
        return self.sampler or SGLD(lr=DEFAULT_LR, localization=DEFAULT_LOCALIZATION)

    def _sampling(self) -> dict[str, Any]:
        """The chain settings, with at least the calibrated burn-in."""
        if self.calibrated is None:
            return self.sampling
        burnin = max(self.sampling["num_burnin"], int(self.calibrated["num_burnin"]))
        return {**self.sampling, "num_burnin": burnin}

    def _waits_for_calibration(self, step: int, force: bool) -> bool:
        """A scheduled estimate before ``calibrate_at_step`` is skipped (settings unknown)."""
        waits = (
            self.sampler == "auto"
            and self.calibrated is None
            and self.calibrate_at_step is not None
            and step < self.calibrate_at_step
            and not force
        )
        if waits:
            rank_zero_info(
                f"LLCMonitor({self.name}): estimate at step {step} skipped: calibration "
                f"waits for step {self.calibrate_at_step}."
            )
        return waits

    def _calibrate(self, trainer: Trainer, pl_module: LightningModule, step: int) -> bool:
        """Calibrate the SGLD settings at the current weights and freeze them; False if it
        failed (reported like a failed estimate). Every process calibrates; rank 0's choice
        is kept by all."""
        options = {
            key: self.sampling[key]
            for key in (
                "num_burnin",
                "steps_between_draws",
                "seed",
                "init_loss_batches",
                "paired",
                "train_mode",
                "mala",
            )
        }

        started = time.perf_counter()
        found: dict[str, Calibration] = {}

        def run(chain_ids: list[int]) -> dict[str, Any]:
            found["result"] = calibrate(
                pl_module,
                self._data(trainer),
                self.loss_fn,
                transfer=self._transfer(pl_module),
                **{**options, **self.calibration_options},
            )
            return {**found["result"].to_record(), "warnings": list(found["result"].warnings)}

        parts = self._sample_everywhere(
            trainer, pl_module, step, run, "calibration failed: ", jobs=["calibrate"]
        )
        if parts is None:
            self._calibration_seconds = time.perf_counter() - started
            return False
        chosen = parts[0]
        self.calibrated = {**chosen, "step": step}
        if trainer.is_global_zero:
            hyperparams = {
                f"{self.name}/sgld/{key}": self.calibrated[key]
                for key in ("lr", "nbeta", "localization", "num_burnin", "confirmed", "step")
            }
            for logger in trainer.loggers:
                logger.log_hyperparams(hyperparams)
                logger.save()
            rank_zero_info(
                f"LLCMonitor({self.name}): calibrated at step {step}: lr={chosen['lr']:.3g}, "
                f"nbeta={chosen['nbeta']:.4g}, localization={chosen['localization']:g}, "
                f"num_burnin>={chosen['num_burnin']}; kept for the whole run."
            )
            for message in chosen["warnings"]:
                rank_zero_warn(
                    f"LLCMonitor({self.name}): calibration: {message}", category=LLCHealthWarning
                )
            result = found["result"]
            self.figures.draw(
                trainer,
                self._folder,
                {
                    f"{self.name}/calibration/llc": lambda: plot_calibration_llc(result),
                    f"{self.name}/calibration/traces": lambda: plot_calibration_traces(result),
                },
                step,
            )
        self._calibration_seconds = time.perf_counter() - started
        return True

    def _groups(self) -> dict[str, list[str]]:
        """Component names by group (a layer's heads), for dashboards."""
        groups: dict[str, list[str]] = {}
        for component in self._components or []:
            groups.setdefault(component.group or "components", []).append(component.name)
        return groups

    def _layout(self) -> dict[str, Any]:
        """One TensorBoard chart per component group, for each refined-LLC family."""
        layout: dict[str, Any] = {}
        for data_name in [None, *(self.data or {})]:
            layout.update(curve_layout(self._groups(), self._family(data_name, refined=True)))
        return layout

    def _family(self, data_name: str | None, refined: bool) -> str:
        """``llc``, ``rllc``, ``llc_<data>`` or ``rllc_<data>``."""
        base = f"r{self.name}" if refined else self.name
        return f"{base}_{data_name}" if data_name is not None else base

    def _prefix(self, data_name: str | None, component: Component | None) -> str:
        """``llc``, ``rllc/<component>``, ``llc_<data>``, ``rllc_<data>/<component>``."""
        family = self._family(data_name, component is not None)
        return family if component is None else f"{family}/{component.name}"

    def _record(
        self, trainer: Trainer, step: int, estimates: dict[str, LLCEstimate], seconds: float
    ) -> None:
        metrics: dict[str, float] = {}
        record: dict[str, Any] = {"step": step, "epoch": trainer.current_epoch}
        for prefix, est in estimates.items():
            metrics.update(est.metrics(prefix))
            record[f"{prefix}/per_chain"] = [float(v) for v in est.per_chain]
            record[f"{prefix}/warnings"] = list(est.warnings)
        main = estimates[self.name]
        record.update(metrics)
        new = self._detect(step, record)
        if self.detectors:
            metrics[f"{self.name}/stage"] = float(self.detectors[0].current_stage)
            record[f"{self.name}/stage"] = self.detectors[0].current_stage
        record[f"{self.name}/nbeta"] = float(main.sampler.nbeta)
        record[f"{self.name}/lr"] = float(main.sampler.lr)
        record[f"{self.name}/localization"] = float(main.sampler.localization)
        key = f"{self.name}/calibration"
        if self.calibrated is not None and not any(key in r for r in self.history):
            record[key] = dict(self.calibrated)  # the first record after the calibration
        record[f"{self.name}/seconds"] = seconds
        record.update(self._budget_fields(step))
        if f"{self.name}/overhead" in record:
            metrics[f"{self.name}/overhead"] = record[f"{self.name}/overhead"]
        self.history.append(record)
        self.last_estimates = estimates
        for key, value in metrics.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        self._show_in_progress_bar(trainer, main.mean)
        if trainer.is_global_zero:
            if self._writer is not None:
                self._writer.append(record)
            if not self._layout_written:
                write_layout(trainer.loggers, self._layout())
                self._layout_written = True
            runs = wandb_runs(trainer.loggers)
            declare_metrics(runs, metrics, self._declared)
            log_scalars(trainer.loggers, metrics, step)
            for data_name in [None, *(self.data or {})]:
                family = self._family(data_name, refined=True)
                log_group_charts(runs, self.history, self._groups(), family, step)
            for prefix, est in estimates.items():
                for message in est.warnings:
                    rank_zero_warn(
                        f"LLCMonitor: {prefix} at step {step}: {message}",
                        category=LLCHealthWarning,
                    )
            if new:
                self._write_milestones()
                report_milestones(trainer.loggers, self.milestones, step, self.name)
            if self.figures.due(len(self.history), milestone=bool(new)):
                self._draw_figures(trainer, step)
        for milestone in new:
            rank_zero_info(
                f"LLCMonitor: milestone ({milestone.series} {milestone.kind}) at step "
                f"{milestone.step}, confirmed at step {step}."
            )
            if self.checkpoint_on_milestone and self._writer is not None:
                name = f"milestone-{milestone.series.replace('/', '_')}-{milestone.kind}-step{milestone.step}.ckpt"
                trainer.save_checkpoint(self._writer.path.with_name(name))
            if self.on_milestone is not None:
                self.on_milestone(trainer, trainer.lightning_module, milestone)

    def _budget_fields(self, step: int) -> dict[str, Any]:
        """With ``max_overhead``: ``<name>/overhead``, ``<name>/skipped`` and, when the estimate
        stands for an earlier scheduled step, ``<name>/deferred_from``."""
        if self.budget is None:
            return {}
        fields = {f"{self.name}/{key}": value for key, value in self.budget.record().items()}
        if self._scheduled_step is not None and self._scheduled_step != step:
            fields[f"{self.name}/deferred_from"] = self._scheduled_step
        return fields

    def _show_in_progress_bar(self, trainer: Trainer, value: float | None) -> None:
        """Put the latest LLC among the progress bar's metrics, as ``<name>``. The bar reads
        ``trainer.progress_bar_metrics``; nothing reaches the loggers or the training metrics."""
        if value is not None and math.isfinite(value):
            trainer.progress_bar_metrics[self.name] = float(value)

    @property
    def _folder(self) -> Path | None:
        """The folder of the JSON-lines file, where the figures go."""
        return self._writer.path.parent if self._writer is not None else None

    def _draw_figures(self, trainer: Trainer, step: int) -> None:
        self._figures_for = len(self.history)
        self.figures.draw(trainer, self._folder, self._figure_builders(), step)

    def _figure_builders(self) -> dict[str, Callable[[], Any]]:
        """The live figures by tag: the LLC curve with its stages and milestones, and with
        components the refined LLC of each."""
        stages = next((d.stages for d in self.detectors if d.series == self.name), [])
        builders: dict[str, Callable[[], Any]] = {
            f"{self.name}/curve": lambda: plot_llc_curve(
                self.history, stages, self.milestones, prefix=self.name
            )
        }
        if self._components:
            family = self._family(None, refined=True)
            builders[f"{family}/heads"] = lambda: plot_rllc_heads(
                self.history, self._groups(), family=family
            )
        return builders

    def _detect(self, step: int, record: dict[str, Any]) -> list[Milestone]:
        """Feed each detector its series from ``record``; the milestones it confirmed."""
        new = []
        for detector in self.detectors:
            value_key, std_key = series_keys(detector.series, self.name)
            value, std = record.get(value_key), record.get(std_key) if std_key else None
            if value is not None:
                new.extend(detector.update(step, value, std))
        return new

    def _write_milestones(self) -> None:
        if self.milestones_path is not None:
            write_milestones_json(
                self.milestones_path,
                self.milestones,
                [m for d in self.detectors for m in d.refined],
                {d.series: d.stages for d in self.detectors},
            )

    def _fail(self, trainer: Trainer, step: int, message: str) -> None:
        if self.on_error == "raise":
            raise RuntimeError(
                f"LLCMonitor({self.name}): estimate at step {step} failed: {message}"
            )
        failure = {"step": step, "error": message}
        self.errors.append(failure)
        if trainer.is_global_zero and self._writer is not None:
            self._writer.append(failure)
        rank_zero_warn(
            f"LLCMonitor({self.name}): the estimate at step {step} failed ({message}); training "
            "continues. Pass on_error='raise' to stop instead."
        )

    def _resolve_components(self, pl_module: LightningModule) -> list[Component]:
        if self._components is None:
            if self.components == "heads":
                self._components = attention_heads(pl_module)
            else:
                self._components = list(self.components or [])
            for component in self._components:
                component.validate(pl_module)
        return self._components

    def _datasets(self, trainer: Trainer) -> dict[str | None, Iterable]:
        """The training data (key None) and each named data set for data-refined LLCs."""
        return {None: self._data(trainer), **(self.data or {})}

    def _data(self, trainer: Trainer) -> Iterable:
        if self.dataloader is not None:
            return self.dataloader
        loader = trainer.train_dataloader
        if not isinstance(loader, DataLoader):
            raise ValueError(
                f"LLCMonitor({self.name}) cannot sample from a train dataloader of type "
                f"{type(loader).__name__}; pass LLCMonitor(dataloader=...) with one DataLoader."
            )
        if loader.num_workers > 0 and loader.persistent_workers:
            # A second iterator over a persistent-workers loader would reset training's.
            loader = DataLoader(
                loader.dataset,
                batch_sampler=loader.batch_sampler,
                collate_fn=loader.collate_fn,
                num_workers=0,
            )
        return loader

    @staticmethod
    def _transfer(pl_module: LightningModule) -> Callable[[Any], Any]:
        def transfer(batch: Any) -> Any:
            batch = pl_module.on_before_batch_transfer(batch, 0)
            batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
            return pl_module.on_after_batch_transfer(batch, 0)

        return transfer


def _check_strategy(trainer: Trainer) -> None:
    name = type(trainer.strategy).__name__
    if "FSDP" in name or "DeepSpeed" in name or "ModelParallel" in name:
        raise ValueError(
            f"LLCMonitor cannot run under {name} yet: it samples a full copy of the weights. "
            "Use DDP (strategy='ddp') for the analysed run, or estimate after training with "
            "estimate_llc on the gathered model."
        )
