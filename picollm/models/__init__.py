"""Model registry: ``model.type`` -> its class, each built from a :class:`ModelConfig` and a vocabulary size.

Every model maps token ids (B, T) to hidden states (B, T, D) and owns a ``head`` (``nn.Linear``)
that turns hidden states into vocabulary logits; keeping the head separate lets the loss run
head and cross-entropy together (see :mod:`picollm.models.loss`). Each model also takes an
optional ``cache`` dict so generation can continue a sequence without recomputing it, and says
how much left context a prediction uses: ``context_size`` (k - 1 for the k-gram; None for models
that use the whole window), which decides how evaluation windows are cut (:mod:`picollm.data`).
Nothing here imports from the training code, and the registry imports a model's module (and torch) only
when that model is built, so a config can name and check ``model.type`` without torch.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from picollm.models.config import ModelConfig

if TYPE_CHECKING:
    from torch import nn

MODELS: dict[str, str] = {
    "kgram": "picollm.models.kgram:KGramMLP",
    "lstm": "picollm.models.lstm:LSTMLM",
    "transformer": "picollm.models.transformer:Transformer",
}
FIELDS = frozenset(f.name for f in dataclasses.fields(ModelConfig))


def model_class(model_type: str) -> type[nn.Module]:
    module, _, name = MODELS[model_type].partition(":")
    return getattr(importlib.import_module(module), name)


def build_model(settings: ModelConfig | Mapping[str, Any], vocab_size: int) -> nn.Module:
    """Build ``settings.type`` (a :class:`ModelConfig`, or its fields as saved in a checkpoint)."""
    if not isinstance(settings, ModelConfig):
        settings = ModelConfig(**{k: v for k, v in settings.items() if k in FIELDS})
    return model_class(settings.type)(settings, vocab_size)


def count_parameters(model: nn.Module) -> int:
    """Distinct trainable parameters (a tied head is counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
