"""Run by test_ddp.py as a script: two CPU processes (gloo) train with an LLCMonitor.

Each rank writes its monitor's history and the chains it sampled to ``<out>/rank<k>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

import lightning_devinterp.callbacks.llc_monitor as llc_monitor
from lightning_devinterp import SGLD, LLCMonitor, SusceptibilityMonitor

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.helpers import RegressionModule, regression_data  # noqa: E402

MAX_STEPS = 40


class FailsOnRankOne:
    """A loss that passes the start-up check, then raises during sampling on rank 1 only."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model, batch):
        self.calls += 1
        if self.calls > 3 and torch.distributed.get_rank() == 1:
            raise RuntimeError("rank one fails")
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y)


class BendsOnRankZero(RegressionModule):
    """Rank 0's training loss drops twentyfold at step 15; rank 1's goes on smoothly (so
    rank 1 alone would see no bend of the loss: the extra estimates follow rank 0's)."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * 0.05 if self.global_rank == 0 and self.global_step >= 15 else loss


def squared_errors(model, batch):
    x, y = batch
    return (model(x) - y).squeeze(-1) ** 2


def main(out: Path) -> None:
    sampled: list[list[int]] = []
    sample_components = llc_monitor.sample_components

    def recording_sample_components(*args, **kwargs):
        sampled.append(list(kwargs["chain_ids"]))
        return sample_components(*args, **kwargs)

    llc_monitor.sample_components = recording_sample_components
    L.seed_everything(0, verbose=False)
    monitor = LLCMonitor(
        SGLD(lr=1e-4, nbeta=10.0, localization=100.0), num_chains=4, num_draws=10, at_steps=[2, 4]
    )
    adaptive = LLCMonitor(
        SGLD(lr=1e-4, nbeta=10.0, localization=100.0),
        name="adaptive",
        num_chains=2,
        num_draws=5,
        at_steps=[MAX_STEPS],
        extra_estimates=3,
    )
    flaky = LLCMonitor(
        name="flaky", loss_fn=FailsOnRankOne(), num_chains=2, num_draws=5, at_steps=[2]
    )
    shifted = regression_data(n=32, seed=1).tensors
    susceptibility = SusceptibilityMonitor(
        {"shifted": [(2 * shifted[0], shifted[1])]},
        SGLD(lr=1e-4, nbeta=10.0, localization=100.0),
        components=None,
        loss_fn=squared_errors,
        num_chains=4,
        num_draws=10,
        at_steps=[4],
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=MAX_STEPS,
        default_root_dir=out,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[monitor, flaky, susceptibility, adaptive],
    )
    trainer.fit(BendsOnRankZero(noisy=False))
    result = {
        "history": monitor.history,
        "sampled": sampled,
        "rank": trainer.global_rank,
        "flaky_errors": flaky.errors,
        "steps": trainer.global_step,
        "susceptibility": susceptibility.history,
        "susceptibility_chains": len(susceptibility.last_result.per_chain),
        "adaptive": [(r["step"], r["adaptive/why"]) for r in adaptive.history],
        "train_loss": [
            m.to_dict() for m in adaptive.milestones if m.series == "adaptive/train_loss"
        ],
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
