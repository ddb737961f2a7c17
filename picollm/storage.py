"""Optuna storage from a URL: SQLite (default), any RDB such as PostgreSQL, or a journal file.

Owns three things a sweep needs from its storage:

- opening it (:func:`open_storage`): RDB storages get Optuna's heartbeat and its
  ``RetryHeartbeatStaleTrialCallback``, so a trial whose worker vanished is failed after ``grace_period``
  seconds and re-queued at most ``max_retry`` times (with the beat and the stale check written in one statement
  each: :mod:`picollm.trial_writes`). A read-only opener (``create=False``, the default) never creates a database
  file that is not there.
- a lock that every worker of every machine sharing the storage sees (:func:`claim_lock`): PostgreSQL's
  advisory lock, MySQL's ``GET_LOCK``, and next to SQLite and journal files Optuna's own journal file lock.
  Starting a trial under it is what keeps a study's total exact (see :mod:`picollm.sweeps.studies`).
- masking passwords (:func:`mask_url`) in URLs and in any message that quotes one.

It also counts trials by state (:func:`count_by_state`) and lists their ids (:func:`trial_ids`) in one statement each,
on a small autocommit pool of its own (:func:`side_connection`), which also checks whether a server's tables are
there before opening it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from picollm.errors import StorageError

DEFAULT_STORAGE = "sqlite:///results/optuna.db"
SQLITE_TIMEOUT_S = 60  # many workers on one SQLite file wait for the lock instead of failing
LOCK_GRACE_S = 60  # a file lock older than this was left by a dead process: Optuna's lock breaks it
CONNECT_TIMEOUT_S = 10  # an unreachable server is one clear line after this long, not a hang
PING_IDLE_S = 1.0  # a pooled server connection idle longer than this is checked before it is used again
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


# What Optuna's RDBStorage imports on first use (its lazy imports): about 0.3 s, the most of a cold open.
RDB_MODULES = (
    "sqlalchemy.orm",
    "alembic.command",
    "alembic.config",
    "alembic.migration",
    "alembic.script",
    "optuna.storages._rdb.models",
)


def import_rdb_modules() -> None:
    """Import :data:`RDB_MODULES` now: before the schema lock rather than under it, where workers starting together
    waited for each other's imports one after another."""
    for name in RDB_MODULES:
        importlib.import_module(name)


def _rdb(url: str, create: bool, heartbeat_interval: int, grace_period: int, max_retry: int) -> Any:
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    import_rdb_modules()
    from picollm.trial_writes import OneStatementRDBStorage

    engine_kwargs: dict[str, Any] = {}
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
    # creating, is opened without the lock (the lock is a file beside it), and a server whose tables are all there
    # is opened without it and without Optuna's check of each table: workers starting together opened one by one.
    path = sqlite_path(url)
    ready = scheme(url) in SERVERS and _schema_ready(url)
    shared = not ready and (scheme(url) in SERVERS or (path and os.access(Path(path).expanduser().parent, os.W_OK)))
    first = claim_lock(url, "optuna-schema") if shared else contextlib.nullcontext()
    with first:
        storage = OneStatementRDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
            skip_table_creation=ready,
        )
    if scheme(url) in SERVERS:
        ping_when_idle(storage.engine, PING_IDLE_S)
    return storage


def _schema_ready(url: str) -> bool:
    """Whether Optuna has finished creating its tables on this server: the Alembic stamp, which it writes after the
    tables and the version row, is there. A server that cannot be reached raises, as opening it would."""
    import sqlalchemy

    try:
        with side_connection(url) as conn:
            return conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).first() is not None
    except sqlalchemy.exc.ProgrammingError:  # no such table: a new database
        return False


def ping_when_idle(engine: Any, idle_s: float) -> None:
    """SQLAlchemy's pre-ping, for connections that sat idle in the pool longer than ``idle_s`` only.

    A server connection can be gone after a restart, a failover or an idle timeout; SQLAlchemy's ``pool_pre_ping``
    finds out by sending ``SELECT 1`` at every checkout. Optuna checks a connection out for every storage call, so
    that was one extra round trip per call, about 30 of the 145 a dry-run trial made (``python -m picollm.bench
    --workers-scale``). A connection used milliseconds ago is not worth checking; one that waited out a trial's
    training is, and a failed check makes the pool reconnect, as with ``pool_pre_ping``. A server restart or failover
    is down for longer than ``idle_s``, so connections it dropped have been idle that long when it is back; only a
    call in flight while the server goes down fails, as it would with ``pool_pre_ping``.
    """
    from sqlalchemy import event, exc

    @event.listens_for(engine, "checkin")
    def _idle_from(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check_after_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < idle_s:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as err:  # the pool replaces the connection and tries again
            raise exc.DisconnectionError(f"idle connection is gone: {type(err).__name__}") from err


def count_by_state(study: Any, states: Any, connection: Any = None) -> dict[Any, int]:
    """How many of the study's trials are in each of ``states`` (every one of them a key, 0 included).

    On an RDB storage with a ``connection`` (the claim lock's) it is one grouped ``COUNT``; Optuna's own read fetches
    each unfinished trial with its five related tables, seven statements, to count them. Elsewhere it is Optuna's read.
    """
    from optuna.storages import RDBStorage

    counts = dict.fromkeys(states, 0)
    backend = getattr(study._storage, "_backend", study._storage)  # under Optuna's cache wrapper
    if connection is None or not isinstance(backend, RDBStorage):
        for trial in study._storage.get_all_trials(study._study_id, deepcopy=False, states=tuple(counts)):
            counts[trial.state] += 1
        return counts
    rows = connection.execute(_trials_query("count"), {"study_id": study._study_id, "states": list(counts)})
    counts.update({state: int(n) for state, n in rows})
    return counts


def trial_ids(study: Any, states: Any, connection: Any) -> list[int]:
    """The ids of the study's trials in ``states``, in one statement on ``connection`` (an RDB storage's)."""
    query = _trials_query("ids")
    return list(connection.execute(query, {"study_id": study._study_id, "states": list(states)}).scalars())


@functools.cache
def _trials_query(kind: str) -> Any:
    """The statement of :func:`count_by_state` (``count``) or :func:`trial_ids` (``ids``), built once: a worker sends
    several per trial, and building one cost more than sending it. Its parameters are ``study_id`` and ``states``."""
    import sqlalchemy
    from optuna.storages._rdb import models

    table = models.TrialModel.__table__
    where = (
        table.c.study_id == sqlalchemy.bindparam("study_id"),
        table.c.state.in_(sqlalchemy.bindparam("states", expanding=True)),
    )
    if kind == "ids":
        return sqlalchemy.select(table.c.trial_id).where(*where)
    return sqlalchemy.select(table.c.state, sqlalchemy.func.count()).where(*where).group_by(table.c.state)


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


# ---------------------------------------------------------------------------------------------
# One lock for every worker sharing a storage.
# ---------------------------------------------------------------------------------------------


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@functools.cache
def _side_engine(url: str) -> Any:
    """A small pool per process for the harness's own statements (locks, counts, one-statement writes), kept: a
    fresh connection per trial cost more than the lock.

    Two connections stay open: a worker's trial and its heartbeat thread write at the same time as a trial starts, and
    with one kept the second was opened and closed again for every trial (a new server process each time: ``python -m
    picollm.bench --workers-scale`` counted 51 connections in 50 trials). In autocommit, so taking the lock, a count
    under it and letting it go are one round trip each, and a count sees every trial committed before it.
    """
    import sqlalchemy

    timeout = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}} if scheme(url) == "postgresql" else {}
    engine = sqlalchemy.create_engine(
        url, pool_size=2, max_overflow=4, isolation_level="AUTOCOMMIT", pool_reset_on_return=None, **timeout
    )
    ping_when_idle(engine, PING_IDLE_S)
    return engine


@contextlib.contextmanager
def side_connection(url: str) -> Iterator[Any]:
    """An autocommit connection to a database server's ``url`` (counts, trial ids, the schema check, the one-statement
    writes of :mod:`picollm.trial_writes`); None for files."""
    if scheme(url) not in SERVERS:
        yield None
        return
    with _side_engine(url).connect() as conn:
        yield conn


@contextlib.contextmanager
def _sql_lock(url: str, name: str, acquire: str, release: str) -> Iterator[Any]:
    import sqlalchemy

    params = {"key": _lock_key(name), "name": name[:64]}
    with _side_engine(url).connect() as conn:
        conn.execute(sqlalchemy.text(acquire), params)
        try:
            yield conn
        finally:
            conn.execute(sqlalchemy.text(release), params)


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[Any]:
    from optuna.storages.journal import JournalFileOpenLock

    lock = JournalFileOpenLock(str(Path(path).expanduser()), grace_period=LOCK_GRACE_S)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


LOCKS: dict[str, Callable[[str, str], contextlib.AbstractContextManager[Any]]] = {
    "postgresql": lambda url, name: _sql_lock(
        url, name, "SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)"
    ),
    "mysql": lambda url, name: _sql_lock(url, name, "SELECT GET_LOCK(:name, -1)", "SELECT RELEASE_LOCK(:name)"),
    "mariadb": lambda url, name: _sql_lock(url, name, "SELECT GET_LOCK(:name, -1)", "SELECT RELEASE_LOCK(:name)"),
    "sqlite": lambda url, name: _file_lock(f"{sqlite_path(url) or '.picollm-memory'}.{name}"),
    "journal": lambda url, name: _file_lock(f"{url.split(':', 1)[1]}.{name}"),
}


def claim_lock(url: str, name: str) -> contextlib.AbstractContextManager[Any]:
    """A lock named ``name`` that every process using ``url`` shares, on this machine or any other.

    It yields the lock's database connection on a database server (for :func:`count_by_state`), else None.
    """
    return LOCKS[scheme(url)](url, name)
