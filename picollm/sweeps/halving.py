"""Asynchronous successive halving with promotions (Li et al. 2020, "A System for Massively Parallel Hyperparameter
Tuning"): a trial stops at each rung unless its configuration is among the best ``1/eta`` of those scored there; a
stopped configuration is promoted later, from the checkpoint it stopped at, once it ranks there.

Optuna's SuccessiveHalvingPruner cannot pause a trial, so it lets the first trials at a rung go on (a trial is best
of one); with two workers the first trials of a study then ran to the target whatever they were. Here the decision
waits for ``eta`` configurations at the rung, and a paused configuration loses nothing but the wait: it goes on from
its own state (:func:`picollm.trainer.anneal` keeps one at every rung) in a new trial that ``continues`` it.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.trial import TrialState

from picollm.sweeps.record import TrialRecord


def config_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def scores_at(trials: list[Any], budget: int) -> dict[str, float]:
    """Each configuration's loss at the rung ``budget``, from whichever of its trials that did not fail reported it."""
    return {
        config_key(t.params): t.intermediate_values[budget]
        for t in trials
        if budget in t.intermediate_values and t.state != TrialState.FAIL
    }


def promotable(scores: dict[str, float], gone_on: set[str], key: str, eta: int) -> bool:
    """Among the best ``len(scores) // eta`` at the rung, while fewer than that many have gone on from it (none while
    fewer than eta are scored there): a rung never promotes more than its best ``1/eta``."""
    quota = len(scores) // eta
    return key in sorted(scores, key=scores.get)[:quota] and len(gone_on - {key}) < quota


def furthest(trials: list[Any], budgets: tuple[int, ...]) -> dict[str, tuple[int, Any, bool]]:
    """Each configuration's furthest rung index reached (-1: none), the trial that reached it, and whether it is not
    paused: one of its trials runs or is queued (it is on its way), or a continuation of it failed (going on again
    from the same state would fail the same way)."""
    out: dict[str, tuple[int, Any, bool]] = {}
    for t in trials:
        facts = TrialRecord.of(t)
        if t.state == TrialState.FAIL and facts.continues is None:
            continue
        reached = [budgets.index(s) for s in t.intermediate_values if s in budgets]
        index = max(reached, default=-1 if facts.from_rung is None else facts.from_rung)
        busy = t.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL)
        key = config_key(t.params)
        before = out.get(key, (-2, None, False))
        best = (index, t) if index > before[0] else before[:2]
        out[key] = (*best, busy or before[2])
    return out


def rung(trials: list[Any], budgets: tuple[int, ...], index: int) -> tuple[dict[str, float], set[str]]:
    """The configurations' losses at rung ``index``, and which of them have gone on (or are going on) from it."""
    scores, ends = scores_at(trials, budgets[index]), furthest(trials, budgets)
    gone_on = {key for key in scores if ends[key][0] > index or (ends[key][2] and ends[key][0] == index)}
    return scores, gone_on


def best_paused(ends: dict[str, tuple[int, Any, bool]], scores: dict[str, float], index: int, keep: Any) -> Any:
    """The best-scoring configuration paused at rung ``index`` that ``keep(key)`` admits: its trial (None: none)."""
    paused = [
        (scores[key], t)
        for key, (at, t, busy) in ends.items()
        if at == index and not busy and t.state == TrialState.PRUNED and keep(key)
    ]
    return min(paused, key=lambda pair: pair[0])[1] if paused else None


def next_promotion(trials: list[Any], budgets: tuple[int, ...], eta: int) -> tuple[Any, int] | None:
    """A paused configuration that now ranks among the best of its rung, highest rung first: (its trial, rung index).
    The last rung before the target promotes only at the end (:func:`last_promotion`)."""
    ends = furthest(trials, budgets)
    for index in reversed(range(len(budgets) - 2)):
        scores, gone_on = rung(trials, budgets, index)
        found = best_paused(ends, scores, index, lambda key, s=scores, g=gone_on: promotable(s, g, key, eta))
        if found is not None:
            return found, index
    return None


def last_promotion(trials: list[Any], budgets: tuple[int, ...], most: int | None) -> tuple[Any, int] | None:
    """Once nothing runs and no new trial fits: the best paused configuration of the highest rung reached goes on to
    the target, then the next best, while the budget pays (``most``: at most that many, without a token budget).

    The last rung is decided here, among every configuration that reached it, and not as they arrive: the first to
    arrive would take the rung's places, and a better one that came later would never reach the target."""
    ends = furthest(trials, budgets)
    for index in reversed(range(len(budgets) - 1)):
        scores, gone_on = rung(trials, budgets, index)
        if most is not None and len(gone_on) >= most:
            return None
        found = best_paused(ends, scores, index, lambda key: True)
        if found is not None:
            return found, index
        if gone_on:  # this rung has sent its best on already: nothing lower to take
            return None
    return None


def promotions_due(trials: list[Any], budgets: tuple[int, ...], eta: int) -> list[int]:
    """How many configurations each rung will still promote as it stands (its best ``n // eta``, less those gone on;
    the last rung at least one, at the end)."""
    due = []
    for index in range(len(budgets) - 1):
        scores, gone_on = rung(trials, budgets, index)
        quota = max(1, len(scores) // eta) if index == len(budgets) - 2 and scores else len(scores) // eta
        due.append(max(0, quota - len(gone_on)))
    return due


class HalvingPruner(optuna.pruners.BasePruner):
    """Stops a trial at a rung unless its configuration is among the best ``1/eta`` there (see the module)."""

    def __init__(self, rungs: list[int], target: int, reduction_factor: int = 3) -> None:
        self.budgets, self.eta = (*rungs, target), reduction_factor

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step not in self.budgets[:-1]:
            return False
        if step == self.budgets[-2]:  # the last rung is decided at the end, among all that reached it
            return True
        scores, gone_on = rung(study.get_trials(deepcopy=False), self.budgets, self.budgets.index(step))
        return not promotable(scores, gone_on, config_key(trial.params), self.eta)
