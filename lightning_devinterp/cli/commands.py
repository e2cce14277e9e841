"""What each subcommand does with its parsed options, and what it prints."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace

from lightning_devinterp.callbacks.checkpoints import (
    checkpoints_by_step,
    estimate_checkpoints,
    find_checkpoints,
    load_checkpoint,
    restore,
)
from lightning_devinterp.cli.parser import SOURCE_KEYS
from lightning_devinterp.cli.sources import load_loss_fn, load_model_and_data
from lightning_devinterp.estimators import Calibration, calibrate
from lightning_devinterp.reporting.summary import write_report


def echo(line: str) -> None:
    """One line of a subcommand's output."""
    print(line)


def run_estimate(options: Namespace) -> None:
    """``estimate``: the checkpoints through LLCMonitor, then the report."""
    paths = find_checkpoints(options.checkpoints)
    _, first = checkpoints_by_step(paths, options.unsafe_load)[0]
    model, loader = load_model_and_data(options, load_checkpoint(first, options.unsafe_load))
    base = options.checkpoints[0]
    monitor = estimate_checkpoints(
        model,
        paths,
        loader,
        output_dir=options.out or (base if base.is_dir() else base.parent) / "devinterp",
        unsafe_load=options.unsafe_load,
        loss_fn=load_loss_fn(options),
        **_arguments(options, ("checkpoints", "out", *SOURCE_KEYS)),
    )
    files = write_report(monitor.jsonl_path)
    name = options.name
    last = monitor.history[-1] if monitor.history else {}
    echo(f"{name}: {len(monitor.history)} checkpoints estimated, {len(monitor.errors)} failed")
    if f"{name}/mean" in last:
        echo(
            f"last: step {last['step']}, {name} = {last[f'{name}/mean']:.4g} "
            f"± {last[f'{name}/std']:.2g}"
        )
    for m in monitor.milestones:
        echo(f"milestone: {m.series} {m.kind} at step {m.step}")
    echo(f"records: {monitor.jsonl_path}")
    echo(f"report: {files.markdown} ({len(files.figures)} figures)")


def run_calibrate(options: Namespace) -> None:
    """``calibrate``: :func:`lightning_devinterp.calibrate` at one checkpoint, its table as
    JSON and its figures."""
    source = options.checkpoint
    step, path = checkpoints_by_step(find_checkpoints(source), options.unsafe_load)[-1]
    model, loader = load_model_and_data(options, load_checkpoint(path, options.unsafe_load))
    restore(model, path, options.unsafe_load)
    device = options.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    result = calibrate(
        model.to(device),
        loader,
        load_loss_fn(options),
        **_arguments(options, ("checkpoint", "out", "device", *SOURCE_KEYS)),
    )
    out = options.out or (source if source.is_dir() else path.parent) / "devinterp"
    table = _write_calibration(result, out, path, step)
    sampler = result.sampler
    echo(f"calibrated at {path.name} (step {step}): {len(result.table)} settings tried")
    echo(
        f"recommended ({'confirmed' if result.confirmed else 'NOT confirmed'}, "
        f"{'healthy' if result.healthy else 'unhealthy'}): --lr {sampler.lr:.3g} "
        f"--nbeta {sampler.nbeta:.4g} --localization {sampler.localization:g} "
        f"--num-burnin {result.num_burnin}"
    )
    for message in result.warnings:
        echo(f"warning: {message}")
    echo(f"table: {table}")
    _draw_calibration(result, out)


def run_report(options: Namespace) -> None:
    """``report``: figures and summary of a run."""
    files = write_report(options.source, options.out_dir)
    echo(f"report: {files.markdown}")
    echo(f"html: {files.html}")
    for figure in files.figures:
        echo(f"figure: {figure}")


def run_demo(argv: Sequence[str]) -> int:
    """``demo``: the induction-heads demo, with its own options (its parser gives its
    ``--help``, its errors and their exit status)."""
    from lightning_devinterp.demo import main as demo_main

    return demo_main(list(argv))


def _arguments(options: Namespace, own: Iterable[str]) -> dict[str, Any]:
    """The parsed options but the subcommand's ``own``: the arguments built from the
    signature of the function it calls, for that function."""
    own = set(own)
    return {key: value for key, value in vars(options).items() if key not in own}


def _write_calibration(result: Calibration, out: Path, path: Path, step: int) -> Path:
    """``<out>/calibration.json``: the checkpoint, the choice, the warnings and the table."""
    out.mkdir(parents=True, exist_ok=True)
    content = {
        "checkpoint": str(path),
        "step": step,
        "recommended": result.to_record(),
        "warnings": result.warnings,
        "table": result.table,
    }
    # NaN (a diverged setting) is written as null, so the file stays valid JSON.
    text = json.dumps(json.loads(json.dumps(content), parse_constant=lambda _: None), indent=2)
    (out / "calibration.json").write_text(text)
    return out / "calibration.json"


def _draw_calibration(result: Calibration, out: Path) -> None:
    """The calibration's figures as PNG files in ``out``, each announced."""
    from lightning_devinterp.reporting.calibration_figures import (
        plot_calibration_llc,
        plot_calibration_traces,
    )
    from lightning_devinterp.reporting.figures import save_png

    for name, plot in (("llc", plot_calibration_llc), ("traces", plot_calibration_traces)):
        try:
            echo(f"figure: {save_png(plot(result), out / f'calibration_{name}.png')}")
        except (ImportError, ValueError) as error:  # no matplotlib, or nothing to draw
            echo(f"no {name} figure: {error}")
