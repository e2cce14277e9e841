"""The demo: induction heads forming in a small transformer, watched as it trains.

A 2-layer attention-only transformer learns a language that mixes a bigram language with
sequences that copy themselves at a random offset (:class:`InductionData`). It first learns the
bigrams, then forms induction heads, and the loss on the copied halves falls sharply. Trained
with :class:`LLCMonitor` (LLC and per-head refined LLCs, milestones),
:class:`EssentialDynamics` and :class:`SusceptibilityMonitor`; the demo then compares the
main LLC curve's milestones with the step where the copied-half loss fell fastest, and names
the induction stage: the stage of the main LLC curve, between two online milestones, where
the LLC rises (complexity acquired) around that step. A second monitor on copied sequences
(``copies``, ``--copies``) is an extra view, not needed for the story, and off by default.

    python examples/induction_heads.py            # or: lightning-devinterp demo
"""

from __future__ import annotations

import argparse
import math
import netrc
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from lightning_devinterp.callbacks import EssentialDynamics, LLCMonitor, SusceptibilityMonitor
from lightning_devinterp.callbacks.schedule import log_spaced_steps
from lightning_devinterp.demos import InductionData, InductionDataModule, InductionLM, loss_of_lm
from lightning_devinterp.estimators import LLCHealthWarning
from lightning_devinterp.milestones import Milestone, MilestoneDetector, Stage
from lightning_devinterp.reporting import loss_series
from lightning_devinterp.reporting.figures import plot_formation, save_png
from lightning_devinterp.sampling import SGLD

#: Sampler settings of the demo (healthy chains on this model across training).
SAMPLER = SGLD(lr=1e-4, nbeta=30.0, localization=300.0)
#: How far (in log10 of the step) a milestone may be from the copy-loss drop to count.
TOLERANCE = 0.3
#: How far (in log10 of the step) the copy-loss drop may lie outside the induction stage.
STAGE_SLACK = 0.1
#: Share of the training sequences that copy themselves.
REPEAT_PROB = 0.8


@dataclass
class DemoResult:
    """What the demo found.

    Attributes:
        output_dir: where logs, JSON-lines files and figures are.
        formation_step: step where the loss on copied halves fell fastest (per log step).
        milestones: every milestone confirmed online (LLC, loss, per head), in order.
        stages: each monitor's LLC stages (``llc``, ``copies``) between its online milestones.
        induction_milestone: the main monitor's milestone (LLC, L(w*), a head's refined
            LLC, the training loss) nearest ``formation_step``, if any.
        distance: its distance to ``formation_step`` in log10(step).
        figures: PNG files written.
        top_heads: head -> susceptibility to copied sequences at the last estimate.
        induction_stage: the rising stage of the main LLC curve, between its online
            milestones, nearest ``formation_step``.
        stage_view: each stage of the main LLC curve with what every other series (L(w*),
            each head's refined LLC) does in it, one line per stage.
    """

    output_dir: Path
    formation_step: int | None
    milestones: list[Milestone]
    stages: dict[str, list[Stage]]
    induction_milestone: Milestone | None
    distance: float | None
    figures: list[Path] = field(default_factory=list)
    top_heads: dict[str, float] = field(default_factory=dict)
    induction_stage: Stage | None = None
    stage_view: list[str] = field(default_factory=list)

    @property
    def detected(self) -> bool:
        """Whether a main-curve milestone lies within :data:`TOLERANCE` of the formation."""
        return self.distance is not None and self.distance <= TOLERANCE

    @property
    def in_stage(self) -> bool:
        """Whether the formation step lies in the induction stage, give or take
        :data:`STAGE_SLACK` (see :func:`outside`), and a milestone opened that stage online
        (it may still be open when training ends: the LLC can keep rising)."""
        stage, step = self.induction_stage, self.formation_step
        if stage is None or stage.index == 0 or step is None:
            return False
        return outside(step, stage) <= STAGE_SLACK


class CopyLossLog(Callback):
    """Keeps ``val/copy_loss`` at each validation, by global step."""

    def __init__(self) -> None:
        self.points: list[tuple[int, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and "val/copy_loss" in trainer.callback_metrics:
            value = float(trainer.callback_metrics["val/copy_loss"])
            self.points.append((trainer.global_step, value))


def steepest_drop(points: Sequence[tuple[int, float]]) -> int | None:
    """The step where a curve falls fastest per unit of log(step): the geometric middle of
    the pair of neighbouring points (after a 3-point moving average) with the steepest fall."""
    points = [(s, v) for s, v in points if s > 0]
    if len(points) < 3:
        return None
    steps = [s for s, _ in points]
    values = [v for _, v in points]
    smooth = [
        sum(values[max(0, i - 1) : i + 2]) / len(values[max(0, i - 1) : i + 2])
        for i in range(len(values))
    ]
    slopes = [
        (smooth[i + 1] - smooth[i]) / (math.log(steps[i + 1]) - math.log(steps[i]))
        for i in range(len(steps) - 1)
    ]
    i = min(range(len(slopes)), key=slopes.__getitem__)
    return round(math.sqrt(steps[i] * steps[i + 1]))


def outside(step: int, stage: Stage) -> float:
    """How far (in log10 step) ``step`` lies outside ``stage`` (0 inside; open: no end)."""
    before = math.log10(stage.start / step) if stage.start > 0 else -math.inf
    after = math.log10(step / stage.end) if stage.end is not None else -math.inf
    return max(0.0, before, after)


def induction_stage(stages: Sequence[Stage], formation: int | None) -> Stage | None:
    """The rising stage nearest ``formation`` (in log10 step) among ``stages``, if any."""
    rising = [s for s in stages if s.trend == "rising"]
    if formation is None or not rising:
        return None
    return min(rising, key=lambda s: outside(formation, s))


def run_demo(
    output_dir: str | Path = "runs/induction",
    *,
    max_steps: int = 3000,
    num_estimates: int = 16,
    num_draws: int = 80,
    heads: bool = True,
    susceptibilities: bool = True,
    copies: bool = False,
    logger: str = "tensorboard",
    seed: int = 0,
) -> DemoResult:
    """Train the demo model with the monitors and say where its stages are.

    Args:
        output_dir: folder for logs, JSON-lines files and figures.
        max_steps: training steps.
        num_estimates: LLC estimates, log-spaced over the run.
        num_draws: SGLD draws per chain (2 chains).
        heads: also a refined LLC per attention head.
        susceptibilities: also the heads' susceptibilities to copied and bigram sequences
            (3 log-spaced estimates).
        copies: also the LLC and L(w*) on copied sequences only, at twice ``num_estimates``
            (an extra view; it adds about a tenth to the demo's time).
        logger: ``"tensorboard"`` or ``"wandb"`` (offline unless you are logged in).
        seed: seed of the weights and of the data order (and of the chains).
    """
    L.seed_everything(seed, verbose=False)
    output_dir = Path(output_dir)
    data = InductionDataModule(repeat_prob=REPEAT_PROB, seed=seed)
    sampling = dict(
        num_chains=2, num_draws=num_draws, num_burnin=20, init_loss_batches=4, seed=seed
    )
    monitors = [
        LLCMonitor(
            SAMPLER,
            at_steps=_grid(max_steps, num_estimates),
            components="heads" if heads else None,  # milestones on every series by default
            **sampling,
        )
    ]
    if copies:  # an extra view: the LLC and the loss at w* on copied sequences only
        monitors.append(
            LLCMonitor(
                SAMPLER,
                at_steps=_grid(max_steps, 2 * num_estimates),
                dataloader=data.val_dataloader(),
                loss_fn=loss_of_lm,
                name="copies",
                milestones=detectors("copies"),
                **sampling,
            )
        )
    callbacks: list[Callback] = [
        *monitors,
        EssentialDynamics(data.copies.tokens[:16], at_steps=_grid(max_steps, 60)),
        copy_log := CopyLossLog(),
    ]
    if susceptibilities:
        callbacks.append(_susceptibilities(data, max_steps, sampling))
    trainer = L.Trainer(
        default_root_dir=output_dir,
        logger=_logger(logger, output_dir),
        callbacks=callbacks,
        **trainer_settings(max_steps),
    )
    trainer.fit(InductionLM(), datamodule=data)
    return _result(output_dir, monitors, copy_log, callbacks)


def trainer_settings(max_steps: int) -> dict[str, Any]:
    """The demo's Trainer settings: CPU, validation (the copy loss) 60 times a run."""
    return dict(
        max_steps=max_steps,
        accelerator="cpu",
        val_check_interval=max(1, max_steps // 60),
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
    )


def _grid(max_steps: int, count: int, first: int = 10) -> list[int]:
    return sorted(log_spaced_steps(max_steps, count, first))


def _susceptibilities(
    data: InductionDataModule, max_steps: int, sampling: dict[str, Any]
) -> SusceptibilityMonitor:
    """The heads' susceptibilities to copied and to bigram sequences, 3 times from 1/10 of
    the run."""
    bigrams = InductionData(size=64, repeat_prob=0.0, seed=sampling["seed"] + 2)
    return SusceptibilityMonitor(
        {"copies": data.val_dataloader(), "bigrams": data.loader(bigrams)},
        SAMPLER,
        at_steps=_grid(max_steps, 3, first=max_steps // 10),
        loss_fn=loss_of_lm,
        top_k=5,
        **sampling,
    )


def detectors(name: str) -> list[MilestoneDetector]:
    """The copies monitor's detectors on its LLC and L(w*), trusting the measured noise after 6
    points (the default 12 suits longer curves than the demo's).

    A stretch is flat when it changes slower than the curve's mean slope (``flat=1.0``; the
    default 0.5 wants half that): the LLC and L(w*) move all through the demo's training, so
    its stages are where they move faster than average, the induction stage among them. Over
    8 seeds, 0.85 to 1.5 marked it on all; 0.7 missed it on 1 and 0.5 on 5 (the figures are
    in tests/test_demo.py).
    """
    return [
        MilestoneDetector(name, flat=1.0, min_noise_points=6),
        MilestoneDetector(loss_series(name), flat=1.0, drop=2.0, min_noise_points=6),
    ]


def _logger(kind: str, output_dir: Path) -> Any:
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(output_dir, name="logs")
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        online = _wandb_credentials()
        return WandbLogger(
            project="lightning-devinterp-demo",
            save_dir=output_dir,
            offline=not online,
            mode="online" if online else "offline",  # explicit: not read from the environment
        )
    raise ValueError(f"logger={kind!r} is invalid; use 'tensorboard' or 'wandb'.")


def _wandb_credentials() -> bool:
    """Whether W&B has an API key here (``WANDB_API_KEY`` or ``~/.netrc``), without touching
    wandb's own state (which would fix its mode before the logger sets it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def _result(
    output_dir: Path,
    monitors: list[LLCMonitor],
    copy_log: CopyLossLog,
    callbacks: list[Callback],
) -> DemoResult:
    formation = steepest_drop(copy_log.points)
    main = monitors[0]
    last = main.history[-1]["step"] if main.history else 0
    found = [m for monitor in monitors for m in monitor.milestones]
    found += [m for c in callbacks if isinstance(c, EssentialDynamics) for m in c.milestones]
    nearest, distance = _nearest(main.milestones, formation)
    llc = [(r["step"], r["llc/mean"]) for r in main.history if r["step"] > 0]
    try:
        on_llc = [m for m in main.milestones if m.series == main.name]
        figure = plot_formation(copy_log.points, llc, on_llc, formation, TOLERANCE)
        save_png(figure, output_dir / "induction.png")
    except (ImportError, ValueError) as error:  # no matplotlib, or nothing to draw
        print(f"No induction.png: {error}")
    return DemoResult(
        output_dir=output_dir,
        formation_step=formation,
        milestones=sorted(found, key=lambda m: m.step),
        stages={m.name: m.detectors[0].stages for m in monitors if m.detectors},
        induction_milestone=nearest,
        distance=distance,
        figures=sorted(output_dir.rglob("*.png")),
        top_heads=_top_heads(callbacks),
        induction_stage=induction_stage(main.tracker.stages(main.name), formation),
        stage_view=[s.describe("end") for s in main.tracker.stage_view(last)],
    )


def _nearest(
    milestones: Sequence[Milestone], formation: int | None
) -> tuple[Milestone | None, float | None]:
    """The milestone nearest ``formation`` in log10 step, and that distance."""
    candidates = [m for m in milestones if m.step > 0]
    if formation is None or not candidates:
        return None, None
    nearest = min(candidates, key=lambda m: abs(math.log10(m.step / formation)))
    return nearest, abs(math.log10(nearest.step / formation))


def _top_heads(callbacks: Sequence[Callback]) -> dict[str, float]:
    """Each head's susceptibility to copied sequences at the last estimate, if measured."""
    for c in callbacks:
        if isinstance(c, SusceptibilityMonitor) and (result := c.last_result) is not None:
            row = result.response[result.probes.index("copies")].tolist()
            return dict(zip(result.components, row, strict=True))
    return {}


def summary(result: DemoResult) -> str:
    """What the demo found, as text."""
    lines = [f"Outputs in {result.output_dir}/"]
    for name, stages in result.stages.items():
        lines.append(f"Stages of the {name} LLC curve (between its online milestones):")
        for stage in stages:
            end = stage.end if stage.end is not None else "end"
            lines.append(f"  stage {stage.index}: steps {stage.start}-{end}, LLC {stage.trend}")
    lines.append("Stage view (each stage of the llc curve, what every series does in it):")
    lines += [f"  {line}" for line in result.stage_view]
    lines.append("Milestones (series, kind, step, confirmed at, evidence in noise units):")
    for m in result.milestones:
        evidence = f"{m.evidence:6.1f}" if m.evidence is not None else "     -"
        lines.append(f"  {m.series:<20} {m.kind:<14} {m.step:>6} {m.detected_at:>6} {evidence}")
    if result.formation_step is not None:
        lines.append(
            f"Loss on copied halves fell fastest at step {result.formation_step} "
            "(induction heads forming)."
        )
    if result.induction_milestone is not None:
        m = result.induction_milestone
        verdict = "detected" if result.detected else "NOT detected"
        lines.append(
            f"Nearest milestone: {m.series} {m.kind} at step {m.step} "
            f"({result.distance:.2f} in log10 step; {verdict} within {TOLERANCE})."
        )
    stage = result.induction_stage
    if stage is not None and result.formation_step is not None:
        gap = outside(result.formation_step, stage)
        lines.append(
            "Induction stage (the main LLC rising, complexity acquired): "
            f"steps {stage.start}-{stage.end or 'end'}; the copy loss fell fastest "
            + ("inside it." if gap == 0 else f"{gap:.2f} in log10 step outside it.")
        )
    if result.top_heads:
        ranked = sorted(result.top_heads.items(), key=lambda kv: kv[1])
        lines.append(
            "Susceptibility to copied sequences (most negative first): "
            + ", ".join(f"{h} {v:+.2g}" for h, v in ranked)
        )
    lines.append("Chain health flags are in each record's <name>/warnings (JSON-lines files).")
    lines.append(f"Figures: {len(result.figures)} PNG files, e.g.")
    lines += [f"  {path}" for path in result.figures[:6]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the demo; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="lightning-devinterp demo",
        description="Train a 2-layer attention-only transformer on a language that rewards "
        "in-context copying, watch its LLC, per-head refined LLCs, essential dynamics and "
        "susceptibilities, and report the stages and the induction-head milestone "
        "(about 8-10x the time of its training alone).",
    )
    parser.add_argument("--out", default="runs/induction", help="output folder")
    parser.add_argument("--steps", type=int, default=3000, help="training steps")
    parser.add_argument("--estimates", type=int, default=16, help="LLC estimates (log-spaced)")
    parser.add_argument("--draws", type=int, default=80, help="SGLD draws per chain")
    parser.add_argument("--logger", choices=["tensorboard", "wandb"], default="tensorboard")
    parser.add_argument("--no-heads", action="store_true", help="skip per-head refined LLCs")
    parser.add_argument(
        "--no-susceptibilities", action="store_true", help="skip the SusceptibilityMonitor"
    )
    parser.add_argument(
        "--copies", action="store_true", help="also the LLC on copied sequences (an extra view)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # short demo chains are often flagged; the flags stay in each record (<name>/warnings)
    warnings.filterwarnings("ignore", category=LLCHealthWarning)
    result = run_demo(
        args.out,
        max_steps=args.steps,
        num_estimates=args.estimates,
        num_draws=args.draws,
        heads=not args.no_heads,
        susceptibilities=not args.no_susceptibilities,
        copies=args.copies,
        logger=args.logger,
        seed=args.seed,
    )
    print(summary(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
