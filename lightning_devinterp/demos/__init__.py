"""Small models and synthetic data for examples, tests and benchmarks (no downloads)."""

from lightning_devinterp.demos.attention_only import AttentionOnlyTransformer, token_loss
from lightning_devinterp.demos.deep_linear import DeepLinearNetwork, TeacherData
from lightning_devinterp.demos.induction import (
    InductionData,
    InductionDataModule,
    InductionLM,
    loss_of_lm,
)

__all__ = [
    "AttentionOnlyTransformer",
    "DeepLinearNetwork",
    "InductionData",
    "InductionDataModule",
    "InductionLM",
    "TeacherData",
    "loss_of_lm",
    "token_loss",
]
