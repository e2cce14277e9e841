"""How many planted critical points the data themselves place: an offline reference for the
detector's table in ``tests/milestones/test_detector.py``.

For each of its curves, seeds, noise levels and point counts, the same noisy series is fitted
offline (every point known) by least squares with a continuous piecewise-linear function of
log10(step) that has as many knots as the curve has corners: the number of knots is given,
which no detector is, and each knot is placed on a 0.01-decade grid by coordinate descent
from two starts (the true corners, and knots spread evenly), keeping the better fit. A planted
critical point is placed when a knot lies within the table's 0.15 decades of it (one-to-one,
as the table matches). The detector's online recall and precision on the same series are
printed beside it.

The reference's precision counts every knot as an announcement except one that lies at a
corner where the trend does not change (the ``llc-like`` curve's rise slowing from 1.5 to 0.5
per decade): it is told that too. Each knot's evidence is what removing it costs the fit, in
variances of the true noise; announcing only the knots above a bar trades recall for
precision, and the printed frontier is the best any such offline reader of the data reaches.

    python benchmarks/planted_oracle.py               # the table's 8 seeds, seconds
    python benchmarks/planted_oracle.py --seeds 40    # seeds 0-39
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_devinterp.milestones.fit import bend_scan, descend_knots  # noqa: E402
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
EVIDENCE_BARS = (0, 9, 16, 25, 36, 49)  # noise variances a knot must save to be announced


def oracle_knots(x: np.ndarray, y: np.ndarray, corners: list[float]) -> list[float]:
    """The better of the descents from the true corners and from evenly spread knots."""
    grid, w = np.arange(x[0] + GRID, x[-1] - GRID / 2, GRID), np.ones_like(x)
    even = list(np.linspace(x[0], x[-1], len(corners) + 2)[1:-1])
    return min(descend_knots(x, y, w, list(corners), grid), descend_knots(x, y, w, even, grid))[1]


def knot_evidence(x: np.ndarray, y: np.ndarray, knots: list[float], noise: float) -> list[float]:
    """Squared residuals each knot saves (the fit without it, the others kept), in noise
    variances."""
    w, none = np.ones_like(x), np.array([])
    full = bend_scan(x, y, w, knots, none)[0]
    return [
        (bend_scan(x, y, w, knots[:i] + knots[i + 1 :], none)[0] - full) / noise**2
        for i in range(len(knots))
    ]


def announced_and_placed(
    knots: list[float], truth: list[float], silent: list[float]
) -> tuple[int, int]:
    """(knots that count as announcements, those within TOL of a critical point): a knot
    matched to a ``silent`` corner (no change of trend) is no announcement."""
    pairs = match(knots, truth, TOL)
    used = {i for i, _ in pairs}
    rest = [k for i, k in enumerate(knots) if i not in used]
    return len(knots) - len(match(rest, silent, TOL)), len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="seeds 0 .. N-1")
    seeds = range(parser.parse_args().seeds)
    print("noise  points | oracle recall / precision | detector recall / precision (online)")
    for noise in NOISES:
        for n in SIZES:
            counts = np.zeros(len(EVIDENCE_BARS), dtype=int)  # announced, per bar
            placed = np.zeros_like(counts)
            found = placed_online = total = 0
            for kx, ky in CURVES.values():
                truth = [t for t, _ in planted(kx, ky)]
                silent = [k for k in kx[1:-1] if k not in truth]
                for seed in seeds:
                    steps, y = noisy_series(kx, ky, noise, n, seed)
                    x = np.log10(steps)
                    knots = oracle_knots(x, y, kx[1:-1])
                    evidence = knot_evidence(x, y, knots, noise)
                    for b, bar in enumerate(EVIDENCE_BARS):
                        kept = [k for k, e in zip(knots, evidence, strict=True) if e >= bar]
                        a, p = announced_and_placed(kept, truth, silent)
                        counts[b] += a
                        placed[b] += p
                    online = [math.log10(m.step) for m in run_detector(steps, y).milestones]
                    found += len(online)
                    placed_online += len(match(online, truth, TOL))
                    total += len(truth)
            print(
                f"{noise:5.2f} {n:7d} | {placed[0] / total:13.2f} / {placed[0] / max(counts[0], 1):.2f}"
                f"     | {placed_online / total:15.2f} / {placed_online / max(found, 1):.2f}"
            )
            frontier = ", ".join(
                f">= {bar}: {p / total:.2f} / {p / max(c, 1):.2f}"
                for bar, c, p in zip(EVIDENCE_BARS, counts, placed, strict=True)
            )
            print(f"      oracle knots kept by evidence (recall / precision): {frontier}")


if __name__ == "__main__":
    main()
