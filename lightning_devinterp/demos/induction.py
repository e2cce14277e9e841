"""A synthetic language that rewards in-context copying.

Each sequence is drawn from a fixed random bigram language; with probability
``repeat_prob`` its second half continues by copying the tokens ``offset`` positions back,
with ``offset`` drawn per sequence between a quarter and a half of the length. A fixed
positional head cannot know the offset; a model that learns induction (attend to the token
after the previous occurrence of the current token) predicts the copied half almost
perfectly.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


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
