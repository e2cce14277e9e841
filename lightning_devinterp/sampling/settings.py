"""Chain settings: how many chains an estimate runs, how long, and how, as one frozen object."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The counts of :class:`ChainSettings` and the least value each accepts, in checking order.
_COUNTS = (
    ("num_chains", 1),
    ("num_draws", 1),
    ("num_burnin", 0),
    ("steps_between_draws", 1),
    ("init_loss_batches", 1),
)


@dataclass(frozen=True)
class ChainSettings:
    """The chains of one estimate, validated on construction.

    Args:
        num_chains: independent chains, each started at w*.
        num_draws: draws kept per chain.
        num_burnin: SGLD steps per chain before its first draw (discarded).
        steps_between_draws: SGLD steps from one kept draw to the next.
        seed: chain ``c`` takes its noise and batch order from ``(seed, c)``, so estimates
            with one seed share their dice (common random numbers).
        init_loss_batches: batches whose mean loss is L(w*).
        paired: each draw's reference is the loss of w* on the draw's own minibatch (one more
            forward pass per draw; batch-to-batch noise cancels), else L(w*).
        train_mode: run the sampling copy in train mode (dropout, batch statistics), not eval.
        mala: measure the MALA acceptance rate of the steps too (a diagnostic).
        step_check: run the chains again at half the step size, same seeds (common random
            numbers), to measure the step-size bias and extrapolate to lr -> 0 (a diagnostic
            that doubles the sampling; read by the estimators, not by the chain runner).

    Example:
        >>> chains = ChainSettings(num_chains=2, num_draws=50)
        >>> chains.replace(num_burnin=100).steps_per_chain
        150
    """

    num_chains: int = 4
    num_draws: int = 200
    num_burnin: int = 0
    steps_between_draws: int = 1
    seed: int = 0
    init_loss_batches: int = 16
    paired: bool = True
    train_mode: bool = False
    mala: bool = False
    step_check: bool = False

    def __post_init__(self) -> None:
        """Raise a ``ValueError`` naming the first count that is not a valid integer."""
        for name, least in _COUNTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name}={value!r} is invalid; use an integer >= {least}.")

    @classmethod
    def split(cls, options: Mapping[str, Any]) -> tuple[ChainSettings, dict[str, Any]]:
        """The chain settings among keyword ``options`` (defaults for those absent), and the
        other options."""
        names = {f.name for f in dataclasses.fields(cls)}
        chains = cls(**{k: v for k, v in options.items() if k in names})
        return chains, {k: v for k, v in options.items() if k not in names}

    def replace(self, **changes: Any) -> ChainSettings:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def steps_per_chain(self) -> int:
        """SGLD steps each chain runs: the burn-in, then every draw's steps."""
        return self.num_burnin + self.num_draws * self.steps_between_draws

    def draw_index(self, step: int) -> int | None:
        """The draw that step ``step`` (from 0) records, or None (burn-in or between draws)."""
        k, offset = divmod(step - self.num_burnin, self.steps_between_draws)
        return k if step >= self.num_burnin and offset == 0 else None

    def draws_before(self, step: int) -> int:
        """How many draws the steps before ``step`` recorded."""
        return max(0, -(-(step - self.num_burnin) // self.steps_between_draws))
