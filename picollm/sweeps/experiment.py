"""The experiment: what a YAML file says, checked before any trial runs.

A base trainer config, its ``search:`` space and the ``study:`` and ``confirm:`` settings, with the samplers and
pruners they name (registry dicts: a bad name, option or missing package is one :class:`ConfigError` line).

Each ``search:`` entry is a dotted config key and its distribution::

    search:
      optim.name: {type: categorical, choices: [sgd, adam, adamw, rmsprop]}
      optim.lr: {type: float, low: 1.0e-4, high: 3.0e-2, log: true}
      model.k: {type: int, low: 1, high: 5, when: {model.type: kgram}}

``when`` samples a parameter only when every listed key has one of the given values. A bad space (empty choices,
``low > high``, unknown keys, values the trainer would refuse) is one line before any trial runs.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import math
import random
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from picollm.checks import at_least, one_of, problems
from picollm.config import (
    Config,
    apply_overrides,
    config_from_dict,
    from_block,
    load_raw,
    parse_override,
    read_yaml,
    split_experiment,
)
from picollm.errors import ConfigError
from picollm.sweeps.budget import HalvingPruner, plan_of
from picollm.sweeps.trial import StudyRecord, TrialRecord

PARAM_TYPES = ("categorical", "float", "int")
_ALLOWED = {
    "categorical": {"type", "choices", "when"},
    "float": {"type", "low", "high", "log", "step", "when"},
    "int": {"type", "low", "high", "log", "step", "when"},
}


@dataclass(frozen=True)
class Param:
    """One searched config key."""

    key: str
    type: str
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def active(self, values: Mapping[str, Any]) -> bool:
        return all(values.get(key) in allowed for key, allowed in self.when.items())

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for a value (``trial`` is ``optuna.Trial``)."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))

    def contains(self, value: Any) -> bool:
        """Whether Optuna can run ``value`` as given: in the choices, or in range and on the step grid."""
        if self.type == "categorical":
            return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in self.choices)
        if not isinstance(value, int | float) or isinstance(value, bool) or not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        steps = (value - self.low) / self.step
        return math.isclose(steps, round(steps), abs_tol=1e-8)

    def describe(self) -> dict[str, Any]:
        """A plain-dict form, stored with the study to detect a changed space on resume."""
        out: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            out["choices"] = list(self.choices)
        else:
            out.update(low=self.low, high=self.high, log=self.log, step=self.step)
        if self.when:
            out["when"] = {k: list(v) for k, v in self.when.items()}
        return out


def _number(spec: Mapping[str, Any], name: str, key: str) -> float:
    value = spec.get(name)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"search.{key}: '{name}' must be a number, got {value!r}")
    return float(value)


def _parse_param(key: str, spec: Any) -> Param:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"search.{key}: expected a mapping like {{type: float, low: ..., high: ...}}, got {spec!r}")
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        raise ConfigError(f"search.{key}: unknown type {kind!r} (choose from {', '.join(PARAM_TYPES)})")
    extra = sorted(set(spec) - _ALLOWED[kind])
    if extra:
        raise ConfigError(f"search.{key}: unknown option '{extra[0]}' for type {kind}")
    when_raw = spec.get("when") or {}
    if not isinstance(when_raw, Mapping):
        raise ConfigError(f"search.{key}: 'when' must map config keys to values")
    when = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in when_raw.items()}
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"search.{key}: 'choices' must be a non-empty list")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"search.{key}: 'choices' has duplicates")
        return Param(key, kind, choices=tuple(choices), when=when)
    low, high = _number(spec, "low", key), _number(spec, "high", key)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"search.{key}: 'log' must be true or false")
    step = _number(spec, "step", key) if spec.get("step") is not None else None
    if low > high:
        raise ConfigError(f"search.{key}: low ({low:g}) is greater than high ({high:g})")
    if log and low <= 0:
        raise ConfigError(f"search.{key}: a log range needs low > 0, got {low:g}")
    if step is not None and step <= 0:
        raise ConfigError(f"search.{key}: 'step' must be > 0, got {step:g}")
    if log and step is not None and (kind == "float" or step != 1):
        raise ConfigError(f"search.{key}: 'log' and 'step' cannot be combined")
    if kind == "int" and not (low.is_integer() and high.is_integer() and (step is None or step.is_integer())):
        raise ConfigError(f"search.{key}: an int range needs whole-number low, high and step")
    return Param(key, kind, low=low, high=high, log=log, step=step, when=when)


def parse_space(search: Any, base: Config) -> list[Param]:
    """Parse and check a ``search:`` block against the resolved trainer config it will modify."""
    if not isinstance(search, Mapping) or not search:
        raise ConfigError("search: expected a non-empty mapping of config keys to distributions")
    params = [_parse_param(str(key), spec) for key, spec in search.items()]
    known: set[str] = set()
    for param in params:
        for cond in param.when:
            if cond not in known and base.get(cond) is None:
                raise ConfigError(f"search.{param.key}: 'when' refers to unknown key {cond}")
        for value in _edge_values(param):
            _check_value(base, param.key, value)
        known.add(param.key)
    return params


def _edge_values(param: Param) -> tuple[Any, ...]:
    if param.type == "categorical":
        return param.choices
    cast = int if param.type == "int" else float
    return cast(param.low), cast(param.high)


def _check_value(base: Config, key: str, value: Any) -> None:
    """The trainer must accept every value the space can produce (checked at the range edges)."""
    try:
        base.with_values({key: value})
    except ConfigError as exc:
        hint = ""
        if value is None or isinstance(value, bool):  # YAML reads yes/no/on/off/true/false/null unquoted
            hint = "; YAML reads an unquoted yes, no, on, off or null as a boolean or null: quote it ('no')"
        raise ConfigError(f"search.{key}: value {value!r} is refused by the trainer ({exc}){hint}") from None


def sample(trial: Any, space: list[Param], base: Config) -> dict[str, Any]:
    """The trial's values for the active parameters, by dotted key."""
    values: dict[str, Any] = {}

    def current(key: str) -> Any:
        return values[key] if key in values else base.get(key)

    for param in space:
        if param.active({key: current(key) for key in param.when}):
            values[param.key] = param.suggest(trial)
    return values


def apply_params(base: Config, values: Mapping[str, Any]) -> Config:
    return base.with_values(values)


def baseline_params(space: list[Param], base: Config) -> dict[str, Any]:
    """The base config's values for the searched keys (trial 0, the baseline); each must lie inside its distribution."""
    values = {param.key: base.get(param.key) for param in space if param.active(base_view(base, param))}
    for param in space:
        if param.key in values and not param.contains(values[param.key]):
            raise ConfigError(
                f"search.{param.key}: the base config's value {values[param.key]!r} is not in the search space "
                f"({param.describe()}); the baseline trial runs the base config, so widen the space or change the base"
            )
    return values


def base_view(base: Config, param: Param) -> dict[str, Any]:
    return {key: base.get(key) for key in param.when}


def _grid(space: list[Param]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for p in space:
        if p.type == "categorical":
            grid[p.key] = list(p.choices)
        elif p.step is not None:
            n = round((p.high - p.low) / p.step) + 1
            cast = int if p.type == "int" else float
            grid[p.key] = [cast(p.low + i * p.step) for i in range(n)]
        else:
            raise ConfigError(f"study.sampler=grid needs choices or a step for search.{p.key}")
    return grid


# Samplers whose workers must share the study's seed, since they draw points of one sequence (Optuna's QMCSampler
# documents this for its own).
ONE_SEQUENCE = ("qmc", "sobol")


def distribution(p: Param) -> BaseDistribution:
    """The distribution ``Param.suggest`` asks Optuna for."""
    if p.type == "categorical":
        return CategoricalDistribution(list(p.choices))
    if p.type == "float":
        return FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))


def from_unit(dist: BaseDistribution, u: float) -> Any:
    """The value at ``u`` in [0, 1) of ``dist``'s range: evenly spread points stay evenly spread."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[min(int(u * len(dist.choices)), len(dist.choices) - 1)]
    low, high, step = float(dist.low), float(dist.high), getattr(dist, "step", None)
    if dist.log:
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    elif step:  # the grid's n + 1 values, each an equal share of [0, 1)
        n = round((high - low) / step)
        value = low + min(math.floor(u * (n + 1)), n) * step
    else:
        value = low + u * (high - low)
    if isinstance(dist, IntDistribution):
        return int(min(max(round(value), dist.low), dist.high))
    return min(max(value, low), high)


class SobolSampler(optuna.samplers.BaseSampler):
    """Scrambled Sobol points in the order fresh trials are asked: the n-th takes point n whichever worker asks for it,
    so a study tries the same configurations in any finishing order, spread evenly over the space. Every searched key,
    conditional ones too, has a coordinate of its own (Optuna's QMCSampler infers its space from the first finished
    trial, which changes with the finishing order when parameters are conditional).

    ``tpe_after``: fresh trials from that index on are proposed by Optuna's multivariate TPE instead (``group`` for
    the conditional keys, ``constant_liar`` for the trials still running), from every trial's furthest rung score.
    Even points cover the space but thinly: about 60 points in six dimensions leave a good corner empty for some seeds,
    and the second half looks again near the first half's best."""

    def __init__(self, space: list[Param], seed: int, tpe_after: int | None = None) -> None:
        if tpe_after is not None and (isinstance(tpe_after, bool) or not isinstance(tpe_after, int) or tpe_after < 0):
            raise ValueError(f"tpe_after must be a whole number of trials >= 0, got {tpe_after!r}")
        self.space = {p.key: distribution(p) for p in space}
        self.seed = seed
        self.tpe_after = tpe_after
        self._trial: tuple[int, int | None, Any] | None = None  # a trial's number, fresh index and TPE sampler

    def _place(self, study: optuna.Study, trial: Any) -> tuple[int | None, Any]:
        """``trial``'s index among fresh trials (None: queued) and the TPE sampler that proposes it (None: a Sobol
        point does), worked out once per trial. Each TPE is seeded by the study's seed and the trial's number: workers
        share the study's seed, and a shared random stream would let two of them propose the same point from the same
        history."""
        if self._trial is None or self._trial[0] != trial.number:
            index = None if _queued(trial) else _fresh_index(study, trial)
            tpe = None
            if index is not None and self.tpe_after is not None and index >= self.tpe_after:
                seed = random.Random(f"{self.seed}:{trial.number}").randrange(2**32)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # group, constant_liar
                    tpe = optuna.samplers.TPESampler(
                        seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=0
                    )
            self._trial = (trial.number, index, tpe)
        return self._trial[1], self._trial[2]

    def infer_relative_search_space(self, study: optuna.Study, trial: Any) -> dict[str, BaseDistribution]:
        _, tpe = self._place(study, trial)
        if tpe is not None:
            return tpe.infer_relative_search_space(study, trial)
        return dict(self.space)

    def sample_relative(
        self, study: optuna.Study, trial: Any, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        index, tpe = self._place(study, trial)
        if not search_space or index is None:
            return {}  # a queued configuration: its parameters are fixed, and it takes no point
        if tpe is not None:
            return tpe.sample_relative(study, trial, search_space)
        from scipy.stats import qmc

        engine = qmc.Sobol(len(search_space), scramble=True, seed=self.seed)
        if index:
            engine.fast_forward(index)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's note on balance below powers of two: one point is meant
            point = engine.random(1)[0]
        return {name: from_unit(dist, float(u)) for (name, dist), u in zip(search_space.items(), point, strict=True)}

    def sample_independent(
        self, study: optuna.Study, trial: Any, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """A key outside the space given: TPE's own draw in the model-based half, else a uniform draw fixed by the
        seed, the trial number and the key."""
        _, tpe = self._place(study, trial)
        if tpe is not None:
            return tpe.sample_independent(study, trial, param_name, param_distribution)
        return from_unit(param_distribution, random.Random(f"{self.seed}:{trial.number}:{param_name}").random())


def _fresh_index(study: optuna.Study, trial: Any) -> int:
    """How many fresh trials (neither queued nor continuations) were asked before this one."""
    before = study.get_trials(deepcopy=False)
    return sum(t.number < trial.number and not _queued(t) for t in before)


def _queued(trial: Any) -> bool:
    """The baseline, a continuation or a dead trial's retry: queued with its parameters, so it takes no point."""
    facts = TrialRecord.of(trial)
    return facts.baseline or facts.continues is not None or _retried(trial)


def _retried(trial: Any) -> bool:
    with warnings.catch_warnings():  # Optuna marks the lookup experimental, and would say so for every trial
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial) is not None


def make_sampler(name: str, space: list[Param], seed: int, options: dict[str, Any]) -> Any:
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    samplers |= {"grid": optuna.samplers.GridSampler, "cmaes": optuna.samplers.CmaEsSampler}
    samplers |= {"qmc": optuna.samplers.QMCSampler, "sobol": SobolSampler}
    given: dict[str, Callable[[], dict[str, Any]]] = {  # what picollm passes besides the seed
        "grid": lambda: {"search_space": _grid(space)},
        "sobol": lambda: {"space": space},
    }
    cls = _named_class("sampler", name, samplers, options, set_here=("seed", "search_space", "space"))
    return _construct("sampler", name, lambda: cls(seed=seed, **given.get(name, dict)(), **options))


def make_pruner(name: str, options: dict[str, Any]) -> Any:
    pruners = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner}
    pruners |= {"successive_halving": optuna.pruners.SuccessiveHalvingPruner, "halving": HalvingPruner}
    pruners |= {"patient": optuna.pruners.MedianPruner, "none": optuna.pruners.NopPruner}
    own = ("patience", "min_delta") if name == "patient" else ()  # PatientPruner's, around a MedianPruner
    cls = _named_class("pruner", name, pruners, options, also=own)
    if name != "patient":
        return _construct("pruner", name, lambda: cls(**options))
    median = {k: v for k, v in options.items() if k not in own}
    patience, min_delta = options.get("patience", 2), options.get("min_delta", 0.0)
    return _construct(
        "pruner", name, lambda: optuna.pruners.PatientPruner(cls(**median), patience=patience, min_delta=min_delta)
    )


def _named_class(
    kind: str,
    name: str,
    table: dict[str, type],
    options: dict[str, Any],
    set_here: tuple[str, ...] = (),
    also: tuple[str, ...] = (),
) -> type:
    """The class ``name`` stands for; an unknown name, or an option the class does not take, is one line that lists
    what there is (``set_here``: options picollm passes itself; ``also``: options taken besides the class's own)."""
    if name not in table:
        raise ConfigError(f"study.{kind}: unknown {kind} {name!r} (choose from {', '.join(table)})")
    params = inspect.signature(table[name]).parameters.values()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    takes = sorted({p.name for p in params if p.kind in named and p.name not in set_here} | set(also))
    unknown = sorted(set(options) - set(takes))
    if unknown:
        raise ConfigError(
            f"study.{kind}: {name} takes no option {unknown[0]!r} (its options: {', '.join(takes) or 'none'})"
        )
    return table[name]


def _construct(kind: str, name: str, build: Callable[[], Any]) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning for some options
            return build()
    except TypeError as exc:
        raise ConfigError(f"study.{kind}: bad option for {name}: {exc}") from None
    except ImportError as exc:
        raise ConfigError(f"study.{kind}: {name} needs a package that is not installed ({exc})") from None
    except ValueError as exc:
        raise ConfigError(f"study.{kind}: {name}: {exc}") from None


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
    sampler: str = "tpe"  # a name of make_sampler's; its options below
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
    figures: bool = True  # exports draw Optuna's plots and confirm.png (false: no PNG; docs/sweeps.md#exports)

    @classmethod
    def stored(cls, settings: dict[str, Any]) -> StudySettings:
        """The settings a study stored (``asdict`` of these), keys of other versions left out."""
        return cls(**{k: v for k, v in settings.items() if k in cls.__dataclass_fields__})

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
        if self.sampler in ONE_SEQUENCE and self.pruner == "hyperband":
            return (
                f"study.sampler={self.sampler} numbers the study's trials, and pruner hyperband shows a sampler only "
                "its bracket's: trials of two brackets would take the same point (use pruner halving)"
            )
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


def stored_settings(study: optuna.Study, facts: StudyRecord | None = None) -> StudySettings:
    """The settings ``study`` was created with, as stored: the defaults declared above fill what it lacks. ``facts``:
    its record, where the caller has read it already (each read asks the storage)."""
    facts = StudyRecord.of(study) if facts is None else facts
    return StudySettings.stored({"name": study.study_name, **facts.settings})


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


def budget_words(s: StudySettings) -> str:
    """A study's per-trial budget as its output and report say it."""
    if not s.budget_tokens:
        return "no token budget per trial"
    if aims_beyond_budget(s):
        return f"{rungs(s)[0]:,} to {s.target_tokens:,} training tokens per trial (rungs scored by branched decays)"
    return f"{s.budget_tokens:,} training tokens per trial"


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

    base: Config  # the resolved trainer config every trial starts from
    search: dict[str, Any]  # the raw search block (parsed in each process)
    study: StudySettings
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # recorded with every trial (e.g. an offline note)
    fingerprint: dict[str, Any] | None = None  # what the study answers (fingerprint)
    confirm: ConfirmSettings | None = None  # a confirm: block: confirm the winner after the sweep

    @functools.cached_property
    def space(self) -> list[Param]:
        """Parsed once per object (parsing validates each choice); ``replace()`` makes a new object, parsed anew."""
        return parse_space(self.search, self.base)

    def sample(self, trial: Any) -> dict[str, Any]:
        """A trial's values for the active parameters, by dotted key (:func:`sample` over this space and base)."""
        return sample(trial, self.space, self.base)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled into worker processes without the parsed space, which each process parses itself."""
        return {key: value for key, value in self.__dict__.items() if key != "space"}


def trial_base(trainer: dict[str, Any], s: StudySettings) -> Config:
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
    return config_from_dict(raw)


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
    settings = parse_study(_with_command_line(sweep.get("study"), study_name, n_trials), Path(path).stem)
    base = trial_base(trainer, settings)
    space = parse_space(search, base)
    baseline_params(space, base)  # refuse a bad space now, before any trial
    make_sampler(settings.sampler, space, settings.seed, settings.sampler_options)
    make_pruner(settings.pruner, settings.pruner_options)
    confirm = parse_confirm(sweep["confirm"]) if "confirm" in sweep else None
    exp = Experiment(base, search, settings, str(path), confirm=confirm)
    _check_budget(exp)
    return exp


def _with_command_line(block: Any, study_name: str | None, n_trials: int | None) -> Any:
    """The ``study:`` block with ``--study-name`` and ``--n-trials`` in it, so that its checks see them too."""
    if block is not None and not isinstance(block, dict):
        return block  # parse_study refuses it with one line
    block = dict(block or {})
    if study_name:
        block["name"] = study_name
    if n_trials is not None:
        block["n_trials"] = n_trials
    return block


def _check_budget(exp: Experiment) -> None:
    """A token budget must pay for the confirmation it reserves and at least one trial."""
    plan = plan_of(exp)
    if plan.max_tokens is not None and plan.max_tokens < plan.kept + plan.expected_from(-1):
        raise ConfigError(
            f"study.max_tokens ({plan.max_tokens:,}) cannot pay for the confirmation ({plan.reserve:,} tokens), one "
            f"trial to the target and the first ones (at least {plan.kept + plan.expected_from(-1):,.0f} in all): "
            "raise it, or lower confirm.top or confirm.seeds"
        )
