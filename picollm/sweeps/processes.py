"""Worker processes: forked from a forkserver that imported the trainer once, ranked, and stopped cleanly."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import forkserver, resource_tracker
from typing import Any

STOP_GRACE_S = 8.0  # after SIGTERM, workers get this long to close their trials before they are killed


SIGNALS = (signal.SIGINT, signal.SIGTERM)
_HELD: list[bool] = []  # one entry per open `interrupts_held` block: whether an interrupt came during it


def _ignore(signum: int, frame: Any) -> None:
    """A Python handler that does nothing: see :func:`interrupts_as_keyboard` for why not ``SIG_IGN``."""


@contextlib.contextmanager
def interrupts_as_keyboard(restore: bool = True) -> Iterator[None]:
    """The first SIGINT or SIGTERM raises KeyboardInterrupt; later ones are ignored while the run closes.

    Later signals reach a handler that returns: switching to ``SIG_IGN`` with a signal pending prints
    ``OSError: Signal 15 ignored due to race condition``. ``restore=False`` keeps ignoring both to the process's end.
    """
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    interrupted = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal interrupted
        if interrupted:
            return
        interrupted = True
        if _HELD:
            _HELD[-1] = True
            return
        raise KeyboardInterrupt

    for sig in SIGNALS:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if restore else _ignore)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Inside :func:`interrupts_as_keyboard`: an interrupt in the block is raised at its end (starts get recorded)."""
    _HELD.append(False)
    try:
        yield
    finally:
        arrived = _HELD.pop()
    if arrived:
        raise KeyboardInterrupt


def stop_workers(
    procs: list[Any], grace_s: float = STOP_GRACE_S, sig: int = signal.SIGTERM, every_s: float | None = None
) -> None:
    """``sig`` to every live process (again every ``every_s`` when given), then kill what is left after ``grace_s``."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (alive := [proc for proc in procs if proc.is_alive()]):
        for proc in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
        until = deadline if every_s is None else min(deadline, time.monotonic() + every_s)
        for proc in alive:
            proc.join(timeout=max(0.0, until - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()


# What Optuna's RDBStorage imports when a worker opens the study's database: about 1 CPU-s a worker, 0.55 once here.
RDB_LIBRARIES = ["sqlalchemy.orm", "alembic.command", "alembic.config", "alembic.migration", "alembic.script"]

# Imported once in the forkserver for every worker (torch._dynamo: torch's optimisers import it on their first step;
# picollm.sweeps.workers: where a worker's function lives, which the package no longer imports for it).
WORKER_PRELOAD = ["picollm.sweeps.workers", "picollm.sweeps.trial", "picollm.trainer", "torch._dynamo", *RDB_LIBRARIES]


def worker_context() -> Any:
    """Workers forked from a forkserver that only imported :data:`WORKER_PRELOAD` (no torch threads yet)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(WORKER_PRELOAD)
    _start_forkserver()
    return ctx


def _start_forkserver() -> None:
    """Start the forkserver with SIGINT blocked for life (a Ctrl-C as it imports: no traceback); workers unblock it."""
    resource_tracker.ensure_running()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


_POOL_RANK = [0]  # in a worker of `in_processes`: which of the pool's workers this is


def adopt(environ: dict[str, str] | None) -> None:
    """A worker's start: Ctrl-C reaches it again, and it takes ``environ`` (the starting process's) when given.

    It also freezes what it inherited from the forkserver (torch, optuna: long-lived objects) before its first full
    collection, as Python's ``gc`` docs advise for forked servers: the worker's collector then no longer writes to
    those objects, so fewer of their pages are copied into each worker (docs/performance.md has the figures).
    """
    gc.freeze()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)


def _start_pool_worker(ranks: Any, environ: dict[str, str]) -> None:
    signal.signal(signal.SIGINT, _ignore)  # between items; an item takes interrupts (`_interruptible`)
    adopt(environ)
    _POOL_RANK[0] = ranks.get()


def _interruptible(fn: Callable[[Any], Any], item: Any) -> Any:
    """In a pool worker: the terminal's Ctrl-C and the pool's own SIGINT are one interrupt, not two."""
    with interrupts_as_keyboard():
        return fn(item)


def pool_rank() -> int:
    """0 .. parallel-1 in a worker of :func:`in_processes` (0 in this process): which device is its own."""
    return _POOL_RANK[0]


def in_processes(fn: Callable[[Any], Any], items: list[Any], parallel: int) -> Iterator[Any]:
    """``fn(item)`` for every item, in ``parallel`` worker processes (yielded as they finish) or in this one.

    An executor, not a Pool, whose SIGTERM on exit a sweep worker takes for Ctrl-C. If the consumer stops early, running
    items get SIGINT and close their records as interrupted.
    """
    if parallel <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    ctx, workers = worker_context(), min(parallel, len(items))
    ranks = ctx.Queue()
    for rank in range(workers):
        ranks.put(rank)
    pool = ProcessPoolExecutor(workers, ctx, _start_pool_worker, (ranks, dict(os.environ)))
    futures = [pool.submit(_interruptible, fn, item) for item in items]
    finished = False
    try:
        for future in as_completed(futures):
            yield future.result()
        finished = True
    finally:
        procs = list((pool._processes or {}).values())  # the executor offers no way to stop a running item
        pool.shutdown(wait=finished, cancel_futures=True)
        if not finished:  # SIGINT, which an item takes as Ctrl-C, until the workers are gone
            stop_workers(procs, sig=signal.SIGINT, every_s=1.0)
