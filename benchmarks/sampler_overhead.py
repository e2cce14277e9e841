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
3-layer MLPs (default 16.6M parameters at batch 8 and 512, 4.2M at batch 8), minus its memory
before; as a multiple of the parameter bytes. The child first runs the same thing on a tiny
model: the first estimate of a process pages in ~7 MiB of torch's code (shared-library pages,
whatever the model size), which is not memory the engine holds. With glibc's mmap threshold
fixed at 64 KiB, large blocks go back to the system on free, so the peak RSS tracks live
tensors. The engine's buffers, analytically: the chain's weights (1x, the copy's weights are
re-pointed into one flat vector), the gradient (1x, autograd's own, freed after each step), a
noise chunk (<= 256 KiB); w* is read from the model itself.

    python benchmarks/sampler_overhead.py [--steps 50] [--repeats 3] [--threads 1] [--profile]
        [--llc-chains 8] [--llc-draws 100] [--memory 2880x8,2880x512,1440x8]
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
from lightning_devinterp.sampling import FlatModel
from lightning_devinterp.sampling.sgld import noise_chunks

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


def breakdown(model, batch, loss_fn, reps: int = 100, rounds: int = 9) -> dict[str, float]:
    """Median milliseconds of the parts of an SGLD step and of a training step, interleaved.

    The parts are run on their own, ``reps`` times in a row, in each of ``rounds`` rounds.
    """
    flat = FlatModel(model)
    sampler = SAMPLER.resolve(1)
    generator = torch.Generator().manual_seed(0)
    trainee = copy.deepcopy(model).train()
    optimizer = torch.optim.Adam(trainee.parameters(), lr=1e-4)
    mean_loss(loss_fn, trainee, batch).backward()
    optimizer.step()  # Adam's state exists, as in any step but the first
    flat.loss_and_grad(loss_fn, batch)
    grads = [g.clone() for g in flat.grads()]
    buffer = flat.noise

    def forward_backward():
        flat.loss_and_grad(loss_fn, batch)
        for _, p in flat.active:
            p.grad = None

    def draws():
        for start, stop in noise_chunks(flat.params.numel(), buffer.numel()):
            buffer[: stop - start].normal_(generator=generator)

    def noise_add():
        for start, stop in noise_chunks(flat.params.numel(), buffer.numel()):
            flat.params[start:stop].add_(buffer[: stop - start], alpha=1e-9)

    def sgld_step():
        flat.loss_and_grad(loss_fn, batch)
        flat.step(sampler, generator)

    def train_step():
        optimizer.zero_grad()
        mean_loss(loss_fn, trainee, batch).backward()
        optimizer.step()

    parts = {
        "SGLD step": sgld_step,
        "train step": train_step,
        "forward+backward": forward_backward,
        "drift (lerp to w*, gradient step)": lambda: sampler.drift(
            flat.params, grads, flat.anchor_parts, flat.views
        ),
        "Gaussian draws (normal_)": draws,
        "noise add": noise_add,
        "Adam step": optimizer.step,
    }
    times: dict[str, list[float]] = {name: [] for name in parts}
    with torch.no_grad():
        sampler.drift(flat.params, grads, flat.anchor_parts, flat.views)  # warm-up
    for _ in range(rounds):
        for name, part in parts.items():
            start = time.perf_counter()
            for _ in range(reps):
                part()
            times[name].append((time.perf_counter() - start) / reps * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


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


def _three_layers(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, 10))


def _classify(m, b):
    return nn.functional.cross_entropy(m(b[0]), b[1])


def _run(kind: str, model: nn.Module, batch) -> None:
    if kind == "train":
        train_steps(model, batch, _classify, 3)
        return
    if kind == "devinterp":
        devinterp_runner()[0](model, loader_of(batch), _classify, 3)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimate_llc(
            model,
            [batch],
            _classify,
            sampler=SAMPLER,
            num_chains=1,
            num_draws=3,
            init_loss_batches=1,
            paired=kind == "paired",
        )


def memory_child(kind: str, width: int, batch_size: int, warm: bool) -> None:
    """Print the peak extra resident memory of one run of ``kind`` on a 3-layer MLP."""
    torch.manual_seed(0)

    def data(w: int):
        return torch.randn(batch_size, w), torch.randint(0, 10, (batch_size,))

    if warm:  # the same code once on a tiny model: its shared-library pages become resident
        _run(kind, _three_layers(8), data(8))
    model = _three_layers(width)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    batch = data(width)
    _classify(model, batch)
    before = _rss_bytes()
    _run(kind, model, batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"param_bytes": param_bytes, "extra": peak - before}))


def memory_run(kind: str, width: int, batch_size: int, warm: bool = True) -> tuple[float, int]:
    """(peak extra memory of ``kind`` in a fresh process, parameter bytes)."""
    command = [sys.executable, __file__, "--memory-child", kind, "--memory-width", str(width)]
    command += ["--memory-batch", str(batch_size)] + ([] if warm else ["--memory-cold"])
    out = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        # a fixed mmap threshold: every block over 64 KiB is mapped and unmapped on free, so
        # the peak RSS is the peak of live tensors (glibc's default threshold rises to 32 MiB
        # after the first free and then keeps freed blocks in the heap)
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
    )
    record = json.loads(out.stdout.strip().splitlines()[-1])
    return record["extra"], record["param_bytes"]


def memory_table(runs: list[tuple[int, int]], with_devinterp: bool) -> None:
    """Peak extra memory of training and of ``estimate_llc``, for each (MLP width, batch)."""
    print(
        "Peak extra memory of one run in a fresh process (after the same run on a tiny model, "
        "so that code pages are resident), 3-layer MLPs, as multiples of the parameter bytes:"
    )
    print()
    kinds = ["train", "sgld", "paired"] + (["devinterp"] if with_devinterp else [])
    columns = ["parameters", "batch", "3 Adam steps", "estimate_llc, paired=False"]
    columns += ["paired=True", "SGLD beyond 1 copy (MiB)"]
    columns += ["devinterp, 3 draws"] if with_devinterp else []
    print("| " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * (len(columns) - 1))
    for width, batch_size in runs:
        extra = {k: memory_run(k, width, batch_size) for k in kinds}
        size = extra["sgld"][1]
        cells = [f"{size / 4e6:.1f}M ({size / 2**20:.0f} MiB)", str(batch_size)]
        cells += [f"{extra[k][0] / size:.3f}" for k in ("train", "sgld", "paired")]
        cells += [f"{(extra['sgld'][0] - size) / 2**20:.2f}"]
        cells += [f"{extra['devinterp'][0] / size:.3f}"] if with_devinterp else []
        print("| " + " | ".join(cells) + " |", flush=True)
    width, batch_size = runs[0]
    cold, size = memory_run("sgld", width, batch_size, warm=False)
    print()
    print(
        f"Without the warm-up (the first estimate of the process, {size / 2**20:.0f} MiB MLP, "
        f"batch {batch_size}): {cold / size:.3f}, {(cold - size) / 2**20:.2f} MiB beyond 1 "
        "copy: torch's code pages first touched, the same for every model size."
    )
    print(
        "The engine's buffers: the chain (1 copy) + the gradients backward holds at once (each "
        "parameter's is applied and freed as soon as it is accumulated) + one noise chunk "
        "(<= 256 KiB); the rest is the forward pass's activations (which grow with the batch, "
        "as in training) and allocator slack."
    )


# ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--llc-chains", type=int, default=8, help="chains for the LLC means")
    parser.add_argument("--llc-draws", type=int, default=100, help="draws for the LLC means")
    parser.add_argument(
        "--memory",
        default="2880x8,2880x512,1440x8",
        help="memory runs as WIDTHxBATCH (3-layer MLPs of that width, that batch size)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the SGLD steps")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--memory-width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memory-batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memory-cold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.memory_width, args.memory_batch, not args.memory_cold)
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
    profiles = []
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

    name, model, batch, loss_fn = models[-1]
    parts = breakdown(model, batch, loss_fn)
    print()
    print(f"Where the time goes, {name} (ms, parts run on their own, median of 9 interleaved):")
    print()
    print("| part | ms | share of the SGLD step |")
    print("|---|---:|---:|")
    for part, ms in parts.items():
        print(f"| {part} | {ms:.3f} | {ms / parts['SGLD step']:.0%} |")

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

    print()
    runs = [tuple(map(int, run.split("x"))) for run in args.memory.split(",")]
    memory_table(runs, with_devinterp=devinterp is not None)
    for name, text in profiles:
        print(f"\n### cProfile of {4 * args.steps} SGLD steps: {name}\n")
        print(text)


if __name__ == "__main__":
    main()
