"""Numeric kernels of the milestone detector: residuals, line and hinge fits, knot search.

Pure numpy: arrays and floats in, numbers out, no detector state. ``x`` is log10(step)
of each bin, ``y`` its mean value and ``w`` its weight (the number of points in it).
The rules that read these numbers are in :mod:`lightning_devinterp.milestones.rules`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

SUSTAIN = 1.5  # a range is at most this many times the range of the running median
DESCENT_PASSES = 8  # coordinate-descent passes of the offline fit, at most


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


def line_basis(x: np.ndarray, knots: Sequence[float]) -> np.ndarray:
    """Columns of a continuous piecewise-linear fit bent at ``knots`` (positions in x): 1,
    centred x, a hinge per knot."""
    return np.stack([np.ones_like(x), x - x.mean(), *hinges(x, np.asarray(knots))], axis=1)


def hinges(x: np.ndarray, at: np.ndarray) -> np.ndarray:
    """One row per position in ``at``: the hinge ``max(x - a, 0)`` bending at ``a``."""
    return np.maximum(x[None, :] - at[:, None], 0.0)


def _bend_parts(
    basis_w: np.ndarray, yw: np.ndarray, hinge_w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What a bend adds to a weighted fit: (numerator, denominator, r, q'y, hinges' q, the
    residuals without it)."""
    q, r = np.linalg.qr(basis_w)
    qy = q.T @ yw
    e = yw - q @ qy
    qh = hinge_w @ q
    ht = hinge_w - qh @ q.T
    den = np.maximum((ht * ht).sum(axis=1), 1e-300)
    return ht @ e, den, r, qy, qh, e


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
    base = line_basis(x, [] if base_knot is None else [x[base_knot]])
    num, den, r, qy, qh, _ = _bend_parts(
        base * sw[:, None], y * sw, hinges(x, x[knots]) * sw[None, :]
    )
    c = num / den
    # fitted value at each knot: base part of (y - c h), since h vanishes at its knot
    coef = np.linalg.solve(r, qy[:, None] - qh.T * c[None, :])
    value = (base[knots] * coef.T).sum(axis=1)
    return num * num / den, value


def best_knot(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, first: int, last: int
) -> tuple[int, float, float] | None:
    """Best knot between bins ``first`` and ``last`` of a line bent once (quarter-bin grid).

    Returns:
        (bin nearest the best knot, fitted value at the knot, the knot's position in x), or
        None when no grid position gives a solvable fit.
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
    return int(np.argmin(np.abs(x - xk[best]))), float(beta[best, 0]), float(xk[best])


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
def bend_scan(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, knots: Sequence[float], grid: np.ndarray
) -> tuple[float, np.ndarray]:
    """Weighted squared residuals of the fit bent at ``knots``, and of that fit with one more
    bend at each position of ``grid`` (a bend the data cannot tell apart saves nothing)."""
    sw = np.sqrt(w)
    yw = y * sw
    h = hinges(x, grid) * sw[None, :]
    num, den, *_, e = _bend_parts(line_basis(x, knots) * sw[:, None], yw, h)
    gain = np.where(den > 1e-10 * (h * h).sum(axis=1), num * num / den, 0.0)
    rss = float(e @ e)
    return rss, rss - gain


def descend_knots(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, knots: list[float], grid: np.ndarray
) -> tuple[float, list[float]]:
    """Moves one knot at a time to its best grid position until none moves: (rss, knots)."""
    best = bend_scan(x, y, w, knots, grid[:0])[0]
    for _ in range(DESCENT_PASSES):
        moved = False
        for i in range(len(knots)):
            others = knots[:i] + knots[i + 1 :]
            rss = bend_scan(x, y, w, others, grid)[1]
            j = int(np.argmin(rss))
            if rss[j] < best * (1 - 1e-9):
                best, knots, moved = float(rss[j]), sorted([*others, float(grid[j])]), True
        if not moved:
            break
    return best, knots


def knot_path(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, grid: np.ndarray, max_knots: int
) -> Iterator[tuple[float, list[float]]]:
    """Best continuous piecewise-linear fits with 0, 1, ... ``max_knots`` knots on ``grid``,
    one after the other.

    Each size starts twice, from the previous fit plus its best extra knot and from knots
    spread evenly, and moves its knots by coordinate descent; the better fit is kept.

    Yields:
        (weighted squared residuals, knot positions) for each number of knots.
    """
    knots: list[float] = []
    rss, extra = bend_scan(x, y, w, knots, grid)
    yield rss, knots
    for k in range(1, max_knots + 1):
        grown = sorted([*knots, float(grid[int(np.argmin(extra))])])
        even = np.linspace(x[0], x[-1], k + 2)[1:-1].tolist()
        rss, knots = min(descend_knots(x, y, w, grown, grid), descend_knots(x, y, w, even, grid))
        yield rss, knots
        extra = bend_scan(x, y, w, knots, grid)[1]


def joint_slopes(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, knots: list[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fit bent at ``knots``: fitted values, each piece's slope, and each slope's standard
    error for unit noise (one observation of variance 1, weights are counts)."""
    design = line_basis(x, knots)
    a = design * np.sqrt(w)[:, None]
    cov = np.linalg.pinv(a.T @ a)
    coef = cov @ (a.T @ (y * np.sqrt(w)))
    pick = np.tril(np.ones((len(knots) + 1, len(knots) + 1)))  # piece j: x slope + j hinges
    pick = np.concatenate([np.zeros((len(knots) + 1, 1)), pick], axis=1)
    se = np.sqrt(np.maximum(np.einsum("ip,pq,iq->i", pick, cov, pick), 0.0))
    return design @ coef, pick @ coef, se
