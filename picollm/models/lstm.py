"""LSTM language model: embedding, ``nn.LSTM``, vocabulary projection (batch-first)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from picollm.models.config import ModelConfig


class LSTMLM(nn.Module):
    @staticmethod
    def context_of(cfg: ModelConfig) -> None:
        """None: a prediction uses the whole window it is given."""
        return None

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.block_size = cfg.block_size
        self.context_size = self.context_of(cfg)
        self.embed = nn.Embedding(vocab_size, cfg.embed_size)
        self.lstm = nn.LSTM(
            cfg.embed_size,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(cfg.hidden_size, vocab_size)

    def new_cache(self) -> dict[str, Any]:
        return {}

    def forward(self, idx: torch.Tensor, cache: dict[str, Any] | None = None) -> torch.Tensor:
        """Hidden states (B, T, hidden); with a cache, the recurrent state carries over between calls."""
        state = cache.get("state") if cache is not None else None
        out, new_state = self.lstm(self.embed(idx), state)
        if cache is not None:
            cache["state"] = new_state
        return out
