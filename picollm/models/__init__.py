"""Model registry: ``model.type`` -> (its config dataclass, its class).

Every model maps token ids (B, T) to hidden states (B, T, D) and owns a ``head`` (``nn.Linear``)
that turns hidden states into vocabulary logits; keeping the head separate lets the loss run
head and cross-entropy together (see :mod:`picollm.models.loss`). Each model also takes an
optional ``cache`` dict so generation can continue a sequence without recomputing it, and says
how much left context a prediction uses: ``context_size`` (k - 1 for the k-gram; None for models
that use the whole window), which decides how evaluation windows are cut (:mod:`picollm.data`).
Nothing here imports from the training code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from picollm.models.kgram import KGramConfig, KGramMLP
from picollm.models.lstm import LSTMLM, LSTMConfig
from picollm.models.transformer import Transformer, TransformerConfig

MODELS: dict[str, tuple[type, type[nn.Module]]] = {
    "kgram": (KGramConfig, KGramMLP),
    "lstm": (LSTMConfig, LSTMLM),
    "transformer": (TransformerConfig, Transformer),
}


def build_model(settings: Mapping[str, Any], vocab_size: int) -> nn.Module:
    """Build ``settings["type"]`` from the settings it declares; the others are ignored."""
    cfg_cls, model_cls = MODELS[settings["type"]]
    names = {f.name for f in dataclasses.fields(cfg_cls)} - {"vocab_size"}
    return model_cls(cfg_cls(vocab_size=vocab_size, **{k: v for k, v in settings.items() if k in names}))


def count_parameters(model: nn.Module) -> int:
    """Distinct trainable parameters (a tied head is counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
