"""A synthetic language that rewards in-context copying.

Each sequence is drawn from a fixed random bigram language; with probability
``repeat_prob`` its second half continues by copying the tokens ``offset`` positions back,
with ``offset`` drawn per sequence between a quarter and a half of the length. A fixed
positional head cannot know the offset; a model that learns induction (attend to the token
after the previous occurrence of the current token) predicts the copied half almost
perfectly.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_devinterp.demos.attention_only import AttentionOnlyTransformer, token_loss


class InductionData(Dataset):
    """``size`` token sequences of length ``length`` over ``vocab_size`` tokens.

    Args:
        size: number of sequences.
        length: tokens per sequence (even).
        vocab_size: number of tokens.
        repeat_prob: share of sequences whose second half repeats their first.
        seed: seed of the bigram table and of the sequences.
    """

    def __init__(
        self,
        size: int = 4096,
        length: int = 32,
        vocab_size: int = 32,
        repeat_prob: float = 0.5,
        seed: int = 0,
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        logits = 3.0 * torch.randn(
            vocab_size, vocab_size, generator=torch.Generator().manual_seed(1234)
        )
        probs = logits.softmax(-1)
        tokens = torch.empty(size, length, dtype=torch.long)
        tokens[:, 0] = torch.randint(vocab_size, (size,), generator=g)
        for t in range(1, length):
            tokens[:, t] = torch.multinomial(probs[tokens[:, t - 1]], 1, generator=g).squeeze(1)
        half = length // 2
        self.repeated = torch.rand(size, generator=g) < repeat_prob
        rows = self.repeated.nonzero().squeeze(1)
        offset = torch.randint(max(1, length // 4), half + 1, (len(rows),), generator=g)
        for t in range(half, length):
            tokens[rows, t] = tokens[rows, t - offset]
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.tokens[index]

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        """A whole batch by one indexing operation (the DataLoader uses it when present)."""
        return self.tokens[indices]

    @staticmethod
    def collate(batch: torch.Tensor) -> torch.Tensor:
        """Collate for a DataLoader over this data set (batches arrive already stacked)."""
        return batch


class InductionLM(L.LightningModule):
    """A 2-layer attention-only transformer trained on :class:`InductionData`.

    Validation reports ``val/copy_loss``: the loss on the copied half of sequences that all
    repeat, the curve whose sharp drop marks the formation of the induction heads.

    Args:
        vocab_size: tokens of the language.
        length: tokens per sequence.
        d_model: residual width.
        n_heads: heads per layer.
        lr: Adam's learning rate.
    """

    def __init__(
        self,
        vocab_size: int = 32,
        length: int = 32,
        d_model: int = 64,
        n_heads: int = 4,
        lr: float = 3e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = AttentionOnlyTransformer(vocab_size, d_model, n_heads, 2, length)
        self.lr = lr

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = token_loss(self.model, batch).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        copied = token_loss(self.model, batch)[:, batch.shape[1] // 2 - 1 :]
        self.log("val/copy_loss", copied.mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def loss_of_lm(model: InductionLM, batch: torch.Tensor) -> torch.Tensor:
    """Per-token losses of an :class:`InductionLM` (what susceptibilities need)."""
    return token_loss(model.model, batch)


class InductionDataModule(L.LightningDataModule):
    """The demo's data: training sequences of which ``repeat_prob`` copy themselves, and
    validation sequences that all do (the loss on their copied halves is ``val/copy_loss``).

    Args:
        size: training sequences.
        batch_size: sequences per batch.
        length: tokens per sequence.
        vocab_size: tokens of the language.
        repeat_prob: share of training sequences that copy themselves.
        seed: seed of the training sequences (the validation ones use ``seed + 1``).
    """

    def __init__(
        self,
        size: int = 8192,
        batch_size: int = 32,
        length: int = 32,
        vocab_size: int = 32,
        repeat_prob: float = 0.8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.train = InductionData(size, length, vocab_size, repeat_prob, seed)
        self.copies = InductionData(64, length, vocab_size, 1.0, seed + 1)

    def loader(self, data: InductionData, shuffle: bool = False) -> DataLoader:
        """Batches of ``data`` at this module's batch size."""
        return DataLoader(data, self.batch_size, shuffle=shuffle, collate_fn=data.collate)

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.copies)
