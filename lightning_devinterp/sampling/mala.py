"""MALA acceptance of SGLD proposals: how far a step size is from exact sampling."""

from __future__ import annotations

import torch

from lightning_devinterp.sampling.sgld import SGLD


class MalaAcceptance:
    """Mean Metropolis-adjusted Langevin acceptance probability of a chain's SGLD steps.

    For the potential U(w) = nbeta L(w) + gamma/2 |w - w*|^2 + delta/2 |w|^2 and the SGLD
    proposal w' ~ N(w - eps/2 grad U(w), eps), the acceptance probability of w -> w' is
    min(1, exp(U(w) - U(w') + (|w' - w + eps/2 grad U(w)|^2 - |w - w' + eps/2 grad U(w')|^2)
    / (2 eps))). Each L is a minibatch loss, so consecutive steps see different batches: the
    rate is a diagnostic (near 1: the step size is small enough), not an exact test.
    """

    def __init__(self, sampler: SGLD) -> None:
        if sampler.preconditioned:
            raise ValueError(
                f"The MALA diagnostic measures plain SGLD proposals, not {type(sampler).__name__}'s"
                " preconditioned ones; use mala=False with this sampler."
            )
        self.sampler = sampler
        self.previous: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.total: torch.Tensor | None = None
        self.count = 0

    @torch.no_grad()
    def observe(
        self, params: torch.Tensor, grad: torch.Tensor, anchor: torch.Tensor, loss: torch.Tensor
    ) -> None:
        """Record the chain at ``params`` (before its update) with the loss and its gradient."""
        s = self.sampler
        offset = params - anchor
        grad_u = s.nbeta * grad + s.localization * offset + s.weight_decay * params
        u = s.nbeta * loss + 0.5 * s.localization * offset.square().sum()
        u = u + 0.5 * s.weight_decay * params.square().sum()
        if self.previous is not None:
            w0, grad_u0, u0 = self.previous
            variance = s.lr * s.noise_level**2
            forward = (params - w0 + 0.5 * s.lr * grad_u0).square().sum()
            backward = (w0 - params + 0.5 * s.lr * grad_u).square().sum()
            log_ratio = (u0 - u) + (forward - backward) / (2 * variance)
            accept = torch.exp(torch.clamp(log_ratio, max=0.0))
            self.total = accept if self.total is None else self.total + accept
            self.count += 1
        self.previous = (params.clone(), grad_u, u)

    def rate(self) -> float:
        """Mean acceptance probability (NaN before two observations)."""
        return float(self.total) / self.count if self.count else float("nan")
