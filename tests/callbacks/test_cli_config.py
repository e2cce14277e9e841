"""The monitors configured from a LightningCLI YAML file, with no code."""

from __future__ import annotations

import math

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel

from lightning_devinterp import SGLD, LLCMonitor

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
    cli.trainer.fit(cli.model, cli.datamodule)
    assert [r["step"] for r in monitor.history] == [2, 4]
    assert all(math.isfinite(r["llc/mean"]) for r in monitor.history)
