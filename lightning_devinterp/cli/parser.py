"""The parser of ``lightning-devinterp``.

Each subcommand's options are built by jsonargparse from the signature of the function it
calls, with its defaults and docstring help: ``estimate`` from :func:`estimate_checkpoints`
(with the :class:`LLCMonitor` arguments it passes on, ``--sampler`` among them),
``calibrate`` from :func:`calibrate`, ``report`` from :func:`write_report`. Written here are
only the options that say where the model, data and checkpoints come from and where the
outputs go. The earlier spellings of the options (``--num-chains``, ``--mala`` alone,
``--lrs 1e-3 3e-4``) still work: see :mod:`lightning_devinterp.cli.spellings`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser, DefaultHelpFormatter, Namespace

from lightning_devinterp.callbacks.checkpoints import estimate_checkpoints
from lightning_devinterp.callbacks.llc_monitor import LLCMonitor
from lightning_devinterp.callbacks.sampler_plan import DEFAULT_LR
from lightning_devinterp.cli.spellings import Spellings
from lightning_devinterp.estimators import calibrate
from lightning_devinterp.reporting.summary import write_report

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

ESTIMATE_DESCRIPTION = """\
Estimate the local learning coefficient at each Lightning checkpoint
(sorted by global_step) with the outputs of LLCMonitor: <out>/<name>.jsonl (one
record per checkpoint, the callback's keys), <out>/milestones.json, and a report
with figures in <out>/report."""

CALIBRATE_DESCRIPTION = """\
Run short chains on a log grid of step sizes (per localization, and per
nbeta unless --nbeta is given) at one checkpoint and recommend the settings whose
chains are healthy (lightning_devinterp.calibrate). Prints the estimate flags to
use; writes <out>/calibration.json (every setting tried) and its figures."""

REPORT_DESCRIPTION = """\
Write report.md, report.html and PNG figures (LLC curve with stages and
milestones, L(w*), refined LLCs per head) from a run's JSON-lines file(s) and the
milestones.json beside them."""

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

#: :func:`estimate_checkpoints` arguments (its own and :class:`LLCMonitor`'s) that
#: ``estimate`` does not offer: those it builds (the model, data and loss from the sources,
#: the checkpoints, ``--out``), those the checkpoints fix (the schedule), and those that need
#: Python objects or a training run.
ESTIMATE_SKIP = {
    *("model", "checkpoints", "dataloader", "output_dir", "unsafe_load", "loss_fn"),
    *("every_n_steps", "num_estimates", "at_steps", "at_train_end", "extra_estimates"),
    *("data", "on_milestone", "checkpoint_on_milestone", "calibration", "calibrate_at_step"),
    *("max_overhead", "figure_every"),
}
#: :func:`calibrate` arguments that ``calibrate`` builds from the sources.
CALIBRATE_SKIP = {"model", "dataloader", "loss_fn", "transfer"}
#: The options of :func:`add_source_arguments`.
SOURCE_KEYS = ("config", "model", "datamodule", "loss_fn", "unsafe_load")
#: Options renamed since the first command line (earlier spelling -> current one).
RENAMED = {"--unpaired": "--paired=false", "--no-milestones": "--milestones=false"}
#: ``estimate``'s SGLD options before they were the fields of its ``--sampler``.
SAMPLER_RENAMED = {f"--{key}": f"--sampler.{key}" for key in ("lr", "nbeta", "localization")}
#: Given without ``--lr``, those took LLCMonitor's default step size.
SAMPLER_IMPLIED = {
    "--nbeta": f"--sampler.lr={DEFAULT_LR}",
    "--localization": f"--sampler.lr={DEFAULT_LR}",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the line breaks of descriptions and epilogs kept."""


class CommandLine:
    """The parser of every subcommand, and the earlier spellings each accepts.

    Attributes:
        parser: the jsonargparse parser; the subcommand's name is in ``command``.
        spellings: subcommand -> its :class:`Spellings`.
    """

    def __init__(self) -> None:
        self.parser = ArgumentParser(
            prog="lightning-devinterp",
            formatter_class=HelpFormatter,
            description="Developmental interpretability of Lightning runs: LLCs over saved "
            "checkpoints, calibration, reports, and the demo.",
        )
        self.spellings: dict[str, Spellings] = {}
        commands = self.parser.add_subcommands(dest="command", required=True)
        for name, build, summary in (
            ("estimate", estimate_parser, "LLC and refined LLCs over saved checkpoints"),
            ("calibrate", calibrate_parser, "choose SGLD hyperparameters at a checkpoint"),
            ("report", report_parser, "figures and a markdown/HTML summary of a run"),
        ):
            parser, self.spellings[name] = build()
            commands.add_subcommand(name, parser, help=summary)
        demo = ArgumentParser(
            description="The demo (examples/induction_heads.py); `demo --help` lists its options."
        )
        commands.add_subcommand(
            "demo", demo, help="train a small transformer and watch its induction heads form"
        )

    def parse(self, argv: Sequence[str]) -> Namespace:
        """The options of ``argv``, class paths among them built; the subcommand's options are
        under its name. Exits with status 2 and the problem on a bad option.

        Raises:
            ValueError: a class refuses the arguments given (``--lr -1``: SGLD's message).
        """
        argv = list(argv)
        if argv and argv[0] in self.spellings:
            argv[1:] = self.spellings[argv[0]].rewrite(argv[1:])
        return self.parser.instantiate(self.parser.parse_args(argv))


def estimate_parser() -> tuple[ArgumentParser, Spellings]:
    """``estimate``: the checkpoints, the sources, ``--out`` and the options of
    :func:`estimate_checkpoints`."""
    spellings = Spellings(renamed={**RENAMED, **SAMPLER_RENAMED}, implied=SAMPLER_IMPLIED)
    parser = _signature_parser(
        ESTIMATE_DESCRIPTION,
        _estimate_own,
        estimate_checkpoints,
        spellings,
        passes_on=LLCMonitor,
        skip=ESTIMATE_SKIP,
    )
    parser.epilog = f"{SOURCE_HELP}\n{spellings.help()}\n{ESTIMATE_EXAMPLE}"
    return parser, spellings


def calibrate_parser() -> tuple[ArgumentParser, Spellings]:
    """``calibrate``: the checkpoint, the sources, ``--out``, ``--device`` and the options of
    :func:`calibrate`."""
    spellings = Spellings(renamed={"--unpaired": RENAMED["--unpaired"]})
    parser = _signature_parser(
        CALIBRATE_DESCRIPTION, _calibrate_own, calibrate, spellings, skip=CALIBRATE_SKIP
    )
    parser.epilog = f"{SOURCE_HELP}\n{spellings.help()}\n{CALIBRATE_EXAMPLE}"
    return parser, spellings


def report_parser() -> tuple[ArgumentParser, Spellings]:
    """``report``: the arguments of :func:`write_report` (``--out`` for ``--out_dir``)."""
    spellings = Spellings(renamed={"--out": "--out_dir"})
    parser = _signature_parser(
        REPORT_DESCRIPTION, lambda _: None, write_report, spellings, as_positional=True
    )
    parser.epilog = spellings.help()
    return parser, spellings


def _signature_parser(
    description: str,
    add_own: Callable[[ArgumentParser], None],
    function: Callable[..., Any],
    spellings: Spellings,
    passes_on: type | None = None,
    **signature: Any,
) -> ArgumentParser:
    """A subcommand's parser: its own arguments (``add_own``), then those jsonargparse builds
    from ``function``'s signature (``signature``: ``skip``, ``as_positional``) and the class it
    passes its ``**kwargs`` on to, recorded in ``spellings``."""
    parser = ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_own(parser)
    keys = parser.add_function_arguments(function, **signature)
    spellings.add(keys, function, *([passes_on] if passes_on else []))
    return parser


def _estimate_own(parser: ArgumentParser) -> None:
    parser.add_argument(
        "checkpoints", nargs="+", type=Path, help="a directory of *.ckpt files, or the files"
    )
    add_source_arguments(parser)
    parser.add_argument(
        "--out", type=Path | None, help="output folder (default <checkpoints>/devinterp)"
    )


def _calibrate_own(parser: ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", type=Path, help="a checkpoint, or a directory (its last one by step)"
    )
    add_source_arguments(parser)
    parser.add_argument("--out", type=Path | None, help="output folder (default <dir>/devinterp)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default auto)")


def add_source_arguments(parser: ArgumentParser) -> None:
    """Where the model, the data, the loss and the checkpoints' trust come from."""
    source = parser.add_argument_group("model and data")
    source.add_argument(
        "--config", type=Path | None, help="LightningCLI config with model:/data: (FILE)"
    )
    source.add_argument(
        "--model", type=str | None, help="LightningModule, e.g. mypkg.models.GPT (CLASS)"
    )
    source.add_argument("--datamodule", type=str | None, help="LightningDataModule class (CLASS)")
    source.add_argument(
        "--loss-fn",
        "--loss_fn",
        type=str | None,
        help="loss_fn(model, batch), e.g. mypkg.losses.lm_loss (FUNC)",
    )
    source.add_argument(
        "--unsafe-load",
        "--unsafe_load",
        action="store_true",
        help="unpickle checkpoints fully (runs code from the file: trusted files only)",
    )
