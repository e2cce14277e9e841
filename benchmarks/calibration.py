"""What a calibration costs next to one ordinary estimate, both at their defaults.

For the MLP and the Lightning demo transformer of ``sampler_overhead.py`` (same model, same
batch, cycled), it times in one run, interleaved, the median of ``--repeats``:

- ``estimate``: ``estimate_llc`` at its defaults (4 chains x 200 draws, 16 L(w*) batches,
  paired; the default sampler);
- ``calibrate``: ``calibrate`` at its defaults (nbeta swept, three localizations, the lr grid
  scaled by the measured curvature, a budget of 1800 SGLD steps, 4 chains x 100 draws per
  setting).

The target is calibrate / estimate <= 3. Also printed: the SGLD steps the calibration ran,
the settings it tried and what it recommended.

    python benchmarks/calibration.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from sampler_overhead import demo_transformer, mlp

from lightning_devinterp import LLCHealthWarning, calibrate, estimate_llc


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", LLCHealthWarning)  # random weights: unhealthy by design
    print(f"torch {torch.__version__}, {args.threads} thread(s), cpu, median of {args.repeats}")
    print()
    print(
        "| model | params | estimate (s) | calibrate (s) | calibrate / estimate "
        "| SGLD steps | settings | recommended |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for build in (mlp, demo_transformer):
        name, model, batch, loss_fn = build()
        data = [batch]
        estimate_llc(model, data, loss_fn, num_draws=4)  # warm-up
        runs: dict[str, list[float]] = {"estimate": [], "calibrate": []}
        result = None
        for _ in range(args.repeats):
            seconds, _ = timed(lambda: estimate_llc(model, data, loss_fn))  # noqa: B023
            runs["estimate"].append(seconds)
            seconds, result = timed(lambda: calibrate(model, data, loss_fn))  # noqa: B023
            runs["calibrate"].append(seconds)
        estimate, calibration = (statistics.median(runs[k]) for k in ("estimate", "calibrate"))
        sampler = result.sampler
        recommended = (
            f"lr={sampler.lr:.2g}, nbeta={sampler.nbeta:.3g}, localization={sampler.localization:g}"
            f"{'' if result.healthy else ' (unhealthy)'}"
        )
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"| {name} | {n_params:,} | {estimate:.2f} | {calibration:.2f} "
            f"| **{calibration / estimate:.2f}** | {result.steps} | {len(result.table)} "
            f"| {recommended} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
