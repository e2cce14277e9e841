"""SusceptibilityMonitor in real Trainer runs: records, files, TensorBoard and W&B read back."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_devinterp import SGLD, LLCMonitor, MilestoneDetector, SusceptibilityMonitor
from lightning_devinterp.callbacks.scheduled import ScheduledAnalysis
from lightning_devinterp.demos import AttentionOnlyTransformer, InductionData, token_loss
from tests.helpers import trainer
from tests.reporting.test_wandb import finished_run_records, history_rows

FAST = dict(
    sampler=SGLD(lr=1e-4, nbeta=10.0, localization=100.0),
    num_chains=2,
    num_draws=8,
    init_loss_batches=1,
)


class TinyLM(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = AttentionOnlyTransformer(16, d_model=16, n_heads=2, n_layers=2, context=16)

    def training_step(self, batch, batch_idx):
        return token_loss(self.model, batch).mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def loader(repeat_prob: float, seed: int, shuffle: bool = True) -> DataLoader:
    data = InductionData(size=64, length=16, vocab_size=16, repeat_prob=repeat_prob, seed=seed)
    return DataLoader(data, batch_size=16, shuffle=shuffle, collate_fn=InductionData.collate)


def probes() -> dict[str, DataLoader]:
    return {"repeats": loader(1.0, 1, False), "bigrams": loader(0.0, 2, False)}


def per_token_loss(model, batch):
    return token_loss(model.model, batch)


def fit(tmp_path, callbacks, **kwargs) -> TinyLM:
    L.seed_everything(0, verbose=False)
    module = TinyLM()
    trainer(tmp_path, callbacks=callbacks, max_steps=4, **kwargs).fit(module, loader(0.5, 0))
    return module


def test_records_files_and_tensorboard(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monitor = SusceptibilityMonitor(
        probes(), at_steps=[2, 4], loss_fn=per_token_loss, top_k=3, **FAST
    )
    logger = TensorBoardLogger(tmp_path, name="tb")
    fit(tmp_path, [monitor], logger=logger)

    assert [r["step"] for r in monitor.history] == [2, 4]
    record = monitor.history[-1]
    assert record["susceptibility/probes"] == ["repeats", "bigrams"]
    assert record["susceptibility/components"] == ["l0h0", "l0h1", "l1h0", "l1h1"]
    response = np.array(record["susceptibility/response"])
    assert response.shape == (2, 4) and np.isfinite(response).all()
    assert record["susceptibility/repeats/l1h0/mean"] == pytest.approx(response[0, 2])
    assert len(record["susceptibility/top_tokens"]["repeats"]["l0h1"]) == 3
    assert "susceptibility/rllc/l0h0/mean" in record

    lines = [json.loads(line) for line in monitor.jsonl_path.read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4]
    folder = monitor.jsonl_path.with_name("susceptibility")
    saved = np.load(folder / "step-4.npz")
    assert saved["response"] == pytest.approx(response)
    assert saved["per_token/repeats"].shape == (16 * 15, 4)  # one batch of 16 x 15 tokens
    assert list(saved["components"]) == record["susceptibility/components"]
    assert (folder / "response-step-4.png").stat().st_size > 0

    events = EventAccumulator(
        logger.log_dir, size_guidance={"scalars": 0, "images": 0, "tensors": 0}
    )
    events.Reload()
    chi = events.Scalars("susceptibility/repeats/l1h0/mean")
    assert [e.step for e in chi] == [2, 4]
    assert chi[-1].value == pytest.approx(response[0, 2], rel=1e-5)
    assert [e.step for e in events.Scalars("susceptibility/sv/0")] == [2, 4]
    assert [e.step for e in events.Images("susceptibility/response")] == [2, 4]
    assert "susceptibility/top_tokens/text_summary" in events.Tags()["tensors"]


def test_training_is_untouched(tmp_path):
    plain = fit(tmp_path / "plain", [])
    monitored = fit(
        tmp_path / "monitored",
        [SusceptibilityMonitor(probes(), at_steps=[2], loss_fn=per_token_loss, **FAST)],
    )
    for a, b in zip(plain.parameters(), monitored.parameters(), strict=True):
        assert torch.equal(a, b)


def test_offline_wandb_run_gets_tables_and_scalars(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monitor = SusceptibilityMonitor(probes(), at_steps=[4], loss_fn=per_token_loss, **FAST)
    logger = WandbLogger(project="devinterp-test", save_dir=str(tmp_path), offline=True)
    fit(tmp_path, [monitor], logger=logger)
    import wandb

    wandb.finish()
    rows = history_rows(finished_run_records(tmp_path))
    keys = {key for row in rows for key in row}
    assert "susceptibility/bigrams/l0h0/mean" in keys
    assert any(key.startswith("susceptibility/response_table") for key in keys)
    assert any(key.startswith("susceptibility/top_tokens") for key in keys)
    assert any(key.startswith("susceptibility/response") and "table" not in key for key in keys)


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="probes must be"):
        SusceptibilityMonitor({})
    with pytest.raises(ValueError, match="probe name"):
        SusceptibilityMonitor({"my probe": []})
    with pytest.raises(ValueError, match="num_probe_batches"):
        SusceptibilityMonitor({"p": []}, num_probe_batches=0)
    with pytest.raises(TypeError, match="LLCMonitor beside it"):
        SusceptibilityMonitor({"p": []}, milestones=MilestoneDetector("llc"))
    with pytest.raises(TypeError, match="LLCMonitor beside it"):
        SusceptibilityMonitor({"p": []}, data={"code": []})
    assert isinstance(SusceptibilityMonitor({"p": []}), ScheduledAnalysis)
    assert not isinstance(SusceptibilityMonitor({"p": []}), LLCMonitor)
