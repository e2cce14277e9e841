"""What an SGLD step costs next to a training step, on the same model, batch and device.

For each model (a small encoder-decoder transformer from ``lightning.pytorch.demos``, the
2-layer attention-only transformer of the rLLC papers, an MLP), first trained for a few Adam
steps on its batch so that w* is near a minimum, it times, in one run:

- ``train``: N plain training steps (zero_grad, forward, backward, Adam step);
- ``sgld``: N SGLD steps through ``estimate_llc`` with ``paired=False, init_loss_batches=1``
  (the step itself: one forward+backward and the update);
- ``paired``: the same with the default paired form (one extra forward at w* per draw);
- ``devinterp``: N steps of devinterp's estimate at the same settings, when devinterp with its
  1.3.x API (``estimate_learning_coeff_with_summary``) is installed (optional; never a
  dependency of this project).

Per-step times are marginal: (time of an estimate with 2N draws - time with N draws) / N, so the
fixed cost of an estimate (model copies, the init loss: an estimate with one draw minus one
step) is reported on its own. Each figure is the median of ``--repeats`` interleaved
measurements, after a warm-up call of each. Every estimate reads the same batch from the same
DataLoader (one batch repeated), one chain, seed 0, ``SAMPLER`` settings, no burn-in.

LLC means: both estimators again at identical settings, with more chains (``--llc-chains`` x
``--llc-draws``): ``nbeta * (mean draw loss - L(w*))``, L(w*) on the same batch.

Memory: peak resident memory of a fresh process running one estimate, or three Adam steps, on
MLPs of two sizes (default 16.6M and 4.2M parameters), minus its memory before; as a multiple
of the parameter bytes. With glibc's mmap threshold fixed at 64 KiB, large blocks go back to
the system on free, so the peak RSS tracks live tensors. The engine's buffers, analytically:
the chain's weights (1x, the copy's weights are re-pointed into one flat vector), the gradient
(1x, autograd's own, freed after each step), a noise chunk (<= 256 KiB); w* is read from the
model itself.

    python benchmarks/sampler_overhead.py [--steps 50] [--repeats 3] [--threads 1] [--profile]
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import pstats
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import torch
from lightning.pytorch.demos import Transformer
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_devinterp import SGLD, estimate_llc
from lightning_devinterp.demos import AttentionOnlyTransformer, token_loss

SAMPLER = SGLD(lr=1e-4, nbeta=10.0, localization=100.0)
#: Adam steps on the benchmark batch before measuring, so that w* is near a minimum.
PRETRAIN_STEPS = 200


def demo_transformer():
    torch.manual_seed(0)
    model = Transformer(vocab_size=256, ninp=64, nhead=4, nhid=128, nlayers=2, dropout=0.0)
    tokens = torch.randint(0, 256, (8, 33))
    batch = (tokens[:, :-1], tokens[:, 1:])

    def loss_fn(m, b):
        inputs, target = b
        return nn.functional.nll_loss(m(inputs, target), target.reshape(-1))

    return "transformer (lightning demo, 2+2 layers, d=64)", model, batch, loss_fn


def attention_only():
    torch.manual_seed(0)
    model = AttentionOnlyTransformer(vocab_size=256, d_model=64, n_heads=4, n_layers=2, context=64)
    return (
        "attention-only (2 layers, 4 heads, d=64)",
        model,
        torch.randint(0, 256, (16, 33)),
        token_loss,
    )


def mlp(width: int = 256, depth: int = 3, batch: int = 128):
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(784, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    data = (torch.randn(batch, 784), torch.randint(0, 10, (batch,)))

    def loss_fn(m, b):
        return nn.functional.cross_entropy(m(b[0]), b[1])

    return f"MLP (784-{width}x{depth}-10, batch {batch})", model, data, loss_fn


class RepeatedBatch(Dataset):
    """One batch, ``length`` times: a DataLoader over it yields the benchmark batch each step."""

    def __init__(self, batch, length: int = 10**6) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.batch


def _first(items):
    return items[0]


def loader_of(batch) -> DataLoader:
    """The batch repeated, as a DataLoader (devinterp needs one; ours takes any iterable)."""
    return DataLoader(RepeatedBatch(batch), batch_size=1, collate_fn=_first)


def mean_loss(loss_fn, model, batch) -> torch.Tensor:
    return loss_fn(model, batch).mean()  # token_loss gives per-token losses


def train_steps(model, batch, loss_fn, steps: int, lr: float = 1e-4) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        mean_loss(loss_fn, model, batch).backward()
        optimizer.step()
    return time.perf_counter() - start


def ours(model, loader, loss_fn, draws: int, paired: bool = False, chains: int = 1):
    """Seconds for one ``estimate_llc``, and the estimate."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # health warnings (short chains) are not timed
        estimate = estimate_llc(
            model,
            loader,
            loss_fn,
            sampler=SAMPLER,
            num_chains=chains,
            num_draws=draws,
            init_loss_batches=1,
            paired=paired,
        )
    return time.perf_counter() - start, estimate


Runner = Callable[..., tuple[float, float, float]]


def devinterp_runner() -> tuple[Runner | None, str]:
    """devinterp's LLC estimate as ``run(model, loader, loss_fn, draws, chains)`` ->
    (seconds, llc mean, llc std across chains), if a version with the 1.3.x API is installed;
    and a line saying what was found."""
    if importlib.util.find_spec("devinterp") is None:
        return None, "devinterp is not installed: not timed (optional; see BENCHMARKS.md)"
    version = importlib.metadata.version("devinterp")
    try:
        from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    except ImportError:
        return None, (
            f"devinterp {version} is installed but has no 1.3.x API "
            "(devinterp.slt.sampler.estimate_learning_coeff_with_summary): not timed"
        )

    def run(model, loader, loss_fn, draws: int, chains: int = 1):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation and settings warnings
            result = estimate_learning_coeff_with_summary(
                model,
                loader,
                evaluate=lambda m, b: mean_loss(loss_fn, m, b),
                optimizer_kwargs={
                    "lr": SAMPLER.lr,
                    "nbeta": SAMPLER.nbeta,
                    "localization": SAMPLER.localization,
                },
                num_chains=chains,
                num_draws=draws,
                seed=0,
                device="cpu",
                verbose=False,
            )
        return time.perf_counter() - start, result["llc/mean"], result["llc/std"]

    return run, (
        f"devinterp {version}: estimate_learning_coeff_with_summary with its defaults (its "
        "deprecated SGLD optimizer, no metrics; the LLCEstimator callback; init loss over "
        "num_chains batches in train mode), verbose=False"
    )


def measure(model, batch, loss_fn, steps: int, repeats: int, devinterp) -> dict[str, float]:
    """Median marginal seconds per step of each kind, and the fixed cost of an estimate."""
    loader = loader_of(batch)
    kinds: dict[str, Callable[[int], float]] = {
        "sgld": lambda n: ours(model, loader, loss_fn, n)[0],
        "paired": lambda n: ours(model, loader, loss_fn, n, paired=True)[0],
    }
    if devinterp is not None:
        kinds["devinterp"] = lambda n: devinterp(model, loader, loss_fn, n)[0]
    for run in kinds.values():  # warm-up
        run(2)
    trainee = copy.deepcopy(model)
    train_steps(trainee, batch, loss_fn, 3)
    runs: dict[str, list[float]] = {k: [] for k in ("train", *kinds, "fixed", "devinterp fixed")}
    for _ in range(repeats):
        t1 = train_steps(trainee, batch, loss_fn, steps)
        t2 = train_steps(trainee, batch, loss_fn, 2 * steps)
        runs["train"].append((t2 - t1) / steps)
        for kind, run in kinds.items():
            t1 = run(steps)
            t2 = run(2 * steps)
            runs[kind].append((t2 - t1) / steps)
        runs["fixed"].append(kinds["sgld"](1) - runs["sgld"][-1])
        if devinterp is not None:
            runs["devinterp fixed"].append(kinds["devinterp"](1) - runs["devinterp"][-1])
    return {k: statistics.median(v) for k, v in runs.items() if v}


def compare_llc(model, batch, loss_fn, chains: int, draws: int, devinterp) -> dict[str, float]:
    """Both estimators' LLC means and standard errors at identical settings."""
    loader = loader_of(batch)
    _, mine = ours(model, loader, loss_fn, draws, chains=chains)
    _, mean, std = devinterp(model, loader, loss_fn, draws, chains)
    return {
        "ours": mine.mean,
        "ours_se": mine.std / math.sqrt(chains),
        "init_loss": mine.init_loss,
        "devinterp": mean,
        "devinterp_se": std / math.sqrt(chains),
    }


def pretrain(model, batch, loss_fn) -> float:
    """A few Adam steps on the batch (w* near a minimum, so the LLC is positive); final loss."""
    train_steps(model, batch, loss_fn, PRETRAIN_STEPS, lr=1e-3)
    model.eval()
    with torch.no_grad():
        return float(mean_loss(loss_fn, model, batch))


def profile_sgld(model, batch, loss_fn, steps: int) -> str:
    profiler = cProfile.Profile()
    loader = loader_of(batch)
    profiler.enable()
    ours(model, loader, loss_fn, steps)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(14)
    return out.getvalue()


# ------------------------------------------------------------------------------------------
# Memory, in a fresh process per measurement
# ------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def memory_child(kind: str, width: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, 10))
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    batch = (torch.randn(8, width), torch.randint(0, 10, (8,)))

    def loss_fn(m, b):
        return nn.functional.cross_entropy(m(b[0]), b[1])

    loss_fn(model, batch)  # allocator and kernels warmed up outside the measured window
    before = _rss_bytes()
    if kind == "train":
        train_steps(model, batch, loss_fn, 3)
    else:
        estimate_llc(
            model,
            [batch],
            loss_fn,
            sampler=SAMPLER,
            num_chains=1,
            num_draws=3,
            init_loss_batches=1,
            paired=kind == "paired",
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"kind": kind, "param_bytes": param_bytes, "extra": peak - before}))


def memory(width: int) -> dict[str, float]:
    results = {}
    for kind in ("train", "sgld", "paired"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", kind, "--memory-width", str(width)],
            capture_output=True,
            text=True,
            check=True,
            # a fixed mmap threshold: every block over 64 KiB is mapped and unmapped on free, so
            # the peak RSS is the peak of live tensors (glibc's default threshold rises to 32 MiB
            # after the first free and then keeps freed blocks in the heap)
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
        )
        record = json.loads(out.stdout.strip().splitlines()[-1])
        results[kind] = record["extra"] / record["param_bytes"]
        results["param_bytes"] = record["param_bytes"]
    return results


# ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--llc-chains", type=int, default=8, help="chains for the LLC means")
    parser.add_argument("--llc-draws", type=int, default=100, help="draws for the LLC means")
    parser.add_argument("--memory-width", type=int, default=2880, help="MLP width (3 layers)")
    parser.add_argument("--profile", action="store_true", help="cProfile the SGLD steps")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.memory_width)
        return

    devinterp, note = devinterp_runner()
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), device cpu, "
        f"{args.steps} steps, median of {args.repeats}; SGLD lr={SAMPLER.lr}, "
        f"nbeta={SAMPLER.nbeta}, localization={SAMPLER.localization}, 1 chain, no burn-in"
    )
    print(note)
    print()
    columns = ["model", "params", "train step (ms)", "SGLD step (ms)", "SGLD / train"]
    columns += ["paired step (ms)", "paired / train", "fixed cost per estimate (ms)"]
    if devinterp is not None:
        columns += ["devinterp step (ms)", "devinterp / train", "SGLD / devinterp"]
        columns += ["devinterp fixed cost (ms)"]
    print("| " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * (len(columns) - 1))
    models = [build() for build in (demo_transformer, attention_only, mlp)]
    profiles, comparisons = [], []
    for name, model, batch, loss_fn in models:
        pretrain(model, batch, loss_fn)
        n_params = sum(p.numel() for p in model.parameters())
        t = measure(model, batch, loss_fn, args.steps, args.repeats, devinterp)
        cells = [name, f"{n_params:,}", f"{1e3 * t['train']:.3f}", f"{1e3 * t['sgld']:.3f}"]
        cells += [f"{t['sgld'] / t['train']:.2f}", f"{1e3 * t['paired']:.3f}"]
        cells += [f"{t['paired'] / t['train']:.2f}", f"{1e3 * t['fixed']:.1f}"]
        if devinterp is not None:
            cells += [f"{1e3 * t['devinterp']:.3f}", f"{t['devinterp'] / t['train']:.2f}"]
            cells += [f"{t['sgld'] / t['devinterp']:.2f}", f"{1e3 * t['devinterp fixed']:.1f}"]
        print("| " + " | ".join(cells) + " |", flush=True)
        if args.profile:
            profiles.append((name, profile_sgld(model, batch, loss_fn, 4 * args.steps)))

    if devinterp is not None:
        print()
        print(
            f"LLC means at identical settings: {args.llc_chains} chains x {args.llc_draws} draws, "
            "no burn-in, the batch above repeated, seed 0; ours with paired=False (its "
            "reference L(w*) is then the init loss, as devinterp's)."
        )
        print()
        print("| model | L(w*) | ours: mean ± s.e. | devinterp: mean ± s.e. | difference / s.e. |")
        print("|---|---:|---:|---:|---:|")
        for name, model, batch, loss_fn in models:
            c = compare_llc(model, batch, loss_fn, args.llc_chains, args.llc_draws, devinterp)
            se = math.hypot(c["ours_se"], c["devinterp_se"])
            print(
                f"| {name} | {c['init_loss']:.3g} | {c['ours']:.3f} ± {c['ours_se']:.3f} "
                f"| {c['devinterp']:.3f} ± {c['devinterp_se']:.3f} "
                f"| {(c['ours'] - c['devinterp']) / se:+.1f} |",
                flush=True,
            )
            comparisons.append(c)

    mem = memory(args.memory_width)
    print()
    print(
        f"Peak extra memory, MLP of {mem['param_bytes'] / 2**20:.0f} MiB parameters "
        "(multiples of the parameter bytes):"
    )
    print()
    print("| run | measured peak extra | engine's buffers (analytic) |")
    print("|---|---:|---:|")
    print(f"| 3 Adam training steps | {mem['train']:.2f} | (grads 1 + Adam state 2) |")
    print(
        f"| estimate_llc, paired=False | {mem['sgld']:.2f} "
        "| chain 1 + gradient 1 + noise chunk (<= 256 KiB) |"
    )
    print(f"| estimate_llc, paired=True | {mem['paired']:.2f} | same |")
    print()
    print("The rest of the measured peak is the forward pass's activations and allocator slack.")
    for name, text in profiles:
        print(f"\n### cProfile of {4 * args.steps} SGLD steps: {name}\n")
        print(text)


if __name__ == "__main__":
    main()
