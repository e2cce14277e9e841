"""A run's report: figures (PNG) and a markdown and HTML summary from its JSON-lines history
and milestones files, after the fact.

The summary gives, for each monitor (one ``<name>.jsonl`` file): the final LLC, the stages
of each detected series with its value at their start and end, the refined LLCs at the last
estimate, the warnings and failed estimates; then every milestone, online and refined.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_devinterp.milestones.records import Milestone, Stage
from lightning_devinterp.milestones.series import (
    loss_series,
    milestones_filename,
    series_keys,
    train_loss_series,
)
from lightning_devinterp.milestones.stage_view import stage_view
from lightning_devinterp.reporting.figures import plot_curve, plot_rllc_heads, save_png
from lightning_devinterp.reporting.jsonl import read_jsonl

_NUMBER = re.compile(r"-?\d+(\.\d+)?(e[-+]?\d+)?")

Block = tuple  # ("h1" | "h2" | "h3" | "p", text), ("table", header, rows), ("img", alt, src), ("ul", items)


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote."""

    markdown: Path
    html: Path
    figures: list[Path] = field(default_factory=list)


def find_histories(source: str | Path) -> list[Path]:
    """The JSON-lines files of a run: ``source`` itself, or every ``*.jsonl`` under it.

    Raises:
        FileNotFoundError: ``source`` does not exist or holds no JSON-lines file.
    """
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(
            f"{source} does not exist; pass a run's log directory or one of its "
            "devinterp/<name>.jsonl files."
        )
    found = sorted(source.rglob("*.jsonl"))
    if not found:
        raise FileNotFoundError(
            f"No JSON-lines file (*.jsonl) under {source}; pass the log directory of a run "
            "that used LLCMonitor (it writes devinterp/<name>.jsonl) or the file itself."
        )
    return found


def write_report(source: str | Path, out_dir: str | Path | None = None) -> ReportFiles:
    """Write ``report.md``, ``report.html`` and the figures of the run at ``source``.

    Args:
        source: a run's log directory (searched for ``*.jsonl``) or one JSON-lines file.
            ``milestones.json`` (and ``*_milestones.json``) beside each file are read too.
        out_dir: where the files go; default ``report/`` beside the (first) JSON-lines file.

    Returns:
        The paths written.

    Raises:
        FileNotFoundError: no JSON-lines file at ``source``.
    """
    histories = find_histories(source)
    out = Path(out_dir) if out_dir is not None else histories[0].parent / "report"
    out.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out / "report.md", out / "report.html")
    blocks: list[Block] = [("h1", "lightning-devinterp report"), ("p", f"Source: `{source}`")]
    milestone_rows: list[list[str]] = []
    for folder in dict.fromkeys(path.parent for path in histories):
        for path in sorted(folder.glob("*milestones.json")):
            milestone_rows.extend(_milestone_rows(path))
    for path in histories:
        blocks.extend(_history_blocks(path, out, files))
    blocks.append(("h2", "Milestones"))
    if milestone_rows:
        header = ["series", "kind", "step", "detected at", "value", "found", "file"]
        blocks.append(("table", header, milestone_rows))
        blocks.append(
            (
                "p",
                "online: announced during training, `detected at` the step that confirmed it; "
                "refined: re-placed after training with the whole series.",
            )
        )
    else:
        blocks.append(("p", "No milestone file (milestones.json) beside the history."))
    files.markdown.write_text(to_markdown(blocks))
    files.html.write_text(to_html(blocks))
    return files


def _history_blocks(path: Path, out: Path, files: ReportFiles) -> list[Block]:
    """The section of one monitor's JSON-lines file."""
    name = path.stem
    records = read_jsonl(path)
    estimates = [r for r in records if _finite(r.get(f"{name}/mean"))]
    failures = [r for r in records if "error" in r]
    blocks: list[Block] = [("h2", f"`{name}` ({path})")]
    if not estimates:
        blocks.append(("p", f"No successful estimate of `{name}/mean` in this file."))
        blocks.extend(_warning_blocks(records, failures))
        return blocks
    last = estimates[-1]
    blocks.append(
        (
            "p",
            f"Final {name}: **{last[f'{name}/mean']:.4g} ± {last.get(f'{name}/std') or 0:.2g}** "
            f"(mean ± std over chains) at step {last['step']}; {len(estimates)} estimates, "
            f"{len(failures)} failed.",
        )
    )
    stages, milestones = _stages_and_milestones(path.with_name(milestones_filename(name)))
    _add_curves(blocks, name, estimates, stages, milestones, out, files)
    for series, found in stages.items():
        key = series_keys(series, name)[0]
        recorded = any(key in r for r in estimates)
        if found and (recorded or series == train_loss_series(name)):
            blocks.append(("h3", f"Stages of `{series}`"))
            blocks.append(("table", *_stage_table(found, estimates, key if recorded else None)))
    if stages.get(name):
        view = stage_view(stages, name, estimates[-1]["step"])
        blocks += [("h3", f"Stage view of `{name}`"), ("ul", [v.describe("end") for v in view])]
    _add_refined(blocks, name, estimates, milestones, out, files)
    blocks.extend(_warning_blocks(records, failures))
    return blocks


def _add_curves(
    blocks: list[Block],
    name: str,
    estimates: list[dict[str, Any]],
    stages: dict[str, list[Stage]],
    milestones: list[Milestone],
    out: Path,
    files: ReportFiles,
) -> None:
    """Add the LLC curve and the L(w*) curve, each with its series' stages and milestones."""
    figures = [
        (f"{name} curve", f"{name}_curve.png", f"{name}/mean", f"{name}/std", name),
        ("L(w*) curve", f"{name}_loss.png", f"{name}/init_loss", None, loss_series(name)),
    ]
    for alt, filename, key, std_key, series in figures:
        if not any(_finite(r.get(key)) and r["step"] > 0 for r in estimates):
            continue
        figure = _draw(
            blocks,
            plot_curve,
            estimates,
            key,
            std_key=std_key,
            stages=stages.get(series, []),
            milestones=[m for m in milestones if m.series == series],
            title=key,
            series=series,
        )
        if figure is not None:
            files.figures.append(save_png(figure, out / filename))
            blocks.append(("img", alt, filename))


def _add_refined(
    blocks: list[Block],
    name: str,
    estimates: list[dict[str, Any]],
    milestones: list[Milestone],
    out: Path,
    files: ReportFiles,
) -> None:
    """Add the refined LLCs at the last estimate, and the figure of the per-component ones
    with their milestones."""
    last = estimates[-1]
    refined = [
        k.removesuffix("/mean")
        for k in last
        if k.endswith("/mean") and k != f"{name}/mean" and _finite(last[k])
    ]
    if not refined:
        return
    blocks.append(("h3", f"Refined LLCs at the last estimate (step {last['step']})"))
    rows = [[p, _fmt(last[f"{p}/mean"]), _fmt(last.get(f"{p}/std"))] for p in refined]
    blocks.append(("table", ["estimate", "mean", "std"], rows))
    if any(p.startswith(f"r{name}/") for p in refined):
        family = f"r{name}"
        own = [m for m in milestones if m.series.startswith(f"{family}/")]
        figure = _draw(blocks, plot_rllc_heads, estimates, family=family, milestones=own)
        if figure is not None:
            files.figures.append(save_png(figure, out / f"{name}_rllc.png"))
            blocks.append(("img", f"r{name} per component", f"{name}_rllc.png"))


def _draw(blocks: list[Block], plot: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``plot(*args, **kwargs)``, or None with a note in ``blocks`` when matplotlib is
    missing."""
    try:
        return plot(*args, **kwargs)
    except ImportError as error:
        if ("p", f"No figures: {error}") not in blocks:
            blocks.append(("p", f"No figures: {error}"))
        return None


def _stage_table(
    stages: Sequence[Stage], estimates: Sequence[Mapping[str, Any]], key: str | None
) -> tuple[list[str], list[list[str]]]:
    """One row per stage; with ``key`` (a recorded series), its value at the stage's ends."""
    header = ["stage", "start", "end", "trend"]
    if key is not None:
        header += [f"{key} at start", f"{key} at end"]
    last_step = estimates[-1]["step"]
    rows = []
    for s in stages:
        end = s.end if s.end is not None else last_step
        row = [
            str(s.index),
            str(s.start),
            str(s.end) if s.end is not None else f"{last_step} (last)",
            s.trend,
        ]
        if key is not None:
            row += [_fmt(_nearest(estimates, s.start, key)), _fmt(_nearest(estimates, end, key))]
        rows.append(row)
    return header, rows


def _nearest(estimates: Sequence[Mapping[str, Any]], step: int, key: str) -> float | None:
    """``key`` of the estimate whose step is nearest ``step`` in log(1 + step)."""
    having = [r for r in estimates if _finite(r.get(key))]
    if not having:
        return None
    best = min(having, key=lambda r: abs(math.log1p(r["step"]) - math.log1p(step)))
    return best[key]


def _stages_and_milestones(path: Path) -> tuple[dict[str, list[Stage]], list[Milestone]]:
    """The stages by series and the milestones to mark (refined if any, else online)."""
    if not path.exists():
        return {}, []
    content = json.loads(path.read_text())
    stages = {
        series: [Stage(**s) for s in found] for series, found in content.get("stages", {}).items()
    }
    marked = content.get("refined") or content.get("online") or []
    return stages, [Milestone.from_dict(m) for m in marked]


def _milestone_rows(path: Path) -> list[list[str]]:
    content = json.loads(path.read_text())
    rows = []
    for found in ("online", "refined"):
        for m in map(Milestone.from_dict, content.get(found, [])):
            rows.append(
                [
                    m.series,
                    m.kind,
                    str(m.step),
                    str(m.detected_at),
                    _fmt(m.value),
                    found if m.revises is None else f"{found}, moved from {m.revises}",
                    path.name,
                ]
            )
    return rows


def _warning_blocks(
    records: Sequence[Mapping[str, Any]], failures: Sequence[Mapping[str, Any]]
) -> list[Block]:
    """Each kind of warning (its text with the numbers left out) with the estimates and steps
    that raised it, then each failure."""
    seen: dict[str, dict[str, list[str]]] = {}
    for record in records:
        for key, messages in record.items():
            if key.endswith("/warnings"):
                for message in messages or []:
                    kind = _NUMBER.sub("…", message)
                    where = seen.setdefault(kind, {}).setdefault(key.removesuffix("/warnings"), [])
                    where.append(str(record["step"]))
    items = [
        f"{kind} ({'; '.join(f'`{p}` at steps {_some(steps)}' for p, steps in where.items())})"
        for kind, where in seen.items()
    ]
    items += [f"step {r.get('step')}: estimate failed: {r['error']}" for r in failures]
    return [("h3", "Warnings"), ("ul", items) if items else ("p", "None.")]


def _some(steps: Sequence[str], shown: int = 8) -> str:
    more = f" and {len(steps) - shown} more" if len(steps) > shown else ""
    return ", ".join(steps[:shown]) + more


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if _finite(value) else "–"


def to_markdown(blocks: Sequence[Block]) -> str:
    """The blocks as markdown."""
    parts = []
    for kind, *content in blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append("#" * int(kind[1]) + " " + content[0])
        elif kind == "p":
            parts.append(content[0])
        elif kind == "table":
            header, rows = content
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            parts.append("\n".join(lines))
        elif kind == "img":
            parts.append(f"![{content[0]}]({content[1]})")
        elif kind == "ul":
            parts.append("\n".join(f"- {item}" for item in content[0]))
    return "\n\n".join(parts) + "\n"


def to_html(blocks: Sequence[Block]) -> str:
    """The blocks as one self-contained HTML page (images by relative path)."""
    body = []
    for kind, *content in blocks:
        if kind in ("h1", "h2", "h3", "p"):
            body.append(f"<{kind}>{_inline(content[0])}</{kind}>")
        elif kind == "table":
            header, rows = content
            head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
            cells = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows
            )
            body.append(f"<table><tr>{head}</tr>{cells}</table>")
        elif kind == "img":
            alt, src = (html.escape(c, quote=True) for c in content)
            body.append(f'<p><img src="{src}" alt="{alt}"></p>')
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in content[0]) + "</ul>")
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
        "img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>lightning-devinterp report'
        f"</title><style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _inline(text: str) -> str:
    """Escaped text with markdown's `code` and **bold** as HTML."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
