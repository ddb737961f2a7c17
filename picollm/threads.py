"""Torch threads for one run when ``train.threads`` is unset: one, on a CPU.

For the reason a sweep runs single-threaded workers (:mod:`picollm.sweeps.layout`): on a shared machine the other
processes are the other workers. On CUDA the CPU only feeds the GPU, so torch keeps its default.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from picollm.config import Config


def lone_run_threads(device: str) -> int | None:
    """Torch threads for one run on ``device`` (a ``train.device``): 1 on the CPU, None (torch's default) else."""
    return 1 if runs_on_cpu(device) else None


def runs_on_cpu(device: str) -> bool:
    """Whether ``train.device`` puts the model on the CPU (``auto`` does when there is no CUDA)."""
    if device == "auto":
        import torch

        return not torch.cuda.is_available()
    return device == "cpu"


def fit_threads(cfg: Config) -> Config:
    """A copy of ``cfg`` with ``train.threads`` set by :func:`lone_run_threads` when it is unset."""
    if cfg.train.threads is not None:
        return cfg
    threads = lone_run_threads(cfg.train.device)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))
