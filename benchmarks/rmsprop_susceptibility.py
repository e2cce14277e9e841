"""Susceptibilities against their closed form, SGLD and RMSpropSGLD, by step and chain length.

The problem of tests/estimators/test_susceptibility.py (linear regression, two components of
three weights, three probes, nbeta = 50, localization 10, batches of 256); each run prints
the relative error of the entries with signal (|chi| > 3 standard errors) and their mean.
Steps are given as fractions of 1/a_max (a_max = nbeta h_max + localization); RMSpropSGLD's
preconditioner adapts over the burn-in and is then frozen (its exact form).

    PYTHONPATH=. python benchmarks/rmsprop_susceptibility.py    (from the repository root)
"""

from __future__ import annotations

import warnings

import torch

from lightning_devinterp import (
    SGLD,
    Component,
    LLCHealthWarning,
    RMSpropSGLD,
    estimate_susceptibilities,
)
from tests.estimators.test_susceptibility import (
    COMPONENTS,
    D,
    Shuffled,
    closed_form,
    quadratic_form,
    regression_problem,
    squared_errors,
)

NBETA, GAMMA = 50.0, 10.0

#: (sampler, step as a fraction of 1/a_max, burn-in, draws per chain), 4 chains each
RUNS = [
    ("SGLD", 0.1, 100, 1500),
    ("SGLD", 0.03, 300, 1500),
    ("SGLD", 0.1, 100, 6000),
    ("RMSpropSGLD", 0.01, 300, 1500),
    ("RMSpropSGLD", 0.003, 300, 1500),
    ("RMSpropSGLD", 0.01, 300, 6000),
]


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", LLCHealthWarning)
    model, data, probes, w_star = regression_problem()
    stiffness = NBETA * float(torch.linalg.eigvalsh(quadratic_form(*data)[0]).max()) + GAMMA
    components = [
        Component(name, {"weight": torch.isin(torch.arange(D), torch.tensor(entries))[None]})
        for name, entries in COMPONENTS.items()
    ]
    truth = closed_form(data, probes, w_star, NBETA, GAMMA)
    print("| sampler | lr x a_max | burn-in | draws | errors (entries with signal) | mean |")
    print("|---|---:|---:|---:|---|---:|")
    for kind, fraction, burnin, draws in RUNS:
        lr = fraction / stiffness
        sampler = (
            SGLD(lr=lr, nbeta=NBETA, localization=GAMMA)
            if kind == "SGLD"
            else RMSpropSGLD(lr=lr, nbeta=NBETA, localization=GAMMA, freeze_after_burnin=True)
        )
        result = estimate_susceptibilities(
            model,
            Shuffled(*data, batch_size=256),
            {name: [probe] for name, probe in probes.items()},
            components,
            squared_errors,
            sampler=sampler,
            num_chains=4,
            num_draws=draws,
            num_burnin=burnin,
            init_loss_batches=1,
            paired=False,
        )
        relative = (result.response.double() - truth) / truth
        signal = truth.abs() > 3 * result.stderr.double()
        errors = ", ".join(f"{v:+.0%}" for v in relative[signal].tolist())
        print(
            f"| {kind} | {fraction:g} | {burnin} | {draws} | {errors} "
            f"| {float(relative[signal].mean()):+.1%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
