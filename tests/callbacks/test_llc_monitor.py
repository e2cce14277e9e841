"""LLCMonitor in real Trainer runs on CPU."""

from __future__ import annotations

import json
import logging
import math
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from lightning_devinterp import SGLD, Component, LLCMonitor
from lightning_devinterp.callbacks.schedule import Schedule
from lightning_devinterp.milestones import MilestoneDetector
from lightning_devinterp.reporting import read_jsonl, series_keys
from tests.helpers import (
    AnnouncesAt,
    AnnouncesAtFinish,
    RegressionModule,
    mse_loss,
    regression_data,
    trainer,
)

FAST = dict(sampler=SGLD(lr=1e-4, nbeta=10.0, localization=100.0), num_chains=2, num_draws=10)


def fit(tmp_path, monitor=None, seed=0, module=RegressionModule, **trainer_kwargs):
    """Seed, build the module from its factory, fit."""
    L.seed_everything(seed, verbose=False)
    module = module()
    trainer_kwargs.setdefault("callbacks", [monitor] if monitor else [])
    t = trainer(tmp_path, **trainer_kwargs)
    t.fit(module)
    return t, module


def test_training_is_bit_identical_with_and_without_the_monitor(tmp_path):
    """Dropout, BatchNorm, a shuffling loader and numpy/random in training_step: the monitor
    must leave weights, buffers, optimizer state and the logged losses exactly as they were."""
    plain, m0 = fit(tmp_path / "plain", max_steps=10)
    monitor = LLCMonitor(every_n_steps=3, **FAST)
    watched, m1 = fit(tmp_path / "watched", monitor, max_steps=10)
    assert [r["step"] for r in monitor.history] == [3, 6, 9]
    assert m0.losses == m1.losses
    for (k0, v0), (k1, v1) in zip(m0.state_dict().items(), m1.state_dict().items(), strict=True):
        assert k0 == k1 and torch.equal(v0, v1), k0
    opt0, opt1 = plain.optimizers[0].state_dict(), watched.optimizers[0].state_dict()
    for s0, s1 in zip(opt0["state"].values(), opt1["state"].values(), strict=True):
        for key in s0:
            assert torch.equal(s0[key], s1[key]), key
    assert m1.training and all(p.grad is None or p.requires_grad for p in m1.parameters())


def test_outputs_reach_history_jsonl_loggers_and_callback_metrics(tmp_path):
    monitor = LLCMonitor(every_n_steps=2, **FAST)
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="llc/mean", every_n_train_steps=2
    )
    t, _ = fit(
        tmp_path,
        monitor,
        max_steps=6,
        logger=CSVLogger(tmp_path),
        callbacks=[monitor, checkpoint],
        enable_checkpointing=True,
    )
    steps = [r["step"] for r in monitor.history]
    assert steps == [2, 4, 6]
    for r in monitor.history:
        assert math.isfinite(r["llc/mean"]) and r["llc/std"] >= 0
        assert len(r["llc/per_chain"]) == 2
    assert read_jsonl(monitor.jsonl_path) == monitor.history
    assert monitor.jsonl_path.parent == (tmp_path / "lightning_logs" / "version_0" / "devinterp")
    csv = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "llc/mean" in csv.splitlines()[0]
    assert float(t.callback_metrics["llc/mean"]) == pytest.approx(monitor.history[-1]["llc/mean"])
    assert checkpoint.best_model_score is not None


def test_resume_continues_the_curve_without_loss_or_duplicates(tmp_path):
    def module():  # no RNG use in training, so a resumed run retraces the same weights
        m = RegressionModule(noisy=False)
        m.train_dataloader = lambda: DataLoader(regression_data(), batch_size=32)  # 8 steps/epoch
        return m

    full = LLCMonitor(every_n_steps=4, **FAST)
    fit(tmp_path / "full", full, module=module, max_steps=16)

    first = LLCMonitor(every_n_steps=4, **FAST)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=8, save_top_k=-1)
    fit(
        tmp_path / "a",
        first,
        module=module,
        max_steps=8,
        callbacks=[first, ckpt],
        enable_checkpointing=True,
    )
    resumed = LLCMonitor(every_n_steps=4, **FAST)
    L.seed_everything(0, verbose=False)
    t = trainer(tmp_path / "b", callbacks=[resumed], max_steps=16)
    t.fit(module(), ckpt_path=str(next((tmp_path / "ck").glob("*.ckpt"))))

    assert [r["step"] for r in resumed.history] == [4, 8, 12, 16]
    for a, b in zip(full.history, resumed.history, strict=True):
        assert a["llc/mean"] == pytest.approx(b["llc/mean"], rel=1e-6)
    assert read_jsonl(resumed.jsonl_path) == resumed.history


def test_log_spaced_schedule_train_start_and_end(tmp_path):
    monitor = LLCMonitor(num_estimates=4, **FAST)
    fit(tmp_path, monitor, max_steps=20)
    steps = [r["step"] for r in monitor.history]
    assert steps == [2, 4, 9, 20]  # from 20 ** 0.3 = 2.46

    monitor = LLCMonitor(at_steps=[0, 5], at_train_end=True, **FAST)
    fit(tmp_path, monitor, max_steps=7)
    assert [r["step"] for r in monitor.history] == [0, 5, 7]


@pytest.mark.parametrize(
    "last_step, first", [(5000, 13), (100_000, 32), (3000, 11), (600, 7), (20, 2), (3, 1), (1, 1)]
)
def test_log_spaced_estimates_start_after_the_first_30_percent_of_log_steps(last_step, first):
    schedule = Schedule(num_estimates=30)
    schedule.resolve(last_step)
    steps = sorted(s for s in range(last_step + 1) if schedule.is_due(s))
    assert steps[0] == first and steps[-1] == last_step
    assert len(steps) == min(30, last_step - first + 1)
    ratios = np.diff(np.log10(steps))
    if last_step >= 3000:  # integers allow even spacing: 30 steps over log10(last / first)
        assert ratios.max() < 1.3 * math.log10(last_step / first) / 29


def test_schedule_density_in_estimates_per_decade():
    every = Schedule(every_n_steps=10)
    every.resolve(1000)
    assert every.per_decade(1000) == 100 / 2  # steps 10..1000: two decades
    spaced = Schedule(num_estimates=30)
    spaced.resolve(10_000)
    assert spaced.per_decade(10_000) == pytest.approx(30 / math.log10(10_000 / 16))
    listed = Schedule(at_steps=[10, 20, 50, 200])
    listed.resolve(60)
    assert listed.per_decade(60) == 3  # steps after the run do not count; 10..60 counts as 1
    from_zero = Schedule(at_steps=[0, 10])
    from_zero.resolve(100)
    assert from_zero.per_decade(100) == 1  # step 0 counts, the decades from step 1


@pytest.mark.parametrize(
    ("kwargs", "noted"),
    [
        ({"num_estimates": 6}, True),  # 6 over 1.4 decades (steps 4-100): 4.3 per decade
        ({"num_estimates": 14}, False),  # 10 per decade
        ({"num_estimates": 6, "milestones": False}, False),  # no detector to starve
    ],
)
def test_a_schedule_too_sparse_for_online_milestones_is_noted(tmp_path, caplog, kwargs, noted):
    caplog.set_level(logging.INFO)
    fit(tmp_path, LLCMonitor(**kwargs, **FAST), max_steps=100)
    notes = [r.message for r in caplog.records if "estimates per decade" in r.message]
    assert len(notes) == noted
    if noted:
        assert "4.3 estimates per decade" in notes[0] and "num_estimates" in notes[0]


class StopAt(L.Callback):
    """Stops training after ``step`` (as early stopping or ``max_time`` would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        trainer.should_stop = trainer.global_step >= self.step


@pytest.mark.parametrize(
    ("kwargs", "noted"),
    [
        ({"num_estimates": 4}, "before 2 scheduled estimate(s) up to step 40"),  # 5, 8, 19, 40
        ({"every_n_steps": 6}, "before 5 scheduled estimate(s) up to step 40"),  # 12, ..., 36
        ({"num_estimates": 4, "at_train_end": True}, None),  # estimated there instead
    ],
)
def test_a_run_stopped_before_its_last_estimates_is_noted(tmp_path, caplog, kwargs, noted):
    caplog.set_level(logging.INFO)
    monitor = LLCMonitor(**kwargs, **FAST)
    fit(tmp_path, callbacks=[monitor, StopAt(9)], max_steps=40)
    notes = [r.message for r in caplog.records if "training ended at step 9" in r.message]
    assert [noted in n for n in notes] == ([True] if noted else [])
    assert monitor.history[-1]["step"] == 9 if noted is None else monitor.history[-1]["step"] < 9


def test_never_runs_under_fast_dev_run_or_sanity_check(tmp_path):
    monitor = LLCMonitor(every_n_steps=1, **FAST)
    fit(tmp_path, monitor, fast_dev_run=3)
    assert monitor.history == []


def test_default_sampler_works_and_says_it_is_uncalibrated(tmp_path):
    monitor = LLCMonitor(at_steps=[2], num_chains=1, num_draws=5)
    with pytest.warns(UserWarning, match="not calibrated"):
        fit(tmp_path, monitor, max_steps=2)
    record = monitor.history[0]
    assert record["llc/nbeta"] == pytest.approx(32 / math.log(32))


def test_loss_fn_and_dataloader_arguments(tmp_path):
    loader = DataLoader(regression_data(n=64, seed=3), batch_size=16, shuffle=True)
    monitor = LLCMonitor(at_steps=[2], dataloader=loader, loss_fn=mse_loss, **FAST)
    fit(tmp_path, monitor, max_steps=2)
    assert monitor.history[0]["llc/nbeta"] == 10.0 and math.isfinite(monitor.history[0]["llc/mean"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_chains=0), "num_chains=0"),
        (dict(num_draws=0), "num_draws=0"),
        (dict(num_burnin=-1), "num_burnin=-1"),
        (dict(every_n_steps=0), "every_n_steps=0"),
        (dict(at_steps=[]), "at_steps"),
        (dict(every_n_steps=2, num_estimates=3), "only one of"),
        (dict(on_error="ignore"), "on_error"),
        (dict(sampler="sgld"), "SGLD"),
        (dict(loss_fn=3), "loss_fn"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        LLCMonitor(**kwargs)


@pytest.mark.parametrize(
    "sampler_kwargs, match",
    [
        (dict(lr=0), "lr=0"),
        (dict(lr=1e-3, nbeta=-1), "nbeta=-1"),
        (dict(lr=1e-3, localization=-2), "localization=-2"),
    ],
)
def test_bad_sampler_settings_fail_at_construction(sampler_kwargs, match):
    with pytest.raises(ValueError, match=match):
        SGLD(**sampler_kwargs)


def test_num_estimates_spread_over_a_run_bounded_by_epochs_and_refused_unbounded(tmp_path):
    # max_epochs=3 of 8 batches: the run's 24 steps come from the trainer's estimate
    monitor = LLCMonitor(num_estimates=4, **FAST)
    fit(tmp_path, monitor, max_steps=-1, max_epochs=3)
    assert [r["step"] for r in monitor.history] == [3, 6, 12, 24]  # from 24 ** 0.3 = 2.6
    with pytest.raises(ValueError, match="no finite max_steps or max_epochs; set max_steps"):
        fit(tmp_path, LLCMonitor(**FAST), max_steps=-1, max_epochs=-1, max_time="00:00:00:05")


def test_schedule_beyond_the_run_fails_at_start(tmp_path):
    with pytest.raises(ValueError, match="selects no step"):
        fit(tmp_path, LLCMonitor(every_n_steps=50, **FAST), max_steps=5)


@pytest.mark.parametrize(
    "loss_fn, match",
    [
        (lambda m, b: 1.0, "returned float"),
        (lambda m, b: mse_loss(m, b) * float("nan"), "non-finite"),
    ],
)
def test_bad_loss_fn_fails_at_start(tmp_path, loss_fn, match):
    with pytest.raises((TypeError, ValueError), match=match):
        fit(tmp_path, LLCMonitor(at_steps=[1], loss_fn=loss_fn, **FAST), max_steps=2)


def test_empty_dataloader_and_frozen_model_fail_at_start(tmp_path):
    empty = DataLoader(regression_data(n=8), batch_size=16, drop_last=True)
    with pytest.raises(ValueError, match="yields no batch"):
        fit(tmp_path, LLCMonitor(at_steps=[1], dataloader=empty, **FAST), max_steps=2)

    class Frozen(RegressionModule):
        def configure_optimizers(self):
            return None

    def frozen():
        module = Frozen()
        module.requires_grad_(False)
        return module

    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(tmp_path, LLCMonitor(at_steps=[1], **FAST), module=frozen, max_steps=2)


def test_unsupported_strategy_is_refused_with_advice():
    from lightning.pytorch.strategies import FSDPStrategy

    fake = SimpleNamespace(strategy=FSDPStrategy())
    with pytest.raises(ValueError, match="cannot run under FSDPStrategy.*ddp"):
        LLCMonitor().setup(fake, None, "fit")


class FailingLoss:
    """Works for the start-up check, then raises during sampling."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model, batch):
        self.calls += 1
        if self.calls > 3:
            raise RuntimeError("boom")
        return mse_loss(model, batch)


def test_on_error_warn_keeps_training_and_records_the_failure(tmp_path):
    monitor = LLCMonitor(at_steps=[2], loss_fn=FailingLoss(), **FAST)
    with pytest.warns(UserWarning, match="failed .*boom.*training continues"):
        t, _ = fit(tmp_path, monitor, max_steps=4)
    assert t.global_step == 4
    assert monitor.history == [] and monitor.errors[0]["step"] == 2
    assert read_jsonl(monitor.jsonl_path)[0]["error"].startswith("RuntimeError")


def test_on_error_raise_stops(tmp_path):
    monitor = LLCMonitor(at_steps=[2], loss_fn=FailingLoss(), on_error="raise", **FAST)
    with pytest.raises(RuntimeError, match="boom"):
        fit(tmp_path, monitor, max_steps=4)


def test_state_dict_round_trip():
    monitor = LLCMonitor(**FAST)
    monitor.history.append({"step": 3, "llc/mean": 1.5})
    other = LLCMonitor(**FAST)
    other.load_state_dict(monitor.state_dict())
    assert other.history == monitor.history
    assert LLCMonitor(name="a").state_key != LLCMonitor(name="b").state_key


def test_components_and_named_data_give_refined_llcs(tmp_path):
    probe = RegressionModule()
    components = [
        Component.from_patterns(probe, "net.0.*", name="first"),
        Component.from_patterns(probe, "net.4.*", name="last"),
    ]
    shifted = DataLoader(regression_data(n=64, seed=7), batch_size=32)
    monitor = LLCMonitor(at_steps=[3], components=components, data={"shifted": shifted}, **FAST)
    fit(tmp_path, monitor, max_steps=3)
    record = monitor.history[0]
    for prefix in ("llc", "rllc/first", "rllc/last", "llc_shifted", "rllc_shifted/first"):
        assert math.isfinite(record[f"{prefix}/mean"]), prefix
        assert len(record[f"{prefix}/per_chain"]) == 2
    assert set(monitor.last_estimates) == {
        "llc",
        "rllc/first",
        "rllc/last",
        "llc_shifted",
        "rllc_shifted/first",
        "rllc_shifted/last",
    }
    # a component's chains move fewer weights than the whole model's: a smaller LLC
    assert record["rllc/first/mean"] < record["llc/mean"]


def test_bad_components_and_data_names_fail_at_construction():
    with pytest.raises(TypeError, match="components="):
        LLCMonitor(components="mlp")
    with pytest.raises(ValueError, match="data name"):
        LLCMonitor(data={"my data": []})


def test_tensorboard_gets_scalars_and_one_chart_per_component_group(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    probe = RegressionModule()
    components = [
        Component("a", Component.from_patterns(probe, "net.0.weight").masks, group="l0"),
        Component("b", Component.from_patterns(probe, "net.0.bias").masks, group="l0"),
        Component("c", Component.from_patterns(probe, "net.4.*").masks, group="l1"),
    ]
    monitor = LLCMonitor(every_n_steps=2, components=components, **FAST)
    logger = TensorBoardLogger(tmp_path, name="tb")
    fit(tmp_path, monitor, max_steps=4, logger=logger)
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    llc = events.Scalars("llc/mean")
    assert [e.step for e in llc] == [2, 4]
    assert [e.value for e in llc] == pytest.approx([r["llc/mean"] for r in monitor.history])
    assert [e.step for e in events.Scalars("rllc/c/mean")] == [2, 4]
    layout_events = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(layout_events[0].tensor_proto.string_val[0])
    charts = {c.title: c.multiline.tag for cat in layout.category for c in cat.chart}
    assert charts == {"l0": ["^rllc/(a|b)/mean$"], "l1": ["^rllc/(c)/mean$"]}


def test_components_heads_gives_one_rllc_per_attention_head(tmp_path):
    from lightning_devinterp.demos import AttentionOnlyTransformer, InductionData, token_loss

    class TinyLM(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = AttentionOnlyTransformer(16, d_model=16, n_heads=2, n_layers=2, context=16)

        def training_step(self, batch, batch_idx):
            return token_loss(self.model, batch).mean()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = InductionData(size=64, length=16, vocab_size=16)
    loader = DataLoader(data, batch_size=16, shuffle=True, collate_fn=InductionData.collate)
    monitor = LLCMonitor(at_steps=[1, 2], components="heads", **FAST)
    L.seed_everything(0, verbose=False)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer(tmp_path, callbacks=[monitor], max_steps=2, logger=logger).fit(TinyLM(), loader)
    record = monitor.history[-1]
    heads = sorted(k.split("/")[1] for k in record if k.startswith("rllc/") and k.endswith("/mean"))
    assert heads == ["l0h0", "l0h1", "l1h0", "l1h1"]
    # a detector on every series, each fed its points and its chains' noise
    assert monitor.tracker.series == ["llc", "loss", "train_loss", *[f"rllc/{h}" for h in heads]]
    assert all(d.state_dict()["last_step"] == 2 for d in monitor.detectors)
    assert all(len(d.state_dict()["chain_variances"]) == 1 for d in monitor.detectors[3:])
    # the stage view in every record, in TensorBoard text and in the milestone file
    assert record["llc/stage_view"].startswith("steps 1-now: llc ")
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    text = events.Tensors("llc/stages/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert text == "0. " + record["llc/stage_view"]
    monitor.tracker.write(tmp_path / "m.json")
    saved = json.loads((tmp_path / "m.json").read_text())
    assert set(saved["stages"]) == set(monitor.tracker.series) and saved["held_back"] == []
    restored = LLCMonitor(components="heads", **FAST)
    restored.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    assert restored.tracker.series == monitor.tracker.series
    assert monitor.recorder.layout() == {
        "rllc": {
            "l0": ["Multiline", ["^rllc/(l0h0|l0h1)/mean$"]],
            "l1": ["Multiline", ["^rllc/(l1h0|l1h1)/mean$"]],
        }
    }


def test_milestones_settled_at_train_end_are_announced(tmp_path):
    seen = []
    monitor = LLCMonitor(
        every_n_steps=2,
        milestones=AnnouncesAtFinish(),
        on_milestone=lambda trainer, module, m: seen.append((trainer.global_step, m.step)),
        checkpoint_on_milestone=True,
        **FAST,
    )
    fit(tmp_path, monitor, max_steps=6)
    assert seen == [(6, 5)]
    saved = json.loads(monitor.milestones_path.read_text())
    assert [(m["step"], m["detected_at"]) for m in saved["online"]] == [(5, 6)]
    assert list(monitor.milestones_path.parent.glob("milestone-llc-plateau_start-step5.ckpt"))


def test_milestones_reach_json_hook_checkpoint_stage_and_state(tmp_path):
    seen = []
    monitor = LLCMonitor(
        every_n_steps=2,
        milestones=AnnouncesAt(4),
        on_milestone=lambda trainer, module, m: seen.append((trainer.global_step, m.step)),
        checkpoint_on_milestone=True,
        **FAST,
    )
    fit(tmp_path, monitor, max_steps=6)
    assert seen == [(4, 3)]
    assert [m.step for m in monitor.milestones] == [3]
    saved = json.loads(monitor.milestones_path.read_text())
    assert [m["step"] for m in saved["online"]] == [3] and "llc" in saved["stages"]
    assert list(monitor.milestones_path.parent.glob("milestone-llc-plateau_end-step3.ckpt"))
    assert all("llc/stage" in r for r in monitor.history)
    state = monitor.state_dict()
    assert len(state["detectors"]) == 1
    restored = LLCMonitor(milestones=MilestoneDetector("llc"), **FAST)
    restored.load_state_dict(state)
    assert restored.detectors[0].state_dict() == state["detectors"][0]


def test_default_milestone_detectors_watch_the_llc_and_the_losses():
    assert [d.series for d in LLCMonitor().detectors] == ["llc", "loss", "train_loss"]
    assert LLCMonitor(milestones=False).detectors == []
    with pytest.raises(TypeError, match="milestones="):
        LLCMonitor(milestones=["llc"])


def test_a_named_monitor_feeds_its_detectors_its_llc_and_its_loss(tmp_path):
    monitor = LLCMonitor(name="copies", every_n_steps=2, **FAST)
    fit(tmp_path, monitor, max_steps=8)
    assert [d.series for d in monitor.detectors] == ["copies", "copies/loss", "copies/train_loss"]
    assert [d.state_dict()["last_step"] for d in monitor.detectors] == [8, 8, 8]
    assert series_keys("copies/loss", "copies") == series_keys("loss", "copies")
    assert series_keys("copies/loss", "copies") == ("copies/init_loss", None)
    assert series_keys("rllc/l0h1", "llc") == ("rllc/l0h1/mean", "rllc/l0h1/std")


def test_a_persistent_workers_loader_keeps_its_training_iterator(tmp_path):
    """A second iterator over a persistent-workers loader would reset training's; the monitor
    samples from a worker-less clone instead, so training sees the same batches."""

    def module():
        m = RegressionModule(noisy=False)
        m.train_dataloader = lambda: DataLoader(
            regression_data(), batch_size=32, shuffle=True, num_workers=1, persistent_workers=True
        )
        return m

    _, plain = fit(tmp_path / "plain", module=module, max_steps=6)
    monitor = LLCMonitor(every_n_steps=2, **FAST)
    _, watched = fit(tmp_path / "watched", monitor, module=module, max_steps=6)
    assert plain.losses == watched.losses and len(monitor.history) == 3


def test_step_check_and_minibatch_noise_reach_every_record(tmp_path):
    monitor = LLCMonitor(every_n_steps=3, step_check=True, loss_fn=mse_loss, **FAST)
    fit(tmp_path, monitor)
    for record in monitor.history:
        assert math.isfinite(record["llc/health/step_bias"])
        assert math.isfinite(record["llc/extrapolated"])
        assert record["llc/health/minibatch_noise"] >= 0
