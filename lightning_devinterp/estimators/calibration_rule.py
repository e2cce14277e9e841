"""Calibration's table and rule: each setting's health row, the walk's stops, the choice
(see :mod:`~lightning_devinterp.estimators.calibration` for the rule) and the advice."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from lightning_devinterp.estimators.bias import NOISE_BIAS_MAX
from lightning_devinterp.estimators.diagnostics import DRIFT_TOLERANCE, health_warnings
from lightning_devinterp.estimators.llc import LLCEstimate
from lightning_devinterp.sampling import SGLD, ChainSettings, ChainTraces, RMSpropSGLD

#: A drift of the trace's second half beyond this fraction of the estimate means the chains
#: are still moving, significant or not.
LARGE_DRIFT = 3 * DRIFT_TOLERANCE


def select(
    rows: Sequence[dict[str, Any]], groups: Sequence[tuple[float, float]]
) -> tuple[int, bool]:
    """The recommended row of a calibration table and whether it is confirmed.

    ``rows`` carry ``group`` (nβ, γ), ``lr``, ``healthy``, ``difference`` and
    ``agrees_with_larger``; ``groups`` are the (nβ, γ) pairs in order of preference. See the
    module's docstring for the rule.
    """
    order = {group: i for i, group in enumerate(groups)}
    confirmed = [i for i, r in enumerate(rows) if is_confirmed(r)]
    if confirmed:
        return min(confirmed, key=lambda i: (order[rows[i]["group"]], -rows[i]["lr"])), True
    pairs = [i for i, r in enumerate(rows) if r["difference"] is not None]
    if pairs:
        return min(pairs, key=lambda i: (rows[i]["difference"], order[rows[i]["group"]])), False
    healthy = [i for i, r in enumerate(rows) if r["healthy"]]
    if healthy:
        return min(healthy, key=lambda i: (order[rows[i]["group"]], rows[i]["lr"])), False
    return min(range(len(rows)), key=lambda i: (_badness(rows[i]), order[rows[i]["group"]])), False


def table_row(
    est: LLCEstimate,
    plateau: LLCEstimate,
    group: tuple[float, float],
    accepted: bool,
    min_acceptance: float,
    burnin: int,
    extended: bool = False,
) -> dict[str, Any]:
    """One table row: the setting and every health figure. ``est`` covers all draws (its
    trace's last two quarters decide stationarity), ``plateau`` the draws after ``burnin``
    steps (the value, its sign and the chains' agreement); ``accepted``: the MALA acceptance
    is high enough. ``extended``: the burn-in was lengthened to the relaxation time, so the
    chains are on their plateau by construction and only a significant drift counts (a large
    one that is not significant is the noise of a plateau half short next to the chains'
    autocorrelation time)."""
    positive = math.isfinite(plateau.mean) and plateau.mean > 0
    large = abs(est.drift) > LARGE_DRIFT and not extended
    stationary = est.stationary and not large
    relaxation = relaxation_steps(est.sampler)
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


def agreement(
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


def relaxation_steps(sampler: SGLD) -> int:
    """Steps for the chains to spread through directions held only by the localization,
    ``1 / (lr * localization)`` (0 without localization)."""
    rate = sampler.lr * sampler.localization
    return math.ceil(1 / rate) if rate > 0 else 0


def second_half(traces: ChainTraces) -> ChainTraces:
    """The draws after the first half (the burn-in of a calibration setting)."""
    half = traces.loss.shape[1] // 2
    return ChainTraces(
        chains=traces.chains,
        loss=traces.loss[:, half:],
        reference=traces.reference[:, half:] if traces.reference is not None else None,
        diverged=traces.diverged,
        mala=traces.mala,
    )


def relaxation_burnin(sampler: SGLD, burnin: int, cap: int) -> int:
    """The extra burn-in (SGLD steps per chain) that brings a setting's ``burnin`` (before its
    plateau half) up to the localization's relaxation time; 0 when ``burnin`` covers it or
    when more than ``cap`` steps would be needed (the setting then runs as it is, and its
    row says it has not relaxed)."""
    extra = relaxation_steps(sampler) - burnin
    return extra if 0 < extra <= cap else 0


def walk_ends(row: dict[str, Any], above: Sequence[dict[str, Any]]) -> bool:
    """Below a healthy setting, chains that do not diverge yet are unhealthy will not mix
    better at a smaller step: the walk down this (nβ, γ) ends."""
    return not row["healthy"] and not row["diverged_chains"] and any(r["healthy"] for r in above)


def any_confirmed(rows: Sequence[dict[str, Any]]) -> bool:
    return any(is_confirmed(r) for r in rows)


def is_confirmed(row: dict[str, Any]) -> bool:
    """The row's estimate is reproduced by the next larger ε, or its predicted biases are
    within the tolerance (``bounded``)."""
    return bool(row["agrees_with_larger"] or row.get("bounded", False))


def step_bias_bound(lr: float, stiffness: float) -> float:
    """Euler's relative variance inflation ``1/(1 - εa/4) - 1`` of the stiffest direction
    (``a = nβ h + γ``): an upper bound on the step's relative bias of the estimate of a
    quadratic loss (every other direction is inflated less). ``inf`` from ``εa >= 4``."""
    x = lr * stiffness / 4
    return x / (1 - x) if x < 1 else math.inf


def predicted_step_bias(sampler: SGLD, curvature: float | None) -> float | None:
    """:func:`step_bias_bound` for ``sampler`` at the measured top curvature ``h``
    (``a = nβ h + γ``); None without one, or for a preconditioned step (``lr G``, with G
    known only by running)."""
    if curvature is None or isinstance(sampler, RMSpropSGLD):
        return None
    return step_bias_bound(sampler.lr, float(sampler.nbeta) * curvature + sampler.localization)


def bounded(row: dict[str, Any], larger: dict[str, Any] | None, tolerance: float) -> bool:
    """A healthy row whose predicted step bias and minibatch-noise bias add up to at most
    ``tolerance`` (both measured), and whose next larger step (``larger``, same (nβ, γ))
    agrees with the picture the predictions rest on (:func:`predicted_ratio`)."""
    step, noise = row.get("step_bias"), row.get("minibatch_bias")
    if not row["healthy"] or step is None or noise is None or not step + noise <= tolerance:
        return False
    ratio = predicted_ratio(row, larger) if larger is not None else None
    if ratio is None or not math.isfinite(larger["llc"]):
        return False
    return larger["llc"] / row["llc"] <= ratio * (1 + 2 * tolerance)


def predicted_ratio(row: dict[str, Any], larger: dict[str, Any]) -> float | None:
    """The estimate at the larger step over the row's, as the two settings' predicted biases
    give it, ``(1 + b_step)(1 + b_noise)`` each: a larger step reading far above that (by
    more than twice the tolerance) means the loss is not the quadratic the step bound
    assumes (weights away from a minimum, for example). None when not predicted."""
    step, noise = larger.get("step_bias"), larger.get("minibatch_bias")
    if larger["diverged_chains"] or step is None or noise is None or not math.isfinite(noise):
        return None
    return (1 + step) * (1 + noise) / ((1 + row["step_bias"]) * (1 + row["minibatch_bias"]))


def _badness(row: dict[str, Any]) -> tuple[float, ...]:
    """Orders unhealthy rows, least bad first: divergence, then the bias from minibatch
    noise above its limit (an infinite one means a tiny estimate, not noise), then a negative or non-finite LLC, then disagreeing chains, then a drifting trace."""
    finite = math.isfinite(row["llc"]) and row["llc"] > 0
    biased = row.get("minibatch_bias")
    return (
        row["diverged_chains"],
        biased if biased is not None and NOISE_BIAS_MAX < biased < math.inf else 0.0,
        int(not finite),
        int(not row["chains_agree"]),
        int(not row["stationary"]),
    )


def steps_run(loss: torch.Tensor, chains: ChainSettings) -> int:
    """SGLD steps the chains of one setting ran (a diverged chain stops at its next check,
    every 32 steps)."""
    total = 0
    for row in loss:
        bad = (~torch.isfinite(row)).nonzero()
        if bad.numel() == 0:
            total += chains.steps_per_chain
        else:
            at = chains.num_burnin + int(bad[0]) * chains.steps_between_draws + 1
            total += min(chains.steps_per_chain, -(-at // 32) * 32)
    return total


def advice(
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
    if not row["healthy"] and only_unrelaxed(row, tolerance):
        messages.append(
            f"No setting was found healthy within the budget; {setting} is returned: its "
            "chains are sound but its relaxation time 1/(lr*localization) = "
            f"{row['relaxation']} steps per chain was more than the budget left could run "
            f"(they ran {row['burnin']} before their plateau half). The recommended num_burnin "
            "covers it; raise max_steps to check the setting."
        )
    elif not row["healthy"]:
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
            f"other, nor had predicted step and minibatch-noise biases within it; {setting} "
            f"({reason}) is unconfirmed. Use more draws (num_draws), a larger "
            "max_steps to walk further, or a finer grid (lrs)."
        )
    return messages


def only_unrelaxed(row: dict[str, Any], tolerance: float) -> bool:
    """The row's one fault is a burn-in shorter than its relaxation time."""
    noise = row.get("minibatch_bias")
    return (
        row["relaxation"] > row["burnin"]
        and not row["diverged_chains"]
        and row["chains_agree"]
        and row["stationary"]
        and math.isfinite(row["llc"])
        and row["llc"] > 0
        and (noise is None or noise <= tolerance)
        and not row["warnings"][1:]
    )


def predicted_noise_bias(above: Sequence[dict[str, Any]], lr: float) -> float:
    """The noise bias predicted at ``lr`` (it is linear in lr) from the last row of ``above``
    (rows of the same nβ, any γ) whose chains did not diverge (0 when there is none)."""
    for row in reversed(above):
        bias = row.get("minibatch_bias")
        if bias is not None and math.isfinite(bias) and not row["diverged_chains"]:
            return bias * lr / row["lr"]
    return 0.0
