"""A study's tokens: which configurations go on at each rung, and what the whole study may train.

**Successive halving with promotions** (``pruner: halving``; asynchronous, after Li et al. 2020, "A System for
Massively Parallel Hyperparameter Tuning"): a trial stops at each rung unless its configuration is among the best
``1/eta`` of those scored there; a stopped configuration is promoted later, from the checkpoint it stopped at, once it
ranks there. Optuna's SuccessiveHalvingPruner cannot pause a trial, so it lets the first trials at a rung go on (a
trial is best of one); with two workers the first trials of a study then ran to the target whatever they were. Here
the decision waits for ``eta`` configurations at the rung, and a paused configuration loses nothing but the wait: it
goes on from its own state (:func:`picollm.trainer.anneal` keeps one at every rung) in a new trial that
``continues`` it.

**The token budget** (``study.max_tokens``) covers trials, their branched decays and the confirmation. A target
study's trial trains its stable phase to a rung's branch point, decays a copy there, and stops or goes on, so what a
trial has cost once it is scored at a rung is known before it runs (:meth:`TokenPlan.cost_to`). The study starts a
trial only when its expected cost (a third of trials go on at each rung) fits beside what the running trials are
expected to spend and the confirmation's reserve; a trial goes past a rung only when the next rung's cost fits beside
what every running trial has already committed to. So a study never trains more than its budget, and the
confirmation always has its runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from picollm.sweeps.trial import StudyRecord, TrialRecord


def config_key(params: dict[str, Any]) -> str:
    """A configuration's identity across the trials that train it (a promotion is a new trial of the same one)."""
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
    """Stops a trial at a rung unless its configuration is among the best ``1/eta`` there (the module says how)."""

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


@dataclass(frozen=True)
class TokenPlan:
    """What a trial costs at each budget it can be scored at, and what the study may spend."""

    budgets: tuple[int, ...]  # the rungs scored by branched decays, then the trial's own budget (the target)
    decay_fraction: float  # of each rung's budget spent decaying a copy (0 without rungs)
    eta: int  # one trial in ``eta`` goes on at each rung
    step_tokens: int  # the most tokens one training step can take: rounding slack per budget
    reserve: int  # the confirmation's runs
    max_tokens: int | None = None  # None: the study counts trials, not tokens
    promotes: bool = False  # paused configurations go on later (pruner: halving): the rungs owe promotions

    def cost_to(self, index: int) -> int:
        """Tokens a trial has trained once scored at ``budgets[index]``: stable phase, decays, one step's slack each."""
        budget, last = self.budgets[index], index == len(self.budgets) - 1
        stable = budget if last else math.ceil((1 - self.decay_fraction) * budget)
        decays = sum(math.ceil(self.decay_fraction * b) for b in self.budgets[: index if last else index + 1])
        return stable + decays + (index + 1) * self.step_tokens

    def expected_from(self, index: int) -> float:
        """Expected cost of a trial that has been scored at ``budgets[index]`` (-1: not yet) and goes on."""
        last = len(self.budgets) - 1
        cost, chance = float(self.cost_to(min(index + 1, last))), 1.0
        for i in range(index + 2, len(self.budgets)):
            chance /= self.eta
            cost += chance * (self.cost_to(i) - self.cost_to(i - 1))
        return cost

    def index_of(self, trial: Any) -> int:
        """The last budget a trial was scored at (-1: none yet); a continuation starts at the rung it continues from."""
        steps = [s for s in trial.intermediate_values if s in self.budgets]
        if steps:
            return self.budgets.index(max(steps))
        from_rung = TrialRecord.of(trial).from_rung
        return -1 if from_rung is None else from_rung

    def paid(self, trial: Any) -> int:
        """What the run a continuation goes on from had cost: its own tokens start there."""
        rung = TrialRecord.of(trial).from_rung
        return 0 if rung is None else self.cost_to(rung)

    def next_cost(self, trial: Any) -> int:
        """What a trial has trained by its next rung (by the target, once scored there), less what it inherited."""
        return self.cost_to(min(self.index_of(trial) + 1, len(self.budgets) - 1)) - self.paid(trial)

    def spent(self, trial: Any) -> int:
        """A finished trial's tokens; a failed one's, which its worker did not say, up to its next rung."""
        recorded = TrialRecord.of(trial).spent_tokens
        return int(recorded) if recorded is not None else self.next_cost(trial)

    def ledger(self, trials: list[Any], hard: bool, skip: int | None = None) -> float:
        """Spent by finished trials plus what running and queued ones commit: their next rung (hard), or the expected
        cost of their way on and of the promotions the rungs still owe (not hard)."""
        total = 0.0
        for t in trials:
            if t.number == skip:
                continue
            if t.state in (TrialState.RUNNING, TrialState.WAITING):
                total += self.next_cost(t) if hard else self.expected_from(self.index_of(t)) - self.paid(t)
            else:
                total += self.spent(t)
        if not hard and self.promotes:
            due = promotions_due(trials, self.budgets, self.eta)
            total += sum(n * (self.expected_from(k) - self.cost_to(k)) for k, n in enumerate(due))
        return total

    @property
    def kept(self) -> int:
        """Tokens no new trial may use: the confirmation's; where trials cannot pause (Optuna's halving lets the first
        trials at a rung go on), also one trial's way to the target, so the last promotions are not starved."""
        slack = self.cost_to(len(self.budgets) - 1) if len(self.budgets) > 1 and not self.promotes else 0
        return self.reserve + slack

    def room_for_trial(self, trials: list[Any]) -> bool:
        """Does one more trial fit, at its expected cost, beside what the study expects to spend and keeps?"""
        if self.max_tokens is None:
            return True
        return self.ledger(trials, hard=False) + self.expected_from(-1) + self.kept <= self.max_tokens

    def room_to_go_on(self, trials: list[Any], trial: Any, index: int) -> bool:
        """May ``trial``, scored at ``budgets[index]``, train on to the next budget? Hard costs only."""
        if self.max_tokens is None or index + 1 >= len(self.budgets):
            return True
        cost = self.cost_to(index + 1) - self.paid(trial)
        return self.ledger(trials, hard=True, skip=trial.number) + cost + self.reserve <= self.max_tokens

    def room_for_promotion(self, trials: list[Any], index: int) -> bool:
        """May a configuration paused at ``budgets[index]`` go on to the next budget? Hard costs only."""
        if self.max_tokens is None:
            return True
        cost = self.cost_to(index + 1) - self.cost_to(index)
        return self.ledger(trials, hard=True) + cost + self.reserve <= self.max_tokens

    def trials_expected(self) -> int:
        """About how many trials the budget starts."""
        if self.max_tokens is None:
            return 0
        return max(0, int((self.max_tokens - self.kept) // self.expected_from(-1)))


def plan_of(exp: Any) -> TokenPlan:
    """The experiment's plan: its rungs (the decays its trials branch, ``train.anneal_at``) and target, its decay, and
    the confirmation it reserves tokens for."""
    s, base = exp.study, exp.base
    target = s.target_tokens or s.budget_tokens
    rungs = tuple(base.train.anneal_at)
    budgets = (*rungs, target) if rungs else (target or 0,)
    blocks = [base.model.block_size]
    for p in exp.space:
        if p.key == "model.block_size":
            blocks += list(p.choices) if p.type == "categorical" else [int(p.high)]
    step_tokens = base.train.batch_size * max(blocks)
    reserve = 0
    if exp.confirm is not None:  # the leader and the baseline; close ones only where the budget has room left
        reserve = 2 * exp.confirm.seeds * ((exp.confirm.budget_tokens or target or 0) + step_tokens)
    return TokenPlan(
        budgets=budgets,
        decay_fraction=base.optim.decay_fraction if rungs else 0.0,
        eta=int(s.pruner_options.get("reduction_factor", 3)),
        step_tokens=step_tokens,
        reserve=reserve,
        max_tokens=s.max_tokens,
        promotes=s.pruner == "halving",
    )


def tried_at_target(trials: list[Any], target: int) -> int:
    """Tokens to train every configuration the study tried once at the target: brute force over the same configs."""
    return len({config_key(t.params) for t in trials if t.state.is_finished()}) * target


def confirmation_tokens(study: optuna.Study) -> int:
    """The tokens of the confirmation runs recorded so far."""
    return sum(int(run.get("tokens") or 0) for run in StudyRecord.of(study).confirm_runs.values())


def spent_so_far(study: optuna.Study, plan: TokenPlan) -> int:
    """Every token the study has trained: its trials (and their decays) and its confirmation runs so far."""
    trials = sum(plan.spent(t) for t in study.get_trials(deepcopy=False) if t.state.is_finished())
    return trials + confirmation_tokens(study)


def stored_plan(study: optuna.Study) -> TokenPlan | None:
    """The plan the study's last sweep ran under (None for a study made before plans were recorded)."""
    raw = StudyRecord.of(study).token_plan
    return None if raw is None else TokenPlan(**{**raw, "budgets": tuple(raw["budgets"])})


def plan_words(plan: TokenPlan) -> str:
    """The budget as the sweep's first lines and the report say it, before any token is trained."""
    rungs = plan.budgets
    ladder = f"from {rungs[0]:,} tokens" + (
        f", one in {plan.eta} going on, as a trial of its own, at each of {', '.join(f'{b:,}' for b in rungs[1:])}"
        if len(rungs) > 1
        else ""
    )
    return (
        f"budget {plan.max_tokens:,} training tokens (trials, branched decays and confirmation): about "
        f"{plan.trials_expected()} configurations {ladder}; {plan.reserve:,} kept for the confirmation"
    )
