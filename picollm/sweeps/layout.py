"""How a sweep uses this machine's cores: how many worker processes, and how many torch threads each.

Small models stop scaling with threads long before a machine runs out of cores (each step is a few small
matmuls, and every thread joins at every op), so on many cores several workers with a few threads each
beat one worker with all of them. On 2 cores one worker with 2 threads is the choice: ``python -m
picollm.bench --layouts`` measured it at least as fast as 2 workers x 1 thread on the quick sweep's
trials, and one worker pays the process start-up once, keeps one token cache and W&B service warm, and
lets the sampler and the pruner see every finished trial before the next one starts. ``--workers N``
overrides the number of workers (threads then split the cores), ``--set train.threads=K`` the threads.
"""

from __future__ import annotations

import os

THREADS_PER_WORKER = 2  # where more cores than this are free, the next core goes to another worker


def choose_layout(workers: int | None = None, cores: int | None = None) -> tuple[int, int]:
    """``(workers, threads per worker)`` for ``cores`` (default: the cores this process may use)."""
    cores = cores or available_cores()
    if workers is None:
        workers = max(1, cores // THREADS_PER_WORKER)
    return workers, max(1, cores // workers)


def available_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
