"""What a sweep prints: trial lines, a progress bar, the best COMPLETE trial against the baseline."""

from __future__ import annotations

import sys
from typing import Any

from optuna.trial import TrialState

from picollm.console import show_progress
from picollm.sweeps.studies import counts, finished


def _value_text(t: Any) -> str:
    if t.value is None:
        return "-"
    stderr = t.user_attrs.get("value_stderr")
    return f"{t.value:.4f}" + (f"±{stderr:.4f}" if isinstance(stderr, float) else "")


def _tail(t: Any) -> str:
    if t.state == TrialState.FAIL:
        reason = t.user_attrs.get("fail_reason") or "worker lost (heartbeat expired)"
        return f" ({reason})"
    if t.state == TrialState.PRUNED:
        at = t.user_attrs.get("pruned_at_tokens")
        return " (pruned: value is the last intermediate loss" + (f" at {at:,} tokens)" if at else ")")
    return ""


def trial_line(t: Any, best: float | None) -> str:
    """One line per finished trial: number, state, value (± stderr), params, budget, and why when not final."""
    params = " ".join(f"{k}={_short(v)}" for k, v in t.params.items())
    best_text = f"best {best:.4f}" if best is not None else "best -"
    tokens = t.user_attrs.get("tokens")
    tokens_text = f" {tokens:,} tok" if tokens else ""
    return f"trial {t.number:3d} {t.state.name:8s} {_value_text(t):>8s} | {best_text} |{tokens_text} {params}{_tail(t)}"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def best_value(study: Any) -> float | None:
    """The best COMPLETE trial's value (Optuna ranks complete trials only)."""
    try:
        return study.best_value
    except ValueError:
        return None


class Progress:
    """A bar over finished trials with the best value so far, and one line per finished trial."""

    def __init__(self, study: Any, n_trials: int) -> None:
        from tqdm.auto import tqdm

        self.tqdm, self.study = tqdm, study
        self.seen = {t.number for t in study.trials if t.state.is_finished()}
        self.bar = tqdm(
            total=n_trials,
            initial=min(finished(study), n_trials),
            unit="trial",
            dynamic_ncols=True,
            disable=not show_progress(),
        )

    def show(self, study: Any, trial: Any) -> None:
        if trial.number in self.seen:
            return
        self.seen.add(trial.number)
        best = best_value(study)
        self.tqdm.write(trial_line(trial, best))
        sys.stdout.flush()  # one line per trial, also when stdout is a file
        self.bar.n = min(finished(study), self.bar.total)
        self.bar.set_postfix(best=f"{best:.4f}" if best is not None else "-")
        self.bar.refresh()

    def poll(self, study: Any) -> None:
        for t in study.get_trials(deepcopy=False):
            if t.state.is_finished():
                self.show(study, t)

    def close(self) -> None:
        self.bar.close()


def report_lines(study: Any) -> list[str]:
    """The best COMPLETE trial against the baseline (trial 0, the unmodified base config)."""
    c = counts(study)
    spent = sum(t.user_attrs.get("tokens") or 0 for t in study.trials)
    lines = [
        f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed, {c['RUNNING']} running; "
        f"{spent:,} training tokens spent"
    ]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not complete:
        return [*lines, "no trial has completed yet"]
    best = min(complete, key=lambda t: t.value)
    metric = best.user_attrs.get("metric", "value")
    baselines = [t for t in study.trials if t.user_attrs.get("baseline")]  # a retried baseline keeps the mark
    baseline = next((t for t in baselines if t.state == TrialState.COMPLETE), baselines[0] if baselines else None)
    params = " ".join(f"{k}={_short(v)}" for k, v in best.params.items())
    lines.append(f"best: trial {best.number} with {metric} {_value_text(best)} ({params})")
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
