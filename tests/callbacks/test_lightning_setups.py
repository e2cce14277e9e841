"""Training setups a user already has: manual optimization, a training_step that reads the
trainer, true-precision plugins, steps that jump, two monitors, two runs in one folder, a
Hugging Face model."""

from __future__ import annotations

import subprocess
import sys

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_devinterp import SGLD, LLCMonitor
from lightning_devinterp.reporting import read_jsonl
from tests.helpers import RegressionModule, mse_loss, trainer

FAST = dict(sampler=SGLD(lr=1e-4, nbeta=10.0, localization=100.0), num_chains=2, num_draws=8)


class TwoOptimizers(RegressionModule):
    """Manual optimization: two optimizers, each stepping once per batch (global_step += 2)."""

    def __init__(self) -> None:
        super().__init__(noisy=False)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        first, second = self.optimizers()
        for optimizer in (first, second):
            loss = nn.functional.mse_loss(self(x), y)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        self.losses.append(loss.item())

    def configure_optimizers(self):
        head, body = list(self.net[-1].parameters()), list(self.net[:-1].parameters())
        return torch.optim.SGD(body, lr=0.01), torch.optim.SGD(head, lr=0.01)


class ReadsTheTrainer(RegressionModule):
    """A training_step that logs the learning rate it reads from ``self.trainer``."""

    def training_step(self, batch, batch_idx):
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        self.log("seen", float(self.trainer.global_step))
        return super().training_step(batch, batch_idx)


class PlainSGD(RegressionModule):
    """No dropout, plain SGD (Adam's eps underflows in float16 and its training turns NaN)."""

    def __init__(self) -> None:
        super().__init__(noisy=False)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(tmp_path, module_class, callbacks, **kwargs):
    L.seed_everything(0, verbose=False)
    module = module_class()
    t = trainer(tmp_path, callbacks=callbacks, **kwargs)
    t.fit(module)
    return t, module


def assert_same_training(m0: nn.Module, m1: nn.Module) -> None:
    assert m0.losses == m1.losses
    for (k0, v0), (k1, v1) in zip(m0.state_dict().items(), m1.state_dict().items(), strict=True):
        assert k0 == k1 and torch.equal(v0, v1), k0


def test_manual_optimization_without_loss_fn_is_refused_naming_loss_fn(tmp_path):
    with pytest.raises(ValueError, match="automatic_optimization=False.*loss_fn="):
        fit(tmp_path, TwoOptimizers, [LLCMonitor(every_n_steps=2, **FAST)])


def test_steps_that_jump_lose_no_scheduled_estimate_and_training_is_unchanged(tmp_path):
    """With two optimizers global_step moves by 2 a batch: each scheduled step is taken at the
    first step at or after it, and the record names the step asked for."""
    _, plain = fit(tmp_path / "plain", TwoOptimizers, [], max_steps=24)
    monitor = LLCMonitor(num_estimates=6, loss_fn=mse_loss, **FAST)
    _, watched = fit(tmp_path / "watched", TwoOptimizers, [monitor], max_steps=24)
    assert_same_training(plain, watched)
    asked = sorted(monitor.schedule._steps)
    assert len(asked) == 6 and any(step % 2 for step in asked)
    taken = {}  # the step each asked step is taken at -> the first step asked there
    for step in asked:
        taken.setdefault(step + step % 2, step)
    assert [r["step"] for r in monitor.history] == list(taken)
    for record in monitor.history:
        assert record.get("llc/deferred_from", record["step"]) == taken[record["step"]]
    assert not monitor.errors


def test_a_training_step_that_reads_the_trainer_is_sampled_without_touching_training(tmp_path):
    _, plain = fit(tmp_path / "plain", ReadsTheTrainer, [], max_steps=6)
    monitor = LLCMonitor(every_n_steps=3, **FAST)
    t, watched = fit(tmp_path / "watched", ReadsTheTrainer, [monitor], max_steps=6)
    assert_same_training(plain, watched)
    assert [r["step"] for r in monitor.history] == [3, 6] and not monitor.errors
    assert "lr" in t.callback_metrics and "llc/mean" in t.callback_metrics


@pytest.mark.parametrize("precision", ["64-true", "bf16-true", "16-true"])
def test_true_precision_plugins_convert_the_sampled_batches(tmp_path, precision):
    monitor = LLCMonitor(every_n_steps=3, on_error="raise", **FAST)
    fit(tmp_path, PlainSGD, [monitor], precision=precision)
    assert [r["step"] for r in monitor.history] == [3, 6]
    assert all(torch.isfinite(torch.tensor(r["llc/init_loss"])) for r in monitor.history)


def test_two_monitors_with_one_name_get_an_error_naming_name(tmp_path):
    monitors = [LLCMonitor(every_n_steps=3, **FAST), LLCMonitor(every_n_steps=2, **FAST)]
    with pytest.raises(ValueError, match=r"Two LLCMonitor callbacks have name='llc'.*name="):
        fit(tmp_path, RegressionModule, monitors)
    named = [LLCMonitor(every_n_steps=3, **FAST), LLCMonitor(every_n_steps=2, name="b", **FAST)]
    fit(tmp_path / "named", RegressionModule, named)
    assert [len(m.history) for m in named] == [2, 3]


HOLD_THE_FILE = """
import sys
from lightning_devinterp.reporting.jsonl import JsonlWriter
writer = JsonlWriter(sys.argv[1])
writer.claim()
print("held", flush=True)
sys.stdin.read()
"""


def test_a_second_run_writing_the_same_folder_is_refused_naming_the_fix(tmp_path):
    path = tmp_path / "devinterp" / "llc.jsonl"
    other = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_FILE, str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=rf"another training run \(process {other.pid}\)"):
            fit(tmp_path, RegressionModule, [LLCMonitor(every_n_steps=3, **FAST)])
        assert not path.exists()
    finally:
        other.communicate("")
    monitor = LLCMonitor(every_n_steps=3, **FAST)
    fit(tmp_path, RegressionModule, [monitor])
    assert len(read_jsonl(path)) == len(monitor.history) == 2


class FailsAtStep4(RegressionModule):
    def training_step(self, batch, batch_idx):
        if self.global_step == 4:
            raise RuntimeError("the user's bug")
        return super().training_step(batch, batch_idx)


def test_a_failed_run_lets_the_next_run_write_its_folder(tmp_path):
    failed = LLCMonitor(every_n_steps=3, **FAST)
    with pytest.raises(RuntimeError, match="the user's bug"):
        fit(tmp_path, FailsAtStep4, [failed])
    assert [r["step"] for r in failed.history] == [3]
    monitor = LLCMonitor(every_n_steps=3, **FAST)
    fit(tmp_path, RegressionModule, [monitor])
    assert [r["step"] for r in read_jsonl(tmp_path / "devinterp" / "llc.jsonl")] == [3, 6]


class TinyGPT2(L.LightningModule):
    """A Hugging Face GPT-2 (2 layers, 2 heads) trained on dict batches; the loss is the
    model's own output."""

    def __init__(self) -> None:
        super().__init__()
        transformers = pytest.importorskip("transformers")
        config = transformers.GPT2Config(
            vocab_size=16, n_positions=16, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0,
        )  # fmt: skip
        self.model = transformers.GPT2LMHeadModel(config)

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def token_batches() -> DataLoader:
    tokens = torch.randint(0, 16, (64, 12), generator=torch.Generator().manual_seed(0))
    rows = [{"input_ids": row, "labels": row} for row in tokens]
    return DataLoader(rows, batch_size=16)


def test_a_transformers_model_is_sampled_through_its_training_step_with_heads(tmp_path):
    monitor = LLCMonitor(every_n_steps=3, components="heads", on_error="raise", **FAST)
    L.seed_everything(0, verbose=False)
    trainer(tmp_path, callbacks=[monitor]).fit(TinyGPT2(), token_batches())
    record = monitor.history[-1]
    heads = sorted(k.split("/")[1] for k in record if k.startswith("rllc/") and k.endswith("mean"))
    assert len(monitor.history) == 2 and len(heads) == 4
    assert all(torch.isfinite(torch.tensor(record[f"rllc/{h}/mean"])) for h in heads)
