"""How the sweep's storage traffic scales with workers: ``python -m picollm.bench --workers-scale``.

For W = 1, 2, 4, 8 worker processes on one PostgreSQL study it runs near-empty trials (``--dry-run``: no training,
but every storage call a real trial makes) through the harness's own worker loop, then plain Optuna's
``study.optimize`` with a trivial objective over the same search space on the same database, with and without the
same pruning reports. Each process is started and imports everything before a shared barrier (Optuna's storage
imports what it needs on first use: :func:`~picollm.storage.import_rdb_modules`), so imports are not counted.
Opening the study (the harness's ``open_study``, Optuna's ``load_study``) is timed apart: it is paid once per
worker, not per trial. Per trial it prints the worker-seconds (all workers' time after opening the study, to their
exit, over the finished trials), trials/s, the workers' CPU time and their round trips to the server.

A round runs the three kinds one after another; the ratio of the harness over plain Optuna is taken within each
round, where both met the same machine, and the summary is the median of ``ROUNDS`` rounds with their range: on a
shared machine a slower minute moves both kinds of a round, and a best-of per kind could pair one kind's lucky round
with the other's ordinary one.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from picollm.errors import ConfigError, PicoError
from picollm.storage import import_rdb_modules, mask_url

WORKERS = (1, 2, 4, 8)
QUICK_WORKERS = (1, 2)
TRIALS_PER_WORKER = 24
QUICK_TRIALS_PER_WORKER = 6
SEARCH = {  # the shape of experiments/quick.yaml's space
    "optim.name": {"type": "categorical", "choices": ["sgd", "adam", "adamw", "rmsprop"]},
    "optim.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True},
    "model.block_size": {"type": "categorical", "choices": [16, 32, 64]},
    "model.k": {"type": "int", "low": 1, "high": 5},
}
REPORTS = 6  # validation losses per trial, as in quick.yaml
ROUNDS = 5


def _experiment_file(folder: Path, name: str, n_trials: int) -> Path:
    """A tiny experiment that is never trained: only its search space and study settings matter."""
    exp = {
        "data": {"tinystories": None, "synthetic": 100, "tokenizer": "bytes", "cache_dir": str(folder / "cache")},
        "model": {"type": "kgram", "block_size": 32, "k": 3},
        "tracking": {"wandb": "disabled", "out_dir": str(folder / "runs"), "save_weights": False},
        "search": SEARCH,
        "study": {
            "name": name,
            "n_trials": n_trials,
            "budget_tokens": 60_000,
            "reports": REPORTS,
            "sampler": "random",
            "pruner": "median",
            "out_dir": str(folder / "studies"),
        },
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


def _count_round_trips() -> list[int]:
    """Count this process's exchanges with PostgreSQL from now on, on every connection (the heartbeat thread's and
    the lock's included): each call of psycopg's ``Connection.wait`` whose operation waits for the socket at least
    once. Switching autocommit or a rollback outside a transaction finish without it: they never reach the server."""
    import psycopg

    count, real_wait = [0], psycopg.Connection.wait

    def counted(gen: Any) -> Any:
        try:
            wanted = next(gen)
        except StopIteration as done:
            return done.value
        count[0] += 1
        while True:
            try:
                wanted = gen.send((yield wanted))
            except StopIteration as done:
                return done.value

    def wait(self: Any, gen: Any, *args: Any, **kwargs: Any) -> Any:
        return real_wait(self, counted(gen), *args, **kwargs)

    psycopg.Connection.wait = wait
    return count


def _timed(open_study: Any, work: Any, barrier: Any, results: Any) -> None:
    """From the barrier: open the study, then work on it; put (open seconds, then the work's elapsed and CPU seconds
    and round trips)."""
    trips = _count_round_trips()
    barrier.wait()
    start = time.perf_counter()
    study = open_study()
    opened, cpu, trips_before = time.perf_counter(), time.process_time(), trips[0]
    work(study)
    results.put((opened - start, time.perf_counter() - opened, time.process_time() - cpu, trips[0] - trips_before))


def _harness_worker(path: str, storage: str, barrier: Any, results: Any) -> None:
    """One harness worker (the loop ``sweep.py run`` runs)."""
    from picollm.sweeps.settings import load_experiment
    from picollm.sweeps.studies import open_study
    from picollm.sweeps.workers import WorkerSpec, run_worker

    spec = WorkerSpec(load_experiment(path, []), storage, threads=1, verbose=False, dry_run=True)
    import picollm.train  # noqa: F401  (the objective imports it; not part of the storage's cost)

    import_rdb_modules()
    _timed(
        lambda: open_study(spec.exp, storage, create=False),
        lambda study: run_worker(spec, study=study),
        barrier,
        results,
    )


def _optuna_worker(name: str, storage: str, n_trials: int, reports: int, barrier: Any, results: Any) -> None:
    """Plain Optuna: ``study.optimize`` over the same space with a trivial objective, which may also
    report ``reports`` values to a median pruner (the pruning any pruned sweep pays for)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import_rdb_modules()

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_categorical("optim.name", SEARCH["optim.name"]["choices"])
        lr = trial.suggest_float("optim.lr", 1.0e-4, 3.0e-2, log=True)
        trial.suggest_categorical("model.block_size", SEARCH["model.block_size"]["choices"])
        value = lr + trial.suggest_int("model.k", 1, 5)
        for step in range(1, reports + 1):
            trial.report(value + 1.0 / step, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    def load() -> optuna.Study:
        sampler, pruner = optuna.samplers.RandomSampler(), optuna.pruners.MedianPruner()
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)

    _timed(load, lambda study: study.optimize(objective, n_trials=n_trials), barrier, results)


def _run(target: Any, args_of: Any, workers: int) -> list[tuple[float, float, float, int]]:
    """Start ``workers`` processes, release them together, return each one's :func:`_timed` figures."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_of, barrier, results)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    timings: list[tuple[float, float, float, int]] = []
    while len(timings) < workers:  # a worker that dies puts nothing: stop instead of waiting for it
        try:
            timings.append(results.get(timeout=1.0))
        except queue.Empty:
            codes = [proc.exitcode for proc in procs if proc.exitcode not in (None, 0)]
            if codes:
                for proc in procs:
                    proc.kill()
                raise PicoError(f"a benchmark worker exited with code {codes[0]} (its error is above)") from None
    for proc in procs:
        proc.join()
    return timings


def _finished(name: str, storage: str) -> int:
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    return sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials(deepcopy=False))


def _figures(timings: list[tuple[float, float, float, int]], trials: int) -> dict[str, float]:
    """Per finished trial: worker-seconds after opening, the workers' own CPU time (their processes', heartbeat threads
    included: with as many workers as cores, CPU rather than waiting on the server sets the pace) and round trips; and
    the opening, per worker."""
    opening, elapsed, cpu, trips = zip(*timings, strict=True)
    return {
        "ms_per_trial": 1000 * sum(elapsed) / trials,
        "trials_per_s": trials / max(elapsed),
        "cpu_ms_per_trial": 1000 * sum(cpu) / trials,
        "round_trips_per_trial": sum(trips) / trials,
        "open_ms": 1000 * statistics.median(opening),
        "trials": trials,
    }


def measure_once(storage: str, workers: int, trials_per_worker: int, folder: Path, first: int = 0) -> dict[str, Any]:
    """One round: the harness, plain Optuna, and plain Optuna with pruning reports, on fresh studies, starting with
    kind number ``first``. Each kind leaves dead rows behind (deleted studies), which slow the kinds after it until
    the server vacuums, so :func:`measure` starts each round with the next kind."""
    import optuna

    from picollm.sweeps.settings import load_experiment
    from picollm.sweeps.studies import enqueue_baseline, open_study

    n_trials, tag = workers * trials_per_worker, uuid.uuid4().hex[:8]
    names = {kind: f"scale-{kind}-{workers}-{tag}" for kind in ("harness", "optuna", "optuna_reports")}
    path = _experiment_file(folder, names["harness"], n_trials)
    exp = load_experiment(str(path), [])
    enqueue_baseline(open_study(exp, storage, create=True), exp)
    runs = {
        "harness": (_harness_worker, (str(path), storage)),
        "optuna": (_optuna_worker, (names["optuna"], storage, trials_per_worker, 0)),
        "optuna_reports": (_optuna_worker, (names["optuna_reports"], storage, trials_per_worker, REPORTS)),
    }
    row: dict[str, Any] = {"workers": workers, "tag": tag, "order": [*runs][first:] + [*runs][:first]}
    try:
        for kind in row["order"]:
            target, args = runs[kind]
            if kind != "harness":
                optuna.create_study(study_name=names[kind], storage=storage)
            row[kind] = _figures(_run(target, args, workers), _finished(names[kind], storage))
    finally:
        for name in optuna.get_all_study_names(storage):
            if name in names.values():
                optuna.delete_study(study_name=name, storage=storage)
    return row


def measure(storage: str, workers: int, trials_per_worker: int, folder: Path, rounds: int = 1) -> dict[str, Any]:
    """One row: each kind's figures as the median over rounds, and the harness's ratios taken within each round
    (median, lowest, highest)."""
    row: dict[str, Any] = {"workers": workers, "rounds": []}
    for i in range(rounds):
        row["rounds"].append(measure_once(storage, workers, trials_per_worker, folder, first=i % len(KINDS)))
    for kind in KINDS:
        row[kind] = {key: statistics.median(r[kind][key] for r in row["rounds"]) for key in row["rounds"][0][kind]}
    for name, over in (("ratio", "optuna"), ("ratio_reports", "optuna_reports")):
        ratios = [r["harness"]["ms_per_trial"] / r[over]["ms_per_trial"] for r in row["rounds"]]
        row[name], row[f"{name}_range"] = statistics.median(ratios), (min(ratios), max(ratios))
    return row


KINDS = {"harness": "harness", "optuna": "plain optuna", "optuna_reports": f"optuna+{REPORTS} reports"}


def header(storage: str, rounds: int) -> str:
    titles = " | ".join(f"{title:^17}" for title in KINDS.values())
    columns = " | ".join([f"{'ms/trial':>8} {'trials/s':>8}"] * len(KINDS))
    return (
        f"workers scale on {mask_url(storage)}: near-empty trials (--dry-run), {REPORTS} reports each; "
        f"{os.cpu_count()} CPU(s) here; median of {rounds} round(s)\n{'':14} | {titles} | harness over plain\n"
        f"{'workers':>7} {'trials':>6} | {columns} | median (range)    | +reps | CPU ms/trial h/o/o+r | "
        "trips h/o/o+r | open ms h/o"
    )


def row_line(r: dict[str, Any]) -> str:
    cells = " | ".join(f"{r[k]['ms_per_trial']:8.1f} {r[k]['trials_per_s']:8.1f}" for k in KINDS)
    low, high = r["ratio_range"]
    ratios = f"{r['ratio']:4.2f}x ({low:4.2f}-{high:4.2f}) | {r['ratio_reports']:4.2f}x"
    cpu = " ".join(f"{r[k]['cpu_ms_per_trial']:5.1f}" for k in KINDS)
    trips = " ".join(f"{r[k]['round_trips_per_trial']:3.0f}" for k in KINDS)
    opening = f"{r['harness']['open_ms']:4.0f} {r['optuna']['open_ms']:4.0f}"
    return f"{r['workers']:7d} {r['harness']['trials']:6d} | {cells} | {ratios} | {cpu:20} | {trips:13} | {opening}"


def autovacuum_on(storage: str) -> bool:
    """Whether the server vacuums by itself (PostgreSQL's default; a benchmark on a server that does not drifts)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(storage)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SHOW autovacuum").scalar() == "on"
    finally:
        engine.dispose()


def workers_scale(quick: bool, out: str) -> int:
    """The ``--workers-scale`` benchmark: rows for W = 1, 2, 4, 8 (1, 2 with --quick), printed and saved."""
    storage = os.environ.get("PICOLLM_STORAGE", "")
    if not storage.startswith(("postgresql", "postgres")):
        raise ConfigError("--workers-scale needs a PostgreSQL study database: set PICOLLM_STORAGE=postgresql://...")
    per_worker, rounds = (QUICK_TRIALS_PER_WORKER, 1) if quick else (TRIALS_PER_WORKER, ROUNDS)
    print(header(storage, rounds), flush=True)
    if not autovacuum_on(storage):
        print("note: autovacuum is off on this server: dead rows pile up as the rounds go and every figure drifts up")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in QUICK_WORKERS if quick else WORKERS:  # a row as soon as it is measured: W=8 takes a while
            rows.append(measure(storage, workers, per_worker, Path(tmp), rounds))
            print(row_line(rows[-1]), flush=True)
    print("ms/trial: worker-seconds per finished trial (all workers' time after opening the study, to their exit, over")
    print("the trials), each kind's median over the rounds; harness over plain: the ratio within each round, median")
    print(
        f"and range; +reps: the same over plain Optuna with the same {REPORTS} reports; CPU: the workers' own CPU time"
    )
    print(
        "per trial, harness / plain / +reports; trips: their round trips to PostgreSQL per trial (statements, commits"
    )
    print("and rollbacks, counted in psycopg); open: opening the study, per worker (open_study / load_study)")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"storage": mask_url(storage), "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0
