"""The run report from files written by the project's own sinks and a real milestone detector."""

from __future__ import annotations

import json
import math
import re
import sys

import numpy as np
import pytest

from lightning_devinterp.milestones import Milestone, MilestoneDetector, Stage, stage_view
from lightning_devinterp.reporting import JsonlWriter, summary, write_milestones_json
from lightning_devinterp.reporting.figures import plot_rllc_heads
from lightning_devinterp.reporting.milestones import milestones_markdown
from lightning_devinterp.reporting.summary import find_histories, write_report

HEADS = ("l0h0", "l0h1", "l1h0")


def planted_run(folder):
    """A rise to a plateau at step ~100, a fall after ~1000; one failed estimate."""
    rng = np.random.default_rng(0)
    detector = MilestoneDetector("llc")
    writer = JsonlWriter(folder / "devinterp" / "llc.jsonl")
    records = []
    for step in np.unique(np.round(np.geomspace(1, 10_000, 60)).astype(int)).tolist():
        x = np.log10(step)
        mean = 10 + 20 * min(x, 2) - (15 * (x - 3) if x > 3 else 0) + rng.normal(0, 0.3)
        record = {"step": step, "epoch": 0, "llc/mean": mean, "llc/std": 0.5}
        record["llc/init_loss"] = 2.0 - 0.1 * x
        drift = [f"The trace drifts (z = {step + 2.5}): raise num_burnin"]
        record["llc/warnings"] = drift if step in (1, 2) else []
        for i, head in enumerate(HEADS):
            record[f"rllc/{head}/mean"], record[f"rllc/{head}/std"] = mean / (i + 2), 0.1
        detector.update(step, mean, 0.5)
        record["llc/stage"] = detector.current_stage
        writer.append(record)
        records.append(record)
        if step == 50:
            writer.append({"step": 51, "error": "RuntimeError: chain 2 diverged"})
    online = list(detector.milestones)
    detector.refine()
    path = writer.path.with_name("milestones.json")
    # the training loss: not in the records, its stages in the milestone file only
    train_loss = [Stage(0, 3, 250, "falling"), Stage(1, 250, None, "flat")]
    stages = {"llc": detector.stages, "loss": [], "train_loss": train_loss}
    write_milestones_json(path, online, detector.refined, stages)
    return records, detector, train_loss


def table_rows(text, first_cell):
    return [line for line in text.splitlines() if line.startswith(f"| {first_cell}")]


def test_report_has_final_llc_stages_milestones_heads_warnings_and_figures(tmp_path):
    records, detector, train_loss = planted_run(tmp_path / "run")
    files = write_report(tmp_path / "run", tmp_path / "out")
    md = files.markdown.read_text()
    last = records[-1]
    assert f"Final llc: **{last['llc/mean']:.4g} ± 0.5**" in md
    assert f"at step {last['step']}; {len(records)} estimates, 1 failed" in md
    # stages: one row each, the LLC of the nearest estimate at their ends
    assert [s.trend for s in detector.stages] == ["rising", "flat", "falling"]
    estimated = [r for r in records if "llc/mean" in r]

    def nearest(step: int) -> float:  # a stage may start between estimates (a fitted knot)
        return min(estimated, key=lambda r: abs(math.log10((r["step"] + 1) / (step + 1))))[
            "llc/mean"
        ]

    for stage in detector.stages:
        (row,) = table_rows(md, f"{stage.index} | {stage.start} |")
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3] == stage.trend
        assert cells[4] == f"{nearest(stage.start):.4g}"
        end = stage.end if stage.end is not None else last["step"]
        assert cells[5] == f"{nearest(end):.4g}"
    # the training loss's stages, without values (it is not recorded)
    assert "Stages of `train_loss`" in md and "Stages of `loss`" not in md
    assert table_rows(md, "0 | 3 |") == ["| 0 | 3 | 250 | falling |"]
    assert table_rows(md, "1 | 250 |") == [f"| 1 | 250 | {last['step']} (last) | flat |"]
    # the stage view: each stage of the LLC with what the other series do over it
    view = stage_view({"llc": detector.stages, "train_loss": train_loss}, "llc", last["step"])
    assert "### Stage view of `llc`" in md
    assert [f"- {v.describe('end')}" for v in view] == [
        line for line in md.splitlines() if line.startswith("- steps ")
    ]
    assert "train_loss falling" in view[0].describe()
    assert view[-1].describe("end").startswith(f"steps {view[-1].start}-end:")  # trained
    # milestones: the online and the refined ones, by kind and step
    online = [m.step for m in detector.milestones]
    refined = [m.step for m in detector.refined]
    rows = table_rows(md, "llc |")
    assert [int(r.split("|")[3]) for r in rows if "| online |" in r] == online
    assert [int(r.split("|")[3]) for r in rows if "| refined |" in r] == refined
    # refined LLCs of the last estimate, each head
    for i, head in enumerate(HEADS):
        assert f"| rllc/{head} | {last['llc/mean'] / (i + 2):.4g} | 0.1 |" in md
    assert "- The trace drifts (z = …): raise num_burnin (`llc` at steps 1, 2)" in md
    assert "step 51: estimate failed: RuntimeError: chain 2 diverged" in md
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert images == ["llc_curve.png", "llc_loss.png", "llc_rllc.png"]
    for name in images:
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    page = files.html.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count('<img src="') == 3
    assert "<td>refined</td>" in page and "<td>rising</td>" in page
    assert "<b>" in page and "**" not in page


def test_the_heads_figure_marks_the_heads_milestones(tmp_path, monkeypatch):
    _, detector, train_loss = planted_run(tmp_path / "run")
    head = Milestone(100, 200, "plateau_start", 5.0, "rllc/l0h1")
    path = tmp_path / "run" / "devinterp" / "milestones.json"
    stages = {"llc": detector.stages, "loss": [], "train_loss": train_loss}
    write_milestones_json(path, detector.milestones, [*detector.refined, head], stages)
    drawn = {}

    def recording(*args, **kwargs):
        drawn.update(kwargs)
        return plot_rllc_heads(*args, **kwargs)

    monkeypatch.setattr(summary, "plot_rllc_heads", recording)
    write_report(tmp_path / "run", tmp_path / "out")
    assert drawn["milestones"] == [head]  # the heads' (refined, as every figure of the report)


def test_report_default_folder_and_a_single_file(tmp_path):
    planted_run(tmp_path)
    history = tmp_path / "devinterp" / "llc.jsonl"
    assert find_histories(tmp_path) == [history]
    files = write_report(history)
    assert files.markdown == tmp_path / "devinterp" / "report" / "report.md"
    assert len(files.figures) == 3 and all(p.exists() for p in files.figures)


def test_bad_sources_say_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_histories(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"No JSON-lines file \(\*\.jsonl\)"):
        find_histories(tmp_path)


def test_without_matplotlib_the_text_report_is_still_written(tmp_path, monkeypatch):
    planted_run(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    files = write_report(tmp_path, tmp_path / "out")
    md = files.markdown.read_text()
    assert md.count("No figures: Figures need matplotlib: pip install") == 1
    assert "![" not in md and files.figures == [] and "| rllc/l0h0 |" in md


def test_a_moved_milestone_says_where_it_was_first_announced(tmp_path):
    """A plateau left by a creep (3 per decade) that steepens to 10 per decade: its end is
    moved (``revises``); the milestone file keeps both places, the report and the loggers'
    table say it, and it reads back as it was."""
    rng = np.random.default_rng(3)
    detector = MilestoneDetector("llc")
    writer = JsonlWriter(tmp_path / "run" / "devinterp" / "llc.jsonl")
    knots, values = [1, 2, 2.5, 3, 3.5], [5, 5, 6.5, 11.5, 11.5]
    for step in np.unique(np.round(np.geomspace(10, 3000, 30)).astype(int)).tolist():
        chains = np.interp(np.log10(step), knots, values) + 0.1 * rng.standard_normal(2)
        detector.update(step, chains.mean(), chains.std(ddof=1), chains)
        writer.append({"step": step, "epoch": 0, "llc/mean": chains.mean(), "llc/std": 0.1})
    (moved,) = [m for m in detector.milestones if m.revises is not None]
    assert moved.kind == "plateau_end" and moved.revises < moved.step
    assert Milestone.from_dict(json.loads(json.dumps(moved.to_dict()))) == moved
    path = writer.path.with_name("milestones.json")
    write_milestones_json(path, detector.milestones, detector.refine(), {"llc": detector.stages})
    md = write_report(tmp_path / "run", tmp_path / "out").markdown.read_text()
    (row,) = [r for r in table_rows(md, "llc |") if "moved" in r]
    assert f"| {moved.step} |" in row and f"online, moved from {moved.revises}" in row
    (line,) = [x for x in milestones_markdown(detector.milestones).splitlines() if "moved" in x]
    assert line.startswith(f"| llc | plateau_end | {moved.step} |")
    assert line.endswith(f"| moved from {moved.revises} |")
