"""Samplers and pruners by name; a bad name, option or missing package is one :class:`ConfigError` line."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from picollm.errors import ConfigError
from picollm.search import Param


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


# Samplers whose workers must share the study's seed: the storage numbers the points of one sequence, so the study
# tries the same configurations whichever worker asks first (Optuna's QMCSampler documents this).
ONE_SEQUENCE = ("qmc",)


def make_sampler(name: str, space: list[Param], seed: int, options: dict[str, Any]) -> Any:
    import optuna

    samplers: dict[str, Callable[[], Any]] = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, **options),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed, **options),
        "grid": lambda: optuna.samplers.GridSampler(_grid(space), seed=seed, **options),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed, **options),
        "qmc": lambda: optuna.samplers.QMCSampler(seed=seed, **options),
    }
    return _construct("sampler", name, samplers, options)


def make_pruner(name: str, options: dict[str, Any]) -> Any:
    import optuna

    def patient() -> Any:
        opts = dict(options)
        patience = opts.pop("patience", 2)
        min_delta = opts.pop("min_delta", 0.0)
        return optuna.pruners.PatientPruner(optuna.pruners.MedianPruner(**opts), patience=patience, min_delta=min_delta)

    pruners: dict[str, Callable[[], Any]] = {
        "median": lambda: optuna.pruners.MedianPruner(**options),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(**options),
        "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(**options),
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
