"""Sweeps: an Optuna study whose trials are trainer runs. The names below are the package's public interface."""

from picollm.sweeps.experiment import Experiment, StudySettings, load_experiment
from picollm.sweeps.report import best_value, report_lines, trial_line
from picollm.sweeps.study import open_study
from picollm.sweeps.workers import WorkerSpec, run_sweep, run_worker

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
