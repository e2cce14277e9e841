"""What an SGLD step costs next to a training step, on the same model, batch and device.

For each model (a small encoder-decoder transformer from ``lightning.pytorch.demos``, the
2-layer attention-only transformer of the rLLC papers, an MLP) it times, in one run:

- ``train``: N plain training steps (zero_grad, forward, backward, Adam step);
- ``sgld``: N SGLD steps through ``estimate_llc`` with ``paired=False, init_loss_batches=1``
  (the step itself: one forward+backward and the update);
- ``paired``: the same with the default paired form (one extra forward at w* per draw).

Per-step times are marginal: (time of an estimate with 2N draws - time with N draws) / N, so the
fixed cost of an estimate (one model copy, the init loss: an estimate with one draw minus one
step) is reported on its own. Each figure is
the median of ``--repeats`` interleaved measurements, after a warm-up call of each.

Memory: peak resident memory of a fresh process running one estimate, or three Adam steps, on a
large MLP (default 16.6M parameters, 63 MiB), minus its memory before; as a multiple of the
parameter bytes. With glibc's mmap threshold fixed at 64 KiB, large blocks go back to the
system on free, so the peak RSS tracks live tensors. The engine's buffers, analytically: the
chain's weights (1x, the copy's weights are re-pointed into one flat vector), the gradient
(1x, autograd's own, freed after each step), a noise chunk (<= 256 KiB); w* is read from the
model itself.

    python benchmarks/sampler_overhead.py [--steps 50] [--repeats 3] [--threads 1] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import time

import torch
from lightning.pytorch.demos import Transformer
from torch import nn

from lightning_devinterp import SGLD, estimate_llc
from lightning_devinterp.demos import AttentionOnlyTransformer, token_loss

SAMPLER = SGLD(lr=1e-6, nbeta=10.0, localization=100.0)


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


def train_steps(model, batch, loss_fn, steps: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(model, batch).mean().backward()  # token_loss gives per-token losses
        optimizer.step()
    return time.perf_counter() - start


def sgld_estimate(model, batch, loss_fn, draws: int, paired: bool) -> float:
    start = time.perf_counter()
    estimate_llc(
        model,
        [batch],
        loss_fn,
        sampler=SAMPLER,
        num_chains=1,
        num_draws=draws,
        init_loss_batches=1,
        paired=paired,
    )
    return time.perf_counter() - start


def measure(model, batch, loss_fn, steps: int, repeats: int) -> dict[str, float]:
    """Median marginal seconds per step of each kind, and the fixed cost of an estimate."""
    sgld_estimate(model, batch, loss_fn, 2, False)  # warm-up
    sgld_estimate(model, batch, loss_fn, 2, True)
    trainee = _copy(model)
    train_steps(trainee, batch, loss_fn, 3)
    runs: dict[str, list[float]] = {"train": [], "sgld": [], "paired": [], "fixed": []}
    for _ in range(repeats):
        t1 = train_steps(trainee, batch, loss_fn, steps)
        t2 = train_steps(trainee, batch, loss_fn, 2 * steps)
        runs["train"].append((t2 - t1) / steps)
        for kind, paired in (("sgld", False), ("paired", True)):
            t1 = sgld_estimate(model, batch, loss_fn, steps, paired)
            t2 = sgld_estimate(model, batch, loss_fn, 2 * steps, paired)
            runs[kind].append((t2 - t1) / steps)
        runs["fixed"].append(sgld_estimate(model, batch, loss_fn, 1, False) - runs["sgld"][-1])
    return {k: statistics.median(v) for k, v in runs.items()}


def _copy(model):
    import copy

    return copy.deepcopy(model)


def profile_sgld(model, batch, loss_fn, steps: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    sgld_estimate(model, batch, loss_fn, steps, False)
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
    parser.add_argument("--memory-width", type=int, default=2880, help="MLP width (3 layers)")
    parser.add_argument("--profile", action="store_true", help="cProfile the SGLD steps")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.memory_width)
        return

    print(
        f"torch {torch.__version__}, {args.threads} thread(s), device cpu, "
        f"{args.steps} steps, median of {args.repeats}"
    )
    if importlib.util.find_spec("devinterp") is None:
        print("devinterp is not installed: not timed")
    print()
    print(
        "| model | params | train step (ms) | SGLD step (ms) | SGLD / train | paired step (ms) "
        "| paired / train | fixed cost per estimate (ms) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    profiles = []
    for build in (demo_transformer, attention_only, mlp):
        name, model, batch, loss_fn = build()
        n_params = sum(p.numel() for p in model.parameters())
        t = measure(model, batch, loss_fn, args.steps, args.repeats)
        print(
            f"| {name} | {n_params:,} | {1e3 * t['train']:.3f} | {1e3 * t['sgld']:.3f} "
            f"| {t['sgld'] / t['train']:.2f} | {1e3 * t['paired']:.3f} "
            f"| {t['paired'] / t['train']:.2f} | {1e3 * t['fixed']:.1f} |",
            flush=True,
        )
        if args.profile:
            profiles.append((name, profile_sgld(model, batch, loss_fn, 4 * args.steps)))

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
