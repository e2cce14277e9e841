"""RMSProp-preconditioned SGLD: SGLD whose step size is rescaled entry by entry.

One step of a chain, ``g`` the gradient of the minibatch mean loss at ``w`` and ``t`` the
chain's step count (from 1):

    V <- alpha V + (1 - alpha) g^2                  (V = 0 at w*; each chain its own)
    G = 1 / (sqrt(V / (1 - alpha^t)) + eps)          (diagonal, entry by entry)
    w <- w - (lr/2) G (nbeta g + localization (w - w*) + weight_decay w)
           + noise_level sqrt(lr G) N(0, 1)

What it samples: see :class:`RMSpropSGLD`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lightning_devinterp.sampling.sgld import NOISE_CHUNK, SGLD, _check, noise_chunks


@dataclass
class PreconditionerState:
    """One chain's RMSProp preconditioner, created at its start (from w*) and dropped at its end.

    Attributes:
        square_avg: V, the running mean of the squared minibatch gradients.
        scale: G = 1 / (sqrt(V / (1 - alpha^t)) + eps) of the last update.
        noise_scale: sqrt(G).
        steps: t, the updates V has had.
        adapt_steps: V stops changing after this many updates (None: it never does).
    """

    square_avg: torch.Tensor
    scale: torch.Tensor
    noise_scale: torch.Tensor
    steps: int = 0
    adapt_steps: int | None = None

    @property
    def adapting(self) -> bool:
        """Whether the next step still updates V."""
        return self.adapt_steps is None or self.steps < self.adapt_steps


@dataclass(frozen=True)
class RMSpropSGLD(SGLD):
    """Localized, tempered SGLD preconditioned by RMSProp's running gradient scale.

    A drop-in :class:`SGLD` (a subclass: every sampler option, component, common random
    numbers, DDP chain splitting, susceptibilities and ``dataclasses.replace`` work alike):
    each entry's step is ``lr * G_i``, ``G_i`` about one over the typical size of its gradient,
    so entries with large and small gradients move by comparable amounts. ``lr`` is therefore
    on another scale than SGLD's (about ``lr_SGLD * |g|``: smaller when gradients are small).

    What it samples. The target is SGLD's, ``p(w) ~ exp(-U(w))`` with
    ``U = nbeta L + localization/2 |w - w*|^2 + weight_decay/2 |w|^2``. For a preconditioner
    ``G`` that is fixed (positive, diagonal), the step is the Euler discretisation of the
    Langevin diffusion ``dw = -G grad U dt / 2 + G^(1/2) dB``, whose stationary law is that
    target for every such ``G``; the step size and the minibatch add the same kinds of bias as
    for SGLD, per entry with ``lr G_i`` for ``lr`` (minibatch noise next to the injected
    noise: ``lr G_i nbeta^2 Var(g_i) / 4``). For ``G`` that depends on ``w`` the diffusion
    needs the extra drift ``+ (lr/2) Gamma``, ``Gamma_i = sum_j dG_ij/dw_j`` (here
    ``dG_ii/dw_i``), or its stationary law is not the target. RMSProp's ``G`` depends on the
    chain's past gradients, not on ``w``: while ``V`` adapts the kernel changes at every step,
    and the draws follow the target only as far as ``G`` changes slowly along the chain (over
    ``1/(1 - alpha)`` steps ``V`` averages; 100 at the default). Taking ``V`` as a function of
    the current gradient (Li et al., 2016) gives ``Gamma_i = -(1 - alpha) G_i^2 g_i H_ii /
    sqrt(V_i)`` (``H_ii``: the Hessian's diagonal): of order ``1 - alpha`` and dropped here, as
    by devinterp, since a Hessian diagonal costs more than the step itself.
    ``freeze_after_burnin=True`` is the exact alternative: ``V`` adapts during the burn-in (at
    least one step) and is then fixed, so over the draws ``G`` is a constant, ``Gamma = 0``
    and the chain samples the target up to the step-size and minibatch biases.

    Unlike devinterp, ``V`` is bias-corrected (divided by ``1 - alpha^t``), so the first
    steps are not up to ``1/sqrt(1 - alpha)`` (10x) larger than the later ones. Entries whose
    gradient stays 0 get ``G = 1/eps``: raise ``eps`` towards the gradients' scale if a model
    has such entries, or those entries diverge.

    Args:
        lr, nbeta, localization, weight_decay, noise_level: as for :class:`SGLD`.
        alpha: decay of the running mean of squared gradients, in [0, 1).
        eps: added to ``sqrt(V)`` (> 0); bounds ``G`` by ``1/eps``.
        freeze_after_burnin: stop adapting ``V`` after the chain's burn-in.

    Example:
        >>> RMSpropSGLD(lr=1e-5, nbeta=30, localization=100).alpha
        0.99
    """

    preconditioned = True

    alpha: float = 0.99
    eps: float = 1e-8
    freeze_after_burnin: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            self.alpha,
            "alpha",
            "a decay in [0, 1) such as 0.99",
            lambda v: 0 <= v < 1,
            "RMSpropSGLD",
        )
        _check(
            self.eps, "eps", "a small positive value such as 1e-8", lambda v: v > 0, "RMSpropSGLD"
        )
        if not isinstance(self.freeze_after_burnin, bool):
            raise TypeError(
                f"RMSpropSGLD freeze_after_burnin must be True or False, got "
                f"{self.freeze_after_burnin!r}."
            )

    def chain_state(self, like: torch.Tensor, num_burnin: int = 0) -> PreconditionerState:
        """A fresh preconditioner (V = 0) for a chain over entries shaped like ``like``."""
        return PreconditionerState(
            square_avg=torch.zeros_like(like),
            scale=torch.empty_like(like),
            noise_scale=torch.empty_like(like),
            adapt_steps=max(num_burnin, 1) if self.freeze_after_burnin else None,
        )

    def precondition(self, grad: torch.Tensor, state: PreconditionerState) -> torch.Tensor:
        """Update ``state`` with the minibatch gradient ``grad``; returns G (``state.scale``)."""
        if state.adapting:
            state.square_avg.mul_(self.alpha).addcmul_(grad, grad, value=1 - self.alpha)
            state.steps += 1
            torch.div(state.square_avg, 1 - self.alpha**state.steps, out=state.scale)
            state.scale.sqrt_().add_(self.eps).reciprocal_()
            torch.sqrt(state.scale, out=state.noise_scale)
        return state.scale

    def preconditioned_drift(
        self,
        params: torch.Tensor,
        grad: torch.Tensor,
        anchor: torch.Tensor,
        state: PreconditionerState,
    ) -> torch.Tensor:
        """``params`` moved in place by ``-(lr/2) G grad U``; returns it."""
        scale = self.precondition(grad, state)
        force = grad * self.nbeta
        if self.localization:
            force.add_(params, alpha=self.localization).sub_(anchor, alpha=self.localization)
        if self.weight_decay:
            force.add_(params, alpha=self.weight_decay)
        return params.addcmul_(scale, force, value=-self.lr / 2)

    def step(
        self,
        params: torch.Tensor,
        grad: torch.Tensor | Sequence[torch.Tensor] | None,
        anchor: torch.Tensor | Sequence[torch.Tensor],
        generator: torch.Generator,
        noise: torch.Tensor | None = None,
        views: Sequence[torch.Tensor] | None = None,
        state: PreconditionerState | None = None,
    ) -> None:
        """One update in place of the flat vector ``params`` (arguments as
        :meth:`SGLD.step`; ``state`` from :meth:`chain_state`, required). The Gaussian draws are
        SGLD's, so both samplers share their noise at one seed."""
        if self.nbeta is None:
            raise ValueError("SGLD.nbeta is None: call .resolve(batch_size) before sampling.")
        if grad is None or state is None:
            raise ValueError(
                "RMSpropSGLD.step needs the gradient and the chain's state "
                "(chain_state(params)); it has no gradient-in-backward form."
            )
        self.preconditioned_drift(params, _flat(grad), _flat(anchor), state)
        scale = self.noise_level * math.sqrt(self.lr)
        if noise is None:
            noise = params.new_empty(min(params.numel(), NOISE_CHUNK))
        for start, stop in noise_chunks(params.numel(), noise.numel()):
            draws = noise[: stop - start].normal_(generator=generator)
            params[start:stop].addcmul_(draws, state.noise_scale[start:stop], value=scale)

    def move(
        self,
        params: torch.Tensor,
        grad: torch.Tensor,
        anchor: torch.Tensor,
        draws: torch.Tensor,
        state: PreconditionerState | None = None,
    ) -> torch.Tensor:
        """One update with the standard normal ``draws`` given whole (batched chains)."""
        if state is None:
            raise ValueError("RMSpropSGLD.move needs the chains' state (chain_state(params)).")
        self.preconditioned_drift(params, grad, anchor, state)
        return params.addcmul_(draws, state.noise_scale, value=self.noise_level * self.lr**0.5)


def _flat(values: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """One flat vector from a tensor or from a list of per-parameter tensors."""
    if isinstance(values, torch.Tensor):
        return values
    return torch.cat([v.reshape(-1) for v in values])
