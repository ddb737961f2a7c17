"""Optuna storage from a URL: SQLite (default), any RDB such as PostgreSQL, or a journal file.

:func:`open_storage` opens it with Optuna's heartbeat and capped retries of dead trials (and never creates a file when
only reading); :func:`claim_lock` is a lock every worker on every machine sharing the storage sees, which keeps a
study's total exact; :func:`mask_url` hides passwords in URLs and messages.
"""

from __future__ import annotations

import contextlib
import hashlib
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


def storage_url(given: str | None = None) -> str:
    """The storage a command or a notebook means: the one given, else $PICOLLM_STORAGE (keeps a password out of shell
    history), else SQLite under results/."""
    return given or os.environ.get("PICOLLM_STORAGE", DEFAULT_STORAGE)


def add_storage_argument(parser: Any) -> None:
    """``--storage URL``, defaulting to :func:`storage_url`."""
    parser.add_argument(
        "--storage",
        default=storage_url(),
        help="sqlite:///path.db | postgresql://user@host/db | journal:path.log "
        f"(default: $PICOLLM_STORAGE or {DEFAULT_STORAGE})",
    )


def mask_url(text: str) -> str:
    """Replace passwords with ``***`` in URLs or whole messages (``user:PASSWORD@``, ``?password=``)."""
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


def _rdb(url: str, create: bool, heartbeat_interval: int, grace_period: int, max_retry: int) -> Any:
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
    """Database storages beat (Optuna's heartbeat); journal files hold leases instead (picollm.sweeps.liveness)."""
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
    """In a forked child: new lock pools, leaving the parent's connections alone (``dispose(close=False)``)."""
    for engine in _LOCK_ENGINES.values():
        engine.dispose(close=False)


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
