"""How many torch threads one run uses when ``train.threads`` is unset: one, on a CPU.

A small model's step is a few small ops, and every thread of a process meets at every op; when anything else
wants the cores (a sweep's other workers, another user's jobs) a thread that is switched out stalls its partner at
each barrier. That is why a sweep runs one single-threaded worker per core (:mod:`picollm.sweeps.layout`), and a
lone run is no different: on a shared machine, the other processes are the other workers. Measured with
``python -m benchmarks.threads --repeats 2`` (quick.yaml's base trial, 60,000 tokens of the shared TinyStories
sample, whole processes) on this project's 2-core machine while other agents' jobs held its load average at
10.7-16.2: 1 thread trained in 22.3 and 18.8 s, 2 threads in 85.3 and 81.4 s; with the shared
yardstick (``bench/quick_reference.py``, 337.7 and 379.4 s alone that session) running beside it, 50.0 and 53.9 s
against 175.6 and 177.1 s. Every run reached the same validation loss. An idle machine was not to be had, and on
one a second thread may help a larger model: ``--set train.threads=K`` sets it. On CUDA the CPU only feeds the
GPU, so torch keeps its own default there.
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
    """``cfg`` with ``train.threads`` set by :func:`lone_run_threads` when it is unset; a copy, since ``cfg`` may be
    the caller's."""
    if cfg.train.threads is not None:
        return cfg
    threads = lone_run_threads(cfg.train.device)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))
