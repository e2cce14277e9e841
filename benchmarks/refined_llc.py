"""Cost of per-head refined LLCs: all heads one by one against H full estimates, and
batched (torch.func.vmap) against one by one, on a small attention-only transformer.

    python benchmarks/refined_llc.py [--heads 8] [--draws 40] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from lightning_devinterp import SGLD, ChainSettings
from lightning_devinterp.components import attention_heads
from lightning_devinterp.demos import AttentionOnlyTransformer, InductionData, token_loss
from lightning_devinterp.estimators import sample_components


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=8, help="heads per layer (2 layers)")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=40)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    data = InductionData(size=2048, length=32, vocab_size=32)
    loader = DataLoader(data, batch_size=32, shuffle=True, collate_fn=InductionData.collate)
    model = AttentionOnlyTransformer(32, args.d_model, args.heads, 2, 32).to(device)
    heads = attention_heads(model)
    kwargs = dict(
        sampler=SGLD(lr=1e-4, nbeta=10.0, localization=100.0),
        chains=ChainSettings(num_chains=args.chains, num_draws=args.draws, init_loss_batches=1),
    )

    def full():
        sample_components(model, loader, token_loss, batched=False, **kwargs)

    def one_by_one():
        sample_components(model, loader, token_loss, components=heads, batched=False, **kwargs)

    def batched():
        sample_components(model, loader, token_loss, components=heads, batched=True, **kwargs)

    for fn in (full, one_by_one, batched):  # warm-up
        fn()
    t_full, t_heads, t_batched = timed(full), timed(one_by_one), timed(batched)
    h = len(heads)
    params = sum(p.numel() for p in model.parameters())
    print(f"device={device} params={params} heads={h} chains={args.chains} draws={args.draws}")
    print("| measurement | seconds | ratio |")
    print("|---|---|---|")
    print(f"| one full LLC estimate | {t_full:.3f} | 1 |")
    print(
        f"| all {h} heads one by one | {t_heads:.3f} | {t_heads / (h * t_full):.3f} x (H x full) |"
    )
    print(
        f"| all {h} heads batched | {t_batched:.3f} | {t_heads / t_batched:.2f} x faster than one by one |"
    )


if __name__ == "__main__":
    main()
