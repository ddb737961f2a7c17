"""How a sweep uses this machine: how many worker processes, and how many torch threads each.

A small model's step is a few small ops, and every thread of a process meets at every op: a second
thread adds little, and when anything else wants the cores (another worker, another user) a thread that
is switched out stalls its partner at each barrier. Independent trials in separate processes never wait
for each other. Measured with ``python -m benchmarks.bench --layouts`` on this project's 2-core machine
(quick.yaml's base trial, compact vocabulary, while other jobs shared the cores): 2 workers x 1 thread
finished the same two trials in 78 s, 1 worker x 2 threads in 192 s. So CPU sweeps get one worker per
core (up to ``MAX_AUTO_WORKERS``, each a process with its own memory); with CUDA, one worker per GPU, so
each worker has a device of its own. ``--workers N`` overrides the count (threads then split the cores),
``--set train.threads=K`` the threads.
"""

from __future__ import annotations

import os

MAX_AUTO_WORKERS = 8  # each worker holds its own model, data and W&B service: memory, not cores, bounds this


def choose_layout(workers: int | None = None, cores: int | None = None, gpus: int | None = None) -> tuple[int, int]:
    """``(workers, torch threads per worker)`` for ``cores`` CPU cores and ``gpus`` CUDA devices (default: this
    process's)."""
    cores = cores or available_cores()
    gpus = cuda_devices() if gpus is None else gpus
    if workers is None:
        workers = gpus if gpus else min(cores, MAX_AUTO_WORKERS)
    return workers, max(1, cores // workers)


def available_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
