"""Search spaces: the ``search:`` block of an experiment file, checked up front, sampled by Optuna.

Each entry is a dotted config key and its distribution::

    search:
      optim.name: {type: categorical, choices: [sgd, adam, adamw, rmsprop]}
      optim.lr: {type: float, low: 1.0e-4, high: 3.0e-2, log: true}
      model.k: {type: int, low: 1, high: 5, when: {model.type: kgram}}

``when`` samples a parameter only when every listed key has one of the given values. A bad space (empty choices,
``low > high``, unknown keys, values the trainer would refuse) is one line before any trial runs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from picollm.config import config_from_dict, set_dotted, set_dotted_all
from picollm.errors import ConfigError

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


def _lookup(raw: Mapping[str, Any], key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


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


def parse_space(search: Any, base: Mapping[str, Any]) -> list[Param]:
    """Parse and check a ``search:`` block against the resolved trainer config it will modify."""
    if not isinstance(search, Mapping) or not search:
        raise ConfigError("search: expected a non-empty mapping of config keys to distributions")
    params = [_parse_param(str(key), spec) for key, spec in search.items()]
    known: set[str] = set()
    for param in params:
        for cond in param.when:
            if cond not in known and _lookup(base, cond) is None:
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


def _check_value(base: Mapping[str, Any], key: str, value: Any) -> None:
    """The trainer must accept every value the space can produce (checked at the range edges)."""
    try:
        config_from_dict(set_dotted(dict(base), key, value))
    except ConfigError as exc:
        hint = ""
        if value is None or isinstance(value, bool):  # YAML reads yes/no/on/off/true/false/null unquoted
            hint = "; YAML reads an unquoted yes, no, on, off or null as a boolean or null: quote it ('no')"
        raise ConfigError(f"search.{key}: value {value!r} is refused by the trainer ({exc}){hint}") from None


def sample(trial: Any, space: list[Param], base: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's values for the active parameters, by dotted key."""
    values: dict[str, Any] = {}

    def current(key: str) -> Any:
        return values[key] if key in values else _lookup(base, key)

    for param in space:
        if param.active({key: current(key) for key in param.when}):
            values[param.key] = param.suggest(trial)
    return values


def apply_params(base: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    return set_dotted_all(dict(base), values)


def baseline_params(space: list[Param], base: Mapping[str, Any]) -> dict[str, Any]:
    """The base config's values for the searched keys (trial 0, the baseline); each must lie inside its distribution."""
    values = {param.key: _lookup(base, param.key) for param in space if param.active(base_view(base, param))}
    for param in space:
        if param.key in values and not param.contains(values[param.key]):
            raise ConfigError(
                f"search.{param.key}: the base config's value {values[param.key]!r} is not in the search space "
                f"({param.describe()}); the baseline trial runs the base config, so widen the space or change the base"
            )
    return values


def base_view(base: Mapping[str, Any], param: Param) -> dict[str, Any]:
    return {key: _lookup(base, key) for key in param.when}
