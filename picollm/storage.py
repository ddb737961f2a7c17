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


def _rdb(url: str, create: bool, heartbeat_interval: int, grace_period: int, max_retry: int) -> Any:
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

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
    # creating, is opened without the lock (the lock is a file beside it).
    path = sqlite_path(url)
    shared = scheme(url) in SERVERS or (path and os.access(Path(path).expanduser().parent, os.W_OK))
    first = claim_lock(url, "optuna-schema") if shared else contextlib.nullcontext()
    with first:
        storage = RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
        )
    if scheme(url) in SERVERS:
        ping_when_idle(storage.engine, PING_IDLE_S)
    return storage


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


def count_trials(study: Any, states: Any, connection: Any = None) -> int:
    """How many of the study's trials are in ``states`` (see :func:`count_by_state`)."""
    return sum(count_by_state(study, states, connection).values())


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
    import sqlalchemy
    from optuna.storages._rdb import models

    table = models.TrialModel.__table__
    query = (
        sqlalchemy.select(table.c.state, sqlalchemy.func.count())
        .where(table.c.study_id == study._study_id, table.c.state.in_(list(counts)))
        .group_by(table.c.state)
    )
    counts.update({state: int(n) for state, n in connection.execute(query)})
    return counts


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
    --workers-scale``). Here every key goes in one multi-row upsert that writes only while the trial is unfinished
    (:func:`_unfinished_trial_writer`). Other storages, and an Optuna whose internals moved, get Optuna's own
    one-key calls (``tests/test_storage.py`` says which path each storage takes). A finished trial refuses either
    way (``UpdateFinishedTrialError``).
    """
    write = _unfinished_trial_writer(trial) if attrs else None
    if write is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    write("TrialUserAttributeModel", [{"key": k, "value_json": json.dumps(v)} for k, v in attrs.items()], "key")
    trial._cached_frozen_trial.user_attrs.update(attrs)


def report_intermediate(trial: Any, value: float, step: int) -> None:
    """``trial.report(value, step)``, in one statement where the storage is PostgreSQL or SQLite.

    Optuna's report reads the trial, looks the step up, inserts and commits: five round trips at every periodic
    validation loss, the largest part of what pruning costs per trial. Here it is one insert that writes only while
    the trial is unfinished (:func:`_unfinished_trial_writer`), stored as Optuna stores it. A step reported before,
    a negative step, other storages and an Optuna whose internals moved get Optuna's own ``report`` (its warning,
    its error, its write).
    """
    value, step = float(value), int(step)
    write = _unfinished_trial_writer(trial)
    if write is None or step < 0 or step in trial._cached_frozen_trial.intermediate_values:
        trial.report(value, step)
        return
    from optuna.storages._rdb import models

    stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
    row = {"step": step, "intermediate_value": stored, "intermediate_value_type": kind}
    write("TrialIntermediateValueModel", [row], "step")
    trial._cached_frozen_trial.intermediate_values[step] = value


def _unfinished_trial_writer(trial: Any) -> Callable[[str, list[dict[str, Any]], str], None] | None:
    """``write(model, rows, key)``: upsert ``rows`` into the table of Optuna's ``model`` for ``trial`` (unique on
    trial and ``key``) in one autocommitted statement, or None where that is not possible.

    The rows are selected together with the trial, filtered on an unfinished state, so a trial another worker has
    finished takes nothing: the same check Optuna makes with a read of its own before each write.
    """
    import sqlite3

    from optuna.storages import RDBStorage

    backend = getattr(trial.storage, "_backend", trial.storage)  # under Optuna's cache wrapper
    name = backend.engine.name if isinstance(backend, RDBStorage) else None
    if name not in _UPSERTS or (name == "sqlite" and sqlite3.sqlite_version_info < (3, 35, 0)):  # RETURNING
        return None
    try:  # the internals this path relies on
        from optuna.storages._rdb import models

        for model in ("TrialModel", "TrialUserAttributeModel", "TrialIntermediateValueModel"):
            getattr(models, model).__table__  # noqa: B018
        trial_id, number = trial._trial_id, trial.number
    except (ImportError, AttributeError):
        return None

    def write(model: str, rows: list[dict[str, Any]], key: str) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        columns = tuple(rows[0])
        upsert = _upsert_statement(name, model, columns, len(rows), key)
        params = {f"{c}_{i}": row[c] for i, row in enumerate(rows) for c in columns}
        with _autocommit_connection(backend) as conn:  # the one statement is its own transaction
            written = conn.execute(upsert, params | {"id": trial_id}).all()
        if len(written) != len(rows):
            raise UpdateFinishedTrialError(f"Trial#{number} has already finished and can not be updated.")

    return write


@contextlib.contextmanager
def _autocommit_connection(backend: Any) -> Iterator[Any]:
    """On a server, a connection of the side pool, which is in autocommit already: switching one of Optuna's pooled
    connections to autocommit and back costs five more driver calls for each write. On a file, one of Optuna's,
    switched (a second pool would hold a second lock on the file)."""
    if scheme(backend.url) in SERVERS:
        with side_connection(backend.url) as conn:
            yield conn
        return
    with backend.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


@functools.cache
def _upsert_statement(dialect: str, model: str, columns: tuple[str, ...], n_rows: int, key: str) -> Any:
    """The statement of :func:`_unfinished_trial_writer` for rows of this shape, built once: building it cost more
    than sending it. Its parameters are ``id`` and ``<column>_<row>``."""
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    table, trials = getattr(models, model).__table__, models.TrialModel.__table__
    selects = [
        sqlalchemy.select(
            *(
                sqlalchemy.cast(sqlalchemy.bindparam(f"{c}_{i}", type_=table.c[c].type), table.c[c].type).label(c)
                for c in columns
            )
        )
        for i in range(n_rows)
    ]
    new = (sqlalchemy.union_all(*selects) if n_rows > 1 else selects[0]).subquery("new")
    unfinished = (TrialState.RUNNING, TrialState.WAITING)  # what Optuna's check_trial_is_updatable lets through
    source = (
        sqlalchemy.select(trials.c.trial_id, *(new.c[c] for c in columns))
        .join_from(trials, new, sqlalchemy.true())
        .where(trials.c.trial_id == sqlalchemy.bindparam("id"), trials.c.state.in_(unfinished))
    )
    insert = _UPSERTS[dialect]().insert(table).from_select(["trial_id", *columns], source)
    return insert.on_conflict_do_update(
        index_elements=[table.c.trial_id, table.c[key]],
        set_={c: insert.excluded[c] for c in columns if c != key},
    ).returning(table.c.trial_id)


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
def _side_engine(url: str) -> Any:
    """A small pool per process for the harness's own statements (locks, counts), kept: a fresh connection per trial
    cost more than the lock.

    In autocommit, so taking the lock, a count under it and letting it go are one round trip each, and a count sees
    every trial committed before it.
    """
    import sqlalchemy

    timeout = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}} if scheme(url) == "postgresql" else {}
    engine = sqlalchemy.create_engine(
        url, pool_size=1, max_overflow=4, isolation_level="AUTOCOMMIT", pool_reset_on_return=None, **timeout
    )
    ping_when_idle(engine, PING_IDLE_S)
    return engine


@contextlib.contextmanager
def side_connection(url: str) -> Iterator[Any]:
    """An autocommit connection to a database server's ``url`` (for :func:`count_trials`); None for files."""
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

    It yields the lock's database connection on a database server (for :func:`count_trials`), else None.
    """
    return LOCKS[scheme(url)](url, name)
