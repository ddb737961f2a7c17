"""Storage (picollm.sweeps.study): Optuna's own storages from a URL, the storage-wide lock, what survives a fork."""

from __future__ import annotations

import gc
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage

from picollm.errors import StorageError
from picollm.sweeps.study import claim_lock, open_storage
from tests.conftest import postgres_url
from tests.sweeps import processes_at_once

KINDS = ["sqlite", "journal", "postgresql"]


def url_of(kind: str, tmp_path: Path) -> str:
    if kind == "postgresql":
        return postgres_url()
    return {"sqlite": f"sqlite:///{tmp_path}/s.db", "journal": f"journal:{tmp_path}/s.log"}[kind]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_database_storage_is_optunas_own_with_its_heartbeat(tmp_path: Path, kind: str) -> None:
    storage = open_storage(url_of(kind, tmp_path), heartbeat_interval=7, grace_period=21, create=True)
    assert type(storage) is RDBStorage  # not a subclass: every write is Optuna's
    assert storage.get_heartbeat_interval() == 7


def test_a_new_database_is_opened_under_the_schema_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    import picollm.sweeps.study as storage_mod

    locks: list[str] = []
    claim = storage_mod.claim_lock
    monkeypatch.setattr(storage_mod, "claim_lock", lambda url, name: (locks.append(name), claim(url, name))[1])
    name = f"picollm_new_{uuid.uuid4().hex[:8]}"
    new = postgres_url().rsplit("/", 1)[0] + f"/{name}"
    admin = sqlalchemy.create_engine(postgres_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        optuna.create_study(study_name="s", storage=open_storage(new, create=True))
        assert locks == ["optuna-schema"]  # the opener took the lock while Optuna made the tables
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.dispose()


def test_six_processes_opening_a_new_database_together_all_succeed(tmp_path: Path) -> None:
    """Optuna creates its tables on first use; without the schema lock, openers racing on a new SQLite file collide
    on alembic_version."""
    url = f"sqlite:///{tmp_path}/fresh.db"
    with processes_at_once(6) as pool:
        names = pool.starmap(_create_one, [(url, i) for i in range(6)])
    assert sorted(optuna.get_all_study_names(url)) == sorted(names)


def _create_one(url: str, i: int) -> str:
    optuna.create_study(study_name=f"s{i}", storage=open_storage(url, create=True))
    return f"s{i}"


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


def test_looking_at_a_server_study_again_and_again_holds_one_pool() -> None:
    """A launcher, a test or a notebook polls a study: no look may leave a pool of its own, open until the garbage
    collector breaks its cycles, on a server that admits about 100 clients."""
    tag = f"picollm-poll-{uuid.uuid4().hex[:8]}"
    url = f"{postgres_url()}?application_name={tag}"  # tags this test's connections on the server
    optuna.create_study(study_name=tag, storage=open_storage(url, create=True))
    admin = sqlalchemy.create_engine(postgres_url(), isolation_level="AUTOCOMMIT")
    gc.disable()  # no collection during the looks: what they leave stays visible
    try:
        for _ in range(20):
            assert optuna.load_study(study_name=tag, storage=open_storage(url)).trials == []
        with admin.connect() as conn:
            query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = :tag"
            held = conn.execute(sqlalchemy.text(query), {"tag": tag}).scalar_one()
    finally:
        gc.enable()
        admin.dispose()
    assert 1 <= held <= 3  # Optuna's pool and the schema lock's connection; 2 more per look without reuse


def test_threads_opening_one_server_url_at_once_share_one_storage() -> None:
    url = f"{postgres_url()}?application_name=picollm-threads-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(8) as pool:
        opened = list(pool.map(lambda _: open_storage(url), range(8)))
    assert all(storage is opened[0] for storage in opened)


def test_a_server_gone_since_the_first_open_is_still_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"{postgres_url()}?application_name=picollm-gone-{uuid.uuid4().hex[:8]}"
    engine = open_storage(url).engine

    def refused() -> None:
        raise sqlalchemy.exc.OperationalError("connect", {}, Exception("connection refused"))

    monkeypatch.setattr(engine, "connect", refused)
    with pytest.raises(StorageError, match=r"cannot open storage .*connection refused"):
        open_storage(url)


def test_the_lock_and_the_storage_work_in_a_process_forked_after_using_them() -> None:
    """A forked child must not talk over its parent's pooled connections: both would corrupt them or hang."""
    url, name = postgres_url(), f"f{uuid.uuid4().hex[:8]}"
    with claim_lock(url, name):  # the parent's pools now hold open server connections
        open_storage(url).get_all_studies()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: take the lock twice and read the storage on its own connections, then report
        code = 1
        try:
            for _ in range(2):
                with claim_lock(url, name):
                    open_storage(url).get_all_studies()
            code = 0
        finally:
            os.write(write, bytes([code]))
            os._exit(code)
    os.close(write)
    for _ in range(3):  # meanwhile the parent keeps using its own connections
        with claim_lock(url, name):
            open_storage(url).get_all_studies()
            time.sleep(0.01)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 1) == b"\x00" and os.waitstatus_to_exitcode(status) == 0
    with claim_lock(url, name):  # and the parent's connections are still good afterwards
        open_storage(url).get_all_studies()


def test_a_server_connection_dropped_while_idle_is_replaced_before_use() -> None:
    tag = f"picollm-drop-{uuid.uuid4().hex[:8]}"
    url = f"{postgres_url()}?application_name={tag}"  # tags the storage's connections, and no one else's
    storage = open_storage(url, create=True)
    optuna.create_study(study_name=tag, storage=storage)
    admin = sqlalchemy.create_engine(postgres_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # what a server restart or an idle timeout does to the storage's connections
        query = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :tag"
        dropped = conn.execute(sqlalchemy.text(query), {"tag": tag}).scalar_one()
    admin.dispose()
    assert dropped >= 1
    assert tag in [s.study_name for s in storage.get_all_studies()]  # pinged, found gone, replaced: no error


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgres://u@h/db", "write postgresql://"),
        ("mongodb://h/db", "unknown storage"),
        ("journal:", "journal storage needs a path"),
    ],
)
def test_a_bad_url_is_one_line(url: str, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        open_storage(url, create=True)


def test_a_reader_creates_no_file(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="nothing has been created"):
        open_storage(f"sqlite:///{tmp_path}/missing.db")
    assert not list(tmp_path.iterdir())
