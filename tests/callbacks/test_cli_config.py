"""The monitors configured from a LightningCLI YAML file, with no code."""

from __future__ import annotations

import math
from pathlib import Path

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

from lightning_devinterp import (
    SGLD,
    EssentialDynamics,
    LLCMonitor,
    SusceptibilityMonitor,
)
from lightning_devinterp.demos import InductionDataModule, InductionLM

CONFIG = """
trainer:
  max_steps: 4
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  default_root_dir: {root}
  callbacks:
    - class_path: lightning_devinterp.LLCMonitor
      init_args:
        sampler:
          class_path: lightning_devinterp.SGLD
          init_args: {{lr: 0.0001, nbeta: 10.0, localization: 100.0}}
        num_chains: 2
        num_draws: 5
        every_n_steps: 2
        extra_estimates: 3
        milestones: false
"""


def test_llc_monitor_from_a_lightning_cli_yaml(tmp_path):
    config = tmp_path / "devinterp.yaml"
    config.write_text(CONFIG.format(root=tmp_path))
    cli = LightningCLI(
        BoringModel,
        BoringDataModule,
        run=False,
        args=["--config", str(config)],
        save_config_callback=None,
    )
    [monitor] = [c for c in cli.trainer.callbacks if isinstance(c, LLCMonitor)]
    assert monitor.sampler == SGLD(lr=1e-4, nbeta=10.0, localization=100.0)
    assert monitor.detectors == []
    assert monitor.cadence.loss_bends.max_extra == 3
    cli.trainer.fit(cli.model, cli.datamodule)
    assert [(r["step"], r["llc/why"]) for r in monitor.history] == [
        (2, "scheduled"),
        (4, "scheduled"),
    ]
    assert all(math.isfinite(r["llc/mean"]) for r in monitor.history)


def test_the_example_config_trains_the_demo_model_with_all_three_monitors(tmp_path):
    """examples/config.yaml as shipped (LLCMonitor with heads, SusceptibilityMonitor with
    TypedDataLoader probes, EssentialDynamics with the first training batch as its probe),
    shortened from the command line."""
    config = Path(__file__).parents[2] / "examples" / "config.yaml"
    short = [
        "--trainer.max_steps=12",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        "--trainer.val_check_interval=6",
        "--data.size=256",
    ]
    cli = LightningCLI(
        InductionLM,
        InductionDataModule,
        run=False,
        args=["--config", str(config), *short],
        save_config_callback=None,
    )
    llc, susceptibility, dynamics = cli.trainer.callbacks[:3]
    assert isinstance(llc, LLCMonitor) and llc.components == "heads"
    assert isinstance(susceptibility, SusceptibilityMonitor)
    assert set(susceptibility.probes) == {"copies", "bigrams"}
    assert isinstance(dynamics, EssentialDynamics) and dynamics.probe is None
    for monitor in (llc, susceptibility):
        monitor.chains = monitor.chains.replace(num_draws=3, num_burnin=2)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert llc.history and "rllc/l1h3/mean" in llc.history[-1]
    assert susceptibility.last_result is not None
    assert susceptibility.last_result.response.shape == (2, 8)
    assert dynamics.probe.shape == (32, 32) and dynamics.steps
