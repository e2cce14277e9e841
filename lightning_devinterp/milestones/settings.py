"""Validation of the milestone detector's settings and of the points it is fed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any


@dataclass
class DetectorSettings:
    """The settings of a :class:`MilestoneDetector` (see its docstring for each)."""

    series: str
    confirm: int
    min_separation: float
    noise: float | None
    threshold: float
    trend_threshold: float
    flat_threshold: float
    flat: float
    resolution: float
    window: int
    drop: float | None
    std_floor: float
    min_noise_points: int
    level_slope: float


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


def _positive(name: str, value: Any, hint: str) -> float:
    return _check_real(name, value, low=0.0, low_ok=False, hint=hint)


def _non_negative(name: str, value: Any, hint: str) -> float:
    return _check_real(name, value, low=0.0, low_ok=True, hint=hint)


def check_settings(s: DetectorSettings) -> DetectorSettings:
    """The settings with numbers as plain ``int``/``float``, checked in argument order.

    Raises:
        ValueError: Naming the first bad setting, its value and a usable one.
    """
    if not isinstance(s.series, str) or not s.series:
        raise ValueError(f"series={s.series!r} must be a non-empty string such as 'llc'.")
    confirm = _check_int("confirm", s.confirm, low=1, hint="use e.g. confirm=3")
    noise_hint = "pass the noise level of one estimate, or None to measure it"
    checked = {  # a dict literal is evaluated in order: the first bad setting is named
        "series": s.series,
        "confirm": confirm,
        "min_separation": _non_negative(
            "min_separation",
            s.min_separation,
            "give a distance in decades of step (log10 units), e.g. 0.1",
        ),
        "noise": None if s.noise is None else _positive("noise", s.noise, noise_hint),
        "threshold": _positive("threshold", s.threshold, "use e.g. threshold=4.0"),
        "trend_threshold": _positive(
            "trend_threshold", s.trend_threshold, "use e.g. trend_threshold=2.5"
        ),
        "flat_threshold": _non_negative(
            "flat_threshold", s.flat_threshold, "use e.g. flat_threshold=1.5"
        ),
        "flat": _non_negative("flat", s.flat, "use e.g. flat=0.1"),
        "resolution": _positive(
            "resolution", s.resolution, "give a bin width in decades of step, e.g. 0.01"
        ),
        "window": _check_int("window", s.window, low=4 * confirm + 4, hint="use e.g. window=64"),
        "drop": None if s.drop is None else _positive("drop", s.drop, "use e.g. drop=2.0, or None"),
        "std_floor": _non_negative("std_floor", s.std_floor, "use 0.0 to disable"),
        "min_noise_points": _check_int(
            "min_noise_points", s.min_noise_points, low=3, hint="use e.g. min_noise_points=8"
        ),
        "level_slope": _non_negative(
            "level_slope", s.level_slope, "use e.g. level_slope=0.1, or 0 for a logarithm"
        ),
    }
    return DetectorSettings(**checked)


def check_weight(weight: Any) -> float:
    """``update``'s ``weight`` as a float > 0.

    Raises:
        ValueError: it is not a finite number > 0.
    """
    if isinstance(weight, bool) or not isinstance(weight, Real) or not 0 < weight < math.inf:
        raise ValueError(
            f"weight={weight!r} is invalid; pass the number of observations the value "
            "averages, a finite number > 0 (1 for a single estimate)."
        )
    return float(weight)


def check_point(
    step: Any, value: Any, std: Any, last_step: int | None
) -> tuple[int, float, float | None]:
    """``update``'s arguments as (int, float, float or None).

    Raises:
        ValueError: Naming the bad argument and what it must be.
    """
    if isinstance(step, bool) or not isinstance(step, Integral) or step < 0:
        raise ValueError(f"step={step!r} must be an integer >= 0 (the training step).")
    step = int(step)
    if last_step is not None and step <= last_step:
        raise ValueError(
            f"step={step} is not after the previous step {last_step}: feed "
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
    return step, value, std
