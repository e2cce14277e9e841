"""Cost of susceptibilities: an SGLD run that evaluates 3 probes (one training-sized batch
each) at every draw, against the same number of plain training steps (same model, batch and
device), on a small attention-only transformer.

    python benchmarks/susceptibility_overhead.py [--steps 100] [--repeats 3] [--device cpu]

Per-step times are marginal (a run with 2N draws minus a run with N draws), so the fixed
cost of an estimate (the model copy, L(w*), the probe batches) is reported on its own.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader

from lightning_devinterp import SGLD, attention_heads, estimate_llc, estimate_susceptibilities
from lightning_devinterp.demos import AttentionOnlyTransformer, InductionData, token_loss


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="N: draws (and training steps)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)

    def loader(seed: int, repeat_prob: float) -> DataLoader:
        data = InductionData(
            size=1024, length=32, vocab_size=32, repeat_prob=repeat_prob, seed=seed
        )
        return DataLoader(data, batch_size=args.batch, shuffle=True, collate_fn=data.collate)

    train = loader(0, 0.5)
    probes = {"repeats": loader(1, 1.0), "bigrams": loader(2, 0.0), "mixed": loader(3, 0.5)}
    model = AttentionOnlyTransformer(32, 64, 4, 2, 32).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = next(iter(train)).to(device)
    settings = dict(sampler=SGLD(lr=1e-4, nbeta=10.0, localization=100.0), init_loss_batches=1)

    def train_steps(n: int) -> None:
        for _ in range(n):
            optimizer.zero_grad()
            token_loss(model, batch).mean().backward()
            optimizer.step()

    def llc(n: int, paired: bool) -> None:
        estimate_llc(model, train, token_loss, num_chains=1, num_draws=n, paired=paired, **settings)

    heads = attention_heads(model)

    def susceptibilities(n: int, paired: bool, components=None) -> None:
        estimate_susceptibilities(
            model,
            train,
            probes,
            components,
            token_loss,
            num_chains=1,
            num_draws=n,
            paired=paired,
            **settings,
        )

    runs = {
        "train": lambda n: train_steps(n),
        "llc": lambda n: llc(n, paired=False),
        "llc, paired": lambda n: llc(n, paired=True),
        "susceptibilities": lambda n: susceptibilities(n, paired=False),
        "susceptibilities, paired": lambda n: susceptibilities(n, paired=True),
        # all heads: N draws of each head's chain; per-step figures are per head
        "per head, paired": lambda n: susceptibilities(n // len(heads), True, heads),
    }
    for fn in runs.values():  # warm-up
        fn(16)
    per_step: dict[str, list[float]] = {name: [] for name in runs}
    fixed: dict[str, list[float]] = {name: [] for name in runs}
    n = args.steps
    for _ in range(args.repeats):  # interleaved
        for name, fn in runs.items():
            short, long = timed(fn, n), timed(fn, 2 * n)
            per_step[name].append((long - short) / n)
            fixed[name].append(2 * short - long)
    base = statistics.median(per_step["train"])
    print(f"device {device}, {args.threads} thread(s), N = {n}, median of {args.repeats}")
    print(f"{'run':<26}{'ms/step':>10}{'x train':>10}{'fixed ms':>10}")
    for name in runs:
        step = statistics.median(per_step[name])
        cost = statistics.median(fixed[name])
        print(f"{name:<26}{1e3 * step:>10.2f}{step / base:>10.2f}{1e3 * cost:>10.1f}")


if __name__ == "__main__":
    main()
