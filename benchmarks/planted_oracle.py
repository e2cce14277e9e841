"""How many planted critical points the data themselves place: an offline reference for the
detector's table in ``tests/milestones/test_detector.py``.

For each of its curves, seeds, noise levels and point counts, the same noisy series is fitted
offline (every point known) by least squares with a continuous piecewise-linear function of
log10(step) that has as many knots as the curve has corners: the number of knots is given,
which no detector is, and each knot is placed on a 0.01-decade grid by coordinate descent
from two starts (the true corners, and knots spread evenly), keeping the better fit. A planted
critical point is placed when a knot lies within the table's 0.15 decades of it (one-to-one,
as the table matches). The detector's online recall on the same series is printed beside it.

    python benchmarks/planted_oracle.py          # about a minute per setting
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_devinterp.milestones.fit import descend_knots  # noqa: E402
from tests.milestones.test_detector import (  # noqa: E402
    CURVES,
    NOISES,
    SEEDS,
    SIZES,
    TOL,
    match,
    noisy_series,
    planted,
    run_detector,
)

GRID = 0.01  # knot positions, decades


def oracle_knots(x: np.ndarray, y: np.ndarray, corners: list[float]) -> list[float]:
    """The better of the descents from the true corners and from evenly spread knots."""
    grid, w = np.arange(x[0] + GRID, x[-1] - GRID / 2, GRID), np.ones_like(x)
    even = list(np.linspace(x[0], x[-1], len(corners) + 2)[1:-1])
    return min(descend_knots(x, y, w, list(corners), grid), descend_knots(x, y, w, even, grid))[1]


def main() -> None:
    print("noise  points | oracle recall | detector recall (online)")
    for noise in NOISES:
        for n in SIZES:
            placed = found = total = 0
            for kx, ky in CURVES.values():
                truth = [t for t, _ in planted(kx, ky)]
                for seed in SEEDS:
                    steps, y = noisy_series(kx, ky, noise, n, seed)
                    x = np.log10(steps)
                    placed += len(match(oracle_knots(x, y, kx[1:-1]), truth, TOL))
                    online = [math.log10(m.step) for m in run_detector(steps, y).milestones]
                    found += len(match(online, truth, TOL))
                    total += len(truth)
            print(f"{noise:5.2f} {n:7d} | {placed / total:13.2f} | {found / total:.2f}", flush=True)


if __name__ == "__main__":
    main()
