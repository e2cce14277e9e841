"""A monitor's SGLD settings: given, default, or calibrated once and frozen for the run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_devinterp.callbacks.figures import LiveFigures
from lightning_devinterp.callbacks.progress import SamplingProgress
from lightning_devinterp.callbacks.trainer_info import batch_transfer
from lightning_devinterp.estimators import Calibration, LLCHealthWarning, calibrate_with
from lightning_devinterp.estimators.calibration import DEFAULT_MAX_STEPS, check_calibrate_options
from lightning_devinterp.reporting.calibration_figures import (
    plot_calibration_llc,
    plot_calibration_traces,
)
from lightning_devinterp.sampling import SGLD, ChainSettings

#: Published small-transformer settings (rLLC paper): used when no sampler is given.
DEFAULT_LR = 1e-3
DEFAULT_LOCALIZATION = 200.0

#: Calibrated values that go to the loggers' hyperparameters.
LOGGED = ("lr", "nbeta", "localization", "num_burnin", "confirmed", "step")


class SamplerPlan:
    """Which SGLD settings every estimate of a monitor uses.

    Args:
        sampler: an :class:`SGLD`, ``"auto"`` (calibrate once) or None (published defaults).
        calibration: options of :func:`calibrate` (``sampler="auto"`` only).
        calibrate_at_step: with ``"auto"``, calibrate at the first estimate at or after it.

    Raises:
        ValueError, TypeError: an argument is invalid (the message names the fix).
    """

    def __init__(
        self,
        sampler: SGLD | Literal["auto"] | None,
        calibration: Mapping[str, Any] | None = None,
        calibrate_at_step: int | None = None,
    ) -> None:
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
        self.sampler = sampler
        self.options = dict(calibration or {})
        self.calibrate_at_step = calibrate_at_step
        #: With ``"auto"``: the choice (``Calibration.to_record()`` and the step), once made.
        self.calibrated: dict[str, Any] | None = None

    @property
    def needs_calibration(self) -> bool:
        return self.sampler == "auto" and self.calibrated is None

    def waits(self, step: int) -> bool:
        """Whether an estimate at ``step`` must wait: calibration is due only later."""
        return (
            self.needs_calibration
            and self.calibrate_at_step is not None
            and step < self.calibrate_at_step
        )

    def sgld(self) -> SGLD:
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

    def warn_if_default(self, label: str) -> None:
        """Say so when no sampler was given: the published settings are not calibrated."""
        if self.sampler is None:
            rank_zero_warn(
                f"{label}: no sampler given, using lr={DEFAULT_LR}, "
                f"localization={DEFAULT_LOCALIZATION}, nbeta=batch_size/log(batch_size) "
                "(published small-transformer settings, not calibrated for this model; "
                "sampler='auto' calibrates them)."
            )

    def chains(self, chains: ChainSettings) -> ChainSettings:
        """``chains`` with at least the calibrated burn-in."""
        if self.calibrated is None:
            return chains
        burnin = max(chains.num_burnin, int(self.calibrated["num_burnin"]))
        return chains.replace(num_burnin=burnin)

    def calibration_job(
        self, module: Any, data: Any, loss: Any, chains: ChainSettings
    ) -> CalibrationJob:
        """The calibration as a job for :func:`run_everywhere` (each process runs it)."""
        return CalibrationJob(module, data, loss, chains, self.options)

    def extra_steps(self) -> int:
        """The SGLD steps the calibration may still cost (its step budget), or 0."""
        if not self.needs_calibration:
            return 0
        return self.options.get("max_steps", DEFAULT_MAX_STEPS) or 0


class CalibrationJob:
    """One process's calibration (:func:`calibrate_with`); the full result is kept in
    :attr:`result` for the figures, the job returns its record."""

    def __init__(
        self, module: Any, data: Any, loss: Any, chains: ChainSettings, options: dict[str, Any]
    ) -> None:
        self.module, self.data, self.loss, self.chains, self.options = (
            module, data, loss, chains, options,
        )  # fmt: skip
        self.result: Calibration | None = None

    def __call__(self, chain_ids: list[int], progress: SamplingProgress) -> dict[str, Any]:
        self.result = calibrate_with(
            self.module,
            self.data,
            self.loss,
            chains=self.chains,
            transfer=batch_transfer(self.module),
            **self.options,
        )
        return {**self.result.to_record(), "warnings": list(self.result.warnings)}


def announce_calibration(
    trainer: Trainer,
    label: str,
    name: str,
    calibrated: Mapping[str, Any],
    result: Calibration | None,
    figures: LiveFigures,
    folder: Path | None,
) -> None:
    """Rank 0: the chosen settings to every logger's hyperparameters, the log, the
    calibration's warnings, and (with ``result``) its figures."""
    if not trainer.is_global_zero:
        return
    hyperparams = {f"{name}/sgld/{key}": calibrated[key] for key in LOGGED}
    for logger in trainer.loggers:
        logger.log_hyperparams(hyperparams)
        logger.save()
    rank_zero_info(
        f"{label}: calibrated at step {calibrated['step']}: "
        f"lr={calibrated['lr']:.3g}, nbeta={calibrated['nbeta']:.4g}, "
        f"localization={calibrated['localization']:g}, "
        f"num_burnin>={calibrated['num_burnin']}; kept for the whole run."
    )
    for message in calibrated["warnings"]:
        rank_zero_warn(f"{label}: calibration: {message}", category=LLCHealthWarning)
    if result is not None:
        builders = {
            f"{name}/calibration/llc": lambda: plot_calibration_llc(result),
            f"{name}/calibration/traces": lambda: plot_calibration_traces(result),
        }
        figures.draw(trainer, folder, builders, calibrated["step"])
