"""The lightning.pytorch.callbacks_factory entry point: monitors added to an unchanged
training script by an environment variable, and nothing without it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_devinterp import LLCMonitor
from lightning_devinterp.callbacks.factory import ENV_VAR, callbacks_from_env
from lightning_devinterp.reporting import read_jsonl

REPO = Path(__file__).resolve().parents[2]

MONITOR = """\
- class_path: lightning_devinterp.LLCMonitor
  init_args:
    sampler:
      class_path: lightning_devinterp.SGLD
      init_args: {lr: 1e-4, nbeta: 10}
    num_chains: 1
    num_draws: 3
    at_steps: [2, 4]
"""


def train_script(root: Path, config: Path | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env["OMP_NUM_THREADS"] = "1"
    if config is not None:
        env[ENV_VAR] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "tests.cli.train_script", str(root)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_variable_adds_the_monitor_to_an_unchanged_script(tmp_path):
    config = tmp_path / "monitors.yaml"
    config.write_text(MONITOR)
    done = train_script(tmp_path / "with", config)
    assert done.returncode == 0, done.stderr
    assert "trained to step 4" in done.stdout
    records = read_jsonl(tmp_path / "with" / "devinterp" / "llc.jsonl")
    assert [r["step"] for r in records] == [2, 4]
    assert records[0]["llc/nbeta"] == 10.0  # the nested SGLD of the file, "1e-4" read as a float
    done = train_script(tmp_path / "without", None)
    assert done.returncode == 0, done.stderr
    assert "trained to step 4" in done.stdout
    assert not list(tmp_path.joinpath("without").rglob("*.jsonl"))


def test_unset_or_empty_gives_no_callback(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert callbacks_from_env() == []
    monkeypatch.setenv(ENV_VAR, " ")
    assert callbacks_from_env() == []


def test_a_lightningcli_config_is_read_from_trainer_callbacks(tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    indented = "".join(f"    {line}\n" for line in MONITOR.splitlines())
    config.write_text(f"seed_everything: 0\ntrainer:\n  max_steps: 10\n  callbacks:\n{indented}")
    monkeypatch.setenv(ENV_VAR, str(config))
    (monitor,) = callbacks_from_env()
    assert isinstance(monitor, LLCMonitor)
    assert monitor.sampler.lr == 1e-4 and monitor.chains.num_draws == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("trainer: {max_steps: 3}", "lists no callbacks"),
        ("- [unclosed", "not valid YAML"),
        ("- class_path: lightning_devinterp.Nope", "Nope"),
        ("- class_path: lightning_devinterp.LLCMonitor\n  init_args: {num_draw: 3}", "num_draw"),
        (
            "- class_path: lightning_devinterp.LLCMonitor\n  init_args: {num_chains: 0}",
            "num_chains",
        ),
    ],
)
def test_a_bad_file_names_the_variable_the_file_and_the_problem(
    tmp_path, monkeypatch, content, message
):
    config = tmp_path / "monitors.yaml"
    if content is not None:
        config.write_text(content)
    monkeypatch.setenv(ENV_VAR, str(config))
    with pytest.raises(ValueError, match=message) as error:
        callbacks_from_env()
    assert str(error.value).startswith(f"{ENV_VAR}={config}: ")
