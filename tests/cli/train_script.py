"""An ordinary training script that knows nothing of lightning_devinterp: the callbacks
factory entry point is the only way monitors can reach its Trainer.

Usage: python -m tests.cli.train_script ROOT_DIR
"""

import sys

import lightning as L

from tests.cli.tiny import TinyTransformer

if __name__ == "__main__":
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        default_root_dir=sys.argv[1],
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TinyTransformer())
    print(f"trained to step {trainer.global_step}")
