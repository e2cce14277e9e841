"""Figures: pure functions of plain data (history records, milestones, arrays) that return a
matplotlib ``Figure``, :func:`figure_image` (drawn once) and :func:`save_png`.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot), so they never
change the user's backend, never accumulate in pyplot's registry, and render headless.
matplotlib is imported on first use (``pip install lightning-devinterp[plot]``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lightning_devinterp.milestones.records import Milestone, Stage

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Shading of a stage by what the series does in it.
TREND_COLORS = {"rising": "tab:red", "falling": "tab:blue", "flat": "tab:gray"}

_HEAD = re.compile(r"^(l\d+)h\d+$")


def new_figure(**kwargs: Any) -> Figure:
    """A matplotlib ``Figure`` detached from pyplot.

    Raises:
        ImportError: matplotlib is not installed; the message says how to install it.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "Figures need matplotlib: pip install lightning-devinterp[plot]"
        ) from error
    return Figure(**kwargs)


def figure_image(figure: Figure, dpi: int = 100) -> np.ndarray:
    """``figure`` drawn once, at ``dpi``: an RGB array of shape (height, width, 3), for a PNG
    file and the loggers alike (each would otherwise draw it again). The figure keeps its own
    dpi and canvas (a user's pyplot window stays as it was)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    own_dpi, own_canvas = figure.dpi, figure.canvas
    try:
        figure.set_dpi(dpi)
        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()
    finally:
        figure.set_dpi(own_dpi)
        figure.set_canvas(own_canvas)


def save_png(figure: Figure | np.ndarray, path: str | Path, dpi: int = 100) -> Path:
    """Write ``figure`` (or its :func:`figure_image`) as a PNG to ``path`` (parent folders
    created); returns the path."""
    from PIL import Image  # matplotlib's own PNG writer

    image = figure if isinstance(figure, np.ndarray) else figure_image(figure, dpi)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="png")
    return path


def plot_llc_curve(
    history: Sequence[Mapping[str, Any]],
    stages: Sequence[Stage] = (),
    milestones: Sequence[Milestone] = (),
    *,
    prefix: str = "llc",
    title: str | None = None,
) -> Figure:
    """The estimate ``<prefix>/mean`` against the step on a log axis, with a ±std band
    (``<prefix>/std``), the stages shaded by trend, the milestones marked and the extra
    estimates of the adaptive schedule ringed.

    Args:
        history: records as ``LLCMonitor.history`` or its JSON-lines file holds them; records
            without a finite value (failed estimates) and step 0 (which has no place on a log
            axis) are left out.
        stages: shaded from ``start`` to ``end`` (the last step for the current stage),
            coloured by :data:`TREND_COLORS`.
        milestones: a dashed line at each ``step`` of the series, labelled with its kind; a
            faint dotted one at each of another series.
        prefix: the metric family (``"llc"``, ``"rllc/l0h1"``, ``"llc_code"``, ...).
        title: default the prefix.

    Raises:
        ValueError: no record has a finite ``<prefix>/mean`` at a positive step.
    """
    return plot_curve(
        history,
        f"{prefix}/mean",
        std_key=f"{prefix}/std",
        stages=stages,
        milestones=milestones,
        ylabel=f"{prefix} (mean ± std over chains)",
        title=title or prefix,
        series=prefix,
    )


def plot_train_loss(
    points: Sequence[tuple[int, float]],
    stages: Sequence[Stage] = (),
    milestones: Sequence[Milestone] = (),
    series: str = "train_loss",
) -> Figure:
    """The training loss as its milestone detector reads it: ``points`` are (step, log of the
    mean loss of a log-step bin); its stages shaded, its milestones marked.

    Raises:
        ValueError: no point at a positive step.
    """
    return plot_curve(
        [{"step": step, series: value} for step, value in points],
        series,
        stages=stages,
        milestones=milestones,
        ylabel="log training loss (mean over log-step bins)",
        title=f"{series}: stages and milestones",
        series=series,
    )


def plot_curve(
    history: Sequence[Mapping[str, Any]],
    key: str,
    *,
    std_key: str | None = None,
    stages: Sequence[Stage] = (),
    milestones: Sequence[Milestone] = (),
    ylabel: str | None = None,
    title: str | None = None,
    series: str | None = None,
) -> Figure:
    """Any recorded series (``llc/init_loss``, ...) as :func:`plot_llc_curve` draws the LLC;
    with ``std_key``, a ±std band and error bars. Milestones of ``series`` are labelled with
    their kind, others faint and unlabelled (all labelled with series and kind when ``series``
    is None).

    Raises:
        ValueError: no record has a finite ``key`` at a positive step.
    """
    steps, mean, std = _series(history, key, std_key)
    fig = new_figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    if std_key is not None:
        ax.fill_between(steps, mean - std, mean + std, color="tab:purple", alpha=0.25, lw=0)
    ax.errorbar(
        steps,
        mean,
        yerr=std if std_key is not None else None,
        color="tab:purple",
        marker="o",
        ms=3,
        lw=1.2,
        capsize=2,
    )
    extra = np.isin(steps, _adaptive_steps(history))
    if extra.any():
        ax.plot(steps[extra], mean[extra], "o", mfc="none", mec="tab:orange", ms=8, mew=1.2,
                label="after a loss bend")  # fmt: skip
    last = float(steps[-1])
    shaded = set()
    for stage in stages:
        start = max(float(stage.start), float(steps[0]))
        end = last if stage.end is None else float(stage.end)
        if end <= start:
            continue
        label = None if stage.trend in shaded else stage.trend
        shaded.add(stage.trend)
        color = TREND_COLORS.get(stage.trend, "tab:olive")
        ax.axvspan(start, end, color=color, alpha=0.12, lw=0, label=label)
    others = _mark_milestones(ax, milestones, series)
    ax.set_xscale("log")
    ax.set(xlabel="step", ylabel=ylabel or key, title=title or key)
    if shaded or extra.any() or others:
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8,
            title="stage trend" if shaded else None,
            title_fontsize=8,
        )
    return fig


def _mark_milestones(ax: Axes, milestones: Sequence[Milestone], series: str | None) -> bool:
    """A dashed line at each milestone of ``series``, labelled with its kind; a faint dotted
    one, unlabelled, at each of another series (their labels would hide the curve's own). Returns
    whether there were any of other series."""
    others = False
    for m in milestones:
        if m.step <= 0:
            continue
        if series is not None and m.series != series:
            label = None if others else "other series' milestones"
            ax.axvline(m.step, color="grey", ls=":", lw=0.7, alpha=0.7, label=label)
            others = True
            continue
        ax.axvline(m.step, color="black", ls="--", lw=0.8)
        ax.annotate(
            m.kind if series is not None else f"{m.series} {m.kind}",
            (m.step, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
        )
    return others


def _adaptive_steps(history: Sequence[Mapping[str, Any]]) -> list[int]:
    """Steps of the extra estimates taken after bends of the training loss (``*/why``)."""
    return [
        r["step"]
        for r in history
        if any(k.endswith("/why") and v == "adaptive" for k, v in r.items())
    ]


def plot_formation(
    loss: Sequence[tuple[int, float]],
    llc: Sequence[tuple[int, float]],
    milestones: Sequence[Milestone],
    formation: int | None,
    tolerance: float,
) -> Figure:
    """Two panels on one log-step axis: a loss (the demo's, on copied halves) and the LLC,
    every milestone dashed, and the step where the loss fell fastest in green with
    ``tolerance`` decades either side shaded."""
    if not llc:
        raise ValueError("no LLC was recorded")
    fig = new_figure(figsize=(7, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(*zip(*[p for p in loss if p[0] > 0], strict=True), marker="o", ms=2)
    top.set(ylabel="loss on copied halves", title="Induction heads forming")
    bottom.plot(*zip(*llc, strict=True), color="tab:purple", marker="o", ms=3)
    bottom.set(xlabel="step", ylabel="LLC", xscale="log")
    for ax in (top, bottom):
        if formation is not None:
            band = 10**tolerance
            ax.axvspan(formation / band, formation * band, color="tab:green", alpha=0.1, lw=0)
            ax.axvline(formation, color="tab:green", lw=1.5)
        for m in milestones:
            if m.step > 0:
                ax.axvline(m.step, color="black", ls="--", lw=0.7)
    labels: dict[int, list[str]] = {}
    for m in milestones:
        if m.step > 0:
            labels.setdefault(m.step, []).append(f"{m.series} {m.kind}")
    for step, names in labels.items():
        text = ", ".join(names)
        label = bottom.annotate(
            text, (step, 0.02), xycoords=("data", "axes fraction"), rotation=90, fontsize=7
        )
        label.set_in_layout(False)  # long labels must not squeeze the panels
    return fig


def component_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """Attention-head names (``l<layer>h<head>``) grouped by layer; any other name goes to
    the group ``"components"``."""
    groups: dict[str, list[str]] = {}
    for name in names:
        match = _HEAD.match(name)
        groups.setdefault(match.group(1) if match else "components", []).append(name)
    return groups


def refined_components(history: Sequence[Mapping[str, Any]], family: str = "rllc") -> list[str]:
    """The component names with a ``<family>/<component>/mean`` entry, in order of
    appearance."""
    names: dict[str, None] = {}
    pattern = re.compile(rf"^{re.escape(family)}/(.+)/mean$")
    for record in history:
        for key in record:
            match = pattern.match(key)
            if match:
                names.setdefault(match.group(1))
    return list(names)


def plot_rllc_heads(
    history: Sequence[Mapping[str, Any]],
    groups: Mapping[str, Sequence[str]] | None = None,
    *,
    family: str = "rllc",
    title: str | None = None,
    milestones: Sequence[Milestone] = (),
) -> Figure:
    """Refined LLCs over training: one panel per component group (a layer), one line per
    component (a head), on a log-step axis, each component's milestones marked on its line.

    Args:
        history: records with ``<family>/<component>/mean`` entries.
        groups: component names by group; default from the names (``l0h3`` is in ``l0``).
        family: ``"rllc"``, or ``"rllc_<data>"`` for a data-and-weight-refined family.
        title: default ``"<family> per component"``.
        milestones: those of series ``<family>/<component>`` are drawn as diamonds in the
            component's colour at their step and fitted value (others are left out).

    Raises:
        ValueError: the history has no ``<family>/<component>/mean`` entry.
    """
    names = refined_components(history, family)
    if not names:
        raise ValueError(
            f"No '{family}/<component>/mean' entries in the history: refined LLCs need "
            "LLCMonitor(components='heads') or a list of Component."
        )
    groups = groups or component_groups(names)
    fig = new_figure(figsize=(4.5 * len(groups), 3.8), layout="constrained")
    axes = fig.subplots(1, len(groups), sharey=True, squeeze=False)[0]
    marked = False
    for ax, (group, members) in zip(axes, groups.items(), strict=True):
        for name in members:
            steps, mean, _ = _series(history, f"{family}/{name}/mean", required=False)
            if not len(steps):
                continue
            (line,) = ax.plot(steps, mean, marker="o", ms=2.5, lw=1.2, label=name)
            own = f"{family}/{name}"
            marks = [(m.step, m.value) for m in milestones if m.series == own and m.step > 0]
            if marks:
                ax.plot(*zip(*marks, strict=True), "D", ms=6, color=line.get_color(), mec="black")
                marked = True
        ax.set_xscale("log")
        ax.set(title=group, xlabel="step")
        ax.legend(fontsize=7, ncol=2)
    axes[0].set_ylabel(f"{family} (mean over chains)")
    key = " (diamonds: milestones)" if marked else ""
    fig.suptitle((title or f"{family} per component") + key)
    return fig


def plot_response_matrix(
    matrix: Any,
    probes: Sequence[str],
    components: Sequence[str],
    title: str | None = None,
) -> Figure:
    """A probes x components heatmap on a diverging colormap centred at 0.

    Args:
        matrix: array-like of shape ``(len(probes), len(components))`` (for example
            susceptibilities); NaN entries are left blank.
        probes: row labels.
        components: column labels.
        title: default ``"Response matrix"``.

    Raises:
        ValueError: the shape of ``matrix`` does not match the labels.
    """
    values = np.asarray(matrix, dtype=float)
    if values.shape != (len(probes), len(components)):
        raise ValueError(
            f"matrix has shape {values.shape} but there are {len(probes)} probes and "
            f"{len(components)} components; pass a (probes, components) matrix."
        )
    finite = np.abs(values[np.isfinite(values)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    fig = new_figure(
        figsize=(1.2 + 0.5 * len(components), 1.2 + 0.4 * len(probes)), layout="constrained"
    )
    ax = fig.subplots()
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(components)), [str(c) for c in components], rotation=90)
    ax.set_yticks(range(len(probes)), [str(p) for p in probes])
    ax.set(xlabel="component", ylabel="probe", title=title or "Response matrix")
    fig.colorbar(image, ax=ax, label="response")
    return fig


def plot_trajectory(
    steps: Any,
    scores: Any,
    milestones: Sequence[Milestone] = (),
    title: str = "Essential dynamics",
) -> Figure:
    """An essential-dynamics trajectory in its top two principal components, coloured by
    log10(step), each milestone labelled with its step at the nearest checkpoint.

    Args:
        steps: the checkpoints' steps, shape ``(n,)``.
        scores: their principal-component scores, shape ``(n, k)`` with ``k >= 2``.
        milestones: marked at the checkpoint nearest to their ``step``.
        title: the axes' title.

    Raises:
        ValueError: the shapes do not match.
    """
    steps, scores = np.asarray(steps), np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] < 2 or len(scores) != len(steps):
        raise ValueError(
            f"scores has shape {scores.shape} for {len(steps)} steps; pass (steps, components) "
            "scores with at least two components."
        )
    fig = new_figure(figsize=(5, 4), layout="constrained")
    ax = fig.subplots()
    points = ax.scatter(scores[:, 0], scores[:, 1], c=np.log10(np.maximum(steps, 1)), s=12)
    ax.plot(scores[:, 0], scores[:, 1], lw=0.6, color="grey")
    for m in milestones:
        i = int(np.argmin(np.abs(steps - m.step)))
        ax.annotate(str(m.step), scores[i, :2], color="red")
    fig.colorbar(points, ax=ax, label="log10(step)")
    ax.set(xlabel="PC1", ylabel="PC2", title=title)
    return fig


def _series(
    history: Sequence[Mapping[str, Any]],
    key: str,
    std_key: str | None = None,
    required: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps (> 0), values and stds (0 when missing) of ``key``, sorted by step."""
    rows = []
    for record in history:
        value = record.get(key)
        std = record.get(std_key) if std_key else None
        if value is None or not math.isfinite(value) or record.get("step", 0) <= 0:
            continue
        rows.append((record["step"], value, std if std is not None and math.isfinite(std) else 0.0))
    if required and not rows:
        raise ValueError(
            f"No record has a finite '{key}' at a step > 0; nothing to plot. Check the metric "
            "prefix (LLCMonitor's name) and that estimates succeeded."
        )
    rows.sort()
    table = np.asarray(rows, dtype=float).reshape(-1, 3)
    return table[:, 0], table[:, 1], table[:, 2]
