"""A real offline W&B run, read back from its run directory (no mock of wandb)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.loggers import WandbLogger

from lightning_devinterp import SGLD, Component, LLCMonitor
from tests.helpers import RegressionModule, trainer

pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")

BLOCK = 32768
HEADER = 7  # ":W&B", magic, version


def wandb_records(path: Path) -> list:
    """The protobuf records of a .wandb file (a LevelDB-style log of 32 KiB blocks), up to
    the last one written whole (the file may still be growing)."""
    data, pos, records, pending = path.read_bytes(), HEADER, [], b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if pos + 7 + length > len(data):
            break  # its bytes are still being written
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # full, first
            pending = chunk
        elif kind in (3, 4):  # middle, last
            pending += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def finished_run_records(folder: Path, timeout: float = 60.0) -> list:
    """The records of the one offline run under ``folder``, once its exit record is written
    (W&B's service process may still be flushing when ``finish()`` returns)."""
    deadline = time.monotonic() + timeout
    while True:
        files = list(folder.rglob("run-*.wandb"))
        records = wandb_records(files[0]) if len(files) == 1 else []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"no finished W&B run under {folder}: {files}")
        time.sleep(0.2)


def history_rows(records: list) -> list[dict]:
    """Each history record as a dict of its logged values."""
    return [
        {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]


def test_offline_run_history_metrics_and_group_charts(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    L.seed_everything(0, verbose=False)
    module = RegressionModule()
    components = [
        Component("a", Component.from_patterns(module, "net.0.*").masks, group="l0"),
        Component("b", Component.from_patterns(module, "net.4.*").masks, group="l0"),
    ]
    monitor = LLCMonitor(
        SGLD(lr=1e-4, nbeta=10.0, localization=100.0),
        num_chains=2,
        num_draws=10,
        every_n_steps=2,
        components=components,
    )
    logger = WandbLogger(project="devinterp-test", save_dir=str(tmp_path), offline=True)
    t = trainer(tmp_path, callbacks=[monitor], max_steps=4, logger=logger)
    t.fit(module)
    import wandb

    wandb.finish()
    records = finished_run_records(tmp_path)
    rows = history_rows(records)
    llc_rows = [row for row in rows if "llc/mean" in row]
    assert [row["trainer/global_step"] for row in llc_rows] == [2, 4]
    assert [row["llc/mean"] for row in llc_rows] == pytest.approx(
        [h["llc/mean"] for h in monitor.history]
    )
    assert all("rllc/a/mean" in row and "rllc/b/mean" in row for row in llc_rows)
    declared = {
        r.metric.name: r.metric.step_metric
        for r in records
        if r.WhichOneof("record_type") == "metric"
    }
    for name in ("llc/mean", "llc/std", "rllc/a/mean", "rllc/b/std"):
        assert declared.get(name) == "trainer/global_step", name
    # one chart (a W&B line series over a table) with both heads of layer l0, redrawn each time
    charts = [row for row in rows if any(k.startswith("rllc_chart/l0_table/") for k in row)]
    assert [row["trainer/global_step"] for row in charts] == [2, 4]
    # the live figures as W&B images, the same pixels as their PNG files (drawn once)
    import numpy as np
    from matplotlib.image import imread

    folder = monitor.jsonl_path.parent
    for tag in ("curve", "heads"):
        (logged,) = tmp_path.rglob(f"media/images/*llc/{tag}_*.png")
        (on_disk,) = folder.glob(f"*llc_{tag}.png")
        assert np.array_equal(imread(logged)[..., :3], imread(on_disk)[..., :3]), tag
