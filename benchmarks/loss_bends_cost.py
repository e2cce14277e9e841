"""What watching the training loss costs (its milestones, and ``extra_estimates``):
:meth:`LossBends.observe` per optimizer step, against one plain training step of the deep linear network, measured in
the same run. Prints microseconds per step and their ratio.

    python benchmarks/loss_bends_cost.py
"""

from __future__ import annotations

import time
import warnings

import torch
from torch.utils.data import DataLoader

from lightning_devinterp.callbacks.loss_bends import LossBends
from lightning_devinterp.demos.deep_linear import DeepLinearNetwork, TeacherData

STEPS = 5000


def main() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # self.log outside a Trainer
    data = TeacherData(4096, input_dim=16, output_dim=16, singular_values=(3.0, 1.0, 0.33))
    model = DeepLinearNetwork((16, 4, 4, 16), init_scale=0.03, lr=0.03, seed=0, data=data)
    optimizer = model.configure_optimizers()
    batches = iter(DataLoader(data, batch_size=256, shuffle=True, collate_fn=TeacherData.collate))
    losses = []
    started = time.perf_counter()
    for _ in range(STEPS):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(DataLoader(data, batch_size=256, collate_fn=TeacherData.collate))
            batch = next(batches)
        loss = model.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    train = (time.perf_counter() - started) / STEPS
    bends = LossBends(10**6, "llc")  # never stops watching
    started = time.perf_counter()
    for step, loss in enumerate(losses, start=1):
        bends.observe(step, loss, lambda after, at: None, STEPS, lambda v: v)
    watch = (time.perf_counter() - started) / STEPS
    print(
        f"training step {train * 1e6:.0f} us, observe {watch * 1e6:.1f} us per step "
        f"({watch / train:.3f} of a training step); bends seen: {bends.bends}"
    )


if __name__ == "__main__":
    main()
