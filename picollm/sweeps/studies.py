"""Opening a study: storage, sampler and pruner, the stored search space and fingerprint, the exact total.

``n_trials`` is the total of finished trials, so opening a study again resumes it. A check after each trial would let
two workers both start "the last" one, so :class:`CappedStudy` counts in ``ask``, under a lock every worker of the
storage shares (:func:`picollm.storage.claim_lock`): a trial beyond the total is never created.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from picollm.config import TrackingConfig
from picollm.errors import PicoError
from picollm.search import baseline_params
from picollm.storage import claim_lock, mask_url, open_storage
from picollm.sweeps import fingerprint
from picollm.sweeps.budget import PLAN, TokenPlan, plan_of
from picollm.sweeps.halving import last_promotion, next_promotion, scores_at
from picollm.sweeps.record import TrialRecord
from picollm.sweeps.registry import ONE_SEQUENCE, make_pruner, make_sampler
from picollm.sweeps.settings import Experiment, StudySettings, trial_cap

TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class StudyFull(Exception):
    """Every trial of the total is finished or running: this worker must not start another."""


class CappedStudy(optuna.Study):
    """An Optuna study whose ``ask`` never starts a trial beyond ``total`` (finished + running).

    ``study.optimize`` starts every trial through ``ask``, so counting and starting under one lock keeps the total
    exact; the objective refuses a trial not started here (:meth:`started_here`).
    """

    def __init__(self, *, total: float, plan: TokenPlan, storage_url: str, storage: Any, **kwargs: Any) -> None:
        super().__init__(storage=storage, **kwargs)
        self.total, self.plan, self.storage_url, self.storage = total, plan, storage_url, storage
        self.study_id = storage.get_study_id_from_name(self.study_name)
        self.asked: set[int] = set()

    def ask(self, fixed_distributions: dict[str, Any] | None = None) -> optuna.Trial:
        with claim_lock(self.storage_url, f"claim-{self.study_name}"):
            trials = self.get_trials(deepcopy=False)
            queued = any(t.state == TrialState.WAITING for t in trials)  # already in the ledger: it runs next
            if not queued and not self.promote(trials):
                if (taken := self.fresh(trials, TAKEN)) >= self.total:
                    raise StudyFull(f"{taken} of {self.total} trials are finished or running")
                if not self.plan.room_for_trial(trials):
                    raise StudyFull(f"study.max_tokens={self.plan.max_tokens:,} cannot pay for another trial")
            trial = super().ask(fixed_distributions)
        self.asked.add(trial.number)
        return trial

    def promote(self, trials: list[Any]) -> bool:
        """Queue the continuation of a paused configuration that now ranks among the best of its rung, if the budget
        pays for its next rung (halving; promotions come before new trials). Under the claim lock."""
        found = self.promotable(trials)
        if found is None:
            return False
        paused, index = found
        facts = TrialRecord(continues=paused.number, from_rung=index, run_dir=TrialRecord.of(paused).run_dir)
        self.enqueue_trial(dict(paused.params), user_attrs=facts.queued())
        return True

    def promotable(self, trials: list[Any]) -> tuple[Any, int] | None:
        if not self.plan.promotes:
            return None
        found = next_promotion(trials, self.plan.budgets, self.plan.eta)
        idle = not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
        if found is None and idle and self.no_new_trial(trials):
            scored = len(scores_at(trials, self.plan.budgets[-2]))
            most = None if self.plan.max_tokens is not None else max(1, scored // self.plan.eta)
            found = last_promotion(trials, self.plan.budgets, most)
        return found if found is not None and self.plan.room_for_promotion(trials, found[1]) else None

    def fresh(self, trials: list[Any], states: tuple[TrialState, ...]) -> int:
        """Trials in ``states`` that tried a configuration of their own: what ``n_trials`` counts (a continuation of a
        paused configuration is not one)."""
        return sum(t.state in states and TrialRecord.of(t).continues is None for t in trials)

    def no_new_trial(self, trials: list[Any]) -> bool:
        return self.fresh(trials, TAKEN) >= self.total or not self.plan.room_for_trial(trials)

    def exhausted(self) -> bool:
        """Nothing more will start: no trial runs or waits, none is due a promotion, and the total is finished or the
        budget pays for no new trial."""
        trials = self.get_trials(deepcopy=False)
        busy = any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
        if not busy and self.fresh(trials, FINISHED) >= self.total and not self.plan.promotes:
            return True
        return not busy and self.promotable(trials) is None and self.no_new_trial(trials)

    def started_here(self, trial: optuna.Trial) -> None:
        """Refuse a trial that ``ask`` did not start (see the class docstring)."""
        if trial.number not in self.asked:
            raise PicoError(
                f"optuna {optuna.__version__} started trial {trial.number} without Study.ask, which picollm needs to "
                "keep a study's exact total: install the Optuna that requirements.txt pins"
            )

    def trial_id(self, number: int) -> int:
        """The storage's id of trial ``number`` (Optuna's public lookup, not a private attribute)."""
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our one line per trial says what failed and why
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _storage(exp: Experiment, storage_url: str, create: bool) -> Any:
    s = exp.study
    return open_storage(storage_url, s.heartbeat_interval, s.grace_period, s.max_retry, create=create)


def _load(exp: Experiment, storage_url: str, create: bool, storage: Any = None) -> CappedStudy:
    s = exp.study
    storage = _storage(exp, storage_url, create) if storage is None else storage
    if create:
        optuna.create_study(study_name=s.name, storage=storage, direction="minimize", load_if_exists=True)
    return CappedStudy(
        total=trial_cap(s),
        plan=plan_of(exp),
        storage_url=storage_url,
        storage=storage,
        study_name=s.name,
        sampler=make_sampler(s.sampler, exp.space, s.seed, s.sampler_options),
        pruner=make_pruner(s.pruner, s.pruner_options),
    )


def _opening(exp: Experiment, storage_url: str, step: Callable[[], Any]) -> Any:
    """``step()``, with whatever it raises about the storage or the study as one line."""
    quiet_optuna()
    try:
        return step()
    except PicoError:
        raise
    except KeyError:
        raise PicoError(
            f"no study named {exp.study.name!r} in {mask_url(storage_url)}: check study.name or --study-name, and "
            "--storage"
        ) from None
    except Exception as exc:
        raise PicoError(
            f"cannot open study {exp.study.name!r} in {mask_url(storage_url)}: {mask_url(str(exc))[:200]}"
        ) from None


def reach_storage(exp: Experiment, storage_url: str) -> Any:
    """The storage, opened without creating the study: a bad URL or server is one line before anything else."""
    return _opening(exp, storage_url, lambda: _storage(exp, storage_url, create=True))


def stored_question(storage: Any, exp: Experiment, storage_url: str) -> None:
    """Refuse a run that the existing study of this name does not answer, without creating or writing anything."""
    try:
        study_id = storage.get_study_id_from_name(exp.study.name)
    except KeyError:
        return
    attrs = storage.get_study_user_attrs(study_id)
    _check_space(attrs.get("space"), exp, storage_url)
    fingerprint.refuse_mix(attrs.get("fingerprint"), exp, storage_url)


def open_study(exp: Experiment, storage_url: str, create: bool, storage: Any = None) -> CappedStudy:
    """Create or load the study; refuse one whose search space or fingerprint differs (one line each)."""
    study = _opening(exp, storage_url, lambda: _load(exp, storage_url, create, storage))
    if create:  # peers starting together: one records the question, the others check against it
        with claim_lock(storage_url, f"setup-{exp.study.name}"):
            _record_or_check_space(study, exp, storage_url)
    else:  # a reader (export, analysis, status) never writes
        _record_or_check_space(study, exp, storage_url, record=False)
    return study


def _described(exp: Experiment) -> list[dict[str, Any]]:
    return [p.describe() | {"key": p.key} for p in exp.space]


def _check_space(stored: Any, exp: Experiment, storage_url: str) -> None:
    if stored is not None and stored != _described(exp):
        raise PicoError(
            f"study {exp.study.name!r} in {mask_url(storage_url)} was created with another search space: restore "
            f"that space to resume it, {fingerprint.start_over_hint(exp.study.name)}"
        )


def _record_or_check_space(study: CappedStudy, exp: Experiment, storage_url: str, record: bool = True) -> None:
    stored = study.user_attrs.get("space")
    if stored is None and record:
        study.set_user_attr("space", _described(exp))
        study.set_user_attr("base", exp.base)
        study.set_user_attr("settings", asdict(exp.study))
    _check_space(stored, exp, storage_url)
    fingerprint.check(study, exp, storage_url)
    if record:  # the budget may grow between sweeps of one study, as n_trials may
        study.set_user_attr(PLAN, asdict(study.plan))


TRAINED_BASE = "trained_base"  # study user attribute: the base config as the trials ran it


def trained_base(study: Any) -> dict[str, Any]:
    """The base config the trials trained with (fallback applied): ``best.yaml`` and confirmations start there."""
    return study.user_attrs.get(TRAINED_BASE) or study.user_attrs["base"]


def record_trained_base(study: Any, exp: Experiment) -> None:
    """Once per study (the fingerprint makes every later worker's data the same): what the trials really use."""
    if TRAINED_BASE not in study.user_attrs:
        study.set_user_attr(TRAINED_BASE, exp.base)


def enqueue_baseline(study: Any, exp: Experiment) -> None:
    """Trial 0 is the base config itself, so every study shows its gain over the default."""
    if not study.trials:
        facts = TrialRecord(baseline=True).queued()
        study.enqueue_trial(baseline_params(exp.space, exp.base), user_attrs=facts, skip_if_exists=True)


def sampler_seed(seed: int, salt: str | None) -> int:
    """A worker's sampler seed: the study's own when ``salt`` is None (the first worker of a new study), else derived.

    With one shared seed, workers started together or resumed would all draw the same parameters.
    """
    if salt is None:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{salt}".encode()).digest()[:4], "big")


def with_seed(exp: Experiment, salt: str | None) -> Experiment:
    if exp.study.sampler in ONE_SEQUENCE:  # every worker draws the next point of the study's one sequence
        return exp
    return replace(exp, study=replace(exp.study, seed=sampler_seed(exp.study.seed, salt)))


def counts(study: Any) -> dict[str, int]:
    out = {state.name: 0 for state in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] += 1
    return out


def finished(study: Any) -> int:
    """Complete and pruned trials: what ``n_trials`` counts."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


# -- Deleting a study (`sweep.py delete`): from the storage, through Optuna's public API ------


@dataclass
class StoredStudy:
    """A study as ``sweep.py delete`` names it before it deletes it."""

    name: str
    storage: Any
    counts: dict[str, int]
    export_dir: Path | None  # study.out_dir/<name> (trials.csv, best.yaml, figures, job logs), if it is a folder
    runs_dir: str  # tracking.out_dir: the trials' run records

    def summary(self) -> str:
        states = ", ".join(f"{n} {state.lower()}" for state, n in self.counts.items() if n)
        total = sum(self.counts.values())
        return f"{total} trial{'' if total == 1 else 's'}" + (f": {states}" if states else "")


def find_study(name: str, storage_url: str) -> StoredStudy:
    """The study ``name`` in the storage, or one line naming the studies it holds (nothing is created)."""
    quiet_optuna()
    storage = open_storage(storage_url)
    names = optuna.get_all_study_names(storage)
    if name not in names:
        raise PicoError(
            f"no study named {name!r} in {mask_url(storage_url)} (it holds: {', '.join(names) or 'no study'}); "
            "nothing was deleted"
        )
    study = optuna.load_study(study_name=name, storage=storage)
    settings, base = study.user_attrs.get("settings", {}), study.user_attrs.get("base", {})
    out_dir = settings.get("out_dir") or StudySettings.out_dir
    runs_dir = base.get("tracking", {}).get("out_dir") or TrackingConfig.out_dir
    plain = Path(name).name == name and name not in (".", "..")  # a name made elsewhere may be a path: never removed
    export_dir = Path(out_dir) / name if plain and (Path(out_dir) / name).is_dir() else None
    return StoredStudy(name, storage, counts(study), export_dir, runs_dir)


def delete_stored(found: StoredStudy) -> None:
    optuna.delete_study(study_name=found.name, storage=found.storage)
