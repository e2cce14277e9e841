"""The command line's options are the keyword arguments of the functions its subcommands call
(their names, defaults and help), and its earlier spellings parse as the current ones. Parsing
only: no checkpoint is read."""

from __future__ import annotations

import inspect

import pytest

from lightning_devinterp import SGLD
from lightning_devinterp.callbacks.checkpoints import estimate_checkpoints
from lightning_devinterp.cli import CommandLine
from lightning_devinterp.cli.parser import CALIBRATE_SKIP, SOURCE_KEYS
from lightning_devinterp.cli.spellings import Spellings
from lightning_devinterp.estimators import calibrate, estimate_llc
from lightning_devinterp.reporting.summary import write_report


@pytest.fixture(scope="module")
def command_line():
    return CommandLine()


def parsed(command_line: CommandLine, *argv: str) -> dict:
    options = command_line.parse(list(argv))
    return vars(options[options.command])


def keyword_defaults(function, skip=()) -> dict:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if name not in skip and parameter.kind is not parameter.VAR_KEYWORD
    }


def test_calibrate_offers_the_keyword_arguments_of_calibrate_with_their_defaults(command_line):
    options = parsed(command_line, "calibrate", "ckpts")
    own = {"checkpoint", "out", "device", *SOURCE_KEYS}
    expected = keyword_defaults(calibrate, CALIBRATE_SKIP)
    assert options.keys() - own == expected.keys()
    for name, default in expected.items():
        assert options[name] == (list(default) if isinstance(default, tuple) else default), name


def test_estimate_offers_the_sampling_arguments_and_those_of_the_monitor(command_line):
    options = parsed(command_line, "estimate", "ckpts")
    sampling = keyword_defaults(
        estimate_llc, {"model", "dataloader", "loss_fn", "sampler", "component", "transfer"}
    )
    del sampling["progress"]
    assert {name: options[name] for name in sampling} == sampling
    assert options["accelerator"] == keyword_defaults(estimate_checkpoints)["accelerator"]
    assert options["sampler"] is None  # LLCMonitor's default, which it announces
    assert (options["components"], options["milestones"], options["name"]) == (None, True, "llc")


def test_report_offers_the_arguments_of_write_report(command_line):
    assert parsed(command_line, "report", "run") == {"source": "run", "out_dir": None}
    assert keyword_defaults(write_report).keys() == {"source", "out_dir"}


def test_help_comes_from_the_docstrings(command_line, capsys):
    with pytest.raises(SystemExit) as exit_:
        command_line.parse(["calibrate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert exit_.value.code == 0
    assert "relative difference up to which the estimates at neighbouring" in out  # tolerance
    assert "default: 1800" in out and "--min_acceptance" in out


@pytest.mark.parametrize(
    ("earlier", "current"),
    [
        (
            ["estimate", "c", "--num-chains", "2", "--num-draws=4", "--mala", "--unpaired"],
            ["estimate", "c", "--num_chains", "2", "--num_draws", "4", "--mala", "true"]
            + ["--paired", "false"],
        ),
        (
            ["estimate", "c", "--lr", "1e-4", "--nbeta", "10", "--no-milestones", "--train-mode"],
            ["estimate", "c", "--sampler", "{lr: 1e-4, nbeta: 10}", "--milestones", "false"]
            + ["--train_mode=true"],
        ),
        (
            ["estimate", "c", "d", "--nbeta", "10", "--localization", "100"],
            ["estimate", "c", "d", "--sampler.lr", "1e-3", "--sampler.nbeta", "10"]
            + ["--sampler.localization", "100"],
        ),
        (
            ["calibrate", "c", "--lrs", "3e-3", "1e-3", "--localizations", "100", "--full-sweep"],
            ["calibrate", "c", "--lrs", "[3e-3, 1e-3]", "--localizations=[100]"]
            + ["--full_sweep", "true"],
        ),
        (
            ["calibrate", "--max-steps", "50", "--loss-fn", "m.f", "--unsafe-load", "c"],
            ["calibrate", "c", "--max_steps", "50", "--loss_fn", "m.f", "--unsafe_load"],
        ),
        (["report", "run", "--out", "there"], ["report", "run", "--out_dir", "there"]),
    ],
)
def test_earlier_spellings_parse_as_the_current_ones(command_line, earlier, current):
    assert parsed(command_line, *earlier) == parsed(command_line, *current)


def test_the_sampler_is_an_sgld_auto_or_none(command_line):
    sampler = parsed(command_line, "estimate", "c", "--nbeta", "10")["sampler"]
    assert sampler == SGLD(lr=1e-3, nbeta=10.0)  # the step size LLCMonitor would use
    assert parsed(command_line, "estimate", "c", "--sampler", "auto")["sampler"] == "auto"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["estimate", "c", "--num-chains", "two"], "num_chains"),
        (["estimate", "c", "--lr", "-1"], "SGLD lr=-1.0 is invalid; use a positive step"),
        (["calibrate", "c", "--nope"], "unrecognized arguments: --nope"),
        (["estimate"], "checkpoints"),
    ],
)
def test_a_bad_option_exits_with_status_2_and_names_it(command_line, capsys, argv, message):
    with pytest.raises((SystemExit, ValueError)) as error:
        command_line.parse(argv)
    text = capsys.readouterr().err + str(error.value)
    assert message in text
    if error.type is SystemExit:
        assert error.value.code == 2


def test_a_negative_number_is_a_value_of_a_list():
    spellings = Spellings(lists={"lrs"})
    rewritten = spellings.rewrite(["--lrs", "-1", "2", "--seed", "3", "--", "--lrs"])
    assert rewritten == ["--lrs=[-1,2]", "--seed", "3", "--", "--lrs"]
