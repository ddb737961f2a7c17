"""picollm.storage: one-statement trial attributes and the storage-wide lock, on every storage kind."""

from __future__ import annotations

import functools
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import TrialState

from picollm.storage import claim_lock, count_by_state, open_storage
from picollm.trial_writes import report_intermediate, set_user_attrs
from tests.conftest import postgres_url

KINDS = ["sqlite", "journal", "postgresql"]
ONE_STATEMENT = ("sqlite", "postgresql")  # where set_user_attrs writes every attribute in one upsert
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # a bare study.ask, on purpose


def url_of(kind: str, tmp_path: Path) -> str:
    if kind == "postgresql":
        return postgres_url()
    return {"sqlite": f"sqlite:///{tmp_path}/s.db", "journal": f"journal:{tmp_path}/s.log"}[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_attributes_written_together_read_back_like_optunas_own(tmp_path: Path, kind: str) -> None:
    url = url_of(kind, tmp_path)
    study = optuna.create_study(study_name=f"a{uuid.uuid4().hex[:8]}", storage=open_storage(url, create=True))
    trial = study.ask()
    trial.set_user_attr("run_dir", "old")
    attrs = {"run_dir": "runs/x", "tokens": 123, "breakdown": {"train_steps": 1.5}, "note": None, "ok": True}
    one_by_one = []
    trial.set_user_attr = lambda key, value: (one_by_one.append(key), type(trial).set_user_attr(trial, key, value))
    set_user_attrs(trial, attrs)
    assert one_by_one == ([] if kind in ONE_STATEMENT else list(attrs))  # the fast path where there is one
    assert trial.user_attrs == attrs  # the trial object's own view
    assert study.trials[0].user_attrs == attrs  # what another process reads: overwritten, typed, nested
    study.tell(trial, 1.0)
    with pytest.raises(UpdateFinishedTrialError):
        set_user_attrs(trial, {"late": 1})
    assert "late" not in study.trials[0].user_attrs


@pytest.mark.parametrize("kind", KINDS)
def test_intermediate_values_read_back_like_optunas_own(tmp_path: Path, kind: str) -> None:
    url = url_of(kind, tmp_path)
    study = optuna.create_study(study_name=f"i{uuid.uuid4().hex[:8]}", storage=open_storage(url, create=True))
    trial = study.ask()
    optunas = []
    trial.report = lambda value, step: (optunas.append(step), type(trial).report(trial, value, step))
    for step, value in [(0, 4.5), (512, float("inf")), (1024, float("nan")), (2048, -1e-300)]:
        report_intermediate(trial, value, step)
    assert optunas == ([] if kind in ONE_STATEMENT else [0, 512, 1024, 2048])
    with pytest.warns(UserWarning, match="already reported"):
        report_intermediate(trial, 9.0, 512)  # as Optuna: a step is reported once
    stored = study.trials[0].intermediate_values  # what another process reads
    assert stored[0] == 4.5 and stored[512] == float("inf") and stored[1024] != stored[1024] and stored[2048] == -1e-300
    assert trial._cached_frozen_trial.intermediate_values.keys() == stored.keys()
    study.tell(trial, 1.0)
    with pytest.raises(UpdateFinishedTrialError):
        report_intermediate(trial, 3.0, 4096)
    assert 4096 not in study.trials[0].intermediate_values


@pytest.mark.parametrize("kind", ONE_STATEMENT)
def test_parameters_written_in_one_statement_read_back_like_optunas_own(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage(url_of(kind, tmp_path), create=True)
    study = optuna.create_study(study_name=f"q{uuid.uuid4().hex[:8]}", storage=storage)
    space = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "opt": CategoricalDistribution(["sgd", "adam"])}
    first = study.ask(space)  # Optuna's own write: this process does not know the distributions yet
    optunas: list[str] = []
    own = RDBStorage._set_trial_param
    monkeypatch.setattr(RDBStorage, "_set_trial_param", lambda self, *a: (optunas.append(a[1]), own(self, *a))[1])
    second = study.ask(space)
    assert optunas == []  # the second trial's parameters took the one-statement path
    for trial in (first, second):
        stored = study.trials[trial.number]  # what another process reads
        assert stored.params == trial.params and stored.distributions == space
    with pytest.raises(ValueError, match="Cannot set different distribution kind"):  # Optuna's check, still made
        study.ask({"lr": CategoricalDistribution([0.1, 0.2])})
    study.tell(second, 1.0)
    for write in (storage._set_trial_param, functools.partial(own, storage)):  # ours, then Optuna's: the same errors
        with pytest.raises(UpdateFinishedTrialError, match=f"Trial#{second.number} has already finished"):
            write(second._trial_id, "late", 0.5, FloatDistribution(0, 1), FloatDistribution(0, 1))
        with pytest.raises(UpdateFinishedTrialError):  # a finished trial is refused before its distribution
            write(second._trial_id, "lr", 0.5, CategoricalDistribution([0.5]), space["lr"])
        with pytest.raises(KeyError):
            write(10**9, "lr", 0.5, space["lr"], space["lr"])
    assert optunas == []
    assert "late" not in study.trials[second.number].params


@pytest.mark.parametrize("kind", [*ONE_STATEMENT, "postgresql in Tokyo"])
def test_heartbeats_and_stale_trials_agree_with_optunas_own(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = url_of(kind.split()[0], tmp_path)
    if kind.endswith("Tokyo"):  # beats are stored without their zone: the session's zone must not shift them
        url += ("&" if "?" in url else "?") + "options=-c%20timezone%3DAsia/Tokyo"
    storage = open_storage(url, heartbeat_interval=1, grace_period=30, create=True)
    study = optuna.create_study(study_name=f"h{uuid.uuid4().hex[:8]}", storage=storage)
    stale, fresh, done, silent = (study.ask() for _ in range(4))
    optunas = []
    for name in ("record_heartbeat", "_get_stale_trial_ids"):  # Optuna's own, to see that ours replaced it
        own = getattr(RDBStorage, name)
        monkeypatch.setattr(
            RDBStorage, name, lambda self, i, own=own, name=name: (optunas.append(name), own(self, i))[1]
        )
    for trial in (stale, fresh, done, stale, fresh):  # a second beat moves the first one
        storage.record_heartbeat(trial._trial_id)
    study.tell(done, 1.0)
    beats = models.TrialHeartbeatModel.__table__
    with storage.engine.begin() as conn:  # the stale trial's worker went quiet a minute ago
        last = conn.execute(sqlalchemy.select(beats.c.heartbeat).where(beats.c.trial_id == stale._trial_id)).scalar()
        conn.execute(
            beats.update().where(beats.c.trial_id == stale._trial_id).values(heartbeat=last - timedelta(seconds=60))
        )
        ids = [t._trial_id for t in (stale, fresh, done, silent)]
        rows = conn.execute(sqlalchemy.select(beats.c.trial_id).where(beats.c.trial_id.in_(ids))).scalars().all()
    ours = storage._get_stale_trial_ids(study._study_id)
    assert optunas == []
    assert sorted(rows) == sorted({stale._trial_id, fresh._trial_id, done._trial_id})  # one row per trial
    assert ours == [stale._trial_id] == RDBStorage._get_stale_trial_ids(storage, study._study_id)
    assert silent._trial_id not in ours  # never beat: Optuna leaves it alone too


def test_a_value_too_long_for_its_column_is_refused_not_cut() -> None:
    study = optuna.create_study(study_name=f"l{uuid.uuid4().hex[:8]}", storage=open_storage(postgres_url()))
    trial = study.ask()
    with pytest.raises(sqlalchemy.exc.DataError, match="too long"):  # Optuna's own insert refuses it too
        set_user_attrs(trial, {"k" * 600: 1})
    assert study.trials[0].user_attrs == {}  # not stored under its first 512 characters


def test_a_new_database_is_opened_under_the_schema_lock_and_a_ready_one_without(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import picollm.storage as storage_mod

    locks: list[str] = []
    claim = storage_mod.claim_lock
    monkeypatch.setattr(storage_mod, "claim_lock", lambda url, name: (locks.append(name), claim(url, name))[1])
    name = f"picollm_new_{uuid.uuid4().hex[:8]}"
    new = postgres_url().rsplit("/", 1)[0] + f"/{name}"
    with storage_mod.side_connection(postgres_url()) as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        assert not storage_mod._schema_ready(new)  # no tables yet
        optuna.create_study(study_name="s", storage=open_storage(new, create=True))
        assert locks == ["optuna-schema"]  # the opener of a new database took the lock while Optuna made the tables
        assert storage_mod._schema_ready(new)  # Alembic's stamp, written last, is there
        assert optuna.load_study(study_name="s", storage=open_storage(new)).study_name == "s"
        assert locks == ["optuna-schema"]  # a ready one is opened without it
    finally:
        with storage_mod.side_connection(postgres_url()) as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.mark.parametrize("kind", KINDS)
def test_counts_by_state_agree_with_optunas_read(tmp_path: Path, kind: str) -> None:
    url = url_of(kind, tmp_path)
    study = optuna.create_study(study_name=f"c{uuid.uuid4().hex[:8]}", storage=open_storage(url, create=True))
    for state in (TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        study.tell(study.ask(), 1.0 if state == TrialState.COMPLETE else None, state=state)
    study.ask()  # running
    study.enqueue_trial({})  # waiting
    asked = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.PRUNED)
    with claim_lock(url, f"count-{study.study_name}") as connection:  # one grouped COUNT on a server
        counts = count_by_state(study, asked, connection)
    assert counts == {state: sum(t.state == state for t in study.trials) for state in asked}
    assert counts[TrialState.COMPLETE] == 2 and counts[TrialState.WAITING] == 1
    with claim_lock(url, f"count-{study.study_name}") as connection:
        assert count_by_state(study, (TrialState.FAIL, TrialState.WAITING), connection) == {
            TrialState.FAIL: 1,
            TrialState.WAITING: 1,
        }
        study.tell(study.trials[4].number, 2.0)
        assert count_by_state(study, (TrialState.RUNNING,), connection) == {TrialState.RUNNING: 0}  # 0, not absent


@pytest.mark.parametrize("kind", KINDS)
def test_the_claim_lock_admits_one_holder_at_a_time(tmp_path: Path, kind: str) -> None:
    url, name, inside, overlaps = url_of(kind, tmp_path), f"l{uuid.uuid4().hex[:8]}", [0], []

    def hold() -> None:
        for _ in range(5):
            with claim_lock(url, name):
                inside[0] += 1
                overlaps.append(inside[0])
                time.sleep(0.01)
                inside[0] -= 1

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(overlaps) == 15 and max(overlaps) == 1


def test_a_server_connection_dropped_while_idle_is_replaced_before_use(monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlalchemy

    import picollm.storage as storage_mod

    url = postgres_url()
    monkeypatch.setattr(storage_mod, "PING_IDLE_S", 0.05)
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with storage_mod.side_connection(url):  # the lock's own connection predates the drop: later tests use it
        pass
    with admin.connect() as conn:
        since = conn.execute(sqlalchemy.text("SELECT now()")).scalar_one()
        storage = open_storage(url, create=True)
        optuna.create_study(study_name=f"d{uuid.uuid4().hex[:8]}", storage=storage)
        dropped = conn.execute(  # what a server restart or an idle timeout does to the storage's connections
            sqlalchemy.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_start >= :since"
            ),
            {"since": since},
        ).scalar_one()
    assert dropped >= 1
    time.sleep(0.1)
    assert storage.get_all_studies()  # pinged after its idle time, found gone, replaced: no error
