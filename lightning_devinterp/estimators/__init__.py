"""Estimators: traces in, numbers out (LLC, health)."""

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

__all__ = [
    "LLCEstimate",
    "LLCSamples",
    "check_inputs",
    "estimate_llc",
    "llc_from_samples",
    "llc_from_traces",
    "merge_samples",
    "sample_components",
    "sample_llc",
]
