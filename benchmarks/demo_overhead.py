"""The demo's wall time as a multiple of its plain training, measured in one run.

Trains the demo's model on the demo's data with the demo's Trainer settings (validation every
``steps / 60`` steps for the copy-loss curve, no checkpointing) and no analysis callback, then
runs the demo itself (``run_demo``: LLC with per-head refined LLCs, the copies monitor,
essential dynamics, susceptibilities), then trains it alone again, and prints the times and
the demo's ratio to the mean of the two plain trainings (on this shared machine one plain
training has measured 22.7 s and the next 26.8 s). Absolute times vary several-fold between
machines here; the ratio is the figure to quote.

    python benchmarks/demo_overhead.py [--steps 3000] [--seed 0] [--out runs/induction]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import lightning as L

from lightning_devinterp.demo import REPEAT_PROB, run_demo, trainer_settings
from lightning_devinterp.demos import InductionDataModule, InductionLM
from lightning_devinterp.estimators import LLCHealthWarning


def plain_training(steps: int, seed: int, folder: str) -> float:
    """Seconds of the demo's training alone."""
    L.seed_everything(seed, verbose=False)
    data = InductionDataModule(repeat_prob=REPEAT_PROB, seed=seed)
    trainer = L.Trainer(default_root_dir=folder, logger=False, **trainer_settings(steps))
    start = time.perf_counter()
    trainer.fit(InductionLM(), datamodule=data)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="keep the demo's outputs in this folder")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=LLCHealthWarning)
    with tempfile.TemporaryDirectory() as folder:
        before = plain_training(args.steps, args.seed, folder)
        start = time.perf_counter()
        run_demo(args.out or folder, max_steps=args.steps, seed=args.seed)
        demo = time.perf_counter() - start
        after = plain_training(args.steps, args.seed, folder)
    plain = (before + after) / 2
    print(
        f"plain training {before:.1f} s before the demo and {after:.1f} s after, demo "
        f"{demo:.1f} s: {demo / plain:.1f}x plain training (their mean)"
    )


if __name__ == "__main__":
    main()
