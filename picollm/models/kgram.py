"""k-gram MLP: the previous k tokens' embeddings, concatenated, through an MLP.

The k-token contexts are a strided view (``unfold``) of the left-padded input, not a Python loop. Training and
evaluation read ``k - 1`` real tokens before each block, so only generation sees the padding embedding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from picollm.models.config import ModelConfig


class KGramMLP(nn.Module):
    @staticmethod
    def context_of(cfg: ModelConfig) -> int:
        """Tokens before the current one that a prediction uses."""
        return cfg.k - 1

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.block_size = cfg.block_size
        self.context_size = self.context_of(cfg)
        self.pad_id = vocab_size  # one extra embedding row for "before the start"
        self.embed = nn.Embedding(vocab_size + 1, cfg.embed_size)
        layers: list[nn.Module] = []
        width = cfg.k * cfg.embed_size
        for _ in range(cfg.num_inner_layers):
            layers += [nn.Linear(width, cfg.hidden_size), nn.SiLU(), nn.Dropout(cfg.dropout)]
            width = cfg.hidden_size
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(width, vocab_size)

    def new_cache(self) -> dict[str, Any]:
        return {}

    def forward(self, idx: torch.Tensor, cache: dict[str, Any] | None = None) -> torch.Tensor:
        """Hidden states (B, T, width) for every position; ``self.head`` turns them into logits."""
        k = self.cfg.k
        if cache is not None and "context" in cache:
            context = cache["context"]
        else:
            context = idx.new_full((idx.shape[0], k - 1), self.pad_id)
        padded = torch.cat([context, idx], dim=1)
        if cache is not None:
            cache["context"] = padded[:, padded.shape[1] - (k - 1) :]
        windows = padded.unfold(1, k, 1)  # (B, T, k): tokens t-k+1 .. t
        return self.mlp(self.embed(windows).flatten(2))
