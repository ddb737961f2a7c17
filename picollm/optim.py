"""Optimisers: settings, the registry by name, the learning-rate schedule; torch is imported only to build one."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from picollm.checks import at_least, one_of, positive, within

if TYPE_CHECKING:
    import torch
    from torch import nn


def _optim() -> ModuleType:
    import torch

    return torch.optim


def _fused_ok(params: list[dict]) -> dict[str, bool]:
    """Fused kernels (one pass per parameter, not one per op) for float parameters on CPU or CUDA."""
    ok = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for group in params for p in group["params"])
    return {"fused": True} if ok else {}


OPTIMIZERS: dict[str, Callable[[list[dict], OptimConfig], Any]] = {
    "sgd": lambda p, c: _optim().SGD(p, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, **_fused_ok(p)),
    "adam": lambda p, c: _optim().Adam(p, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps, **_fused_ok(p)),
    "adamw": lambda p, c: _optim().AdamW(p, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.eps, **_fused_ok(p)),
    "rmsprop": lambda p, c: _optim().RMSprop(p, lr=c.lr, momentum=c.momentum, eps=c.eps),
    "adagrad": lambda p, c: _optim().Adagrad(p, lr=c.lr, eps=c.eps, **_fused_ok(p)),
}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: decaying norms, biases and 1-D gains just fights the loss."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.name](param_groups(model, cfg.weight_decay), cfg)


# The decay of a warmup-stable-decay schedule: the share of lr above the floor left at progress p in [0, 1).
DECAY_SHAPES: dict[str, Callable[[float], float]] = {
    "linear": lambda p: 1 - p,
    "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)),
    "1-sqrt": lambda p: 1 - math.sqrt(p),
}


def decay_start(total_steps: int, cfg: OptimConfig) -> int:
    """The first step of a WSD run's decay: its last ``decay_fraction`` of ``total_steps``.

    Up to there a run of any budget is the same run as a longer one, so it can branch into a short decay or go on
    (Hägele et al. 2024).
    """
    return max(cfg.warmup_steps, total_steps - round(cfg.decay_fraction * total_steps))


def _constant(step: int, total_steps: int, cfg: OptimConfig) -> float:
    return 1.0


def _cosine(step: int, total_steps: int, cfg: OptimConfig) -> float:
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _wsd(step: int, total_steps: int, cfg: OptimConfig) -> float:
    start = decay_start(total_steps, cfg)
    if step < start:
        return 1.0
    progress = min(1.0, (step - start) / max(1, total_steps - start))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * DECAY_SHAPES[cfg.decay_shape](progress)


# optim.schedule -> the multiple of lr at a step after the warmup, given the run's total steps.
SCHEDULES: dict[str, Callable[[int, int, OptimConfig], float]] = {"constant": _constant, "cosine": _cosine, "wsd": _wsd}


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (the ``optim:`` section of a config)."""

    name: str = one_of(OPTIMIZERS, "adamw")  # sgd | adam | adamw | rmsprop | adagrad
    lr: float = positive(1e-3)
    weight_decay: float = at_least(0, 0.0)
    momentum: float = at_least(0, 0.0)  # sgd, rmsprop
    nesterov: bool = False  # sgd (needs momentum > 0)
    beta1: float = within(0, 1, 0.9)  # adam, adamw
    beta2: float = within(0, 1, 0.999)  # adam, adamw
    eps: float = positive(1e-8)
    grad_clip: float = at_least(0, 1.0)  # max gradient norm; 0 turns clipping off
    schedule: str = one_of(SCHEDULES, "constant")  # wsd: warmup, stable, decay; each after the linear warmup
    warmup_steps: int = at_least(0, 0)
    min_lr_ratio: float = within(0, 1, 0.1, "[]")  # cosine and wsd: the floor as a fraction of lr
    decay_fraction: float = within(0, 1, 0.2, "()")  # wsd: the share of the run's steps spent decaying, at its end
    decay_shape: str = one_of(DECAY_SHAPES, "linear")  # wsd: linear | cosine | 1-sqrt

    def check(self) -> str | None:
        """What ties two of its fields together (the fields' own rules are declared with them)."""
        return None if not self.nesterov or self.momentum > 0 else "optim.nesterov needs optim.momentum > 0"


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate for ``step`` (0-based): linear warmup, then the schedule's multiple of ``lr``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * SCHEDULES[cfg.schedule](step, total_steps, cfg)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
