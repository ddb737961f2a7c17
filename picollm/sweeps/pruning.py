"""A pruner's read of finished trials for one ``COUNT``, while no trial has finished since its last read.

At every report a pruner asks the study for trials in finished states (the median pruner: the complete ones).
Optuna's cached storage answers by fetching every unfinished trial again, this one included, with its five related
tables: seven statements, most of a report's storage cost (``python -m picollm.bench --workers-scale``). A finished
trial never changes (Optuna refuses writes to it), so the list read last time is still whole as long as the number of
trials in those states is the same. :class:`CountCheckedPruner` checks that number with one statement and reads the
trials again only when it has grown. Whatever else a pruner reads (running trials, the direction, the study's
attributes) comes from the study as before, and storages other than a database server are read as before.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from optuna.pruners import BasePruner, HyperbandPruner
from optuna.trial import FrozenTrial, TrialState

from picollm.storage import count_trials, side_connection

FINISHED = frozenset({TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL})


class FinishedTrials:
    """The study's trials in some finished states, as read last, and re-read when a count says one was added."""

    def __init__(self, storage_url: str) -> None:
        self.storage_url = storage_url
        self.last: dict[frozenset[TrialState], list[FrozenTrial]] = {}

    def get(self, study: Any, states: frozenset[TrialState]) -> list[FrozenTrial]:
        with side_connection(self.storage_url) as connection:
            count = None if connection is None else count_trials(study, states, connection)
        last = self.last.get(states)
        if last is not None and count == len(last):
            return last
        self.last[states] = study.get_trials(deepcopy=False, states=states)
        return self.last[states]


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


def count_checked(pruner: BasePruner, storage_url: str) -> BasePruner:
    """``pruner`` with its reads of finished trials checked by a count; Hyperband as it is, because Optuna's samplers
    find it by its type (``isinstance(study.pruner, HyperbandPruner)``) to sample within each bracket."""
    return pruner if isinstance(pruner, HyperbandPruner) else CountCheckedPruner(pruner, storage_url)


class CountCheckedPruner(BasePruner):
    """``pruner``, with its reads of finished trials checked by a count instead of repeated."""

    def __init__(self, pruner: BasePruner, storage_url: str) -> None:
        self.pruner = pruner
        self.finished = FinishedTrials(storage_url)

    def prune(self, study: Any, trial: FrozenTrial) -> bool:
        return self.pruner.prune(_PrunerView(study, self.finished), trial)
