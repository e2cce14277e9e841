"""What the callbacks cost a training run, and whether ``max_overhead`` holds them to it.

The demo's setup, shortened: a 2-layer attention-only transformer (4 heads a layer, d=64) on
the induction language (``InductionData``, batch 32), Adam, ``--steps`` steps on the CPU with
one torch thread, no validation, no progress bar. The monitors use the demo's SGLD settings
(lr 1e-4, nbeta 30, localization 300) with 2 chains of ``--draws`` draws, 4 batches for L(w*).
Each configuration is one fit from the same seed:

- ``none``: no callback (the baseline);
- ``llc+heads``: ``LLCMonitor(components="heads")`` (the LLC and 8 refined LLCs from one
  sampling run per estimate), ``--estimates`` log-spaced estimates, without and with each
  ``--overheads`` value;
- ``all``: that monitor, ``EssentialDynamics`` (every 10 steps) and ``SusceptibilityMonitor``
  (two probes, 4 estimates), each monitor with ``max_overhead`` = the smallest
  ``--overheads`` value (budgets are per monitor and add up).

Measured from outside: a callback placed before the monitors and one after them time every
hook in between, so ``share`` is the callbacks' seconds over the wall clock of training (from
``on_train_start`` to ``on_train_end``); ``slowdown`` is that wall clock over the baseline's.
``budget`` is the monitor's own account (``OverheadBudget.share``).

Then the progress bar's cost: the microseconds of one ``progress(done, total)`` call of an
estimate's ``SamplingProgress`` with a ``TQDMProgressBar`` and a ``RichProgressBar`` (mean
over 2000 calls inside a real fit, output discarded); the engine calls it every 32 SGLD steps.

    python benchmarks/monitor_overhead.py [--steps 1000] [--estimates 10] [--draws 20]
        [--overheads 0.5,0.2,0.1] [--no-susceptibility]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import tempfile
import time
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar, TQDMProgressBar
from torch.utils.data import DataLoader

from lightning_devinterp import SGLD, EssentialDynamics, LLCMonitor, SusceptibilityMonitor
from lightning_devinterp.callbacks.progress import SamplingProgress
from lightning_devinterp.demos import InductionData, InductionLM, loss_of_lm

SAMPLER = SGLD(lr=1e-4, nbeta=30.0, localization=300.0)


def loader(data: InductionData, shuffle: bool = False) -> DataLoader:
    return DataLoader(data, batch_size=32, shuffle=shuffle, collate_fn=data.collate)


class Stopwatch(Callback):
    """Appends the time at each training hook; one before and one after the monitors."""

    def __init__(self, marks: list[float]) -> None:
        self.marks = marks

    def on_train_start(self, *args: Any) -> None:
        self.marks.append(time.perf_counter())

    def on_train_batch_end(self, *args: Any) -> None:
        self.marks.append(time.perf_counter())

    def on_train_end(self, *args: Any) -> None:
        self.marks.append(time.perf_counter())


def fit(monitors: list[Callback], steps: int) -> dict[str, float]:
    """One fit; the wall clock of training and the monitors' share of it."""
    marks: list[float] = []
    L.seed_everything(0, verbose=False)
    data = InductionData(size=8192, seed=0)
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # health warnings of short chains
        trainer = L.Trainer(
            max_steps=steps,
            accelerator="cpu",
            default_root_dir=root,
            logger=False,
            callbacks=[Stopwatch(marks), *monitors, Stopwatch(marks)],
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=False,
        )
        trainer.fit(InductionLM(), loader(data, shuffle=True))
    inside = sum(b - a for a, b in zip(marks[::2], marks[1::2], strict=True))
    wall = marks[-1] - marks[0]
    return {"wall": wall, "share": inside / wall}


def llc_monitor(draws: int, estimates: int, max_overhead: float | None) -> LLCMonitor:
    return LLCMonitor(
        SAMPLER,
        num_estimates=estimates,
        components="heads",
        num_chains=2,
        num_draws=draws,
        init_loss_batches=4,
        max_overhead=max_overhead,
        figure_every=None,
    )


def susceptibility_monitor(draws: int, max_overhead: float) -> SusceptibilityMonitor:
    copies = InductionData(size=64, repeat_prob=1.0, seed=1)
    bigrams = InductionData(size=64, repeat_prob=0.0, seed=2)
    return SusceptibilityMonitor(
        {"copies": loader(copies), "bigrams": loader(bigrams)},
        SAMPLER,
        num_estimates=4,
        loss_fn=loss_of_lm,
        num_chains=2,
        num_draws=draws,
        init_loss_batches=4,
        top_k=0,
        max_overhead=max_overhead,
        figure_every=None,
    )


def progress_call_cost(bar: Callback, calls: int = 2000) -> float:
    """Microseconds per ``progress(done, total)`` call with ``bar`` in a real fit."""
    seconds: list[float] = []

    class Timer(Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            with SamplingProgress(trainer, "llc", ["llc", "rllc/l0h0"]) as progress:
                start = time.perf_counter()
                for done in range(1, calls + 1):
                    progress(32 * done, 32 * calls)
                seconds.append(time.perf_counter() - start)

    with contextlib.redirect_stdout(io.StringIO()), tempfile.TemporaryDirectory() as root:
        L.Trainer(
            max_steps=1,
            accelerator="cpu",
            default_root_dir=root,
            logger=False,
            callbacks=[Timer(), bar],
            enable_checkpointing=False,
            enable_model_summary=False,
        ).fit(InductionLM(), loader(InductionData(size=64)))
    return seconds[0] / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--estimates", type=int, default=10)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--overheads", default="0.5,0.2,0.1")
    parser.add_argument("--no-susceptibility", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    overheads = [float(v) for v in args.overheads.split(",")]

    rows: list[tuple[str, str, int | str, dict[str, float], float | None]] = []
    baseline = fit([], args.steps)
    rows.append(("none", "-", "-", baseline, None))
    for max_overhead in [None, *overheads]:
        monitor = llc_monitor(args.draws, args.estimates, max_overhead)
        result = fit([monitor], args.steps)
        budget = monitor.budget.share if monitor.budget else None
        rows.append(("llc+heads", str(max_overhead), len(monitor.history), result, budget))
    if not args.no_susceptibility:
        smallest = min(overheads)
        llc = llc_monitor(args.draws, args.estimates, smallest)
        probe = InductionData(size=16, repeat_prob=1.0, seed=1).tokens
        dynamics = EssentialDynamics(probe, every_n_steps=10)
        susceptibility = susceptibility_monitor(args.draws, smallest)
        result = fit([llc, dynamics, susceptibility], args.steps)
        counts = f"{len(llc.history)} + {len(susceptibility.history)}"
        rows.append(("all", f"{smallest} each", counts, result, None))

    print(
        f"{args.steps} steps, {args.estimates} scheduled estimates, 2 chains x {args.draws} "
        "draws, 8 heads"
    )
    print("| callbacks | max_overhead | estimates | wall (s) | share | budget | slowdown |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, max_overhead, count, result, budget in rows:
        own = f"{budget:.3f}" if budget is not None else "-"
        share = f"{result['share']:.3f}" if name != "none" else "-"
        print(
            f"| {name} | {max_overhead} | {count} | {result['wall']:.1f} | {share} | {own} | "
            f"{result['wall'] / baseline['wall']:.2f} |"
        )
    for label, make_bar in (("TQDM", TQDMProgressBar), ("Rich", RichProgressBar)):
        print(f"progress call with {label}: {progress_call_cost(make_bar()):.1f} us")


if __name__ == "__main__":
    main()
