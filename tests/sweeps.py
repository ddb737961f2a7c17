"""Helpers for sweep tests: a tiny experiment that trains in well under a second per trial."""

from __future__ import annotations

import faulthandler
import multiprocessing.pool
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback

from tests.conftest import ROOT, TERMINAL_STDERR


def write_experiment(tmp_path: Path, study: dict | None = None, search: dict | None = None, **sections: dict) -> Path:
    exp = {
        "data": {"tinystories": None, "synthetic": 400, "tokenizer": "bytes", "cache_dir": str(tmp_path / "cache")},
        "model": {"type": "kgram", "k": 3, "block_size": 16, "embed_size": 16, "hidden_size": 32},
        "optim": {"name": "adam", "lr": 3e-3},
        "train": {"batch_size": 16, "eval_tokens": 512},
        "tracking": {"wandb": "disabled", "out_dir": str(tmp_path / "runs"), "save_weights": False},
        "search": search
        or {
            "optim.name": {"type": "categorical", "choices": ["sgd", "adam", "rmsprop"]},
            "optim.lr": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
            "model.block_size": {"type": "categorical", "choices": [8, 16]},
            "model.k": {"type": "int", "low": 1, "high": 4, "when": {"model.type": "kgram"}},
        },
        "study": {
            "name": "t",
            "budget_tokens": 4096,
            "reports": 4,
            "n_trials": 4,
            "seed": 0,
            "sampler": "random",
            "pruner": "none",
            "heartbeat_interval": 1,
            "grace_period": 3,
            "out_dir": str(tmp_path / "studies"),
            "figures": False,  # PNGs cost most of a tiny study's export; the tests that look at them draw them
            **(study or {}),
        },
    }
    for name, values in sections.items():
        exp.setdefault(name, {}).update(values)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


SWEEP = str(ROOT / "sweep.py")


def retry_origin(trial: Any) -> int | None:
    """The trial this one re-runs: every path that re-queues a trial (heartbeat, dead local worker) goes through
    Optuna's retry callback, which records it."""
    return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def processes_at_once(n: int) -> multiprocessing.pool.Pool:
    """``n`` processes forked together from the sweep's own forkserver, as sweep workers are: the forkserver imports
    torch and optuna once, so they start within moments of each other instead of one import apart."""
    from picollm.sweeps.processes import adopt, worker_context

    return worker_context().Pool(n, initializer=adopt, initargs=(dict(os.environ),))


def worker_pid(trial: Any) -> int:
    """The pid of the process that ran ``trial``, from its record's ``host:pid``."""
    from picollm.sweeps.trial import TrialRecord

    return int(str(TrialRecord.of(trial).worker).rpartition(":")[2])


def sweep_argv(path: Path, storage: str, *args: str) -> list[str]:
    """sweep.py's arguments for the experiment at ``path``: one worker unless ``args`` say otherwise (a later wins)."""
    return ["--config", str(path), "--storage", storage, "--workers", "1", *args]


def sweep_cli(
    path: Path, storage: str, *args: str, timeout: int = 300, env: dict | None = None
) -> subprocess.CompletedProcess[str]:
    """``python sweep.py --config PATH --storage STORAGE ARGS...`` as a user would run it."""
    return subprocess.run(
        [sys.executable, SWEEP, *sweep_argv(path, storage, *args)],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def sweep_here(
    capfd: pytest.CaptureFixture[str], path: Path, storage: str, *args: str, timeout: int = 300, env: dict | None = None
) -> subprocess.CompletedProcess[str]:
    """:func:`sweep_cli`'s command line run in this test process, for tests about the study rather than the process:
    a fresh interpreter imports torch again, about 5 CPU-seconds a call. The output is what this process printed: a
    forked worker writes where this process's forkserver was started, so a test that reads workers' lines uses
    :func:`sweep_cli`. Past ``timeout`` the test process ends, printing every thread's stack to the run's stderr,
    where :func:`sweep_cli` would fail the one test."""
    from picollm.cli import run_cli
    from picollm.cli.sweep import main

    argv = sweep_argv(path, storage, *args)
    capfd.readouterr()
    faulthandler.dump_traceback_later(timeout, exit=True, file=TERMINAL_STDERR[0])
    code: int | str | None = 0
    try:
        with mock.patch.dict(os.environ, env or {}), mock.patch.object(sys, "argv", [SWEEP, *argv]):
            run_cli(main, argv)
    except SystemExit as exc:
        code = exc.code
    finally:
        faulthandler.cancel_dump_traceback_later()
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess([SWEEP, *argv], code, out, err)
