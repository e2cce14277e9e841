"""SGLD against RMSpropSGLD on models whose learning coefficient is known: the range of step
sizes over which each estimate stays in its band.

Cases (n = 20,000 samples, nbeta = n / log n = 2019, loss 1/2 |y - f(x)|^2 with unit label
noise, the chains started at the true parameters w*):

- regular: linear regression, d = 8, lambda = d/2 = 4, band 15%, localization 1;
- rrr: reduced-rank regression 4-3-4 at a rank-1 truth, lambda = 6, band 40%, localization 100;
- dln: deep linear network 5-4-3-4-5 at a rank-2 truth, lambda = 9, band 40%, localization 100.

For each case, sampler and log-spaced lr (half-decade steps): the estimate at 2 seeds (each 2
chains of 500 burn-in steps and 1000 draws, paired), and the widest lr range where both seeds
are in the band.

RMSpropSGLD's ``eps`` bounds its preconditioner by ``1/eps``; at the class default (1e-8)
the entries whose gradient is exactly 0 at w* (the unused hidden units of rrr and dln) get
steps of ``lr * 1e8`` and the estimates run away: ``--rmsprop-eps`` sets it.

    python benchmarks/preconditioned_sampler.py [--cases regular rrr dln] [--seeds 0 1]
        [--samplers SGLD RMSpropSGLD] [--rmsprop-eps 1e-2]
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from lightning_devinterp import SGLD, RMSpropSGLD, estimate_llc
from lightning_devinterp.demos.deep_linear import (
    TeacherData,
    critical_point,
    half_mse,
    learning_coefficient,
)

N = 20_000
NBETA = N / math.log(N)


class Batches:
    """Minibatches of tensors, reshuffled each pass by the global generator (seeded by the
    engine per chain), without a DataLoader's per-sample collation."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size

    def __iter__(self):
        order = torch.randperm(len(self.x))
        for start in range(0, len(self.x) - self.batch_size + 1, self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.x[index], self.y[index]


@dataclass
class Case:
    """A model at its true parameters, its data and its known learning coefficient."""

    name: str
    model: nn.Module
    batches: Batches
    llc: float
    band: float
    localization: float


def regular(d: int = 8, batch: int = 1000, seed: int = 0) -> Case:
    """Linear regression y = w . x + N(0, 1), x ~ N(0, I_d), at the true w."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=g, dtype=torch.float64)
    w = torch.randn(1, d, generator=g, dtype=torch.float64)
    y = x @ w.T + torch.randn(N, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w)
    return Case("regular", model, Batches(x, y, batch), d / 2, 0.15, 1.0)


def deep_linear(widths, singular_values, batch: int = 1000, seed: int = 0) -> Case:
    """A bias-free linear network at the balanced factorization of a teacher of rank
    ``len(singular_values)``, unit label noise."""
    data = TeacherData(N, widths[0], widths[-1], singular_values, noise=1.0, seed=seed)
    layers = [nn.Linear(a, b, bias=False) for a, b in itertools.pairwise(widths)]
    model = nn.Sequential(*layers).double()
    with torch.no_grad():
        for layer, weight in zip(
            layers, critical_point(data, widths, len(singular_values)), strict=True
        ):
            layer.weight.copy_(weight)
    rank = len(singular_values)
    name = "rrr" if len(widths) == 3 else "dln"
    llc = learning_coefficient(widths, rank)
    return Case(name, model, Batches(data.x.double(), data.y.double(), batch), llc, 0.4, 100.0)


CASES = {
    "regular": regular,
    "rrr": lambda: deep_linear((4, 3, 4), (2.0,)),
    "dln": lambda: deep_linear((5, 4, 3, 4, 5), (2.0, 1.0)),
}

#: log10 of the lowest and highest lr of each sampler's grid (half-decade steps): wide enough
#: to leave every band on both sides (RMSpropSGLD's steps are lr * G, G about 1/|g| >> 1 here)
GRIDS = {"SGLD": (-7.0, -3.0), "RMSpropSGLD": (-8.5, -4.5)}
STEPS_PER_DECADE = 2


def estimate(case: Case, sampler: SGLD, seed: int, draws: int, burnin: int) -> float:
    """One estimate's mean (NaN if every chain diverged)."""
    est = estimate_llc(
        case.model,
        case.batches,
        half_mse,
        sampler=sampler,
        num_chains=2,
        num_draws=draws,
        num_burnin=burnin,
        init_loss_batches=4,
        seed=seed,
    )
    return est.mean


def sweep(case: Case, kind, kind_name: str, seeds, draws: int, burnin: int) -> list[tuple]:
    """(lr, per-seed estimates) over the case's lr grid (``kind`` builds the sampler)."""
    low, high = GRIDS[kind_name]
    rows = []
    for k in range(round((high - low) * STEPS_PER_DECADE) + 1):
        lr = 10 ** (low + k / STEPS_PER_DECADE)
        sampler = kind(lr=lr, nbeta=NBETA, localization=case.localization)
        rows.append((lr, [estimate(case, sampler, s, draws, burnin) for s in seeds]))
    return rows


def band_range(case: Case, rows) -> tuple[float, float] | None:
    """The widest run of consecutive lrs where every seed is in the band."""
    ok = [all(abs(v - case.llc) <= case.band * case.llc for v in vals) for _, vals in rows]
    best, start = None, None
    for i, good in enumerate([*ok, False]):
        if good and start is None:
            start = i
        if not good and start is not None:
            if best is None or i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return None if best is None else (rows[best[0]][0], rows[best[1] - 1][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--burnin", type=int, default=500)
    parser.add_argument("--samplers", nargs="+", default=["SGLD", "RMSpropSGLD"])
    parser.add_argument("--rmsprop-eps", type=float, default=1e-8)
    args = parser.parse_args()
    kinds = {"SGLD": SGLD, "RMSpropSGLD": partial(RMSpropSGLD, eps=args.rmsprop_eps)}
    torch.set_num_threads(1)
    summary = []
    for name in args.cases:
        case = CASES[name]()
        for kind_name in args.samplers:
            start = time.perf_counter()
            rows = sweep(case, kinds[kind_name], kind_name, args.seeds, args.draws, args.burnin)
            print(f"\n{name} (lambda = {case.llc:g}, band {case.band:.0%}), {kind_name}:")
            for lr, vals in rows:
                print(f"  lr {lr:.2e}: " + "  ".join(f"{v:7.2f}" for v in vals))
            found = band_range(case, rows)
            width = math.log10(found[1] / found[0]) if found else float("nan")
            summary.append((name, kind_name, found, width, time.perf_counter() - start))
    print("\n| case | sampler | lr range in band (both seeds) | decades |")
    print("|---|---|---|---:|")
    for name, kind, found, width, _ in summary:
        text = f"{found[0]:.2g} – {found[1]:.2g}" if found else "none"
        print(f"| {name} | {kind} | {text} | {width:.2f} |")


if __name__ == "__main__":
    main()
