"""What a sweep prints: trial lines, a progress bar, the best COMPLETE trial against the baseline."""

from __future__ import annotations

import sys
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from picollm.console import show_progress
from picollm.sweeps.budget import confirmation_tokens, stored_plan, tried_at_target
from picollm.sweeps.study import FINISHED, CappedStudy, counts
from picollm.sweeps.trial import TrialRecord


def _value_text(t: Any) -> str:
    if t.value is None:
        return "-"
    stderr = TrialRecord.of(t).value_stderr
    return f"{t.value:.4f}" + (f"±{stderr:.4f}" if isinstance(stderr, float) else "")


def _tail(t: Any) -> str:
    if t.state == TrialState.FAIL:
        reason = TrialRecord.of(t).fail_reason or "worker lost (heartbeat expired)"
        return f" ({reason})"
    facts = TrialRecord.of(t)
    went_on = f"; continues trial {facts.continues}" if facts.continues is not None else ""
    if t.state == TrialState.PRUNED:
        at = facts.pruned_at_tokens
        return " (pruned: value is the last intermediate loss" + (f" at {at:,} tokens" if at else "") + f"{went_on})"
    return f" ({went_on[2:]})" if went_on else ""


def trial_line(t: Any, best: float | None) -> str:
    """One line per finished trial: number, state, value (± stderr), params, every token it trained, and why when not
    final."""
    params = " ".join(f"{k}={short(v)}" for k, v in t.params.items())
    best_text = f"best {best:.4f}" if best is not None else "best -"
    facts = TrialRecord.of(t)
    tokens = facts.spent_tokens if facts.spent_tokens is not None else facts.tokens
    tokens_text = f" {tokens:,} tok" if tokens else ""
    return f"trial {t.number:3d} {t.state.name:8s} {_value_text(t):>8s} | {best_text} |{tokens_text} {params}{_tail(t)}"


def short(value: Any) -> str:
    """A parameter as the trial lines show it: floats to 3 significant digits, a missing one as '-'."""
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def best_value(study: optuna.Study, upto: Any = None) -> float | None:
    """The best COMPLETE trial's value (Optuna ranks complete trials only); with ``upto``, among the trials that had
    finished when ``upto`` did, so a line never names a best that came later."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if upto is not None and upto.datetime_complete is not None:
        complete = [t for t in complete if t.datetime_complete and t.datetime_complete <= upto.datetime_complete]
    values = [t.value for t in complete if t.value is not None]
    return min(values) if values else None


def in_finishing_order(trials: list[Any]) -> list[Any]:
    """Finished trials in the order they finished, then the others by number: each line's ``best`` (see
    :func:`best_value`) is then a value shown on that line or above it."""
    done = sorted((t for t in trials if t.datetime_complete), key=lambda t: (t.datetime_complete, t.number))
    return done + [t for t in trials if not t.datetime_complete]


class Progress:
    """A bar over finished trials (or over the trials' share of a token budget) with the best value so far, and one
    line per finished trial."""

    def __init__(self, study: CappedStudy) -> None:
        self.study, self.plan = study, study.plan
        self.seen = {t.number for t in study.trials if t.state.is_finished()}
        budgeted = self.plan.max_tokens is not None
        total = self.plan.max_tokens - self.plan.reserve if budgeted else study.total
        self.bar = tqdm(
            total=total,
            unit="tok" if budgeted else "trial",
            unit_scale=budgeted,
            dynamic_ncols=True,
            disable=not show_progress(),
        )
        self.advance(study)

    def advance(self, study: optuna.Study) -> None:
        done = study.get_trials(deepcopy=False, states=FINISHED)
        spent = sum(self.plan.spent(t) for t in done) if self.plan.max_tokens is not None else len(done)
        self.bar.n = min(spent, self.bar.total)

    def show(self, study: optuna.Study, trial: Any) -> None:
        if trial.number in self.seen:
            return
        self.seen.add(trial.number)
        best = best_value(study, upto=trial)
        tqdm.write(trial_line(trial, best))
        sys.stdout.flush()  # one line per trial, also when stdout is a file
        self.advance(study)
        self.bar.set_postfix(best=f"{best:.4f}" if best is not None else "-")
        self.bar.refresh()

    def poll(self, study: optuna.Study) -> None:
        for t in in_finishing_order(study.get_trials(deepcopy=False)):
            if t.state.is_finished():
                self.show(study, t)

    def close(self) -> None:
        self.bar.close()


def spent_words(study: optuna.Study) -> str:
    """Every token the study trained (its trials, their branched decays, its confirmation runs), against its budget
    and against training every configuration it tried once at the target."""
    trials = study.get_trials(deepcopy=False)
    facts = [TrialRecord.of(t) for t in trials]
    total = sum(int(f.spent_tokens if f.spent_tokens is not None else f.tokens or 0) for f in facts)
    decays = sum(int(f.decay_tokens or 0) for f in facts)
    confirm = confirmation_tokens(study)
    spent = total + confirm
    parts = [
        f"{spent:,} training tokens spent (trials {total - decays:,}, branched decays {decays:,}, "
        f"confirmation {confirm:,})"
    ]
    plan = stored_plan(study)
    if plan is not None and plan.max_tokens is not None:
        parts.append(f"{100 * spent / plan.max_tokens:.0f}% of the budget of {plan.max_tokens:,}")
    target = plan.budgets[-1] if plan is not None else 0
    if target and (brute := tried_at_target(trials, target)):
        parts.append(f"{100 * spent / brute:.0f}% of training each configuration it tried once at {target:,} tokens")
    return "; ".join(parts)


def report_lines(study: optuna.Study) -> list[str]:
    """The best COMPLETE trial against the baseline (trial 0, the unmodified base config)."""
    c = counts(study)
    lines = [
        f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed, {c['RUNNING']} running; "
        + spent_words(study)
    ]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not complete:
        return [*lines, "no trial has completed yet"]
    best = min(complete, key=lambda t: t.value)
    metric = TrialRecord.of(best).metric or "value"
    baselines = [t for t in study.trials if TrialRecord.of(t).baseline]  # a retried baseline keeps the mark
    baseline = next((t for t in baselines if t.state == TrialState.COMPLETE), baselines[0] if baselines else None)
    params = " ".join(f"{k}={short(v)}" for k, v in best.params.items())
    lines.append(f"best: trial {best.number} with {metric} {_value_text(best)} ({params})")
    plan = stored_plan(study)
    if plan is not None and len(plan.budgets) == 1 and plan.budgets[0]:
        lines.append(
            f"this answer is for {plan.budgets[0]:,} training tokens per run; for a longer training run, aim the sweep "
            "at that budget with study.target_tokens (experiments/target.yaml)"
        )
    if baseline is not None and baseline.state == TrialState.COMPLETE:
        gain = baseline.value - best.value
        lines.append(
            f"baseline (trial {baseline.number}, the base config): {_value_text(baseline)} -> improvement {gain:.4f}"
        )
    elif baseline is not None:
        queued = [t.number for t in baselines if t.state == TrialState.WAITING]
        again = f"; queued again as trial {queued[0]}, a resume runs it (raise --n-trials if full)" if queued else ""
        lines.append(f"baseline (trial {baseline.number}) did not complete: {baseline.state.name}{again}")
    return lines
