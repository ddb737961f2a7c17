"""Fault injection: real processes, real signals, real files, a real PostgreSQL server — nothing lost.

Each test carries ``@pytest.mark.fault(<class>)``; the run ends with a per-class summary line.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
import uuid
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState

from picollm import fileio, tracking
from picollm import trainer as train_mod
from picollm.checkpoint import load_run
from picollm.cli import run_cli
from picollm.cli import train as train_cli
from picollm.config import load_config
from picollm.data import load_token_data
from picollm.errors import ConfigError, PicoError
from picollm.sweeps import load_experiment, open_study, run_sweep
from picollm.sweeps.experiment import parse_space
from picollm.sweeps.study import counts
from tests.conftest import ROOT, postgres_url
from tests.sweeps import SWEEP, retry_origin, sweep_argv, sweep_cli, sweep_here, worker_pid, write_experiment


def storage_url(kind: str, tmp_path: Path) -> str:
    if kind == "postgresql":
        return postgres_url()
    return {"sqlite": f"sqlite:///{tmp_path}/s.db", "journal": f"journal:{tmp_path}/s.log"}[kind]


# A sweep whose training steps take STEP_DELAY_S each: slow enough to be caught mid-trial, while its config (and
# so its fingerprint) stays that of a fast study that the same command resumes at full speed afterwards.
STEP_DELAY_S = 0.5
SLOW_SWEEP = f"""
import runpy, sys, time
import picollm.trainer as t
step = t.train_step
t.train_step = lambda *a, **k: (time.sleep({STEP_DELAY_S}), step(*a, **k))[1]
sys.argv = [{SWEEP!r}, *sys.argv[1:]]
runpy.run_path({SWEEP!r}, run_name="__main__")
"""


def start_sweep(path: Path, storage: str, *args: str, env: dict | None = None, slow: bool = True) -> subprocess.Popen:
    """``python sweep.py ...`` in its own process; ``slow``: each training step sleeps (single worker only)."""
    command = [sys.executable, "-c", SLOW_SWEEP] if slow else [sys.executable, SWEEP]
    return subprocess.Popen(
        [*command, *sweep_argv(path, storage, *args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wait_for_running_trial(
    proc: subprocess.Popen, path: Path, storage: str, name: str, timeout: float = 300, settle_s: float = 1.5
) -> object:
    """The first running trial of ``proc``'s sweep once it has logged a step (and ``settle_s`` more, for a heartbeat
    or two); fails at once if ``proc`` ended."""
    exp = load_experiment(str(path), [], study_name=name)
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.5)
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the sweep ended (exit {proc.returncode}) before a trial was caught running:\n{out}\n{err}")
        try:
            study = open_study(exp, storage, create=False)
        except Exception:
            continue
        running = [t for t in study.trials if t.state == TrialState.RUNNING and "run_dir" in t.user_attrs]
        metrics = [Path(t.user_attrs["run_dir"]) / "metrics.jsonl" for t in running]
        if running and metrics[0].is_file() and metrics[0].stat().st_size > 0:
            time.sleep(settle_s)
            return running[0]
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"no trial was caught running in {timeout:.0f} s; the sweep's output:\n{out}\n{err}")


def slow_experiment(tmp_path: Path, n_trials: int = 3) -> Path:
    """Short trials: 16 steps each, so a slowed sweep (``start_sweep``) is caught mid-trial for seconds."""
    return write_experiment(tmp_path, study={"n_trials": n_trials, "budget_tokens": 4096, "reports": 4})


def resume(capfd: pytest.CaptureFixture[str], path: Path, storage: str, name: str) -> object:
    """Re-run the same sweep command, at full speed, to its total; the study afterwards."""
    done = sweep_here(capfd, path, storage, "--study-name", name)
    assert done.returncode == 0, done.stderr
    return open_study(load_experiment(str(path), [], study_name=name), storage, create=False)


# ------------------------------------------------------------------------------------------------
# Worker killed.
# ------------------------------------------------------------------------------------------------


@pytest.mark.fault("worker killed (SIGKILL)")
@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql"])
def test_killed_worker_leaves_no_zombie_and_its_trial_is_rerun(
    tmp_path: Path, kind: str, capfd: pytest.CaptureFixture[str]
) -> None:
    storage, name = storage_url(kind, tmp_path), f"k{uuid.uuid4().hex[:8]}"
    path = slow_experiment(tmp_path)
    first = start_sweep(path, storage, "--study-name", name)
    killed = wait_for_running_trial(first, path, storage, name)
    killed_dir = Path(killed.user_attrs["run_dir"])
    deadline = time.time() + 120
    while not list((killed_dir / "checkpoints").glob("step-*.pt")) and time.time() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    study = resume(capfd, path, storage, name)
    c = counts(study)
    assert c["RUNNING"] == 0 and c["COMPLETE"] == 3
    assert study.trials[killed.number].state == TrialState.FAIL
    retry = [t for t in study.trials if retry_origin(t) == killed.number]
    assert len(retry) == 1 and retry[0].params == killed.params and retry[0].state == TrialState.COMPLETE
    # The retry went on from the killed run's last checkpoint, in a record of its own.
    meta = json.loads((Path(retry[0].user_attrs["run_dir"]) / "meta.json").read_text())
    assert meta["resumed_from"] == str(killed_dir) and meta["resumed_at_step"] > 0
    assert not (killed_dir / "summary.json").exists()
    finished_before = [t for t in study.trials if t.number < killed.number]
    assert all(t.state == TrialState.COMPLETE and t.value is not None for t in finished_before)


@pytest.mark.fault("worker killed (SIGKILL)")
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_trial_whose_host_vanished_is_failed_and_retried(
    tmp_path: Path, kind: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """Another machine's worker cannot be checked by pid: the heartbeat (RDB) or lease (journal) expires."""
    storage, name = storage_url(kind, tmp_path), "hb"
    path = slow_experiment(tmp_path, n_trials=2)
    first = start_sweep(path, storage, "--study-name", name, env={"PICOLLM_WORKER_HOST": "another-machine"})
    killed = wait_for_running_trial(first, path, storage, name)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    study = resume(capfd, path, storage, name)  # bounded: sweep_here's timeout ends the test process
    assert counts(study)["RUNNING"] == 0 and counts(study)["COMPLETE"] == 2
    assert study.trials[killed.number].state == TrialState.FAIL
    retried = [t for t in study.trials if retry_origin(t) == killed.number]
    assert retried and retried[0].params == killed.params


# ------------------------------------------------------------------------------------------------
# Interrupted.
# ------------------------------------------------------------------------------------------------


@pytest.mark.fault("interrupted (SIGINT/SIGTERM)")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_marks_flushes_exports_and_resumes(
    tmp_path: Path, sig: signal.Signals, capfd: pytest.CaptureFixture[str]
) -> None:
    storage, name = storage_url("sqlite", tmp_path), "intr"
    path = slow_experiment(tmp_path, n_trials=2)
    proc = start_sweep(path, storage, "--study-name", name)
    victim = wait_for_running_trial(proc, path, storage, name)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"trial {victim.number:3d} FAIL" in err and "(interrupted)" in err and "\ninterrupted" in err
    study = open_study(load_experiment(str(path), [], study_name=name), storage, create=False)
    assert study.trials[victim.number].state == TrialState.FAIL
    assert study.trials[victim.number].user_attrs["fail_reason"] == "interrupted"
    record = Path(victim.user_attrs["run_dir"])
    assert json.loads((record / "summary.json").read_text())["status"] == "interrupted"
    rows = (record / "metrics.jsonl").read_text().splitlines()
    assert rows and all(json.loads(line) for line in rows)  # flushed, every line whole
    assert (tmp_path / "studies" / name / "trials.csv").is_file()
    study = resume(capfd, path, storage, name)
    assert counts(study)["COMPLETE"] == 2 and counts(study)["RUNNING"] == 0


# ------------------------------------------------------------------------------------------------
# A trial that fails: raises, NaN, out of memory.
# ------------------------------------------------------------------------------------------------


@pytest.mark.fault("trial fails (raise/NaN/OOM)")
def test_out_of_memory_trial_is_recorded_and_the_study_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_step, calls = train_mod.train_step, {"n": 0}

    def oom_on_third_trial(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 40:  # once, somewhere in a later trial
            raise torch.OutOfMemoryError("simulated: CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_step", oom_on_third_trial)
    path = write_experiment(tmp_path, study={"n_trials": 4})
    run_sweep(load_experiment(str(path), []), storage_url("sqlite", tmp_path), workers=1)
    study = open_study(load_experiment(str(path), []), storage_url("sqlite", tmp_path), create=False)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "OutOfMemoryError" in failed[0].user_attrs["fail_reason"]
    assert counts(study)["COMPLETE"] == 4
    summary = json.loads((Path(failed[0].user_attrs["run_dir"]) / "summary.json").read_text())
    assert summary["status"] == "failed" and "OutOfMemoryError" in summary["reason"]


# ------------------------------------------------------------------------------------------------
# Concurrency.
# ------------------------------------------------------------------------------------------------


@pytest.mark.fault("concurrency (4 workers)")
@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql"])
def test_four_workers_complete_exactly_n_unique_trials(
    tmp_path: Path, kind: str, capfd: pytest.CaptureFixture[str]
) -> None:
    storage, name = storage_url(kind, tmp_path), f"c{uuid.uuid4().hex[:8]}"
    path = write_experiment(tmp_path, study={"n_trials": 8})
    # SQLite is the storage that locks: there the workers' own lines are read, from a process of their own.
    run = sweep_cli if kind == "sqlite" else functools.partial(sweep_here, capfd)
    proc = run(path, storage, "--study-name", name, "--workers", "4", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "database is locked" not in proc.stdout + proc.stderr
    study = open_study(load_experiment(str(path), [], study_name=name), storage, create=False)
    c = counts(study)
    assert c["COMPLETE"] + c["PRUNED"] == 8 and c["RUNNING"] == 0 and c["WAITING"] == 0
    assert len({t.number for t in study.trials}) == len(study.trials)
    assert not any("locked" in str(t.user_attrs.get("fail_reason", "")) for t in study.trials)
    run_ids = [t.user_attrs["run_id"] for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(set(run_ids)) == 8


# ------------------------------------------------------------------------------------------------
# Corrupt or partial files.
# ------------------------------------------------------------------------------------------------


@pytest.mark.fault("corrupt files")
def test_token_cache_with_a_wrong_hash_is_rebuilt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(
        None, ["data.tinystories=null", "data.synthetic=100", "data.tokenizer=bytes", f"data.cache_dir={tmp_path}"]
    )
    first = load_token_data(cfg.data)
    expected = bytes(first.train)
    val_bin = first.cache_path / "val.bin"
    data = bytearray(val_bin.read_bytes())
    data[10] ^= 0xFF  # same size, one byte flipped: only the hash can tell
    val_bin.write_bytes(bytes(data))
    second = load_token_data(cfg.data)
    assert "failed its check" in capsys.readouterr().err
    assert bytes(second.train) == expected and bytes(second.val) != bytes(data)


def test_a_file_written_once_keeps_its_first_writer_and_no_half_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """study.json's stamp: of two writers the first stands; without hard links an exclusive create does the same;
    a failed write leaves neither the file nor its temporary."""
    import errno

    from picollm.fileio import write_json_once

    one, two = tmp_path / "one" / "study.json", tmp_path / "two" / "study.json"
    one.parent.mkdir(), two.parent.mkdir()
    assert write_json_once(one, {"uid": "a"}) and not write_json_once(one, {"uid": "b"})
    assert json.loads(one.read_text()) == {"uid": "a"} and [p.name for p in one.parent.iterdir()] == ["study.json"]

    def link_fails(code: int) -> None:
        def link(src: object, dst: object) -> None:
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "link", link)

    link_fails(errno.EPERM)  # a file system without hard links
    assert write_json_once(two, {"uid": "a"}) and not write_json_once(two, {"uid": "b"})
    assert json.loads(two.read_text()) == {"uid": "a"} and [p.name for p in two.parent.iterdir()] == ["study.json"]
    link_fails(errno.ENOSPC)  # a full disk
    with pytest.raises(OSError):
        write_json_once(tmp_path / "study.json", {"uid": "a"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


@pytest.mark.fault("corrupt files")
def test_a_crash_while_saving_weights_keeps_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synthetic: list[str]
) -> None:
    summary = train_mod.train(load_config(None, [*synthetic, "train.max_steps_per_epoch=3"]))
    run_dir = Path(summary["run_dir"])
    before = (run_dir / "final.pt").read_bytes()

    def crash_midway(obj, path):
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    model, _ = load_run(run_dir, "final")
    with pytest.raises(OSError):
        fileio.atomic_torch_save({"state_dict": model.state_dict()}, run_dir / "final.pt")
    assert (run_dir / "final.pt").read_bytes() == before
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".final.pt")]  # no temp file left
    load_run(run_dir, "final")


@pytest.mark.fault("corrupt files")
def test_malformed_best_yaml_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    best = tmp_path / "best.yaml"
    best.write_text("data:\n  tinystories: null\n  synthetic: [1, 2\nmodel: {type: kgram")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_cli.main, ["--config", str(best)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith(f"error: {best}: malformed YAML") and "\n" not in err


@pytest.mark.fault("corrupt files")
def test_a_corrupt_checkpoint_is_a_clear_error(tmp_path: Path, synthetic: list[str]) -> None:
    summary = train_mod.train(load_config(None, [*synthetic, "train.max_steps_per_epoch=2"]))
    (Path(summary["run_dir"]) / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="unreadable checkpoint"):
        load_run(summary["run_dir"], "best")


# ------------------------------------------------------------------------------------------------
# W&B down.
# ------------------------------------------------------------------------------------------------


def _train_with_wandb(synthetic: list[str], mode: str = "offline") -> tuple[dict, list[str], float]:
    """Train briefly with W&B in ``mode``; the summary, the W&B warnings given, and the seconds it took."""
    cfg = load_config(
        None,
        [
            *[o for o in synthetic if not o.startswith("tracking.wandb")],
            f"tracking.wandb={mode}",
            "train.max_steps_per_epoch=5",
        ],
    )
    start = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train_mod.train(cfg)
    return summary, [str(w.message) for w in caught if "W&B" in str(w.message)], time.time() - start


@pytest.mark.fault("W&B down")
@pytest.mark.parametrize("where", ["init-raises", "init-hangs", "log-raises"])
def test_wandb_failures_cost_one_warning_and_a_bounded_time(
    where: str, synthetic: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    monkeypatch.setattr(tracking, "WANDB_TIMEOUT_S", 2.0)
    if where == "init-raises":
        monkeypatch.setattr(wandb, "init", lambda **kw: (_ for _ in ()).throw(ConnectionError("api.wandb.ai down")))
    elif where == "init-hangs":
        monkeypatch.setattr(wandb, "init", lambda **kw: time.sleep(30))
    else:
        real_init = wandb.init

        def init_with_broken_log(**kw):
            run = real_init(**kw)
            run.log = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("log failed"))
            return run

        monkeypatch.setattr(wandb, "init", init_with_broken_log)
    summary, messages, elapsed = _train_with_wandb(synthetic)
    assert summary["status"] == "finished" and summary["best_val_loss"] is not None
    assert len(messages) == 1, messages
    assert elapsed < 25
    rows = (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    assert sum('"train/loss"' in r for r in rows) == 5  # the local record has everything


@pytest.mark.fault("W&B down")
def test_online_mode_without_network_or_key_goes_on(
    synthetic: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tracking, "WANDB_TIMEOUT_S", 10.0)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    summary, messages, elapsed = _train_with_wandb(synthetic, "online")
    assert summary["status"] == "finished"
    assert len(messages) == 1, messages
    assert elapsed < 30


# ------------------------------------------------------------------------------------------------
# Bad input, property-based.
# ------------------------------------------------------------------------------------------------

_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.sampled_from(["sgd", "adam", 1, 2.5, None]), max_size=4),
)
_spec = st.dictionaries(
    st.sampled_from(["type", "low", "high", "log", "step", "choices", "when", "bogus"]),
    st.one_of(_values, st.sampled_from(["categorical", "float", "int"])),
    max_size=6,
)


@pytest.mark.fault("bad input")
@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["optim.lr", "optim.name", "model.k", "model.block_size", "train.seed"]), _spec, max_size=3
    )
)
def test_search_space_parser_gives_a_space_or_one_clear_error(search: dict) -> None:
    base = load_config(None, ["data.tinystories=null", "data.synthetic=10"]).to_dict()
    try:
        space = parse_space(search, base)
    except ConfigError as exc:
        assert "\n" not in str(exc)
    else:
        assert [p.key for p in space] == list(search)


# ------------------------------------------------------------------------------------------------
# Security.
# ------------------------------------------------------------------------------------------------


@pytest.mark.fault("security")
def test_no_planted_secret_reaches_logs_records_wandb_or_exports(tmp_path: Path) -> None:
    key, password = "planted-wandb-key-7f3a9c", "planted-db-pass-55e1"  # trust auth ignores the password
    url = postgres_url().replace("postgresql://postgres@", f"postgresql://postgres:{password}@")
    path = write_experiment(
        tmp_path, study={"n_trials": 2, "name": f"sec{uuid.uuid4().hex[:6]}"}, tracking={"wandb": "offline"}
    )
    env = {"WANDB_API_KEY": key, "WANDB_MODE": "offline"}
    proc = sweep_cli(path, url, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "postgres:***@" in proc.stdout
    leaks = [
        f
        for f in tmp_path.rglob("*")
        if f.is_file() and (key.encode() in f.read_bytes() or password.encode() in f.read_bytes())
    ]
    assert leaks == []
    assert key not in proc.stdout + proc.stderr and password not in proc.stdout + proc.stderr
    bad = sweep_cli(path, f"postgresql://postgres:{password}@127.0.0.1:1/test", env=env, timeout=120)
    assert bad.returncode == 2 and password not in bad.stdout + bad.stderr and "***" in bad.stderr


@pytest.mark.fault("security")
def test_only_safe_loaders_in_the_source() -> None:
    skipped = {".venv", "tests", "build", "results"}  # an environment, the tests' own fixtures, build outputs
    sources = [p for p in ROOT.glob("**/*.py") if not skipped & set(p.relative_to(ROOT).parts)]
    text = "\n".join(p.read_text() for p in sources)
    assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(", text)
    assert "weights_only=False" not in text and "import pickle" not in text
    assert text.count("torch.load(") == text.count("weights_only=True")


@pytest.mark.fault("interrupted (SIGINT/SIGTERM)")
def test_sigterm_ends_every_worker_of_a_multi_worker_sweep_and_exports(tmp_path: Path) -> None:
    storage, name = storage_url("sqlite", tmp_path), "term"
    path = write_experiment(tmp_path, study={"n_trials": 4, "budget_tokens": 3_000_000, "reports": 100})
    proc = start_sweep(path, storage, "--study-name", name, "--workers", "2", slow=False)  # spawned: long budget
    exp = load_experiment(str(path), [], study_name=name)
    deadline, running = time.time() + 300, []
    while time.time() < deadline:  # both workers inside a trial
        time.sleep(0.5)
        with contextlib.suppress(PicoError):  # the coordinator may not have created the study yet
            running = [t for t in open_study(exp, storage, create=False).trials if t.state == TrialState.RUNNING]
        if len(running) == 2 and all("run_dir" in t.user_attrs for t in running):
            break
    pids = [worker_pid(t) for t in running]
    assert len(set(pids)) == 2
    proc.send_signal(signal.SIGTERM)
    start = time.time()
    while any(_alive(pid) for pid in pids) and time.time() - start < 30:
        time.sleep(0.1)
    assert time.time() - start <= 10, "workers still alive 10 s after SIGTERM"
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert (tmp_path / "studies" / name / "trials.csv").is_file()
    study = open_study(exp, storage, create=False)
    assert counts(study)["RUNNING"] == 0
    assert all(study.trials[t.number].user_attrs["fail_reason"] == "interrupted" for t in running)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has ended


@pytest.mark.fault("worker killed (SIGKILL)")
def test_a_falsely_failed_live_trial_does_not_crash_its_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another worker decides this live trial is stale and fails it: its own worker drops it and goes on."""
    import optuna

    storage = storage_url("sqlite", tmp_path)
    real_train = train_mod.train

    def train_then_lose_the_trial(cfg, *, on_eval=None, extra=None, **kw):
        def hook(tokens: int, loss: float) -> None:
            if extra["trial"]["number"] == 1:  # as another worker would, with its own storage connection
                other = optuna.load_study(study_name="t", storage=storage)
                other.tell(1, state=TrialState.FAIL)
            on_eval(tokens, loss)

        return real_train(cfg, on_eval=hook, extra=extra, **kw)

    monkeypatch.setattr(train_mod, "train", train_then_lose_the_trial)
    path = write_experiment(tmp_path, study={"n_trials": 3})
    outcome = run_sweep(load_experiment(str(path), []), storage, workers=1)
    study = open_study(load_experiment(str(path), []), storage, create=False)
    assert not outcome.interrupted and counts(study)["COMPLETE"] == 3 and counts(study)["RUNNING"] == 0
    assert study.trials[1].state == TrialState.FAIL and study.trials[1].value is None


@pytest.mark.fault("worker killed (SIGKILL)")
@pytest.mark.parametrize(("history", "retried"), [([], True), ([0, 1], False)])
def test_retries_of_a_dead_workers_trial_stop_at_the_cap(tmp_path: Path, history: list[int], retried: bool) -> None:
    from picollm.sweeps.study import fail_dead_local_trials, host

    path = write_experiment(tmp_path, study={"n_trials": 3, "max_retry": 2})
    study = open_study(load_experiment(str(path), []), storage_url("sqlite", tmp_path), create=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial = study.ask()
    trial.set_user_attr("worker", f"{host()}:{int(dead.stdout)}")
    if history:  # as Optuna's retry callback records it: this trial is already the second retry
        study.storage.set_trial_system_attr(study.trial_id(trial.number), "retry_history", history)
    assert fail_dead_local_trials(study, max_retry=2) == [trial.number]
    assert study.trials[trial.number].state == TrialState.FAIL
    assert counts(study)["WAITING"] == (1 if retried else 0)


@pytest.mark.fault("worker killed (SIGKILL)")
def test_a_worker_counting_while_a_dead_trial_is_healed_takes_its_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead trial is failed, then its retry queued: a peer that counted in between started one trial too many (a
    launcher test finished 4 of 3). Healing holds the claim lock, so the peer waits and takes the retry."""
    import threading

    import picollm.sweeps.study as study_mod
    from picollm.sweeps.study import fail_stale, host

    path, url = write_experiment(tmp_path, study={"n_trials": 1, "max_retry": 2}), storage_url("sqlite", tmp_path)
    exp = load_experiment(str(path), [])
    study = open_study(exp, url, create=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial = study.ask()  # the baseline, whose worker is gone
    trial.set_user_attr("worker", f"{host()}:{int(dead.stdout)}")
    real_retry = study_mod.retry

    def slow_retry(*args: object) -> bool:
        time.sleep(1.0)  # failed, not yet re-queued: the window a counting peer saw
        return real_retry(*args)

    monkeypatch.setattr(study_mod, "retry", slow_retry)
    healer = threading.Thread(target=fail_stale, args=(study, 3.0, 2))
    healer.start()
    time.sleep(0.3)
    peer = open_study(exp, url, create=False).ask()
    healer.join()
    trials = open_study(exp, url, create=False).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING]
    assert peer.number == 1 and retry_origin(trials[1]) == 0 and trials[1].params == trials[0].params


def test_each_worker_gets_its_own_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from picollm.sweeps import trial as objective
    from picollm.sweeps import workers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [objective.worker_device(rank, "auto") for rank in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert objective.worker_device(3, "cuda:0") == "cuda:0" and objective.worker_device(1, "cpu") == "cpu"
    exp = load_experiment(str(write_experiment(tmp_path)), [])
    cfg = objective.trial_config(exp, 5, {"optim.lr": 1e-3}, objective.worker_device(3, "auto"), None)
    assert cfg.train.device == "cuda:1" and cfg.tracking.name == "t-t5"  # config.yaml of the run records it
    seen: list[int] = []
    monkeypatch.setattr(workers, "_run_processes", lambda specs, study, progress: seen.extend(s.rank for s in specs))
    new_study = types.SimpleNamespace(get_trials=lambda deepcopy: [])
    workers._work(exp, "sqlite:///unused.db", (3, 1), None, types.SimpleNamespace(study=new_study))
    assert seen == [0, 1, 2]


def test_reading_a_study_from_a_wrong_path_creates_nothing(tmp_path: Path) -> None:
    from picollm.analysis.records import load_study

    with pytest.raises(PicoError, match="no SQLite file at"):
        load_study("quick", f"sqlite:///{tmp_path}/typo.db")
    with pytest.raises(PicoError, match="no journal file at"):
        load_study("quick", f"journal:{tmp_path}/typo.log")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.fault("concurrency (4 workers)")
def test_soak_four_workers_forty_trials_five_rounds() -> None:
    from tests.soak import soak

    rounds = soak(postgres_url(), workers=4, n_trials=40, rounds=5)
    assert all(r.ok for r in rounds), rounds


@pytest.mark.fault("worker stalled (SIGSTOP)")
def test_a_worker_stalled_past_its_grace_period_goes_on(tmp_path: Path) -> None:
    """Under load a worker can miss heartbeats: a peer fails its live trial; when it wakes it must not crash.

    On PostgreSQL: a SQLite file stays locked while a stopped process holds its write lock.
    """
    import optuna

    storage, name = storage_url("postgresql", tmp_path), f"stall{uuid.uuid4().hex[:8]}"
    # Trials of a few seconds (some must be left when the worker is stopped), caught without settling;
    # two of them: the peer's own, then the stalled trial's retry.
    path = write_experiment(tmp_path, study={"n_trials": 2, "budget_tokens": 600_000, "reports": 10})
    proc = start_sweep(path, storage, "--study-name", name, "--workers", "2", slow=False)
    trial = wait_for_running_trial(proc, path, storage, name, settle_s=0.0)
    pid = worker_pid(trial)
    stop_outside_a_transaction(pid, storage)
    try:
        time.sleep(5)  # grace_period is 3 s in tests/sweeps.py
        optuna.storages.fail_stale_trials(optuna.load_study(study_name=name, storage=open_storage_for(storage)))
    finally:
        os.kill(pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    study = open_study(load_experiment(str(path), [], study_name=name), storage, create=False)
    c = counts(study)
    assert c["COMPLETE"] + c["PRUNED"] == 2 and c["RUNNING"] == 0
    assert study.trials[trial.number].state == TrialState.FAIL


def stop_outside_a_transaction(pid: int, url: str, tries: int = 50) -> None:
    """SIGSTOP a worker at a moment when no session holds a transaction open: stopped inside one (a report's insert),
    its row locks would block the peer that fails its trial, and the test would wait on both for ever."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'"
    try:
        for _ in range(tries):
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.1)
            with engine.connect() as conn:
                if not conn.exec_driver_sql(query).scalar():
                    return
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.05)
    finally:
        engine.dispose()
    pytest.fail(f"worker {pid} was inside a transaction at each of {tries} stops")


def open_storage_for(url: str) -> object:
    from picollm.sweeps.study import open_storage

    return open_storage(url, heartbeat_interval=1, grace_period=3, max_retry=2)
