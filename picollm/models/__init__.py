"""Model registry: ``model.type`` -> its class, built from a :class:`ModelConfig` and a vocabulary size.

Every model maps ids (B, T) to hidden states (B, T, D) and owns a separate ``head``, so the loss can fuse head and
cross-entropy (:mod:`.loss`); it takes an optional generation ``cache`` and says its ``context_size`` (``k - 1`` for the
k-gram, None for the whole window), also from its config alone (``context_of``). A model's module (and torch) is
imported only when it is built.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from picollm.models.config import MODELS, ModelConfig

if TYPE_CHECKING:
    from torch import nn

FIELDS = frozenset(f.name for f in dataclasses.fields(ModelConfig))


def model_class(model_type: str) -> type[nn.Module]:
    module, _, name = MODELS[model_type].partition(":")
    return getattr(importlib.import_module(module), name)


def build_model(settings: ModelConfig | Mapping[str, Any], vocab_size: int) -> nn.Module:
    """Build ``settings.type`` (a :class:`ModelConfig`, or its fields as saved in a checkpoint)."""
    if not isinstance(settings, ModelConfig):
        settings = ModelConfig(**{k: v for k, v in settings.items() if k in FIELDS})
    return model_class(settings.type)(settings, vocab_size)


def context_size(settings: ModelConfig) -> int | None:
    """The model's ``context_size`` from its config alone: a check before training builds no weights (initialising
    even meta-device weights imports ``torch._dynamo``, 1.4 s of a sweep's start)."""
    return model_class(settings.type).context_of(settings)


def count_parameters(model: nn.Module) -> int:
    """Distinct trainable parameters (a tied head is counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
