"""Estimators: traces in, numbers out (LLC, susceptibilities, health, calibration)."""

from lightning_devinterp.estimators.calibration import Calibration, calibrate, calibrate_with
from lightning_devinterp.estimators.diagnostics import LLCHealthWarning
from lightning_devinterp.estimators.llc import (
    LLCEstimate,
    estimate_llc,
    llc_from_samples,
    llc_from_traces,
)
from lightning_devinterp.estimators.llc_sampling import (
    LLCSamples,
    check_inputs,
    merge_samples,
    sample_components,
    sample_llc,
)
from lightning_devinterp.estimators.susceptibility import (
    Susceptibilities,
    SusceptibilitySamples,
    estimate_susceptibilities,
    sample_susceptibilities,
    susceptibilities_from_samples,
)

__all__ = [
    "Calibration",
    "LLCEstimate",
    "LLCHealthWarning",
    "LLCSamples",
    "Susceptibilities",
    "SusceptibilitySamples",
    "calibrate",
    "calibrate_with",
    "check_inputs",
    "estimate_llc",
    "llc_from_samples",
    "llc_from_traces",
    "merge_samples",
    "sample_components",
    "sample_llc",
    "sample_susceptibilities",
    "susceptibilities_from_samples",
    "estimate_susceptibilities",
]
