"""The demo model's stages as a user at the defaults sees them (issue 13's acceptance): one
LLCMonitor with per-head refined LLCs at 16 log-spaced estimates (the demo's sampler, 2
chains x 80 draws), no copies monitor. For each seed it prints the main curve's milestones
against where the curve bends (a continuous three-piece fit, two free knots, of a second run
of the same training at 24 estimates, steps >= 30), and for each head whose refined LLC at
least doubles whether a milestone lies within its rise, 0.15 decades either side (the rise
read two ways: from the last point below 20% of the change to the first above 80%, and
between the knots of the head's own three-piece fit); heads whose range stays under 1.5x
should get none; the offline refit's milestones (``refine()``, at train end) are judged the
same way. It also lists the training loss's milestones.

With ``--defaults`` the monitor is ``LLCMonitor(SAMPLER)`` at every other default (30
log-spaced estimates from step 11 (3000 ** 0.3), 4 chains x 200 draws, no components), one training per
seed, its bends those of its own curve (steps >= 30); with ``--heads`` too, the same monitor with
``components="heads"``, reported for the heads only.

    python benchmarks/demo_stages.py 0 1 2       # seeds; two demo trainings each
    python benchmarks/demo_stages.py --defaults 0 1 2
    python benchmarks/demo_stages.py --heads 0 1 2   # the heads only: one training each
    python benchmarks/demo_stages.py --heads --defaults 0   # the heads at every default
    python benchmarks/demo_stages.py --save DIR 0    # also keep each run's records in DIR
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch

from lightning_devinterp.callbacks import LLCMonitor
from lightning_devinterp.callbacks.schedule import log_spaced_steps
from lightning_devinterp.demo import REPEAT_PROB, SAMPLER, trainer_settings
from lightning_devinterp.demos import InductionDataModule, InductionLM

MAX_STEPS = 3000


def demo_monitor(seed: int, count: int, heads: bool) -> LLCMonitor:
    """The demo's monitor: ``count`` estimates from step 10, the demo's chains."""
    return LLCMonitor(
        SAMPLER,
        at_steps=sorted(log_spaced_steps(MAX_STEPS, count, 10)),
        components="heads" if heads else None,
        num_chains=2,
        num_draws=80,
        num_burnin=20,
        init_loss_batches=4,
        seed=seed,
    )


def train(seed: int, monitor: LLCMonitor) -> LLCMonitor:
    L.seed_everything(seed, verbose=False)
    data = InductionDataModule(repeat_prob=REPEAT_PROB, seed=seed)
    settings = trainer_settings(MAX_STEPS) | {
        "logger": False,
        "callbacks": [monitor],
        "enable_progress_bar": False,
    }
    L.Trainer(**settings, default_root_dir=f"/tmp/demo_stages_{seed}").fit(
        InductionLM(), datamodule=data
    )
    return monitor


def knots(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """log10 steps of the two knots of the best continuous three-piece fit of ``y``."""
    best = (math.inf, 0.0, 0.0)
    for a, b in itertools.combinations(np.arange(x[0] + 0.05, x[-1] - 0.05, 0.01), 2):
        if b - a >= 0.1:
            design = np.stack([np.ones_like(x), x, np.maximum(x - a, 0), np.maximum(x - b, 0)], 1)
            coef = np.linalg.lstsq(design, y, rcond=None)[0]
            best = min(best, (float(((design @ coef - y) ** 2).sum()), a, b))
    return best[1], best[2]


def bends(history: list[dict]) -> tuple[float, float]:
    """log10 steps of the main curve's two bends (:func:`knots`, steps >= 30)."""
    x = np.array([math.log10(r["step"]) for r in history if r["step"] >= 30])
    y = np.array([r["llc/mean"] for r in history if r["step"] >= 30])
    return knots(x, y)


def verdict(marks: list[int], rise: tuple[float, float], knotted: tuple[float, float]) -> str:
    """Whether a milestone lies within 0.15 decades of the rise read either way (log10 steps)."""
    logs = [math.log10(s) for s in marks]
    near = any(rise[0] - 0.15 <= x <= rise[1] + 0.15 for x in logs)
    by_knots = any(knotted[0] - 0.15 <= x <= knotted[1] + 0.15 for x in logs)
    return ("near" if near else "MISSED") + (
        ", near the knots" if by_knots else ", not near the knots"
    )


def heads_report(monitor: LLCMonitor) -> list[str]:
    """Each head that at least doubles: whether a milestone lies within its rise, 0.15 decades
    either side, the rise read two ways: from the last point under 20% of the change to the
    first over 80% (late for a rise that accelerates), and between the knots of its own
    three-piece fit (as the main curve's bends). Flat heads: whether they stay quiet."""
    history = [r for r in monitor.history if r["step"] >= 30]
    steps = np.array([r["step"] for r in history])
    lines = []
    for head in (c.name for c in monitor.target.resolved):
        series = f"rllc/{head}"
        values = np.array([r[f"{series}/mean"] for r in history])
        smooth = np.array([np.median(values[max(0, i - 1) : i + 2]) for i in range(len(values))])
        early, late = np.median(values[:3]), np.median(values[-3:])
        found = [m.step for m in monitor.milestones if m.series == series]
        refit = [m.step for m in monitor.tracker.detector_of(series).refined]
        if late >= 2 * early:
            low, high = early + 0.2 * (late - early), early + 0.8 * (late - early)
            start = max(int(s) for s, v in zip(steps, smooth, strict=True) if v < low)
            end = min(int(s) for s, v in zip(steps, smooth, strict=True) if s > start and v > high)
            first, last = knots(np.log10(steps), values)
            rise = (math.log10(start), math.log10(end)), (first, last)
            lines.append(
                f"  {head}: x{late / early:.1f}, rise {start}-{end}, knots "
                f"{10**first:.0f}-{10**last:.0f}, milestones {found}: {verdict(found, *rise)}; "
                f"refit {refit}: {verdict(refit, *rise)}"
            )
        elif smooth.max() < 1.5 * smooth.min():
            alarm = " FALSE ALARM" if found else ""
            lines.append(f"  {head}: flat, milestones {found}{alarm}, refit {refit}")
    return lines


def save(folder: str | None, seed: int, monitor: LLCMonitor) -> LLCMonitor:
    """Keeps the run's records as ``<folder>/seed<seed>.json`` (for replays) when a folder is
    given."""
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(folder, f"seed{seed}.json").write_text(json.dumps(monitor.history))
    return monitor


def main(seeds: list[int], defaults: bool, heads_only: bool, folder: str | None) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for seed in seeds:
        if heads_only:
            chosen = (
                LLCMonitor(SAMPLER, components="heads", seed=seed)
                if defaults
                else demo_monitor(seed, 16, heads=True)
            )
            monitor = save(folder, seed, train(seed, chosen))
            print(f"seed {seed}:")
            print("\n".join(heads_report(monitor)), flush=True)
            continue
        if defaults:
            monitor = save(folder, seed, train(seed, LLCMonitor(SAMPLER, seed=seed)))
            reference = bends(monitor.history)
        else:
            reference = bends(train(seed, demo_monitor(seed, 24, heads=False)).history)
            monitor = save(folder, seed, train(seed, demo_monitor(seed, 16, heads=True)))
        llc = [m for m in monitor.milestones if m.series == "llc"]
        print(f"seed {seed}: bends at steps {[round(10**b) for b in reference]}")
        for m in llc:
            gap = min(abs(math.log10(m.step) - b) for b in reference)
            print(
                f"  llc {m.kind} at {m.step} (confirmed {m.detected_at}), {gap:.2f} decades "
                "from the nearest bend"
            )
        print(f"  llc milestones before step 150: {sum(m.step < 150 for m in llc)}")
        loss = [
            (m.kind, m.step, m.detected_at) for m in monitor.milestones if m.series == "train_loss"
        ]
        print(f"  train_loss milestones: {loss}")
        print("\n".join(heads_report(monitor)), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    folder = args[args.index("--save") + 1] if "--save" in args else None
    seeds = [int(s) for s in args if s.isdigit()] or [0, 1, 2]
    main(seeds, "--defaults" in args, "--heads" in args, folder)
