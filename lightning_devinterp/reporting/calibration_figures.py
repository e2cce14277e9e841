"""Figures of a calibration: the LLC against the step size for each nβ, and the traces of
the candidate settings. Built like :mod:`lightning_devinterp.reporting.figures` (no pyplot;
matplotlib imported on first use, ``pip install lightning-devinterp[plot]``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from lightning_devinterp.estimators.calibration import Calibration
from lightning_devinterp.reporting.figures import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_calibration_llc(calibration: Calibration) -> Figure:
    """The estimate (mean ± std over chains) against ε on a log axis: one panel per nβ, one
    line per localization γ. Healthy settings are filled circles, unhealthy ones crosses (a
    diverged setting has no value and is left out); the recommended one is a star. The value
    axis spans the healthy settings (an unstable step's estimate can be orders of magnitude
    off), all of them when none is healthy.

    Raises:
        ValueError: no setting of the calibration has a finite estimate.
    """
    rows = calibration.table
    if not any(math.isfinite(r["llc"]) for r in rows):
        raise ValueError("No setting of this calibration has a finite estimate to plot.")
    nbetas = sorted({r["nbeta"] for r in rows}, reverse=True)
    fig = new_figure(figsize=(5 * len(nbetas), 4), layout="constrained")
    from matplotlib.ticker import NullFormatter  # after new_figure: matplotlib is there

    axes = fig.subplots(1, len(nbetas), sharey=True, squeeze=False)[0]
    for ax, nbeta in zip(axes, nbetas, strict=True):
        for gamma in sorted({r["localization"] for r in rows if r["nbeta"] == nbeta}):
            group = sorted(
                (r for r in rows if r["nbeta"] == nbeta and r["localization"] == gamma),
                key=lambda r: r["lr"],
            )
            group = [r for r in group if math.isfinite(r["llc"])]
            if not group:
                continue
            lr = np.array([r["lr"] for r in group])
            llc = np.array([r["llc"] for r in group])
            std = np.array([r["std"] for r in group])
            (line,) = ax.plot(lr, llc, lw=1.2, label=f"γ = {gamma:g}")
            ax.fill_between(lr, llc - std, llc + std, color=line.get_color(), alpha=0.15, lw=0)
            healthy = np.array([bool(r["healthy"]) for r in group])
            ax.plot(lr[healthy], llc[healthy], "o", color=line.get_color(), ms=5)
            ax.plot(lr[~healthy], llc[~healthy], "x", color=line.get_color(), ms=7)
        chosen = rows[calibration.chosen]
        if chosen["nbeta"] == nbeta and math.isfinite(chosen["llc"]):
            ax.plot(chosen["lr"], chosen["llc"], "*", color="black", ms=14, label="recommended")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # no crowded labels within a decade
        ax.set(xlabel="lr (ε)", title=f"nβ = {nbeta:.4g}")
        ax.legend(fontsize=8, loc="best")
    axes[0].set_ylabel("LLC (second half of the draws)")
    shown = [r for r in rows if r["healthy"]] or [r for r in rows if math.isfinite(r["llc"])]
    low = min(r["llc"] - r["std"] for r in shown)
    high = max(r["llc"] + r["std"] for r in shown)
    margin = 0.15 * (high - low) or 0.15 * abs(high) or 1.0
    axes[0].set_ylim(low - margin, high + margin)  # shared by all panels
    return fig


def plot_calibration_traces(calibration: Calibration) -> Figure:
    """The per-draw LLC trace ``nβ (L(w) − L(w*))`` of the candidates: the settings of the
    recommended (nβ, γ) that are healthy (or, when none is, that did not diverge), as the mean
    over chains against the draw, the recommended one drawn thick. A healthy trace rises
    during the burn-in and then stays flat.

    Raises:
        ValueError: every setting diverged, so there is no trace to draw.
    """
    rows = calibration.table
    chosen = rows[calibration.chosen]
    group = [
        i
        for i, r in enumerate(rows)
        if (r["nbeta"], r["localization"]) == (chosen["nbeta"], chosen["localization"])
    ]
    candidates = [i for i in group if rows[i]["healthy"]] or [
        i for i in group if not rows[i]["diverged_chains"]
    ]
    if not candidates:
        raise ValueError("Every setting of this calibration diverged: there is no trace to draw.")
    fig = new_figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for i in candidates:
        trace = calibration.estimates[i].llc_trace
        mean = np.nanmean(trace.double().numpy(), axis=0)
        recommended = i == calibration.chosen
        ax.plot(
            np.arange(mean.size),
            mean,
            lw=2.2 if recommended else 1.0,
            color="black" if recommended else None,
            label=f"lr = {rows[i]['lr']:.2g}" + (" (recommended)" if recommended else ""),
        )
    ax.axvline(mean.size // 2, color="gray", ls=":", lw=1)
    ax.annotate(
        "burn-in | estimate",
        (mean.size // 2, 0.98),
        xycoords=("data", "axes fraction"),
        ha="center",
        va="top",
        fontsize=7,
        color="gray",
    )
    ax.set(
        xlabel="draw",
        ylabel="nβ (L(w) − L(w*)), mean over chains",
        title=f"calibration traces, nβ = {chosen['nbeta']:.4g}, γ = {chosen['localization']:g}",
    )
    ax.legend(fontsize=7, loc="lower right")
    return fig
