"""Does the cheap budget predict the target? Rank agreement and regret of picking a configuration early.

At every reported token count and at the target: Spearman's rho with the target losses (confirmation means where there
are any) and the regret of picking there, with bootstrap intervals over configurations and their seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from picollm.errors import DataError
from picollm.sweeps.budget import config_key
from picollm.sweeps.experiment import stored_settings
from picollm.sweeps.trial import StudyRecord, TrialRecord

if TYPE_CHECKING:
    import optuna

MIN_TRIALS = 3  # complete trials below which there is nothing to rank
MIN_EVIDENCE = 4  # configurations measured at both budgets below which the report says the evidence is missing
N_BOOTSTRAP = 2000


@dataclass
class Configuration:
    """One trial's configuration: its losses by token count and its losses at the target (one per seed)."""

    trial: int
    losses: dict[int, float]
    target: list[float] = field(default_factory=list)
    baseline: bool = False


@dataclass
class Budgets:
    budget: int  # the cheap budget the trials were ranked at
    target: int  # the budget the winner is trained at

    @property
    def ratio(self) -> float:
        return self.target / self.budget


def rank_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row of ``x`` with the same row of ``y`` (ties: average ranks; a constant row: NaN)."""
    rx = stats.rankdata(np.atleast_2d(x), axis=1)
    ry = stats.rankdata(np.atleast_2d(y), axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    denom = np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (rx * ry).sum(axis=1) / denom, np.nan)


def regrets(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per row: the ``y`` of the lowest ``x`` (first on ties) minus the lowest ``y``."""
    x, y = np.atleast_2d(x), np.atleast_2d(y)
    picked = np.take_along_axis(y, x.argmin(axis=1)[:, None], axis=1)[:, 0]
    return picked - y.min(axis=1)


def resample(x: np.ndarray, seeds: list[list[float]], n_boot: int, rng: np.random.Generator) -> tuple:
    """``n_boot`` bootstrap copies of (x, target means), resampling configurations and, within each, its seeds."""
    n, width = len(seeds), max(len(s) for s in seeds)
    padded = np.array([s + [0.0] * (width - len(s)) for s in seeds])
    counts = np.array([len(s) for s in seeds])
    drawn = rng.integers(0, n, size=(n_boot, n))
    k = counts[drawn]
    picks = np.floor(rng.random((n_boot, n, width)) * k[..., None]).astype(int)
    values = padded[drawn[..., None], picks]
    used = np.arange(width) < k[..., None]
    return x[drawn], (values * used).sum(axis=-1) / k


def _interval(values: np.ndarray) -> list[float] | None:
    finite = values[np.isfinite(values)]
    return [float(v) for v in np.percentile(finite, [2.5, 97.5])] if len(finite) else None


def agreement(x: np.ndarray, seeds: list[list[float]], n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """Rank correlation and regret of choosing on ``x`` for the target losses ``seeds``, with 95% intervals."""
    y = np.array([float(np.mean(s)) for s in seeds])
    rho = rank_correlations(x, y)[0] if len(x) >= 3 else math.nan
    result = {
        "n": len(x),
        "spearman": None if math.isnan(rho) else float(rho),
        "spearman_ci": None,
        "regret": float(regrets(x, y)[0]) if len(x) else None,
        "regret_ci": None,
    }
    if len(x) >= 3:
        bx, by = resample(x, seeds, n_boot, np.random.default_rng(seed))
        result["spearman_ci"] = _interval(rank_correlations(bx, by))
        result["regret_ci"] = _interval(regrets(bx, by))
    return result


def budgets_of(study: optuna.Study) -> Budgets:
    s = stored_settings(study)
    if not s.budget_tokens:
        raise DataError(f"study {study.study_name!r} has no budget_tokens in its settings: it was not made by sweep.py")
    return Budgets(s.budget_tokens, s.target_tokens or s.budget_tokens)


def _confirmed(study: optuna.Study, target: int) -> dict[int, list[float]]:
    """Each trial's confirmation losses at the target budget (usable runs only)."""
    out: dict[int, list[float]] = {}
    for run in StudyRecord.of(study).confirm_runs.values():
        if not isinstance(run, dict) or run.get("budget_tokens") != target:
            continue
        loss = run.get("final_val_loss")
        if isinstance(loss, int | float) and math.isfinite(loss) and run.get("status") != "failed":
            out.setdefault(int(run["trial"]), []).append(float(loss))
    return out


def configurations(study: optuna.Study, budgets: Budgets) -> list[Configuration]:
    """Every complete or pruned trial with its losses; a complete trial that trained to the target adds its value."""
    from optuna.trial import TrialState

    confirmed = _confirmed(study, budgets.target)
    by_config: dict[str, Configuration] = {}  # a paused configuration and its continuations are one configuration
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        facts = TrialRecord.of(t)
        losses = {int(k): float(v) for k, v in t.intermediate_values.items() if math.isfinite(v)}
        at_target = t.state == TrialState.COMPLETE and (facts.tokens is None or facts.tokens >= budgets.target)
        if at_target and t.value is not None and math.isfinite(t.value):
            losses[budgets.target] = float(t.value)
        key = config_key(t.params)
        if key in by_config:
            losses = {**by_config[key].losses, **losses}
        first = by_config[key].trial if key in by_config else t.number
        target = confirmed.get(first) or confirmed.get(t.number) or []
        target = target or ([losses[budgets.target]] if budgets.target in losses else [])
        baseline = facts.baseline or (key in by_config and by_config[key].baseline)
        by_config[key] = Configuration(first, losses, target, baseline)
    return list(by_config.values())


def cheap_row(rows: list[dict[str, Any]], budgets: Budgets) -> dict[str, Any] | None:
    """The row of the cheap budget: its own token count, else the last one measured before it."""
    before = [r for r in rows if r["tokens"] <= budgets.budget]
    return before[-1] if before else None


def budget_rows(configs: list[Configuration], budgets: Budgets, n_boot: int = N_BOOTSTRAP) -> list[dict[str, Any]]:
    """One row per measured token count (and the target): agreement with the target over configurations with both."""
    counts = sorted({k for c in configs for k in c.losses} | {budgets.target})
    rows = []
    for tokens in counts:
        both = [c for c in configs if tokens in c.losses and c.target]
        x = np.array([c.losses[tokens] for c in both])
        row = {"tokens": tokens, "trials": [c.trial for c in both], **agreement(x, [c.target for c in both], n_boot)}
        rows.append(row)
    return rows


def transfer_analysis(study: optuna.Study, n_boot: int = N_BOOTSTRAP) -> dict[str, Any]:
    """Everything ``analyze.py transfer`` prints and saves; too few finished trials is one :class:`DataError`."""
    from optuna.trial import TrialState

    budgets = budgets_of(study)
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if complete < MIN_TRIALS:
        raise DataError(
            f"study {study.study_name!r} has {complete} complete trial(s): comparing budgets needs {MIN_TRIALS}"
        )
    configs = configurations(study, budgets)
    rows = budget_rows(configs, budgets, n_boot)
    result = {
        "study": study.study_name,
        "budget_tokens": budgets.budget,
        "target_tokens": budgets.target,
        "ratio": budgets.ratio,
        "statistic": "Spearman rank correlation; 95% percentile bootstrap over configurations and their seeds",
        "n_bootstrap": n_boot,
        "rows": rows,
        "configurations": [
            {"trial": c.trial, "baseline": c.baseline, "losses": c.losses, "target_losses": c.target} for c in configs
        ],
    }
    result["verdict"] = verdict(result, budgets)
    return result


def _span(ci: list[float] | None, fmt: str) -> str:
    return "-" if ci is None else f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def verdict(result: dict[str, Any], budgets: Budgets) -> str:
    """The answer in words; a missing measurement at the target is said, never left out."""
    swept = f"this study swept at {budgets.budget:,} tokens for a target of {budgets.target:,}"
    if budgets.target == budgets.budget:
        return (
            f"This study's target is its own budget ({budgets.budget:,} tokens): the rows show how well a trial's "
            "earlier losses predict its final one (for a larger target, set study.target_tokens)."
        )
    row = cheap_row(result["rows"], budgets)
    n = row["n"] if row else 0
    if n == 0:
        return f"{swept.capitalize()} and has no measurement at the target: the ranking may not carry over."
    if n < MIN_EVIDENCE:
        return (
            f"{swept.capitalize()} and has only {n} configuration(s) measured at both: too few to tell whether the "
            "ranking carries over."
        )
    at = f"at {row['tokens']:,} tokens" + (" (the cheap budget)" if row["tokens"] == budgets.budget else "")
    rho = "undefined (constant losses)" if row["spearman"] is None else f"{row['spearman']:.2f}"
    return (
        f"{swept.capitalize()} ({budgets.ratio:.3g}x). Ranked {at}, {n} configurations agree with their target "
        f"ranking by Spearman rho {rho} {_span(row['spearman_ci'], '.2f')} (95%); picking the best there costs "
        f"{row['regret']:.4f} nats {_span(row['regret_ci'], '.4f')} at the target."
    )


def _label(tokens: int, budgets: Budgets) -> str:
    marks = [name for name, at in (("cheap budget", budgets.budget), ("target", budgets.target)) if tokens == at]
    return " + ".join(marks)


def table_rows(result: dict[str, Any]) -> list[list[Any]]:
    """The table both the command line and the report show."""
    budgets = Budgets(result["budget_tokens"], result["target_tokens"])
    return [
        [
            f"{r['tokens']:,}",
            _label(r["tokens"], budgets),
            r["n"],
            r["spearman"],
            _span(r["spearman_ci"], ".2f"),
            r["regret"],
            _span(r["regret_ci"], ".4f"),
        ]
        for r in result["rows"]
    ]


TABLE_HEADER = ["tokens", "", "n configs", "Spearman rho", "95% CI", "regret (nats)", "95% CI"]


def transfer_lines(result: dict[str, Any]) -> list[str]:
    def show(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    rows = [[show(v) for v in row] for row in table_rows(result)]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(TABLE_HEADER)]
    lines = [
        f"study {result['study']!r}: does the ranking at each budget predict the ranking at the target "
        f"({result['target_tokens']:,} tokens)? ({result['statistic']})",
        "  ".join(h.ljust(w) for h, w in zip(TABLE_HEADER, widths, strict=True)).rstrip(),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return [*lines, result["verdict"]]
