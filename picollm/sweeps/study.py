"""The study: opening, guarding and healing one Optuna study.

Storage: Optuna's own storages from a URL (SQLite by default, any RDB such as PostgreSQL, or a journal file), opened
with Optuna's heartbeat and capped retries of dead trials, never creating a file when only reading.
:func:`claim_lock` is a lock every worker on every machine sharing the storage sees, which keeps a study's total
exact.

Opening: sampler and pruner, the stored search space and fingerprint, the exact total. ``n_trials`` is the total of
finished trials, so opening a study again resumes it. A check after each trial would let two workers both start "the
last" one, so :class:`CappedStudy` counts in ``ask``, under :func:`claim_lock`: a trial beyond the total is never
created.

Guarding: one study is one question. Trials are comparable only if all else is equal, so the :func:`fingerprint`
holds the data identity (token-cache hash, tokenizer, offline fallback), the objective and budget, and the base
config minus searched and :data:`HARMLESS` keys. The first worker stores it; any later worker that differs is refused
with the difference in words (:func:`explain`), not two hashes.

Healing: which running trials are dead. They are failed, then retried at most ``max_retry`` times. Database storages
use Optuna's heartbeat, journal files a :class:`picollm.sweeps.trial.Lease` each worker renews; on any storage a
trial whose worker on this host is gone fails at once (docs/reliability.md). A resumed sweep re-queues its failed
baseline and Ctrl-C'd trials the same way.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from picollm.config import TrackingConfig
from picollm.errors import PicoError, StorageError, mask_url
from picollm.sweeps.budget import TokenPlan, last_promotion, next_promotion, plan_of, scores_at
from picollm.sweeps.experiment import (
    ONE_SEQUENCE,
    Experiment,
    baseline_params,
    make_pruner,
    make_sampler,
    stored_settings,
    trial_cap,
)
from picollm.sweeps.trial import (
    FAILED,
    INTERRUPTED,
    LOST_WORKER,
    StudyRecord,
    TrialRecord,
    host,
    record_stored,
    record_study,
)

SQLITE_TIMEOUT_S = 60  # many workers on one SQLite file wait for the lock instead of failing
LOCK_GRACE_S = 60  # a file lock older than this was left by a dead process: Optuna's lock breaks it
CONNECT_TIMEOUT_S = 10  # an unreachable server is one clear line after this long, not a hang
SERVERS = ("postgresql", "mysql", "mariadb")


def scheme(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0].lower() if ":" in url else ""


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///path`` URL ('' for an in-memory database)."""
    path = url.split("///", 1)[1] if "///" in url else ""
    return "" if path in ("", ":memory:") else path.split("?", 1)[0]


def _local_file(path: str, what: str, create: bool) -> Path:
    file = Path(path).expanduser()
    if create:
        file.parent.mkdir(parents=True, exist_ok=True)
    elif not file.is_file():
        raise StorageError(f"no {what} at {file}: check --storage (nothing has been created)")
    return file


def _connect_args(url: str) -> dict[str, Any]:
    if scheme(url) == "sqlite":
        return {"timeout": SQLITE_TIMEOUT_S}
    if scheme(url) == "postgresql":
        return {"connect_timeout": CONNECT_TIMEOUT_S}
    return {}


def _journal(url: str, create: bool, **_: Any) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = url.split(":", 1)[1]
    if not path:
        raise StorageError("journal storage needs a path: journal:results/study.log")
    return JournalStorage(JournalFileBackend(str(_local_file(path, "journal file", create))))


# A database server admits few clients (PostgreSQL: 100 by default), and a pool's connections outlive the storage that
# dropped it until the garbage collector breaks its cycles: a process polling a study would fill the server. So each
# process opens one storage per server URL and heartbeat setting, and reuses it.
_SERVER_STORAGES: dict[tuple[str, int, int, int], Any] = {}
_SERVER_STORAGES_LOCK = threading.Lock()  # threads opening one URL at once share one storage too


def _rdb(url: str, create: bool, heartbeat_interval: int, grace_period: int, max_retry: int) -> Any:
    if scheme(url) not in SERVERS:
        return _new_rdb(url, create, heartbeat_interval, grace_period, max_retry)
    key = (url, heartbeat_interval, grace_period, max_retry)
    with _SERVER_STORAGES_LOCK:
        storage = _SERVER_STORAGES.get(key)
        if storage is None:  # opening it reaches the server
            storage = _SERVER_STORAGES[key] = _new_rdb(url, create, heartbeat_interval, grace_period, max_retry)
            return storage
    with storage.engine.connect():  # a server gone since the first open: the same one-line error
        pass
    return storage


def _new_rdb(url: str, create: bool, heartbeat_interval: int, grace_period: int, max_retry: int) -> Any:
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    path = sqlite_path(url)
    if scheme(url) == "sqlite" and path:
        _local_file(path, "SQLite file", create)
    # Processes starting together on a fresh database race to create Optuna's tables, so they open one after another; a
    # SQLite file in a read-only folder, which nobody can be creating, skips the lock.
    shared = scheme(url) in SERVERS or (path and os.access(Path(path).expanduser().parent, os.W_OK))
    with claim_lock(url, "optuna-schema") if shared else contextlib.nullcontext():
        return RDBStorage(
            url,
            engine_kwargs={"pool_pre_ping": True, "connect_args": _connect_args(url)},
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                max_retry, inherit_intermediate_values=True
            ),
        )


OPENERS: dict[str, Callable[..., Any]] = {
    "journal": _journal,
    "sqlite": _rdb,
    "postgresql": _rdb,
    "mysql": _rdb,
    "mariadb": _rdb,
}
HINTS = {"postgres": "write postgresql:// (SQLAlchemy does not know postgres://)"}


def check_url(url: str) -> None:
    """Refuse a URL no opener takes, in one line, before anything is opened."""
    kind = scheme(url)
    if kind in HINTS:
        raise StorageError(f"storage {mask_url(url)}: {HINTS[kind]}")
    if kind not in OPENERS:
        raise StorageError(
            f"unknown storage {mask_url(url)!r}: use sqlite:///path.db, postgresql://user@host/db or journal:path.log"
        )


def open_storage(
    url: str, heartbeat_interval: int = 10, grace_period: int = 30, max_retry: int = 2, create: bool = False
) -> Any:
    """An Optuna storage for ``url`` or a one-line :class:`StorageError`; ``create=False`` never makes a file."""
    check_url(url)
    try:
        return OPENERS[scheme(url)](
            url, create=create, heartbeat_interval=heartbeat_interval, grace_period=grace_period, max_retry=max_retry
        )
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot open storage {mask_url(url)}: {one_line(exc)}") from None


def one_line(exc: BaseException) -> str:
    """An exception as ``Type: first line``, passwords masked, short enough for one line of output."""
    text = str(exc).strip()
    detail = mask_url(text.splitlines()[0] if text else "")
    return f"{type(exc).__name__}: {detail[:200]}" if detail else type(exc).__name__


def has_heartbeat(storage: Any) -> bool:
    """Database storages beat (Optuna's heartbeat); journal files hold leases instead (picollm.sweeps.trial.Lease)."""
    from optuna.storages import RDBStorage

    return isinstance(storage, RDBStorage)


# -- One lock for every worker sharing a storage ----------------------------------------------


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


_LOCK_ENGINES: dict[str, Any] = {}  # url -> this process's engine for the harness's locks


def _lock_engine(url: str) -> Any:
    """A small autocommit pool per process for the locks, kept: a connection per trial costs more than the lock."""
    engine = _LOCK_ENGINES.get(url)
    if engine is None:
        import sqlalchemy

        engine = sqlalchemy.create_engine(
            url, pool_size=1, isolation_level="AUTOCOMMIT", pool_pre_ping=True, connect_args=_connect_args(url)
        )
        _LOCK_ENGINES[url] = engine
    return engine


def _forget_inherited_engines() -> None:
    """In a forked child: new pools, leaving the parent's connections alone (``dispose(close=False)``)."""
    global _SERVER_STORAGES_LOCK
    _SERVER_STORAGES_LOCK = threading.Lock()  # another thread of the parent may have held it
    for engine in _LOCK_ENGINES.values():
        engine.dispose(close=False)
    for storage in _SERVER_STORAGES.values():
        storage.engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_inherited_engines)


@contextlib.contextmanager
def _sql_lock(url: str, name: str, acquire: str, release: str) -> Iterator[None]:
    import sqlalchemy

    params = {"key": _lock_key(name), "name": name[:64]}
    with _lock_engine(url).connect() as conn:
        conn.execute(sqlalchemy.text(acquire), params)
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text(release), params)


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    from optuna.storages.journal import JournalFileOpenLock

    lock = JournalFileOpenLock(str(Path(path).expanduser()), grace_period=LOCK_GRACE_S)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


LOCKS: dict[str, Callable[[str, str], contextlib.AbstractContextManager[None]]] = {
    "postgresql": lambda url, name: _sql_lock(
        url, name, "SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)"
    ),
    "mysql": lambda url, name: _sql_lock(url, name, "SELECT GET_LOCK(:name, -1)", "SELECT RELEASE_LOCK(:name)"),
    "mariadb": lambda url, name: _sql_lock(url, name, "SELECT GET_LOCK(:name, -1)", "SELECT RELEASE_LOCK(:name)"),
    "sqlite": lambda url, name: _file_lock(f"{sqlite_path(url) or '.picollm-memory'}.{name}"),
    "journal": lambda url, name: _file_lock(f"{url.split(':', 1)[1]}.{name}"),
}


def claim_lock(url: str, name: str) -> contextlib.AbstractContextManager[None]:
    """A lock named ``name`` that every process using ``url`` shares, on this machine or any other."""
    return LOCKS[scheme(url)](url, name)


# Keys (or whole sections) that never change what a trial measures.
HARMLESS = (
    "tracking",
    "train.progress",
    "train.threads",
    "train.device",  # workers are placed on cuda:{rank % device_count}
    "train.compile",
    "data.cache_dir",
    "data.offline_fallback",  # the permission; whether the fallback was USED is in the data identity
)


class FingerprintMismatch(PicoError):
    """This sweep would add trials that answer another question than the study's."""


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _harmless(key: str) -> bool:
    return any(key == h or key.startswith(f"{h}.") for h in HARMLESS)


def fingerprint(exp: Experiment) -> dict[str, Any]:
    """The fingerprint of ``exp`` (after the offline fallback was resolved, so the data is what will run)."""
    from picollm.data import cache_key  # torch: reading a study's records needs none

    cfg = exp.base
    searched = {p.key for p in exp.space}
    s = exp.study
    out: dict[str, Any] = {
        "data_identity.cache_key": cache_key(cfg.data),
        "data_identity.tokenizer": cfg.data.tokenizer,
        "data_identity.offline_fallback_used": bool(exp.extra.get("offline_fallback")),
        "objective.metric": s.metric,
        "objective.budget_tokens": s.budget_tokens,
        "objective.reports": s.reports,
    }
    if s.target_tokens:  # only where set: a study without one keeps the fingerprint it was made with
        out["objective.target_tokens"] = s.target_tokens
    for key, value in _flatten(exp.base.to_dict()).items():
        if key not in searched and not _harmless(key):
            out[f"config.{key}"] = value
    return out


def _show(value: Any) -> str:
    return mask_url(repr(value))


def differing(stored: dict[str, Any], mine: dict[str, Any]) -> list[str]:
    """The keys whose values differ, in the stored order, then this run's new keys."""
    missing = object()
    keys = [*stored, *(k for k in mine if k not in stored)]
    return [k for k in keys if stored.get(k, missing) != mine.get(k, missing)]


# -- A refusal in words: what this study was made with, and what this run would change --------

# What the data words below describe: where the tokens come from, and whether the fallback replaced them.
SOURCE_KEYS = (
    "data_identity.cache_key",
    "data_identity.tokenizer",
    "data_identity.offline_fallback_used",
    *(f"config.data.{k}" for k in ("tinystories", "max_stories", "builtin_stories", "synthetic", "input_files")),
    "config.data.tokenizer",
)


def _sources(fp: dict[str, Any]) -> str:
    data = {key.removeprefix("config.data."): value for key, value in fp.items() if key.startswith("config.data.")}
    parts = []
    if data.get("tinystories"):
        cap = data.get("max_stories")
        parts.append(str(data["tinystories"]) + (f" (at most its first {cap:,} stories)" if cap else ""))
    if data.get("builtin_stories"):
        parts.append(f"the built-in stories ({data['builtin_stories']:,})")
    if data.get("synthetic"):
        parts.append(f"{data['synthetic']:,} synthetic sequences")
    parts += [str(name) for name in data.get("input_files") or []]
    return " + ".join(parts) or "no data"


def data_words(fp: dict[str, Any]) -> str:
    """``offline, on the built-in stories (2,000) with the bytes tokenizer``: what a fingerprint's data is."""
    offline = "offline, " if fp.get("data_identity.offline_fallback_used") else ""
    return f"{offline}on {_sources(fp)} with the {fp.get('data_identity.tokenizer')} tokenizer"


def _data_phrases(stored: dict[str, Any], mine: dict[str, Any], keys: list[str]) -> list[str]:
    """The data in words when its sources, tokenizer or fallback differ; else changed files."""
    theirs, ours = data_words(stored), data_words(mine)
    if theirs != ours:
        return [f"this study was made {theirs}; this run would train {ours}"]
    data_settings = [key for key in keys if key.startswith("config.data.")]
    if "data_identity.cache_key" in keys and not data_settings:
        return [f"the data files changed since this study was made {theirs} (same settings, other contents)"]
    return []


def _tokens(value: Any) -> str:
    return f"{value:,} tokens" if value else "whole epochs (no token budget)"


# Phrases for the study's own settings; every other key is a trainer setting the study does not search.
PHRASES: dict[str, Callable[[Any, Any], str]] = {
    "objective.budget_tokens": lambda a, b: (
        f"each trial trains on {_tokens(a)} in this study but on {_tokens(b)} here (study.budget_tokens)"
    ),
    "objective.metric": lambda a, b: f"trials are ranked by {a} in this study but by {b} here (study.metric)",
    "objective.reports": lambda a, b: (
        f"the pruner sees {a} validation losses per trial in this study but {b} here (study.reports)"
    ),
    "objective.target_tokens": lambda a, b: (
        f"the answer is for a budget of {_tokens(a)} in this study but {_tokens(b)} here (study.target_tokens)"
    ),
}
# Trainer settings that follow from a study setting (picollm.sweeps.experiment.trial_base): said once, as that setting.
DERIVED = {
    "objective.budget_tokens": ("config.train.max_tokens", "config.train.epochs", "config.train.eval_every_tokens"),
    "objective.reports": ("config.train.eval_every_tokens",),
    "objective.target_tokens": (
        "config.train.max_tokens",
        "config.train.eval_every_tokens",
        "config.train.anneal_at",
        "config.train.checkpoint_every_tokens",
    ),
}
SHOWN = 3  # phrases in one refusal; the rest are counted


def _setting_phrase(key: str, theirs: Any, ours: Any) -> str:
    return f"{key.removeprefix('config.')} is {_show(theirs)} in this study but {_show(ours)} here"


def explain(stored: dict[str, Any], mine: dict[str, Any]) -> list[str]:
    """What differs from the study's fingerprint, in words: data, then study settings, then trainer settings."""
    keys = differing(stored, mine)
    phrases = _data_phrases(stored, mine, keys)
    hidden = {derived for key in keys for derived in DERIVED.get(key, ())}
    settings = []
    for key in keys:
        if key in SOURCE_KEYS or key in hidden:
            continue
        theirs, ours = stored.get(key), mine.get(key)
        if key in PHRASES:
            phrases.append(PHRASES[key](theirs, ours))
        else:
            settings.append(_setting_phrase(key, theirs, ours))
    if settings:
        settings[0] += " (not searched, so all the study's trials share it)"
    return phrases + settings


def start_over_hint(name: str) -> str:
    """How to get past a refusal about study ``name``: every such refusal says it."""
    return (
        f"start a new study with --study-name NEW, or start this one over: 'python sweep.py delete --study {name} "
        "--files'"
    )


def refusal(name: str, storage_url: str, phrases: list[str]) -> str:
    shown = "; ".join(phrases[:SHOWN]) + (f"; and {len(phrases) - SHOWN} more" if len(phrases) > SHOWN else "")
    return (
        f"study {name!r} in {mask_url(storage_url)} answers another question: {shown}. Nothing was added: resume it "
        f"with its settings, {start_over_hint(name)}"
    )


def refuse_mix(stored: dict[str, Any] | None, exp: Experiment, storage_url: str) -> None:
    """Refuse, in one line of words, a run whose fingerprint differs from the study's stored one (None: no study)."""
    if stored is None or exp.fingerprint is None:
        return
    phrases = explain(stored, exp.fingerprint)
    if phrases:
        raise FingerprintMismatch(refusal(exp.study.name, storage_url, phrases))


def check_fingerprint(study: optuna.Study, exp: Experiment, storage_url: str) -> None:
    """Store the fingerprint with a new study, or refuse a sweep whose fingerprint differs (one line)."""
    if exp.fingerprint is None:
        return
    stored = StudyRecord.of(study).fingerprint
    if stored is None:
        record_study(study, fingerprint=exp.fingerprint)
        return
    refuse_mix(stored, exp, storage_url)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fail_and_retry(study: CappedStudy, trial: Any, reason: str, max_retry: int) -> bool:
    """Fail a RUNNING trial with ``reason`` and re-queue it (capped); False if another worker was first."""
    storage, trial_id = study.storage, study.trial_id(trial.number)
    try:  # the reason first: a finished trial cannot be written to any more
        record_stored(storage, trial_id, fail_reason=reason, value_kind=FAILED)
        if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    retry(study, storage.get_trial(trial_id), max_retry)
    return True


def retry(study: optuna.Study, trial: Any, max_retry: int) -> bool:
    """Re-queue a failed trial with its parameters, as Optuna's stale-trial callback does; False when out of retries."""
    if len(RetryHeartbeatStaleTrialCallback.retry_history(trial)) >= max_retry:
        return False
    RetryHeartbeatStaleTrialCallback(max_retry, inherit_intermediate_values=True)(study, trial)
    return True


def _rerun_on_resume(trial: Any) -> bool:
    """Stopped by Ctrl-C, or the baseline failed by its worker: its parameters are worth a run."""
    facts = TrialRecord.of(trial)  # a lost worker's trial was re-queued at once; an error queues nothing
    return facts.fail_reason == INTERRUPTED or (facts.baseline and facts.failed_by_its_worker)


def requeue_stopped(study: optuna.Study, max_retry: int) -> tuple[list[int], list[int]]:
    """On resume: re-queue a failed baseline and Ctrl-C'd trials once each; returns (re-queued, out of retries).
    Run under the study's setup lock, so workers starting together do not both queue one."""
    trials = study.get_trials(deepcopy=False)
    done = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    queued: list[int] = []
    used_up: list[int] = []
    for t in trials:
        if t.state == TrialState.FAIL and t.number not in done and _rerun_on_resume(t):
            (queued if retry(study, t, max_retry) else used_up).append(t.number)
    return queued, used_up


def _local_owner_dead(trial: Any) -> bool:
    owner_host, _, pid = str(TrialRecord.of(trial).worker or "").rpartition(":")
    return owner_host == host() and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid))


def fail_dead_local_trials(study: CappedStudy, max_retry: int) -> list[int]:
    """Fail and re-queue RUNNING trials whose worker process on this host is gone."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    dead = [t for t in running if _local_owner_dead(t)]
    return [t.number for t in dead if _fail_and_retry(study, t, LOST_WORKER[0], max_retry)]


def fail_expired_leases(study: CappedStudy, grace_period: float, max_retry: int) -> list[int]:
    """Journal storage: fail and re-queue RUNNING trials whose lease is older than ``grace_period``."""
    now, expired = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        facts = TrialRecord.of(t)
        renewed = facts.lease or (t.datetime_start.timestamp() if t.datetime_start else now)
        if now - renewed > grace_period:
            owner = facts.worker
            reason = f"{LOST_WORKER[1]}: no lease renewal for {now - renewed:.0f}s (worker {owner})"
            if _fail_and_retry(study, t, reason, max_retry):
                expired.append(t.number)
    return expired


def fail_stale(study: CappedStudy, grace_period: float, max_retry: int) -> None:
    """Run every detector that applies to this study's storage, under the claim lock: a dead trial is failed, then its
    retry queued, and a worker counting between the two would start a trial beyond the total."""
    with study.claimed():
        fail_dead_local_trials(study, max_retry)
        if has_heartbeat(study.storage):
            optuna.storages.fail_stale_trials(study)
        else:
            fail_expired_leases(study, grace_period, max_retry)


TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class StudyFull(Exception):
    """Every trial of the total is finished or running: this worker must not start another."""


class CappedStudy(optuna.Study):
    """An Optuna study whose ``ask`` never starts a trial beyond ``total`` (finished + running).

    ``study.optimize`` starts every trial through ``ask``, so counting and starting under one lock keeps the total
    exact; the objective refuses a trial not started here (:meth:`started_here`).
    """

    def __init__(self, *, total: float, plan: TokenPlan, storage_url: str, storage: Any, **kwargs: Any) -> None:
        super().__init__(storage=storage, **kwargs)
        self.total, self.plan, self.storage_url, self.storage = total, plan, storage_url, storage
        self.study_id = storage.get_study_id_from_name(self.study_name)
        self.asked: set[int] = set()

    def claimed(self) -> contextlib.AbstractContextManager[None]:
        """The lock under which trials are counted, started and healed."""
        return claim_lock(self.storage_url, f"claim-{self.study_name}")

    def ask(self, fixed_distributions: dict[str, Any] | None = None) -> optuna.Trial:
        with self.claimed():
            trials = self.get_trials(deepcopy=False)
            queued = any(t.state == TrialState.WAITING for t in trials)  # already in the ledger: it runs next
            if not queued and not self.promote(trials):
                if (taken := self.fresh(trials, TAKEN)) >= self.total:
                    raise StudyFull(f"{taken} of {self.total} trials are finished or running")
                if not self.plan.room_for_trial(trials):
                    raise StudyFull(f"study.max_tokens={self.plan.max_tokens:,} cannot pay for another trial")
            trial = super().ask(fixed_distributions)
        self.asked.add(trial.number)
        return trial

    def promote(self, trials: list[Any]) -> bool:
        """Queue the continuation of a paused configuration that now ranks among the best of its rung, if the budget
        pays for its next rung (halving; promotions come before new trials). Under the claim lock."""
        found = self.promotable(trials)
        if found is None:
            return False
        paused, index = found
        facts = TrialRecord(continues=paused.number, from_rung=index, run_dir=TrialRecord.of(paused).run_dir)
        self.enqueue_trial(dict(paused.params), user_attrs=facts.queued())
        return True

    def promotable(self, trials: list[Any]) -> tuple[Any, int] | None:
        if not self.plan.promotes:
            return None
        found = next_promotion(trials, self.plan.budgets, self.plan.eta)
        idle = not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
        if found is None and idle and self.no_new_trial(trials):
            scored = len(scores_at(trials, self.plan.budgets[-2]))
            most = None if self.plan.max_tokens is not None else max(1, scored // self.plan.eta)
            found = last_promotion(trials, self.plan.budgets, most)
        return found if found is not None and self.plan.room_for_promotion(trials, found[1]) else None

    def fresh(self, trials: list[Any], states: tuple[TrialState, ...]) -> int:
        """Trials in ``states`` that tried a configuration of their own: what ``n_trials`` counts (a continuation of a
        paused configuration is not one)."""
        return sum(t.state in states and TrialRecord.of(t).continues is None for t in trials)

    def no_new_trial(self, trials: list[Any]) -> bool:
        return self.fresh(trials, TAKEN) >= self.total or not self.plan.room_for_trial(trials)

    def exhausted(self) -> bool:
        """Nothing more will start: no trial runs or waits, none is due a promotion, and the total is finished or the
        budget pays for no new trial."""
        trials = self.get_trials(deepcopy=False)
        busy = any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
        if not busy and self.fresh(trials, FINISHED) >= self.total and not self.plan.promotes:
            return True
        return not busy and self.promotable(trials) is None and self.no_new_trial(trials)

    @property
    def beats(self) -> bool:
        """Whether its storage has Optuna's heartbeat; its trials hold leases where it has not."""
        return has_heartbeat(self.storage)

    def started_here(self, trial: optuna.Trial) -> None:
        """Refuse a trial that ``ask`` did not start (see the class docstring)."""
        if trial.number not in self.asked:
            raise PicoError(
                f"optuna {optuna.__version__} started trial {trial.number} without Study.ask, which picollm needs to "
                "keep a study's exact total: install the Optuna that requirements.txt pins"
            )

    def trial_id(self, number: int) -> int:
        """The storage's id of trial ``number`` (Optuna's public lookup, not a private attribute)."""
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our one line per trial says what failed and why
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _storage(exp: Experiment, storage_url: str, create: bool) -> Any:
    s = exp.study
    return open_storage(storage_url, s.heartbeat_interval, s.grace_period, s.max_retry, create=create)


def _load(exp: Experiment, storage_url: str, create: bool, storage: Any = None) -> CappedStudy:
    s = exp.study
    storage = _storage(exp, storage_url, create) if storage is None else storage
    if create:
        optuna.create_study(study_name=s.name, storage=storage, direction="minimize", load_if_exists=True)
    return CappedStudy(
        total=trial_cap(s),
        plan=plan_of(exp),
        storage_url=storage_url,
        storage=storage,
        study_name=s.name,
        sampler=make_sampler(s.sampler, exp.space, s.seed, s.sampler_options),
        pruner=make_pruner(s.pruner, s.pruner_options),
    )


def _opening(exp: Experiment, storage_url: str, step: Callable[[], Any]) -> Any:
    """``step()``, with whatever it raises about the storage or the study as one line."""
    quiet_optuna()
    try:
        return step()
    except PicoError:
        raise
    except KeyError:
        raise PicoError(
            f"no study named {exp.study.name!r} in {mask_url(storage_url)}: check study.name or --study-name, and "
            "--storage"
        ) from None
    except Exception as exc:
        raise PicoError(
            f"cannot open study {exp.study.name!r} in {mask_url(storage_url)}: {mask_url(str(exc))[:200]}"
        ) from None


def reach_storage(exp: Experiment, storage_url: str) -> Any:
    """The storage, opened without creating the study: a bad URL or server is one line before anything else."""
    return _opening(exp, storage_url, lambda: _storage(exp, storage_url, create=True))


def stored_question(storage: Any, exp: Experiment, storage_url: str) -> None:
    """Refuse a run that the existing study of this name does not answer, without creating or writing anything."""
    try:
        study_id = storage.get_study_id_from_name(exp.study.name)
    except KeyError:
        return
    facts = StudyRecord.from_attrs(storage.get_study_user_attrs(study_id))
    _check_space(facts.space or None, exp, storage_url)
    refuse_mix(facts.fingerprint, exp, storage_url)


def open_study(exp: Experiment, storage_url: str, create: bool, storage: Any = None) -> CappedStudy:
    """Create or load the study; refuse one whose search space or fingerprint differs (one line each)."""
    study = _opening(exp, storage_url, lambda: _load(exp, storage_url, create, storage))
    if create:  # peers starting together: one records the question, the others check against it
        with claim_lock(storage_url, f"setup-{exp.study.name}"):
            _record_or_check_space(study, exp, storage_url)
    else:  # a reader (export, analysis, status) never writes
        _record_or_check_space(study, exp, storage_url, record=False)
    return study


def _described(exp: Experiment) -> list[dict[str, Any]]:
    return [p.describe() | {"key": p.key} for p in exp.space]


def _check_space(stored: Any, exp: Experiment, storage_url: str) -> None:
    if stored is not None and stored != _described(exp):
        raise PicoError(
            f"study {exp.study.name!r} in {mask_url(storage_url)} was created with another search space: restore "
            f"that space to resume it, {start_over_hint(exp.study.name)}"
        )


def _record_or_check_space(study: CappedStudy, exp: Experiment, storage_url: str, record: bool = True) -> None:
    stored = StudyRecord.of(study).space or None
    if stored is None and record:
        record_study(study, space=_described(exp), base=exp.base.to_dict(), settings=asdict(exp.study))
    _check_space(stored, exp, storage_url)
    check_fingerprint(study, exp, storage_url)
    if record and StudyRecord.of(study).uid is None:  # a study from before uids gets one at its next sweep
        record_study(study, uid=uuid.uuid4().hex)
    if record:  # the budget may grow between sweeps of one study, as n_trials may
        record_study(study, token_plan=asdict(study.plan))


def trained_base(study: optuna.Study) -> dict[str, Any]:
    """The base config the trials trained with (fallback applied): ``best.yaml`` and confirmations start there."""
    return StudyRecord.of(study).ran_base


def record_trained_base(study: optuna.Study, exp: Experiment) -> None:
    """Once per study (the fingerprint makes every later worker's data the same): what the trials really use."""
    if StudyRecord.of(study).trained_base is None:
        record_study(study, trained_base=exp.base.to_dict(), offline_fallback=exp.extra.get("offline_fallback"))


def enqueue_baseline(study: optuna.Study, exp: Experiment) -> None:
    """Trial 0 is the base config itself, so every study shows its gain over the default."""
    if not study.trials:
        facts = TrialRecord(baseline=True).queued()
        study.enqueue_trial(baseline_params(exp.space, exp.base), user_attrs=facts, skip_if_exists=True)


def sampler_seed(seed: int, salt: str | None) -> int:
    """A worker's sampler seed: the study's own when ``salt`` is None (the first worker of a new study), else derived.

    With one shared seed, workers started together or resumed would all draw the same parameters.
    """
    if salt is None:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{salt}".encode()).digest()[:4], "big")


def with_seed(exp: Experiment, salt: str | None) -> Experiment:
    if exp.study.sampler in ONE_SEQUENCE:  # every worker draws the next point of the study's one sequence
        return exp
    return replace(exp, study=replace(exp.study, seed=sampler_seed(exp.study.seed, salt)))


def counts(study: optuna.Study) -> dict[str, int]:
    out = {state.name: 0 for state in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] += 1
    return out


def finished(study: optuna.Study) -> int:
    """Complete and pruned trials: what ``n_trials`` counts."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


# -- Results folders: one study's each ------------------------------------------------------


OWNER = "study.json"  # which study a results folder holds: its name, uid and (masked) storage


def folder_owner(folder: Path) -> dict[str, Any]:
    """The owner :func:`export_study` wrote into ``folder``; empty where none was (or it cannot be read)."""
    try:
        owner = json.loads((folder / OWNER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def run_ids(trials: list[Any]) -> set[str]:
    """The run records a study's trials wrote: what a trials.csv of that study lists."""
    return {rid for t in trials if (rid := TrialRecord.of(t).run_id)}


def runs_of(study: optuna.Study) -> Callable[[], set[str]]:
    """The study's run ids, read when :func:`belongs_to` asks (only for a folder no uid names)."""
    return lambda: run_ids(study.get_trials(deepcopy=False))


def _listed_runs(folder: Path) -> set[str] | None:
    """The run ids ``folder``'s trials.csv lists (empty without one); None where it cannot be read."""
    try:
        with (folder / "trials.csv").open(newline="", encoding="utf-8") as table:
            return {rid for row in csv.DictReader(table) if (rid := row.get("run_id"))}
    except (FileNotFoundError, NotADirectoryError):  # no table there (a path under a file is refused elsewhere)
        return set()
    except (OSError, ValueError, csv.Error):
        return None


def belongs_to(folder: Path, uid: str | None, runs: Callable[[], set[str]]) -> bool:
    """Whether ``folder`` may hold the results of this study (``uid``: its own, None before its first sweep; ``runs``:
    its trials' run ids, read only for a folder no uid names). From a study's first sweep on, :data:`OWNER` names it by
    uid. A folder naming no uid holds no results yet, or those of a study from before uids: the study whose runs its
    trials.csv lists adopts it."""
    owner = folder_owner(folder).get("uid")
    if owner is not None:
        return owner == uid
    listed = _listed_runs(folder)
    return listed is not None and (not listed or listed <= runs())


def refuse_another_studys_folder(
    folder: Path, name: str, uid: str | None, storage_url: str, runs: Callable[[], set[str]]
) -> None:
    """One line, nothing written, where ``folder`` holds another study's results: one deleted without its files, or
    one of the same name in another storage. Writing there would overwrite its trials.csv and best.yaml."""
    if belongs_to(folder, uid, runs):
        return
    where = folder_owner(folder).get("storage")
    if where in (None, mask_url(storage_url)):
        raise PicoError(
            f"{folder}/ holds the results of an earlier study named {name!r}"
            + (f" in {where}, deleted since" if where else "")
            + "; nothing was written: move that folder away, or set study.out_dir"
        )
    raise PicoError(
        f"{folder}/ holds the results of another study named {name!r} (in {where}); nothing was written: move that "
        "folder away, set study.out_dir, or name this study otherwise (--study-name NAME)"
    )


def check_results_folder(storage: Any, exp: Experiment, storage_url: str) -> bool:
    """:func:`refuse_another_studys_folder` before a sweep creates or resumes its study; whether the study exists."""
    name = exp.study.name
    folder = Path(exp.study.out_dir) / name
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:  # not created yet
        refuse_another_studys_folder(folder, name, None, storage_url, set)
        return False
    uid = StudyRecord.from_attrs(storage.get_study_user_attrs(study_id)).uid
    refuse_another_studys_folder(
        folder, name, uid, storage_url, lambda: run_ids(storage.get_all_trials(study_id, deepcopy=False))
    )
    return True


# -- Deleting a study (`sweep.py delete`): from the storage, through Optuna's public API ------


@dataclass
class StoredStudy:
    """A study as ``sweep.py delete`` names it before it deletes it."""

    name: str
    storage: Any
    counts: dict[str, int]
    export_dir: Path | None  # study.out_dir/<name> (trials.csv, best.yaml, figures, job logs), if it is a folder
    other_dir: Path | None  # that folder, where it holds another study's results: never removed
    runs_dir: str  # tracking.out_dir: the trials' run records

    def summary(self) -> str:
        states = ", ".join(f"{n} {state.lower()}" for state, n in self.counts.items() if n)
        total = sum(self.counts.values())
        return f"{total} trial{'' if total == 1 else 's'}" + (f": {states}" if states else "")


def find_study(name: str, storage_url: str) -> StoredStudy:
    """The study ``name`` in the storage, or one line naming the studies it holds (nothing is created)."""
    quiet_optuna()
    storage = open_storage(storage_url)
    names = optuna.get_all_study_names(storage)
    if name not in names:
        raise PicoError(
            f"no study named {name!r} in {mask_url(storage_url)} (it holds: {', '.join(names) or 'no study'}); "
            "nothing was deleted"
        )
    study = optuna.load_study(study_name=name, storage=storage)
    facts = StudyRecord.of(study)
    out_dir = stored_settings(study, facts).out_dir
    runs_dir = facts.base.get("tracking", {}).get("out_dir") or TrackingConfig.out_dir
    plain = Path(name).name == name and name not in (".", "..")  # a name made elsewhere may be a path: never removed
    folder = Path(out_dir) / name
    found = folder if plain and folder.is_dir() else None
    own = found is not None and belongs_to(found, facts.uid, runs_of(study))
    return StoredStudy(name, storage, counts(study), found if own else None, None if own else found, runs_dir)


def delete_stored(found: StoredStudy) -> None:
    optuna.delete_study(study_name=found.name, storage=found.storage)
