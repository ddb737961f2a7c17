"""Optuna storage from a URL: SQLite (default), any RDB such as PostgreSQL, or a journal file.

Owns three things a sweep needs from its storage:

- opening it (:func:`open_storage`): RDB storages get Optuna's heartbeat and its
  ``RetryHeartbeatStaleTrialCallback``, so a trial whose worker vanished is failed after ``grace_period``
  seconds and re-queued at most ``max_retry`` times. A read-only opener (``create=False``, the default)
  never creates a database file that is not there.
- a lock that every worker of every machine sharing the storage sees (:func:`claim_lock`): PostgreSQL's
  advisory lock, MySQL's ``GET_LOCK``, and next to SQLite and journal files Optuna's own journal file lock.
  Starting a trial under it is what keeps a study's total exact (see :mod:`picollm.sweeps.studies`).
- masking passwords (:func:`mask_url`) in URLs and in any message that quotes one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from picollm.errors import StorageError

DEFAULT_STORAGE = "sqlite:///results/optuna.db"
SQLITE_TIMEOUT_S = 60  # many workers on one SQLite file wait for the lock instead of failing
LOCK_GRACE_S = 60  # a file lock older than this was left by a dead process: Optuna's lock breaks it
CONNECT_TIMEOUT_S = 10  # an unreachable server is one clear line after this long, not a hang
SERVERS = ("postgresql", "mysql", "mariadb")
_USERINFO = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*:)(?P<password>[^@\s]*)(?P<tail>@)")
_QUERY_SECRET = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd|secret|token|api_key)=)[^&;\s'\"]*", re.IGNORECASE)


def add_storage_argument(parser: Any) -> None:
    """``--storage URL``, defaulting to $PICOLLM_STORAGE (keeps a password out of shell history) or SQLite."""
    parser.add_argument(
        "--storage",
        default=os.environ.get("PICOLLM_STORAGE", DEFAULT_STORAGE),
        help="sqlite:///path.db | postgresql://user@host/db | journal:path.log "
        f"(default: $PICOLLM_STORAGE or {DEFAULT_STORAGE})",
    )


def mask_url(text: str) -> str:
    """Replace passwords with ``***``: ``scheme://user:PASSWORD@host`` and ``?password=PASSWORD``.

    Works on whole messages too, so an error that quotes a URL can be printed as it is.
    """
    text = _USERINFO.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}***", text)


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


def _journal(url: str, create: bool, **_: Any) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = url.split(":", 1)[1]
    if not path:
        raise StorageError("journal storage needs a path: journal:results/study.log")
    return JournalStorage(JournalFileBackend(str(_local_file(path, "journal file", create))))


def _rdb(url: str, create: bool, heartbeat_interval: int, grace_period: int, max_retry: int) -> Any:
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if scheme(url) == "sqlite":
        if sqlite_path(url):
            _local_file(sqlite_path(url), "SQLite file", create)
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    elif scheme(url) == "postgresql":
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    # Optuna creates its tables on first use; processes starting together on a fresh database would race to
    # create them (a duplicate key in PostgreSQL's catalogue, in SQLite's alembic_version), so one goes first.
    # Readers too: opening creates the tables wherever they are missing, so a reader polling a study that is being
    # created races the creator (seen in a full run). Only a SQLite file in a read-only folder, which nobody can be
    # creating, is opened without the lock (the lock is a file beside it).
    path = sqlite_path(url)
    shared = scheme(url) in SERVERS or (path and os.access(Path(path).expanduser().parent, os.W_OK))
    first = claim_lock(url, "optuna-schema") if shared else contextlib.nullcontext()
    with first:
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
        )


OPENERS: dict[str, Callable[..., Any]] = {
    "journal": _journal,
    "sqlite": _rdb,
    "postgresql": _rdb,
    "mysql": _rdb,
    "mariadb": _rdb,
}
HINTS = {"postgres": "write postgresql:// (SQLAlchemy does not know postgres://)"}


def open_storage(
    url: str, heartbeat_interval: int = 10, grace_period: int = 30, max_retry: int = 2, create: bool = False
) -> Any:
    """An Optuna storage for ``url``; malformed or unreachable storage is a one-line :class:`StorageError`.

    ``create=False`` (reading a study for analysis, ``status``, ``export``) refuses a SQLite or journal
    file that does not exist instead of leaving an empty one behind.
    """
    kind = scheme(url)
    if kind in HINTS:
        raise StorageError(f"storage {mask_url(url)}: {HINTS[kind]}")
    if kind not in OPENERS:
        raise StorageError(
            f"unknown storage {mask_url(url)!r}: use sqlite:///path.db, postgresql://user@host/db or journal:path.log"
        )
    try:
        return OPENERS[kind](
            url, create=create, heartbeat_interval=heartbeat_interval, grace_period=grace_period, max_retry=max_retry
        )
    except StorageError:
        raise
    except Exception as exc:
        detail = mask_url(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise StorageError(f"cannot open storage {mask_url(url)}: {type(exc).__name__}: {detail[:200]}") from None


def set_user_attrs(trial: Any, attrs: dict[str, Any]) -> None:
    """Record ``attrs`` on an Optuna trial in one statement where the storage is PostgreSQL or SQLite.

    Optuna writes one key per transaction (a read of the trial, an upsert, a commit); a trial records about a
    dozen keys, which made these writes the harness's largest storage cost per trial (``python -m picollm.bench
    --workers-scale``). Here the trial is checked once and every key goes in one multi-row upsert, the statement
    Optuna itself uses for one key. Other storages, and an Optuna whose internals moved, get Optuna's own one-key
    calls (``tests/test_storage.py`` says which path each storage takes). A finished trial refuses either way
    (``UpdateFinishedTrialError``).
    """
    write = _one_statement_writer(trial) if attrs else None
    if write is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    write(attrs)
    trial._cached_frozen_trial.user_attrs.update(attrs)


def _one_statement_writer(trial: Any) -> Callable[[dict[str, Any]], None] | None:
    """A function writing all attributes of ``trial`` in one upsert, or None where that is not possible."""
    import sqlite3

    from optuna.storages import RDBStorage

    backend = getattr(trial.storage, "_backend", trial.storage)  # under Optuna's cache wrapper
    name = backend.engine.name if isinstance(backend, RDBStorage) else None
    if name not in _UPSERTS or (name == "sqlite" and sqlite3.sqlite_version_info < (3, 24, 0)):
        return None
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        table, find = models.TrialUserAttributeModel, models.TrialModel.find_or_raise_by_id
        scoped, trial_id, _ = backend.scoped_session, trial._trial_id, trial._cached_frozen_trial
    except (ImportError, AttributeError):
        return None

    def write(attrs: dict[str, Any]) -> None:
        rows = [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
        with _create_scoped_session(scoped) as session:
            backend.check_trial_is_updatable(trial_id, find(trial_id, session).state)
            insert = _UPSERTS[name]().insert(table).values(rows)
            excluded = {"value_json": insert.excluded.value_json}
            session.execute(insert.on_conflict_do_update(index_elements=[table.trial_id, table.key], set_=excluded))

    return write


def _postgresql() -> Any:
    from sqlalchemy.dialects import postgresql

    return postgresql


def _sqlite() -> Any:
    from sqlalchemy.dialects import sqlite

    return sqlite


_UPSERTS: dict[str, Callable[[], Any]] = {"postgresql": _postgresql, "sqlite": _sqlite}


# ---------------------------------------------------------------------------------------------
# One lock for every worker sharing a storage.
# ---------------------------------------------------------------------------------------------


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@functools.cache
def _lock_engine(url: str) -> Any:
    """One connection per process kept for locks: a fresh connection per trial cost more than the lock."""
    import sqlalchemy

    timeout = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}} if scheme(url) == "postgresql" else {}
    return sqlalchemy.create_engine(url, pool_size=1, max_overflow=4, pool_pre_ping=True, **timeout)


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
            conn.commit()


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
