"""``sweep.py launch``: a job array through submitit's local executor against a real PostgreSQL.

The Slurm path is the same code with ``launcher.name: slurm``; the local executor runs the same
pickled job as real subprocesses, so kills, requeues and the environment are real here too.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from picollm.errors import ConfigError
from picollm.sweeps.confirm import leader
from picollm.sweeps.experiment import load_experiment
from picollm.sweeps.export import recorded_confirmation
from picollm.sweeps.launch import SweepJob, executor_parameters, load_launcher, parse_launcher
from picollm.sweeps.study import open_storage
from picollm.sweeps.trial import worker_device
from tests.conftest import ROOT
from tests.sweeps import SWEEP, retry_origin, sweep_cli, worker_pid, write_experiment

LOCAL = ["--set", "launcher.name=local"]


@pytest.fixture
def postgres() -> str:
    """The test database; under CI a missing server is a failure, never a skip."""
    url = os.environ.get("PICOLLM_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but PICOLLM_TEST_POSTGRES_URL is not set")
        pytest.skip("set PICOLLM_TEST_POSTGRES_URL to test launching against PostgreSQL")
    return url


def with_password(url: str, password: str) -> str:
    """The same server with a password in the URL (trust authentication accepts any)."""
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def start_launch(path: Path, storage: str, *args: str) -> subprocess.Popen:
    """``python sweep.py launch`` with the URL in PICOLLM_STORAGE, as the README tells users."""
    return subprocess.Popen(
        [sys.executable, SWEEP, "launch", "--config", str(path), *LOCAL, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PICOLLM_STORAGE": storage},
    )


def load(storage: str, name: str) -> optuna.Study:
    """Through the harness's opener: this process's one pool for the server, however often a test polls."""
    return optuna.load_study(study_name=name, storage=open_storage(storage))


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


# ------------------------------------------------------------------------------------------------
# The launcher block and the storage check: one clear line, nothing submitted.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("scheme", "why"), [("sqlite", "SQLite"), ("journal", "NFS")])
def test_launch_refuses_file_storages_in_one_line(tmp_path: Path, scheme: str, why: str) -> None:
    path = write_experiment(tmp_path)
    url = f"sqlite:///{tmp_path}/s.db" if scheme == "sqlite" else f"journal:{tmp_path}/s.log"
    proc = sweep_cli(path, url, "launch", *LOCAL)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and why in proc.stderr and "postgresql://" in proc.stderr
    assert not list(tmp_path.glob("s.*")) and not (tmp_path / "studies").exists()


def test_launcher_block_is_checked_and_overridable(tmp_path: Path) -> None:
    path = write_experiment(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["launcher"] = {"partition": "cpu", "sbatch": {"qos": "high"}, "gpus_per_node": 2}
    path.write_text(yaml.safe_dump(raw))
    settings = load_launcher(str(path), ["launcher.partition=gpu", "launcher.tasks_per_node=2", "optim.lr=1e-3"])
    assert (settings.name, settings.partition, settings.tasks_per_node) == ("slurm", "gpu", 2)
    params = executor_parameters(settings, "t", workers=3)
    assert params["slurm_partition"] == "gpu" and params["slurm_additional_parameters"] == {"qos": "high"}
    assert params["slurm_array_parallelism"] == 3 and params["gpus_per_node"] == 2 and params["name"] == "picollm-t"
    assert "gpus_per_node" not in executor_parameters(parse_launcher({}), "t", workers=1)  # CPU partitions
    for raw, message in [
        ({"partitions": "gpu"}, "unknown key launcher.partitions"),
        ({"name": "pbs"}, "choose from slurm, local"),
        ({"tasks_per_node": 0}, "launcher.tasks_per_node must be > 0"),
        ({"timeout_min": "soon"}, "launcher.timeout_min"),
        ({"sbatch": ["--qos=high"]}, "launcher.sbatch"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_launcher(raw)


def test_each_task_trains_on_its_own_gpu_or_says_it_uses_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    exp = load_experiment(str(write_experiment(tmp_path)), [])
    job = SweepJob(exp, 1, gpus_per_node=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    specs = [job.worker_spec("postgresql://db/x", local_rank) for local_rank in (0, 1)]
    assert [worker_device(s.rank, s.exp.base.train.device) for s in specs] == ["cuda:0", "cuda:1"]
    assert specs[0].exp.study.seed != exp.study.seed  # each task samples with its own seed
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    spec = job.worker_spec("postgresql://db/x", local_rank=1)
    assert worker_device(spec.rank, spec.exp.base.train.device) == "cpu"
    assert exp.base.train.device == "auto"  # the task's copy changed, not the experiment
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["launcher: no CUDA device on this node, task 1 trains on the CPU"]


# ------------------------------------------------------------------------------------------------
# Real launches on PostgreSQL.
# ------------------------------------------------------------------------------------------------


def files_containing(folder: Path, secret: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_two_local_workers_with_wait_give_the_results_folder_and_keep_the_password(
    tmp_path: Path, postgres: str
) -> None:
    name, password = f"launch-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    path = write_experiment(tmp_path, study={"name": name, "n_trials": 3})
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**raw, "confirm": {"top": 1, "seeds": 2}}, sort_keys=False))
    proc = start_launch(
        path, with_password(postgres, password), "--workers", "2", "--wait", "--set", "launcher.gpus_per_node=1"
    )
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stderr[-3000:]
    jobs = tmp_path / "studies" / name / "jobs"
    assert "submitted 2 job(s)" in stdout and f"logs: {jobs}/" in stdout and "stop: kill " in stdout
    study = load(postgres, name)
    assert len(finished(study)) == 3 and len({t.number for t in finished(study)}) == 3
    sampled = [tuple(sorted(t.params.items())) for t in finished(study) if not t.user_attrs.get("baseline")]
    assert len(set(sampled)) == len(sampled)  # each job samples with its own seed
    assert all((tmp_path / "studies" / name / file).is_file() for file in ("trials.csv", "best.yaml"))
    # the confirm: block ran as one more job of the same launcher, and best.yaml is its confirmed winner
    assert "confirmation: job " in stdout and "confirmed winner: trial" in stdout
    # the leader, what cannot be told apart from it (at most 1), the baseline; each on 2 seeds
    configs = [r.candidate for r in recorded_confirmation(study).results]
    assert configs[0].number == leader(study).number and 1 <= len(configs) <= 3
    assert len(list(csv.DictReader((tmp_path / "studies" / name / "confirm.csv").open()))) == len(configs) * 2
    assert "Confirmed winner of study" in (tmp_path / "studies" / name / "best.yaml").read_text()
    assert len(list((jobs / "confirm").glob("*_log.err"))) == 1
    logs = sorted(jobs.glob("*_log.err"))
    assert len(logs) == 2  # one job array of two jobs, each running the worker of `sweep.py run`
    assert all("no CUDA device on this node, task 0 trains on the CPU" in log.read_text() for log in logs)
    records = [Path(t.user_attrs["run_dir"]) / "meta.json" for t in finished(study)]
    assert all('"device": "cpu"' in record.read_text() for record in records)
    assert password not in stdout + stderr and not files_containing(tmp_path, password)


def test_jobs_killed_mid_trial_lose_nothing(tmp_path: Path, postgres: str) -> None:
    """SIGUSR2 (submitit's time-limit/preemption notice), SIGTERM (scancel, preemption) and SIGKILL (a lost node),
    each to a process not yet signalled while it trains a trial of its own (not a retry). One launch for the three:
    each job is an interpreter importing torch. Three jobs and a requeued one, three signals: a process never
    signalled finishes the study; 5 trials leave a fresh one to catch for each signal."""
    name, n_trials = f"kill-{uuid.uuid4().hex[:8]}", 5
    # trials of a few seconds: the kill must land mid-training (the poll sees a report up to 0.5 s late)
    path = write_experiment(tmp_path, study={"name": name, "n_trials": n_trials, "budget_tokens": 200_000})
    proc = start_launch(path, postgres, "--workers", "3", "--wait")
    victims: dict[signal.Signals, optuna.trial.FrozenTrial] = {}
    for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGKILL):
        signalled = {worker_pid(v) for v in victims.values()}
        victims[sig] = wait_for_trial_in_training(postgres, name, skip_pids=signalled)
        os.kill(worker_pid(victims[sig]), sig)
    _, stderr = proc.communicate(timeout=500)
    assert proc.returncode == 0, stderr[-3000:]
    study = load(postgres, name)
    assert len(finished(study)) == n_trials  # none lost, none over
    for sig, victim in victims.items():
        assert study.trials[victim.number].state == TrialState.FAIL, sig.name
        retries = [t for t in finished(study) if retry_origin(t) == victim.number]
        assert len(retries) == 1 and retries[0].params == victim.params, sig.name  # once, with the same parameters
    logs = "".join(p.read_text() for p in (tmp_path / "studies" / name / "jobs").glob("*_log.err"))
    assert "launcher: requeued" in logs and "launcher: SIGTERM: exiting" in logs


def wait_for_trial_in_training(
    storage: str, name: str, skip_pids: set[int], timeout: float = 180
) -> optuna.trial.FrozenTrial:
    """A RUNNING trial, not a retry, that has reported a validation loss, in a process not in ``skip_pids``: killed
    now, it dies mid-training."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            running = load(storage, name).get_trials(states=(TrialState.RUNNING,))
        except KeyError:
            continue
        started = [t for t in running if t.intermediate_values and "worker" in t.user_attrs]
        started = [t for t in started if worker_pid(t) not in skip_pids and retry_origin(t) is None]
        if started:
            return started[0]
    pytest.fail("no trial reached its first validation loss in time")
