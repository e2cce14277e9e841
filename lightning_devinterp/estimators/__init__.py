"""Estimators: traces in, numbers out (LLC, health)."""

from lightning_devinterp.estimators.llc import LLCEstimate, estimate_llc, llc_from_traces

__all__ = ["LLCEstimate", "estimate_llc", "llc_from_traces"]
