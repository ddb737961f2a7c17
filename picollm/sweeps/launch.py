"""Launching a sweep's workers as a Slurm job array (or local processes) through submitit.

The workers coordinate only through the storage, so it must be a server every node reaches (PostgreSQL). The storage URL
travels only in the environment (``PICOLLM_STORAGE``), never in a pickle, job name, script or log. A preempted or
timed-out job leaves its trial RUNNING; the heartbeat stops and the study fails and re-queues it, so it still ends with
exactly ``n_trials`` finished trials.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import submitit

from picollm.checks import above, at_least
from picollm.config import apply_overrides, from_block, load_raw
from picollm.errors import EXIT_INTERRUPTED, ConfigError, PicoError, StorageError, mask_url
from picollm.storage_url import STORAGE_ENV
from picollm.sweeps.experiment import Experiment
from picollm.sweeps.export import confirm_and_export, export_study, exported, log_study_run
from picollm.sweeps.report import Progress, report_lines
from picollm.sweeps.study import CappedStudy, finished, open_study, with_seed
from picollm.sweeps.workers import WorkerSpec, prepare, run_worker

# Storages a job array cannot share, and why: launch says so in one line and names the fix.
UNSHARED_STORAGES = {
    "sqlite": "an SQLite file is not for several machines (its locks do not hold over NFS)",
    "journal": "journal files are unsafe on NFS and are not for several machines",
}


@dataclass
class LauncherSettings:
    """The experiment file's ``launcher:`` block: where and how the workers run."""

    name: str = "slurm"  # slurm | local (submitit's local executor: tests, a laptop)
    partition: str | None = None
    timeout_min: int = above(0, 60)  # per job; submitit requeues on a time limit and the sweep goes on
    cpus_per_task: int | None = above(0, None)
    gpus_per_node: int = at_least(0, 0)
    tasks_per_node: int = above(0, 1)  # each task is one worker; with G GPUs and G tasks, one GPU each
    mem_gb: float | None = above(0, None)
    array_parallelism: int | None = above(0, None)  # how many array jobs run at once (default: all)
    sbatch: dict[str, Any] = field(default_factory=dict)  # free extras: {account: x, qos: y}
    setup: list[str] = field(default_factory=list)  # shell lines run before the job (module load ...)


def parse_launcher(raw: Any) -> LauncherSettings:
    """Check the ``launcher:`` block: unknown keys, wrong types and impossible values are one line."""
    if not isinstance(raw, dict | None):
        raise ConfigError(f"launcher: expected a mapping of keys, got {raw!r}")
    raw = dict(raw or {})
    if raw.get("sbatch") is None:
        raw.pop("sbatch", None)
    settings = from_block(LauncherSettings, raw, "launcher")
    if settings.name not in EXECUTORS:
        raise ConfigError(f"launcher.name: unknown launcher {settings.name!r} (choose from {', '.join(EXECUTORS)})")
    return settings


def load_launcher(path: str, overrides: list[str]) -> LauncherSettings:
    """The ``launcher:`` block of an experiment file, with ``--set launcher.KEY=VALUE`` applied."""
    mine = [item for item in overrides if item.startswith("launcher.")]
    return parse_launcher(apply_overrides(load_raw(path), mine).get("launcher"))


def check_shared_storage(url: str) -> None:
    """Refuse storages that only one machine can use safely; say why and what to use instead."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in UNSHARED_STORAGES:
        raise StorageError(
            f"launch needs a database server every job can reach, not {mask_url(url)}: "
            f"{UNSHARED_STORAGES[scheme]}; use a PostgreSQL URL, e.g. "
            f"{STORAGE_ENV}=postgresql://user:password@db-host/sweeps"
        )


# -- Inside a job: device, signals, the worker ------------------------------------------------


def no_gpu_here(local_rank: int, gpus_per_node: int) -> bool:
    """GPUs were asked for but this node has none: say so in one line; the task trains on the CPU."""
    if gpus_per_node == 0:
        return False
    import torch

    if torch.cuda.is_available():
        return False
    print(f"launcher: no CUDA device on this node, task {local_rank} trains on the CPU", file=sys.stderr)
    return True


def job_storage() -> str:
    """Inside a job: the storage URL, which reaches jobs through the environment only (never their pickles)."""
    storage = os.environ.get(STORAGE_ENV)
    if not storage:
        raise PicoError(f"{STORAGE_ENV} is not set in the job's environment (sbatch --export must pass it)")
    return storage


def _leave_trial_to_heartbeat(signum: int, _frame: Any) -> None:
    """SIGTERM (scancel, preemption): exit without marking the trial, so the study retries it as is."""
    print(f"launcher: {signal.Signals(signum).name}: exiting; the running trial will be retried", file=sys.stderr)
    raise SystemExit(128 + signum)


class SweepJob(submitit.helpers.Checkpointable):
    """One array job: the same worker as ``sweep.py run``; pickled by submitit, so it never holds the storage URL."""

    def __init__(
        self,
        exp: Experiment,
        threads: int | None,
        gpus_per_node: int,
        timeout_s: float | None = None,
    ) -> None:
        self.exp, self.threads, self.gpus_per_node = exp, threads, gpus_per_node
        self.timeout_s = timeout_s

    def __call__(self) -> None:
        signal.signal(signal.SIGTERM, _leave_trial_to_heartbeat)
        run_worker(self.worker_spec(job_storage(), submitit.JobEnvironment().local_rank))

    def worker_spec(self, storage: str, local_rank: int) -> WorkerSpec:
        """This task's worker: its own sampler seed and its local rank, which picks ``cuda:<rank>``."""
        exp = with_seed(self.exp, f"{socket.gethostname()}:{os.getpid()}")  # a requeued job draws anew
        if no_gpu_here(local_rank, self.gpus_per_node):
            exp = replace(exp, base=exp.base.with_values({"train.device": "cpu"}))
        return WorkerSpec(exp, storage, self.timeout_s, self.threads, rank=local_rank)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Slurm's time limit or preemption is near: requeue this job; the study keeps all its state."""
        print("launcher: requeued; the running trial will be retried with the same parameters", file=sys.stderr)
        return super().checkpoint(*args, **kwargs)


class ConfirmJob:
    """The confirmation as one job of the same launcher, so it runs where the trials ran; returns the summary lines."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp

    def __call__(self) -> list[str]:
        study = open_study(self.exp, job_storage(), create=False)
        s = self.exp.study
        return confirm_and_export(study, self.exp.confirm, s.out_dir, figures=s.figures)


# -- Submitting: executors by name, what to print, waiting ------------------------------------


@dataclass
class Executor:
    """What differs between launchers: how to see whether jobs still run and how to stop them."""

    alive: Callable[[list[Any]], bool]
    watch: str  # command templates over {ids} (job ids) and {array} (the array's id)
    stop: str
    poll_s: float = 2.0  # between looks at the jobs and the study: squeue is a query to the cluster


def _slurm_alive(jobs: list[Any]) -> bool:
    """squeue, not sacct: many clusters (and this project's test Slurm) run without accounting."""
    array = jobs[0].job_id.split("_")[0]
    out = subprocess.run(["squeue", "-h", "-j", array, "-o", "%i"], capture_output=True, text=True, check=False)
    return bool(out.stdout.strip())


EXECUTORS: dict[str, Executor] = {
    "slurm": Executor(_slurm_alive, "squeue -j {array}", "scancel {array}"),
    "local": Executor(
        lambda jobs: not all(job.done() for job in jobs), "ps -o pid,etime,args -p {ids}", "kill {ids}", poll_s=0.5
    ),
}


def executor_parameters(settings: LauncherSettings, study: str, workers: int) -> dict[str, Any]:
    """submitit's parameters; ``slurm_*`` ones are dropped by the local executor."""
    params: dict[str, Any] = {
        "name": f"picollm-{study}",
        "timeout_min": settings.timeout_min,
        "tasks_per_node": settings.tasks_per_node,
        "slurm_array_parallelism": settings.array_parallelism or workers,
        "slurm_additional_parameters": dict(settings.sbatch),
    }
    optional = {"cpus_per_task": settings.cpus_per_task, "mem_gb": settings.mem_gb}
    optional |= {"gpus_per_node": settings.gpus_per_node or None}  # no --gpus-per-node=0 for CPU partitions
    optional |= {"slurm_partition": settings.partition}
    optional |= {"slurm_setup": settings.setup or None, "local_setup": settings.setup or None}
    params.update({key: value for key, value in optional.items() if value is not None})
    return params


def make_executor(settings: LauncherSettings, folder: Path, study: str, workers: int) -> Any:
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=settings.name)
        executor.update_parameters(**executor_parameters(settings, study, workers))
    except RuntimeError as exc:  # no srun/sbatch here
        raise ConfigError(
            f"launcher.name={settings.name}: {exc} (on a machine without Slurm use --set launcher.name=local)"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"launcher: {exc}") from None
    return executor


def _threads(settings: LauncherSettings, workers: int) -> int | None:
    """Torch threads per worker: the CPUs each task asked for, or this machine's cores shared out."""
    if settings.cpus_per_task:
        return settings.cpus_per_task
    if settings.name == "local":
        return max(1, (os.cpu_count() or 1) // (workers * settings.tasks_per_node))
    return None


def submit(executor: Any, exp: Experiment, settings: LauncherSettings, args: Any) -> list[Any]:
    """Submit ``--workers`` array jobs; the URL reaches them through the environment only."""
    os.environ[STORAGE_ENV] = args.storage  # sbatch exports the submitting environment; local jobs inherit it
    threads = _threads(settings, args.workers)
    job = SweepJob(exp, threads, settings.gpus_per_node, timeout_s=args.timeout)
    try:
        return executor.submit_array([job] * args.workers)
    except subprocess.CalledProcessError as exc:
        raise PicoError(f"sbatch refused the job array: {mask_url(str(exc.stderr or exc))[:300]}") from None


def jobs_folder(exp: Experiment) -> Path:
    return Path(exp.study.out_dir) / exp.study.name / "jobs"


def describe(jobs: list[Any], settings: LauncherSettings, exp: Experiment, command: list[str]) -> list[str]:
    """Job ids, the log folder, and the commands to watch and stop the sweep."""
    ids = [str(job.job_id) for job in jobs]
    names = {"ids": " ".join(ids), "array": ids[0].split("_")[0]}
    executor = EXECUTORS[settings.name]
    workers = len(jobs) * settings.tasks_per_node
    where = f", partition {settings.partition}" if settings.partition else ""
    return [
        f"submitted {len(jobs)} job(s) x {settings.tasks_per_node} task(s) = {workers} worker(s) "
        f"({settings.name}{where}): {' '.join(ids)}",
        f"logs: {jobs_folder(exp)}/",
        f"storage: the jobs read {STORAGE_ENV} ({mask_url(os.environ[STORAGE_ENV])}); set it the same to follow:",
        f"watch: {' '.join(['python', 'sweep.py', 'status', *command])}   or   {executor.watch.format(**names)}",
        f"stop: {executor.stop.format(**names)}   (running trials are retried when the sweep resumes)",
        f"results: {' '.join(['python', 'sweep.py', 'export', *command])}   (or launch with --wait)",
    ]


def wait(jobs: list[Any], settings: LauncherSettings, study: CappedStudy) -> None:
    """One bar over the study's finished trials (or its token budget) until every job has left the queue."""
    launcher = EXECUTORS[settings.name]
    progress = Progress(study)
    try:
        while launcher.alive(jobs):
            time.sleep(launcher.poll_s)
            progress.poll(study)
        progress.poll(study)
    finally:
        progress.close()


def job_errors(jobs: list[Any]) -> list[str]:
    """The last line of each job's stderr that ended in an error, so a failed job is not silent."""
    lines = []
    for job in jobs:
        path = Path(job.paths.stderr)
        text = path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
        errors = [line for line in text if line.startswith(("error:", "Traceback", "submitit ERROR"))]
        if errors:
            lines.append(f"job {job.job_id}: {mask_url(text[-1])[:300]} (log: {path})")
    return lines


def launch(exp: Experiment, settings: LauncherSettings, args: Any) -> tuple[list[Any], Any]:
    """Check the storage and the launcher, create the study (trial 0 = the base config), submit, say how to follow."""
    check_shared_storage(args.storage)
    executor = make_executor(settings, jobs_folder(exp), exp.study.name, args.workers)  # before any study exists
    exp, study = prepare(exp, args.storage, devices_here=False)  # as `sweep.py run`; the GPUs are the jobs' own
    print(
        f"study {exp.study.name!r} in {mask_url(args.storage)}: {finished(study)}/{exp.study.n_trials or '-'} trials "
        "finished",
        flush=True,
    )
    jobs = submit(executor, exp, settings, args)
    print("\n".join(describe(jobs, settings, exp, follow_command(args))), flush=True)
    return jobs, study


def confirm_stage(exp: Experiment, settings: LauncherSettings) -> list[str]:
    """Submit the confirmation as one job and wait for its lines; a job that ends without a result is one line."""
    executor = make_executor(settings, jobs_folder(exp) / "confirm", f"{exp.study.name}-confirm", 1)
    executor.update_parameters(tasks_per_node=1)  # one process trains the runs; it shares its cores or GPUs out
    job = executor.submit(ConfirmJob(exp))
    launcher = EXECUTORS[settings.name]
    stop = launcher.stop.format(ids=job.job_id, array=str(job.job_id).split("_")[0])
    print(f"confirmation: job {job.job_id} re-trains the top configurations (log: {job.paths.stderr})", flush=True)
    try:
        while launcher.alive([job]):
            time.sleep(launcher.poll_s)
    except KeyboardInterrupt:
        print(f"stopped waiting; the confirmation job goes on (stop: {stop})", file=sys.stderr)
        raise
    if not job.paths.result_pickle.exists():
        return [f"confirmation job {job.job_id} ended without a result: see {job.paths.stderr}"]
    try:
        return list(job.result())
    except submitit.core.utils.UncompletedJobError as exc:
        return [f"confirmation job {job.job_id} failed: {mask_url(str(exc).strip().splitlines()[-1])[:300]}"]


def follow_command(args: Any) -> list[str]:
    """The arguments that reopen this study (``sweep.py status``/``export``), launcher keys left out."""
    command = ["--config", args.config]
    if args.study_name:
        command += ["--study-name", args.study_name]
    for item in args.overrides:
        if not item.startswith("launcher."):
            command += ["--set", shlex.quote(item)]
    return command


def launch_command(exp: Experiment, args: Any) -> int:
    """``sweep.py launch``: submit, print how to follow; with ``--wait`` follow to the end and export."""
    settings = load_launcher(args.config, args.overrides)
    jobs, study = launch(exp, settings, args)
    if not args.wait:
        return 0
    try:
        wait(jobs, settings, study)
    except KeyboardInterrupt:
        print("stopped waiting; the jobs go on (see 'stop:' above)", file=sys.stderr)
        return EXIT_INTERRUPTED
    folder, notes = export_study(study, exp.study.out_dir, figures=exp.study.figures)
    if exp.confirm is not None and study.exhausted():  # the job logs the W&B summary run
        try:
            notes += confirm_stage(exp, settings)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        # best.yaml: the confirmed winner, written by the job
        folder, _ = export_study(study, exp.study.out_dir, figures=exp.study.figures)
    else:
        log_study_run(study, folder)
    errors = job_errors(jobs)
    print("\n".join([*report_lines(study), *notes, *errors, f"results: {folder}/ ({exported(exp.study.figures)})"]))
    if not study.exhausted():
        done = f"{finished(study)}/{exp.study.n_trials or 'the budget'}"
        raise PicoError(f"the jobs ended with {done} trials finished: see {jobs_folder(exp)}/, then launch again")
    return 0
