"""Essential dynamics: milestones where the model's function-space trajectory turns.

Stack the model's outputs on one fixed probe batch at each checkpoint into a matrix
(checkpoints x features), project it on its top principal components, smooth the path
along the checkpoints and look for the points where it turns sharply: local maxima of
the curvature (minima of the osculating-circle radius, i.e. the cusps of the path's
evolute). See PAPERS.md, "Stages and milestones".

Pure numpy. Smoothing is along the checkpoint index, so the checkpoints should be
evenly spaced in whatever axis the user cares about (linear or logarithmic in step).

Caveat: PCA of a random-walk-like trajectory gives Lissajous-like curves (the k-th
component is close to a cosine of k half-periods) and a smoothed random walk still
turns at every scale, so such a trajectory produces cusps that are artefacts. At the
default settings a pure Gaussian random walk of 150 checkpoints in 50 dimensions gives
about 3 cusps (up to 5), where a path made of straight segments gives exactly its
turns; raising ``prominence`` or ``sigma`` trades these artefacts against weak turns.
An ``explained_variance_ratio`` close to a random walk's (about 0.6, 0.15, 0.07 for the
first three components) is a warning sign worth checking before trusting a cusp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np

from lightning_devinterp.milestones.records import Milestone

_EDGE_MODES = ("reflect", "nearest")


def pca_trajectory(X: np.ndarray, n_components: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of a trajectory.

    Args:
        X: Trajectory matrix, checkpoints x features.
        n_components: Number of components to keep (at most ``min(X.shape)``).

    Returns:
        (scores, explained_variance_ratio): the checkpoints' coordinates on the top
        ``n_components`` components (checkpoints x k; the sign of each component is
        fixed so that its largest loading is positive), and the share of the total
        variance each of them explains.

    Raises:
        ValueError: If ``X`` is not a finite 2-D array or ``n_components`` is out of range.
    """
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 1:
        raise ValueError(
            f"X has shape {X.shape}; pass a 2-D array of checkpoints x features with at "
            "least 2 checkpoints (flatten each checkpoint's outputs into one row)."
        )
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or inf; drop or repair those checkpoints first.")
    kmax = min(X.shape)
    if isinstance(n_components, bool) or not isinstance(n_components, Integral):
        raise ValueError(f"n_components={n_components!r} must be an integer.")
    if not 1 <= n_components <= kmax:
        raise ValueError(
            f"n_components={n_components} must be between 1 and {kmax} "
            f"(min of checkpoints and features for X of shape {X.shape})."
        )
    Xc = X - X.mean(axis=0, keepdims=True)
    if Xc.shape[0] < Xc.shape[1]:  # fewer checkpoints than features: eigenvectors of the Gram
        evals, evecs = np.linalg.eigh(Xc @ Xc.T)  # matrix, ~17x faster than an SVD at 300 x 4096
        top = np.argsort(evals)[::-1][:n_components]
        s = np.sqrt(np.clip(evals[top], 0.0, None))
        u = evecs[:, top]
        vt = (u.T @ Xc) / np.where(s > 0, s, 1.0)[:, None]
    else:
        u, s, vt = np.linalg.svd(Xc, full_matrices=False)
        u, s, vt = u[:, :n_components], s[:n_components], vt[:n_components]
    signs = np.sign(vt[np.arange(n_components), np.argmax(np.abs(vt), axis=1)])
    signs[signs == 0] = 1.0
    scores = u * s * signs
    total = float((Xc * Xc).sum())
    ratio = s**2 / total if total > 0 else np.zeros_like(s)
    return scores, ratio


def smooth_trajectory(scores: np.ndarray, sigma: float, mode: str = "reflect") -> np.ndarray:
    """Gaussian smoothing of a trajectory along its first axis (the checkpoints).

    Args:
        scores: Array of shape (checkpoints,) or (checkpoints, k).
        sigma: Standard deviation of the Gaussian kernel, in checkpoints; 0 returns a
            copy.
        mode: Edge handling: ``"reflect"`` (mirror about the edge, repeating the edge
            point) or ``"nearest"`` (repeat the edge point).

    Returns:
        The smoothed array, same shape as ``scores``.
    """
    arr = np.asarray(scores, dtype=float)
    if not isinstance(sigma, Real) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma={sigma!r} must be a finite number >= 0 (in checkpoints).")
    if mode not in _EDGE_MODES:
        raise ValueError(f"mode={mode!r} must be one of {_EDGE_MODES}.")
    if sigma == 0 or arr.shape[0] == 0:
        return arr.copy()
    radius = max(int(math.ceil(4.0 * sigma)), 1)
    t = np.arange(-radius, radius + 1, dtype=float)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    n = arr.shape[0]
    idx = np.arange(-radius, n + radius)
    if mode == "nearest":
        idx = np.clip(idx, 0, n - 1)
    else:
        period = 2 * n
        idx = np.mod(idx, period)
        idx = np.where(idx >= n, period - 1 - idx, idx)
    padded = arr[idx]
    flat = padded.reshape(padded.shape[0], -1)
    out = np.empty((n, flat.shape[1]))
    for j in range(flat.shape[1]):
        out[:, j] = np.convolve(flat[:, j], kernel, mode="valid")
    return out.reshape(arr.shape)


def trajectory_curvature(path: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Curvature of a sampled path and the length of each sample's share of it.

    Args:
        path: Array (points x dims) sampled along a curve.

    Returns:
        (curvature, ds): the curvature at each point (1 / osculating-circle radius, in
        the path's units) and the arc length attributed to each point, so that
        ``curvature * ds`` sums to the total turning angle.
    """
    p = np.asarray(path, dtype=float)
    if p.ndim == 1:
        p = p[:, None]
    v = np.gradient(p, axis=0)
    a = np.gradient(v, axis=0)
    vv = (v * v).sum(axis=1)
    aa = (a * a).sum(axis=1)
    va = (v * a).sum(axis=1)
    speed = np.sqrt(vv)
    num = np.sqrt(np.maximum(vv * aa - va * va, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(speed > 0, num / np.maximum(speed, 1e-300) ** 3, 0.0)
    return kappa, speed


def _check_trajectory_args(
    steps: np.ndarray, X: np.ndarray, sigma: Any, min_angle: Any, prominence: Any, edge: Any
) -> None:
    """Raises a ValueError naming the first bad argument of :func:`find_trajectory_milestones`."""
    if steps.ndim != 1 or X.ndim != 2 or len(steps) != X.shape[0]:
        raise ValueError(
            f"steps has shape {steps.shape} and X {X.shape}: pass one step per row "
            "of X (checkpoints x features)."
        )
    if len(steps) > 1 and np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be strictly increasing; sort the checkpoints by step.")
    for name, val in (("min_angle", min_angle), ("prominence", prominence), ("edge", edge)):
        if not isinstance(val, Real) or not math.isfinite(val) or val < 0:
            raise ValueError(f"{name}={val!r} must be a finite number >= 0.")
    if not isinstance(sigma, Real) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma={sigma!r} must be a finite number > 0 (in checkpoints).")


def find_trajectory_milestones(
    steps: Sequence[int] | np.ndarray,
    X: np.ndarray,
    n_components: int = 3,
    sigma: float = 3.0,
    *,
    min_angle: float = 0.8,
    prominence: float = 4.0,
    edge: float = 2.0,
    min_separation: int | None = None,
    series: str = "essential_dynamics",
) -> list[Milestone]:
    """Milestones where the smoothed function-space trajectory turns sharply.

    The trajectory is projected on its top ``n_components`` principal components,
    smoothed with a Gaussian of ``sigma`` checkpoints, and its curvature computed in
    that space. A checkpoint is a cusp when its curvature is a local maximum, is at
    least ``prominence`` times the median curvature (so a path that curves evenly, like
    a circle arc, gives none), and the path turns by at least ``min_angle`` radians
    within ``2 * sigma`` checkpoints either side (so noise wiggles on a straight path give
    none). Checkpoints within ``edge * sigma`` of either end are ignored: there the
    smoothing sees only one side.

    Args:
        steps: Training step of each checkpoint (increasing).
        X: Trajectory matrix, checkpoints x features.
        n_components: Principal components used.
        sigma: Smoothing width in checkpoints.
        min_angle: Minimum turning angle (radians) around a cusp.
        prominence: Minimum ratio of a cusp's curvature to the median curvature.
        edge: Width of the ignored zone at each end, in units of ``sigma``.
        min_separation: Minimum distance between cusps in checkpoints (default
            ``2 * sigma``); of two closer cusps the sharper is kept.
        series: Name stored in the milestones.

    Returns:
        Milestones of kind ``"cusp"``, in step order; ``value`` is the turning angle in
        radians and ``detected_at`` the last step.

    Raises:
        ValueError: On inconsistent shapes or out-of-range settings.
    """
    steps_arr = np.asarray(steps)
    X = np.asarray(X, dtype=float)
    _check_trajectory_args(steps_arr, X, sigma, min_angle, prominence, edge)
    if min_separation is None:
        min_separation = max(int(round(2 * sigma)), 1)
    if isinstance(min_separation, bool) or not isinstance(min_separation, Integral):
        raise ValueError(f"min_separation={min_separation!r} must be an integer (checkpoints).")
    n = X.shape[0]
    margin = int(math.ceil(edge * sigma))
    if n < 2 * margin + 3:
        return []
    scores, _ = pca_trajectory(X, min(n_components, min(X.shape)))
    path = smooth_trajectory(scores, sigma, mode="reflect")
    kappa, ds = trajectory_curvature(path)
    turn = kappa * ds
    half = max(int(round(2 * sigma)), 1)
    csum = np.concatenate([[0.0], np.cumsum(turn)])
    inner = kappa[margin : n - margin]
    baseline = float(np.median(inner)) if len(inner) else 0.0
    candidates = []
    for i in range(max(margin, 1), min(n - margin, n - 1)):
        if not (kappa[i] >= kappa[i - 1] and kappa[i] > kappa[i + 1]):
            continue
        if kappa[i] < prominence * baseline:
            continue
        angle = float(csum[min(i + half + 1, n)] - csum[max(i - half, 0)])  # turn near i
        if angle < min_angle:
            continue
        candidates.append((angle, i))
    kept: list[tuple[float, int]] = []
    for angle, i in sorted(candidates, reverse=True):
        if all(abs(i - j) >= min_separation for _, j in kept):
            kept.append((angle, i))
    last = int(steps_arr[-1])
    return [
        Milestone(int(steps_arr[i]), last, "cusp", angle, series)
        for angle, i in sorted(kept, key=lambda t: t[1])
    ]
