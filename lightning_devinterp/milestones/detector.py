"""Online detection of developmental milestones in a series measured over training.

Following the stage analysis of the LLC curve (PAPERS.md, "Stages and milestones"),
milestones are the critical points of a series against ``log10(step)``: where a plateau
starts or ends, peaks and troughs. The detector reads one estimate at a time and
announces a milestone only once the data after it confirm it.

How it works:

1. **Log-step grid.** Points are averaged into bins of width ``resolution`` in
   ``log10(step)``, so the detector behaves the same whether checkpoints are
   log-spaced or every 100 steps (late in training many points share a bin). A bin is
   processed when the first point of a later bin arrives.
2. **Noise that separates neighbours.** With common random numbers consecutive
   estimates share batches and SGLD noise, so the spread across chains (``std``) can
   be far larger than the checkpoint-to-checkpoint noise. The noise level is therefore
   measured on the series itself: each bin is compared with the straight line through
   its two neighbours, the residuals are normalized to the variance of one observation,
   and the noise is ``1.4826 * median(|residual|)`` over the last ``window`` residuals
   (robust to the few large residuals at corners), inflated by ``1 + 1.5 / sqrt(m)``
   for ``m`` residuals so that a short history does not under-estimate it. The user's
   ``std`` is only a fallback before ``min_noise_points`` residuals exist, and
   optionally a floor (``std_floor``). A fixed ``noise`` overrides all this.
3. **Breaks.** The series since the last break is a segment. After each bin, one more
   bend of a continuous piecewise-linear fit (continuous with the previous segment) is
   tried at every bin of the current segment that has at least ``confirm`` bins after
   it; if the best bend saves more than ``threshold**2`` noise variances of squared
   residuals, the segment is broken there and a new segment starts at that knot.
4. **Trends.** The new segment's trend is judged, once ``confirm`` bins follow its knot,
   from a line fitted to its bins (stopping before any bend that is building up). Its
   knot is first re-placed at the best position within two bins, now that data after
   it exist. ``rising``/``falling`` need a slope beyond ``trend_threshold`` standard
   errors and beyond the flat band; ``flat`` needs ``|slope| + flat_threshold * se``
   inside the flat band, whose half-width is ``flat`` times the series' mean slope
   (range of values so far over their span in decades, at least one decade, at least
   five noise levels). The range is capped at 1.5 times the range of a running median
   over ``2 * confirm + 1`` bins, so a brief deep excursion (an LLC dip of a few points
   while the weights cross from one saddle to the next, ten times deeper than the
   steps between plateaus) does not make every later step look flat. The same verdict on two consecutive bins settles the trend;
   a segment closed by the next break while still undecided leaves the trend unchanged.
5. **Milestones.** A settled trend that differs from the current one is a milestone at
   the segment's knot: rising to falling is a ``peak``, falling to rising a ``trough``,
   into flat a ``plateau_start``, out of flat a ``plateau_end`` (or a ``drop`` when
   ``drop`` is set and the series leaves the plateau falling at least ``drop`` times
   its mean slope: the loss-curve signature of a new stage). ``detected_at`` is the
   step of the point whose arrival settled it. A milestone closer than
   ``min_separation`` decades to the previous one is not announced; the current stage
   takes the newer trend instead.

So nothing is announced from the last ``confirm`` bins alone (no edge effect), a
straight or gently curving series gives no milestone, and the delay is a few points
for peaks, troughs and plateau ends, longer for plateau starts at high noise (a flat
slope needs enough points to be told from a slow rise).

Example:
    >>> det = MilestoneDetector("llc")
    >>> for step, llc in history:  # doctest: +SKIP
    ...     for m in det.update(step, llc):
    ...         print(m.kind, m.step, "confirmed at", m.detected_at)
"""

from __future__ import annotations

import logging
import math
from numbers import Integral, Real
from typing import Any

import numpy as np

from lightning_devinterp.milestones.records import Milestone, Stage

log = logging.getLogger(__name__)

_MAD_SCALE = 1.4826
_PERSIST = 2  # consecutive identical verdicts that settle a segment's trend
_HUMP_Z = 3.0  # end slopes of opposite signs beyond this z make a segment a round top
_STATE_VERSION = 1
_SUSTAIN = 1.5  # a range is at most this many times the range of the running median


def _transition_kind(before: str, after: str) -> str:
    if before == "rising" and after == "falling":
        return "peak"
    if before == "falling" and after == "rising":
        return "trough"
    if after == "flat":
        return "plateau_start"
    return "plateau_end"


def _norm_residual(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
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


def _sustained_range(y: np.ndarray, raw: float, confirm: int) -> float:
    """The range ``raw`` of a series, capped by the excursions that last.

    A running median over ``2 * confirm + 1`` bins (windows truncated at the ends) removes
    any excursion of at most ``confirm`` bins; the range is capped at ``_SUSTAIN`` times the
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
    return min(raw, _SUSTAIN * float(median.max() - median.min()))


def _line_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float, float, float]:
    """Weighted line fit. Returns (slope, sqrt(sum w (x - xbar)^2), xbar, ybar)."""
    sw = w.sum()
    xbar = float((w * x).sum() / sw)
    ybar = float((w * y).sum() / sw)
    xc = x - xbar
    sxx = float((w * xc * xc).sum())
    if sxx <= 0.0:
        return 0.0, 0.0, xbar, ybar
    slope = float((w * xc * (y - ybar)).sum() / sxx)
    return slope, math.sqrt(sxx), xbar, ybar


def _is_hump(x: np.ndarray, y: np.ndarray, w: np.ndarray, sigma: float, z: float) -> bool:
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


def _hinge_scan(
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
    xc = x - x.mean()
    cols = [np.ones_like(x), xc]
    if base_knot is not None:
        cols.append(np.maximum(x - x[base_knot], 0.0))
    base = np.stack(cols, axis=1)
    q, r = np.linalg.qr(base * sw[:, None])
    yw = y * sw
    qy = q.T @ yw
    e = yw - q @ qy
    xk = x[knots]
    h = np.maximum(x[None, :] - xk[:, None], 0.0)
    hw = h * sw[None, :]
    qh = hw @ q
    ht = hw - qh @ q.T
    den = np.maximum((ht * ht).sum(axis=1), 1e-300)
    num = ht @ e
    c = num / den
    # fitted value at each knot: base part of (y - c h), since h vanishes at its knot
    coef = np.linalg.solve(r, qy[:, None] - qh.T * c[None, :])
    bk = [np.ones_like(xk), xk - x.mean()]
    if base_knot is not None:
        bk.append(np.maximum(xk - x[base_knot], 0.0))
    value = (np.stack(bk, axis=1) * coef.T).sum(axis=1)
    return num * num / den, value


def _check_real(name: str, value: Any, *, low: float, low_ok: bool, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} is not a finite number; {hint}.")
    if value < low or (value == low and not low_ok):
        op = ">=" if low_ok else ">"
        raise ValueError(f"{name}={value!r} is out of range; it must be {op} {low}: {hint}.")
    return float(value)


def _check_int(name: str, value: Any, *, low: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name}={value!r} must be an integer; {hint}.")
    if value < low:
        raise ValueError(f"{name}={value!r} must be >= {low}; {hint}.")
    return int(value)


class MilestoneDetector:
    """Online detector of critical points of a series against log(step).

    See the module docstring for the method. Feed it one estimate at a time with
    :meth:`update`; it returns the milestones that the new point confirmed (usually
    none). All confirmed milestones are in :attr:`milestones`, the stages between them
    in :attr:`stages`. :meth:`refine` re-fits the whole history offline (both sides of
    every point known) into :attr:`refined`, leaving the online answers untouched.

    Args:
        series: Name stored in each milestone (``"llc"``, ``"loss"``, ...).
        confirm: Bins that must follow a knot before the segment after it is judged
            (and before a break there can be found). Larger is safer and slower.
        min_separation: Minimum distance between announced milestones, in decades of
            step (``log10`` units).
        noise: Fixed noise level of one observation, in the series' units. ``None``
            (default) measures it from the series (see module docstring).
        threshold: A break is accepted when the extra bend saves more than
            ``threshold**2`` noise variances of squared residuals (a z-score for the
            change of slope).
        trend_threshold: z-score a segment's slope needs to count as rising or falling.
        flat_threshold: A segment is flat when ``|slope| + flat_threshold * se`` is
            inside the flat band (0 judges on the slope alone).
        flat: Half-width of the flat band, as a fraction of the series' mean slope per
            decade (range of values so far over their span in decades, at least one
            decade; excursions of at most ``confirm`` bins count only up to 1.5 times
            the range of the rest). A straight series is never flat; a slope below this is flat
            however well it is measured.
        resolution: Width of the log10(step) bins.
        window: Number of recent bins used by the break test and by the noise
            estimate; bounds the cost of :meth:`update`.
        drop: If set, a plateau left by a fall at least ``drop`` times the series' mean
            slope is announced as ``"drop"`` instead of ``"plateau_end"`` (useful for a
            loss series, e.g. ``drop=2.0``).
        std_floor: If positive, the noise level is at least ``std_floor`` times the
            median ``std`` passed to :meth:`update`.
        min_noise_points: Residuals needed before the measured noise is trusted; until
            then the median ``std`` passed to :meth:`update` is used, or, without one,
            nothing is announced.

    Example:
        >>> det = MilestoneDetector("llc", confirm=3)
        >>> new = det.update(1000, 12.5, std=0.4)
        >>> det.milestones, det.current_stage
        ([], 0)
    """

    def __init__(
        self,
        series: str = "llc",
        *,
        confirm: int = 3,
        min_separation: float = 0.1,
        noise: float | None = None,
        threshold: float = 4.0,
        trend_threshold: float = 3.0,
        flat_threshold: float = 1.0,
        flat: float = 0.5,
        resolution: float = 0.01,
        window: int = 64,
        drop: float | None = None,
        std_floor: float = 0.0,
        min_noise_points: int = 12,
    ) -> None:
        if not isinstance(series, str) or not series:
            raise ValueError(f"series={series!r} must be a non-empty string such as 'llc'.")
        self.series = series
        self.confirm = _check_int("confirm", confirm, low=1, hint="use e.g. confirm=3")
        self.min_separation = _check_real(
            "min_separation",
            min_separation,
            low=0.0,
            low_ok=True,
            hint="give a distance in decades of step (log10 units), e.g. 0.1",
        )
        if noise is not None:
            noise = _check_real(
                "noise",
                noise,
                low=0.0,
                low_ok=False,
                hint="pass the noise level of one estimate, or None to measure it",
            )
        self.noise = noise
        self.threshold = _check_real(
            "threshold", threshold, low=0.0, low_ok=False, hint="use e.g. threshold=4.0"
        )
        self.trend_threshold = _check_real(
            "trend_threshold",
            trend_threshold,
            low=0.0,
            low_ok=False,
            hint="use e.g. trend_threshold=2.5",
        )
        self.flat_threshold = _check_real(
            "flat_threshold",
            flat_threshold,
            low=0.0,
            low_ok=True,
            hint="use e.g. flat_threshold=1.5",
        )
        self.flat = _check_real("flat", flat, low=0.0, low_ok=True, hint="use e.g. flat=0.1")
        self.resolution = _check_real(
            "resolution",
            resolution,
            low=0.0,
            low_ok=False,
            hint="give a bin width in decades of step, e.g. 0.01",
        )
        self.window = _check_int(
            "window", window, low=4 * self.confirm + 4, hint="use e.g. window=64"
        )
        if drop is not None:
            drop = _check_real(
                "drop", drop, low=0.0, low_ok=False, hint="use e.g. drop=2.0, or None"
            )
        self.drop = drop
        self.std_floor = _check_real(
            "std_floor", std_floor, low=0.0, low_ok=True, hint="use 0.0 to disable"
        )
        self.min_noise_points = _check_int(
            "min_noise_points", min_noise_points, low=3, hint="use e.g. min_noise_points=8"
        )
        self._reset()

    # ------------------------------------------------------------------ state
    def _reset(self) -> None:
        # closed bins (full history, for refine): mean log10 step, mean value, count, step
        self._bx: list[float] = []
        self._by: list[float] = []
        self._bw: list[float] = []
        self._bstep: list[int] = []
        # the open bin
        self._ob_index: int | None = None
        self._ob_n = 0
        self._ob_sx = 0.0
        self._ob_sy = 0.0
        self._ob_step = 0
        self._last_step: int | None = None
        self._stds: list[float] = []
        self._resid: list[float] = []
        self._ymin = math.inf
        self._ymax = -math.inf
        self._range = 0.0  # sustained range of the closed bins (cache)
        self._range_bins = -1  # number of closed bins it was computed from
        # segmentation
        self._anchor = 0
        self._prev_anchor: int | None = None
        self._pending = True
        self._candidate: str | None = None
        self._candidate_count = 0
        self._undecided_from: int | None = None
        self._knot_value = math.nan
        self._trend: str | None = None
        self._last_ms_x: float | None = None
        # results
        self._milestones: list[Milestone] = []
        self._stage_starts: list[int] = []
        self._stage_trends: list[str] = []
        self._refined: list[Milestone] = []

    def _config(self) -> dict[str, Any]:
        return {
            "series": self.series,
            "confirm": self.confirm,
            "min_separation": self.min_separation,
            "noise": self.noise,
            "threshold": self.threshold,
            "trend_threshold": self.trend_threshold,
            "flat_threshold": self.flat_threshold,
            "flat": self.flat,
            "resolution": self.resolution,
            "window": self.window,
            "drop": self.drop,
            "std_floor": self.std_floor,
            "min_noise_points": self.min_noise_points,
        }

    def state_dict(self) -> dict[str, Any]:
        """Returns the detector's full state as plain JSON-serializable Python types."""
        return {
            "version": _STATE_VERSION,
            "config": self._config(),
            "bins": {
                "x": list(self._bx),
                "y": list(self._by),
                "w": list(self._bw),
                "step": list(self._bstep),
            },
            "open_bin": {
                "index": self._ob_index,
                "n": self._ob_n,
                "sx": self._ob_sx,
                "sy": self._ob_sy,
                "step": self._ob_step,
            },
            "last_step": self._last_step,
            "stds": list(self._stds),
            "resid": list(self._resid),
            "ymin": None if math.isinf(self._ymin) else self._ymin,
            "ymax": None if math.isinf(self._ymax) else self._ymax,
            "anchor": self._anchor,
            "prev_anchor": self._prev_anchor,
            "pending": self._pending,
            "candidate": self._candidate,
            "candidate_count": self._candidate_count,
            "undecided_from": self._undecided_from,
            "knot_value": None if math.isnan(self._knot_value) else self._knot_value,
            "trend": self._trend,
            "last_ms_x": self._last_ms_x,
            "milestones": [m.to_dict() for m in self._milestones],
            "stage_starts": list(self._stage_starts),
            "stage_trends": list(self._stage_trends),
            "refined": [m.to_dict() for m in self._refined],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the state saved by :meth:`state_dict`.

        The constructor's settings are kept; a warning is logged if they differ from
        the saved ones (the continuation then differs from an uninterrupted run).
        """
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(
                "load_state_dict expects a dict produced by MilestoneDetector.state_dict() "
                f"(version {_STATE_VERSION}); got {type(state).__name__} with version "
                f"{state.get('version') if isinstance(state, dict) else None!r}."
            )
        saved = state.get("config", {})
        diff = {k: (v, saved.get(k)) for k, v in self._config().items() if saved.get(k) != v}
        if diff:
            log.warning("MilestoneDetector settings differ from the saved state: %s", diff)
        self._reset()
        bins = state["bins"]
        self._bx = [float(v) for v in bins["x"]]
        self._by = [float(v) for v in bins["y"]]
        self._bw = [float(v) for v in bins["w"]]
        self._bstep = [int(v) for v in bins["step"]]
        ob = state["open_bin"]
        self._ob_index = None if ob["index"] is None else int(ob["index"])
        self._ob_n = int(ob["n"])
        self._ob_sx = float(ob["sx"])
        self._ob_sy = float(ob["sy"])
        self._ob_step = int(ob["step"])
        self._last_step = None if state["last_step"] is None else int(state["last_step"])
        self._stds = [float(v) for v in state["stds"]]
        self._resid = [float(v) for v in state["resid"]]
        self._ymin = math.inf if state["ymin"] is None else float(state["ymin"])
        self._ymax = -math.inf if state["ymax"] is None else float(state["ymax"])
        self._anchor = int(state["anchor"])
        pa = state["prev_anchor"]
        self._prev_anchor = None if pa is None else int(pa)
        self._pending = bool(state["pending"])
        self._candidate = state["candidate"]
        self._candidate_count = int(state["candidate_count"])
        uf = state["undecided_from"]
        self._undecided_from = None if uf is None else int(uf)
        kv = state["knot_value"]
        self._knot_value = math.nan if kv is None else float(kv)
        self._trend = state["trend"]
        lx = state["last_ms_x"]
        self._last_ms_x = None if lx is None else float(lx)
        self._milestones = [Milestone.from_dict(d) for d in state["milestones"]]
        self._stage_starts = [int(v) for v in state["stage_starts"]]
        self._stage_trends = [str(v) for v in state["stage_trends"]]
        self._refined = [Milestone.from_dict(d) for d in state["refined"]]

    # ------------------------------------------------------------- public view
    @property
    def milestones(self) -> list[Milestone]:
        """All milestones confirmed online, in order."""
        return list(self._milestones)

    @property
    def refined(self) -> list[Milestone]:
        """Milestones of the last :meth:`refine` call (empty before one)."""
        return list(self._refined)

    @property
    def stages(self) -> list[Stage]:
        """Stages between consecutive online milestones; the last one is open."""
        out = []
        n = len(self._stage_starts)
        for i, (start, trend) in enumerate(
            zip(self._stage_starts, self._stage_trends, strict=True)
        ):
            end = self._stage_starts[i + 1] if i + 1 < n else None
            out.append(Stage(index=i, start=start, end=end, trend=trend))
        return out

    @property
    def current_stage(self) -> int:
        """Index of the current (open) stage; 0 before any milestone."""
        return max(len(self._stage_starts) - 1, 0)

    @property
    def noise_level(self) -> float | None:
        """The noise level of one observation currently in use (``None`` if unknown)."""
        return self._noise()

    # ------------------------------------------------------------------ online
    def update(self, step: int, value: float, std: float | None = None) -> list[Milestone]:
        """Adds one estimate and returns the milestones it confirmed.

        A non-finite ``value`` (a failed estimate) is skipped: the step is recorded as
        seen, nothing else changes, and an empty list is returned.

        Args:
            step: Training step of the estimate; strictly larger than the previous one.
                Step 0 is placed at step 1 on the log axis.
            value: The estimate (e.g. the LLC mean).
            std: Optional spread of the estimate (e.g. std across chains), used only as
                a fallback noise level early on and for ``std_floor``.

        Returns:
            Milestones confirmed by this point (their ``detected_at`` is ``step``).

        Raises:
            ValueError: If ``step`` is not an integer >= 0 larger than the previous step,
                or ``std`` is negative.
        """
        if isinstance(step, bool) or not isinstance(step, Integral) or step < 0:
            raise ValueError(f"step={step!r} must be an integer >= 0 (the training step).")
        step = int(step)
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(
                f"step={step} is not after the previous step {self._last_step}: feed "
                "update() with strictly increasing steps (create a new detector, or "
                "load_state_dict, to start over)."
            )
        try:
            value = float(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"value={value!r} is not a number.") from err
        if std is not None:
            try:
                std = float(std)
            except (TypeError, ValueError) as err:
                raise ValueError(f"std={std!r} must be a number or None.") from err
            if std < 0:
                raise ValueError(f"std={std!r} is negative; pass the spread of the estimate.")
        self._last_step = step
        if not math.isfinite(value):
            return []
        if std is not None and math.isfinite(std):
            self._stds.append(std)
            if len(self._stds) > self.window:
                del self._stds[0]
        x = math.log10(max(step, 1))
        index = math.floor(x / self.resolution + 1e-9)
        out: list[Milestone] = []
        if self._ob_index is not None and index > self._ob_index:
            self._close_bin()
            out = self._process(step)
        if not self._stage_starts:
            self._stage_starts.append(step)
            self._stage_trends.append("flat")
        if self._ob_n == 0:
            self._ob_index = index
            self._ob_step = step
        self._ob_n += 1
        self._ob_sx += x
        self._ob_sy += value
        return out

    def _close_bin(self) -> None:
        n = self._ob_n
        self._bx.append(self._ob_sx / n)
        y = self._ob_sy / n
        self._by.append(y)
        self._bw.append(float(n))
        self._bstep.append(self._ob_step if n == 1 else round(10 ** (self._ob_sx / n)))
        self._ymin = min(self._ymin, y)
        self._ymax = max(self._ymax, y)
        self._ob_index = None
        self._ob_n = 0
        self._ob_sx = self._ob_sy = 0.0
        if len(self._bx) >= 3:
            x = np.asarray(self._bx[-3:])
            r = _norm_residual(x, np.asarray(self._by[-3:]), np.asarray(self._bw[-3:]))
            self._resid.append(float(r[0]))
            if len(self._resid) > self.window:
                del self._resid[0]

    def _noise(self) -> float | None:
        if self.noise is not None:
            return self.noise
        sigma: float | None = None
        if len(self._resid) >= self.min_noise_points:
            m = len(self._resid)
            sigma = _MAD_SCALE * float(np.median(np.abs(self._resid))) * (1.0 + 1.5 / math.sqrt(m))
        elif self._stds:
            sigma = float(np.median(self._stds))
        if sigma is None:
            return None
        if self.std_floor > 0 and self._stds:
            sigma = max(sigma, self.std_floor * float(np.median(self._stds)))
        scale = max(abs(self._ymin), abs(self._ymax), 1e-30)
        return max(sigma, 1e-9 * scale)

    def _mean_slope(self, sigma: float) -> float:
        """The series' mean absolute slope per decade so far (see module docstring)."""
        if not self._bx:
            return 0.0
        span = max(self._bx[-1] - self._bx[0], 1.0)
        if self._range_bins != len(self._by):
            raw = self._ymax - self._ymin
            self._range = _sustained_range(np.asarray(self._by), raw, self.confirm)
            self._range_bins = len(self._by)
        return max(self._range - 4.0 * sigma, 5.0 * sigma) / span

    def _segment_slope(self, a: int, n: int, sigma: float) -> tuple[int, float, float, float]:
        """Line fit of the segment that starts at knot ``a`` and ends at bin ``n``.

        When a previous segment exists, the knot is first re-placed at the best position
        between bins ``a - 2`` and ``a + 2`` (quarter-bin grid) of a fit continuous with
        the previous segment, since data after it have arrived since the break was
        found. The slope itself comes from a free line on the bins from the knot on: a
        continuous fit would have a smaller nominal error, but the knot search makes
        that error optimistic and a misplaced knot biases it.

        Returns:
            (knot bin, slope, standard error of the slope, fitted value at the knot).
        """
        value = None
        lo = max(n - self.window + 1, 0)
        if self._prev_anchor is not None:
            lo = max(lo, self._prev_anchor)
        if self._prev_anchor is not None and a - lo >= 2:
            x = np.asarray(self._bx[lo : n + 1])
            y = np.asarray(self._by[lo : n + 1])
            w = np.asarray(self._bw[lo : n + 1])
            first = max(a - 2, lo + 2)
            last = max(min(a + 2, n - self.confirm), first)
            xk = np.linspace(x[first - lo], x[last - lo], 4 * (last - first) + 1)
            d = x[None, :] - xk[:, None]
            design = np.stack([np.ones_like(d), np.minimum(d, 0.0), np.maximum(d, 0.0)], axis=2)
            gram = np.einsum("kip,kiq,i->kpq", design, design, w)
            rhs = np.einsum("kip,i->kp", design, w * y)
            ok = np.abs(np.linalg.det(gram)) > 1e-300
            if ok.any():
                design, gram, rhs, xk = design[ok], gram[ok], rhs[ok], xk[ok]
                beta = np.linalg.solve(gram, rhs[..., None])[..., 0]
                res = y[None, :] - np.einsum("kip,kp->ki", design, beta)
                best = int(np.argmin((res * res * w[None, :]).sum(axis=1)))
                a = lo + int(np.argmin(np.abs(x - xk[best])))
                value = float(beta[best, 0])
        lo = max(a, n - self.window + 1)
        x = np.asarray(self._bx[lo : n + 1])
        y = np.asarray(self._by[lo : n + 1])
        slope, root_sxx, xbar, ybar = _line_fit(x, y, np.asarray(self._bw[lo : n + 1]))
        se = sigma / root_sxx if root_sxx > 0 else math.inf
        if value is None:
            value = ybar + slope * (self._bx[a] - xbar)
        return a, slope, se, value

    def _classify(self, a: int, n: int, sigma: float) -> tuple[str | None, float, int, float]:
        """Trend of the segment from knot ``a`` to bin ``n`` (None while undecided).

        Returns:
            (trend or None, slope, re-placed knot, fitted value at the knot).
        """
        if n - a < 1:
            return None, 0.0, a, self._knot_value
        knot, slope, se, value = self._segment_slope(a, n, sigma)
        band = self.flat * self._mean_slope(sigma)
        bar = max(band, self.trend_threshold * se)
        if slope > bar:
            return "rising", slope, knot, value
        if slope < -bar:
            return "falling", slope, knot, value
        if abs(slope) + self.flat_threshold * se < band:
            lo = max(knot, n - self.window + 1)
            hump = _is_hump(
                np.asarray(self._bx[lo : n + 1]),
                np.asarray(self._by[lo : n + 1]),
                np.asarray(self._bw[lo : n + 1]),
                sigma,
                _HUMP_Z,
            )
            if not hump:  # the round top of a peak is no plateau
                return "flat", slope, knot, value
        return None, slope, knot, value

    def _settle(self, trend: str, slope: float, now: int, sigma: float) -> Milestone | None:
        """The current segment's trend is known: announce a milestone if it changed."""
        ms = self._announce(trend, slope, now, sigma)
        self._undecided_from = None
        return ms

    def _announce(self, trend: str, slope: float, now: int, sigma: float) -> Milestone | None:
        self._pending = False
        prev = self._trend
        self._trend = trend
        if prev is None:
            self._stage_trends[-1] = trend
            return None
        if trend == prev:
            return None
        x_knot = self._bx[self._anchor]
        if self._last_ms_x is not None and x_knot - self._last_ms_x < self.min_separation:
            self._stage_trends[-1] = trend
            return None
        kind = _transition_kind(prev, trend)
        if kind == "plateau_end" and trend == "falling" and self.drop is not None:
            if -slope >= self.drop * self._mean_slope(sigma):
                kind = "drop"
        at, value = self._anchor, self._knot_value
        if kind in ("peak", "trough") and self._undecided_from is not None:
            at, value = self._extremum(kind)
            x_knot = self._bx[at]
            if self._last_ms_x is not None and x_knot - self._last_ms_x < self.min_separation:
                self._stage_trends[-1] = trend
                return None
        step = self._bstep[at]
        ms = Milestone(step, now, kind, float(value), self.series)
        self._milestones.append(ms)
        self._stage_starts.append(step)
        self._stage_trends.append(trend)
        self._last_ms_x = x_knot
        return ms

    def _extremum(self, kind: str) -> tuple[int, float]:
        """Bin and value of the top of a peak (bottom of a trough) before the knot.

        Used when undecided segments (a round top) lie between the last settled trend
        and the current knot: the extreme of a three-bin weighted moving average there.
        """
        a = self._anchor
        lo = max(int(self._undecided_from or 0), a - self.window)
        hi = min(a + 1, len(self._bx) - 1)
        x0 = max(lo - 1, 0)
        y = np.asarray(self._by[x0 : hi + 2])
        w = np.asarray(self._bw[x0 : hi + 2])
        yw = np.convolve(y * w, np.ones(3), mode="same")
        ww = np.convolve(w, np.ones(3), mode="same")
        smooth = (yw / ww)[lo - x0 : hi - x0 + 1]
        j = int(np.argmax(smooth) if kind == "peak" else np.argmin(smooth))
        return lo + j, float(smooth[j])

    def _process(self, now: int) -> list[Milestone]:
        sigma = self._noise()
        if sigma is None:
            return []
        out: list[Milestone] = []
        c = self.confirm
        thr2 = self.threshold**2 * sigma * sigma
        while True:
            n = len(self._bx) - 1
            # window: back to the previous knot when possible, so that the current
            # segment's start is pinned by the previous segment (continuity)
            s = max(self._anchor, n - self.window + 1)
            base = None
            if self._prev_anchor is not None:
                s2 = max(self._prev_anchor, n - self.window + 1)
                if self._anchor - s2 >= 2:
                    s, base = s2, self._anchor - s2
            first = 2 if base is None else base + 2
            end = n  # last bin used to classify the current segment
            if n - c - s >= first:
                x = np.asarray(self._bx[s:])
                y = np.asarray(self._by[s:])
                w = np.asarray(self._bw[s:])
                knots = np.arange(first, n - c - s + 1)
                drss, value = _hinge_scan(x, y, w, knots, base)
                best = int(np.argmax(drss))
                if drss[best] > thr2:
                    k = s + int(knots[best])
                    if self._pending:
                        # the segment is closed: decide its trend with all its points;
                        # if still undecided, it does not change the trend
                        trend, slope, _, _ = self._classify(self._anchor, k, sigma)
                        if trend is None and self._trend is None and k - self._anchor >= 2 * c:
                            trend = "flat"  # the series has not moved significantly yet
                        if trend is not None:
                            ms = self._settle(trend, slope, now, sigma)
                            if ms is not None:
                                out.append(ms)
                        elif self._undecided_from is None:
                            self._undecided_from = self._anchor
                    self._prev_anchor = self._anchor
                    self._anchor = k
                    self._knot_value = float(value[best])
                    self._pending = True
                    self._candidate = None
                    self._candidate_count = 0
                    continue
                if drss[best] > 0.25 * thr2 and s + int(knots[best]) >= self._anchor + c:
                    # a bend is building up: judge the segment on the bins before it
                    end = s + int(knots[best])
            if self._pending and end - self._anchor >= c:
                trend, slope, knot, value = self._classify(self._anchor, end, sigma)
                self._anchor, self._knot_value = knot, value
                if trend is not None:
                    if trend == self._candidate:
                        self._candidate_count += 1
                    else:
                        self._candidate = trend
                        self._candidate_count = 1
                if trend is not None and self._candidate_count >= _PERSIST:
                    ms = self._settle(trend, slope, now, sigma)
                    if ms is not None:
                        out.append(ms)
            return out

    # ----------------------------------------------------------------- offline
    def refine(self) -> list[Milestone]:
        """Re-fits the whole history offline and returns the final milestones.

        The series (on the same log-step grid, the open bin included) is fitted with a
        continuous piecewise-linear function of ``log10(step)``: knots are added greedily
        while one saves more than ``threshold**2`` noise variances, each knot is then
        moved to its best position between its neighbours, and knots that no longer
        pass the test are removed. Each segment's trend is judged with the online rules
        on all its bins; an undecided segment, or one with fewer than ``confirm`` bins
        after its knot, keeps the trend before it. Trend changes are milestones
        (``detected_at`` is the last step; a peak or trough sits at the extreme of the
        fit between the last two settled segments), and changes closer than
        ``min_separation`` are merged (a rise and a fall merge into a peak at the higher
        knot; a step from one plateau to another keeps its start; any other change that
        is undone is dropped). The result is stored in
        :attr:`refined`; :attr:`milestones` is unchanged.

        Returns:
            The refined milestones.
        """
        x = list(self._bx)
        y = list(self._by)
        w = list(self._bw)
        steps = list(self._bstep)
        if self._ob_n:
            x.append(self._ob_sx / self._ob_n)
            y.append(self._ob_sy / self._ob_n)
            w.append(float(self._ob_n))
            steps.append(
                self._ob_step if self._ob_n == 1 else round(10 ** (self._ob_sx / self._ob_n))
            )
        self._refined = self._refine_arrays(np.asarray(x), np.asarray(y), np.asarray(w), steps)
        return list(self._refined)

    def _refine_arrays(
        self, x: np.ndarray, y: np.ndarray, w: np.ndarray, steps: list[int]
    ) -> list[Milestone]:
        n = len(x)
        c = self.confirm
        if n < 2 * c + 4 or self._last_step is None:
            return []
        if self.noise is not None:
            sigma = self.noise
        else:
            r = _norm_residual(x, y, w)
            sigma = _MAD_SCALE * float(np.median(np.abs(r)))
            if self.std_floor > 0 and self._stds:
                sigma = max(sigma, self.std_floor * float(np.median(self._stds)))
            sigma = max(sigma, 1e-9 * max(float(np.abs(y).max()), 1e-30))
        thr2 = self.threshold**2 * sigma * sigma
        sw = np.sqrt(w)
        hinge = np.maximum(x[None, :] - x[:, None], 0.0)  # row k: hinge at knot k
        base = np.stack([np.ones(n), x - x.mean()], axis=1)
        yw = y * sw
        gap = 2

        def basis(knots: list[int]) -> np.ndarray:
            cols = [base] + [hinge[k][:, None] for k in knots]
            return np.concatenate(cols, axis=1) * sw[:, None]

        def rss(knots: list[int]) -> float:
            a = basis(knots)
            beta, *_ = np.linalg.lstsq(a, yw, rcond=None)
            res = yw - a @ beta
            return float(res @ res)

        def scan(knots: list[int], cands: np.ndarray) -> np.ndarray:
            q, _ = np.linalg.qr(basis(knots))
            e = yw - q @ (q.T @ yw)
            hw = hinge[cands] * sw[None, :]
            ht = hw - (hw @ q) @ q.T
            den = np.maximum((ht * ht).sum(axis=1), 1e-300)
            return (ht @ e) ** 2 / den

        def allowed(knots: list[int], lo: int, hi: int) -> np.ndarray:
            cands = np.arange(max(lo, 2), min(hi, n - 3) + 1)
            for k in knots:
                cands = cands[np.abs(cands - k) >= gap]
            return cands

        knots: list[int] = []
        for _ in range(n // 3):
            cands = allowed(knots, 2, n - 3)
            if len(cands) == 0:
                break
            gain = scan(knots, cands)
            best = int(np.argmax(gain))
            if gain[best] <= thr2:
                break
            knots = sorted(knots + [int(cands[best])])
        for _ in range(2):
            for j in range(len(knots)):
                others = knots[:j] + knots[j + 1 :]
                lo = knots[j - 1] + gap if j > 0 else 2
                hi = knots[j + 1] - gap if j + 1 < len(knots) else n - 3
                cands = allowed(others, lo, hi)
                if len(cands):
                    knots[j] = int(cands[int(np.argmax(scan(others, cands)))])
        while knots:
            full = rss(knots)
            loss = [rss(knots[:j] + knots[j + 1 :]) - full for j in range(len(knots))]
            j = int(np.argmin(loss))
            if loss[j] > thr2:
                break
            del knots[j]

        # each segment's trend from a line on its own bins, with the online rules;
        # an undecided segment keeps the trend before it
        a = basis(knots)
        beta, *_ = np.linalg.lstsq(a, yw, rcond=None)
        fitted = (a @ beta) / sw
        span = max(float(x[-1] - x[0]), 1.0)
        spread = _sustained_range(y, float(fitted.max() - fitted.min()), c)
        mean_slope = max(spread, 5.0 * sigma) / span
        band = self.flat * mean_slope
        bounds = [0, *knots, n - 1]
        segments = []  # (start knot, trend or None, slope)
        for j in range(len(bounds) - 1):
            lo, hi = bounds[j], bounds[j + 1]
            xs, ys, ws = x[lo : hi + 1], y[lo : hi + 1], w[lo : hi + 1]
            slope, root_sxx, _, _ = _line_fit(xs, ys, ws)
            se = sigma / root_sxx if root_sxx > 0 else math.inf
            bar = max(band, self.trend_threshold * se)
            trend: str | None = None
            if lo > n - 1 - c:
                pass  # fewer than `confirm` bins after the knot: not confirmed
            elif slope > bar:
                trend = "rising"
            elif slope < -bar:
                trend = "falling"
            elif abs(slope) + self.flat_threshold * se < band:
                if not _is_hump(xs, ys, ws, sigma, _HUMP_Z):
                    trend = "flat"
            elif j == 0:
                trend = "flat"  # the series has not moved significantly yet
            segments.append((lo, trend, slope))

        events: list[list[Any]] = []  # [bin, before, after, slope after]
        current: str | None = None
        since = 0  # first knot after the last settled segment
        for lo, trend, slope in segments:
            if trend is None:
                continue
            if current is not None and trend != current:
                kind = _transition_kind(current, trend)
                at = lo
                if kind in ("peak", "trough"):
                    part = fitted[since : lo + 1]
                    at = since + int(np.argmax(part) if kind == "peak" else np.argmin(part))
                ev = [at, current, trend, slope]
                if events and x[at] - x[events[-1][0]] < self.min_separation:
                    prev = events.pop()
                    if prev[1] != trend:
                        kind = _transition_kind(prev[1], trend)
                        pick = prev[0]
                        if kind == "peak" and fitted[at] > fitted[pick]:
                            pick = at
                        if kind == "trough" and fitted[at] < fitted[pick]:
                            pick = at
                        events.append([pick, prev[1], trend, slope])
                    elif trend == "flat":
                        # a step between two plateaus: its start is the milestone, as online
                        events.append(prev)
                else:
                    events.append(ev)
            current = trend
            since = lo
        out = []
        last = int(self._last_step)
        for k, before, after, slope in events:
            kind = _transition_kind(before, after)
            if (
                kind == "plateau_end"
                and after == "falling"
                and self.drop is not None
                and -slope >= self.drop * mean_slope
            ):
                kind = "drop"
            out.append(Milestone(int(steps[k]), last, kind, float(fitted[k]), self.series))
        return out
