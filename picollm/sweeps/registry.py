"""Samplers and pruners by name; a bad name, option or missing package is one :class:`ConfigError` line."""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from picollm.errors import ConfigError
from picollm.search import Param
from picollm.sweeps.halving import HalvingPruner
from picollm.sweeps.record import TrialRecord


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
    trial, which changes with the finishing order when parameters are conditional)."""

    def __init__(self, space: list[Param], seed: int) -> None:
        self.space = {p.key: distribution(p) for p in space}
        self.seed = seed

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, BaseDistribution]:
        return dict(self.space)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space or _queued(trial):
            return {}  # a queued configuration: its parameters are fixed, and it takes no point
        from scipy.stats import qmc

        before = study.get_trials(deepcopy=False)  # points go to fresh trials in the order they were asked
        index = sum(t.number < trial.number and not _queued(t) for t in before)
        engine = qmc.Sobol(len(search_space), scramble=True, seed=self.seed)
        if index:
            engine.fast_forward(index)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's note on balance below powers of two: one point is meant
            point = engine.random(1)[0]
        return {name: from_unit(dist, float(u)) for (name, dist), u in zip(search_space.items(), point, strict=True)}

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: BaseDistribution) -> Any:
        """A key outside the space given: a uniform draw fixed by the seed, the trial number and the key."""
        return from_unit(param_distribution, random.Random(f"{self.seed}:{trial.number}:{param_name}").random())


def _queued(trial: Any) -> bool:
    """The baseline or a continuation: queued with its parameters."""
    facts = TrialRecord.of(trial)
    return facts.baseline or facts.continues is not None


def make_sampler(name: str, space: list[Param], seed: int, options: dict[str, Any]) -> Any:
    samplers: dict[str, Callable[[], Any]] = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, **options),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed, **options),
        "grid": lambda: optuna.samplers.GridSampler(_grid(space), seed=seed, **options),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed, **options),
        "qmc": lambda: optuna.samplers.QMCSampler(seed=seed, **options),
        "sobol": lambda: SobolSampler(space, seed, **options),
    }
    return _construct("sampler", name, samplers, options)


def make_pruner(name: str, options: dict[str, Any]) -> Any:
    def patient() -> Any:
        opts = dict(options)
        patience = opts.pop("patience", 2)
        min_delta = opts.pop("min_delta", 0.0)
        return optuna.pruners.PatientPruner(optuna.pruners.MedianPruner(**opts), patience=patience, min_delta=min_delta)

    pruners: dict[str, Callable[[], Any]] = {
        "median": lambda: optuna.pruners.MedianPruner(**options),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(**options),
        "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(**options),
        "halving": lambda: HalvingPruner(**options),
        "patient": patient,
        "none": lambda: optuna.pruners.NopPruner(**options),
    }
    return _construct("pruner", name, pruners, options)


def _construct(kind: str, name: str, table: dict[str, Callable[[], Any]], options: dict[str, Any]) -> Any:
    if name not in table:
        raise ConfigError(f"study.{kind}: unknown {kind} {name!r} (choose from {', '.join(table)})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning for some options
            return table[name]()
    except TypeError as exc:
        raise ConfigError(f"study.{kind}: bad option for {name}: {exc}") from None
    except ImportError as exc:
        raise ConfigError(f"study.{kind}: {name} needs a package that is not installed ({exc})") from None
    except ValueError as exc:
        raise ConfigError(f"study.{kind}: {name}: {exc}") from None
