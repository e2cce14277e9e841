"""The options of a calibration (grid, chain counts, budget), checked before any sampling."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_devinterp.sampling import SGLD, ChainSettings

#: Default localizations, tried weakest first.
DEFAULT_LOCALIZATIONS = (100.0, 300.0, 1000.0)
#: Default budget: SGLD steps over all settings (an ordinary estimate runs 4 x 200).
DEFAULT_MAX_STEPS = 1800


@dataclass(frozen=True)
class CalibrationOptions:
    """What :func:`~lightning_devinterp.calibrate` sweeps and how far, validated on
    construction (see its arguments)."""

    nbeta: float | None = None
    lrs: Sequence[float] | None = None
    localizations: Sequence[float] = DEFAULT_LOCALIZATIONS
    nbetas: Sequence[float] | None = None
    num_chains: int = 4
    num_draws: int = 100
    tolerance: float = 0.1
    min_acceptance: float = 0.9
    max_steps: int | None = DEFAULT_MAX_STEPS
    full_sweep: bool = False
    batched: bool | None = None
    sampler: SGLD | None = None

    def __post_init__(self) -> None:
        """Raise a ``ValueError`` naming the first invalid option and the fix."""
        ChainSettings(num_chains=self.num_chains, num_draws=self.num_draws)
        if self.num_chains < 2 or self.num_draws < 16:
            raise ValueError(
                f"num_chains={self.num_chains}, num_draws={self.num_draws} are too few for "
                "calibration; use at least 2 chains (to compare them) and 16 draws (half of "
                "them are burn-in)."
            )
        _check_grid(self.nbeta, self.lrs, self.localizations, self.nbetas)
        if not _positive(self.tolerance):
            raise ValueError(
                f"tolerance={self.tolerance!r} is invalid; use a fraction such as 0.1."
            )
        if not (_positive(self.min_acceptance) and self.min_acceptance <= 1):
            raise ValueError(
                f"min_acceptance={self.min_acceptance!r} is invalid; use a value in (0, 1]."
            )
        steps = self.max_steps
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
        ):
            raise ValueError(f"max_steps={steps!r} is invalid; use a positive integer or None.")
        if self.sampler is not None and not isinstance(self.sampler, SGLD):
            raise TypeError(
                f"sampler={self.sampler!r} is not an SGLD; pass SGLD(lr=...) (or a subclass) as "
                "the template of the candidates, or None."
            )


#: Options of :func:`~lightning_devinterp.calibrate` a caller that owns the data and chain
#: settings may pass on.
CALIBRATE_OPTIONS = tuple(f.name for f in dataclasses.fields(CalibrationOptions))


def calibration_options(options: Mapping[str, Any]) -> CalibrationOptions:
    """``options`` (names of :data:`CALIBRATE_OPTIONS`) with the defaults for the others;
    raises a ``ValueError`` naming the first unknown or invalid one."""
    unknown = [key for key in options if key not in CALIBRATE_OPTIONS]
    if unknown:
        raise ValueError(
            f"Unknown calibration option(s) {unknown}; use some of {list(CALIBRATE_OPTIONS)}."
        )
    return CalibrationOptions(**options)


def check_calibrate_options(options: Mapping[str, Any]) -> None:
    """Raise a ``ValueError`` naming the first unknown or invalid option of
    :data:`CALIBRATE_OPTIONS` in ``options`` (checked before any sampling)."""
    calibration_options(options)


def _check_grid(
    nbeta: float | None,
    lrs: Sequence[float] | None,
    localizations: Sequence[float],
    nbetas: Sequence[float] | None,
) -> None:
    """Raise a ``ValueError`` naming the first invalid grid option and the fix."""
    if nbeta is not None and nbetas is not None:
        raise ValueError("Give nbeta (fixed) or nbetas (swept), not both.")
    if nbeta is not None and not _positive(nbeta):
        raise ValueError(f"nbeta={nbeta!r} is invalid; use a positive number such as 30.")
    for name, values, least in (
        ("lrs", lrs, "positive"),
        ("nbetas", nbetas, "positive"),
        ("localizations", localizations, "non-negative"),
    ):
        if values is None:
            continue
        values = list(values) if not isinstance(values, (str, bytes)) else None
        ok = _positive if least == "positive" else _non_negative
        if not values or not all(ok(v) for v in values):
            raise ValueError(
                f"{name}={values!r} is invalid; use a non-empty list of {least} numbers."
            )


def _positive(value: Any) -> bool:
    return _non_negative(value) and value > 0


def _non_negative(value: Any) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
        and value >= 0
    )
