"""Which running trials are dead: they are failed, then retried at most ``max_retry`` times.

Database storages use Optuna's heartbeat; journal files a :class:`Lease` each worker renews; on any storage a trial
whose worker on this host is gone fails at once (docs/reliability.md). A resumed sweep re-queues its failed baseline and
Ctrl-C'd trials the same way.
"""

from __future__ import annotations

import os
import time
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from picollm.storage import has_heartbeat
from picollm.sweeps.record import FAILED, INTERRUPTED, LOST_WORKER, TrialRecord, host, record_stored


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
        record_stored(storage, trial_id, fail_reason=reason, value_kind=FAILED)
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


def _rerun_on_resume(trial: Any) -> bool:
    """Stopped by Ctrl-C, or the baseline failed by its worker: its parameters are worth a run."""
    facts = TrialRecord.of(trial)  # a lost worker's trial was re-queued at once; an error queues nothing
    return facts.fail_reason == INTERRUPTED or (facts.baseline and facts.failed_by_its_worker)


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
    owner_host, _, pid = str(TrialRecord.of(trial).worker or "").rpartition(":")
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
        facts = TrialRecord.of(t)
        renewed = facts.lease or (t.datetime_start.timestamp() if t.datetime_start else now)
        if now - renewed > grace_period:
            owner = facts.worker
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
