"""Optuna storage from a URL: SQLite (default), any RDB such as PostgreSQL, or a journal file.

RDB storages get Optuna's heartbeat, so a trial whose worker died (SIGKILL, a lost machine) is
failed after ``grace_period`` seconds and re-run through ``RetryFailedTrialCallback``. Journal
files have no heartbeat; :mod:`picollm.sweeps.workers` fails such trials itself when their worker process
is gone. Passwords in URLs are masked in every message.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from picollm.errors import StorageError

DEFAULT_STORAGE = "sqlite:///results/optuna.db"
SQLITE_TIMEOUT_S = 60  # many workers on one SQLite file wait for the lock instead of failing
RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb")
_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*:)(?P<password>[^@\s]*)(?P<tail>@)")


def add_storage_argument(parser: Any) -> None:
    """``--storage URL``, defaulting to $PICOLLM_STORAGE (keeps a password out of shell history) or SQLite."""
    parser.add_argument(
        "--storage",
        default=os.environ.get("PICOLLM_STORAGE", DEFAULT_STORAGE),
        help="sqlite:///path.db | postgresql://user@host/db | journal:path.log "
        f"(default: $PICOLLM_STORAGE or {DEFAULT_STORAGE})",
    )


def mask_url(text: str) -> str:
    """Replace any ``scheme://user:password@host`` password with ``***`` (works on error messages too)."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0].lower() if ":" in url else ""


def _journal(path: str) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not path:
        raise StorageError("journal storage needs a path: journal:results/study.log")
    Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(Path(path).expanduser())))


def _rdb(url: str, heartbeat_interval: int, grace_period: int, max_retry: int) -> Any:
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    scheme = _scheme(url)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if scheme == "sqlite":
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    elif scheme in ("postgresql", "postgres"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    return RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
    )


def open_storage(url: str, heartbeat_interval: int = 10, grace_period: int = 30, max_retry: int = 2) -> Any:
    """An Optuna storage for ``url``; malformed or unreachable storage is a one-line :class:`StorageError`."""
    scheme = _scheme(url)
    try:
        if scheme == "journal":
            return _journal(url.split(":", 1)[1])
        if scheme in RDB_SCHEMES:
            return _rdb(url, heartbeat_interval, grace_period, max_retry)
    except StorageError:
        raise
    except Exception as exc:
        detail = mask_url(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise StorageError(f"cannot open storage {mask_url(url)}: {type(exc).__name__}: {detail[:200]}") from None
    raise StorageError(
        f"unknown storage {mask_url(url)!r}: use sqlite:///path.db, postgresql://user@host/db or journal:path.log"
    )
