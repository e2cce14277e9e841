"""Train the demo's model with the monitors configured in a LightningCLI YAML file, no code:

    python examples/train.py fit --config examples/config.yaml

Any training script built on ``LightningCLI`` takes the same ``trainer.callbacks`` section.
"""

from lightning.pytorch.cli import LightningCLI

from lightning_devinterp.demos import InductionDataModule, InductionLM

if __name__ == "__main__":
    LightningCLI(InductionLM, InductionDataModule)
