"""Writes to Optuna's own tables in one statement each, where Optuna makes several round trips.

A dry-run trial (``python -m picollm.bench --workers-scale``) showed where the harness's storage time went beyond
plain Optuna: a trial's attributes (Optuna writes one key per transaction), its periodic validation losses (Optuna's
``report`` reads the trial, looks the step up, inserts and commits), its parameters (a read, an insert and a commit
each), its heartbeat (a read, an insert or update and a commit, on a thread Optuna starts for every trial) and the
check for stale trials that Optuna's ``optimize`` runs before every trial (the running trials, then their
heartbeats). Here each is one statement on PostgreSQL and SQLite, written as Optuna would write it to the same
tables, so Optuna, its dashboard and every reader see nothing different. Other storages, and an Optuna whose
internals moved, get Optuna's own calls; ``tests/test_storage.py`` compares the two paths on every storage kind.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from optuna.distributions import BaseDistribution, check_distribution_compatibility, distribution_to_json
from optuna.storages import RDBStorage

from picollm.storage import SERVERS, scheme, side_connection


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


def _unfinished_trial_writer(trial: Any) -> Callable[[str, list[dict[str, Any]], str | None], None] | None:
    """:func:`_writer` for an Optuna trial."""
    backend = getattr(trial.storage, "_backend", trial.storage)  # under Optuna's cache wrapper
    try:
        trial_id = trial._trial_id
    except AttributeError:
        return None
    return _writer(backend, trial_id)


def _writer(backend: Any, trial_id: int) -> Callable[[str, list[dict[str, Any]], str | None], None] | None:
    """``write(model, rows, key)``: insert ``rows`` into the table of Optuna's ``model`` for trial ``trial_id`` in one
    autocommitted statement (an upsert on trial and ``key`` unless ``key`` is None), or None where that is not
    possible.

    The rows are selected together with the trial, filtered on an unfinished state, so a trial another worker has
    finished takes nothing: the same check Optuna makes with a read of its own before each write, and the same error
    (:func:`_refuse`).
    """
    name = backend.engine.name if isinstance(backend, RDBStorage) else None
    if not _in_one_statement(name, returning=True):
        return None

    def write(model: str, rows: list[dict[str, Any]], key: str | None) -> None:
        columns = tuple(rows[0])
        statement = _insert_statement(name, model, columns, len(rows), key)
        params = {f"{c}_{i}": row[c] for i, row in enumerate(rows) for c in columns}
        with _autocommit_connection(backend) as conn:  # the one statement is its own transaction
            written = conn.execute(statement, params | {"id": trial_id}).all()
        if len(written) != len(rows):
            _refuse(backend, trial_id)
            raise RuntimeError(f"trial id {trial_id} took {len(written)} of {len(rows)} rows")  # only a finished one

    return write


@functools.cache
def _in_one_statement(dialect: str | None, returning: bool) -> bool:
    """Whether writes to this dialect go in one statement: it has an upsert (SQLite from 3.24), ``RETURNING`` where the
    write counts the rows it took (SQLite from 3.35), and Optuna's tables are where this module expects them."""
    import sqlite3

    if dialect not in _UPSERTS:
        return False
    if dialect == "sqlite" and sqlite3.sqlite_version_info < ((3, 35, 0) if returning else (3, 24, 0)):
        return False
    try:  # the internals this path relies on
        from optuna.storages._rdb import models

        for model in _MODELS:
            getattr(models, model).__table__  # noqa: B018
    except (ImportError, AttributeError):
        return False
    return True


_MODELS = (
    "TrialModel",
    "TrialUserAttributeModel",
    "TrialIntermediateValueModel",
    "TrialParamModel",
    "TrialHeartbeatModel",
)


def _refuse(backend: Any, trial_id: int) -> None:
    """Optuna's error for a write the trial did not take: ``KeyError`` if there is no such trial, else
    ``UpdateFinishedTrialError`` naming it (a read only when a write was refused)."""
    from optuna.exceptions import UpdateFinishedTrialError

    trial = backend.get_trial(trial_id)  # KeyError, as Optuna's find_or_raise_by_id
    if trial.state.is_finished():
        raise UpdateFinishedTrialError(f"Trial#{trial.number} has already finished and can not be updated.")


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
def _insert_statement(dialect: str, model: str, columns: tuple[str, ...], n_rows: int, key: str | None) -> Any:
    """The statement of :func:`_writer` for rows of this shape (an upsert on trial and ``key``, or with ``key`` None a
    plain insert), built once: building it cost more than sending it. Its parameters are ``id`` and
    ``<column>_<row>``."""
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    table, trials = getattr(models, model).__table__, models.TrialModel.__table__
    selects = [
        sqlalchemy.select(
            *(
                sqlalchemy.cast(
                    sqlalchemy.bindparam(f"{c}_{i}", type_=table.c[c].type), _unbounded(table.c[c].type)
                ).label(c)
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
    if key is None:  # a plain insert: a second row for the same key is refused, as Optuna's insert refuses it
        return insert.returning(table.c.trial_id)
    return insert.on_conflict_do_update(
        index_elements=[table.c.trial_id, table.c[key]],
        set_={c: insert.excluded[c] for c in columns if c != key},
    ).returning(table.c.trial_id)


def _unbounded(column_type: Any) -> Any:
    """The type a value is cast to on its way in: a string column's without its length, because PostgreSQL's cast to
    ``VARCHAR(512)`` cuts a longer value silently, where the insert refuses it as Optuna's own insert does."""
    import sqlalchemy

    bounded = isinstance(column_type, sqlalchemy.String) and not isinstance(column_type, sqlalchemy.Enum)
    return sqlalchemy.String() if bounded and column_type.length is not None else column_type


def _postgresql() -> Any:
    from sqlalchemy.dialects import postgresql

    return postgresql


def _sqlite() -> Any:
    from sqlalchemy.dialects import sqlite

    return sqlite


_UPSERTS: dict[str, Callable[[], Any]] = {"postgresql": _postgresql, "sqlite": _sqlite}


class OneStatementRDBStorage(RDBStorage):
    """Optuna's RDB storage, with a trial's parameters, its heartbeat and the search for stale trials one statement
    each.

    Optuna writes a parameter with a read of the trial, an insert and a commit; it beats with an ORM read, an insert
    (or a second read and an update) and a commit; and it finds stale trials with a read of the running trials, one of
    their heartbeats and a commit. All three are in every trial of a sweep (the heartbeat on its own thread, the stale
    check in ``optimize`` before the trial). Here a parameter is one insert that only an unfinished trial takes, after
    Optuna's own check of its distribution; the beat is one upsert and the search one join, and what is stale is
    decided as Optuna decides it (the server's clock against ``grace_period``).
    """

    def record_heartbeat(self, trial_id: int) -> None:
        if not _in_one_statement(self.engine.name, returning=False):
            super().record_heartbeat(trial_id)
            return
        with _autocommit_connection(self) as conn:
            conn.execute(_heartbeat_upsert(self.engine.name), {"id": trial_id})

    def _set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
        previous_distribution: BaseDistribution | None,
    ) -> None:
        """Optuna's checks and row, in one statement once this process knows the parameter's distribution in the
        study (Optuna's cache passes it from the second trial on); until then Optuna looks it up itself."""
        write = None if previous_distribution is None else _writer(self, trial_id)
        if write is None:
            super()._set_trial_param(trial_id, param_name, param_value_internal, distribution, previous_distribution)
            return
        try:
            check_distribution_compatibility(previous_distribution, distribution)
        except ValueError:
            _refuse(self, trial_id)  # Optuna checks the trial first: a finished one is refused as finished
            raise
        row = {"param_name": param_name, "param_value": param_value_internal}
        write("TrialParamModel", [row | {"distribution_json": distribution_to_json(distribution)}], None)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        if not _in_one_statement(self.engine.name, returning=False):
            return super()._get_stale_trial_ids(study_id)
        assert self.heartbeat_interval is not None  # as Optuna: only a storage with heartbeats looks for stale trials
        grace = timedelta(seconds=self.grace_period or 2 * self.heartbeat_interval)
        with _autocommit_connection(self) as conn:
            rows = conn.execute(_running_heartbeats_query(), {"study_id": study_id}).all()
        # the server's clock, without its zone, as Optuna compares it with the stored (zoneless) beats
        return [trial_id for trial_id, beat, now in rows if now.replace(tzinfo=None) - beat > grace]


@functools.cache
def _heartbeat_upsert(dialect: str) -> Any:
    """Optuna's beat: a row per trial (unique on ``trial_id``) holding the server's time of the last beat."""
    import sqlalchemy
    from optuna.storages._rdb import models

    beats = models.TrialHeartbeatModel.__table__
    insert = (
        _UPSERTS[dialect]().insert(beats).values(trial_id=sqlalchemy.bindparam("id"), heartbeat=sqlalchemy.func.now())
    )
    return insert.on_conflict_do_update(index_elements=[beats.c.trial_id], set_={"heartbeat": sqlalchemy.func.now()})


@functools.cache
def _running_heartbeats_query() -> Any:
    """Each running trial of a study that has beaten, its last beat and the server's time now."""
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    trials, beats = models.TrialModel.__table__, models.TrialHeartbeatModel.__table__
    return (
        sqlalchemy.select(trials.c.trial_id, beats.c.heartbeat, sqlalchemy.func.now())
        .join_from(trials, beats, beats.c.trial_id == trials.c.trial_id)
        .where(trials.c.study_id == sqlalchemy.bindparam("study_id"), trials.c.state == TrialState.RUNNING)
    )
