"""The project's main demo: induction heads forming in a small transformer, with the LLC, the
refined LLC of every head, essential dynamics and susceptibilities watched as it trains.

    python examples/induction_heads.py [--logger wandb] [--steps 3000] [--out runs/induction]

TensorBoard by default: ``tensorboard --logdir runs/induction``. About 8-10x the time of its
training alone.
"""

from lightning_devinterp.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
