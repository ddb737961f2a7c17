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
    trial, which changes with the finishing order when parameters are conditional).

    ``tpe_after``: fresh trials from that index on are proposed by Optuna's multivariate TPE instead (``group`` for
    the conditional keys, ``constant_liar`` for the trials still running), from every trial's furthest rung score.
    Even points cover the space but thinly: about 60 points in six dimensions leave a good corner empty for some seeds,
    and the second half looks again near the first half's best."""

    def __init__(self, space: list[Param], seed: int, tpe_after: int | None = None) -> None:
        self.space = {p.key: distribution(p) for p in space}
        self.seed = seed
        self.tpe_after = tpe_after
        self._trial_tpe: tuple[int, Any] | None = None  # (trial number, its TPE sampler, None in the Sobol half)

    def _tpe(self, study: Any, trial: Any) -> Any:
        """The TPE sampler that proposes ``trial``, or None where a Sobol point does. Each trial gets one seeded by
        the study's seed and its number: workers share the study's seed, and a shared random stream would let two
        of them propose the same point from the same history."""
        if self._trial_tpe is None or self._trial_tpe[0] != trial.number:
            tpe = None
            if self.tpe_after is not None and not _queued(trial) and _fresh_index(study, trial) >= self.tpe_after:
                seed = random.Random(f"{self.seed}:{trial.number}").randrange(2**32)
                tpe = optuna.samplers.TPESampler(
                    seed=seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=0
                )
            self._trial_tpe = (trial.number, tpe)
        return self._trial_tpe[1]

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, BaseDistribution]:
        tpe = self._tpe(study, trial)
        if tpe is not None:
            return tpe.infer_relative_search_space(study, trial)
        return dict(self.space)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space or _queued(trial):
            return {}  # a queued configuration: its parameters are fixed, and it takes no point
        tpe = self._tpe(study, trial)
        if tpe is not None:
            return tpe.sample_relative(study, trial, search_space)
        from scipy.stats import qmc

        index = _fresh_index(study, trial)
        engine = qmc.Sobol(len(search_space), scramble=True, seed=self.seed)
        if index:
            engine.fast_forward(index)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's note on balance below powers of two: one point is meant
            point = engine.random(1)[0]
        return {name: from_unit(dist, float(u)) for (name, dist), u in zip(search_space.items(), point, strict=True)}

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: BaseDistribution) -> Any:
        """A key outside the space given: TPE's own draw in the model-based half, else a uniform draw fixed by the
        seed, the trial number and the key."""
        tpe = self._tpe(study, trial)
        if tpe is not None:
            return tpe.sample_independent(study, trial, param_name, param_distribution)
        return from_unit(param_distribution, random.Random(f"{self.seed}:{trial.number}:{param_name}").random())


def _fresh_index(study: Any, trial: Any) -> int:
    """How many fresh trials (neither queued nor continuations) were asked before this one."""
    before = study.get_trials(deepcopy=False)
    return sum(t.number < trial.number and not _queued(t) for t in before)


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
