"""A pruner's read of finished trials, for one statement while no trial has finished since its last read.

At every report a pruner asks the study for trials in finished states (the median pruner: the complete ones).
Optuna's cached storage answers by fetching every unfinished trial again, this one included, with its five related
tables: seven statements and a trial object built for each running trial, the largest part of a report's cost
(``python -m picollm.bench --workers-scale``; the more workers, the more running trials). A finished trial never
changes (Optuna refuses writes to it), so :class:`FinishedTrials` keeps each one it has read: at each read it asks
for the ids of the trials in those states (one statement) and fetches only the ones it has not seen. Whatever else a
pruner reads (running trials, the direction, the study's attributes) comes from the study as before, and storages
other than a database server are read as before.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from optuna.pruners import BasePruner, HyperbandPruner
from optuna.trial import FrozenTrial, TrialState

from picollm.storage import side_connection, trial_ids

FINISHED = frozenset({TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL})


class FinishedTrials:
    """The study's finished trials, each read once: the ids in the wanted states each time, the trials when new."""

    def __init__(self, storage_url: str) -> None:
        self.storage_url = storage_url
        self.known: dict[int, FrozenTrial] = {}  # trial id -> the finished trial as read

    def get(self, study: Any, states: frozenset[TrialState]) -> list[FrozenTrial]:
        backend = getattr(study._storage, "_backend", study._storage)  # under Optuna's cache wrapper
        with side_connection(self.storage_url) as connection:
            if connection is None or not hasattr(backend, "_get_trials"):
                return study.get_trials(deepcopy=False, states=states)
            ids = trial_ids(study, states, connection)
        new = set(ids) - self.known.keys()
        if new:  # Optuna's incremental read, for these trials only: those in `new` and any finished since
            for trial in backend._get_trials(study._study_id, states, new, max(new)):
                self.known[trial._trial_id] = trial
        return sorted((self.known[i] for i in ids if i in self.known), key=lambda trial: trial.number)


class _PrunerView:
    """The study as the wrapped pruner sees it: finished trials from :class:`FinishedTrials`, the rest from the
    study."""

    def __init__(self, study: Any, finished: FinishedTrials) -> None:
        self._study, self._finished = study, finished

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        if states is not None and not deepcopy and FINISHED.issuperset(states):
            return self._finished.get(self._study, frozenset(states))
        return self._study.get_trials(deepcopy=deepcopy, states=states)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


def read_once(pruner: BasePruner, storage_url: str) -> BasePruner:
    """``pruner`` with each finished trial read once; Hyperband as it is, because Optuna's samplers
    find it by its type (``isinstance(study.pruner, HyperbandPruner)``) to sample within each bracket."""
    return pruner if isinstance(pruner, HyperbandPruner) else ReadOncePruner(pruner, storage_url)


class ReadOncePruner(BasePruner):
    """``pruner``, with each finished trial it reads fetched once (:class:`FinishedTrials`)."""

    def __init__(self, pruner: BasePruner, storage_url: str) -> None:
        self.pruner = pruner
        self.finished = FinishedTrials(storage_url)

    def prune(self, study: Any, trial: FrozenTrial) -> bool:
        return self.pruner.prune(_PrunerView(study, self.finished), trial)
