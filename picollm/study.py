"""Sweeps: an Optuna study whose trials are trainer runs.

One trial is one call of :func:`picollm.train.train` — the same function the CLI uses — with the
trial's values set on the experiment's base config, a budget in training tokens (so block sizes
compete at equal tokens) and a pruning hook that reports every periodic validation loss to Optuna.

A study is resumable by construction: ``n_trials`` is the study's total of finished (complete or
pruned) trials, so running the same command again continues until that total is reached. Several
workers, on one machine or many, run the same loop against one storage; each claims a slot before
it trains, so the total is never overshot.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from picollm.config import apply_overrides, config_from_dict, load_raw, parse_override, split_experiment
from picollm.errors import ConfigError, PicoError
from picollm.search import Param, apply_params, baseline_params, parse_space, sample
from picollm.storage import mask_url, open_storage

METRICS = ("best_val_loss", "final_val_loss")
EPOCHS_FOR_TOKEN_BUDGET = 1000  # with a token budget, epochs only bound it from above


# ---------------------------------------------------------------------------------------------
# Samplers and pruners by name.
# ---------------------------------------------------------------------------------------------


def _grid(space: list[Param]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for p in space:
        if p.type == "categorical":
            grid[p.key] = list(p.choices)
        elif p.step is not None:
            n = round((p.high - p.low) / p.step) + 1
            cast = int if p.type == "int" else float
            grid[p.key] = [cast(p.low + i * p.step) for i in range(n)]
        else:
            raise ConfigError(f"study.sampler=grid needs choices or a step for search.{p.key}")
    return grid


def _sampler(name: str, space: list[Param], seed: int, options: dict[str, Any]) -> Any:
    import optuna

    samplers: dict[str, Callable[[], Any]] = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, **options),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed, **options),
        "grid": lambda: optuna.samplers.GridSampler(_grid(space), seed=seed, **options),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed, **options),
        "qmc": lambda: optuna.samplers.QMCSampler(seed=seed, **options),
    }
    return _construct("sampler", name, samplers, options)


def _pruner(name: str, options: dict[str, Any]) -> Any:
    import optuna

    def patient() -> Any:
        opts = dict(options)
        patience = opts.pop("patience", 2)
        min_delta = opts.pop("min_delta", 0.0)
        return optuna.pruners.PatientPruner(optuna.pruners.MedianPruner(**opts), patience=patience, min_delta=min_delta)

    pruners: dict[str, Callable[[], Any]] = {
        "median": lambda: optuna.pruners.MedianPruner(**options),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(**options),
        "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(**options),
        "patient": patient,
        "none": lambda: optuna.pruners.NopPruner(**options),
    }
    return _construct("pruner", name, pruners, options)


def _construct(kind: str, name: str, table: dict[str, Callable[[], Any]], options: dict[str, Any]) -> Any:
    if name not in table:
        raise ConfigError(f"study.{kind}: unknown {kind} {name!r} (choose from {', '.join(table)})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning for some options
            return table[name]()
    except TypeError as exc:
        raise ConfigError(f"study.{kind}: bad option for {name}: {exc}") from None
    except ImportError as exc:
        raise ConfigError(f"study.{kind}: {name} needs a package that is not installed ({exc})") from None
    except ValueError as exc:
        raise ConfigError(f"study.{kind}: {name}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# The experiment: base config + search space + study settings.
# ---------------------------------------------------------------------------------------------


@dataclass
class StudySettings:
    name: str
    metric: str = "best_val_loss"
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    budget_tokens: int | None = None  # training tokens per trial
    reports: int = 8  # validation losses reported to the pruner per trial
    n_trials: int = 20
    seed: int = 0
    heartbeat_interval: int = 10
    grace_period: int = 30
    max_retry: int = 2
    out_dir: str = "results/studies"  # exports land in <out_dir>/<name>/


def _named(raw: Any, key: str) -> tuple[str, dict[str, Any]]:
    """``sampler: tpe`` or ``sampler: {name: tpe, n_startup_trials: 4}``."""
    if isinstance(raw, str):
        return raw, {}
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        options = dict(raw)
        return options.pop("name"), options
    raise ConfigError(f"study.{key}: expected a name or {{name: ..., option: value}}, got {raw!r}")


def parse_study(raw: Any, default_name: str) -> StudySettings:
    raw = dict(raw or {})
    if not isinstance(raw, dict):
        raise ConfigError("study: expected a mapping")
    s = StudySettings(name=str(raw.pop("name", default_name)))
    if "sampler" in raw:
        s.sampler, s.sampler_options = _named(raw.pop("sampler"), "sampler")
    if "pruner" in raw:
        s.pruner, s.pruner_options = _named(raw.pop("pruner"), "pruner")
    ints = ("budget_tokens", "reports", "n_trials", "seed", "heartbeat_interval", "grace_period", "max_retry")
    for key in list(raw):
        if key in ("metric", "out_dir"):
            setattr(s, key, str(raw.pop(key)))
        elif key in ints:
            value = raw.pop(key)
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
                raise ConfigError(f"study.{key}: expected a whole number, got {value!r}")
            setattr(s, key, None if value is None else int(value))
        else:
            raise ConfigError(f"unknown key study.{key}")
    if s.metric not in METRICS:
        raise ConfigError(f"study.metric: unknown value {s.metric!r} (choose from {', '.join(METRICS)})")
    if not s.name or not all(c.isalnum() or c in "-_." for c in s.name):
        raise ConfigError(f"study.name: use letters, digits, '-', '_' and '.', got {s.name!r}")
    for key in ("reports", "n_trials", "heartbeat_interval", "grace_period", "budget_tokens"):
        value = getattr(s, key)
        if value is not None and value < 1:
            raise ConfigError(f"study.{key} must be >= 1, got {value}")
    if s.grace_period <= s.heartbeat_interval:
        raise ConfigError("study.grace_period must be longer than study.heartbeat_interval")
    return s


@dataclass
class Experiment:
    """Everything a worker needs; plain data, so it pickles into worker processes."""

    base: dict[str, Any]  # the resolved trainer config every trial starts from
    search: dict[str, Any]  # the raw search block (parsed in each process)
    study: StudySettings
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # recorded with every trial (e.g. an offline note)

    @property
    def space(self) -> list[Param]:
        return parse_space(self.search, self.base)


def trial_base(trainer: dict[str, Any], s: StudySettings) -> dict[str, Any]:
    """The sweep's own settings on top of the trainer config: token budget, report cadence, grouping."""
    raw = copy.deepcopy(trainer)
    train = raw.setdefault("train", {})
    if s.budget_tokens:
        train["max_tokens"] = s.budget_tokens
        train["epochs"] = EPOCHS_FOR_TOKEN_BUDGET
        train["eval_every_tokens"] = max(1, s.budget_tokens // s.reports)
    train["progress"] = False
    tracking = raw.setdefault("tracking", {})
    tracking.update(group=s.name, job_type="trial")
    return config_from_dict(raw).to_dict()


def override_search(search: dict[str, Any], item: str) -> dict[str, Any]:
    """``search.optim.lr.low=1e-4`` (one field) or ``search.optim.lr={...}`` (a whole entry).

    Search keys are dotted config keys themselves, so the longest existing key wins.
    """
    path, value = parse_override(item)
    dotted = ".".join(path[1:])
    out = copy.deepcopy(search)
    if dotted in out or "." not in dotted:
        out[dotted] = value
        return out
    key, _, name = dotted.rpartition(".")
    if not isinstance(out.get(key), dict):
        raise ConfigError(f"--set {item}: no search entry {key!r} to change (known: {', '.join(out)})")
    out[key][name] = value
    return out


def load_experiment(
    path: str | None, overrides: list[str], study_name: str | None = None, n_trials: int | None = None
) -> Experiment:
    """Read an experiment file; ``--set`` may reach any section (``study.sampler=random`` too)."""
    if path is None:
        raise ConfigError("a sweep needs --config experiments/<name>.yaml")
    raw = load_raw(path)
    search_overrides = [item for item in overrides if item.startswith("search.")]
    raw = apply_overrides(raw, [item for item in overrides if item not in search_overrides])
    for item in search_overrides:
        raw["search"] = override_search(raw.get("search") or {}, item)
    trainer, sweep = split_experiment(raw)
    if "search" not in sweep:
        raise ConfigError(f"{path}: no 'search:' block, nothing to sweep")
    settings = parse_study(sweep.get("study"), Path(path).stem)
    if study_name:
        settings.name = study_name
    if n_trials is not None:
        settings.n_trials = n_trials
    base = trial_base(trainer, settings)
    baseline_params(parse_space(sweep["search"], base), base)  # refuse a bad space now, before any trial
    _sampler(settings.sampler, parse_space(sweep["search"], base), settings.seed, settings.sampler_options)
    _pruner(settings.pruner, settings.pruner_options)
    return Experiment(base, sweep["search"], settings, str(path))


# ---------------------------------------------------------------------------------------------
# Opening a study.
# ---------------------------------------------------------------------------------------------


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our one line per trial says what failed and why
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_study(exp: Experiment, storage_url: str, create: bool) -> Any:
    """Create or load the study; refuse a stored study whose search space differs."""
    import optuna

    quiet_optuna()
    s = exp.study
    storage = open_storage(storage_url, s.heartbeat_interval, s.grace_period, s.max_retry)
    space = exp.space
    kwargs = dict(
        study_name=s.name,
        storage=storage,
        sampler=_sampler(s.sampler, space, s.seed, s.sampler_options),
        pruner=_pruner(s.pruner, s.pruner_options),
    )
    try:
        if create:
            study = optuna.create_study(direction="minimize", load_if_exists=True, **kwargs)
        else:
            study = optuna.load_study(**kwargs)
    except KeyError:
        raise PicoError(f"no study named {s.name!r} in {mask_url(storage_url)}") from None
    except Exception as exc:
        raise PicoError(
            f"cannot open study {s.name!r} in {mask_url(storage_url)}: {mask_url(str(exc))[:200]}"
        ) from None
    described = [p.describe() | {"key": p.key} for p in space]
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", described)
        study.set_user_attr("base", exp.base)
        study.set_user_attr("settings", asdict(s))
    elif stored != described:
        raise PicoError(
            f"study {s.name!r} in {mask_url(storage_url)} was created with another search space; "
            "use --study-name to start a new study (or restore the old space to resume it)"
        )
    return study


def enqueue_baseline(study: Any, exp: Experiment) -> None:
    """Trial 0 is the base config itself, so every study shows its gain over the default."""
    if not study.trials:
        study.enqueue_trial(baseline_params(exp.space, exp.base), user_attrs={"baseline": True}, skip_if_exists=True)


# ---------------------------------------------------------------------------------------------
# The worker loop.
# ---------------------------------------------------------------------------------------------


class OverCap(Exception):
    """Another worker took the last slot between this worker's check and its trial start."""


class AbortSweep(PicoError):
    """A trial hit a problem every trial would hit (bad data path, missing files): stop the sweep."""


def counts(study: Any) -> dict[str, int]:
    from optuna.trial import TrialState

    out = {state.name: 0 for state in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] += 1
    return out


def finished(study: Any) -> int:
    c = counts(study)
    return c["COMPLETE"] + c["PRUNED"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _host() -> str:
    """This machine's name in trial records; PICOLLM_WORKER_HOST overrides it where hostnames repeat."""
    return os.environ.get("PICOLLM_WORKER_HOST") or socket.gethostname()


WORKER_ID = f"{_host()}:{os.getpid()}"


def fail_dead_local_trials(study: Any) -> list[int]:
    """Fail and re-queue RUNNING trials whose worker process on this host is gone.

    Journal storage has no heartbeat; on RDB storage this just acts before the grace period ends.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    host = _host()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        owner_host, _, pid = worker.rpartition(":")
        dead = owner_host == host and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid))
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


def _claim_slot(study: Any, trial: Any, n_trials: int) -> None:
    """Run this trial only if it fits under the cap, counting peers' earlier running trials."""
    from optuna.trial import TrialState

    done = finished(study)
    running_before = sum(
        1 for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number < trial.number
    )
    if done + running_before >= n_trials:
        raise OverCap(f"the study already has {n_trials} trials finished or running")


def _trial_config(exp: Experiment, trial: Any, values: dict[str, Any]) -> Any:
    cfg = config_from_dict(apply_params(exp.base, values))
    cfg.tracking.name = f"{exp.study.name}-t{trial.number}"
    return cfg


def _release_gpu_memory() -> None:
    """After a failed trial (a CUDA out-of-memory error, say) hand cached blocks back before the next one."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def make_objective(exp: Experiment, threads: int | None) -> Callable[[Any], float]:
    import optuna

    from picollm.tracking import new_run_id
    from picollm.train import StopRun, train

    def objective(trial: optuna.Trial) -> float:
        try:
            return run_trial(trial)
        except (optuna.TrialPruned, KeyboardInterrupt):
            raise
        except Exception as exc:  # recorded with the trial, so `status` and trials.csv say why
            _release_gpu_memory()
            if "fail_reason" not in trial.user_attrs:
                trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:500])
            raise

    def run_trial(trial: optuna.Trial) -> float:
        _claim_slot(trial.study, trial, exp.study.n_trials)
        trial.set_user_attr("worker", WORKER_ID)
        values = sample(trial, exp.space, exp.base)
        cfg = _trial_config(exp, trial, values)
        if threads and not cfg.train.threads:
            cfg.train.threads = threads
        run_id = new_run_id(f"{exp.study.name}-t{trial.number}-")
        trial.set_user_attr("run_id", run_id)
        trial.set_user_attr("run_dir", str(Path(cfg.tracking.out_dir) / run_id))

        def report(tokens: int, val_loss: float) -> None:
            trial.report(val_loss, step=tokens)
            if trial.should_prune():
                raise StopRun("pruned", f"pruned at {tokens:,} tokens (val/loss {val_loss:.4f})")

        extra = {"trial": {"study": exp.study.name, "number": trial.number, "params": values}, **exp.extra}
        started = time.perf_counter()
        try:
            summary = train(cfg, run_id=run_id, on_eval=report, extra=extra)
        except PicoError as exc:  # bad data or config: every other trial would fail the same way
            trial.set_user_attr("fail_reason", str(exc))
            trial.set_user_attr("abort", True)
            raise AbortSweep(str(exc)) from None
        finally:
            trial.set_user_attr("duration_s", round(time.perf_counter() - started, 2))
        for key in ("tokens", "wandb_run_id", "best_val_loss", "final_val_loss", "status"):
            trial.set_user_attr(key, summary.get(key))
        if summary["status"] == "pruned":
            raise optuna.TrialPruned(summary["reason"])
        value = summary[exp.study.metric]
        if value is None or not math.isfinite(value):
            raise RuntimeError(f"metric {exp.study.metric} is {value}")
        return float(value)

    return objective


@dataclass
class WorkerSpec:
    exp: Experiment
    storage: str
    timeout_s: float | None = None
    threads: int | None = None
    verbose: bool = True


def trial_line(t: Any, best: float | None) -> str:
    """One line per finished trial: number, state, value, params, budget."""
    value = f"{t.value:.4f}" if t.value is not None else "-"
    params = " ".join(f"{k}={_short(v)}" for k, v in t.params.items())
    extra = t.user_attrs.get("fail_reason") if t.state.name == "FAIL" else None
    best_text = f"best {best:.4f}" if best is not None else "best -"
    tokens = t.user_attrs.get("tokens")
    tokens_text = f" {tokens:,} tok" if tokens else ""
    tail = f" ({extra})" if extra else ""
    return f"trial {t.number:3d} {t.state.name:8s} {value:>8s} | {best_text} |{tokens_text} {params}{tail}"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def best_value(study: Any) -> float | None:
    try:
        return study.best_value
    except ValueError:
        return None


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


# ---------------------------------------------------------------------------------------------
# The coordinator: start workers, show progress, export.
# ---------------------------------------------------------------------------------------------


class Progress:
    """A bar over finished trials with the best value so far, and one line per finished trial."""

    def __init__(self, study: Any, n_trials: int) -> None:
        from tqdm.auto import tqdm

        self.tqdm = tqdm
        self.seen = {t.number for t in study.trials if t.state.is_finished()}
        self.bar = tqdm(
            total=n_trials,
            initial=min(finished(study), n_trials),
            unit="trial",
            dynamic_ncols=True,
            disable=not sys.stderr.isatty(),
        )

    def show(self, study: Any, trial: Any) -> None:
        if trial.number in self.seen:
            return
        self.seen.add(trial.number)
        best = best_value(study)
        self.tqdm.write(trial_line(trial, best))
        sys.stdout.flush()  # one line per trial, also when stdout is a file
        self.bar.n = min(finished(study), self.bar.total)
        self.bar.set_postfix(best=f"{best:.4f}" if best is not None else "-")
        self.bar.refresh()

    def poll(self, study: Any) -> None:
        for t in study.get_trials(deepcopy=False):
            if t.state.is_finished():
                self.show(study, t)

    def close(self) -> None:
        self.bar.close()


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


def report_lines(study: Any) -> list[str]:
    """The best trial against the baseline (trial 0, the unmodified base config)."""
    from optuna.trial import TrialState

    c = counts(study)
    spent = sum(t.user_attrs.get("tokens") or 0 for t in study.trials)
    lines = [
        f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed, {c['RUNNING']} running; "
        f"{spent:,} training tokens spent"
    ]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not complete:
        return [*lines, "no trial has completed yet"]
    best = min(complete, key=lambda t: t.value)
    baseline = next((t for t in study.trials if t.user_attrs.get("baseline")), None)
    params = " ".join(f"{k}={_short(v)}" for k, v in best.params.items())
    lines.append(f"best: trial {best.number} with {best.value:.4f} ({params})")
    if baseline is not None and baseline.state == TrialState.COMPLETE:
        gain = baseline.value - best.value
        lines.append(
            f"baseline (trial {baseline.number}, the base config): {baseline.value:.4f} -> improvement {gain:.4f}"
        )
    elif baseline is not None:
        lines.append(f"baseline (trial {baseline.number}) did not complete: {baseline.state.name}")
    return lines
