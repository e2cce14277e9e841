"""An attention-only transformer (the model family of the rLLC and stagewise-development
papers), built on ``nn.MultiheadAttention`` so :func:`attention_heads` finds its heads."""

from __future__ import annotations

import torch
from torch import nn


class AttentionOnlyTransformer(nn.Module):
    """Token and position embeddings, ``n_layers`` causal multi-head attention blocks with
    residual connections (no MLPs), a final LayerNorm and an unembedding.

    Args:
        vocab_size: number of tokens.
        d_model: width of the residual stream.
        n_heads: heads per layer.
        n_layers: attention layers.
        context: longest sequence.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        context: int = 64,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(context, d_model)
        self.layers = nn.ModuleList(
            nn.MultiheadAttention(d_model, n_heads, batch_first=True) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[-1]
        x = self.embed(tokens) + self.position(torch.arange(length, device=tokens.device))
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=tokens.device), 1)
        for attention in self.layers:
            x = x + attention(x, x, x, attn_mask=causal, need_weights=False)[0]
        return self.unembed(self.norm(x))


def token_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Per-token next-token cross-entropy, shape (batch, length - 1)."""
    tokens = batch[0] if isinstance(batch, (tuple, list)) else batch
    logits = model(tokens[:, :-1])
    return nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
