"""``calibrate`` then ``estimate_llc`` at its choice, on models whose answer is known.

Cases (those of ``preconditioned_sampler.py``: n = 20,000, loss 1/2 |y - f(x)|^2 with unit
label noise, batches of 1000, the model at the true parameters):

- regular at nbeta = n / log n and at nbeta = 30: linear regression, d = 8; reference: the
  exact value of the localized tempered posterior (Gaussian, closed form, the gradient of L_n
  at w* and the chosen localization included), band 15%;
- rrr: reduced-rank regression 4-3-4 at a rank-1 truth, lambda = 6, band 40%;
- dln: deep linear network 5-4-3-4-5 at a rank-2 truth, lambda = 9 (Aoyagi), band 40%.

``calibrate(model, loader, half_mse, nbeta=..., seed=s)`` at its defaults, then
``estimate_llc`` with the returned sampler and burn-in (4 chains x ``--draws``, seed s + 100).
Prints per case and seed the choice, the estimate, the reference, the error and the
calibration's SGLD steps over an ordinary default estimate's 800.

    python benchmarks/calibrated_analytic.py [--cases regular regular30 rrr dln] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from preconditioned_sampler import CASES, NBETA

from lightning_devinterp import LLCHealthWarning, calibrate, estimate_llc
from lightning_devinterp.demos.deep_linear import half_mse

#: SGLD steps of an ordinary estimate at its defaults (4 chains x 200 draws).
ESTIMATE_STEPS = 800


def exact_regular(model, batches, nbeta: float, localization: float) -> float:
    """nbeta E[L_n - L_n(w*)] under exp(-nbeta L_n - localization/2 |w - w*|^2), L_n
    quadratic: with A = nbeta H + localization, mean -nbeta A^-1 g and covariance A^-1."""
    x, y = batches.x, batches.y
    w = model.weight.detach().T
    h = x.T @ x / len(x)
    g = -x.T @ (y - x @ w) / len(x)
    a = nbeta * h + localization * torch.eye(len(h), dtype=h.dtype)
    shift = torch.linalg.solve(a, g)
    value = (
        -(nbeta**2) * float(g.T @ shift)
        + nbeta / 2 * float(torch.trace(torch.linalg.solve(a, h)))
        + nbeta**3 / 2 * float(shift.T @ h @ shift)
    )
    return value


def run(name: str, seed: int, draws: int) -> dict:
    case = CASES["regular" if name.startswith("regular") else name]()
    nbeta = 30.0 if name == "regular30" else NBETA
    start = time.perf_counter()
    result = calibrate(case.model, case.batches, half_mse, nbeta=nbeta, seed=seed)
    seconds = time.perf_counter() - start
    sampler = result.sampler
    est = estimate_llc(
        case.model,
        case.batches,
        half_mse,
        sampler=sampler,
        num_draws=draws,
        num_burnin=result.num_burnin,
        seed=seed + 100,
    )
    if name.startswith("regular"):
        reference, band = exact_regular(case.model, case.batches, nbeta, sampler.localization), 0.15
    else:
        reference, band = case.llc, case.band
    return {
        "case": name,
        "seed": seed,
        "lr": sampler.lr,
        "localization": sampler.localization,
        "nbeta": float(sampler.nbeta),
        "confirmed": result.confirmed,
        "burnin": result.num_burnin,
        "estimate": est.mean,
        "reference": reference,
        "error": est.mean / reference - 1,
        "band": band,
        "cost": result.steps / ESTIMATE_STEPS,
        "settings": len(result.table),
        "seconds": seconds,
        "rows": [
            (r["lr"], r["localization"], round(r["llc"], 3), r["healthy"], r.get("bounded"))
            for r in result.table
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["regular", "regular30", "rrr", "dln"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--verbose", action="store_true", help="print every calibration row")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", LLCHealthWarning)
    print(
        "| case | seed | lr | γ | nβ | confirmed | burn-in | estimate | reference | error "
        "| in band | cost (estimates) | settings |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|")
    for name in args.cases:
        for seed in args.seeds:
            r = run(name, seed, args.draws)
            inside = abs(r["error"]) <= r["band"]
            print(
                f"| {name} | {seed} | {r['lr']:.3g} | {r['localization']:g} | {r['nbeta']:.4g} "
                f"| {r['confirmed']} | {r['burnin']} | {r['estimate']:.3f} "
                f"| {r['reference']:.3f} | {r['error']:+.1%} | {'yes' if inside else 'NO'} "
                f"| {r['cost']:.2f} | {r['settings']} |",
                flush=True,
            )
            if args.verbose:
                print("   ", r["rows"], flush=True)


if __name__ == "__main__":
    main()
