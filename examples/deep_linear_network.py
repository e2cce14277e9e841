"""Stagewise learning in a deep linear network, watched through the LLC.

A depth-3 linear student (widths 16-4-4-16) trained from small initialization on a teacher
with singular values 3, 1, 0.33 learns the three modes one at a time: the loss falls in three
steps and the LLC rises in three steps. LLCMonitor estimates the LLC at log-spaced steps and
its online detector announces each transition while training runs. At the end the script
prints, per stage, its steps, loss and measured LLC next to two theoretical values:

- lambda: Aoyagi's learning coefficient of a deep linear network whose true map has the
  stage's rank (the limit for nbeta -> infinity);
- Laplace: 1/2 sum nbeta h / (nbeta h + gamma) over the Hessian at the stage's critical point,
  what a correct estimate gives at these nbeta and localization, where the localization holds
  every direction the loss does not curve to second order.

It also prints the milestones found online and after training (refined), each transition's
distance to the nearest one in decades of step, and where the outputs are. About a minute on
a laptop CPU; TensorBoard by default (``tensorboard --logdir runs``).

    python examples/deep_linear_network.py [--seed 0] [--logger tensorboard|csv|none]
    python examples/deep_linear_network.py --estimates 21 --extra-estimates 9   # adaptive
"""

from __future__ import annotations

import argparse
import math
import warnings

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader

from lightning_devinterp import SGLD, LLCMonitor
from lightning_devinterp.demos.deep_linear import (
    DeepLinearNetwork,
    TeacherData,
    half_mse,
    laplace_llc,
    learning_coefficient,
    transition_steps,
)
from lightning_devinterp.reporting import log_figure
from lightning_devinterp.reporting.figures import plot_llc_curve, save_png

WIDTHS = (16, 4, 4, 16)
SPECTRUM = (3.0, 1.0, 0.33)
MARGIN = 0.15  # decades on either side of a transition left out of a stage's summary


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of teacher, data and init")
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--estimates", type=int, default=60, help="log-spaced LLC estimates")
    parser.add_argument(
        "--extra-estimates",
        type=int,
        default=0,
        help="estimates to add right after bends of the training loss (adaptive schedule)",
    )
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--nbeta", type=float, default=30.0)
    parser.add_argument("--localization", type=float, default=100.0)
    parser.add_argument("--logger", choices=("tensorboard", "csv", "none"), default="tensorboard")
    parser.add_argument("--out", default="runs", help="root folder of the logs")
    return parser.parse_args()


def make_logger(kind: str, root: str):
    """The trainer's logger: TensorBoard (default), CSV, or none."""
    if kind == "tensorboard":
        return TensorBoardLogger(root, name="deep_linear_network")
    if kind == "csv":
        return CSVLogger(root, name="deep_linear_network")
    return False


def nearest(milestones, step: int):
    """The milestone nearest to ``step`` on a log axis and its distance in decades."""
    if not milestones:
        return None, math.inf
    best = min(milestones, key=lambda m: abs(math.log10(m.step / step)))
    return best, abs(math.log10(best.step / step))


def print_stages(history, transitions, data, nbeta, localization) -> None:
    """One row per stage: its steps, median loss and LLC away from the transitions, and the
    Laplace value and learning coefficient of its rank."""
    bounds = [0, *transitions, history[-1]["step"] + 1]
    print(f"\n{'stage':>5} {'steps':>11} {'loss':>8} {'LLC':>7} {'Laplace':>8} {'lambda':>7}")
    for rank, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        inside = [r for r in history if lo * 10**MARGIN < r["step"] < hi / 10**MARGIN]
        llc = np.median([r["llc/mean"] for r in inside]) if inside else math.nan
        loss = np.median([r["llc/init_loss"] for r in inside]) if inside else math.nan
        laplace = laplace_llc(data, WIDTHS, rank, nbeta, localization)
        lam = learning_coefficient(WIDTHS, rank)
        print(f"{rank:>5} {lo:>5}-{hi - 1:<5} {loss:8.4f} {llc:7.2f} {laplace:8.2f} {lam:7.1f}")


def describe(milestone, distance: float, online: bool) -> str:
    """``kind at step (distance dec[, confirmed at step])``, or ``none``."""
    if milestone is None:
        return "none"
    confirmed = f", confirmed at {milestone.detected_at}" if online else ""
    return f"{milestone.kind} at {milestone.step} ({distance:.2f} dec{confirmed})"


def print_milestones(detector, transitions) -> None:
    """Each transition's nearest online and refined milestone, then the ones near none."""
    print("\ntransition (mode half learned) -> nearest LLC milestone, online | refined")
    for mode, step in enumerate(transitions, start=1):
        online = describe(*nearest(detector.milestones, step), online=True)
        refined = describe(*nearest(detector.refined, step), online=False)
        print(f"  mode {mode} at step {step:>5}: {online} | {refined}")
    for name, found in (("online", detector.milestones), ("refined", detector.refined)):
        far = [m for m in found if min(abs(math.log10(m.step / t)) for t in transitions) > 0.2]
        listed = ", ".join(f"{m.kind} at {m.step}" for m in far) or "none"
        print(f"  {name} milestones farther than 0.2 decades from every transition: {listed}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # a 200-parameter model: more threads only wait for each other
    # Estimates before and during a transition are taken where the gradient is not zero: they
    # are negative and flagged as such, as they should be. The table below says what they mean.
    warnings.filterwarnings("ignore", message=r".*LLCMonitor: llc at step")
    L.seed_everything(args.seed, verbose=False)
    data = TeacherData(
        input_dim=WIDTHS[0], output_dim=WIDTHS[-1], singular_values=SPECTRUM, seed=args.seed
    )
    model = DeepLinearNetwork(WIDTHS, init_scale=0.03, lr=0.1, seed=args.seed, data=data)
    steps = np.geomspace(8, args.max_steps, args.estimates)
    monitor = LLCMonitor(
        SGLD(lr=8e-4, nbeta=args.nbeta, localization=args.localization),
        num_chains=args.chains,
        num_draws=args.draws,
        num_burnin=100,
        loss_fn=half_mse,
        at_steps=sorted(set(np.round(steps).astype(int).tolist())),
        extra_estimates=args.extra_estimates,
    )
    trainer = L.Trainer(
        max_steps=args.max_steps,
        callbacks=[monitor],
        logger=make_logger(args.logger, args.out),
        default_root_dir=args.out,
        accelerator="cpu",
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        log_every_n_steps=10,
    )
    trainer.fit(model, DataLoader(data, batch_size=256, shuffle=True, collate_fn=data.collate))

    transitions = transition_steps(model.modes)
    if None in transitions:
        print(f"\nNot every mode was learned in {args.max_steps} steps: {transitions}.")
        return
    detector = monitor.detectors[0]
    print(f"\nteacher singular values {SPECTRUM}, widths {WIDTHS}, seed {args.seed}")
    print(f"modes half learned at steps {transitions}")
    print_stages(monitor.history, transitions, data, args.nbeta, args.localization)
    print_milestones(detector, transitions)
    extra = [r["step"] for r in monitor.history if r["llc/why"] == "adaptive"]
    print(
        f"\n{len(monitor.history)} estimates; after bends of the training loss: {extra or 'none'}"
    )

    figure = plot_llc_curve(monitor.history, detector.stages, detector.milestones)
    axes = figure.axes[0]
    bounds = [monitor.history[0]["step"], *transitions, monitor.history[-1]["step"]]
    for rank, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        laplace = laplace_llc(data, WIDTHS, rank, args.nbeta, args.localization)
        axes.hlines(laplace, lo, hi, colors="k", linestyles=":")
    for step in transitions:
        axes.axvline(step, color="k", linewidth=0.8)
    top = max(r["llc/mean"] for r in monitor.history)
    axes.set_ylim(-0.3 * top, 1.15 * top)  # the dip at the first transition goes further down
    axes.set_title("LLC: modes half learned (black), Laplace value per stage (dotted)")
    path = save_png(figure, monitor.jsonl_path.with_name("llc_stages.png"))
    log_figure(trainer.loggers, "llc/stages", figure, trainer.global_step)
    print(f"\nLLC history: {monitor.jsonl_path}")
    print(f"milestones (online and refined): {monitor.milestones_path}")
    print(f"figure: {path}")
    if args.logger == "tensorboard":
        print(f"TensorBoard: tensorboard --logdir {args.out}")


if __name__ == "__main__":
    main()
