"""The JSON-lines file: rewritten without loss, and held by one run at a time."""

from __future__ import annotations

import errno
import os

import pytest

from lightning_devinterp.reporting import JsonlWriter, read_jsonl
from lightning_devinterp.reporting import jsonl as jsonl_module


def test_a_rewrite_keeps_the_lines_it_drops_in_a_backup(tmp_path):
    writer = JsonlWriter(tmp_path / "llc.jsonl")
    for step in (1, 2, 3):
        writer.append({"step": step, "llc/mean": float("nan") if step == 3 else 1.0})
    assert read_jsonl(writer.path)[2]["llc/mean"] is None  # NaN written as null
    writer.rewrite([{"step": 1, "llc/mean": 1.0}])
    assert [r["step"] for r in read_jsonl(writer.path)] == [1]
    (backup,) = tmp_path.glob("llc.*.bak")
    assert [r["step"] for r in read_jsonl(backup)] == [1, 2, 3]


def test_one_writer_at_a_time_holds_the_file(tmp_path):
    first, second = JsonlWriter(tmp_path / "llc.jsonl"), JsonlWriter(tmp_path / "llc.jsonl")
    first.claim()
    assert first.lock_path.read_text().strip() == str(os.getpid())
    with pytest.raises(RuntimeError, match=rf"another training run \(process {os.getpid()}\)"):
        second.claim()
    first.release()
    second.claim()  # free again
    second.release()


def test_a_file_system_without_locks_is_written_without_the_check(tmp_path, monkeypatch):
    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(jsonl_module.fcntl, "flock", no_locks)
    writer = JsonlWriter(tmp_path / "llc.jsonl")
    writer.claim()
    writer.append({"step": 1})
    assert read_jsonl(writer.path) == [{"step": 1}]
