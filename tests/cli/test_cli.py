"""The lightning-devinterp command line on real checkpoints of a short training run that also
had an LLCMonitor: the command reproduces the callback's records. ``estimate`` and ``report``
run as subprocesses; variants and errors call ``main`` in this process (an import of torch
and Lightning per subprocess costs seconds)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

from lightning_devinterp import SGLD, LLCMonitor
from lightning_devinterp.cli import main
from lightning_devinterp.reporting import read_jsonl
from tests.cli.tiny import Trap, train
from tests.reporting.test_summary import planted_run

REPO = Path(__file__).resolve().parents[2]
SAMPLING = ["--num-chains", "2", "--num-draws", "4", "--lr", "1e-4", "--nbeta", "10"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Checkpoints at steps 2, 4, 6 (and last.ckpt, a twin of step 6), and the JSON-lines
    records an LLCMonitor of the same settings wrote live."""
    folder = tmp_path_factory.mktemp("run")
    monitor = LLCMonitor(
        SGLD(lr=1e-4, nbeta=10), num_chains=2, num_draws=4, at_steps=[2, 4, 6], components="heads"
    )
    checkpoints = train(folder, [monitor])
    return checkpoints, read_jsonl(monitor.jsonl_path)


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lightning_devinterp.cli", *map(str, args)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def in_process(capsys, *args) -> tuple[int, str, str]:
    """``main(args)``: the exit status, stdout and stderr."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


#: Wall-clock measurements, which no two runs share.
TIMINGS = ("/seconds", "/health/data_share")


def test_estimate_over_checkpoints_reproduces_the_callback_records(run, tmp_path):
    checkpoints, live = run
    model = "tests.cli.tiny.TinyTransformer"
    heads = ["--components", "heads"]
    done = cli("estimate", checkpoints, "--model", model, *heads, *SAMPLING, "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    records = read_jsonl(tmp_path / "llc.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6]  # sorted by step, last.ckpt skipped
    for offline, online in zip(records, live, strict=True):
        assert offline.keys() == online.keys()
        assert "rllc/l1h1/mean" in offline
        for key, value in online.items():
            if key.endswith("/stage_view"):  # the live one also has the training loss's trend
                assert offline[key].split(";")[0] == value.split(";")[0], key
            elif not key.endswith(TIMINGS):
                assert offline[key] == value, key
    milestones = json.loads((tmp_path / "milestones.json").read_text())
    assert [s["start"] for s in milestones["stages"]["llc"]] == [2]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| rllc/l1h1 |" in report and "Stages of `llc`" in report
    assert len(list((tmp_path / "report").glob("*.png"))) == 3
    assert "3 checkpoints estimated, 0 failed" in done.stdout


def test_estimate_from_a_lightningcli_config_with_a_datamodule(run, tmp_path, capsys):
    checkpoints, live = run
    config = tmp_path / "config.yaml"
    config.write_text(
        "seed_everything: 0\n"
        "trainer: {max_steps: 6}\n"
        "model:\n  class_path: tests.cli.tiny.TinyTransformer\n  init_args: {lr: 5e-2}\n"
        "data:\n  class_path: tests.cli.tiny.TinyTokens\n  init_args: {batch_size: 16}\n"
    )
    files = [checkpoints / "epoch=1-step=6.ckpt", checkpoints / "epoch=0-step=4.ckpt"]
    code, _, err = in_process(capsys, "estimate", *files, "--config", config, *SAMPLING)
    assert code == 0, err
    records = read_jsonl(checkpoints / "devinterp" / "llc.jsonl")  # default folder
    assert [r["step"] for r in records] == [4, 6]
    assert [r["llc/mean"] for r in records] == [r["llc/mean"] for r in live[1:]]
    assert not any(key.startswith("rllc/") for key in records[0])


def test_a_checkpoint_with_pickled_code_is_refused_without_the_flag(run, tmp_path, capsys):
    checkpoints, _ = run
    marker = tmp_path / "code-ran"
    checkpoint = torch.load(checkpoints / "epoch=0-step=2.ckpt", weights_only=True)
    checkpoint["extra"] = Trap(marker)
    (tmp_path / "ckpts").mkdir()
    torch.save(checkpoint, tmp_path / "ckpts" / "unsafe.ckpt")
    model = ["--model", "tests.cli.tiny.TinyTransformer"]
    quick = ["--num-chains", "1", "--num-draws", "2", "--no-milestones"]
    args = ["estimate", tmp_path / "ckpts", *model, *quick, "--out", tmp_path / "out"]
    code, _, err = in_process(capsys, *args)
    assert code == 2
    assert "unsafe.ckpt holds objects that safe loading" in err and "--unsafe-load" in err
    assert not marker.exists() and not (tmp_path / "out").exists()
    code, _, err = in_process(capsys, *args, "--unsafe-load")
    assert code == 0, err
    assert marker.exists()  # what --unsafe-load allows: the file ran code
    assert [r["step"] for r in read_jsonl(tmp_path / "out" / "llc.jsonl")] == [2]


def test_calibrate_at_the_last_checkpoint_writes_its_table_and_the_flags_to_use(
    run, tmp_path, capsys
):
    checkpoints, _ = run
    grid = ["--lrs", "3e-3", "1e-3", "3e-4", "--localizations", "100", "--nbeta", "10"]
    chains = ["--num-chains", "2", "--num-draws", "16"]
    model = ["--model", "tests.cli.tiny.TinyTransformer"]
    code, out, err = in_process(
        capsys, "calibrate", checkpoints, *model, *grid, *chains, "--out", tmp_path
    )
    assert code == 0, err
    result = json.loads((tmp_path / "calibration.json").read_text())
    assert result["step"] == 6 and result["checkpoint"].endswith("epoch=1-step=6.ckpt")
    table = result["table"]
    assert len(table) == result["recommended"]["settings_tried"] >= 1
    assert {r["lr"] for r in table} <= {3e-3, 1e-3, 3e-4}
    assert {(r["nbeta"], r["localization"]) for r in table} == {(10.0, 100.0)}
    (chosen,) = [r for r in table if r["chosen"]]
    assert chosen["lr"] == result["recommended"]["lr"]
    assert f"--lr {chosen['lr']:.3g} --nbeta 10 --localization 100" in out
    assert (tmp_path / "calibration_llc.png").stat().st_size > 0


def test_report_writes_markdown_html_and_figures_with_the_stages(tmp_path):
    _, detector, _ = planted_run(tmp_path / "run")
    done = cli("report", tmp_path / "run", "--out", tmp_path / "report")
    assert done.returncode == 0, done.stderr
    markdown = (tmp_path / "report" / "report.md").read_text()
    page = (tmp_path / "report" / "report.html").read_text()
    for stage in detector.stages:
        assert f"| {stage.index} | {stage.start} |" in markdown
        assert f"<td>{stage.trend}</td>" in page
    pngs = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert pngs == ["llc_curve.png", "llc_loss.png", "llc_rllc.png"]
    assert all(f'src="{name}"' in page for name in pngs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing-folder"], "missing-folder does not exist"),
        (["{empty}"], r"No checkpoint \(\*\.ckpt\)"),
        (["{junk}"], "text.ckpt cannot be read as a checkpoint"),
        (["{ckpts}"], "No model: pass --model"),
        (["{ckpts}", "--model", "tests.cli.tiny.Nope"], "tests.cli.tiny.Nope"),
        (["{ckpts}", "--config", "{bad_config}"], "has no model: or data: section"),
        (["{ckpts}", "--config", "{empty}/config.yaml"], "--config: no such file: .*config.yaml"),
        (["{ckpts}", "--config", "{not_yaml}"], "--config: .*not.yaml is not valid YAML"),
        (
            ["{ckpts}", "--model", "tests.cli.tiny.TinyTransformer", "--loss-fn", "x.y"],
            "--loss-fn x.y",
        ),
    ],
)
def test_bad_inputs_exit_with_a_clear_message(run, tmp_path, capsys, args, message):
    checkpoints, _ = run
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "text.ckpt").write_text("not a checkpoint")
    (tmp_path / "bad.yaml").write_text("trainer: {max_steps: 3}\n")
    (tmp_path / "not.yaml").write_text("model: [unclosed\n")
    names = {
        "empty": tmp_path / "empty",
        "junk": tmp_path / "junk",
        "ckpts": checkpoints,
        "bad_config": tmp_path / "bad.yaml",
        "not_yaml": tmp_path / "not.yaml",
    }
    argv = [str(a).format(**names) for a in args]
    code, _, err = in_process(capsys, "estimate", *argv, "--out", tmp_path / "out")
    assert code == 2 and re.search(message, err)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("estimate", ["--unsafe-load", "weights_only=True", "--config", "--components"]),
        ("calibrate", ["checkpoint", "--lrs", "--max-steps", "--unsafe-load", "--config"]),
        ("report", ["source", "--out"]),
        ("demo", ["--steps", "--logger", "--no-heads", "--no-susceptibilities", "copying"]),
    ],
)
def test_help_of_each_subcommand(command, expected, capsys):
    code, out, _ = in_process(capsys, command, "--help")
    assert code == 0 and all(word in out for word in expected)


def test_the_console_script_and_the_factory_are_registered():
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts["lightning-devinterp"] == "lightning_devinterp.cli:main"
    factories = [e.value for e in entry_points(group="lightning.pytorch.callbacks_factory")]
    assert "lightning_devinterp.callbacks.factory:callbacks_from_env" in factories
