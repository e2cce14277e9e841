"""Chain health: traces in, flags and actionable messages out."""

from __future__ import annotations

import math

import torch

#: Relative drift between the last two quarters of the draws above which (when also
#: significant) a trace counts as not yet stationary.
DRIFT_TOLERANCE = 0.1
#: z-score above which the drift is significant.
DRIFT_Z = 3.0
#: Largest Gelman-Rubin R-hat at which the chains count as agreeing (the usual 1.1).
RHAT_MAX = 1.1


class LLCHealthWarning(UserWarning):
    """An LLC estimate whose chains are unhealthy; the message says what to change.

    Filter it like any warning, e.g.
    ``warnings.filterwarnings("ignore", category=LLCHealthWarning)``.
    """


def stationarity(trace: torch.Tensor) -> tuple[float, float]:
    """Change of the mean from the third to the last quarter of the draws, and its z-score.

    ``trace`` is (chains, draws) of finite values. With two or more chains the noise is the
    spread of that change across chains (independent chains, so autocorrelation within a
    chain cannot fake significance); with one chain it is the spread of block means.
    Returns ``(change, z)``; ``z`` is ``nan`` when there are too few draws to tell.
    """
    chains, draws = trace.shape
    if draws < 8 or chains == 0:
        return float("nan"), float("nan")
    q = draws // 4
    third, last = trace[:, draws - 2 * q : draws - q], trace[:, draws - q :]
    change = (last.mean(1) - third.mean(1)).double()
    mean_change = float(change.mean())
    if chains >= 2:
        stderr = float(change.std()) / math.sqrt(chains)
    else:
        blocks = torch.stack([b.mean() for b in torch.cat([third, last], 1)[0].chunk(8)])
        stderr = float(blocks.std()) * math.sqrt(2 / 4)
    if stderr == 0.0:
        return mean_change, 0.0 if mean_change == 0.0 else math.copysign(math.inf, mean_change)
    return mean_change, mean_change / stderr


def is_stationary(drift: float, drift_z: float) -> bool:
    """False when the drift is both significant (``|z| > DRIFT_Z``) and larger than
    ``DRIFT_TOLERANCE`` of the estimate."""
    return not (math.isfinite(drift_z) and abs(drift_z) > DRIFT_Z and abs(drift) > DRIFT_TOLERANCE)


def gelman_rubin(trace: torch.Tensor) -> float:
    """The potential scale reduction factor R-hat of (chains, draws) finite values.

    R-hat compares the spread of the chain means with the spread of the draws within each
    chain: near 1 when the chains sample the same distribution and each has many draws per
    autocorrelation time; well above 1 when a chain sits elsewhere or the draws are too few
    (roughly ``sqrt(1 + tau / draws)`` for an integrated autocorrelation time ``tau``).
    ``nan`` with fewer than two chains or four draws.
    """
    chains, draws = trace.shape
    if chains < 2 or draws < 4:
        return math.nan
    trace = trace.double()
    between = draws * float(trace.mean(1).var())
    within = float(trace.var(1).mean())
    if within == 0.0:
        return 1.0 if between == 0.0 else math.inf
    pooled = (draws - 1) / draws * within + between / draws
    return math.sqrt(pooled / within)


def health_warnings(
    *,
    mean: float,
    num_chains: int,
    diverged: list[int],
    drift: float,
    drift_z: float,
    lr: float,
    stationary: bool,
    rhat: float = math.nan,
) -> list[str]:
    """Messages that say what is wrong with an estimate and what to change."""
    messages = []
    if diverged:
        messages.append(
            f"{len(diverged)} of {num_chains} chains diverged (non-finite loss) and were excluded: "
            f"use a smaller lr (now {lr:g})."
        )
    if math.isfinite(mean) and mean < 0:
        messages.append(
            f"The LLC is negative ({mean:.4g}): the chains found lower loss than w*, so the "
            "weights are not at a local minimum at this resolution, or lr is too large; use a "
            "smaller lr, a larger localization or a smaller nbeta (or estimate at weights "
            "nearer a minimum)."
        )
    if not stationary:
        change = f"(drift {drift:+.1%} of the estimate, z={drift_z:.1f})"
        if drift > 0:
            messages.append(
                f"The loss trace is still rising at the last draws {change}: the chains have not "
                "reached their plateau; use more draws (num_draws) or burn-in (num_burnin), or a "
                "larger lr."
            )
        else:
            messages.append(
                f"The loss trace is still falling at the last draws {change}: the chains are "
                "sliding to lower loss; use a larger localization or a smaller lr."
            )
    if rhat > RHAT_MAX:  # False for nan
        messages.append(
            f"The chains disagree (R-hat {rhat:.2f} > {RHAT_MAX}: their LLCs differ more than "
            "their own draws explain): use more chains (num_chains) or more draws (num_draws)."
        )
    return messages
