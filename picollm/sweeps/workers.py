"""Workers and the coordinator: the trial loop, dead-trial recovery, worker processes and signals.

Several workers, on one machine or many, run the same loop against one storage. :func:`run_sweep`
starts them, shows progress and exports the study when they stop.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from picollm.config import config_from_dict
from picollm.errors import PicoError
from picollm.storage import mask_url
from picollm.sweeps.objective import AbortSweep, host, make_objective
from picollm.sweeps.report import Progress, best_value, trial_line
from picollm.sweeps.settings import Experiment
from picollm.sweeps.studies import counts, enqueue_baseline, finished, open_study


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_local_trials(study: Any) -> list[int]:
    """Fail and re-queue RUNNING trials whose worker process on this host is gone.

    Journal storage has no heartbeat; on RDB storage this just acts before the grace period ends.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    this_host = host()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        owner_host, _, pid = worker.rpartition(":")
        dead = owner_host == this_host and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid))
        if not dead:
            continue
        try:  # the reason first: a finished trial cannot be written to any more
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", "worker process died")
            if study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
                failed.append(t.number)
        except UpdateFinishedTrialError:
            continue  # another restarted worker failed it first
    return failed


def _fail_stale(study: Any) -> None:
    import optuna

    fail_dead_local_trials(study)
    optuna.storages.fail_stale_trials(study)  # heartbeat-based, RDB only (a no-op elsewhere)


@dataclass
class WorkerSpec:
    exp: Experiment
    storage: str
    timeout_s: float | None = None
    threads: int | None = None
    verbose: bool = True


def run_worker(spec: WorkerSpec, on_trial: Callable[[Any, Any], None] | None = None) -> None:
    """Run trials until the study has ``n_trials`` finished, the timeout passes, or Ctrl-C."""
    from optuna.trial import TrialState

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a scheduler's SIGTERM acts like Ctrl-C
    study = open_study(spec.exp, spec.storage, create=False)
    objective = make_objective(spec.exp, spec.threads)
    n_trials = spec.exp.study.n_trials
    deadline = time.monotonic() + spec.timeout_s if spec.timeout_s else math.inf
    failures_in_a_row = 0
    done: list[Any] = []

    def remember(_study: Any, trial: Any) -> None:  # Optuna hands each finished trial to its callbacks
        done.append(trial)

    _fail_stale(study)
    while time.monotonic() < deadline and finished(study) < n_trials:
        c = counts(study)
        if c["COMPLETE"] + c["PRUNED"] + c["RUNNING"] >= n_trials and not c["WAITING"]:
            time.sleep(min(2.0, spec.exp.study.heartbeat_interval))  # peers hold the last slots: wait
            _fail_stale(study)
            continue
        done.clear()
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[remember])
        if not done:
            continue
        trial = done[0]
        if on_trial is not None:
            on_trial(study, trial)
        elif spec.verbose:
            print(trial_line(trial, best_value(study)), flush=True)
        reason = str(trial.user_attrs.get("fail_reason", ""))
        if trial.state == TrialState.FAIL and trial.user_attrs.get("abort"):
            raise AbortSweep(reason)
        failures_in_a_row = failures_in_a_row + 1 if trial.state == TrialState.FAIL else 0
        if failures_in_a_row >= max(3, n_trials):
            raise PicoError(f"{failures_in_a_row} trials failed in a row; last: {reason}")


def worker_process(spec: WorkerSpec) -> None:
    """Entry point of a spawned worker: errors become one line and an exit code."""
    try:
        run_worker(spec)
    except PicoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _run_processes(spec: WorkerSpec, workers: int, study: Any, progress: Progress) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # fork after torch's thread pools start is unsafe
    procs = [ctx.Process(target=worker_process, args=(spec,), daemon=False) for _ in range(workers)]
    for proc in procs:
        proc.start()
    try:
        while any(proc.is_alive() for proc in procs):
            time.sleep(1.0)
            progress.poll(study)
    except KeyboardInterrupt:
        for proc in procs:
            proc.join(timeout=60)  # they got the same Ctrl-C and are marking their trials
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
    return Experiment(cfg.to_dict(), exp.search, exp.study, exp.source, {**exp.extra, "offline_fallback": note})


def run_sweep(exp: Experiment, storage_url: str, workers: int = 1, timeout_s: float | None = None) -> SweepOutcome:
    """Run (or resume) the study to ``n_trials`` finished trials, then export it."""
    exp = resolve_offline(exp)
    study = open_study(exp, storage_url, create=True)
    enqueue_baseline(study, exp)
    s = exp.study
    print(
        f"study {s.name!r} in {mask_url(storage_url)}: {finished(study)}/{s.n_trials} trials finished; "
        f"sampler {s.sampler}, pruner {s.pruner}, {s.budget_tokens or 'no'} tokens per trial, "
        f"{workers} worker(s)",
        flush=True,
    )
    threads = max(1, (os.cpu_count() or 1) // workers)
    spec = WorkerSpec(exp, storage_url, timeout_s, threads, verbose=False)
    progress = Progress(study, s.n_trials)
    interrupted = False
    try:
        if workers == 1:
            run_worker(spec, on_trial=progress.show)
        else:
            _run_processes(spec, workers, study, progress)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
    from picollm.export import export_study, log_study_run

    folder, notes = export_study(study, s.out_dir)
    log_study_run(study, folder)
    return SweepOutcome(folder, interrupted, notes)
