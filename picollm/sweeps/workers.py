"""Workers and the coordinator: the trial loop on ``study.optimize``, worker processes, devices and signals.

A worker is one ``study.optimize`` loop over a :class:`~picollm.sweeps.studies.CappedStudy`, which never starts a
trial beyond the total of ``n_trials`` complete or pruned ones; the loop ends when that total is reached.
When every remaining trial is running elsewhere the worker waits, failing trials whose worker is gone
(:mod:`picollm.sweeps.liveness`), so the wait is bounded by ``grace_period``.

:func:`run_sweep` is the coordinator: it checks the storage first, resolves the offline fallback once,
fingerprints the study, starts ``--workers`` processes (worker ``rank`` on ``cuda:{rank % device_count}``),
shows progress, and exports the study when they stop. The first SIGINT or SIGTERM interrupts: the running
trial is failed with reason ``interrupted`` and its run record closed; the coordinator forwards SIGTERM to
its workers, gives them ``STOP_GRACE_S`` seconds, kills what is left, then exports.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from picollm import tracking
from picollm.config import config_from_dict
from picollm.errors import PicoError
from picollm.storage import RDB_MODULES, claim_lock, mask_url
from picollm.sweeps import fingerprint
from picollm.sweeps.layout import choose_layout
from picollm.sweeps.liveness import fail_stale
from picollm.sweeps.objective import AbortSweep, Objective
from picollm.sweeps.report import Progress, best_value, trial_line
from picollm.sweeps.settings import Experiment
from picollm.sweeps.studies import (
    StudyFull,
    enqueue_baseline,
    finished,
    open_study,
    record_trained_base,
    with_seed,
)

STOP_GRACE_S = 8.0  # after SIGTERM, workers get this long to close their trials before they are killed
IDLE_FIRST_S, IDLE_MAX_S = 0.02, 2.0  # a worker with nothing to start polls the study at these intervals (a COUNT)
ShowTrial = Callable[[Any, Any], None]  # an Optuna callback showing a finished trial


@dataclass
class WorkerSpec:
    exp: Experiment
    storage: str
    timeout_s: float | None = None
    threads: int | None = None
    verbose: bool = True
    rank: int = 0  # this worker's index on this machine: picks its GPU
    dry_run: bool = False  # trials skip training but make every storage call (picollm/sweeps/dryrun.py)


@contextlib.contextmanager
def interrupts_as_keyboard() -> Iterator[None]:
    """The first SIGINT or SIGTERM raises KeyboardInterrupt; later ones are ignored while the run closes."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _taken_over(study: Any, objective: Objective) -> bool:
    """After ``optimize`` raised: was its trial failed by another worker while it ran?"""
    trial = objective.current
    return trial is not None and study._storage.get_trial(trial._trial_id).state == TrialState.FAIL


def _say_interrupted(study: Any, objective: Objective, show: Callable[[str], None]) -> None:
    if objective.current is not None:
        trial = study._storage.get_trial(objective.current._trial_id)
        show(trial_line(trial, best_value(study)))
    show("interrupted: the running trial is failed (reason 'interrupted') and its run record closed")


def _optimize_once(study: Any, objective: Objective, show: ShowTrial | None, deadline: float) -> bool:
    """One ``study.optimize`` call; False when this worker has nothing left to start right now.

    No callback runs unless trials are shown: Optuna re-reads each finished trial for its callbacks, and the stop
    rules live in the objective (the study's cap stops the loop at the total).
    """
    callbacks = None if show is None else [show]
    objective.current = None
    try:
        timeout = None if math.isinf(deadline) else max(0.0, deadline - time.monotonic())
        study.optimize(objective, timeout=timeout, catch=(Exception,), callbacks=callbacks)
    except StudyFull:
        return False
    except (ValueError, UpdateFinishedTrialError):
        if not _taken_over(study, objective):
            raise
        print(f"trial {objective.current.number} was failed by another worker; its result is dropped", flush=True)
    return True


def run_worker(spec: WorkerSpec, on_trial: ShowTrial | None = None, study: Any = None) -> None:
    """Run trials until the study has ``n_trials`` finished, the timeout passes, or Ctrl-C.

    A trial takes tens of seconds: the tracker prints a line about it every few seconds, so a terminal is never
    silent for a whole trial. ``study`` is the spec's study opened already (the workers-scale bench times the
    opening apart); by default it is opened here.
    """
    s = spec.exp.study
    tracking.progress_line = _progress_line
    study = open_study(spec.exp, spec.storage, create=False) if study is None else study
    objective = Objective(spec.exp, spec.threads, spec.rank, dry_run=spec.dry_run)
    show = on_trial or ((lambda st, t: print(trial_line(t, best_value(st)), flush=True)) if spec.verbose else None)
    deadline = time.monotonic() + spec.timeout_s if spec.timeout_s else math.inf
    idle_s = IDLE_FIRST_S
    try:
        while time.monotonic() < deadline and finished(study) < s.n_trials and objective.abort is None:
            fail_stale(study, s.grace_period, s.max_retry)
            if _optimize_once(study, objective, show, deadline):
                idle_s = IDLE_FIRST_S
            elif finished(study) < s.n_trials:  # peers hold the last trials: wait, polling less often as they take
                time.sleep(idle_s)
                idle_s = min(2 * idle_s, IDLE_MAX_S, s.heartbeat_interval)
    except KeyboardInterrupt:
        _say_interrupted(study, objective, lambda line: print(line, file=sys.stderr, flush=True))
        raise
    if objective.abort is not None:
        raise AbortSweep(objective.abort)


def _progress_line(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)


def worker_process(spec: WorkerSpec, environ: dict[str, str] | None = None) -> None:
    """Entry point of a worker process: errors become one line and an exit code.

    ``environ`` is the sweep's environment at the worker's start: the forkserver it is forked from keeps the one
    it was started with, which in a notebook may be older (``WANDB_MODE`` set since, say).
    """
    _adopt(environ)
    with interrupts_as_keyboard():
        try:
            run_worker(spec)
        except PicoError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            sys.exit(130)


def stop_workers(
    procs: list[Any], grace_s: float = STOP_GRACE_S, sig: int = signal.SIGTERM, every_s: float | None = None
) -> None:
    """``sig`` to every live process, then kill what is left after ``grace_s``.

    Sent once by default (a sweep worker ignores a second signal while it stops); with ``every_s``, sent again at
    that interval to the processes still alive, for a pool whose worker may only just be starting an item.
    """
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


# What every worker imports, once for all of them: torch, the trainer, Optuna and what its database storage imports
# on first use, and torch._dynamo, which torch's optimisers import on first use (~1.5 s: picollm.bench --sweep's
# model_build).
WORKER_PRELOAD = ["picollm.sweeps.objective", "picollm.train", "picollm.sweeps.dryrun", "torch._dynamo", *RDB_MODULES]


def worker_context() -> Any:
    """Worker processes forked from a forkserver that has imported :data:`WORKER_PRELOAD`.

    The forkserver is a fresh process that only imports, so forking it is safe (no torch thread pool has
    started, which is why workers are never forked from the sweep's own process); each worker then starts in
    milliseconds instead of re-importing torch, and the import is paid once per sweep, not once per worker.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(WORKER_PRELOAD)
    return ctx


_POOL_RANK = [0]  # in a worker of `in_processes`: which of the pool's workers this is


def _adopt(environ: dict[str, str] | None) -> None:
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)


def _start_pool_worker(ranks: Any, environ: dict[str, str]) -> None:
    _adopt(environ)
    _POOL_RANK[0] = ranks.get()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # between items; an item takes interrupts (`_interruptible`)


def _interruptible(fn: Callable[[Any], Any], item: Any) -> Any:
    """In a pool worker: the terminal's Ctrl-C and the pool's own SIGINT are one interrupt, not two."""
    with interrupts_as_keyboard():
        return fn(item)


def pool_rank() -> int:
    """0 .. parallel-1 in a worker of :func:`in_processes` (0 in this process): which device is its own."""
    return _POOL_RANK[0]


def in_processes(fn: Callable[[Any], Any], items: list[Any], parallel: int) -> Iterator[Any]:
    """``fn(item)`` for every item, in ``parallel`` worker processes (yielded as they finish) or in this one.

    An executor, not a Pool: a Pool terminates its workers with SIGTERM on exit, which a sweep worker takes for
    Ctrl-C. Each worker knows its rank (:func:`pool_rank`) and starts with this process's environment. If the
    consumer stops early (Ctrl-C, SIGTERM, an error), the queued items are cancelled and the running ones get
    SIGINT, which a run takes as Ctrl-C: it closes its record as interrupted and the pool ends within seconds.
    """
    if parallel <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

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


def _run_processes(specs: list[WorkerSpec], study: Any, progress: Progress) -> None:
    ctx = worker_context()
    environ = dict(os.environ)  # handed over in memory (a pipe), never written to a file
    procs = [ctx.Process(target=worker_process, args=(spec, environ), daemon=False) for spec in specs]
    for proc in procs:
        proc.start()
    try:
        while any(proc.is_alive() for proc in procs):
            time.sleep(1.0)
            progress.poll(study)
    except KeyboardInterrupt:
        stop_workers(procs)
        raise
    progress.poll(study)
    codes = [proc.exitcode for proc in procs]
    if any(code not in (0, None) for code in codes):
        raise PicoError(f"worker exit codes {codes}: see the lines above")


@dataclass
class SweepOutcome:
    folder: Path
    interrupted: bool
    notes: list[str]


def resolve_offline(exp: Experiment) -> Experiment:
    """Probe the hub and tokenizer once for the whole sweep, not once per trial; say so when falling back."""
    from picollm.data import apply_offline_fallback

    cfg, note = apply_offline_fallback(config_from_dict(exp.base))
    if note is None:
        return exp
    print(note, file=sys.stderr, flush=True)
    return replace(exp, base=cfg.to_dict(), extra={**exp.extra, "offline_fallback": note})


def prepare(exp: Experiment, storage_url: str) -> tuple[Experiment, Any]:
    """Storage first (a bad URL costs nothing), then the data identity, then the study's question."""
    study = open_study(exp, storage_url, create=True)
    exp = resolve_offline(exp)
    exp = replace(exp, fingerprint=fingerprint.fingerprint(exp))
    with claim_lock(storage_url, f"setup-{exp.study.name}"):  # machines starting together agree on one question
        fingerprint.check(study, exp, storage_url)
        record_trained_base(study, exp)
        enqueue_baseline(study, exp)
    return exp, study


def exp_of(exp: Experiment, rank: int, started: int) -> Experiment:
    """Worker ``rank``'s experiment: its own sampler seed, except the first worker of a new study."""
    return with_seed(exp, None if rank == 0 and started == 0 else f"local:{rank}:{started}")


def _work(
    exp: Experiment,
    storage_url: str,
    layout: tuple[int, int],
    timeout_s: float | None,
    progress: Progress,
    dry_run: bool,
) -> None:
    workers, threads = layout
    started = sum(t.state != TrialState.WAITING for t in progress.study.get_trials(deepcopy=False))
    specs = [
        WorkerSpec(
            exp_of(exp, rank, started), storage_url, timeout_s, threads, verbose=False, rank=rank, dry_run=dry_run
        )
        for rank in range(workers)
    ]
    if workers == 1:
        run_worker(specs[0], on_trial=progress.show)
    else:
        _run_processes(specs, progress.study, progress)


def run_sweep(
    exp: Experiment, storage_url: str, workers: int = 1, timeout_s: float | None = None, dry_run: bool = False
) -> SweepOutcome:
    """Run (or resume) the study to ``n_trials`` finished trials, then export it.

    ``workers`` processes split this machine's cores (:func:`picollm.sweeps.layout.choose_layout`); the CLI's
    default is that function's choice of workers.
    """
    exp, study = prepare(exp, storage_url)
    s = exp.study
    layout = choose_layout(workers)
    print(
        f"study {s.name!r} in {mask_url(storage_url)}: {finished(study)}/{s.n_trials} trials finished; "
        f"objective {s.metric}; sampler {s.sampler}, pruner {s.pruner}, {s.budget_tokens or 'no'} tokens per "
        f"trial, {workers} worker(s) x {layout[1]} thread(s)",
        flush=True,
    )
    progress = Progress(study, s.n_trials)
    interrupted = False
    with interrupts_as_keyboard():
        try:
            _work(exp, storage_url, layout, timeout_s, progress, dry_run)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            progress.close()
        from picollm.export import export_study, log_study_run

        folder, notes = export_study(study, s.out_dir)
        log_study_run(study, folder)
        if exp.confirm is not None and not interrupted:  # the study's confirm: block
            from picollm.sweeps.confirm_export import confirm_and_export

            notes += confirm_and_export(study, exp.confirm, s.out_dir, workers)
    return SweepOutcome(folder, interrupted, notes)
