"""The local learning coefficient: ``estimate_llc`` and its result, ``LLCEstimate`` (pure
arithmetic on the samples of :mod:`~lightning_devinterp.estimators.llc_sampling`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from lightning_devinterp.components import Component
from lightning_devinterp.estimators.bias import (
    data_warning,
    noise_bias,
    noise_warning,
    preconditioner_warning,
    step_sensitivity,
    step_warning,
)
from lightning_devinterp.estimators.diagnostics import (
    RHAT_MAX,
    LLCHealthWarning,
    gelman_rubin,
    health_warnings,
    is_stationary,
    stationarity,
)
from lightning_devinterp.estimators.llc_sampling import (
    LLCSamples,
    check_inputs,
    default_loss_fn,
    merge_samples,
    reference_losses,
    sample_components,
    sample_llc,
)
from lightning_devinterp.sampling import SGLD, ChainSettings, ChainTraces, LossFn
from lightning_devinterp.sampling.runner import BATCHED_MAX_ENTRIES

__all__ = [
    "BATCHED_MAX_ENTRIES",
    "LLCEstimate",
    "LLCSamples",
    "check_inputs",
    "default_loss_fn",
    "estimate_llc",
    "llc_from_samples",
    "llc_from_traces",
    "merge_samples",
    "reference_losses",
    "sample_components",
    "sample_llc",
]


@dataclass
class LLCEstimate:
    """An LLC estimate and its health.

    Attributes:
        mean: the LLC, averaged over healthy chains (NaN if none is healthy).
        std: standard deviation of the per-chain LLCs (0 with one chain).
        per_chain: (chains,) LLC of each chain; NaN for a diverged chain.
        loss_trace: (chains, draws) minibatch loss at each draw.
        llc_trace: (chains, draws) per-draw contribution ``nbeta * (loss - reference)``, where
            the reference is the loss of w* on the same minibatch (paired form) or ``init_loss``.
        init_loss: L_n(w*) averaged over ``init_loss_batches`` batches.
        init_loss_stderr: its standard error across those batches.
        sampler: the SGLD settings used (``nbeta`` resolved).
        paired: whether the paired (same-minibatch) form was used.
        diverged_chains: indices of the chains that produced NaN/Inf and were excluded.
        negative: the LLC is below zero (w* is not a local minimum at this resolution, or lr is
            too large).
        drift: change of the mean of ``llc_trace`` from the third to the last quarter of the
            draws, relative to ``mean``; ``drift_z`` is its significance.
        stationary: False when the drift is both significant and larger than 10%.
        rhat: Gelman-Rubin R-hat of ``llc_trace`` over the healthy chains (NaN with one).
        chains_agree: ``rhat`` is at most 1.1 (or unknown).
        warnings: what is wrong, each with what to change.
        component: name of the component sampled, or None for the whole model.
        mala_acceptance: mean MALA acceptance probability of the SGLD steps (when asked for
            with ``mala=True``); well below 1 means the step size is too large.
        minibatch_noise: ``r = lr nbeta^2 Var(grad L_B) / 4`` at w*, averaged over the sampled
            entries: the drift's minibatch noise over the injected noise (NaN when not
            measured: one L(w*) batch); ``minibatch_noise_max`` its largest entry.
        minibatch_bias: the relative bias of ``mean`` that noise is expected to cause
            (:mod:`~lightning_devinterp.estimators.bias`); above 0.1 it warns.
        step_bias: with ``step_check``, the relative bias of ``mean`` measured by halving the
            step, ``2 (mean - mean(lr/2)) / extrapolated``; else None.
        extrapolated: with ``step_check``, the estimate extrapolated to lr -> 0,
            ``2 mean(lr/2) - mean``; else None.
        data_share: the share of the sampling's wall time spent fetching batches.
    """

    mean: float
    std: float
    per_chain: torch.Tensor
    loss_trace: torch.Tensor
    llc_trace: torch.Tensor
    init_loss: float
    init_loss_stderr: float
    sampler: SGLD
    paired: bool
    diverged_chains: list[int] = field(default_factory=list)
    negative: bool = False
    drift: float = float("nan")
    drift_z: float = float("nan")
    stationary: bool = True
    rhat: float = float("nan")
    chains_agree: bool = True
    warnings: list[str] = field(default_factory=list)
    component: str | None = None
    mala_acceptance: float | None = None
    minibatch_noise: float = math.nan
    minibatch_noise_max: float = math.nan
    minibatch_bias: float = math.nan
    step_bias: float | None = None
    extrapolated: float | None = None
    data_share: float | None = None

    @property
    def healthy(self) -> bool:
        """No diverged chain, not negative, stationary, chains agree."""
        return (
            not self.diverged_chains and not self.negative and self.stationary and self.chains_agree
        )

    def metrics(self, prefix: str = "llc") -> dict[str, float]:
        """Scalars to log, named ``<prefix>/mean``, ``<prefix>/std``, ``<prefix>/health/...``;
        the figures of the bias checks only when run and finite."""
        return {
            f"{prefix}/mean": self.mean,
            f"{prefix}/std": self.std,
            f"{prefix}/init_loss": self.init_loss,
            f"{prefix}/health/diverged_chains": float(len(self.diverged_chains)),
            f"{prefix}/health/negative": float(self.negative),
            f"{prefix}/health/drift": self.drift,
            f"{prefix}/health/stationary": float(self.stationary),
            f"{prefix}/health/rhat": self.rhat,
            **_present(
                {
                    f"{prefix}/health/minibatch_noise": self.minibatch_noise,
                    f"{prefix}/health/minibatch_bias": self.minibatch_bias,
                    f"{prefix}/health/step_bias": self.step_bias,
                    f"{prefix}/extrapolated": self.extrapolated,
                    f"{prefix}/health/data_share": self.data_share,
                }
            ),
            **(
                {f"{prefix}/health/mala_acceptance": self.mala_acceptance}
                if self.mala_acceptance is not None
                else {}
            ),
        }

    def to_record(self) -> dict[str, Any]:
        """A JSON-serializable summary (no traces)."""
        return {
            "mean": self.mean,
            "std": self.std,
            "per_chain": [_json_float(v) for v in self.per_chain.tolist()],
            "init_loss": self.init_loss,
            "init_loss_stderr": self.init_loss_stderr,
            "sampler": asdict(self.sampler),
            "paired": self.paired,
            "num_draws": int(self.loss_trace.shape[1]),
            "diverged_chains": list(self.diverged_chains),
            "negative": self.negative,
            "drift": _json_float(self.drift),
            "drift_z": _json_float(self.drift_z),
            "stationary": self.stationary,
            "rhat": _json_float(self.rhat),
            "chains_agree": self.chains_agree,
            "warnings": list(self.warnings),
            "component": self.component,
            "mala_acceptance": self.mala_acceptance,
            "minibatch_noise": _json_float(self.minibatch_noise),
            "minibatch_noise_max": _json_float(self.minibatch_noise_max),
            "minibatch_bias": _json_float(self.minibatch_bias),
            "step_bias": self.step_bias,
            "extrapolated": self.extrapolated,
            "data_share": self.data_share,
        }


def llc_from_traces(
    traces: ChainTraces,
    sampler: SGLD,
    init_losses: torch.Tensor,
    *,
    component: str | None = None,
) -> LLCEstimate:
    """Reduce chain traces to an :class:`LLCEstimate` (pure arithmetic, no sampling)."""
    nbeta = float(sampler.nbeta)
    init_loss = float(init_losses.double().mean())
    n_init = init_losses.numel()
    init_stderr = float(init_losses.double().std()) / math.sqrt(n_init) if n_init > 1 else 0.0
    paired = traces.reference is not None
    reference = traces.reference if paired else torch.full_like(traces.loss, init_loss)
    llc_trace = nbeta * (traces.loss.double() - reference.double())
    ok = ~traces.diverged & torch.isfinite(llc_trace).all(1)
    per_chain = torch.where(ok, llc_trace.mean(1), torch.full_like(llc_trace[:, 0], math.nan))
    healthy = per_chain[ok]
    mean = float(healthy.mean()) if healthy.numel() else math.nan
    std = float(healthy.std()) if healthy.numel() > 1 else 0.0
    change, z = stationarity(llc_trace[ok]) if healthy.numel() else (math.nan, math.nan)
    drift = change / abs(mean) if mean not in (0.0,) and math.isfinite(mean) else 0.0
    stationary = is_stationary(drift, z)
    rhat = gelman_rubin(llc_trace[ok])
    diverged = [c for c, good in zip(traces.chains, ok.tolist(), strict=True) if not good]
    return LLCEstimate(
        mean=mean,
        std=std,
        per_chain=per_chain.float(),
        loss_trace=traces.loss,
        llc_trace=llc_trace.float(),
        init_loss=init_loss,
        init_loss_stderr=init_stderr,
        sampler=sampler,
        paired=paired,
        diverged_chains=diverged,
        negative=math.isfinite(mean) and mean < 0,
        drift=drift,
        drift_z=z,
        stationary=stationary,
        rhat=rhat,
        chains_agree=not rhat > RHAT_MAX,
        warnings=health_warnings(
            mean=mean,
            num_chains=len(traces.chains),
            diverged=diverged,
            drift=drift,
            drift_z=z,
            lr=sampler.lr,
            stationary=stationary,
            rhat=rhat,
        ),
        component=component,
        mala_acceptance=float(traces.mala[ok].mean())
        if traces.mala is not None and bool(ok.any())
        else None,
    )


def llc_from_samples(samples: LLCSamples) -> LLCEstimate:
    """The :class:`LLCEstimate` of some samples, with the bias checks their samples allow:
    the minibatch noise, the step check, the data loading share."""
    estimate = llc_from_traces(
        samples.traces, samples.sampler, samples.init_losses, component=samples.component
    )
    sampler, found = estimate.sampler, []
    if samples.noise is not None:
        estimate.minibatch_noise, estimate.minibatch_noise_max = samples.noise.ratios(sampler)
        estimate.minibatch_bias = noise_bias(samples.noise, sampler, estimate.mean)
        found.append(noise_warning(samples.noise, sampler, estimate.mean))
        found.append(preconditioner_warning(samples.noise, sampler))
    if samples.half_step is not None:
        half = llc_from_traces(samples.half_step, sampler, samples.init_losses)
        bias, estimate.extrapolated, z = step_sensitivity(estimate.per_chain, half.per_chain)
        estimate.step_bias = bias
        found.append(step_warning(sampler, bias, z, estimate.extrapolated))
    if samples.data_share is not None:
        estimate.data_share = samples.data_share
        found.append(data_warning(samples.data_share))
    estimate.warnings.extend(message for message in found if message)
    return estimate


def estimate_llc(
    model: nn.Module,
    dataloader: Iterable,
    loss_fn: LossFn | None = None,
    *,
    sampler: SGLD | None = None,
    num_chains: int = 4,
    num_draws: int = 200,
    num_burnin: int = 0,
    steps_between_draws: int = 1,
    component: Component | None = None,
    seed: int = 0,
    init_loss_batches: int = 16,
    paired: bool = True,
    train_mode: bool = False,
    transfer: Callable[[Any], Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    mala: bool = False,
    step_check: bool = False,
) -> LLCEstimate:
    """Estimate the local learning coefficient of ``model`` at its current weights w*.

    ``lambda_hat = nbeta * (E_w[L(w)] - L(w*))`` with the expectation over SGLD draws from the
    localized tempered posterior (PAPERS.md). The model is copied once; its weights, grads,
    modes and the global RNG are left as they were.

    Args:
        model: the model at w*.
        dataloader: batches to sample with (a fresh iterator, cycled as needed).
        loss_fn: ``loss_fn(model, batch)`` returning the mean loss or unreduced
            per-sample/per-token losses. Default: the model's ``training_step(batch, 0)``.
        sampler: SGLD settings; default ``SGLD(lr=1e-3)`` with nbeta = m/log m.
        num_chains: independent chains, each from w*.
        num_draws: draws per chain kept for the average.
        num_burnin: steps per chain discarded before the first draw.
        steps_between_draws: SGLD steps from one draw to the next.
        component: sample only this component's entries (weight-refined LLC).
        seed: chain ``c`` uses noise and batch order seeded from ``(seed, c)``; the same seed
            gives the same dice on every call (common random numbers along training).
        init_loss_batches: batches averaged for L(w*).
        paired: subtract from each draw's loss the loss of w* on the same minibatch (one extra
            forward pass per draw; cancels batch-to-batch noise). Otherwise subtract L(w*).
        train_mode: sample in train mode (dropout, BatchNorm batch statistics) instead of eval.
        transfer: moves a batch to the model's device; default moves every tensor.
        progress: called as ``progress(done_steps, total_steps)`` while sampling.
        mala: also measure the MALA acceptance rate of the SGLD steps (a diagnostic).
        step_check: also run the chains at lr/2 with the same seeds (common random numbers,
            burn-in doubled) and report the step bias and the estimate extrapolated to
            lr -> 0 (``step_bias``, ``extrapolated``). Doubles the sampling; worth it once per
            setting, when no calibration has checked the step (BENCHMARKS.md).

    Returns:
        The :class:`LLCEstimate`. Each of its ``warnings`` (what is wrong with the chains and
        what to change) is also issued as an :class:`LLCHealthWarning`.

    Example:
        >>> est = estimate_llc(model, loader, loss_fn, sampler=SGLD(lr=1e-4, nbeta=10))
        >>> est.mean, est.std, est.healthy
    """
    chains = ChainSettings(
        num_chains, num_draws, num_burnin, steps_between_draws, seed, init_loss_batches, paired,
        train_mode, mala, step_check,
    )  # fmt: skip
    [samples] = sample_components(
        model,
        dataloader,
        loss_fn,
        components=[component],
        sampler=sampler,
        chains=chains,
        transfer=transfer,
        progress=progress,
    )
    estimate = llc_from_samples(samples)
    for message in estimate.warnings:
        warnings.warn(message, LLCHealthWarning, stacklevel=2)
    return estimate


def _present(values: dict[str, float | None]) -> dict[str, float]:
    """The finite values (a check that was not run, or a bias without bound, is left out)."""
    return {k: v for k, v in values.items() if v is not None and math.isfinite(v)}


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None
