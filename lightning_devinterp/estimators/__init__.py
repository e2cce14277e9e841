"""Estimators: traces in, numbers out (LLC, susceptibilities, health)."""

from lightning_devinterp.estimators.llc import (
    LLCEstimate,
    LLCSamples,
    check_inputs,
    estimate_llc,
    llc_from_samples,
    llc_from_traces,
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
    "LLCEstimate",
    "LLCSamples",
    "Susceptibilities",
    "SusceptibilitySamples",
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
