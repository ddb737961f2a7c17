"""Sweeps: an Optuna study whose trials are trainer runs. The names below are the package's public interface.

The workers' names are imported when first used: they bring in torch, which reading a study (``sweep.py status``,
``delete``) does not need.
"""

from typing import Any

from picollm.sweeps.experiment import Experiment, StudySettings, load_experiment
from picollm.sweeps.report import best_value, report_lines, trial_line
from picollm.sweeps.study import open_study

_WORKERS = ("WorkerSpec", "run_sweep", "run_worker")

__all__ = [
    "Experiment",
    "StudySettings",
    "WorkerSpec",
    "best_value",
    "load_experiment",
    "open_study",
    "report_lines",
    "run_sweep",
    "run_worker",
    "trial_line",
]


def __getattr__(name: str) -> Any:
    if name in _WORKERS:
        from picollm.sweeps import workers

        return getattr(workers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
