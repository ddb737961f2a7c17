"""The experiment: a base trainer config, a search space and the study's ``study:`` and ``confirm:`` settings."""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from picollm.checks import at_least, one_of, problems
from picollm.config import (
    apply_overrides,
    config_from_dict,
    from_block,
    load_raw,
    parse_override,
    read_yaml,
    split_experiment,
)
from picollm.errors import ConfigError
from picollm.search import Param, baseline_params, parse_space
from picollm.sweeps.registry import make_pruner, make_sampler

# The value that ranks trials, from summary.json, measured on the study's one fixed validation set.
METRICS = {
    "final_val_loss": "validation loss at the end of the trial's budget (the default)",
    "best_val_loss": "lowest validation loss over the trial's epoch ends (a min over noisy values: biased low)",
}
EPOCHS_FOR_TOKEN_BUDGET = 1000  # with a token budget, epochs only bound it from above


@dataclass
class StudySettings:
    """The experiment file's ``study:`` block: what a sweep ranks, how it samples and prunes, what it may spend."""

    name: str
    metric: str = one_of(tuple(METRICS), "final_val_loss")
    sampler: str = "tpe"  # a name of picollm.sweeps.registry's; its options below
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    budget_tokens: int | None = at_least(1, None)  # training tokens per trial; with target_tokens, the cheapest rung
    target_tokens: int | None = at_least(1, None)  # the budget the winner will be trained at (None: budget_tokens)
    reports: int = at_least(1, 8)  # validation losses reported to the pruner per trial
    n_trials: int | None = at_least(1, 20)  # finished trials to reach; None: as many as max_tokens pays for
    max_tokens: int | None = at_least(1, None)  # every training token of the study: trials, decays, confirmation
    seed: int = 0
    heartbeat_interval: int = at_least(1, 10)  # seconds between a running trial's heartbeats (leases on journals)
    grace_period: int = at_least(1, 30)  # a trial silent for this long is failed and retried
    max_retry: int = at_least(0, 2)  # retries of a trial whose worker died, then it stays failed
    out_dir: str = "results/studies"  # exports land in <out_dir>/<name>/

    def check(self) -> str | None:
        """What ties two of its fields together (the fields' own rules are declared with them)."""
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            return f"study.name: use letters, digits, '-', '_' and '.', got {self.name!r}"
        if self.grace_period <= self.heartbeat_interval:
            return "study.grace_period must be longer than study.heartbeat_interval"
        if self.target_tokens is not None and (self.budget_tokens is None or self.target_tokens < self.budget_tokens):
            return (
                f"study.target_tokens ({self.target_tokens:,}) must be at least study.budget_tokens "
                f"({self.budget_tokens or 'unset'}), the cheap budget the sweep starts each trial at"
            )
        if self.max_tokens is not None and self.budget_tokens is None:
            return "study.max_tokens needs study.budget_tokens: a trial's cost must be known before it starts"
        if self.n_trials is None and self.max_tokens is None:
            return "study.n_trials: null needs study.max_tokens, the budget that decides how many trials run"
        if self.pruner == "halving" and not aims_beyond_budget(self):
            return "study.pruner=halving needs study.target_tokens above study.budget_tokens (its rungs)"
        return None


MULTI_FIDELITY = ("hyperband", "successive_halving", "halving")  # pruners whose rungs grow by reduction_factor


def _named(raw: Any, key: str) -> tuple[str, dict[str, Any]]:
    """``sampler: tpe`` or ``sampler: {name: tpe, n_startup_trials: 4}``."""
    if isinstance(raw, str):
        return raw, {}
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        options = dict(raw)
        return options.pop("name"), options
    raise ConfigError(f"study.{key}: expected a name or {{name: ..., option: value}}, got {raw!r}")


def parse_study(raw: Any, default_name: str) -> StudySettings:
    """The ``study:`` block, checked: unknown keys, wrong types and impossible values are one line."""
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"study: expected a mapping of settings (name, metric, sampler, ...), got {raw!r}")
    raw = {"name": default_name, **(raw or {})}
    raw["name"] = str(raw["name"])
    for key in ("sampler", "pruner"):
        if key in raw:
            raw[key], raw[f"{key}_options"] = _named(raw[key], key)
    s = from_block(StudySettings, raw, "study")
    if aims_beyond_budget(s) and s.pruner in MULTI_FIDELITY:  # the rungs the pruner halves at
        s.pruner_options.setdefault("reduction_factor", 3)
        if s.pruner == "halving":
            s.pruner_options.update(rungs=rungs(s), target=s.target_tokens)
        else:
            s.pruner_options.setdefault("min_resource", rungs(s)[0])
        if s.pruner == "hyperband":
            s.pruner_options.setdefault("max_resource", s.target_tokens)
    return s


def aims_beyond_budget(s: StudySettings) -> bool:
    """Does the study rank its trials at a longer budget than the cheap one it starts them at?"""
    return bool(s.target_tokens and s.budget_tokens and s.target_tokens > s.budget_tokens)


def target_of(s: StudySettings) -> int | None:
    return s.target_tokens or s.budget_tokens


def budget_words(budget_tokens: int | None, target_tokens: int | None) -> str:
    """A study's per-trial budget as its output and report say it."""
    if not budget_tokens:
        return "no token budget per trial"
    if target_tokens and target_tokens > budget_tokens:
        first = target_tokens
        while first // 3 >= budget_tokens:  # the cheapest rung (see rungs)
            first //= 3
        return f"{first:,} to {target_tokens:,} training tokens per trial (rungs scored by branched decays)"
    return f"{budget_tokens:,} training tokens per trial"


def trial_cap(s: StudySettings) -> float:
    """The most trials the study finishes: ``n_trials``, or no count when the token budget decides."""
    return math.inf if s.n_trials is None else s.n_trials


def rungs(s: StudySettings) -> list[int]:
    """Budgets below the target where a trial is scored by a branched decay: the target / 3, / 9, ... down to the
    cheap budget, so the last rung is a third of the target rather than a decay just short of it."""
    if not aims_beyond_budget(s):
        return []
    factor = int(s.pruner_options.get("reduction_factor", 3))
    budgets, power = [], factor
    while s.target_tokens // power >= s.budget_tokens:
        budgets.insert(0, s.target_tokens // power)
        power *= factor
    return budgets or [s.budget_tokens]


# -- The `confirm:` block of an experiment file, or --top/--seeds on the command line ---------


@dataclass
class ConfirmSettings:
    """The experiment file's ``confirm:`` block, or ``--top``/``--seeds`` on the command line."""

    top: int = at_least(1, 3)  # complete configs to re-train, best first (the baseline comes on top of these)
    seeds: int = at_least(2, 3, "an interval needs two runs")  # fresh seeds per config
    first_seed: int | None = None  # None: the base config's train.seed + 1, ...
    budget_tokens: int | None = at_least(1, None)  # None: the study's own budget per trial


def parse_confirm(raw: Any) -> ConfirmSettings:
    """Read a ``confirm:`` block (``{}`` or ``null`` for the defaults); one line per mistake."""
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"confirm: expected a mapping such as {{top: 3, seeds: 3}}, got {raw!r}")
    return from_block(ConfirmSettings, raw, "confirm")


def check_confirm(s: ConfirmSettings) -> None:
    """Settings changed after reading (``--top``, ``--seeds``): the block's rules again."""
    found = problems(s, "confirm")
    if found:
        raise ConfigError(found[0])


@dataclass
class Experiment:
    """Everything a worker needs; plain data, so it pickles into worker processes."""

    base: dict[str, Any]  # the resolved trainer config every trial starts from
    search: dict[str, Any]  # the raw search block (parsed in each process)
    study: StudySettings
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # recorded with every trial (e.g. an offline note)
    fingerprint: dict[str, Any] | None = None  # what the study answers (picollm.sweeps.fingerprint)
    confirm: ConfirmSettings | None = None  # a confirm: block: confirm the winner after the sweep

    @functools.cached_property
    def space(self) -> list[Param]:
        """Parsed once per object (parsing validates each choice); ``replace()`` makes a new object, parsed anew."""
        return parse_space(self.search, self.base)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled into worker processes without the parsed space, which each process parses itself."""
        return {key: value for key, value in self.__dict__.items() if key != "space"}


def trial_base(trainer: dict[str, Any], s: StudySettings) -> dict[str, Any]:
    """The sweep's own settings on top of the trainer config.

    - the token budget, so block sizes compete at equal tokens; with ``target_tokens`` above it, a WSD run to the
      target scored at every rung by a branched decay, so the pruner compares annealed models at equal tokens;
    - ONE fixed validation set (``data.val_tokens``, else ``train.eval_tokens``) for the periodic evaluation and the
      ranked value, so pruner and ranking see the same tokens;
    - the report cadence and the W&B grouping.
    """
    raw = copy.deepcopy(trainer)
    train, data = raw.setdefault("train", {}), raw.setdefault("data", {})
    resolved = config_from_dict(raw)
    objective_tokens = resolved.data.val_tokens or resolved.train.eval_tokens
    data["val_tokens"] = objective_tokens
    train["eval_tokens"] = None  # the periodic evaluation scores the whole capped set: the objective's tokens
    if aims_beyond_budget(s):  # trained to the target; each rung is scored by a branched decay (trainer.anneal)
        if resolved.optim.schedule != "wsd":
            raise ConfigError(
                f"study.target_tokens ({s.target_tokens:,}) above study.budget_tokens needs optim.schedule: wsd: "
                "each cheaper budget is scored by a decay branched from the trial's stable phase"
            )
        train["max_tokens"] = s.target_tokens
        train["epochs"] = EPOCHS_FOR_TOKEN_BUDGET
        train["eval_every_tokens"] = s.target_tokens  # the rungs report annealed losses, the end its own
        train["anneal_at"] = rungs(s)
        train["checkpoint_every_tokens"] = rungs(s)[0]
    elif s.budget_tokens:
        train["max_tokens"] = s.budget_tokens
        train["epochs"] = EPOCHS_FOR_TOKEN_BUDGET
        train["eval_every_tokens"] = max(1, s.budget_tokens // s.reports)
    train["progress"] = False
    tracking = raw.setdefault("tracking", {})
    tracking.update(group=s.name, job_type="trial")
    return config_from_dict(raw).to_dict()


def override_search(search: dict[str, Any], item: str) -> dict[str, Any]:
    """``search.optim.lr.low=1e-4`` (one field) or ``search.optim.lr={...}`` (an entry); the longest key wins."""
    path, value = parse_override(item)
    dotted = ".".join(path[1:])
    out = copy.deepcopy(search)
    key, _, name = dotted.rpartition(".")
    if dotted in out or not key or (isinstance(value, dict) and key not in out):  # an entry, changed or new
        out[dotted] = value
        return out
    if not isinstance(out.get(key), dict):
        raise ConfigError(f"--set {item}: no search entry {key!r} to change (known: {', '.join(out)})")
    out[key][name] = value
    return out


def _search_block(path: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The merged ``search:`` block; an explicit empty one in the file itself is refused, never inherited."""
    own = read_yaml(path)
    if "search" in own and not own["search"]:
        raise ConfigError(
            f"{path}: 'search:' is empty, so there is nothing to sweep (an empty block does not inherit the "
            "base file's space: delete the line to inherit it, or train once with python -m picollm.train)"
        )
    if "search" not in raw:
        raise ConfigError(f"{path}: no 'search:' block, nothing to sweep")
    return raw["search"]


def _refuse_searched_overrides(overrides: list[str], search: dict[str, Any]) -> None:
    for item in overrides:
        key = ".".join(parse_override(item)[0])
        if key in search:
            raise ConfigError(
                f"--set {item}: {key} is searched by this study; change its range instead "
                f"(--set search.{key}.low=... / .choices=[...]) or remove it from search:"
            )


def load_experiment(
    path: str | None, overrides: list[str], study_name: str | None = None, n_trials: int | None = None
) -> Experiment:
    """Read an experiment file; ``--set`` may reach any section (``study.sampler=random`` too)."""
    if path is None:
        raise ConfigError("a sweep needs --config experiments/<name>.yaml")
    raw = load_raw(path)
    search_overrides = [item for item in overrides if item.startswith("search.")]
    other = [item for item in overrides if item not in search_overrides]
    raw = apply_overrides(raw, other)
    for item in search_overrides:
        raw["search"] = override_search(raw.get("search") or {}, item)
    search = _search_block(path, raw)
    if isinstance(search, dict):
        _refuse_searched_overrides(other, search)
    trainer, sweep = split_experiment(raw)
    settings = parse_study(sweep.get("study"), Path(path).stem)
    if study_name:
        settings.name = study_name
    if n_trials is not None:
        settings.n_trials = n_trials
    base = trial_base(trainer, settings)
    space = parse_space(search, base)
    baseline_params(space, base)  # refuse a bad space now, before any trial
    make_sampler(settings.sampler, space, settings.seed, settings.sampler_options)
    make_pruner(settings.pruner, settings.pruner_options)
    confirm = parse_confirm(sweep["confirm"]) if "confirm" in sweep else None
    exp = Experiment(base, search, settings, str(path), confirm=confirm)
    _check_budget(exp)
    return exp


def _check_budget(exp: Experiment) -> None:
    """A token budget must pay for the confirmation it reserves and at least one trial."""
    from picollm.sweeps.budget import plan_of

    plan = plan_of(exp)
    if plan.max_tokens is not None and plan.max_tokens < plan.kept + plan.expected_from(-1):
        raise ConfigError(
            f"study.max_tokens ({plan.max_tokens:,}) cannot pay for the confirmation ({plan.reserve:,} tokens), one "
            f"trial to the target and the first ones (at least {plan.kept + plan.expected_from(-1):,.0f} in all): "
            "raise it, or lower confirm.top or confirm.seeds"
        )
