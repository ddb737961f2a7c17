"""What a study and its trials store in Optuna's user attributes: typed records, written and read back here only.

Every fact a trial carries (where its run record is, what it spent, why it failed, which paused run it continues) is a
field of :class:`TrialRecord`, written by :func:`record` and read back by :meth:`TrialRecord.of`: the objective, the
study's liveness checks, the export, the report, the analysis and the API all go through it. What a study keeps of
itself (its space, base config, settings, fingerprint, token plan and confirmation runs) is a :class:`StudyRecord`,
written by :func:`record_study` and :func:`record_confirm_run`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError

# What a trial's value is (``value_kind``).
FINAL, PRUNED_AT, FAILED, RUNNING = "final", "pruned-intermediate", "failed", "running"
INTERRUPTED = "interrupted"  # fail_reason of a trial stopped by Ctrl-C or SIGTERM
LOST_WORKER = ("worker process died", "worker lost")  # fail_reason of a trial whose worker was found gone


@dataclass(frozen=True)
class TrialRecord:
    """A trial's facts, as its worker and the study's liveness checks wrote them (None: not written)."""

    number: int = -1
    baseline: bool = False  # trial 0 and its retries: the unmodified base config
    continues: int | None = None  # the trial whose paused run this one goes on from (halving)
    from_rung: int | None = None  # the index of the rung that paused run stopped at
    worker: str | None = None  # host:pid of the process that runs it
    device: str | None = None
    run_id: str | None = None
    run_dir: str | None = None  # the run record (a continuation's: the paused run's, until its own starts)
    wandb_run_id: str | None = None
    wandb_url: str | None = None
    metric: str | None = None  # the summary.json key ranked
    value_kind: str | None = None  # FINAL, PRUNED_AT, FAILED or RUNNING
    value_stderr: float | None = None
    fail_reason: str | None = None
    abort: bool = False  # its error stops the sweep (every trial would hit it)
    pruned_at_tokens: int | None = None
    tokens: int | None = None  # tokens of its run (its branched decays apart)
    spent_tokens: int | None = None  # every token it trained: its run from where it started, and its decays
    decay_tokens: int | None = None  # of those, the tokens of its branched decays
    status: str | None = None  # the run's status (finished, pruned, ...)
    duration_s: float | None = None
    time_breakdown: dict[str, float] | None = None
    lease: float | None = None  # when its worker last renewed its lease (journal storages)

    @classmethod
    def of(cls, trial: Any) -> TrialRecord:
        """The record of an Optuna trial (frozen or live)."""
        attrs = trial.user_attrs
        return cls(number=trial.number, **{f.name: attrs[f.name] for f in FACTS if f.name in attrs})

    def queued(self) -> dict[str, Any]:
        """The facts given, as ``Study.enqueue_trial``'s user attributes (unset ones left out)."""
        defaults = TrialRecord()
        return {f.name: getattr(self, f.name) for f in FACTS if getattr(self, f.name) != getattr(defaults, f.name)}

    @property
    def failed_by_its_worker(self) -> bool:
        """Failed by the worker that ran it (an error), not found dead by another."""
        return self.value_kind == FAILED and not str(self.fail_reason or "").startswith(LOST_WORKER)


FACTS = [f for f in dataclasses.fields(TrialRecord) if f.name != "number"]


def _checked(facts: dict[str, Any], known: list[dataclasses.Field[Any]] = FACTS, kind: str = "trial") -> dict[str, Any]:
    unknown = set(facts) - {f.name for f in known}
    if unknown:
        raise TypeError(f"not a {kind} fact: {', '.join(sorted(unknown))}")
    return facts


def write(trial: Any, **facts: Any) -> None:
    """Write facts to a live trial; raises UpdateFinishedTrialError once another worker has finished it."""
    for key, value in _checked(facts).items():
        trial.set_user_attr(key, value)


def record(trial: Any, **facts: Any) -> None:
    """:func:`write`, where a trial another worker already finished not taking them is fine."""
    with suppress(UpdateFinishedTrialError):
        write(trial, **facts)


def record_stored(storage: Any, trial_id: int, **facts: Any) -> None:
    """Write facts to a trial through the storage (another worker's trial, found dead)."""
    for key, value in _checked(facts).items():
        storage.set_trial_user_attr(trial_id, key, value)


def host() -> str:
    """This machine's name in trial records; PICOLLM_WORKER_HOST overrides it where hostnames repeat."""
    return os.environ.get("PICOLLM_WORKER_HOST") or socket.gethostname()


def worker_id() -> str:
    return f"{host()}:{os.getpid()}"


CONFIRM_RUN = "confirm:"  # the prefix of the study attributes holding one finished confirmation run each


@dataclass(frozen=True)
class StudyRecord:
    """What a study keeps of itself, as its workers and its confirmation wrote it (empty or None: not written)."""

    space: list[dict[str, Any]] = field(default_factory=list)  # the search space, described
    base: dict[str, Any] = field(default_factory=dict)  # the base config as the experiment gives it
    settings: dict[str, Any] = field(default_factory=dict)  # the study: block
    fingerprint: dict[str, Any] | None = None  # what the study answers: one study, one question
    trained_base: dict[str, Any] | None = None  # the base config as the trials ran it (offline fallback resolved)
    offline_fallback: str | None = None  # the fallback's note, when the trials ran on the built-in data
    token_plan: dict[str, Any] | None = None  # the token budget's plan of the sweep that ran last
    confirm_settings: dict[str, Any] | None = None  # the latest confirmation's settings and shortlist
    confirm_runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # run key -> finished confirmation run

    @classmethod
    def of(cls, study: Any) -> StudyRecord:
        return cls.from_attrs(study.user_attrs)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StudyRecord:
        """The record in a study's user attributes (as ``storage.get_study_user_attrs`` returns them)."""
        runs = {key[len(CONFIRM_RUN) :]: run for key, run in attrs.items() if key.startswith(CONFIRM_RUN)}
        known = {f.name: attrs[f.name] for f in STUDY_FACTS if f.name in attrs and attrs[f.name] is not None}
        return cls(**known, confirm_runs=runs)

    @property
    def param_keys(self) -> list[str]:
        return [p["key"] for p in self.space]

    @property
    def ran_base(self) -> dict[str, Any]:
        """The base config as the trials ran it, else as given."""
        return self.trained_base or self.base


STUDY_FACTS = [f for f in dataclasses.fields(StudyRecord) if f.name != "confirm_runs"]


def record_study(study: Any, **facts: Any) -> None:
    """Write facts of a study (fields of :class:`StudyRecord`, confirmation runs apart)."""
    for key, value in _checked(facts, STUDY_FACTS, "study").items():
        study.set_user_attr(key, value)


def record_confirm_run(study: Any, key: str, run: dict[str, Any]) -> None:
    study.set_user_attr(CONFIRM_RUN + key, run)
