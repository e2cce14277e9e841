"""LLCMonitor and SusceptibilityMonitor under real DDP: two CPU processes (gloo)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path


def test_ddp_splits_chains_and_every_rank_holds_the_same_history(tmp_path):
    script = Path(__file__).with_name("ddp_run.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    # the main monitor's two estimates; the flaky monitor's call comes in between
    assert [c for c in ranks[0]["sampled"] if len(c) == 2] == [[0, 2], [0, 2]]
    assert [c for c in ranks[1]["sampled"] if len(c) == 2] == [[1, 3], [1, 3]]
    # a failure on rank 1 alone neither hangs rank 0 nor stops training, and both ranks know
    for rank in ranks:
        assert rank["steps"] == 40
        assert [e["step"] for e in rank["flaky_errors"]] == [2]
        assert "rank one fails" in rank["flaky_errors"][0]["error"]
    h0, h1 = ranks[0]["history"], ranks[1]["history"]
    assert [r["step"] for r in h0] == [2, 4]
    timeless = [[{k: v for k, v in r.items() if k != "llc/seconds"} for r in h] for h in (h0, h1)]
    assert timeless[0] == timeless[1]  # wall time is each rank's own
    assert all(len(r["llc/per_chain"]) == 4 for r in h0)
    # susceptibilities: chains split across the ranks, pooled, the same record on both
    assert [rank["susceptibility_chains"] for rank in ranks] == [4, 4]
    s0, s1 = (
        [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rank["susceptibility"]]
        for rank in ranks
    )
    assert [r["step"] for r in s0] == [4] and s0 == s1
    assert [v for k, v in s0[0].items() if k.endswith("/why")] == ["scheduled"]
    # the adaptive schedule: extra estimates after rank 0's loss bend, on both ranks alike
    adaptive = ranks[0]["adaptive"]
    assert ranks[1]["adaptive"] == adaptive
    extra = [step for step, why in adaptive if why == "adaptive"]
    assert 1 <= len(extra) <= 3 and all(15 < step < 30 for step in extra), adaptive
    assert adaptive[-1] == [40, "scheduled"]
    # and the training loss's milestones: rank 0's drop, announced by both ranks
    assert ranks[1]["train_loss"] == ranks[0]["train_loss"]
    assert any(abs(math.log10(m["step"] / 15)) <= 0.1 for m in ranks[0]["train_loss"])
    jsonl = list((tmp_path / "devinterp").glob("*.jsonl")) + list(tmp_path.rglob("llc.jsonl"))
    assert jsonl, "rank zero writes the JSON-lines file"
