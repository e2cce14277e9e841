"""The ``lightning-devinterp`` command line.

Subcommands:

- ``estimate``: LLC (and per-head refined LLCs) over a directory of saved Lightning
  checkpoints, with the callback's outputs (JSON-lines, ``milestones.json``) and a report.
- ``calibrate``: SGLD hyperparameters chosen by the health of short chains at a checkpoint.
- ``report``: figures and a markdown/HTML summary from a run's JSON-lines file.
- ``demo``: the induction-heads demo, with its own options.

Each subcommand's options are the arguments of the function it calls, built by jsonargparse
from its signature (:mod:`lightning_devinterp.cli.parser`). Run ``lightning-devinterp
<subcommand> --help`` for them. Class paths (``--model pkg.module.Class``) are imported with
the current directory on the path.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from lightning_devinterp.cli.commands import run_calibrate, run_demo, run_estimate, run_report
from lightning_devinterp.cli.parser import CommandLine

__all__ = ["CommandLine", "main"]

#: The subcommands that the parser reads, and what runs them.
RUNNERS = {"estimate": run_estimate, "calibrate": run_calibrate, "report": run_report}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-devinterp``; returns the exit status (2 for a bad option or
    input, with one line naming it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # class paths import from here, as with python -m
    command_line = CommandLine()
    command = argv[0] if argv else None
    try:
        if command == "demo":
            return run_demo(argv[1:])
        options = command_line.parse(argv)
        command = options.command
        RUNNERS[command](options[command])
    except (ValueError, FileNotFoundError, ImportError) as error:
        command_line.parser.exit(2, f"lightning-devinterp {command}: error: {error}\n")
    return 0
