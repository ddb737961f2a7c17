"""How runs use the cores: torch threads for one run when ``train.threads`` is unset, workers x threads for a sweep.

A lone run on a quiet machine gains from every core (the k-gram MLP at block 128 with the GPT-2 head trained 816
tokens/s on one thread, 1,508 on two), but where other processes already hold the cores a second thread mostly waits
for them. So the run takes the cores that other running tasks leave free, at least one; a sweep's workers share
the cores by their own rule (:func:`choose_layout`). On CUDA the CPU only feeds the GPU, so torch keeps its
default. docs/performance.md has the measurements, quiet and loaded.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from picollm.config import Config

MAX_AUTO_WORKERS = 8  # each sweep worker holds its own model, data and W&B service: memory, not cores, bounds this


def available_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def running_elsewhere(samples: int = 5, every_s: float = 0.02) -> float:
    """Tasks running on the machine now besides this one: the median of a few reads of Linux's ``procs_running``.

    The 1-minute load average trails a busy minute for minutes: measured right after a benchmark, a quiet machine
    still read 1.5 to 1.9, and a lone run took one thread where two trained 56% faster. Elsewhere it is the fallback.
    """
    counts = []
    try:
        for i in range(samples):
            if i:
                time.sleep(every_s)
            with open("/proc/stat", encoding="ascii") as stat:
                counts += [int(line.split()[1]) for line in stat if line.startswith("procs_running")]
    except (OSError, ValueError):
        counts = []
    if counts:
        return max(0.0, statistics.median(counts) - 1)  # this process is one of them
    try:
        return os.getloadavg()[0]
    except OSError:  # no load average on this platform: assume nothing else runs
        return 0.0


def free_cores(cores: int | None = None, load: float | None = None) -> int:
    """This process's cores less those other tasks are using now (``load``), at least one."""
    cores = cores or available_cores()
    load = running_elsewhere() if load is None else load
    return max(1, min(cores, cores - round(load)))


def lone_run_threads(device: str) -> int | None:
    """Torch threads for one run on ``device`` (a ``train.device``): the free cores on the CPU, torch's default else."""
    return free_cores() if runs_on_cpu(device) else None


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


def choose_layout(workers: int | None = None, cores: int | None = None, gpus: int | None = None) -> tuple[int, int]:
    """A sweep's ``(workers, torch threads per worker)`` for ``cores`` CPU cores and ``gpus`` CUDA devices (default:
    here). A small model's step is a few small ops at which every thread of a process meets, so on shared cores a
    second thread mostly waits; independent trials in separate processes never do. So CPU sweeps get one
    single-threaded worker per core (up to ``MAX_AUTO_WORKERS``), CUDA sweeps one worker per GPU."""
    cores = cores or available_cores()
    gpus = cuda_devices() if gpus is None else gpus
    if workers is None:
        workers = gpus if gpus else min(cores, MAX_AUTO_WORKERS)
    return workers, max(1, cores // workers)


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
