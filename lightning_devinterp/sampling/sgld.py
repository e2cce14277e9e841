"""SGLD settings and the update rule, in the parametrization used across the literature.

One step moves the sampled entries ``w`` by

    w <- w - (lr/2) * (nbeta * grad L_B(w) + localization * (w - w*) + weight_decay * w)
           + noise_level * N(0, lr)

where ``L_B`` is the minibatch mean loss and ``w*`` the weights the chain started from.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch


@dataclass(frozen=True)
class SGLD:
    """Settings of a localized, tempered SGLD sampler, validated on construction.

    Args:
        lr: step size epsilon (> 0).
        nbeta: inverse temperature times sample size (> 0). ``None`` resolves, once the
            batch size ``m`` is known, to the common default ``m / log(m)``.
        localization: strength gamma of the pull towards the starting weights (>= 0).
        weight_decay: optional extra L2 term delta (>= 0), usually 0.
        noise_level: scale of the injected noise. Anything but 1 breaks the posterior;
            it exists for diagnostics only.

    Example:
        >>> SGLD(lr=1e-3, nbeta=30, localization=200)
        SGLD(lr=0.001, nbeta=30, localization=200, weight_decay=0.0, noise_level=1.0)
    """

    #: Whether the step rescales each entry by a preconditioner (a subclass's state).
    preconditioned: ClassVar[bool] = False

    lr: float
    nbeta: float | None = None
    localization: float = 200.0
    weight_decay: float = 0.0
    noise_level: float = 1.0

    def __post_init__(self) -> None:
        _check(self.lr, "lr", "a positive step size such as 1e-3", lambda v: v > 0)
        if self.nbeta is not None:
            _check(
                self.nbeta,
                "nbeta",
                "a positive inverse temperature such as 30, or None for batch_size/log(batch_size)",
                lambda v: v > 0,
            )
        _check(self.localization, "localization", "a value >= 0 such as 100", lambda v: v >= 0)
        _check(self.weight_decay, "weight_decay", "a value >= 0 (usually 0)", lambda v: v >= 0)
        _check(
            self.noise_level,
            "noise_level",
            "1.0 (other values break the posterior)",
            lambda v: v > 0,
        )

    def resolve(self, batch_size: int) -> SGLD:
        """These settings with ``nbeta`` filled in from the batch size when it is ``None``."""
        if self.nbeta is not None:
            return self
        return dataclasses.replace(self, nbeta=default_nbeta(batch_size))

    def chain_state(self, like: torch.Tensor, num_burnin: int = 0) -> Any:
        """The state one chain carries from step to step, for entries shaped like ``like``
        (``num_burnin``: the chain's burn-in steps); None, SGLD has none."""
        return None

    @property
    def shrink(self) -> float:
        """``c = 1 - lr (localization + weight_decay) / 2``: the factor by which the drift
        scales ``w`` (before adding ``lr/2 * localization * w*``)."""
        return 1 - self.lr * (self.localization + self.weight_decay) / 2

    @property
    def early_gradient_scale(self) -> float:
        """The factor of a gradient added to ``w`` *before* :meth:`drift` is applied with
        ``grad=None``, so that both together make one whole drift: ``-lr nbeta / (2 c)``,
        ``c`` being :attr:`shrink` (the step then scales it back by ``c``)."""
        if self.nbeta is None:
            raise ValueError("SGLD.nbeta is None: call .resolve(batch_size) before sampling.")
        return -self.lr * self.nbeta / 2 / self.shrink

    def drift(
        self,
        params: torch.Tensor,
        grad: torch.Tensor | Sequence[torch.Tensor] | None,
        anchor: torch.Tensor | Sequence[torch.Tensor],
        views: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``params`` moved in place by the deterministic part of one step; returns it.

        ``grad`` and ``anchor`` (w*) are tensors like ``params``, or, when ``views`` (views of
        ``params``, one per parameter) is given, lists of tensors matching ``views``, so that
        neither needs to be copied into one vector. ``grad=None``: the gradient was already
        added, scaled by :attr:`early_gradient_scale`.
        """
        lr = self.lr
        pull, push = lr * self.localization / 2, -lr * self.nbeta / 2
        if self.localization and not self.weight_decay:  # w + pull (w* - w): one pass
            if views is None:
                params.lerp_(anchor, pull)
            else:
                torch._foreach_lerp_(list(views), list(anchor), pull)
        else:
            if self.weight_decay:
                params.mul_(self.shrink)
            if self.localization:
                _add(params, views, anchor, pull)
        if grad is not None:
            _add(params, views, grad, push)
        return params

    def step(
        self,
        params: torch.Tensor,
        grad: torch.Tensor | Sequence[torch.Tensor] | None,
        anchor: torch.Tensor | Sequence[torch.Tensor],
        generator: torch.Generator,
        noise: torch.Tensor | None = None,
        views: Sequence[torch.Tensor] | None = None,
        state: Any = None,
    ) -> None:
        """Apply one SGLD update in place to the flat vector ``params``.

        ``grad`` is the gradient of the minibatch mean loss at ``params``, or None when it was
        already added (see :meth:`drift`); ``anchor`` is w* (both as in :meth:`drift`).
        ``noise`` is an optional work buffer for the Gaussian draws: they are generated chunk
        by chunk into it (see :func:`noise_chunks`), so the noise needs no memory the size of
        ``params``; with the default buffer (all of ``params``, or ``NOISE_CHUNK`` entries)
        they equal one ``torch.randn(params.numel(), generator=generator)``. ``state``: the
        chain's :meth:`chain_state` (unused here).
        """
        if self.nbeta is None:
            raise ValueError("SGLD.nbeta is None: call .resolve(batch_size) before sampling.")
        # w <- w - lr/2 * (nbeta*g + gamma*(w - w*) + delta*w) + sqrt(lr)*xi: the drift in two
        # passes (a lerp toward w*, the gradient step; three with weight decay), then the noise
        self.drift(params, grad, anchor, views)
        scale = self.noise_level * math.sqrt(self.lr)
        if noise is None:
            noise = params.new_empty(min(params.numel(), NOISE_CHUNK))
        for start, stop in noise_chunks(params.numel(), noise.numel()):
            draws = noise[: stop - start].normal_(generator=generator)
            params[start:stop].add_(draws, alpha=scale)

    def move(
        self,
        params: torch.Tensor,
        grad: torch.Tensor,
        anchor: torch.Tensor,
        draws: torch.Tensor,
        state: Any = None,
    ) -> torch.Tensor:
        """One update of ``params`` in place with the standard normal ``draws`` given whole
        (batched chains: ``params``, ``grad`` and ``draws`` may carry a leading job dimension);
        returns ``params``."""
        return self.drift(params, grad, anchor).add_(draws, alpha=self.noise_level * self.lr**0.5)


#: Gaussian draws are generated in chunks of at most this many entries (256 KiB in float32).
NOISE_CHUNK = 1 << 16

#: torch draws fewer than this many normals on a CPU with another algorithm than longer runs.
_SHORT_DRAW = 16


def noise_chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of the chunks in which ``total`` Gaussian draws are made with a buffer of
    ``size`` entries, one at a time (no list of views for a large model).

    Chunks have ``size`` entries, except the last two when the last would be shorter than 16:
    the one before gives it 16 entries. Then, for a ``size`` that is a multiple of 16, the
    draws are those of one call for all ``total`` entries (torch fills CPU normals in blocks of
    16 and draws a run shorter than 16 differently), so chains run one by one and batched
    chains draw the same noise.
    """
    start = 0
    while start < total:
        stop = min(start + size, total)
        if 0 < total - stop < _SHORT_DRAW < size:
            stop -= _SHORT_DRAW
        yield start, stop
        start = stop


def _add(
    params: torch.Tensor,
    views: Sequence[torch.Tensor] | None,
    other: torch.Tensor | Sequence[torch.Tensor],
    alpha: float,
) -> None:
    """``params += alpha * other``, as one tensor or parameter by parameter."""
    if views is None:
        params.add_(other, alpha=alpha)
    else:
        torch._foreach_add_(list(views), list(other), alpha=alpha)


def default_nbeta(batch_size: int) -> float:
    """The common default ``m / log(m)`` for batch size ``m`` (at least 1)."""
    if batch_size < 2:
        return 1.0
    return batch_size / math.log(batch_size)


def _check(value: float, name: str, fix: str, ok, owner: str = "SGLD") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{owner} {name} must be a finite number, got {value!r}; use {fix}.")
    if not ok(value):
        raise ValueError(f"{owner} {name}={value!r} is invalid; use {fix}.")
