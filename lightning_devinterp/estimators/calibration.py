"""Calibration: SGLD hyperparameters chosen by the health of short chains.

:func:`calibrate` walks a log grid of step sizes ε (for each localization γ, and for each nβ
when none is given) at the model's current weights, with a few short chains per setting, all
on one copy of the model with one L(w*) computation, and scores each setting by chain health.

Per setting, the chains run ``num_draws`` draws from w*: the first half is burn-in, the
second gives the setting's estimate. Where that half is shorter than the localization's
relaxation time ``1/(ε γ)`` (the slowest a direction held only by the localization can fill:
hundreds of steps at a sound small step), the burn-in is extended to it (by at most
``RELAXATION_CAP_DRAWS`` times the draws), unless the step bias bound alone exceeds
``tolerance`` (such a setting can neither be confirmed nor confirm; it runs as it is, for its
noise and divergence figures). When the budget left cannot afford the extension, the setting
runs as it is (not healthy: not relaxed) and the calibration stops (smaller steps relax more
slowly still; a larger localization changes the posterior); the advice says so.

The setting is healthy when no chain diverges, that estimate is positive, the trace is flat
over the second half (no significant drift above 10%, and, unless the burn-in was extended to
the relaxation time, no drift above 30% at all), the chains agree (R-hat <= 1.1), the burn-in
covers the relaxation time, the drift's minibatch noise biases the estimate by at most
``tolerance``, and, when measured, the MALA acceptance is at least ``min_acceptance``. The
recommended burn-in is the larger of that first half and ``1/(ε γ)``.

Selection rule. Along one (nβ, γ) the estimate as a function of ε has three regimes: too large
(the chains diverge, or the discretisation and the minibatch noise inflate the estimate), a
plateau, and too small (the chains do not fill the posterior in the draws given). The walk
goes down the grid from the largest ε (skipping steps whose minibatch-noise bias, linear in
ε, is predicted above ``tolerance`` from a larger step at the same nβ), and recommends the
**largest healthy ε that is confirmed**, in either of two ways:

- its estimate the next larger grid ε (also healthy) reproduces within ``tolerance``: the
  larger setting shows that the step-size bias has fallen to about ``tolerance``; at the
  recommended ε, one grid ratio r below, it is about ``tolerance / (r - 1)`` (the bias grows
  about linearly with ε);
- or (``bounded``: default grid, where the top curvature h is measured; not for
  :class:`RMSpropSGLD`, whose step ``lr G`` is not known in advance) its predicted biases add
  up to at most ``tolerance``: Euler's variance inflation of the stiffest direction,
  ``1/(1 - εa/4) - 1`` with ``a = nβ h + γ`` (an upper bound for a quadratic loss), plus the
  minibatch-noise bias; and the larger step tried before it reads no further above it than
  both settings' predicted biases allow (with twice ``tolerance`` as slack), else the loss
  is not the quadratic the bound assumes. With the noise condition the largest sound ε often
  has no healthy larger neighbour, and a smaller one would cost a relaxation r times longer.

The setting's own chains are healthy, so they mix. Walking down one (nβ, γ) also ends at the
first unhealthy setting (not diverged) below a healthy one: smaller steps mix more slowly
still.

The (nβ, γ) pairs are tried in order of preference, the least regularised posterior first
(largest nβ, then smallest γ: both bring the estimate nearer the learning coefficient); the
first pair with a confirmed setting wins and the calibration stops there. Without one, the
result falls back (unconfirmed, with a warning that says what to change) to the smaller ε of
the two healthy neighbours whose estimates are closest, else to the healthy setting with the
smallest ε of the most preferred pair, else to the least unhealthy setting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from torch import nn

from lightning_devinterp.estimators.bias import noise_bias, noise_warning
from lightning_devinterp.estimators.calibration_grid import (
    DEFAULT_NBETA_FACTORS,
    DEFAULT_STEP_FRACTIONS,
    setting_groups,
    step_grid,
    top_curvature,
)
from lightning_devinterp.estimators.calibration_options import (
    CALIBRATE_OPTIONS,
    DEFAULT_LOCALIZATIONS,
    DEFAULT_MAX_STEPS,
    CalibrationOptions,
    calibration_options,
    check_calibrate_options,
)
from lightning_devinterp.estimators.calibration_rule import (
    LARGE_DRIFT,
    advice,
    agreement,
    any_confirmed,
    bounded,
    is_confirmed,
    predicted_noise_bias,
    predicted_step_bias,
    relaxation_burnin,
    relaxation_steps,
    second_half,
    select,
    steps_run,
    table_row,
    walk_ends,
)
from lightning_devinterp.estimators.llc import LLCEstimate, llc_from_traces
from lightning_devinterp.estimators.llc_sampling import SamplingCopy, sampling_copy
from lightning_devinterp.sampling import SGLD, ChainSettings, LossFn, run_sampling

#: A setting's burn-in is extended to its relaxation time up to this many times its draws.
RELAXATION_CAP_DRAWS = 8

__all__ = [
    "CALIBRATE_OPTIONS",
    "DEFAULT_LOCALIZATIONS",
    "DEFAULT_MAX_STEPS",
    "DEFAULT_NBETA_FACTORS",
    "DEFAULT_STEP_FRACTIONS",
    "LARGE_DRIFT",
    "Calibration",
    "CalibrationOptions",
    "calibrate",
    "calibrate_with",
    "check_calibrate_options",
    "select",
    "top_curvature",
]


@dataclass
class Calibration:
    """What :func:`calibrate` found.

    Attributes:
        sampler: the recommended SGLD settings.
        num_burnin: the burn-in (SGLD steps) after which the recommended setting's chains were
            on their plateau; estimate with at least this ``num_burnin``.
        table: one row per setting tried, in the order tried, with every health figure: ``lr``,
            ``nbeta``, ``localization``; ``llc``, ``std`` and ``per_chain`` over the second half
            of the draws, ``llc_all_draws`` (mean over all draws, as an estimate without burn-in
            would give); ``diverged_chains``, ``negative``, ``drift``, ``drift_z``,
            ``stationary``, ``rhat``, ``chains_agree``, ``mala_acceptance``, ``healthy``;
            ``difference`` (relative to the estimate at the next larger ε when both are healthy,
            else None) and ``agrees_with_larger`` (it is within ``tolerance``);
            ``minibatch_noise``, ``minibatch_bias``, ``step_bias`` (the Euler bound, None
            without a measured curvature) and ``bounded`` (confirmed by them: see the
            module's rule); ``relaxation`` and ``burnin`` (1/(εγ) and the steps before the
            plateau half); ``steps`` (SGLD steps spent), ``chosen`` and ``warnings``.
        estimates: the :class:`LLCEstimate` over all draws of each row (with its traces).
        chosen: the index of the recommended row in ``table``.
        confirmed: the recommendation was confirmed by the next larger ε (see the module's
            selection rule); False for a fallback.
        curvature: the top curvature h of the loss at w* that scaled the default grid (None
            when ``lrs`` was given).
        steps: SGLD steps spent in all.
        warnings: what went wrong and what to change (empty when confirmed and healthy).
    """

    sampler: SGLD
    num_burnin: int
    table: list[dict[str, Any]]
    estimates: list[LLCEstimate]
    chosen: int
    confirmed: bool
    curvature: float | None = None
    steps: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """The recommended setting's chains were healthy."""
        return bool(self.table[self.chosen]["healthy"])

    @property
    def estimate(self) -> LLCEstimate:
        """The calibration's own (short) estimate at the recommended setting, all draws."""
        return self.estimates[self.chosen]

    def to_record(self) -> dict[str, Any]:
        """The choice as flat JSON-serializable values (for loggers' hyperparameters)."""
        return {
            **asdict(self.sampler),
            "num_burnin": self.num_burnin,
            "confirmed": self.confirmed,
            "healthy": self.healthy,
            "settings_tried": len(self.table),
            "steps": self.steps,
        }


def calibrate(
    model: nn.Module,
    dataloader: Iterable,
    loss_fn: LossFn | None = None,
    *,
    nbeta: float | None = None,
    lrs: Sequence[float] | None = None,
    localizations: Sequence[float] = DEFAULT_LOCALIZATIONS,
    nbetas: Sequence[float] | None = None,
    num_chains: int = 4,
    num_draws: int = 100,
    num_burnin: int = 0,
    steps_between_draws: int = 1,
    tolerance: float = 0.1,
    mala: bool = False,
    min_acceptance: float = 0.9,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    full_sweep: bool = False,
    batched: bool | None = None,
    seed: int = 0,
    init_loss_batches: int = 16,
    paired: bool = True,
    train_mode: bool = False,
    transfer: Callable[[Any], Any] | None = None,
    sampler: SGLD | None = None,
) -> Calibration:
    """Choose SGLD hyperparameters (ε, γ, and nβ unless given) by the health of short chains.

    See the module's docstring for what makes a setting healthy and for the selection rule.
    The model is copied once and L(w*) computed once for the whole sweep; its weights, grads,
    modes and the global RNG are left as found. At the defaults it runs at most 1800 SGLD
    steps (an ordinary estimate: 800), about 2.2 estimates' time (BENCHMARKS.md).

    Args:
        model: the model at w*.
        dataloader: batches to sample with.
        loss_fn: as for :func:`estimate_llc`; default the model's ``training_step``.
        nbeta: fix nβ (only ε and γ are swept). Default: sweep ``nbetas``.
        lrs: the ε grid. Default: ``DEFAULT_STEP_FRACTIONS / (nβ h + γ)`` for each (nβ, γ),
            with h the top curvature of the loss at w* (power iteration on one batch).
        localizations: γ values, tried weakest first.
        nbetas: nβ values tried when ``nbeta`` is None, largest first. Default: m/log m and a
            quarter of it (m: the batch size).
        num_chains: chains per setting (at least 2, so that chains can be compared).
        num_draws: draws per chain and setting (at least 16); the first half is burn-in.
        num_burnin: steps discarded per chain before the first draw, besides that half.
        steps_between_draws: SGLD steps from one draw to the next.
        tolerance: relative difference up to which the estimates at neighbouring ε agree.
        mala: measure the MALA acceptance rate and require at least ``min_acceptance``.
        min_acceptance: least healthy MALA acceptance (used with ``mala``).
        max_steps: the budget in SGLD steps over all settings; the walk stops before a
            setting it cannot afford. None: no limit.
        full_sweep: evaluate every setting of the grid, without the walk's early stops nor
            ``max_steps`` (complete figures); the rule then chooses among all of them.
        batched: run each setting's chains as one ``torch.func.vmap`` computation (same draws
            up to rounding; not with ``mala``). Default: on an accelerator only, as
            :func:`sample_components` does.
        seed: chain ``c`` of every setting uses the noise and batches of ``(seed, c)``.
        init_loss_batches: batches averaged for L(w*).
        paired: the paired estimator (see :func:`estimate_llc`).
        train_mode: sample in train mode instead of eval mode.
        transfer: moves a batch to the model's device; default moves every tensor.
        sampler: the template of every candidate (``dataclasses.replace`` sets its lr, nβ and
            localization, so a subclass of :class:`SGLD` is calibrated as itself); default
            ``SGLD(lr=1e-3)``.

    Returns:
        A :class:`Calibration`; ``.sampler`` is the recommended :class:`SGLD`.

    Example:
        >>> result = calibrate(model, loader, loss_fn, nbeta=30.0)
        >>> result.sampler, result.confirmed, result.warnings
        >>> estimate_llc(
        ...     model, loader, loss_fn, sampler=result.sampler, num_burnin=result.num_burnin
        ... )
    """
    chains = ChainSettings(
        num_chains, num_draws, num_burnin, steps_between_draws, seed, init_loss_batches, paired,
        train_mode, mala,
    )  # fmt: skip
    return calibrate_with(
        model,
        dataloader,
        loss_fn,
        chains=chains,
        transfer=transfer,
        nbeta=nbeta,
        lrs=lrs,
        localizations=localizations,
        nbetas=nbetas,
        num_chains=num_chains,
        num_draws=num_draws,
        tolerance=tolerance,
        min_acceptance=min_acceptance,
        max_steps=max_steps,
        full_sweep=full_sweep,
        batched=batched,
        sampler=sampler,
    )


def calibrate_with(
    model: nn.Module,
    dataloader: Iterable,
    loss_fn: LossFn | None,
    *,
    chains: ChainSettings,
    transfer: Callable[[Any], Any] | None = None,
    **options: Any,
) -> Calibration:
    """:func:`calibrate` with the chain settings as one object: ``options`` are names of
    :data:`CALIBRATE_OPTIONS`. The chain counts come from ``options`` (default 4 chains of
    100 draws), never from ``chains``, whose seed, burn-in, steps between draws, L(w*)
    batches, paired, train mode and MALA are used."""
    settings = calibration_options(options)
    chains = chains.replace(num_chains=settings.num_chains, num_draws=settings.num_draws)
    copy = sampling_copy(model, dataloader, loss_fn, chains, transfer)
    groups = setting_groups(settings, copy.batch_size)
    curvature = None
    if settings.lrs is None:
        curvature = top_curvature(copy.flat, copy.loss_fn, dataloader, chains.seed, copy.transfer)
    sweep = _Sweep(copy, dataloader, chains, settings)
    sweep.run(groups, curvature)
    chosen, confirmed = select(sweep.rows, groups)
    for i, row in enumerate(sweep.rows):
        row["chosen"] = i == chosen
        del row["group"]
    sampler = sweep.estimates[chosen].sampler
    return Calibration(
        sampler=sampler,
        num_burnin=max(sweep.burnin, relaxation_steps(sampler)),
        table=sweep.rows,
        estimates=sweep.estimates,
        chosen=chosen,
        confirmed=confirmed,
        curvature=curvature,
        steps=sweep.spent,
        warnings=advice(sweep.rows, chosen, confirmed, sweep.out_of_budget, settings.tolerance),
    )


class _Sweep:
    """The walk down the grid (see the module's docstring) and what it found: a row and an
    estimate per setting tried, and the SGLD steps spent."""

    def __init__(
        self,
        copy: SamplingCopy,
        dataloader: Iterable,
        chains: ChainSettings,
        settings: CalibrationOptions,
    ) -> None:
        self.copy = copy
        self.dataloader = dataloader
        self.chains = chains
        self.settings = settings
        self.template = settings.sampler or SGLD(lr=1e-3)
        self.per_setting = chains.num_chains * chains.steps_per_chain
        self.burnin = chains.num_burnin + chains.num_draws // 2 * chains.steps_between_draws
        self.batched = settings.batched
        self.rows: list[dict[str, Any]] = []
        self.estimates: list[LLCEstimate] = []
        self.spent = 0
        self.out_of_budget = False
        if settings.max_steps is not None and not settings.full_sweep:
            if self.per_setting > settings.max_steps:
                raise ValueError(
                    f"max_steps={settings.max_steps} cannot afford one setting "
                    f"({chains.num_chains} chains x {chains.steps_per_chain} steps = "
                    f"{self.per_setting}); raise max_steps or use fewer chains or draws."
                )

    def run(self, groups: Sequence[tuple[float, float]], curvature: float | None) -> None:
        """Walk each (nβ, γ) in order down its ε grid, until a setting is confirmed or the
        budget is spent (every setting with ``full_sweep``)."""
        settings = self.settings
        full = settings.full_sweep
        for group in groups:
            for lr in step_grid(settings.lrs, curvature, *group):
                candidate = replace(self.template, lr=lr, nbeta=group[0], localization=group[1])
                step_bias = predicted_step_bias(candidate, curvature)
                extra = self._extra_burnin(candidate, step_bias)
                if not full and settings.max_steps is not None:
                    if self.spent + self._cost(extra or 0) > settings.max_steps:
                        self.out_of_budget = True
                        break
                same_nbeta = [r for r in self.rows if r["group"][0] == group[0]]
                if predicted_noise_bias(same_nbeta, lr) > settings.tolerance:
                    continue  # the noise bias is linear in lr: skip to a sound step
                above = [r for r in self.rows if r["group"] == group]
                row = self._try(candidate, group, above, extra or 0, step_bias)
                if extra is None:  # smaller steps relax slower still: the budget is spent
                    self.out_of_budget = True
                    break
                if not full and (is_confirmed(row) or walk_ends(row, above)):
                    break
            if self.out_of_budget or (not full and any_confirmed(self.rows)):
                break

    def _cost(self, extra: int) -> int:
        """SGLD steps of one setting whose burn-in is ``extra`` steps longer."""
        return self.per_setting + self.chains.num_chains * extra

    def _extra_burnin(self, sampler: SGLD, step_bias: float | None) -> int | None:
        """The burn-in a setting adds to cover its relaxation time (:func:`relaxation_burnin`;
        0 past the step bound, see the module); None when the budget left cannot afford it."""
        if step_bias is not None and step_bias > self.settings.tolerance:
            return 0
        cap = RELAXATION_CAP_DRAWS * self.chains.num_draws * self.chains.steps_between_draws
        extra = relaxation_burnin(sampler, self.burnin, cap)
        steps = self.settings.max_steps
        if extra and not self.settings.full_sweep and steps is not None:
            if self.spent + self._cost(extra) > steps:
                return None
        return extra

    def _try(
        self,
        sampler: SGLD,
        group: tuple[float, float],
        above: Sequence[dict[str, Any]],
        extra: int,
        step_bias: float | None,
    ) -> dict[str, Any]:
        """Run one setting's chains, ``extra`` burn-in steps longer, and add its row
        (``above``: the rows of its (nβ, γ) so far, larger ε first)."""
        copy, settings = self.copy, self.settings
        chains = self.chains.replace(num_burnin=self.chains.num_burnin + extra)
        [traces], self.batched = run_sampling(
            copy.flat,
            copy.loss_fn,
            self.dataloader,
            sampler,
            masks=[None],
            chains=chains,
            transfer=copy.transfer,
            batched=self.batched,
        )
        estimate = llc_from_traces(traces, sampler, copy.init_losses)
        plateau = llc_from_traces(second_half(traces), sampler, copy.init_losses)
        accepted = (
            not self.chains.mala or (estimate.mala_acceptance or 0.0) >= settings.min_acceptance
        )
        burnin = self.burnin + extra
        row = table_row(
            estimate, plateau, group, accepted, settings.min_acceptance, burnin, extra > 0
        )
        row["burnin"] = burnin
        self._check_noise(row, sampler)
        row.update(agreement(row, above[-1] if above else None, settings.tolerance))
        row["step_bias"] = step_bias
        row["bounded"] = bounded(row, above[-1] if above else None, settings.tolerance)
        row["steps"] = steps_run(traces.loss, chains)
        self.spent += row["steps"]
        self.rows.append(row)
        self.estimates.append(estimate)
        return row

    def _check_noise(self, row: dict[str, Any], sampler: SGLD) -> None:
        """The row's minibatch-noise figures; a setting the noise biases by more than
        ``tolerance`` is not healthy (its chains may look fine; its estimate is too hot)."""
        noise = self.copy.noise()
        row["minibatch_noise"] = noise.ratios(sampler)[0] if noise is not None else None
        bias = noise_bias(noise, sampler, row["llc"]) if noise is not None else None
        row["minibatch_bias"] = bias
        if bias is not None and row["healthy"] and not bias <= self.settings.tolerance:
            row["healthy"] = False
            message = noise_warning(noise, sampler, row["llc"])
            row["warnings"].extend([message] if message else [])
