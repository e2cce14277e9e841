"""The ``lightning-devinterp`` command line.

Subcommands:

- ``estimate``: LLC (and per-head refined LLCs) over a directory of saved Lightning
  checkpoints, with the callback's outputs (JSON-lines, ``milestones.json``) and a report.
- ``calibrate``: SGLD hyperparameters chosen by the health of short chains at a checkpoint.
- ``report``: figures and a markdown/HTML summary from a run's JSON-lines file.

Run ``lightning-devinterp <subcommand> --help`` for the arguments of each. Class paths
(``--model pkg.module.Class``) are imported with the current directory on the path.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

SOURCE_HELP = """\
the model and data:
  --config FILE     the LightningCLI config of the training run (the config.yaml it saves in
                    the log directory): its model: and data: sections (class_path/init_args)
  --model CLASS     the LightningModule class; without --config its arguments are the
                    checkpoint's hyper_parameters (the module must call save_hyperparameters())
  --datamodule CLASS  the LightningDataModule class (arguments from the checkpoint's
                    datamodule_hyper_parameters); without data the model's train_dataloader()

safety:
  checkpoints are read with torch.load(weights_only=True): tensors and plain containers only.
  A checkpoint holding other Python objects is refused; --unsafe-load unpickles it fully,
  which runs any code the file contains. Use it only for files you trust.
"""

ESTIMATE_EXAMPLE = """
example:
  lightning-devinterp estimate lightning_logs/version_0/checkpoints \\
      --config lightning_logs/version_0/config.yaml --components heads \\
      --lr 1e-4 --nbeta 30 --localization 100
"""

CALIBRATE_EXAMPLE = """
example:
  lightning-devinterp calibrate lightning_logs/version_0/checkpoints \\
      --config lightning_logs/version_0/config.yaml --nbeta 30
"""

#: calibrate() options passed on only when given (its own defaults otherwise).
CALIBRATE_OPTIONS = (
    "nbeta",
    "lrs",
    "localizations",
    "num_chains",
    "num_draws",
    "num_burnin",
    "steps_between_draws",
    "tolerance",
    "max_steps",
    "seed",
    "init_loss_batches",
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of all subcommands."""
    parser = argparse.ArgumentParser(
        prog="lightning-devinterp",
        description="Developmental interpretability of Lightning runs: LLCs over saved "
        "checkpoints, calibration, reports, and the demo.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    estimate = commands.add_parser(
        "estimate",
        help="LLC and refined LLCs over saved checkpoints",
        description="Estimate the local learning coefficient at each Lightning checkpoint\n"
        "(sorted by global_step) with the outputs of LLCMonitor: <out>/<name>.jsonl (one\n"
        "record per checkpoint, the callback's keys), <out>/milestones.json, and a report\n"
        "with figures in <out>/report.",
        epilog=SOURCE_HELP + ESTIMATE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    estimate.add_argument(
        "checkpoints", nargs="+", type=Path, help="a directory of *.ckpt files, or the files"
    )
    _add_source_arguments(estimate)
    sampling = estimate.add_argument_group("sampling (as LLCMonitor / estimate_llc)")
    sampling.add_argument("--lr", type=float, metavar="X", help="SGLD step size (default 1e-3)")
    sampling.add_argument(
        "--nbeta", type=float, metavar="X", help="inverse temperature (default m/log m)"
    )
    sampling.add_argument(
        "--localization", type=float, metavar="X", help="pull to w* (default 200)"
    )
    sampling.add_argument(
        "--num-chains", type=int, metavar="N", default=4, help="chains (default 4)"
    )
    sampling.add_argument(
        "--num-draws", type=int, metavar="N", default=200, help="draws per chain (default 200)"
    )
    sampling.add_argument(
        "--num-burnin",
        type=int,
        metavar="N",
        default=0,
        help="discarded steps per chain (default 0)",
    )
    sampling.add_argument(
        "--steps-between-draws",
        type=int,
        metavar="N",
        default=1,
        help="SGLD steps per draw (default 1)",
    )
    sampling.add_argument(
        "--init-loss-batches",
        type=int,
        metavar="N",
        default=16,
        help="batches for L(w*) (default 16)",
    )
    sampling.add_argument(
        "--seed", type=int, metavar="N", default=0, help="chains' seed (default 0)"
    )
    _add_mode_arguments(sampling)
    output = estimate.add_argument_group("what and where")
    output.add_argument(
        "--components", choices=["heads"], help="'heads': a refined LLC per attention head"
    )
    output.add_argument("--no-milestones", action="store_true", help="no milestone detection")
    output.add_argument("--name", default="llc", help="metric prefix and file name (default llc)")
    output.add_argument(
        "--out", type=Path, metavar="DIR", help="output folder (default <checkpoints>/devinterp)"
    )
    output.add_argument("--accelerator", default="auto", help="cpu, gpu, ... (default auto)")
    estimate.set_defaults(run=run_estimate)

    calibrate = commands.add_parser(
        "calibrate",
        help="choose SGLD hyperparameters at a checkpoint",
        description="Run short chains on a log grid of step sizes (per localization, and per\n"
        "nbeta unless --nbeta is given) at one checkpoint and recommend the settings whose\n"
        "chains are healthy (lightning_devinterp.calibrate). Prints the estimate flags to\n"
        "use; writes <out>/calibration.json (every setting tried) and its figures. Options\n"
        "left out take calibrate()'s defaults.",
        epilog=SOURCE_HELP + CALIBRATE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    calibrate.add_argument(
        "checkpoint", type=Path, help="a checkpoint, or a directory (its last one by step)"
    )
    _add_source_arguments(calibrate)
    grid = calibrate.add_argument_group("grid, chains and budget (as calibrate())")
    grid.add_argument(
        "--nbeta", type=float, metavar="X", help="fix nbeta (default: sweep m/log m, a quarter)"
    )
    grid.add_argument(
        "--lrs", type=float, metavar="X", nargs="+", help="step sizes (default: from curvature)"
    )
    grid.add_argument(
        "--localizations", type=float, metavar="X", nargs="+", help="localizations, weakest first"
    )
    grid.add_argument("--num-chains", type=int, metavar="N", help="chains per setting")
    grid.add_argument(
        "--num-draws", type=int, metavar="N", help="draws per chain and setting (>= 16)"
    )
    grid.add_argument("--num-burnin", type=int, metavar="N", help="extra discarded steps per chain")
    grid.add_argument("--steps-between-draws", type=int, metavar="N", help="SGLD steps per draw")
    grid.add_argument(
        "--tolerance", type=float, metavar="X", help="agreement of neighbouring step sizes"
    )
    grid.add_argument(
        "--max-steps", type=int, metavar="N", help="budget: SGLD steps over all settings"
    )
    grid.add_argument("--full-sweep", action="store_true", help="every setting of the grid")
    grid.add_argument("--init-loss-batches", type=int, metavar="N", help="batches for L(w*)")
    grid.add_argument("--seed", type=int, metavar="N", help="chains' seed")
    _add_mode_arguments(grid)
    calibrate.add_argument(
        "--out", type=Path, metavar="DIR", help="output folder (default <dir>/devinterp)"
    )
    calibrate.add_argument("--device", default="auto", help="cpu, cuda, ... (default auto)")
    calibrate.set_defaults(run=run_calibrate)

    report = commands.add_parser(
        "report",
        help="figures and a markdown/HTML summary of a run",
        description="Write report.md, report.html and PNG figures (LLC curve with stages and "
        "milestones, L(w*), refined LLCs per head) from a run's JSON-lines file(s) and the "
        "milestones.json beside them.",
    )
    report.add_argument(
        "source", type=Path, help="a run's log directory (searched for *.jsonl) or one .jsonl"
    )
    report.add_argument(
        "--out", type=Path, metavar="DIR", help="output folder (default report/ beside it)"
    )
    report.set_defaults(run=run_report)

    demo = commands.add_parser(
        "demo",
        add_help=False,
        help="train a small transformer and watch its induction heads form",
        description="The demo (examples/induction_heads.py); `demo --help` lists its options.",
    )
    demo.set_defaults(run=run_demo)
    return parser


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("model and data")
    source.add_argument(
        "--config", type=Path, metavar="FILE", help="LightningCLI config with model:/data:"
    )
    source.add_argument("--model", metavar="CLASS", help="LightningModule, e.g. mypkg.models.GPT")
    source.add_argument("--datamodule", metavar="CLASS", help="LightningDataModule class")
    source.add_argument(
        "--loss-fn", metavar="FUNC", help="loss_fn(model, batch), e.g. mypkg.losses.lm_loss"
    )
    source.add_argument(
        "--unsafe-load",
        action="store_true",
        help="unpickle checkpoints fully (runs code from the file: trusted files only)",
    )


def _add_mode_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--unpaired", action="store_true", help="minus L(w*), not paired")
    group.add_argument("--train-mode", action="store_true", help="sample in train mode")
    group.add_argument("--mala", action="store_true", help="also the MALA acceptance rate")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lightning-devinterp``; returns the exit status."""
    parser = build_parser()
    args, options = parser.parse_known_args(argv)
    if options and args.command != "demo":
        parser.error(f"unrecognized arguments: {' '.join(options)}")
    args.options = options
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # class paths import from here, as with python -m
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        parser.exit(2, f"lightning-devinterp {args.command}: error: {error}\n")
    return 0


def run_estimate(args: argparse.Namespace) -> None:
    """``estimate``: the checkpoints through LLCMonitor, then the report."""
    from lightning_devinterp.callbacks.checkpoints import (
        checkpoints_by_step,
        estimate_checkpoints,
        find_checkpoints,
        load_checkpoint,
    )
    from lightning_devinterp.callbacks.llc_monitor import DEFAULT_LOCALIZATION, DEFAULT_LR
    from lightning_devinterp.reporting.summary import write_report
    from lightning_devinterp.sampling import SGLD

    paths = find_checkpoints(args.checkpoints)
    _, first = checkpoints_by_step(paths, args.unsafe_load)[0]
    model, loader = load_model_and_data(args, load_checkpoint(first, args.unsafe_load))
    given = {k: getattr(args, k) for k in ("lr", "nbeta", "localization")}
    sampler = None
    if any(v is not None for v in given.values()):
        sampler = SGLD(
            lr=DEFAULT_LR if given["lr"] is None else given["lr"],
            nbeta=given["nbeta"],
            localization=(
                DEFAULT_LOCALIZATION if given["localization"] is None else given["localization"]
            ),
        )
    out = args.out
    if out is None:
        base = args.checkpoints[0]
        out = (base if base.is_dir() else base.parent) / "devinterp"
    monitor = estimate_checkpoints(
        model,
        paths,
        loader,
        output_dir=out,
        unsafe_load=args.unsafe_load,
        accelerator=args.accelerator,
        sampler=sampler,
        loss_fn=import_object(args.loss_fn, "--loss-fn") if args.loss_fn else None,
        num_chains=args.num_chains,
        num_draws=args.num_draws,
        num_burnin=args.num_burnin,
        steps_between_draws=args.steps_between_draws,
        init_loss_batches=args.init_loss_batches,
        seed=args.seed,
        paired=not args.unpaired,
        train_mode=args.train_mode,
        mala=args.mala,
        components=args.components,
        milestones=not args.no_milestones,
        name=args.name,
    )
    files = write_report(monitor.jsonl_path)
    last = monitor.history[-1] if monitor.history else {}
    print(
        f"{args.name}: {len(monitor.history)} checkpoints estimated, {len(monitor.errors)} failed"
    )
    if f"{args.name}/mean" in last:
        print(
            f"last: step {last['step']}, {args.name} = {last[f'{args.name}/mean']:.4g} "
            f"± {last[f'{args.name}/std']:.2g}"
        )
    for m in monitor.milestones:
        print(f"milestone: {m.series} {m.kind} at step {m.step}")
    print(f"records: {monitor.jsonl_path}")
    print(f"report: {files.markdown} ({len(files.figures)} figures)")


def run_calibrate(args: argparse.Namespace) -> None:
    """``calibrate``: :func:`lightning_devinterp.calibrate` at one checkpoint, its table as
    JSON and its figures."""
    import json

    import torch

    from lightning_devinterp.callbacks.checkpoints import (
        checkpoints_by_step,
        find_checkpoints,
        load_checkpoint,
        restore,
    )
    from lightning_devinterp.estimators import calibrate
    from lightning_devinterp.reporting.calibration_figures import (
        plot_calibration_llc,
        plot_calibration_traces,
    )
    from lightning_devinterp.reporting.figures import save_png

    step, path = checkpoints_by_step(find_checkpoints(args.checkpoint), args.unsafe_load)[-1]
    model, loader = load_model_and_data(args, load_checkpoint(path, args.unsafe_load))
    restore(model, path, args.unsafe_load)
    device = (
        args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    )
    options = {k: getattr(args, k) for k in CALIBRATE_OPTIONS if getattr(args, k) is not None}
    result = calibrate(
        model.to(device),
        loader,
        import_object(args.loss_fn, "--loss-fn") if args.loss_fn else None,
        paired=not args.unpaired,
        train_mode=args.train_mode,
        mala=args.mala,
        full_sweep=args.full_sweep,
        **options,
    )
    out = args.out or (args.checkpoint if args.checkpoint.is_dir() else path.parent) / "devinterp"
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
    sampler = result.sampler
    print(f"calibrated at {path.name} (step {step}): {len(result.table)} settings tried")
    print(
        f"recommended ({'confirmed' if result.confirmed else 'NOT confirmed'}, "
        f"{'healthy' if result.healthy else 'unhealthy'}): --lr {sampler.lr:.3g} "
        f"--nbeta {sampler.nbeta:.4g} --localization {sampler.localization:g} "
        f"--num-burnin {result.num_burnin}"
    )
    for message in result.warnings:
        print(f"warning: {message}")
    print(f"table: {out / 'calibration.json'}")
    for name, plot in (("llc", plot_calibration_llc), ("traces", plot_calibration_traces)):
        try:
            print(f"figure: {save_png(plot(result), out / f'calibration_{name}.png')}")
        except (ImportError, ValueError) as error:  # no matplotlib, or nothing to draw
            print(f"no {name} figure: {error}")


def run_demo(args: argparse.Namespace) -> None:
    """``demo``: the induction-heads demo, with its own options."""
    from lightning_devinterp.demo import main as demo_main

    demo_main(args.options)  # its own parser: --help, bad options and exit codes


def run_report(args: argparse.Namespace) -> None:
    """``report``: figures and summary of a run."""
    from lightning_devinterp.reporting.summary import write_report

    files = write_report(args.source, args.out)
    print(f"report: {files.markdown}")
    print(f"html: {files.html}")
    for figure in files.figures:
        print(f"figure: {figure}")


def load_model_and_data(args: argparse.Namespace, checkpoint: dict[str, Any]) -> tuple[Any, Any]:
    """The model and the training dataloader, from ``--config``/``--model``/``--datamodule``
    and the checkpoint's saved hyperparameters.

    Raises:
        ValueError: the model or the data cannot be determined or built.
    """
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.utilities.model_helpers import is_overridden

    config = _read_config(args.config) if args.config else {}
    model_spec = _spec(
        "model", config.get("model"), args.model, checkpoint.get("hyper_parameters"), args.config
    )
    if model_spec is None:
        raise ValueError(
            "No model: pass --model pkg.module.Class (arguments from the checkpoint's "
            "hyper_parameters) or --config with the run's model: section."
        )
    model = _build(LightningModule, model_spec, "the model")
    data_spec = _spec(
        "data",
        config.get("data"),
        args.datamodule,
        checkpoint.get("datamodule_hyper_parameters"),
        args.config,
    )
    if data_spec is not None:
        datamodule = _build(LightningDataModule, data_spec, "the datamodule")
        datamodule.prepare_data()
        datamodule.setup("fit")
        return model, datamodule.train_dataloader()
    if is_overridden("train_dataloader", model):
        return model, model.train_dataloader()
    raise ValueError(
        f"No training data: {type(model).__name__} has no train_dataloader(); pass "
        "--datamodule pkg.module.Class or --config with the run's data: section."
    )


def _read_config(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file.")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"--config {path} is not valid YAML ({error}).") from error
    if isinstance(config, dict) and "fit" in config and "model" not in config:
        config = config["fit"]  # a config of LightningCLI's subcommands
    if not isinstance(config, dict) or not ({"model", "data"} & config.keys()):
        raise ValueError(
            f"--config {path} has no model: or data: section; pass the config.yaml LightningCLI "
            "wrote for the training run."
        )
    return config


def _spec(
    section: str,
    content: Any,
    class_path: str | None,
    saved: dict[str, Any] | None,
    config: Path | None,
) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` from a config section, the class given on the command
    line and the hyperparameters saved in the checkpoint (keys starting with ``_`` are
    LightningCLI's bookkeeping); None when nothing names a class."""
    if isinstance(content, dict) and "class_path" in content:
        return {
            "class_path": class_path or content["class_path"],
            "init_args": content.get("init_args") or {},
        }
    if content is not None and not isinstance(content, dict):
        raise ValueError(f"--config {config}: {section}: must be a mapping, got {content!r}.")
    if class_path is None:
        if content:
            flag = "--model" if section == "model" else "--datamodule"
            raise ValueError(
                f"--config {config}: the {section}: section has no class_path; pass {flag} "
                "pkg.module.Class."
            )
        return None
    init_args = content if content is not None else saved or {}
    return {
        "class_path": class_path,
        "init_args": {k: v for k, v in dict(init_args).items() if not str(k).startswith("_")},
    }


def _build(base: type, spec: dict[str, Any], what: str) -> Any:
    from lightning_devinterp.callbacks.factory import instantiate

    return instantiate(base, spec, f"{what} {spec['class_path']}")


def import_object(path: str, flag: str) -> Any:
    """The object at ``pkg.module.name``.

    Raises:
        ValueError: the module or the name does not exist.
    """
    module_name, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(
            f"{flag} {path}: cannot import it ({error}); use pkg.module.name."
        ) from error


if __name__ == "__main__":
    raise SystemExit(main())
