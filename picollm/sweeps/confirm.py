"""Confirming a sweep's winner: re-train the top configs and the baseline with fresh seeds.

A study ranks trials by one run each, so its best trial is partly the luckiest seed. This module
re-trains the top-K complete configurations and the baseline (trial 0) with the same few fresh seeds
(``train.seed`` varied, everything else as in the study), scores each run on the study's whole
validation set (the summary's ``final_val_loss``: the same tokens that ranked the trials), and answers
with statistics instead of a single number: a mean and 95% t-interval per config, and a *paired*
comparison (same seeds, so seed luck shared by both configs cancels) of the winner against the
runner-up and against the baseline.

Finished confirmation runs are recorded in the study's user attributes, keyed by configuration, seed
and budget, so a re-run (or a second machine on the same storage) trains only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from picollm.config import config_from_dict
from picollm.errors import PicoError
from picollm.search import apply_params
from picollm.sweeps.settings import ConfirmSettings, check_confirm

LEVEL = 0.95  # confidence level of every interval and the threshold (1 - LEVEL) of every test
ATTR_PREFIX = "confirm:"  # study user attributes holding one finished confirmation run each
SETTINGS_ATTR = "confirm_settings"  # the latest confirmation's settings, so `sweep.py export` can redo its files


class NothingToConfirm(PicoError):
    """The study has no complete trial yet."""


# ---------------------------------------------------------------------------------------------
# Statistics on plain numbers (no study needed: tested on synthetic values).
# ---------------------------------------------------------------------------------------------


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
    if pair.distinguishable and pair.diff < 0:
        return f"{winner} beats {other} by {numbers} over {pair.n} shared seeds"
    if pair.distinguishable:
        return f"{winner} is worse than {other} by {numbers} over {pair.n} shared seeds"
    return (
        f"{winner} and {other} cannot be told apart with {n_seeds} seeds: {numbers}; "
        f"the choice between them is a coin flip at this budget (more --seeds would be needed)"
    )


# ---------------------------------------------------------------------------------------------
# Candidates and their runs.
# ---------------------------------------------------------------------------------------------


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


def candidates(study: Any, top: int) -> list[Candidate]:
    """The ``top`` complete trials with distinct params, best first, and the baseline trial."""
    from optuna.trial import TrialState

    complete = sorted(
        (t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None),
        key=lambda t: t.value,
    )
    out: dict[str, Candidate] = {}
    for t in complete:
        if len(out) == top:
            break
        out.setdefault(
            params_key(t.params), Candidate(t.number, dict(t.params), bool(t.user_attrs.get("baseline")), t.value)
        )
    if not out:
        raise NothingToConfirm(f"study {study.study_name!r} has no complete trial to confirm yet")
    base = next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline")), None)
    if base is not None and params_key(base.params) not in out:
        out[params_key(base.params)] = Candidate(base.number, dict(base.params), True, base.value)
    return list(out.values())


def run_key(params: dict[str, Any], seed: int, budget_tokens: int | None) -> str:
    """Which finished run a later confirmation may reuse: same config, seed and budget."""
    text = f"{params_key(params)}|seed={seed}|budget={budget_tokens}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def seeds_for(base: dict[str, Any], s: ConfirmSettings) -> list[int]:
    """Fresh seeds: never the study's own train.seed, so no confirmation run repeats a trial."""
    first = s.first_seed if s.first_seed is not None else int(base["train"]["seed"]) + 1
    return [first + i for i in range(s.seeds)]


def run_config(
    base: dict[str, Any],
    params: dict[str, Any],
    seed: int,
    *,
    budget_tokens: int | None,
    reports: int,
    group: str,
    job_type: str,
    name: str,
) -> dict[str, Any]:
    """A study config with other values, seed and budget, ready for ``train()``."""
    raw = apply_params(base, params)
    raw["train"]["seed"] = seed
    if budget_tokens:
        raw["train"]["max_tokens"] = budget_tokens
        raw["train"]["eval_every_tokens"] = max(1, budget_tokens // max(1, reports))
    raw["tracking"].update(group=group, job_type=job_type, name=name)
    return config_from_dict(raw).to_dict()


def train_record(raw: dict[str, Any], run_prefix: str) -> dict[str, Any]:
    """Train one confirmation run (no pruning) and keep what the statistics and exports need."""
    from picollm.tracking import new_run_id
    from picollm.trainer import train

    cfg, run_id = config_from_dict(raw), new_run_id(run_prefix)
    try:
        summary = train(cfg, run_id=run_id)
    except PicoError:
        raise  # bad data or config: every run would fail the same way
    except Exception as exc:  # a diverging seed is a result (no loss), not a reason to stop confirming
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:300], "final_val_loss": None}
    keys = ("final_val_loss", "final_val_loss_stderr", "tokens", "run_dir", "wandb_run_id", "status")
    return {"run_id": run_id, **{key: summary.get(key) for key in keys}}


# ---------------------------------------------------------------------------------------------
# Running a confirmation (resumable) and reading it back.
# ---------------------------------------------------------------------------------------------


@dataclass
class Confirmation:
    """Every candidate's runs, the seeds used, and the ranking by mean confirmed loss."""

    study_name: str
    seeds: list[int]
    budget_tokens: int | None
    results: list[ConfigResult]

    def ranked(self) -> list[ConfigResult]:
        scored = [r for r in self.results if r.interval().n > 0]
        return sorted(scored, key=lambda r: r.interval().mean)

    def pair(self, a: ConfigResult, b: ConfigResult) -> Paired:
        shared = [s for s in self.seeds if _usable(a.runs.get(s)) and _usable(b.runs.get(s))]
        return paired_test(a.losses(shared), b.losses(shared))


def _study_settings(study: Any) -> dict[str, Any]:
    return dict(study.user_attrs.get("settings") or {})


def plan(study: Any, s: ConfirmSettings) -> Confirmation:
    """The candidates and seeds, with every finished run already recorded in the study attached."""
    check_confirm(s)
    base = study.user_attrs.get("base")
    if not base:
        raise PicoError(f"study {study.study_name!r} has no stored base config: it was not made by sweep.py")
    budget = s.budget_tokens or _study_settings(study).get("budget_tokens")
    seeds = seeds_for(base, s)
    stored = {k[len(ATTR_PREFIX) :]: v for k, v in study.user_attrs.items() if k.startswith(ATTR_PREFIX)}
    results = []
    for cand in candidates(study, s.top):
        runs = {
            seed: stored[run_key(cand.params, seed, budget)]
            for seed in seeds
            if run_key(cand.params, seed, budget) in stored
        }
        results.append(ConfigResult(cand, runs))
    return Confirmation(study.study_name, seeds, budget, results)


def confirm_study(study: Any, s: ConfirmSettings, workers: int | None = None) -> Confirmation:
    """Train every missing (config, seed) run, recording each in the study as soon as it finishes.

    The runs are independent, so they go to ``workers`` processes at once (the sweep's own layout by default: one
    single-threaded worker per core, one per GPU with CUDA). A confirmation run is never pruned, so it is scored
    once, at the end, on the study's whole validation set: periodic scores would only cost time.
    """
    from tqdm.auto import tqdm

    from picollm.sweeps.layout import choose_layout
    from picollm.sweeps.processes import in_processes
    from picollm.sweeps.studies import TRAINED_BASE

    conf = plan(study, s)
    study.set_user_attr(SETTINGS_ATTR, asdict(s))
    base = study.user_attrs.get(TRAINED_BASE) or _offline_resolved(study.user_attrs["base"])
    todo = [(r, seed) for seed in conf.seeds for r in conf.results if seed not in r.runs]
    parallel, threads = choose_layout(workers)
    jobs = []
    for i, (result, seed) in enumerate(todo):
        name = f"{study.study_name}-confirm-t{result.candidate.number}-s{seed}"
        raw = run_config(
            base,
            result.candidate.params,
            seed,
            budget_tokens=conf.budget_tokens,
            reports=1,
            group=study.study_name,
            job_type="confirm",
            name=name,
        )
        raw["train"]["threads"] = raw["train"]["threads"] or threads
        jobs.append((i, raw, f"{name}-"))
    quiet = not todo or not sys.stderr.isatty()
    with tqdm(total=len(todo), unit="run", desc=f"confirm {study.study_name}", disable=quiet) as bar:
        for i, record in in_processes(_confirm_run, jobs, parallel):
            result, seed = todo[i]
            record = {"trial": result.candidate.number, "seed": seed, "budget_tokens": conf.budget_tokens, **record}
            study.set_user_attr(ATTR_PREFIX + run_key(result.candidate.params, seed, conf.budget_tokens), record)
            result.runs[seed] = record
            bar.update()
    return conf


def _confirm_run(job: tuple[int, dict[str, Any], str]) -> tuple[int, dict[str, Any]]:
    """One confirmation run in a worker process (on that worker's own GPU, with CUDA): its index and record."""
    from picollm.sweeps.objective import worker_device
    from picollm.sweeps.processes import pool_rank

    i, raw, prefix = job
    raw["train"]["device"] = worker_device(pool_rank(), raw["train"]["device"])
    return i, train_record(raw, prefix)


def _offline_resolved(base: dict[str, Any]) -> dict[str, Any]:
    """A study made before the trained base was recorded: the data its trials used, probed again here."""
    from picollm.data import apply_offline_fallback

    cfg, note = apply_offline_fallback(config_from_dict(base))
    if note:
        print(note, file=sys.stderr, flush=True)
    return cfg.to_dict()


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
    return lines + verdict_lines(conf)


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
