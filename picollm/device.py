"""Devices: a ``train.device`` this machine lacks is a one-line :class:`ConfigError` before any work."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from picollm.errors import ConfigError


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    names = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    return names + (["mps"] if _mps_available() else [])


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; a named device must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    here = available_devices()
    wanted = f"{device.type}:{device.index or 0}" if device.type == "cuda" else device.type
    if wanted not in here:
        raise ConfigError(f"train.device={name} is not available on this machine (it has: {', '.join(here)})")
    return device


def autocast_for(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA (tensor cores, no loss scaling needed); full precision elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def to_device(batch: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Host tensors to ``device``; pinned and non-blocking on CUDA so the copy overlaps compute."""
    if device.type == "cuda":
        return tuple(t.pin_memory().to(device, non_blocking=True) for t in batch)
    return batch
