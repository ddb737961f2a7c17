"""How a sweep uses this machine: worker processes and torch threads per worker.

A small model's step is a few small ops at which every thread of a process meets, so on shared cores a second thread
mostly waits; independent trials in separate processes never do. So CPU sweeps get one single-threaded worker per core
(up to ``MAX_AUTO_WORKERS``), CUDA sweeps one worker per GPU.
"""

from __future__ import annotations

from picollm.threads import available_cores

MAX_AUTO_WORKERS = 8  # each worker holds its own model, data and W&B service: memory, not cores, bounds this


def choose_layout(workers: int | None = None, cores: int | None = None, gpus: int | None = None) -> tuple[int, int]:
    """``(workers, torch threads per worker)`` for ``cores`` CPU cores and ``gpus`` CUDA devices (default: here)."""
    cores = cores or available_cores()
    gpus = cuda_devices() if gpus is None else gpus
    if workers is None:
        workers = gpus if gpus else min(cores, MAX_AUTO_WORKERS)
    return workers, max(1, cores // workers)


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
