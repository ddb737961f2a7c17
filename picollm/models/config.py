"""The ``model:`` section: one flat section for every model (a sweep can search ``model.type``); imports nothing."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    """Architecture; the models in :mod:`picollm.models` are built from it and a vocabulary size."""

    type: str = "transformer"  # kgram | lstm | transformer
    block_size: int = 128  # every model: the training window (the transformer's longest context)
    embed_size: int = 128  # every model: the token embedding's width
    k: int = 3  # kgram: tokens of context
    hidden_size: int = 256  # kgram: MLP width; lstm: hidden state size
    num_inner_layers: int = 1  # kgram: hidden layers of the MLP
    num_layers: int = 2  # lstm and transformer: depth
    n_heads: int = 4  # transformer
    mlp_ratio: int = 4  # transformer: MLP width over embed_size
    dropout: float = 0.0  # every model
    positions: str = "learned"  # transformer: learned | rotary
    tie_weights: bool = True  # transformer: share the embedding with the output head
