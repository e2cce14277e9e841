"""Numeric kernels of the milestone detector: residuals, line and hinge fits, knot search.

Pure numpy: arrays and floats in, numbers out, no detector state. ``x`` is log10(step)
of each bin, ``y`` its mean value and ``w`` its weight (the number of points in it).
The rules that read these numbers are in :mod:`lightning_devinterp.milestones.rules`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

SUSTAIN = 1.5  # a range is at most this many times the range of the running median
KNOT_GAP = 2  # bins between two knots of the offline fit


class LineFit(NamedTuple):
    """A weighted line fit: slope, sqrt(sum w (x - xbar)^2), and the weighted means."""

    slope: float
    root_sxx: float
    xbar: float
    ybar: float

    def slope_se(self, sigma: float) -> float:
        """Standard error of the slope for observations of noise ``sigma`` (inf if none)."""
        return sigma / self.root_sxx if self.root_sxx > 0 else math.inf

    def at(self, x: float) -> float:
        """The line's value at ``x``."""
        return self.ybar + self.slope * (x - self.xbar)


def line_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> LineFit:
    """Weighted least-squares line through the bins (slope 0 when all x coincide)."""
    sw = w.sum()
    xbar = float((w * x).sum() / sw)
    ybar = float((w * y).sum() / sw)
    xc = x - xbar
    sxx = float((w * xc * xc).sum())
    if sxx <= 0.0:
        return LineFit(0.0, 0.0, xbar, ybar)
    slope = float((w * xc * (y - ybar)).sum() / sxx)
    return LineFit(slope, math.sqrt(sxx), xbar, ybar)


def norm_residual(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Residuals of each interior point from the line through its two neighbours.

    Normalized so that each has the variance of one observation (weights are counts).
    """
    xl, xm, xr = x[:-2], x[1:-1], x[2:]
    span = xr - xl
    a = (xr - xm) / span
    b = (xm - xl) / span
    r = y[1:-1] - (a * y[:-2] + b * y[2:])
    var = 1.0 / w[1:-1] + a * a / w[:-2] + b * b / w[2:]
    return r / np.sqrt(var)


def sustained_range(y: np.ndarray, raw: float, confirm: int) -> float:
    """The range ``raw`` of a series, capped by the excursions that last.

    A running median over ``2 * confirm + 1`` bins (windows truncated at the ends) removes
    any excursion of at most ``confirm`` bins; the range is capped at ``SUSTAIN`` times the
    range of that median. A brief deep dip (an LLC estimated while the weights cross
    from one saddle to the next) then does not widen the flat band for the rest of the
    series, while a series without such excursions keeps its plain range.
    """
    width = 2 * confirm + 1
    if len(y) < width:
        return raw
    pad = np.full(confirm, np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(np.concatenate([pad, y, pad]), width)
    median = np.nanmedian(windows, axis=1)
    return min(raw, SUSTAIN * float(median.max() - median.min()))


def is_hump(x: np.ndarray, y: np.ndarray, w: np.ndarray, sigma: float, z: float) -> bool:
    """Whether a quadratic fit rises then falls (or the reverse) across the bins.

    True when the fitted slopes at both ends are beyond ``z`` standard errors and of
    opposite signs: the segment is the round top of a peak (bottom of a trough), not a
    plateau, even if a line through it is flat.
    """
    if len(x) < 5:
        return False
    u = x - (w * x).sum() / w.sum()
    design = np.stack([np.ones_like(u), u, u * u], axis=1)
    gram = design.T @ (design * w[:, None])
    try:
        inv = np.linalg.inv(gram)
    except np.linalg.LinAlgError:
        return False
    coef = inv @ (design.T @ (w * y))
    zs = []
    for end in (u[0], u[-1]):
        g = np.array([0.0, 1.0, 2.0 * end])
        var = float(g @ inv @ g) * sigma * sigma
        zs.append(float(g @ coef) / math.sqrt(var) if var > 0 else 0.0)
    return zs[0] * zs[1] < 0 and min(abs(zs[0]), abs(zs[1])) > z


def line_basis(x: np.ndarray, knots: list[int]) -> np.ndarray:
    """Columns of a continuous piecewise-linear fit: 1, centred x, a hinge per knot."""
    hinges = [np.maximum(x - x[k], 0.0) for k in knots]
    return np.stack([np.ones_like(x), x - x.mean(), *hinges], axis=1)


def hinges(x: np.ndarray, at: np.ndarray) -> np.ndarray:
    """One row per index in ``at``: the hinge ``max(x - x[k], 0)`` bending at bin k."""
    return np.maximum(x[None, :] - x[at][:, None], 0.0)


def _bend_parts(
    basis_w: np.ndarray, yw: np.ndarray, hinge_w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What a bend adds to a weighted fit: (numerator, denominator, r, q'y, hinges' q)."""
    q, r = np.linalg.qr(basis_w)
    qy = q.T @ yw
    e = yw - q @ qy
    qh = hinge_w @ q
    ht = hinge_w - qh @ q.T
    den = np.maximum((ht * ht).sum(axis=1), 1e-300)
    return ht @ e, den, r, qy, qh


def bend_gain(basis_w: np.ndarray, yw: np.ndarray, hinge_w: np.ndarray) -> np.ndarray:
    """Weighted residual sum of squares saved by adding each hinge row to the basis.

    All inputs are already multiplied by ``sqrt(w)``.
    """
    num, den, *_ = _bend_parts(basis_w, yw, hinge_w)
    return num * num / den


def hinge_scan(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, knots: np.ndarray, base_knot: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Improvement of one more bend in a continuous piecewise-linear fit, per knot.

    The null model is a line (``base_knot`` None) or a continuous line bent at
    ``base_knot``; the alternative adds a bend at one of ``knots`` (indices into x).

    Returns:
        (drss, value_at_knot): the weighted residual sum of squares saved by the extra
        bend at each knot, and the fitted value at that knot.
    """
    sw = np.sqrt(w)
    base = line_basis(x, [] if base_knot is None else [base_knot])
    num, den, r, qy, qh = _bend_parts(base * sw[:, None], y * sw, hinges(x, knots) * sw[None, :])
    c = num / den
    # fitted value at each knot: base part of (y - c h), since h vanishes at its knot
    coef = np.linalg.solve(r, qy[:, None] - qh.T * c[None, :])
    value = (base[knots] * coef.T).sum(axis=1)
    return num * num / den, value


def best_knot(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, first: int, last: int
) -> tuple[int, float] | None:
    """Best knot between bins ``first`` and ``last`` of a line bent once (quarter-bin grid).

    Returns:
        (bin nearest the best knot, fitted value at the knot), or None when no grid
        position gives a solvable fit.
    """
    xk = np.linspace(x[first], x[last], 4 * (last - first) + 1)
    d = x[None, :] - xk[:, None]
    design = np.stack([np.ones_like(d), np.minimum(d, 0.0), np.maximum(d, 0.0)], axis=2)
    gram = np.einsum("kip,kiq,i->kpq", design, design, w)
    rhs = np.einsum("kip,i->kp", design, w * y)
    ok = np.abs(np.linalg.det(gram)) > 1e-300
    if not ok.any():
        return None
    design, gram, rhs, xk = design[ok], gram[ok], rhs[ok], xk[ok]
    beta = np.linalg.solve(gram, rhs[..., None])[..., 0]
    res = y[None, :] - np.einsum("kip,kp->ki", design, beta)
    best = int(np.argmin((res * res * w[None, :]).sum(axis=1)))
    return int(np.argmin(np.abs(x - xk[best]))), float(beta[best, 0])


def smoothed_extreme(
    y: np.ndarray, w: np.ndarray, lo: int, hi: int, peak: bool
) -> tuple[int, float]:
    """Bin and value of the maximum (``peak``) or minimum of a three-bin weighted average.

    The average is taken over all of ``y``; the extreme is sought among bins lo..hi.
    """
    yw = np.convolve(y * w, np.ones(3), mode="same")
    ww = np.convolve(w, np.ones(3), mode="same")
    smooth = (yw / ww)[lo : hi + 1]
    j = int(np.argmax(smooth) if peak else np.argmin(smooth))
    return lo + j, float(smooth[j])


# ------------------------------------------------------------ offline knot placement
def _weighted_fit(x: np.ndarray, w: np.ndarray, y: np.ndarray, knots: list[int]) -> np.ndarray:
    """Least-squares fit of ``y * sqrt(w)`` on the weighted piecewise-linear basis."""
    a = line_basis(x, knots) * np.sqrt(w)[:, None]
    beta, *_ = np.linalg.lstsq(a, y * np.sqrt(w), rcond=None)
    return a @ beta


def _rss(x: np.ndarray, y: np.ndarray, w: np.ndarray, knots: list[int]) -> float:
    res = y * np.sqrt(w) - _weighted_fit(x, w, y, knots)
    return float(res @ res)


def piecewise_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, knots: list[int]) -> np.ndarray:
    """Fitted values of the continuous piecewise-linear fit with the given knots."""
    return _weighted_fit(x, w, y, knots) / np.sqrt(w)


def _allowed(n: int, knots: list[int], lo: int, hi: int) -> np.ndarray:
    """Candidate knots in lo..hi, away from the ends and ``KNOT_GAP`` from every knot."""
    cands = np.arange(max(lo, 2), min(hi, n - 3) + 1)
    for k in knots:
        cands = cands[np.abs(cands - k) >= KNOT_GAP]
    return cands


def _gains(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, knots: list[int], cands: np.ndarray
) -> np.ndarray:
    """:func:`bend_gain` of each candidate knot added to the fit with ``knots``."""
    sw = np.sqrt(w)
    return bend_gain(line_basis(x, knots) * sw[:, None], y * sw, hinges(x, cands) * sw[None, :])


def place_knots(x: np.ndarray, y: np.ndarray, w: np.ndarray, min_gain: float) -> list[int]:
    """Knots of a continuous piecewise-linear fit, each saving more than ``min_gain``.

    Knots are added greedily while the best one saves more than ``min_gain`` of weighted
    squared residuals, each is then moved (twice over) to its best position between
    its neighbours, and knots whose removal now costs no more than ``min_gain`` are
    removed, cheapest first.

    Returns:
        The knots, as sorted bin indices.
    """
    n = len(x)
    knots: list[int] = []
    for _ in range(n // 3):
        cands = _allowed(n, knots, 2, n - 3)
        if len(cands) == 0:
            break
        gain = _gains(x, y, w, knots, cands)
        best = int(np.argmax(gain))
        if gain[best] <= min_gain:
            break
        knots = sorted(knots + [int(cands[best])])
    for _ in range(2):
        for j in range(len(knots)):
            others = knots[:j] + knots[j + 1 :]
            lo = knots[j - 1] + KNOT_GAP if j > 0 else 2
            hi = knots[j + 1] - KNOT_GAP if j + 1 < len(knots) else n - 3
            cands = _allowed(n, others, lo, hi)
            if len(cands):
                knots[j] = int(cands[int(np.argmax(_gains(x, y, w, others, cands)))])
    while knots:
        full = _rss(x, y, w, knots)
        loss = [_rss(x, y, w, knots[:j] + knots[j + 1 :]) - full for j in range(len(knots))]
        j = int(np.argmin(loss))
        if loss[j] > min_gain:
            break
        del knots[j]
    return knots
