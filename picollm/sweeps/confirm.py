"""Confirming a sweep's winner: re-train the top configs and the baseline with fresh seeds.

A study ranks trials by one run each, so its best trial is partly the luckiest seed. The same fresh seeds for every
candidate give a mean and 95% t-interval per config and a paired comparison (seed luck cancels) of the winner against
the runner-up and the baseline. Finished runs are recorded in the study, so a re-run trains only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from tqdm.auto import tqdm

from picollm import data, trainer
from picollm.config import Config, config_from_dict
from picollm.errors import PicoError
from picollm.scoring import evaluate_run
from picollm.sweeps.budget import spent_so_far, stored_plan
from picollm.sweeps.experiment import ConfirmSettings, apply_params, check_confirm, stored_settings
from picollm.sweeps.processes import in_processes, pool_rank
from picollm.sweeps.trial import StudyRecord, TrialRecord, record_confirm_run, record_study, worker_device
from picollm.threads import choose_layout
from picollm.tracking import new_run_id

LEVEL = 0.95  # confidence level of every interval and the threshold (1 - LEVEL) of every test


class NothingToConfirm(PicoError):
    """The study has no complete trial yet."""


# -- Statistics on plain numbers (no study needed: tested on synthetic values) ----------------


@dataclass
class Interval:
    """Mean of ``n`` values with a t-interval; ``low``/``high`` are NaN below two values."""

    mean: float
    low: float
    high: float
    sd: float
    n: int


@dataclass
class Paired:
    """Mean of ``a - b`` over shared seeds, its t-interval and the two-sided paired t-test's p-value."""

    diff: float
    low: float
    high: float
    p: float
    n: int

    @property
    def distinguishable(self) -> bool:
        return self.p < 1 - LEVEL


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    from scipy import stats

    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0)
    mean = math.fsum(values) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, math.nan, n)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, sd, n)


def paired_test(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Paired:
    """Paired t-test of ``a`` against ``b`` (same order = same seeds)."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    iv = t_interval(diffs, level)
    if iv.n < 2:
        return Paired(iv.mean, math.nan, math.nan, math.nan, iv.n)
    if iv.sd == 0:  # identical differences: certain, unless they are all zero
        return Paired(iv.mean, iv.mean, iv.mean, 1.0 if iv.mean == 0 else 0.0, iv.n)
    t = iv.mean / (iv.sd / math.sqrt(iv.n))
    p = float(2 * stats.t.sf(abs(t), iv.n - 1))
    return Paired(iv.mean, iv.low, iv.high, p, iv.n)


def compare_words(winner: str, other: str, pair: Paired, n_seeds: int) -> str:
    """One sentence a reader can act on: a real difference, or two configs that cannot be told apart."""
    if pair.n < 2 or math.isnan(pair.p):
        return f"{winner} vs {other}: fewer than two shared seeds, no comparison possible"
    numbers = f"{pair.diff:+.4f} nats (95% CI {pair.low:+.4f} to {pair.high:+.4f}, paired t-test p={pair.p:.3g})"
    if pair.distinguishable:  # a gap in words: "beats by 0.86", never "beats by -0.86"
        verb, sign = ("beats", -1) if pair.diff < 0 else ("is worse than", 1)
        gap = sorted((sign * pair.low, sign * pair.high))
        return (
            f"{winner} {verb} {other} by {sign * pair.diff:.4f} nats (95% CI {gap[0]:.4f} to {gap[1]:.4f}, "
            f"paired t-test p={pair.p:.3g}) over {pair.n} shared seeds"
        )
    return (
        f"{winner} and {other} cannot be told apart with {n_seeds} seeds: {numbers}; "
        f"the choice between them is a coin flip at this budget (more --seeds would be needed)"
    )


# -- Candidates and their runs ----------------------------------------------------------------


@dataclass
class Candidate:
    """One configuration to re-train: a complete trial's params (or the baseline's)."""

    number: int
    params: dict[str, Any]
    baseline: bool
    study_value: float | None

    @property
    def label(self) -> str:
        return f"trial {self.number}" + (" (baseline)" if self.baseline else "")


@dataclass
class ConfigResult:
    candidate: Candidate
    runs: dict[int, dict[str, Any]] = field(default_factory=dict)  # seed -> record

    def losses(self, seeds: Sequence[int]) -> list[float]:
        return [self.runs[s]["final_val_loss"] for s in seeds if _usable(self.runs.get(s))]

    def interval(self) -> Interval:
        return t_interval(self.losses(sorted(self.runs)))


def _usable(record: dict[str, Any] | None) -> bool:
    value = (record or {}).get("final_val_loss")
    return isinstance(value, int | float) and math.isfinite(value)


def params_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _finished(study: optuna.Study) -> list[Any]:
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return [t for t in study.get_trials(deepcopy=False, states=states) if t.intermediate_values or t.value is not None]


def _candidate(t: Any) -> Candidate:
    return Candidate(t.number, dict(t.params), TrialRecord.of(t).baseline, t.value)


def leader(study: optuna.Study) -> Any:
    """The trial the study ranks first: the lowest value among complete trials (pruned ones never win)."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not complete:
        raise NothingToConfirm(f"study {study.study_name!r} has no complete trial to confirm yet")
    return min(complete, key=lambda t: (t.value, t.number))


def gap_to(leader_trial: Any, other: Any) -> tuple[int | None, float] | None:
    """How far ``other`` trails the leader where both were last measured alike (the end, else a shared rung) or None."""
    if other.value is not None and other.state.name == "COMPLETE":
        return None, other.value - leader_trial.value
    shared = set(leader_trial.intermediate_values) & set(other.intermediate_values)
    if not shared:
        return None
    step = max(shared)
    return step, other.intermediate_values[step] - leader_trial.intermediate_values[step]


def shortlist(study: optuna.Study, leader_trial: Any, margin: float, most: int) -> list[Candidate]:
    """The closest ``most`` configurations that trail the leader by less than ``margin``: they cannot be told apart."""
    seen = {params_key(leader_trial.params)}
    close: list[tuple[float, Candidate]] = []
    for t in _finished(study):
        gap = gap_to(leader_trial, t)
        if params_key(t.params) in seen or gap is None or gap[1] >= margin:
            continue
        seen.add(params_key(t.params))
        close.append((gap[1], _candidate(t)))
    return [c for _, c in sorted(close, key=lambda pair: pair[0])[:most]]


def baseline_candidate(study: optuna.Study) -> Candidate | None:
    base = next((t for t in study.get_trials(deepcopy=False) if TrialRecord.of(t).baseline), None)
    return None if base is None else _candidate(base)


def candidates(study: optuna.Study, shortlisted: Sequence[int] = ()) -> list[Candidate]:
    """The leader, the shortlisted trials (numbers), and the baseline, each configuration once."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    out: dict[str, Candidate] = {}
    for t in [leader(study), *(by_number[n] for n in shortlisted if n in by_number)]:
        out.setdefault(params_key(t.params), _candidate(t))
    base = baseline_candidate(study)
    if base is not None:
        out.setdefault(params_key(base.params), base)
    return list(out.values())


def run_key(params: dict[str, Any], seed: int, budget_tokens: int | None) -> str:
    """Which finished run a later confirmation may reuse: same config, seed and budget."""
    text = f"{params_key(params)}|seed={seed}|budget={budget_tokens}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def seeds_for(study_seed: int, s: ConfirmSettings) -> list[int]:
    """Fresh seeds: never the study's own ``train.seed``, so no confirmation run repeats a trial."""
    first = s.first_seed if s.first_seed is not None else study_seed + 1
    return [first + i for i in range(s.seeds)]


def run_config(
    base: Config,
    params: dict[str, Any],
    seed: int,
    *,
    budget_tokens: int | None,
    reports: int,
    group: str,
    job_type: str,
    name: str,
) -> Config:
    """A study config with other values, seed and budget, ready for ``train()``."""
    values: dict[str, Any] = {
        **params,
        "train.seed": seed,
        "train.anneal_at": [],  # a trial's rungs: a confirmation is scored at its own end only
        "tracking.group": group,
        "tracking.job_type": job_type,
        "tracking.name": name,
    }
    if budget_tokens:
        values["train.max_tokens"] = budget_tokens
        values["train.eval_every_tokens"] = max(1, budget_tokens // max(1, reports))
    if params.get("data.test_tokens", base.data.test_tokens):
        values["tracking.save_weights"] = True  # the winner's and the baseline's runs are scored on the test set
    return apply_params(base, values)


def train_record(cfg: Config, run_prefix: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one confirmation run (no pruning) and keep what the statistics and exports need; ``extra`` goes into its
    run record (the offline fallback's note)."""
    run_id = new_run_id(run_prefix)
    try:
        summary = trainer.train(cfg, run_id=run_id, extra=extra)  # looked up here: tests patch it
    except PicoError:
        raise  # bad data or config: every run would fail the same way
    except Exception as exc:  # a diverging seed is a result (no loss), not a reason to stop confirming
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:300], "final_val_loss": None}
    keys = ("final_val_loss", "final_val_loss_stderr", "tokens", "run_dir", "wandb_run_id", "status")
    return {"run_id": run_id, **{key: summary.get(key) for key in keys}}


# -- Running a confirmation (resumable) and reading it back -----------------------------------


@dataclass
class Confirmation:
    """Every candidate's runs, the seeds used, and the ranking by mean confirmed loss."""

    study_name: str
    seeds: list[int]
    budget_tokens: int | None
    results: list[ConfigResult]
    seed_sd: float | None = None  # the leader's spread over seeds at this budget: what the shortlist rests on
    margin: float | None = None  # a gap below this to the leader means "cannot be told apart"

    def ranked(self) -> list[ConfigResult]:
        scored = [r for r in self.results if r.interval().n > 0]
        return sorted(scored, key=lambda r: r.interval().mean)

    def pair(self, a: ConfigResult, b: ConfigResult) -> Paired:
        shared = [s for s in self.seeds if _usable(a.runs.get(s)) and _usable(b.runs.get(s))]
        return paired_test(a.losses(shared), b.losses(shared))


def confirm_budget(study: optuna.Study, s: ConfirmSettings) -> int | None:
    """``confirm.budget_tokens``, else the study's target: the answer is checked at the budget it will train at."""
    settings = stored_settings(study)
    return s.budget_tokens or settings.target_tokens or settings.budget_tokens


def plan(study: optuna.Study, s: ConfirmSettings, shortlisted: Sequence[int] | None = None) -> Confirmation:
    """The candidates (``shortlisted``, else the latest shortlist) and seeds, with the runs recorded already."""
    check_confirm(s)
    facts = StudyRecord.of(study)
    base = facts.base
    if not base:
        raise PicoError(f"study {study.study_name!r} has no stored base config: it was not made by sweep.py")
    stored_settings = facts.confirm_settings or {}
    if shortlisted is None:
        shortlisted = stored_settings.get("shortlist", [])
    budget = confirm_budget(study, s)
    seeds = seeds_for(int(base["train"]["seed"]), s)
    stored = facts.confirm_runs
    results = []
    for cand in candidates(study, shortlisted):
        keys = {seed: run_key(cand.params, seed, budget) for seed in seeds}
        results.append(ConfigResult(cand, {seed: stored[key] for seed, key in keys.items() if key in stored}))
    return Confirmation(
        study.study_name, seeds, budget, results, stored_settings.get("seed_sd"), stored_settings.get("margin")
    )


def confirm_study(study: optuna.Study, s: ConfirmSettings, workers: int | None = None) -> Confirmation:
    """Confirm the leader at the target budget, then what cannot be told apart from it, and the baseline.

    The leader's seeds measure the seed noise; a gap below the 95% bound of a two-seed difference (1.96 * sqrt(2) *
    spread) is shortlisted. Each run is recorded as it finishes (a re-run trains only what is missing) and scored once,
    at the end.
    """
    parallel, threads = choose_layout(workers)
    first = plan(study, s, shortlisted=[])
    leading = first.results[0]
    _train_missing(study, first, [leading], parallel, threads)
    seed_sd = leading.interval().sd
    margin = MARGIN_Z * math.sqrt(2) * seed_sd if math.isfinite(seed_sd) else math.inf
    chosen = [c.number for c in shortlist(study, leader(study), margin, affordable(study, s, first))]
    conf = plan(study, s, shortlisted=chosen)
    conf.seed_sd, conf.margin = seed_sd, margin
    record_study(
        study, confirm_settings={**asdict(s), "shortlist": chosen, "seed_sd": seed_sd, "margin": _finite(margin)}
    )
    _train_missing(study, conf, conf.results, parallel, threads)
    score_on_test(study, conf)
    return conf


def affordable(study: optuna.Study, s: ConfirmSettings, first: Confirmation) -> int:
    """How many close configurations the confirmation may train: ``confirm.top``, fewer where the study's token
    budget has no room left for their runs beside the baseline's (the budget reserved the leader's and the
    baseline's only)."""
    plan = stored_plan(study)
    if plan is None or plan.max_tokens is None:
        return s.top
    per_config = s.seeds * ((first.budget_tokens or 0) + plan.step_tokens)
    left = plan.max_tokens - spent_so_far(study, plan) - per_config  # the baseline's runs to come
    return max(0, min(s.top, left // per_config)) if per_config else s.top


def score_on_test(study: optuna.Study, conf: Confirmation) -> None:
    """The winner's and the baseline's runs scored on the test set, which no choice has seen; recorded with each run."""
    if not StudyRecord.of(study).base.get("data", {}).get("test_tokens") or not conf.ranked():
        return
    for result in scored_on_test(conf):
        for seed, record in result.runs.items():
            if not _usable(record) or "test_loss" in record or not record.get("run_dir"):
                continue
            scored = evaluate_run(record["run_dir"], weights="final", test=True)
            record.update(test_loss=scored["loss"], test_loss_stderr=scored["stderr"], test_tokens=scored["tokens"])
            record_confirm_run(study, run_key(result.candidate.params, seed, conf.budget_tokens), record)


def scored_on_test(conf: Confirmation) -> list[ConfigResult]:
    winner = conf.ranked()[0]
    baseline = next((r for r in conf.results if r.candidate.baseline), None)
    return [winner] if baseline is None or baseline is winner else [winner, baseline]


@dataclass
class Held:
    """A configuration's mean loss on one set over its seeds, with a standard error from the documents and the seeds."""

    mean: float
    stderr: float
    n: int


def held_out(result: ConfigResult, key: str) -> Held | None:
    values = [(r[key], r.get(f"{key}_stderr") or 0.0) for r in result.runs.values() if r.get(key) is not None]
    if not values:
        return None
    losses = [v for v, _ in values]
    tokens = math.fsum(se for _, se in values) / len(values)
    seeds = t_interval(losses).sd if len(losses) > 1 else 0.0
    return Held(math.fsum(losses) / len(losses), math.sqrt(tokens**2 + seeds**2 / len(losses)), len(losses))


def winners_curse(result: ConfigResult) -> tuple[float, float] | None:
    """Validation minus test over the seeds scored on both, with its standard error: each seed's two losses come
    from the same model, so the seeds enter through their paired differences; the two sets' document sampling
    errors are independent and add."""
    pairs = [r for r in result.runs.values() if r.get("test_loss") is not None and r.get("final_val_loss") is not None]
    if not pairs:
        return None
    diffs = [r["final_val_loss"] - r["test_loss"] for r in pairs]
    seeds = t_interval(diffs).sd ** 2 / len(diffs) if len(diffs) > 1 else 0.0
    docs = [
        math.fsum(r.get(f"{key}_stderr") or 0.0 for r in pairs) / len(pairs) for key in ("final_val_loss", "test_loss")
    ]
    return math.fsum(diffs) / len(diffs), math.sqrt(seeds + docs[0] ** 2 + docs[1] ** 2)


def test_lines(conf: Confirmation) -> list[str]:
    """Validation and test figures of the winner and the baseline: their difference is the winner's curse."""
    lines = []
    for result in scored_on_test(conf) if conf.ranked() else []:
        test, val, curse = held_out(result, "test_loss"), held_out(result, "final_val_loss"), winners_curse(result)
        if test is None or val is None or curse is None:
            continue
        lines.append(
            f"{result.candidate.label}: validation {val.mean:.4f} ± {val.stderr:.4f}, test {test.mean:.4f} ± "
            f"{test.stderr:.4f} over {test.n} seeds; validation - test {curse[0]:+.4f} ± {curse[1]:.4f} "
            "(the winner's curse: the search chose on the validation set, never on the test set)"
        )
    return lines


MARGIN_Z = 1.96  # the shortlist's bound: 95% of the differences between two seeds of one configuration


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _train_missing(
    study: optuna.Study, conf: Confirmation, results: list[ConfigResult], parallel: int, threads: int
) -> None:
    facts = StudyRecord.of(study)
    if facts.trained_base:
        base, note = config_from_dict(facts.trained_base), facts.offline_fallback
    else:
        base, note = _offline_resolved(facts.base)
    extra = {"offline_fallback": note} if note else None  # in each run's meta.json and W&B config, as a trial's
    todo = [(r, seed) for seed in conf.seeds for r in results if seed not in r.runs]
    jobs = []
    for i, (result, seed) in enumerate(todo):
        name = f"{study.study_name}-confirm-t{result.candidate.number}-s{seed}"
        cfg = run_config(
            base,
            result.candidate.params,
            seed,
            budget_tokens=conf.budget_tokens,
            reports=1,
            group=study.study_name,
            job_type="confirm",
            name=name,
        )
        cfg.train.threads = cfg.train.threads or threads
        jobs.append((i, cfg, f"{name}-", extra))
    quiet = not todo or not sys.stderr.isatty()
    with tqdm(total=len(todo), unit="run", desc=f"confirm {study.study_name}", disable=quiet) as bar:
        for i, record in in_processes(_confirm_run, jobs, parallel):
            result, seed = todo[i]
            record = {"trial": result.candidate.number, "seed": seed, "budget_tokens": conf.budget_tokens, **record}
            record_confirm_run(study, run_key(result.candidate.params, seed, conf.budget_tokens), record)
            result.runs[seed] = record
            bar.update()


def _confirm_run(job: tuple[int, Config, str, dict[str, Any] | None]) -> tuple[int, dict[str, Any]]:
    """One confirmation run in a worker process (on that worker's own GPU, with CUDA): its index and record."""
    i, cfg, prefix, extra = job
    cfg.train.device = worker_device(pool_rank(), cfg.train.device)
    return i, train_record(cfg, prefix, extra)


def _offline_resolved(base: dict[str, Any]) -> tuple[Config, str | None]:
    """A study made before the trained base was recorded: the data its trials used, probed again here."""
    cfg, note = data.apply_offline_fallback(config_from_dict(base))  # looked up here: tests patch it
    if note:
        print(note, file=sys.stderr, flush=True)
    return cfg, note


def summary_lines(conf: Confirmation) -> list[str]:
    """Mean and interval per config, then the winner against the runner-up and the baseline, in words."""
    ranked = conf.ranked()
    if not ranked:
        return ["confirmation: no run finished"]
    lines = [
        f"confirmation of study {conf.study_name!r}: {len(conf.seeds)} fresh seeds {conf.seeds}, "
        f"{f'{conf.budget_tokens:,}' if conf.budget_tokens else 'the base config budget of'} tokens per run, "
        "metric final_val_loss (the study's whole validation set)"
    ]
    for r in ranked:
        iv = r.interval()
        lines.append(
            f"  {r.candidate.label:22s} mean {iv.mean:.4f}  95% CI [{iv.low:.4f}, {iv.high:.4f}]  "
            f"sd {iv.sd:.4f}  n={iv.n}  (study value {_fmt(r.candidate.study_value)})"
        )
    if conf.margin is not None and conf.seed_sd is not None:
        lines.append(
            f"shortlist: the leader and every configuration within {conf.margin:.4f} nats of it where the study last "
            f"measured both (1.96 x sqrt(2) x the leader's seed sd {conf.seed_sd:.4f}), and the baseline"
        )
    return [*lines, *verdict_lines(conf), certainty_line(conf), *test_lines(conf)]


def certainty_line(conf: Confirmation) -> str:
    """How sure the pick is: how many confirmed configurations lie within the seed noise of the winner."""
    ranked = conf.ranked()
    winner, others = ranked[0], [r for r in ranked[1:] if not r.candidate.baseline]
    if conf.margin is None or not math.isfinite(conf.margin):
        return "how sure: unknown (the leader's seeds gave no spread to compare with)"
    if not others:
        return (
            f"how sure: clear; no other configuration came within {conf.margin:.4f} nats of the leader where the study "
            "measured both"
        )
    best = winner.interval().mean
    close = [r for r in others if r.interval().mean - best < conf.margin]
    if not close:
        return f"how sure: clear; the {len(others)} other confirmed configuration(s) trail by over {conf.margin:.4f}"
    return (
        f"how sure: {len(close)} of {len(others)} other confirmed configuration(s) within {conf.margin:.4f} nats of "
        "the winner: equally good answers at this budget as far as these seeds can tell (more --seeds would split them)"
    )


def verdict_lines(conf: Confirmation) -> list[str]:
    """The answer in words: the confirmed winner, then how it compares with the runner-up and the baseline."""
    ranked = conf.ranked()
    winner = ranked[0]
    lines = [f"confirmed winner: {winner.candidate.label} {_params_text(winner.candidate.params)}"]
    if len(ranked) > 1:
        lines.append(
            compare_words(
                winner.candidate.label, ranked[1].candidate.label, conf.pair(winner, ranked[1]), len(conf.seeds)
            )
        )
    baseline = next((r for r in ranked if r.candidate.baseline), None)
    if baseline is winner:
        lines.append(
            "the baseline itself is the confirmed winner: the search found nothing better than the base config"
        )
    elif baseline is not None and baseline is not ranked[1]:
        lines.append(
            compare_words(
                winner.candidate.label, baseline.candidate.label, conf.pair(winner, baseline), len(conf.seeds)
            )
        )
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={f'{v:.3g}' if isinstance(v, float) else v}" for k, v in params.items())
