"""Would extra estimates triggered by the LLC curve's own detector beat the fixed log grid
at the same number of estimates? (They do not; the adaptive schedule that ships,
``extra_estimates``, is triggered by bends of the training loss instead: see
``dln_stages.py --extra-estimates``.)

A synthetic LLC curve with the demo's shape (flat at 5, rising to 10.5 between steps 250 and
950, then flat or creeping on at 1.5 per decade), estimated by two chains with common random
numbers (shared offsets of sd 1, fresh noise 0.15 a point), over 30 seeds. A fixed schedule
of N log-spaced estimates is compared with a base of fewer log-spaced estimates plus up to
k extra ones, each placed halfway (in log step) to the next scheduled estimate while the
detector is judging a new segment (``pending`` with a verdict seen once, or any pending
segment). Prints, per schedule: seeds with both bends found within 0.15 decades, the median
latency of those milestones (decades), the mean number of estimates, other milestones.

    python benchmarks/adaptive_schedule.py
"""

from __future__ import annotations

import math

import numpy as np

from lightning_devinterp.callbacks.schedule import log_spaced_steps
from lightning_devinterp.milestones import MilestoneDetector

KNOTS = [1, math.log10(250), math.log10(950), math.log10(3000)]
CURVES = {"plateau": [5, 5, 10.5, 10.5], "creep": [5, 5, 10.5, 11.3]}
SCHEDULES = [
    (16, 0, None),
    (12, 0, None),
    (12, 4, "verdict"),
    (12, 4, "pending"),
    (14, 2, "pending"),
]


def run(seed: int, base: int, extra: int, when: str | None, values: list[float]):
    rng = np.random.default_rng(seed)
    offsets = rng.standard_normal(2)
    detector = MilestoneDetector("llc")
    todo = sorted(log_spaced_steps(3000, base, 10))
    added = count = 0
    while todo:
        step = todo.pop(0)
        count += 1
        chains = (
            np.interp(math.log10(step), KNOTS, values) + offsets + 0.15 * rng.standard_normal(2)
        )
        detector.update(step, chains.mean(), chains.std(ddof=1), chains)
        state = detector._state  # the benchmark reads the detector's progress directly
        judging = state.pending and (when == "pending" or state.candidate is not None)
        if when and judging and added < extra and todo and math.log10(todo[0] / step) >= 0.1:
            todo.insert(0, round(math.sqrt(step * todo[0])))
            added += 1
    detector.finish()
    return detector, count


def main() -> None:
    for name, values in CURVES.items():
        for base, extra, when in SCHEDULES:
            both, latency, counts, other = 0, [], [], 0
            for seed in range(30):
                detector, count = run(seed, base, extra, when, values)
                counts.append(count)
                hits = []
                for kind, at in (("plateau_end", 250), ("plateau_start", 950)):
                    near = [
                        m
                        for m in detector.milestones
                        if m.kind == kind and abs(math.log10(m.step / at)) <= 0.15
                    ]
                    hits.append(bool(near))
                    latency += [math.log10(m.detected_at / m.step) for m in near[:1]]
                both += all(hits)
                other += len(detector.milestones) - sum(hits)
            label = f"{base} + {extra} ({when})" if extra else f"{base} fixed"
            print(
                f"{name:8} {label:20} both bends {both:2}/30, latency {np.median(latency):.2f}, "
                f"estimates {np.mean(counts):.1f}, other milestones {other}"
            )


if __name__ == "__main__":
    main()
