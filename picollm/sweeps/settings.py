"""The experiment: a base trainer config, a search space and the study's settings.

Owns parsing and validating the ``study:`` block (:class:`StudySettings`), reading an experiment file with
its ``--set`` overrides (:func:`load_experiment`), and the sweep's own settings on top of the trainer
config (:func:`trial_base`: token budget, report cadence, grouping).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from picollm.config import apply_overrides, config_from_dict, load_raw, parse_override, split_experiment
from picollm.errors import ConfigError
from picollm.search import Param, baseline_params, parse_space
from picollm.sweeps.registry import make_pruner, make_sampler

METRICS = ("best_val_loss", "final_val_loss")
EPOCHS_FOR_TOKEN_BUDGET = 1000  # with a token budget, epochs only bound it from above


@dataclass
class StudySettings:
    name: str
    metric: str = "best_val_loss"
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    budget_tokens: int | None = None  # training tokens per trial
    reports: int = 8  # validation losses reported to the pruner per trial
    n_trials: int = 20
    seed: int = 0
    heartbeat_interval: int = 10
    grace_period: int = 30
    max_retry: int = 2
    out_dir: str = "results/studies"  # exports land in <out_dir>/<name>/


def _named(raw: Any, key: str) -> tuple[str, dict[str, Any]]:
    """``sampler: tpe`` or ``sampler: {name: tpe, n_startup_trials: 4}``."""
    if isinstance(raw, str):
        return raw, {}
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        options = dict(raw)
        return options.pop("name"), options
    raise ConfigError(f"study.{key}: expected a name or {{name: ..., option: value}}, got {raw!r}")


def parse_study(raw: Any, default_name: str) -> StudySettings:
    raw = dict(raw or {})
    if not isinstance(raw, dict):
        raise ConfigError("study: expected a mapping")
    s = StudySettings(name=str(raw.pop("name", default_name)))
    if "sampler" in raw:
        s.sampler, s.sampler_options = _named(raw.pop("sampler"), "sampler")
    if "pruner" in raw:
        s.pruner, s.pruner_options = _named(raw.pop("pruner"), "pruner")
    ints = ("budget_tokens", "reports", "n_trials", "seed", "heartbeat_interval", "grace_period", "max_retry")
    for key in list(raw):
        if key in ("metric", "out_dir"):
            setattr(s, key, str(raw.pop(key)))
        elif key in ints:
            value = raw.pop(key)
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
                raise ConfigError(f"study.{key}: expected a whole number, got {value!r}")
            setattr(s, key, None if value is None else int(value))
        else:
            raise ConfigError(f"unknown key study.{key}")
    if s.metric not in METRICS:
        raise ConfigError(f"study.metric: unknown value {s.metric!r} (choose from {', '.join(METRICS)})")
    if not s.name or not all(c.isalnum() or c in "-_." for c in s.name):
        raise ConfigError(f"study.name: use letters, digits, '-', '_' and '.', got {s.name!r}")
    for key in ("reports", "n_trials", "heartbeat_interval", "grace_period", "budget_tokens"):
        value = getattr(s, key)
        if value is not None and value < 1:
            raise ConfigError(f"study.{key} must be >= 1, got {value}")
    if s.grace_period <= s.heartbeat_interval:
        raise ConfigError("study.grace_period must be longer than study.heartbeat_interval")
    return s


@dataclass
class Experiment:
    """Everything a worker needs; plain data, so it pickles into worker processes."""

    base: dict[str, Any]  # the resolved trainer config every trial starts from
    search: dict[str, Any]  # the raw search block (parsed in each process)
    study: StudySettings
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # recorded with every trial (e.g. an offline note)

    @property
    def space(self) -> list[Param]:
        return parse_space(self.search, self.base)


def trial_base(trainer: dict[str, Any], s: StudySettings) -> dict[str, Any]:
    """The sweep's own settings on top of the trainer config: token budget, report cadence, grouping."""
    raw = copy.deepcopy(trainer)
    train = raw.setdefault("train", {})
    if s.budget_tokens:
        train["max_tokens"] = s.budget_tokens
        train["epochs"] = EPOCHS_FOR_TOKEN_BUDGET
        train["eval_every_tokens"] = max(1, s.budget_tokens // s.reports)
    train["progress"] = False
    tracking = raw.setdefault("tracking", {})
    tracking.update(group=s.name, job_type="trial")
    return config_from_dict(raw).to_dict()


def override_search(search: dict[str, Any], item: str) -> dict[str, Any]:
    """``search.optim.lr.low=1e-4`` (one field) or ``search.optim.lr={...}`` (a whole entry).

    Search keys are dotted config keys themselves, so the longest existing key wins.
    """
    path, value = parse_override(item)
    dotted = ".".join(path[1:])
    out = copy.deepcopy(search)
    if dotted in out or "." not in dotted:
        out[dotted] = value
        return out
    key, _, name = dotted.rpartition(".")
    if not isinstance(out.get(key), dict):
        raise ConfigError(f"--set {item}: no search entry {key!r} to change (known: {', '.join(out)})")
    out[key][name] = value
    return out


def load_experiment(
    path: str | None, overrides: list[str], study_name: str | None = None, n_trials: int | None = None
) -> Experiment:
    """Read an experiment file; ``--set`` may reach any section (``study.sampler=random`` too)."""
    if path is None:
        raise ConfigError("a sweep needs --config experiments/<name>.yaml")
    raw = load_raw(path)
    search_overrides = [item for item in overrides if item.startswith("search.")]
    raw = apply_overrides(raw, [item for item in overrides if item not in search_overrides])
    for item in search_overrides:
        raw["search"] = override_search(raw.get("search") or {}, item)
    trainer, sweep = split_experiment(raw)
    if "search" not in sweep:
        raise ConfigError(f"{path}: no 'search:' block, nothing to sweep")
    settings = parse_study(sweep.get("study"), Path(path).stem)
    if study_name:
        settings.name = study_name
    if n_trials is not None:
        settings.n_trials = n_trials
    base = trial_base(trainer, settings)
    baseline_params(parse_space(sweep["search"], base), base)  # refuse a bad space now, before any trial
    make_sampler(settings.sampler, parse_space(sweep["search"], base), settings.seed, settings.sampler_options)
    make_pruner(settings.pruner, settings.pruner_options)
    return Experiment(base, sweep["search"], settings, str(path))
