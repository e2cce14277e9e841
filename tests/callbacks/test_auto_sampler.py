"""LLCMonitor(sampler="auto"): calibrated once, frozen for the run, logged, and kept across a
resume; real Trainer runs on CPU."""

from __future__ import annotations

import math

import lightning as L
import pytest
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from lightning_devinterp import LLCMonitor
from lightning_devinterp.reporting import read_jsonl
from tests.helpers import RegressionModule, regression_data, trainer

#: A small calibration: three step sizes at one nbeta and localization, short chains.
CALIBRATION = dict(nbeta=10.0, localizations=[100.0], lrs=[1.0, 1e-2, 1e-3], num_draws=20)
SETTINGS = ("lr", "nbeta", "localization")


def module():
    """No RNG use in training, so a resumed run retraces the same weights."""
    m = RegressionModule(noisy=False)
    m.train_dataloader = lambda: DataLoader(regression_data(), batch_size=32)  # 8 steps/epoch
    return m


def fit(root, monitor, max_steps, ckpt_path=None, **kwargs):
    L.seed_everything(0, verbose=False)
    kwargs.setdefault("callbacks", [monitor])
    t = trainer(root, max_steps=max_steps, **kwargs)
    t.fit(module(), ckpt_path=ckpt_path)
    return t


def auto(**kwargs):
    return LLCMonitor(sampler="auto", num_chains=2, num_draws=10, calibration=CALIBRATION, **kwargs)


def settings(record):
    return tuple(record[f"llc/{key}"] for key in SETTINGS)


def test_calibrates_once_and_every_estimate_uses_the_choice(tmp_path):
    monitor = auto(every_n_steps=2)
    fit(tmp_path, monitor, 8, logger=CSVLogger(tmp_path))
    history = monitor.history
    assert [r["step"] for r in history] == [2, 4, 6, 8]
    calibrations = [r["llc/calibration"] for r in history if "llc/calibration" in r]
    assert len(calibrations) == 1 and calibrations[0]["step"] == 2
    chosen = calibrations[0]
    assert (chosen["lr"], chosen["nbeta"], chosen["localization"]) == settings(history[0])
    assert chosen["lr"] in CALIBRATION["lrs"] and chosen["lr"] != 1.0  # lr = 1 diverges
    assert {settings(r) for r in history} == {settings(history[0])}
    assert all(math.isfinite(r["llc/mean"]) for r in history)
    assert monitor.calibrated == chosen
    assert read_jsonl(monitor.jsonl_path) == history
    hparams = yaml.safe_load((tmp_path / "lightning_logs/version_0/hparams.yaml").read_text())
    assert hparams["llc/sgld/lr"] == chosen["lr"]
    assert hparams["llc/sgld/num_burnin"] == chosen["num_burnin"] >= 10


def test_a_resumed_run_keeps_the_calibration(tmp_path):
    """Trained to step 8 with a checkpoint, resumed to 16: no second calibration, the same
    settings and the same estimates as an uninterrupted run."""
    full = auto(every_n_steps=4)
    fit(tmp_path / "full", full, 16)

    first = auto(every_n_steps=4)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=8, save_top_k=-1)
    fit(tmp_path / "a", first, 8, callbacks=[first, ckpt], enable_checkpointing=True)
    resumed = auto(every_n_steps=4)
    fit(tmp_path / "b", resumed, 16, ckpt_path=str(next((tmp_path / "ck").glob("*.ckpt"))))

    assert resumed.calibrated == first.calibrated == full.calibrated
    assert [r["step"] for r in resumed.history] == [4, 8, 12, 16]
    assert sum("llc/calibration" in r for r in resumed.history) == 1  # step 4, restored
    assert {settings(r) for r in resumed.history} == {settings(full.history[0])}
    for a, b in zip(full.history, resumed.history, strict=True):
        assert a["llc/mean"] == pytest.approx(b["llc/mean"], rel=1e-6)


def test_calibration_waits_for_its_step(tmp_path):
    monitor = auto(every_n_steps=2, calibrate_at_step=5)
    fit(tmp_path, monitor, 10)
    assert [r["step"] for r in monitor.history] == [6, 8, 10]
    assert monitor.calibrated["step"] == 6
    assert "llc/calibration" in monitor.history[0]


def test_auto_sampler_from_a_lightning_cli_yaml(tmp_path):
    config = tmp_path / "auto.yaml"
    config.write_text(
        f"""
trainer:
  max_steps: 4
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  default_root_dir: {tmp_path}
  callbacks:
    - class_path: lightning_devinterp.LLCMonitor
      init_args:
        sampler: auto
        calibration: {{nbeta: 10.0, localizations: [100.0], lrs: [0.001, 0.0001], num_draws: 16}}
        calibrate_at_step: 2
        num_chains: 2
        num_draws: 5
        every_n_steps: 2
        milestones: false
"""
    )
    cli = LightningCLI(
        BoringModel,
        BoringDataModule,
        run=False,
        args=["--config", str(config)],
        save_config_callback=None,
    )
    [monitor] = [c for c in cli.trainer.callbacks if isinstance(c, LLCMonitor)]
    assert monitor.sampler == "auto" and monitor.calibrate_at_step == 2
    cli.trainer.fit(cli.model, cli.datamodule)
    assert [r["step"] for r in monitor.history] == [2, 4]
    assert monitor.calibrated["lr"] in (1e-3, 1e-4)


def test_without_a_healthy_setting_the_least_bad_is_kept_and_reported(tmp_path):
    """Every lr diverges: the calibration returns its least bad setting with a warning, and
    the estimates go on with it, flagged."""
    monitor = LLCMonitor(
        sampler="auto",
        num_chains=2,
        num_draws=10,
        every_n_steps=3,
        calibration=dict(nbeta=10.0, localizations=[100.0], lrs=[10.0, 1.0], num_draws=16),
    )
    with pytest.warns(UserWarning, match="No setting gave healthy chains"):
        fit(tmp_path, monitor, 3)
    assert monitor.calibrated is not None and not monitor.calibrated["healthy"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(sampler="manual"), "sampler='manual' is invalid"),
        (dict(calibration={"nbeta": 10.0}), "apply to sampler='auto' only"),
        (
            dict(sampler="auto", calibration={"seed": 1}),
            r"Unknown calibration option\(s\) \['seed'\]",
        ),
        (dict(sampler="auto", calibration={"lrs": []}), r"lrs=\[\] is invalid"),
        (dict(sampler="auto", calibration={"num_draws": 4}), "16 draws"),
        (dict(sampler="auto", calibrate_at_step=-1), "calibrate_at_step=-1 is invalid"),
    ],
)
def test_bad_auto_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LLCMonitor(**kwargs)
