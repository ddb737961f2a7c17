"""Workers and the coordinator: the trial loop on ``study.optimize``, worker processes, devices and signals.

A worker loops over a :class:`~picollm.sweeps.study.CappedStudy` until the total is reached, failing dead trials
(:mod:`picollm.sweeps.study`) while it waits. :func:`run_sweep` checks everything before the study exists
(:func:`prepare`), starts the workers, shows progress and exports. The first SIGINT or SIGTERM fails the running trials
as ``interrupted``; resuming runs them again.
"""

from __future__ import annotations

import math
import multiprocessing.connection
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from tqdm.auto import tqdm

import picollm.data
from picollm.data import load_token_data, window_starts
from picollm.device import resolve_device
from picollm.errors import EXIT_INTERRUPTED, EXIT_USAGE, ConfigError, DataError, PicoError, mask_url
from picollm.models import context_size
from picollm.sweeps.budget import plan_words
from picollm.sweeps.experiment import Experiment, budget_words, trial_cap
from picollm.sweeps.export import confirm_and_export, export_study, log_study_run, stamp_folder
from picollm.sweeps.processes import adopt, interrupts_as_keyboard, interrupts_held, stop_workers, worker_context
from picollm.sweeps.report import Progress, best_value, trial_line
from picollm.sweeps.study import (
    CappedStudy,
    StudyFull,
    check_results_folder,
    claim_lock,
    enqueue_baseline,
    fail_stale,
    fingerprint,
    finished,
    open_study,
    reach_storage,
    record_trained_base,
    requeue_stopped,
    stored_question,
    with_seed,
)
from picollm.sweeps.trial import AbortSweep, Objective
from picollm.threads import choose_layout

IDLE_FIRST_S, IDLE_MAX_S = 0.02, 2.0  # a worker with nothing to start polls the study at these intervals
ShowTrial = Callable[[Any, Any], None]  # an Optuna callback showing a finished trial


@dataclass
class WorkerSpec:
    exp: Experiment
    storage: str
    timeout_s: float | None = None
    threads: int | None = None
    verbose: bool = True
    rank: int = 0  # this worker's index on this machine: picks its GPU


def _current_trial(study: CappedStudy, objective: Objective) -> Any:
    """The trial the objective ran last, as the storage has it now (None before the first)."""
    if objective.current is None:
        return None
    return study.storage.get_trial(study.trial_id(objective.current.number))


def _taken_over(study: CappedStudy, objective: Objective) -> bool:
    """After ``optimize`` raised: was its trial failed by another worker while it ran?"""
    trial = _current_trial(study, objective)
    return trial is not None and trial.state == TrialState.FAIL


def _say_interrupted(study: CappedStudy, objective: Objective, show: Callable[[str], None]) -> None:
    trial = _current_trial(study, objective)
    if trial is not None:
        show(trial_line(trial, best_value(study, upto=trial)))
    show("interrupted: the running trial is failed (reason 'interrupted') and its run record closed")


def _optimize_once(study: CappedStudy, objective: Objective, show: ShowTrial | None, deadline: float) -> bool:
    """One ``study.optimize`` call; False when this worker has nothing left to start right now."""
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


def run_worker(spec: WorkerSpec, on_trial: ShowTrial | None = None, study: CappedStudy | None = None) -> None:
    """Run trials until the study has ``n_trials`` finished, the timeout passes, or Ctrl-C."""
    s = spec.exp.study
    study = open_study(spec.exp, spec.storage, create=False) if study is None else study
    objective = Objective(spec.exp, spec.threads, spec.rank, on_progress=_progress_line)
    show = on_trial or (_print_trial if spec.verbose else None)
    deadline = time.monotonic() + spec.timeout_s if spec.timeout_s else math.inf
    idle_s = IDLE_FIRST_S
    try:
        while time.monotonic() < deadline and not study.exhausted() and objective.abort is None:
            fail_stale(study, s.grace_period, s.max_retry)
            if _optimize_once(study, objective, show, deadline):
                idle_s = IDLE_FIRST_S
            elif not study.exhausted():  # peers hold the last trials or the budget: wait, polling less often
                time.sleep(idle_s)
                idle_s = min(2 * idle_s, IDLE_MAX_S, s.heartbeat_interval)
    except KeyboardInterrupt:
        _say_interrupted(study, objective, _to_stderr)
        raise
    if objective.abort is not None:
        raise AbortSweep(objective.abort)


def _print_trial(study: optuna.Study, trial: Any) -> None:
    print(trial_line(trial, best_value(study, upto=trial)), flush=True)


def _to_stderr(line: str) -> None:
    """One write per line: workers share the terminal, and a line written in two parts can be cut by another's."""
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


def _progress_line(line: str) -> None:
    tqdm.write(line, file=sys.stderr)


def worker_process(spec: WorkerSpec, environ: dict[str, str] | None = None) -> None:
    """A worker process: errors become one line and an exit code; ``environ`` is the sweep's current environment."""
    with interrupts_as_keyboard(restore=False):  # the process ends after it
        try:
            adopt(environ)  # after the handler: it unblocks a Ctrl-C that came while the worker was forked
            run_worker(spec)
        except PicoError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)


def _run_processes(specs: list[WorkerSpec], study: optuna.Study, progress: Progress) -> None:
    ctx = worker_context()
    environ = dict(os.environ)  # handed over in memory (a pipe), never written to a file
    procs = [ctx.Process(target=worker_process, args=(spec, environ), daemon=False) for spec in specs]
    try:
        with interrupts_held():  # every worker started is known, so stopped (a start waits for the forkserver)
            for proc in procs:
                proc.start()
        while alive := [proc.sentinel for proc in procs if proc.is_alive()]:
            multiprocessing.connection.wait(alive, timeout=1.0)  # a second's progress, or a worker's end at once
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
    cfg, note = picollm.data.apply_offline_fallback(exp.base)  # looked up here: tests patch it
    if note is None:
        return exp
    print(note, file=sys.stderr, flush=True)
    return replace(exp, base=cfg, extra={**exp.extra, "offline_fallback": note})


def _writable(folder: Path, key: str) -> None:
    """Make ``folder`` and write a file in it, so a folder the sweep cannot write is one line before any trial."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        why = exc.strerror or exc
        raise ConfigError(f"{key}: cannot write to {folder} ({why}); set {key} to a folder you can write") from None


def _data_error(exc: OSError) -> DataError:
    where = f" {exc.filename}" if exc.filename else ""  # a failed read names no file, a failed open does
    return DataError(f"cannot read the data{where}: {exc.strerror or exc}")


def check_trainable(exp: Experiment, devices_here: bool = True) -> None:
    """What every trial would hit, each a one-line :class:`PicoError`: device, data, one training window, folders."""
    cfg = exp.base
    if devices_here:
        resolve_device(cfg.train.device)
    try:
        data = load_token_data(cfg.data)
    except OSError as exc:  # an input file or cache folder that cannot be read or written
        raise _data_error(exc) from None
    window_starts(data, cfg.model.block_size, context_size(cfg.model) or 0)
    _writable(Path(exp.study.out_dir) / exp.study.name, "study.out_dir")
    _writable(Path(cfg.tracking.out_dir), "tracking.out_dir")


def _identity(exp: Experiment) -> Experiment:
    """The experiment with the data that will really run (offline fallback resolved) and its fingerprint."""
    exp = resolve_offline(exp)
    try:
        return replace(exp, fingerprint=fingerprint(exp))
    except OSError as exc:  # hashing an input file that cannot be read
        raise _data_error(exc) from None


def _requeue(study: optuna.Study, exp: Experiment) -> None:
    queued, used_up = requeue_stopped(study, exp.study.max_retry)
    if queued:
        full = finished(study) >= trial_cap(exp.study)  # the total holds: a queued trial waits for room
        when = f" once the study has room (it has its {exp.study.n_trials}: raise --n-trials)" if full else ""
        print(f"trials {', '.join(map(str, queued))} run again with their parameters{when} (failed baseline or Ctrl-C)")
    if used_up:
        print(f"trials {', '.join(map(str, used_up))} stay failed: retried study.max_retry={exp.study.max_retry} times")


def prepare(exp: Experiment, storage_url: str, devices_here: bool = True) -> tuple[Experiment, Any]:
    """Check everything before the study exists (storage, data identity, :func:`check_trainable`), then open it."""
    storage = reach_storage(exp, storage_url)
    exp = _identity(exp)
    stored_question(storage, exp, storage_url)
    existed = check_results_folder(storage, exp, storage_url)
    check_trainable(exp, devices_here)
    study = open_study(exp, storage_url, create=True, storage=storage)
    try:
        stamp_folder(study, exp.study.out_dir)  # checked above: from now on this study's, before anything trains
    except PicoError:  # another study of its name stamped the folder since the check: this one leaves nothing
        if not existed and not study.trials:
            optuna.delete_study(study_name=study.study_name, storage=study.storage)
        raise
    with claim_lock(storage_url, f"setup-{exp.study.name}"):  # machines starting together: one baseline, one retry
        record_trained_base(study, exp)
        enqueue_baseline(study, exp)
        _requeue(study, exp)
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
) -> None:
    workers, threads = layout
    started = sum(t.state != TrialState.WAITING for t in progress.study.get_trials(deepcopy=False))
    specs = [
        WorkerSpec(exp_of(exp, rank, started), storage_url, timeout_s, threads, verbose=False, rank=rank)
        for rank in range(workers)
    ]
    if workers == 1:
        run_worker(specs[0], on_trial=progress.show)
    else:
        _run_processes(specs, progress.study, progress)


def run_sweep(exp: Experiment, storage_url: str, workers: int, timeout_s: float | None = None) -> SweepOutcome:
    """Run (or resume) the study to ``n_trials`` finished trials (or its token budget) in ``workers`` processes, then
    export it."""
    exp, study = prepare(exp, storage_url)
    s = exp.study
    layout = choose_layout(workers)
    count = f"{finished(study)}/{s.n_trials}" if s.n_trials is not None else f"{finished(study)}"
    print(
        f"study {s.name!r} in {mask_url(storage_url)}: {count} trials finished; "
        f"objective {s.metric}; sampler {s.sampler}, pruner {s.pruner}, "
        f"{budget_words(s)}, {workers} worker(s) x {layout[1]} thread(s)",
        flush=True,
    )
    if study.plan.max_tokens is not None:
        print(plan_words(study.plan), flush=True)
    progress = Progress(study)
    interrupted = False
    with interrupts_as_keyboard():
        try:
            _work(exp, storage_url, layout, timeout_s, progress)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            progress.close()
        folder, notes = export_study(study, s.out_dir, figures=s.figures)
        if exp.confirm is not None and not interrupted:  # the study's confirm: block; it logs the W&B summary run
            notes += confirm_and_export(study, exp.confirm, s.out_dir, workers, s.figures)
        else:
            log_study_run(study, folder)
    return SweepOutcome(folder, interrupted, notes)
