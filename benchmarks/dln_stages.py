"""Milestones on a deep linear network's saddle-to-saddle LLC curve, over seeds and teacher
spectra (issue 13's acceptance): each run trains 5000 steps through a real LLCMonitor at its
default schedule (30 estimates, log-spaced from step 13); a transition (a teacher mode half
learned) is found when a milestone of the LLC curve (and, scored apart, of the training loss)
lies within a factor 1.5 of it. Latency is log10 of the confirmation step over the milestone's step.
Prints the lines of each run and the totals of each series.

    python benchmarks/dln_stages.py            # 3 spectra x 4 seeds, about 30x one run
    python benchmarks/dln_stages.py --num-estimates 21 --extra-estimates 9   # adaptive
    python benchmarks/dln_stages.py --spectrum 4 1.5 0.5 --spectrum 2 0.7 0.25  # other teachers
    python benchmarks/dln_stages.py --max-steps 15000 --lr 0.01  # a slower run, transitions later
    python benchmarks/dln_stages.py --every-n-steps 100   # a linear schedule (50 estimates)
    python benchmarks/dln_stages.py --save runs/      # also keep each run's records
    python benchmarks/dln_stages.py --replay runs/    # score the LLC detector on them again

``--replay`` trains nothing: it feeds the saved records to a fresh detector (a change to the
LLC's milestone rule is scored in seconds) and reports the training loss's milestones as
saved (the adaptive schedule follows them, so a change there needs the runs trained again).

The totals line also gives the estimates taken and the SGLD steps they cost (the adaptive
schedule's budget is compared with the fixed one's there).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from lightning_devinterp import SGLD, LLCMonitor
from lightning_devinterp.demos.deep_linear import (
    DeepLinearNetwork,
    TeacherData,
    half_mse,
    transition_steps,
)
from lightning_devinterp.milestones import Milestone, MilestoneTracker

SPECTRA = {"ratio 3": (3.0, 1.0, 0.33), "ratio 4": (3.0, 0.75, 0.19), "ratio 2.5": (3.0, 1.2, 0.48)}
TOL = math.log10(1.5)
#: The series scored: the LLC curve online and refitted after training, and the training loss
#: (its milestones come first).
SERIES = ("llc", "llc refined", "train_loss")
MAX_STEPS = 5000
LR = 0.03
#: SGLD steps of one estimate: 2 chains of 50 burn-in and 100 draws.
STEPS_PER_ESTIMATE = 2 * 150


def run(
    seed: int,
    spectrum: tuple[float, ...],
    num_estimates: int = 30,
    extra_estimates: int = 0,
    max_steps: int = MAX_STEPS,
    lr: float = LR,
    every_n_steps: int | None = None,
) -> tuple[list[int], LLCMonitor]:
    data = TeacherData(4096, input_dim=16, output_dim=16, singular_values=spectrum, seed=seed)
    model = DeepLinearNetwork((16, 4, 4, 16), init_scale=0.03, lr=lr, seed=seed, data=data)
    monitor = LLCMonitor(
        SGLD(lr=8e-4, nbeta=30.0, localization=100.0),
        num_chains=2,
        num_draws=100,
        num_burnin=50,
        init_loss_batches=4,
        loss_fn=half_mse,
        seed=seed,
        num_estimates=None if every_n_steps else num_estimates,
        every_n_steps=every_n_steps,
        extra_estimates=extra_estimates,
    )
    torch.manual_seed(seed)
    loader = DataLoader(data, batch_size=256, shuffle=True, collate_fn=TeacherData.collate)
    with tempfile.TemporaryDirectory(prefix=f"dln_stages_{seed}_") as root:  # one per run
        trainer = L.Trainer(
            max_steps=max_steps,
            callbacks=[monitor],
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=root,
        )
        trainer.fit(model, loader)
    return [t for t in transition_steps(model.modes) if t is not None], monitor


def score(
    transitions: list[int], found: list[Milestone]
) -> tuple[list[float | None], list[float], int]:
    """Per transition: distance (decades) to the nearest milestone within TOL; latencies of
    those milestones; false alarms (milestones near no transition)."""
    dist, latency = [], []
    for t in transitions:
        near = [m for m in found if abs(math.log10(m.step / t)) <= TOL]
        best = min(near, key=lambda m: abs(math.log10(m.step / t)), default=None)
        dist.append(None if best is None else math.log10(best.step / t))
        if best is not None:
            latency.append(math.log10(best.detected_at / best.step))
    false = sum(all(abs(math.log10(m.step / t)) > TOL for t in transitions) for m in found)
    return dist, latency, false


class Totals:
    """One series' figures over the runs."""

    def __init__(self) -> None:
        self.hits = self.too_late = self.total = self.false_alarms = 0
        self.latencies: list[float] = []

    def add(self, transitions: list[int], found: list[Milestone], steps: list[int]) -> str:
        """Score one run; its line."""
        dist, latency, false = score(transitions, found)
        # a transition needs two estimates after it to be confirmed before the run ends
        late = [sum(s > t for s in steps) < 2 for t in transitions]
        self.hits += sum(d is not None for d in dist)
        self.too_late += sum(d is None and lt for d, lt in zip(dist, late, strict=True))
        self.total += len(transitions)
        self.latencies += latency
        self.false_alarms += false
        shown = ["-" if d is None else f"{d:+.2f}" for d in dist]
        return f"distance {shown}, latency {np.round(latency, 2).tolist()}, false alarms {false}"

    def summary(self) -> str:
        return (
            f"found {self.hits} of {self.total} transitions ({self.too_late} of the missed ones "
            "had fewer than two estimates after them); median latency "
            f"{np.median(self.latencies):.2f} decades; false alarms {self.false_alarms}"
        )


def trained_runs(args: argparse.Namespace):
    """Train each (spectrum, seed); yield its name, transitions, records and milestones (saved
    to ``args.save`` when given)."""
    spectra = SPECTRA
    if args.spectrum:
        spectra = {" ".join(f"{s:g}" for s in values): tuple(values) for values in args.spectrum}
    for name, spectrum in spectra.items():
        for seed in args.seeds:
            transitions, monitor = run(
                seed,
                spectrum,
                args.num_estimates,
                args.extra_estimates,
                args.max_steps,
                args.lr,
                args.every_n_steps,
            )
            label = f"{name} seed {seed}"
            found = {s: [m for m in monitor.milestones if m.series == s] for s in SERIES}
            found["llc refined"] = monitor.tracker.detector_of("llc").refined
            if args.save:
                saved = {
                    "label": label,
                    "transitions": transitions,
                    "history": monitor.history,
                    "train_loss": [m.to_dict() for m in found["train_loss"]],
                }
                path = Path(args.save) / f"{label.replace(' ', '_')}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(saved))
            yield label, transitions, monitor.history, found


def replayed_runs(folder: str):
    """The runs saved in ``folder``, their LLC milestones found again from the records."""
    for path in sorted(Path(folder).glob("*.json")):
        saved = json.loads(path.read_text())
        tracker = MilestoneTracker("llc")
        for record in saved["history"]:
            tracker.update(record["step"], record)
        tracker.finish()
        detector = tracker.detector_of("llc")
        found = {
            "llc": detector.milestones,
            "llc refined": detector.refine(),
            "train_loss": [Milestone.from_dict(m) for m in saved["train_loss"]],
        }
        yield saved["label"], saved["transitions"], saved["history"], found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-estimates", type=int, default=30)
    parser.add_argument("--extra-estimates", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument(
        "--spectrum", type=float, nargs="+", action="append", metavar="S",
        help="a teacher's singular values, largest first (repeat for several; default: SPECTRA)",
    )  # fmt: skip
    parser.add_argument("--max-steps", type=int, default=MAX_STEPS)
    parser.add_argument(
        "--every-n-steps", type=int, help="a linear schedule instead of --num-estimates"
    )
    parser.add_argument("--lr", type=float, default=LR, help="the network's learning rate")
    parser.add_argument("--save", metavar="DIR", help="keep each run's records in DIR")
    parser.add_argument("--replay", metavar="DIR", help="score the runs saved in DIR")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    totals = {series: Totals() for series in SERIES}
    estimates = 0
    runs = replayed_runs(args.replay) if args.replay else trained_runs(args)
    for label, transitions, history, found in runs:
        estimates += len(history)
        steps = [r["step"] for r in history]
        print(f"{label}: transitions {transitions}", flush=True)
        for series, total in totals.items():
            print(f"  {series}: {total.add(transitions, found[series], steps)}", flush=True)
    for series, total in totals.items():
        print(f"{series}: {total.summary()}")
    print(f"{estimates} estimates, {estimates * STEPS_PER_ESTIMATE} SGLD steps")


if __name__ == "__main__":
    main()
