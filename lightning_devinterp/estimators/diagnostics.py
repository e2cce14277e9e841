"""Chain health: traces in, flags and actionable messages out."""

from __future__ import annotations

import math

import torch


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


def health_warnings(
    *,
    mean: float,
    num_chains: int,
    diverged: list[int],
    drift: float,
    drift_z: float,
    lr: float,
    stationary: bool,
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
            f"The LLC is negative ({mean:.4g}): the weights are not at a local minimum at this "
            "resolution, or lr is too large; use a smaller lr or a larger localization."
        )
    if not stationary:
        direction = "rising" if drift > 0 else "falling"
        messages.append(
            f"The loss trace is still {direction} over the last draws (drift {drift:+.1%} of the "
            f"estimate, z={drift_z:.1f}): use more draws (num_draws) or burn-in, or a larger lr."
        )
    return messages
