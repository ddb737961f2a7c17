"""The ``model:`` section: one flat section for every model (a sweep can search ``model.type``); imports nothing of
the training loop."""

from __future__ import annotations

from dataclasses import dataclass

from picollm.checks import at_least, one_of, within

POSITIONS = ("learned", "rotary")
# model.type -> "module:class", imported only when a model of that type is built.
MODELS: dict[str, str] = {
    "kgram": "picollm.models.kgram:KGramMLP",
    "lstm": "picollm.models.lstm:LSTMLM",
    "transformer": "picollm.models.transformer:Transformer",
}


@dataclass
class ModelConfig:
    """Architecture; the models in :mod:`picollm.models` are built from it and a vocabulary size."""

    type: str = one_of(MODELS, "transformer")  # kgram | lstm | transformer
    block_size: int = at_least(1, 128)  # every model: the training window (the transformer's longest context)
    embed_size: int = at_least(1, 128)  # every model: the token embedding's width
    k: int = at_least(1, 3)  # kgram: tokens of context
    hidden_size: int = at_least(1, 256)  # kgram: MLP width; lstm: hidden state size
    num_inner_layers: int = at_least(0, 1)  # kgram: hidden layers of the MLP
    num_layers: int = at_least(1, 2)  # lstm and transformer: depth
    n_heads: int = at_least(1, 4)  # transformer
    mlp_ratio: int = at_least(1, 4)  # transformer: MLP width over embed_size
    dropout: float = within(0, 1, 0.0)  # every model
    positions: str = one_of(POSITIONS, "learned")  # transformer: learned | rotary
    tie_weights: bool = True  # transformer: share the embedding with the output head

    def check(self) -> str | None:
        """What ties two of its fields together (the fields' own rules are declared with them)."""
        if self.type == "transformer" and self.embed_size % self.n_heads:
            return f"model.embed_size ({self.embed_size}) must be divisible by model.n_heads ({self.n_heads})"
        if self.positions == "rotary" and (self.embed_size // self.n_heads) % 2:
            return "model.positions=rotary needs an even head size (embed_size / n_heads)"
        return None
