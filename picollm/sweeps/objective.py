"""One trial: the config for a trial -> :func:`picollm.train.train` -> the value Optuna ranks.

One trial is one call of the same ``train()`` the CLI uses, with the trial's values set on the
experiment's base config and a pruning hook that reports every periodic validation loss to Optuna
(the step is the token count, so trials with other block sizes line up).
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from picollm.config import config_from_dict
from picollm.errors import PicoError
from picollm.search import apply_params, sample
from picollm.sweeps.settings import Experiment
from picollm.sweeps.studies import finished
from picollm.timing import Stopwatch, take_process_start


class OverCap(Exception):
    """Another worker took the last slot between this worker's check and its trial start."""


class AbortSweep(PicoError):
    """A trial hit a problem every trial would hit (bad data path, missing files): stop the sweep."""


def host() -> str:
    """This machine's name in trial records; PICOLLM_WORKER_HOST overrides it where hostnames repeat."""
    return os.environ.get("PICOLLM_WORKER_HOST") or socket.gethostname()


WORKER_ID = f"{host()}:{os.getpid()}"


def _claim_slot(study: Any, trial: Any, n_trials: int) -> None:
    """Run this trial only if it fits under the cap, counting peers' earlier running trials."""
    from optuna.trial import TrialState

    done = finished(study)
    running_before = sum(
        1 for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number < trial.number
    )
    if done + running_before >= n_trials:
        raise OverCap(f"the study already has {n_trials} trials finished or running")


def _trial_config(exp: Experiment, trial: Any, values: dict[str, Any]) -> Any:
    cfg = config_from_dict(apply_params(exp.base, values))
    cfg.tracking.name = f"{exp.study.name}-t{trial.number}"
    return cfg


def _release_gpu_memory() -> None:
    """After a failed trial (a CUDA out-of-memory error, say) hand cached blocks back before the next one."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def make_objective(exp: Experiment, threads: int | None) -> Callable[[Any], float]:
    import optuna

    from picollm.tracking import new_run_id
    from picollm.train import StopRun, train

    def objective(trial: optuna.Trial) -> float:
        try:
            return run_trial(trial)
        except (optuna.TrialPruned, KeyboardInterrupt):
            raise
        except Exception as exc:  # recorded with the trial, so `status` and trials.csv say why
            _release_gpu_memory()
            if "fail_reason" not in trial.user_attrs:
                trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:500])
            raise

    def run_trial(trial: optuna.Trial) -> float:
        sw = Stopwatch()
        sw.add_before("worker_start", take_process_start())  # the worker's first trial owns its start-up
        with sw.phase("storage"):
            _claim_slot(trial.study, trial, exp.study.n_trials)
            trial.set_user_attr("worker", WORKER_ID)
            values = sample(trial, exp.space, exp.base)
        cfg = _trial_config(exp, trial, values)
        if threads and not cfg.train.threads:
            cfg.train.threads = threads
        run_id = new_run_id(f"{exp.study.name}-t{trial.number}-")
        with sw.phase("storage"):
            trial.set_user_attr("run_id", run_id)
            trial.set_user_attr("run_dir", str(Path(cfg.tracking.out_dir) / run_id))

        def report(tokens: int, val_loss: float) -> None:
            with sw.phase("storage"):
                trial.report(val_loss, step=tokens)
                prune = trial.should_prune()
            if prune:
                raise StopRun("pruned", f"pruned at {tokens:,} tokens (val/loss {val_loss:.4f})")

        extra = {"trial": {"study": exp.study.name, "number": trial.number, "params": values}, **exp.extra}
        started = time.perf_counter()
        try:
            summary = train(cfg, run_id=run_id, on_eval=report, extra=extra, stopwatch=sw)
        except PicoError as exc:  # bad data or config: every other trial would fail the same way
            trial.set_user_attr("fail_reason", str(exc))
            trial.set_user_attr("abort", True)
            raise AbortSweep(str(exc)) from None
        finally:
            trial.set_user_attr("duration_s", round(time.perf_counter() - started, 2))
        with sw.phase("storage"):
            for key in ("tokens", "wandb_run_id", "best_val_loss", "final_val_loss", "status"):
                trial.set_user_attr(key, summary.get(key))
        trial.set_user_attr("time_breakdown", sw.breakdown())  # the last write, so it counts the others
        if summary["status"] == "pruned":
            raise optuna.TrialPruned(summary["reason"])
        value = summary[exp.study.metric]
        if value is None or not math.isfinite(value):
            raise RuntimeError(f"metric {exp.study.metric} is {value}")
        return float(value)

    return objective
