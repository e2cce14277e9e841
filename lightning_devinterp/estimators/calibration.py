"""Calibration: SGLD hyperparameters chosen by the health of short chains.

:func:`calibrate` walks a log grid of step sizes ε (for each localization γ, and for each nβ
when none is given) at the model's current weights, with a few short chains per setting, all
on one copy of the model with one L(w*) computation, and scores each setting by chain health.

Per setting, the chains run ``num_draws`` draws from w*. The first half is burn-in (the trace
rises from 0 to its plateau); the second half gives the setting's estimate. The setting is
healthy when no chain diverges, that estimate is positive, the trace is flat over the second
half (no significant drift above 10%, and no drift above 30% at all), the chains agree
(R-hat <= 1.1), the burn-in covers the localization's relaxation time ``1/(ε γ)`` (the
slowest a direction held only by the localization can fill), and, when measured, the MALA
acceptance is at least ``min_acceptance``. The recommended burn-in is the larger of that first
half and ``1/(ε γ)``.

Selection rule. Along one (nβ, γ) the estimate as a function of ε has three regimes: too large
(the chains diverge, or the discretisation inflates the estimate), a plateau, and too small
(the chains do not fill the posterior in the draws given). The walk goes down the grid from
the largest ε, and recommends the **largest healthy ε whose estimate the next larger grid ε
(also healthy) reproduces within** ``tolerance``. The larger setting shows that the
step-size bias has fallen to about ``tolerance``; at the recommended ε, one grid ratio r below,
it is about ``tolerance / (r - 1)`` (the bias grows about linearly with ε), and the setting's
own chains are healthy, so they mix. Walking down one (nβ, γ) also ends at the first
unhealthy setting (not diverged) below a healthy one: smaller steps mix more slowly still.

The (nβ, γ) pairs are tried in order of preference, the least regularised posterior first
(largest nβ, then smallest γ: both bring the estimate nearer the learning coefficient); the
first pair with a confirmed setting wins and the calibration stops there. Without one, the
result falls back (unconfirmed, with a warning that says what to change) to the smaller ε of
the two healthy neighbours whose estimates are closest, else to the healthy setting with the
smallest ε of the most preferred pair, else to the least unhealthy setting.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from lightning_devinterp.estimators.diagnostics import DRIFT_TOLERANCE, health_warnings
from lightning_devinterp.estimators.llc import (
    LLCEstimate,
    check_sampling_args,
    default_loss_fn,
    llc_from_traces,
    reference_losses,
)
from lightning_devinterp.sampling import (
    SGLD,
    BatchStream,
    ChainTraces,
    FlatModel,
    LossFn,
    chain_seed,
    default_nbeta,
    move_to_device,
    run_chains,
    seeded_global_rng,
)
from lightning_devinterp.sampling.batched import BatchingUnsupported, run_chains_batched

#: Default ε grid, as fractions of 1/a (a = nβ h + γ, h the top curvature of the loss at w*):
#: ratio sqrt(10) from 1 (Euler's stability limit for the stiffest direction is 4) to 1e-3.
DEFAULT_STEP_FRACTIONS = tuple(10 ** (-k / 2) for k in range(7))
#: Default localizations, tried weakest first.
DEFAULT_LOCALIZATIONS = (100.0, 300.0, 1000.0)
#: Default nβ values when none is given, as multiples of m / log m (m: batch size).
DEFAULT_NBETA_FACTORS = (1.0, 0.25)
#: Default budget: SGLD steps over all settings (an ordinary estimate runs 4 x 200).
DEFAULT_MAX_STEPS = 1800
#: A drift of the trace's second half beyond this fraction of the estimate means the chains
#: are still moving, significant or not.
LARGE_DRIFT = 3 * DRIFT_TOLERANCE


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
            else None) and ``agrees_with_larger`` (it is within ``tolerance``); ``steps`` (SGLD
            steps spent), ``chosen`` and ``warnings``.
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

    Returns:
        A :class:`Calibration`; ``.sampler`` is the recommended :class:`SGLD`.

    Example:
        >>> result = calibrate(model, loader, loss_fn, nbeta=30.0)
        >>> result.sampler, result.confirmed, result.warnings
        >>> estimate_llc(
        ...     model, loader, loss_fn, sampler=result.sampler, num_burnin=result.num_burnin
        ... )
    """
    check_sampling_args(num_chains, num_draws, num_burnin, steps_between_draws, init_loss_batches)
    _check_counts(num_chains, num_draws)
    _check_options(nbeta, lrs, localizations, nbetas, tolerance, min_acceptance, max_steps)
    loss_fn = loss_fn or default_loss_fn(model)
    flat = FlatModel(model, train_mode=train_mode)
    transfer = transfer or (lambda batch: move_to_device(batch, flat.device))
    init_losses, batch_size = reference_losses(
        flat, loss_fn, dataloader, init_loss_batches, seed, transfer
    )
    if nbeta is not None:
        nbeta_values = [float(nbeta)]
    elif nbetas is not None:
        nbeta_values = sorted({float(v) for v in nbetas}, reverse=True)
    else:
        nbeta_values = [f * default_nbeta(batch_size) for f in DEFAULT_NBETA_FACTORS]
    curvature = None
    if lrs is None:
        curvature = top_curvature(flat, loss_fn, dataloader, seed, transfer)
    groups = [(b, g) for b in nbeta_values for g in sorted({float(v) for v in localizations})]
    per_setting = num_chains * (num_burnin + num_draws * steps_between_draws)
    if max_steps is not None and not full_sweep and per_setting > max_steps:
        raise ValueError(
            f"max_steps={max_steps} cannot afford one setting ({num_chains} chains x "
            f"{per_setting // num_chains} steps = {per_setting}); raise max_steps or use fewer "
            "chains or draws."
        )
    run = dict(
        chains=list(range(num_chains)),
        num_draws=num_draws,
        num_burnin=num_burnin,
        steps_between_draws=steps_between_draws,
        seed=seed,
        paired=paired,
        transfer=transfer,
    )
    if batched is None:
        batched = flat.device.type != "cpu"
    batched = batched and not mala
    burnin = num_burnin + num_draws // 2 * steps_between_draws
    rows: list[dict[str, Any]] = []
    estimates: list[LLCEstimate] = []
    spent, out_of_budget = 0, False
    for group in groups:
        for lr in _grid(lrs, curvature, *group):
            if not full_sweep and max_steps is not None and spent + per_setting > max_steps:
                out_of_budget = True
                break
            sampler = SGLD(lr=lr, nbeta=group[0], localization=group[1])
            traces, batched = _run(flat, loss_fn, dataloader, sampler, run, mala, batched)
            estimate = llc_from_traces(traces, sampler, init_losses)
            plateau = llc_from_traces(_second_half(traces), sampler, init_losses)
            accepted = not mala or (estimate.mala_acceptance or 0.0) >= min_acceptance
            row = _row(estimate, plateau, group, accepted, min_acceptance, burnin)
            above = [r for r in rows if r["group"] == group]
            row.update(_agreement(row, above[-1] if above else None, tolerance))
            row["steps"] = _steps_run(traces.loss, num_burnin, steps_between_draws, per_setting)
            spent += row["steps"]
            rows.append(row)
            estimates.append(estimate)
            if not full_sweep and (row["agrees_with_larger"] or _walk_ends(row, above)):
                break
        if out_of_budget or (not full_sweep and _confirmed(rows)):
            break
    chosen, confirmed = select(rows, groups)
    for i, row in enumerate(rows):
        row["chosen"] = i == chosen
        del row["group"]
    return Calibration(
        sampler=estimates[chosen].sampler,
        num_burnin=max(burnin, _relaxation(estimates[chosen].sampler)),
        table=rows,
        estimates=estimates,
        chosen=chosen,
        confirmed=confirmed,
        curvature=curvature,
        steps=spent,
        warnings=_advice(rows, chosen, confirmed, out_of_budget, tolerance),
    )


def select(
    rows: Sequence[dict[str, Any]], groups: Sequence[tuple[float, float]]
) -> tuple[int, bool]:
    """The recommended row of a calibration table and whether it is confirmed.

    ``rows`` carry ``group`` (nβ, γ), ``lr``, ``healthy``, ``difference`` and
    ``agrees_with_larger``; ``groups`` are the (nβ, γ) pairs in order of preference. See the
    module's docstring for the rule.
    """
    order = {group: i for i, group in enumerate(groups)}
    confirmed = [i for i, r in enumerate(rows) if r["agrees_with_larger"]]
    if confirmed:
        return min(confirmed, key=lambda i: (order[rows[i]["group"]], -rows[i]["lr"])), True
    pairs = [i for i, r in enumerate(rows) if r["difference"] is not None]
    if pairs:
        return min(pairs, key=lambda i: (rows[i]["difference"], order[rows[i]["group"]])), False
    healthy = [i for i, r in enumerate(rows) if r["healthy"]]
    if healthy:
        return min(healthy, key=lambda i: (order[rows[i]["group"]], rows[i]["lr"])), False
    return min(range(len(rows)), key=lambda i: (_badness(rows[i]), order[rows[i]["group"]])), False


@torch.no_grad()
def top_curvature(
    flat: FlatModel,
    loss_fn: LossFn,
    dataloader: Iterable,
    seed: int,
    transfer: Callable[[Any], Any],
    iterations: int = 20,
) -> float:
    """The largest absolute eigenvalue of the loss's Hessian at w* on one batch, by power
    iteration with finite differences of gradients (first derivatives only, so any model
    works). Costs ``iterations + 1`` forward-backward passes; the copy is left at w*."""
    batch = next(BatchStream(dataloader, chain_seed(seed, -1, 6), transfer))
    anchor = flat.anchor()
    scale = max(float(anchor.double().square().mean().sqrt()), 1e-2)
    delta = 1e-3 * scale * math.sqrt(anchor.numel())  # 0.1% of the weights' rms per entry
    generator = torch.Generator(device=flat.device).manual_seed(chain_seed(seed, -1, 7))
    v = torch.randn(anchor.shape, generator=generator, device=flat.device, dtype=anchor.dtype)
    v /= v.norm()
    with seeded_global_rng(chain_seed(seed, -1, 8), flat.device):
        g0 = _gradient(flat, loss_fn, batch)
        value = 0.0
        for _ in range(iterations):
            flat.params.copy_(anchor + delta * v)
            hv = (_gradient(flat, loss_fn, batch) - g0) / delta
            value = float(torch.dot(v.double(), hv.double()))
            norm = hv.norm()
            if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
                break
            v = hv / norm
    flat.reset()
    return abs(value)


def _gradient(flat: FlatModel, loss_fn: LossFn, batch: Any) -> torch.Tensor:
    with torch.inference_mode(False), torch.enable_grad():
        flat.loss_and_grad(loss_fn, batch)
    grad = flat.grad
    for _, p in flat.active:
        p.grad = None
    return grad


def _run(
    flat: FlatModel,
    loss_fn: LossFn,
    dataloader: Iterable,
    sampler: SGLD,
    run: dict[str, Any],
    mala: bool,
    batched: bool,
) -> tuple[ChainTraces, bool]:
    """One setting's chains, batched when asked and possible; whether batching still holds."""
    if batched:
        try:
            with seeded_global_rng(chain_seed(run["seed"], -1, 5), flat.device):  # augmentation
                [traces] = run_chains_batched(
                    flat, loss_fn, dataloader, sampler, masks=[None], **run
                )
            return traces, True
        except BatchingUnsupported:
            pass  # the model cannot be vmapped: one by one from here on
    return run_chains(flat, loss_fn, dataloader, sampler, mala=mala, **run), False


def _grid(
    lrs: Sequence[float] | None, curvature: float | None, nbeta: float, localization: float
) -> list[float]:
    """The ε values of one (nβ, γ), largest first."""
    if lrs is not None:
        return sorted({float(v) for v in lrs}, reverse=True)
    stiffness = nbeta * float(curvature or 0.0) + localization
    if stiffness <= 0:
        raise ValueError(
            "The loss has no curvature at w* and localization is 0, so no step size scale "
            "exists; pass lrs=[...] or a localization > 0."
        )
    return [fraction / stiffness for fraction in DEFAULT_STEP_FRACTIONS]


def _row(
    est: LLCEstimate,
    plateau: LLCEstimate,
    group: tuple[float, float],
    accepted: bool,
    min_acceptance: float,
    burnin: int,
) -> dict[str, Any]:
    """One table row: the setting and every health figure. ``est`` covers all draws (its
    trace's last two quarters decide stationarity), ``plateau`` the draws after ``burnin``
    steps (the value, its sign and the chains' agreement); ``accepted``: the MALA acceptance
    is high enough."""
    positive = math.isfinite(plateau.mean) and plateau.mean > 0
    stationary = est.stationary and not abs(est.drift) > LARGE_DRIFT
    relaxation = _relaxation(est.sampler)
    relaxed = relaxation <= burnin
    healthy = (
        positive and not est.diverged_chains and stationary and plateau.chains_agree and relaxed
    )
    messages = health_warnings(
        mean=plateau.mean,
        num_chains=len(est.per_chain),
        diverged=est.diverged_chains,
        drift=est.drift,
        drift_z=est.drift_z,
        lr=est.sampler.lr,
        stationary=stationary,
        rhat=plateau.rhat,
    )
    if not relaxed:
        messages.append(
            f"The burn-in ({burnin} steps) is shorter than the localization's relaxation time "
            f"1/(lr*localization) = {relaxation} steps, so the chains have not spread through "
            "the directions held only by the localization; use a larger lr or more draws."
        )
    if not accepted:
        messages.append(
            f"The MALA acceptance ({est.mala_acceptance:.2f}) is below {min_acceptance}: the "
            "step is too large for its curvature; use a smaller lr."
        )
    return {
        "group": group,
        "lr": est.sampler.lr,
        "nbeta": float(est.sampler.nbeta),
        "localization": est.sampler.localization,
        "llc": plateau.mean,
        "std": plateau.std,
        "per_chain": [float(v) for v in plateau.per_chain],
        "llc_all_draws": est.mean,
        "diverged_chains": len(est.diverged_chains),
        "negative": plateau.negative,
        "drift": est.drift,
        "drift_z": est.drift_z,
        "stationary": stationary,
        "rhat": plateau.rhat,
        "chains_agree": plateau.chains_agree,
        "relaxation": relaxation,
        "mala_acceptance": est.mala_acceptance,
        "healthy": healthy and accepted,
        "warnings": messages,
    }


def _agreement(
    row: dict[str, Any], larger: dict[str, Any] | None, tolerance: float
) -> dict[str, Any]:
    """``difference`` from the row of the next larger ε (both healthy), and whether it is
    within ``tolerance``."""
    difference = None
    if larger is not None and row["healthy"] and larger["healthy"]:
        difference = abs(larger["llc"] - row["llc"]) / row["llc"]
    return {
        "difference": difference,
        "agrees_with_larger": difference is not None and difference <= tolerance,
    }


def _relaxation(sampler: SGLD) -> int:
    """Steps for the chains to spread through directions held only by the localization,
    ``1 / (lr * localization)`` (0 without localization)."""
    rate = sampler.lr * sampler.localization
    return math.ceil(1 / rate) if rate > 0 else 0


def _second_half(traces: ChainTraces) -> ChainTraces:
    """The draws after the first half (the burn-in of a calibration setting)."""
    half = traces.loss.shape[1] // 2
    return ChainTraces(
        chains=traces.chains,
        loss=traces.loss[:, half:],
        reference=traces.reference[:, half:] if traces.reference is not None else None,
        diverged=traces.diverged,
        mala=traces.mala,
    )


def _walk_ends(row: dict[str, Any], above: Sequence[dict[str, Any]]) -> bool:
    """Below a healthy setting, chains that do not diverge yet are unhealthy will not mix
    better at a smaller step: the walk down this (nβ, γ) ends."""
    return not row["healthy"] and not row["diverged_chains"] and any(r["healthy"] for r in above)


def _confirmed(rows: Sequence[dict[str, Any]]) -> bool:
    return any(r["agrees_with_larger"] for r in rows)


def _badness(row: dict[str, Any]) -> tuple[int, ...]:
    """Orders unhealthy rows, least bad first: divergence, then a negative or non-finite
    LLC, then disagreeing chains, then a drifting trace."""
    finite = math.isfinite(row["llc"]) and row["llc"] > 0
    return (
        row["diverged_chains"],
        int(not finite),
        int(not row["chains_agree"]),
        int(not row["stationary"]),
    )


def _steps_run(loss: torch.Tensor, num_burnin: int, steps_between_draws: int, full: int) -> int:
    """SGLD steps the chains of one setting ran (a diverged chain stops at its next check,
    every 32 steps)."""
    per_chain = full // loss.shape[0]
    total = 0
    for row in loss:
        bad = (~torch.isfinite(row)).nonzero()
        if bad.numel() == 0:
            total += per_chain
        else:
            at = num_burnin + int(bad[0]) * steps_between_draws + 1
            total += min(per_chain, -(-at // 32) * 32)
    return total


def _advice(
    rows: Sequence[dict[str, Any]],
    chosen: int,
    confirmed: bool,
    out_of_budget: bool,
    tolerance: float,
) -> list[str]:
    """What the user should know about the recommendation, with what to change."""
    row = rows[chosen]
    setting = f"lr={row['lr']:.3g}, nbeta={row['nbeta']:.4g}, localization={row['localization']:g}"
    messages = []
    if out_of_budget:
        messages.append(
            f"Calibration stopped at its budget after {len(rows)} settings; raise max_steps "
            "or narrow the grid (lrs, localizations, nbetas)."
        )
    if not row["healthy"]:
        messages.append(
            f"No setting gave healthy chains; the least unhealthy ({setting}) is returned. "
            + " ".join(row["warnings"])
        )
    elif not confirmed:
        reason = (
            f"the smaller lr of the closest pair, {row['difference']:.0%} apart"
            if row["difference"] is not None
            else "no healthy neighbour to compare with"
        )
        messages.append(
            f"No two neighbouring step sizes gave estimates within {tolerance:.0%} of each "
            f"other; {setting} ({reason}) is unconfirmed. Use more draws (num_draws), a larger "
            "max_steps to walk further, or a finer grid (lrs)."
        )
    return messages


#: Options of :func:`calibrate` a caller that owns the data and chain settings may pass on.
CALIBRATE_OPTIONS = (
    "nbeta",
    "lrs",
    "localizations",
    "nbetas",
    "num_chains",
    "num_draws",
    "tolerance",
    "min_acceptance",
    "max_steps",
    "full_sweep",
    "batched",
)


def check_calibrate_options(options: Mapping[str, Any]) -> None:
    """Raise a ``ValueError`` naming the first unknown or invalid option of
    :data:`CALIBRATE_OPTIONS` in ``options`` (checked before any sampling)."""
    unknown = [key for key in options if key not in CALIBRATE_OPTIONS]
    if unknown:
        raise ValueError(
            f"Unknown calibration option(s) {unknown}; use some of {list(CALIBRATE_OPTIONS)}."
        )
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(calibrate).parameters.items()
        if name in CALIBRATE_OPTIONS
    }
    merged = {**defaults, **options}
    check_sampling_args(merged["num_chains"], merged["num_draws"], 0, 1, 1)
    _check_counts(merged["num_chains"], merged["num_draws"])
    _check_options(
        merged["nbeta"],
        merged["lrs"],
        merged["localizations"],
        merged["nbetas"],
        merged["tolerance"],
        merged["min_acceptance"],
        merged["max_steps"],
    )


def _check_counts(num_chains: int, num_draws: int) -> None:
    if num_chains < 2 or num_draws < 16:
        raise ValueError(
            f"num_chains={num_chains}, num_draws={num_draws} are too few for calibration; use "
            "at least 2 chains (to compare them) and 16 draws (half of them are burn-in)."
        )


def _check_options(
    nbeta: float | None,
    lrs: Sequence[float] | None,
    localizations: Sequence[float],
    nbetas: Sequence[float] | None,
    tolerance: float,
    min_acceptance: float,
    max_steps: int | None,
) -> None:
    """Raise a ``ValueError`` naming the first invalid option and the fix."""
    if nbeta is not None and nbetas is not None:
        raise ValueError("Give nbeta (fixed) or nbetas (swept), not both.")
    if nbeta is not None and not _positive(nbeta):
        raise ValueError(f"nbeta={nbeta!r} is invalid; use a positive number such as 30.")
    for name, values, least in (
        ("lrs", lrs, "positive"),
        ("nbetas", nbetas, "positive"),
        ("localizations", localizations, "non-negative"),
    ):
        if values is None:
            continue
        values = list(values) if not isinstance(values, (str, bytes)) else None
        ok = _positive if least == "positive" else _non_negative
        if not values or not all(ok(v) for v in values):
            raise ValueError(
                f"{name}={values!r} is invalid; use a non-empty list of {least} numbers."
            )
    if not _positive(tolerance):
        raise ValueError(f"tolerance={tolerance!r} is invalid; use a fraction such as 0.1.")
    if not (_positive(min_acceptance) and min_acceptance <= 1):
        raise ValueError(f"min_acceptance={min_acceptance!r} is invalid; use a value in (0, 1].")
    if max_steps is not None and (
        isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1
    ):
        raise ValueError(f"max_steps={max_steps!r} is invalid; use a positive integer or None.")


def _positive(value: Any) -> bool:
    return _non_negative(value) and value > 0


def _non_negative(value: Any) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
        and value >= 0
    )
