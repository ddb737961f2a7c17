"""One trial: the trial's config -> :func:`picollm.trainer.train` -> the value Optuna ranks, its facts recorded.

A trial is one call of :func:`picollm.trainer.train` with a pruning hook that reports each periodic validation loss at
its token count (so block sizes line up), on the same fixed set as the ranked value.

What a study and its trials store in Optuna's user attributes are typed records, written and read back here only.
Every fact a trial carries (where its run record is, what it spent, why it failed, which paused run it continues) is a
field of :class:`TrialRecord`, written by :func:`record` and read back by :meth:`TrialRecord.of`: the objective, the
study's liveness checks, the export, the report, the analysis and the API all go through it. What a study keeps of
itself (its uid, space, base configs, settings, fingerprint, token plan and confirmation) is a :class:`StudyRecord`,
written by :func:`record_study` and :func:`record_confirm_run`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import threading
import time
import warnings
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.exceptions import UpdateFinishedTrialError

from picollm.config import Config
from picollm.errors import PicoError, mask_url
from picollm.timing import Stopwatch, take_process_start
from picollm.tracking import new_run_id

# What a trial's value is (``value_kind``).
FINAL, PRUNED_AT, FAILED, RUNNING = "final", "pruned-intermediate", "failed", "running"
INTERRUPTED = "interrupted"  # fail_reason of a trial stopped by Ctrl-C or SIGTERM
LOST_WORKER = ("worker process died", "worker lost")  # fail_reason of a trial whose worker was found gone


@dataclass(frozen=True)
class TrialRecord:
    """A trial's facts, as its worker and the study's liveness checks wrote them (None: not written)."""

    number: int = -1
    baseline: bool = False  # trial 0 and its retries: the unmodified base config
    continues: int | None = None  # the trial whose paused run this one goes on from (halving)
    from_rung: int | None = None  # the index of the rung that paused run stopped at
    worker: str | None = None  # host:pid of the process that runs it
    device: str | None = None
    run_id: str | None = None
    run_dir: str | None = None  # the run record (a continuation's: the paused run's, until its own starts)
    wandb_run_id: str | None = None
    wandb_url: str | None = None
    metric: str | None = None  # the summary.json key ranked
    value_kind: str | None = None  # FINAL, PRUNED_AT, FAILED or RUNNING
    value_stderr: float | None = None
    fail_reason: str | None = None
    abort: bool = False  # its error stops the sweep (every trial would hit it)
    pruned_at_tokens: int | None = None
    tokens: int | None = None  # tokens of its run (its branched decays apart)
    spent_tokens: int | None = None  # every token it trained: its run from where it started, and its decays
    decay_tokens: int | None = None  # of those, the tokens of its branched decays
    status: str | None = None  # the run's status (finished, pruned, ...)
    duration_s: float | None = None
    time_breakdown: dict[str, float] | None = None
    lease: float | None = None  # when its worker last renewed its lease (journal storages)

    @classmethod
    def of(cls, trial: Any) -> TrialRecord:
        """The record of an Optuna trial (frozen or live)."""
        attrs = trial.user_attrs
        return cls(number=trial.number, **{f.name: attrs[f.name] for f in FACTS if f.name in attrs})

    def queued(self) -> dict[str, Any]:
        """The facts given, as ``Study.enqueue_trial``'s user attributes (unset ones left out)."""
        defaults = TrialRecord()
        return {f.name: getattr(self, f.name) for f in FACTS if getattr(self, f.name) != getattr(defaults, f.name)}

    @property
    def failed_by_its_worker(self) -> bool:
        """Failed by the worker that ran it (an error), not found dead by another."""
        return self.value_kind == FAILED and not str(self.fail_reason or "").startswith(LOST_WORKER)


FACTS = [f for f in dataclasses.fields(TrialRecord) if f.name != "number"]


def _checked(facts: dict[str, Any], known: list[dataclasses.Field[Any]] = FACTS, kind: str = "trial") -> dict[str, Any]:
    unknown = set(facts) - {f.name for f in known}
    if unknown:
        raise TypeError(f"not a {kind} fact: {', '.join(sorted(unknown))}")
    return facts


def write(trial: Any, **facts: Any) -> None:
    """Write facts to a live trial; raises UpdateFinishedTrialError once another worker has finished it."""
    for key, value in _checked(facts).items():
        trial.set_user_attr(key, value)


def record(trial: Any, **facts: Any) -> None:
    """:func:`write`, where a trial another worker already finished not taking them is fine."""
    with suppress(UpdateFinishedTrialError):
        write(trial, **facts)


def record_stored(storage: Any, trial_id: int, **facts: Any) -> None:
    """Write facts to a trial through the storage (another worker's trial, found dead)."""
    for key, value in _checked(facts).items():
        storage.set_trial_user_attr(trial_id, key, value)


def host() -> str:
    """This machine's name in trial records; PICOLLM_WORKER_HOST overrides it where hostnames repeat."""
    return os.environ.get("PICOLLM_WORKER_HOST") or socket.gethostname()


def worker_id() -> str:
    return f"{host()}:{os.getpid()}"


CONFIRM_RUN = "confirm:"  # the prefix of the study attributes holding one finished confirmation run each


@dataclass(frozen=True)
class StudyRecord:
    """What a study keeps of itself, as its workers and its confirmation wrote it (empty or None: not written)."""

    space: list[dict[str, Any]] = field(default_factory=list)  # the search space, described
    base: dict[str, Any] = field(default_factory=dict)  # the base config as the experiment gives it
    settings: dict[str, Any] = field(default_factory=dict)  # the study: block
    fingerprint: dict[str, Any] | None = None  # what the study answers: one study, one question
    trained_base: dict[str, Any] | None = None  # the base config as the trials ran it (offline fallback resolved)
    offline_fallback: str | None = None  # the fallback's note, when the trials ran on the built-in data
    token_plan: dict[str, Any] | None = None  # the token budget's plan of the sweep that ran last
    confirm_settings: dict[str, Any] | None = None  # the latest confirmation's settings and shortlist
    confirm_runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # run key -> finished confirmation run
    uid: str | None = None  # this study, apart from any other of its name (in another storage, or deleted)

    @classmethod
    def of(cls, study: optuna.Study) -> StudyRecord:
        return cls.from_attrs(study.user_attrs)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StudyRecord:
        """The record in a study's user attributes (as ``storage.get_study_user_attrs`` returns them)."""
        runs = {key[len(CONFIRM_RUN) :]: run for key, run in attrs.items() if key.startswith(CONFIRM_RUN)}
        known = {f.name: attrs[f.name] for f in STUDY_FACTS if f.name in attrs and attrs[f.name] is not None}
        return cls(**known, confirm_runs=runs)

    @property
    def param_keys(self) -> list[str]:
        return [p["key"] for p in self.space]

    @property
    def ran_base(self) -> dict[str, Any]:
        """The base config as the trials ran it, else as given."""
        return self.trained_base or self.base


STUDY_FACTS = [f for f in dataclasses.fields(StudyRecord) if f.name != "confirm_runs"]


def record_study(study: optuna.Study, **facts: Any) -> None:
    """Write facts of a study (fields of :class:`StudyRecord`, confirmation runs apart)."""
    for key, value in _checked(facts, STUDY_FACTS, "study").items():
        study.set_user_attr(key, value)


def record_confirm_run(study: optuna.Study, key: str, run: dict[str, Any]) -> None:
    study.set_user_attr(CONFIRM_RUN + key, run)


class ExperimentView(Protocol):
    """What a trial reads of its :class:`picollm.sweeps.experiment.Experiment`; that module reads trial records, so
    the objective names only this much of it."""

    base: Config
    study: Any  # its StudySettings: name, metric, n_trials, heartbeat_interval
    extra: dict[str, Any]

    def sample(self, trial: Any) -> dict[str, Any]: ...


def trained(counts: dict[str, Any]) -> int:
    """Every token a run (or the checkpoint it went on from) has trained: its own and its branched decays'."""
    return int(counts.get("tokens") or 0) + int(counts.get("anneal_tokens") or 0)


class AbortSweep(PicoError):
    """A trial hit a problem every trial would hit (bad data path, missing files): stop the sweep."""


class TakenOver(Exception):
    """Another worker marked this live trial failed (its heartbeat looked stale); its result is dropped."""


def worker_device(rank: int, configured: str) -> str:
    """``cuda:{rank % device_count}`` for worker ``rank`` when CUDA is there and the config leaves the choice."""
    import torch

    if configured in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{rank % max(1, torch.cuda.device_count())}"
    return configured


def trial_config(exp: ExperimentView, number: int, values: dict[str, Any], device: str, threads: int | None) -> Config:
    """The trainer config of trial ``number``: the base config, the trial's values, its name and device."""
    cfg = exp.base.with_values(values)
    cfg.tracking.name = f"{exp.study.name}-t{number}"
    cfg.train.device = device
    if threads and not cfg.train.threads:
        cfg.train.threads = threads
    return cfg


def resumable(trial: optuna.Trial, cfg: Config) -> Any:
    """The last full-state checkpoint of a retried trial's predecessor run of the same config; None to start afresh.

    The retry continues in a record of its own (the predecessor's rows up to the checkpoint copied): a worker taken
    over for a missed heartbeat may still be alive, and it closes its own record when it wakes."""
    from picollm import checkpoint  # torch: reading a study's records needs none
    from picollm.trainer import Start  # torch: reading a study's records needs none

    facts = TrialRecord.of(trial)
    sources = [facts.run_dir]
    if facts.continues is not None:  # a retried continuation that died before its own first checkpoint
        sources.append(TrialRecord.of(trial.study.get_trials(deepcopy=False)[facts.continues]).run_dir)
    for previous in filter(None, sources):
        if not (Path(previous) / checkpoint.STATES).is_dir():
            continue
        try:
            path = checkpoint.latest_state(Path(previous))
            return Start(checkpoint.load_state(path, cfg, same_budget=True), Path(previous), label="resumed_from")
        except PicoError:  # no usable checkpoint (truncated, another config): look further, or train afresh
            continue
    if facts.continues is not None:  # afresh it would cost what the budget counted as paid
        raise RuntimeError(f"no usable checkpoint of trial {facts.continues}'s paused run to go on from")
    return None


def _release_gpu_memory() -> None:
    """After a failed trial (a CUDA out-of-memory error, say) hand cached blocks back before the next one."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class Objective:
    """``study.optimize``'s objective for one worker; ``current`` is the trial it is running."""

    exp: ExperimentView
    threads: int | None = None
    rank: int = 0
    on_progress: Any = None  # gets a line on the running trial every few seconds
    current: Any = None
    taken_over: set[int] = field(default_factory=set)
    reported_at: dict[int, int] = field(default_factory=dict)  # trial number -> tokens at its last report
    clock: Stopwatch = field(default_factory=Stopwatch)  # the current trial's (see picollm.timing)
    started: float | None = None  # perf_counter() when the current trial's training began
    failures_in_a_row: int = 0
    abort: str | None = None  # why this worker's sweep must stop, once a trial has said so

    def __call__(self, trial: optuna.Trial) -> float:
        self.current = trial
        self.clock = Stopwatch()
        self.clock.add_before("worker_start", take_process_start())  # a worker's first trial owns its start-up
        self.started = None
        try:
            value = self.run(trial)
        except optuna.TrialPruned:
            self.failures_in_a_row = 0
            raise
        except TakenOver:
            raise
        except KeyboardInterrupt:
            record(trial, fail_reason=INTERRUPTED, value_kind=FAILED, **self.ran())
            raise
        except AbortSweep as exc:  # bad data or config: every other trial would fail the same way
            self.stop(trial, mask_url(str(exc)))  # first: the writes below may fail too
            record(trial, fail_reason=mask_url(str(exc)), abort=True, value_kind=FAILED, **self.ran())
            raise
        except Exception as exc:  # recorded with the trial, so `status` and trials.csv say why
            reason = mask_url(f"{type(exc).__name__}: {exc}")[:500]
            self.failures_in_a_row += 1  # first: a sticky CUDA error can make the clean-up below raise too
            if self.failures_in_a_row >= max(3, self.exp.study.n_trials or 10):
                self.stop(trial, f"{self.failures_in_a_row} trials failed in a row; last: {reason}")
            _release_gpu_memory()
            record(trial, fail_reason=reason, value_kind=FAILED, time_breakdown=self.clock.breakdown(), **self.ran())
            raise
        self.failures_in_a_row = 0
        return value

    def stop(self, trial: optuna.Trial, reason: str) -> None:
        """End this worker's ``study.optimize`` after this trial, then raise :class:`AbortSweep` with ``reason``."""
        self.abort = reason
        trial.study.stop()

    def run(self, trial: optuna.Trial) -> float:
        from picollm import trainer  # torch: reading a study's records needs none

        trial.study.started_here(trial)
        exp = self.exp
        values = exp.sample(trial)
        device = worker_device(self.rank, exp.base.train.device)
        cfg = trial_config(exp, trial.number, values, device, self.threads)
        start = resumable(trial, cfg)  # a retried trial goes on from its predecessor's last checkpoint
        run_id = new_run_id(f"{exp.study.name}-t{trial.number}-")
        run_dir = Path(cfg.tracking.out_dir) / run_id
        with self.clock.phase("storage"):
            record(
                trial,
                worker=worker_id(),
                device=cfg.train.device,
                run_id=run_id,
                run_dir=str(run_dir),
                metric=exp.study.metric,
                fail_reason="",  # a retried trial starts with its failed original's attributes
                value_kind=RUNNING,
            )
        extra = {"trial": {"study": exp.study.name, "number": trial.number, "params": values}, **exp.extra}
        lease = nullcontext() if trial.study.beats else Lease(trial, exp.study.heartbeat_interval)
        self.started = time.perf_counter()
        try:
            with lease:
                hook = self.pruning_hook(trial)
                summary = trainer.train(  # looked up here: tests patch it
                    cfg,
                    run_id=run_id,
                    on_eval=hook,
                    on_anneal=hook,
                    extra=extra,
                    clock=self.clock,
                    start=start,
                    on_progress=self.on_progress,
                )
        except PicoError as exc:
            raise AbortSweep(str(exc)) from None
        outcome = {
            **self.ran(),
            "tokens": summary.get("tokens"),
            "spent_tokens": trained(summary) - (0 if start is None else trained(start.state)),
            "decay_tokens": int(summary.get("anneal_tokens") or 0)
            - (0 if start is None else start.state["anneal_tokens"]),
            "status": summary.get("status"),
            "wandb_run_id": summary.get("wandb_run_id"),
        }
        return self.value(trial, summary, outcome)

    def ran(self) -> dict[str, float]:
        """The training's duration, once it has started: written with the trial's last attributes."""
        return {} if self.started is None else {"duration_s": round(time.perf_counter() - self.started, 2)}

    def pruning_hook(self, trial: optuna.Trial) -> Any:
        from picollm.trainer import StopRun  # torch: reading a study's records needs none

        def report(tokens: int, val_loss: float) -> None:
            try:
                with self.clock.phase("storage"), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a resumed trial reports again what it inherited: ignored
                    trial.report(val_loss, step=tokens)
                self.reported_at[trial.number] = tokens
            except UpdateFinishedTrialError:
                self.taken_over.add(trial.number)
                raise StopRun("failed", "marked failed by another worker (stale heartbeat)") from None
            with self.clock.phase("storage"):  # once the budget is spent the trainer ignores a prune: it completes
                prune = trial.should_prune()
            if prune:
                raise StopRun("pruned", f"pruned at {tokens:,} tokens (val/loss {val_loss:.4f})")
            if not self.may_go_on(trial, tokens):
                raise StopRun("pruned", f"stopped at {tokens:,} tokens: study.max_tokens cannot pay for the next rung")

        return report

    def may_go_on(self, trial: optuna.Trial, tokens: int) -> bool:
        """A trial the pruner keeps trains on to its next rung only if the study's token budget pays for it."""
        study, plan = trial.study, trial.study.plan
        if plan.max_tokens is None or tokens not in plan.budgets:
            return True
        with self.clock.phase("storage"), study.claimed():
            trials = study.get_trials(deepcopy=False)
            me = next(t for t in trials if t.number == trial.number)
            return plan.room_to_go_on(trials, me, plan.budgets.index(tokens))

    def value(self, trial: optuna.Trial, summary: dict[str, Any], outcome: dict[str, Any]) -> float:
        """The ranked value of a finished run, or TrialPruned with what the pruner saw last; one storage write."""
        if trial.number in self.taken_over:
            raise TakenOver(f"trial {trial.number} was marked failed by another worker")
        metric = self.exp.study.metric
        if summary["status"] == "pruned":
            with self.clock.phase("storage"):
                record(
                    trial,
                    **outcome,
                    value_kind=PRUNED_AT,
                    pruned_at_tokens=self.reported_at.get(trial.number),
                    value_stderr=summary.get("last_val_loss_stderr"),
                    time_breakdown=self.clock.breakdown(),  # every storage call before this last write
                )
            raise optuna.TrialPruned(summary["reason"])
        value = summary.get(metric)
        if value is None or not math.isfinite(value):
            raise RuntimeError(f"metric {metric} is {value}")  # recorded by __call__, with the duration
        with self.clock.phase("storage"):
            breakdown = self.clock.breakdown()  # every storage call before this last write
            stderr = summary.get(f"{metric}_stderr")
            record(trial, **outcome, value_kind=FINAL, value_stderr=stderr, time_breakdown=breakdown)
        return float(value)


class Lease:
    """Renews a trial's lease every ``interval`` seconds on a daemon thread, while the trial trains."""

    def __init__(self, trial: Any, interval: float) -> None:
        self.trial, self.interval = trial, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._renew, daemon=True, name="picollm-lease")

    def _renew(self) -> None:
        while True:
            try:
                write(self.trial, lease=time.time())
            except UpdateFinishedTrialError:
                return  # another worker failed it; the objective finds out at its next report
            except Exception:  # a transient storage error: try again next interval
                pass
            if self.stop.wait(self.interval):
                return

    def __enter__(self) -> Lease:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
