"""Soak test: several workers on one storage, many short trials, repeated; nothing lost, duplicated or over.

    python -m tests.soak --storage postgresql://postgres@127.0.0.1/sweeps --workers 4 --trials 40 --rounds 5

Each round runs a fresh study of tiny k-gram trials on synthetic data (seconds each) through the real
coordinator and worker processes, then counts: finished trials must equal the total (0 lost, 0 over),
every finished trial has its own number and run record (0 duplicated), none is left RUNNING or WAITING.
Prints one line per round and exits 1 if any round broke a rule. ``tests/test_reliability.py`` runs it
under ``pytest --slow``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from picollm.cli import run_cli

SPACE = {
    "optim.name": {"type": "categorical", "choices": ["sgd", "adam", "rmsprop"]},
    "optim.lr": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
    "model.k": {"type": "int", "low": 1, "high": 4},
}


def write_experiment(folder: Path, n_trials: int) -> Path:
    exp = {
        "data": {"tinystories": None, "synthetic": 300, "tokenizer": "bytes", "cache_dir": str(folder / "cache")},
        "model": {"type": "kgram", "k": 3, "block_size": 16, "embed_size": 16, "hidden_size": 32},
        "optim": {"name": "adam", "lr": 3e-3},
        "train": {"batch_size": 16, "eval_tokens": 256},
        "tracking": {"wandb": "disabled", "out_dir": str(folder / "runs"), "save_weights": False},
        "search": SPACE,
        "study": {
            "budget_tokens": 2048,
            "reports": 2,
            "n_trials": n_trials,
            "sampler": "random",
            "pruner": {"name": "median", "n_startup_trials": 5},
            "out_dir": str(folder / "studies"),
        },
    }
    path = folder / "soak.yaml"
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


@dataclass
class Round:
    finished: int
    lost: int
    duplicated: int
    over: int
    failed: int
    left_running: int
    seconds: float

    @property
    def ok(self) -> bool:
        return self.lost == self.duplicated == self.over == self.left_running == 0


def check(study: object, n_trials: int, seconds: float) -> Round:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)  # type: ignore[attr-defined]
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    run_ids = Counter(t.user_attrs.get("run_id") for t in done)
    numbers = Counter(t.number for t in trials)
    duplicated = sum(n - 1 for n in run_ids.values() if n > 1) + sum(n - 1 for n in numbers.values() if n > 1)
    left = sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    failed = sum(t.state == TrialState.FAIL for t in trials)
    lost, over = max(0, n_trials - len(done)), max(0, len(done) - n_trials)
    return Round(len(done), lost, duplicated, over, failed, left, seconds)


def soak_round(storage: str, workers: int, n_trials: int, folder: Path) -> Round:
    """One study through the real coordinator and ``workers`` worker processes, then counted."""
    from picollm.sweeps import load_experiment, open_study, run_sweep

    exp = load_experiment(str(write_experiment(folder, n_trials)), [], study_name=f"soak-{uuid.uuid4().hex[:8]}")
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        run_sweep(exp, storage, workers=workers)
    seconds = time.perf_counter() - start
    return check(open_study(exp, storage, create=False), n_trials, seconds)


def soak(storage: str, workers: int = 4, n_trials: int = 40, rounds: int = 5) -> list[Round]:
    results = []
    for i in range(rounds):
        with tempfile.TemporaryDirectory(prefix="picollm-soak-") as tmp:
            r = soak_round(storage, workers, n_trials, Path(tmp))
        results.append(r)
        print(
            f"round {i + 1}/{rounds}: {r.finished}/{n_trials} finished, lost {r.lost}, duplicated {r.duplicated}, "
            f"over {r.over}, left running {r.left_running}, failed {r.failed}, {r.seconds:.0f}s "
            f"{'ok' if r.ok else 'BROKEN'}",
            flush=True,
        )
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", required=True, help="postgresql://user@host/db (or sqlite:///, journal:)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = soak(args.storage, args.workers, args.trials, args.rounds)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    run_cli(main)
