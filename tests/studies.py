"""A small finished sweep for the tests that look at a study from outside (W&B files, report, dashboard)."""

from __future__ import annotations

from pathlib import Path

from tests.sweeps import sweep_cli, write_experiment

# Successive halving with a tiny minimum resource prunes some of the random trials, so every view
# has complete and pruned trials to tell apart.
PRUNING = {"name": "successive_halving", "min_resource": 1, "reduction_factor": 2}


def finished_study(tmp: Path, n_trials: int = 5, wandb: str = "offline") -> tuple[str, Path]:
    """Run study ``t`` to ``n_trials`` in ``tmp``; returns its storage URL and the experiment file."""
    exp = write_experiment(
        tmp,
        study={"n_trials": n_trials, "pruner": PRUNING, "figures": True},
        tracking={"wandb": wandb, "save_weights": True},
    )
    storage = f"sqlite:///{tmp / 'optuna.db'}"
    result = sweep_cli(exp, storage)
    assert result.returncode == 0, result.stderr
    return storage, exp
