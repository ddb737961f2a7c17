"""Which running trials are dead: they are failed, then retried at most ``max_retry`` times.

Database storages use Optuna's heartbeat; journal files a :class:`Lease` each worker renews; on any storage a trial
whose worker on this host is gone fails at once (docs/reliability.md). A resumed sweep re-queues its failed baseline and
Ctrl-C'd trials the same way.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from picollm.storage import has_heartbeat

INTERRUPTED = "interrupted"  # fail_reason of a trial stopped by Ctrl-C or SIGTERM (objective.py, api.py)
LOST_WORKER = ("worker process died", "worker lost")  # fail_reason of a trial whose worker this module found gone


def host() -> str:
    """This machine's name in trial records; PICOLLM_WORKER_HOST overrides it where hostnames repeat."""
    return os.environ.get("PICOLLM_WORKER_HOST") or socket.gethostname()


def worker_id() -> str:
    return f"{host()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fail_and_retry(study: Any, trial: Any, reason: str, max_retry: int) -> bool:
    """Fail a RUNNING trial with ``reason`` and re-queue it (capped); False if another worker was first."""
    storage, trial_id = study.storage, study.trial_id(trial.number)
    try:  # the reason first: a finished trial cannot be written to any more
        storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        storage.set_trial_user_attr(trial_id, "value_kind", "failed")
        if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    retry(study, storage.get_trial(trial_id), max_retry)
    return True


def retry(study: Any, trial: Any, max_retry: int) -> bool:
    """Re-queue a failed trial with its parameters, as Optuna's stale-trial callback does; False when out of retries."""
    if len(RetryHeartbeatStaleTrialCallback.retry_history(trial)) >= max_retry:
        return False
    RetryHeartbeatStaleTrialCallback(max_retry, inherit_intermediate_values=True)(study, trial)
    return True


def _failed_by_its_worker(trial: Any) -> bool:
    """Failed by the worker that ran it (an error), which queues nothing; a lost worker's trial is re-queued at once."""
    attrs = trial.user_attrs
    return attrs.get("value_kind") == "failed" and not str(attrs.get("fail_reason", "")).startswith(LOST_WORKER)


def _rerun_on_resume(trial: Any) -> bool:
    """Stopped by Ctrl-C, or the baseline failed by its worker: its parameters are worth a run."""
    attrs = trial.user_attrs
    return attrs.get("fail_reason") == INTERRUPTED or (attrs.get("baseline", False) and _failed_by_its_worker(trial))


def requeue_stopped(study: Any, max_retry: int) -> tuple[list[int], list[int]]:
    """On resume: re-queue a failed baseline and Ctrl-C'd trials once each; returns (re-queued, out of retries).
    Run under the study's setup lock, so workers starting together do not both queue one."""
    trials = study.get_trials(deepcopy=False)
    done = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    queued: list[int] = []
    used_up: list[int] = []
    for t in trials:
        if t.state == TrialState.FAIL and t.number not in done and _rerun_on_resume(t):
            (queued if retry(study, t, max_retry) else used_up).append(t.number)
    return queued, used_up


def _local_owner_dead(trial: Any) -> bool:
    owner_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    return owner_host == host() and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid))


def fail_dead_local_trials(study: Any, max_retry: int) -> list[int]:
    """Fail and re-queue RUNNING trials whose worker process on this host is gone."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    dead = [t for t in running if _local_owner_dead(t)]
    return [t.number for t in dead if _fail_and_retry(study, t, LOST_WORKER[0], max_retry)]


def fail_expired_leases(study: Any, grace_period: float, max_retry: int) -> list[int]:
    """Journal storage: fail and re-queue RUNNING trials whose lease is older than ``grace_period``."""
    now, expired = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        renewed = t.user_attrs.get("lease") or (t.datetime_start.timestamp() if t.datetime_start else now)
        if now - renewed > grace_period:
            owner = t.user_attrs.get("worker")
            reason = f"{LOST_WORKER[1]}: no lease renewal for {now - renewed:.0f}s (worker {owner})"
            if _fail_and_retry(study, t, reason, max_retry):
                expired.append(t.number)
    return expired


def fail_stale(study: Any, grace_period: float, max_retry: int) -> None:
    """Run every detector that applies to this study's storage."""
    fail_dead_local_trials(study, max_retry)
    if has_heartbeat(study.storage):
        optuna.storages.fail_stale_trials(study)
    else:
        fail_expired_leases(study, grace_period, max_retry)


class Lease:
    """Renews a trial's lease every ``interval`` seconds on a daemon thread, while the trial trains."""

    def __init__(self, trial: Any, interval: float) -> None:
        self.trial, self.interval = trial, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._renew, daemon=True, name="picollm-lease")

    def _renew(self) -> None:
        while True:
            try:
                self.trial.set_user_attr("lease", time.time())
            except UpdateFinishedTrialError:
                return  # another worker failed it; the objective finds out at its next report
            except Exception:  # a transient storage error: try again next interval
                pass
            if self.stop.wait(self.interval):
                return

    def __enter__(self) -> Lease:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
