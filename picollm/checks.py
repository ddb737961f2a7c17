"""What a config value must be, declared with its field: ``block_size: int = at_least(1, 128)``.

Every block of an experiment file (the run config's sections, ``study:``, ``confirm:``, ``launcher:``) is a dataclass
whose fields carry their rules, so a new key is one line where it is declared; :func:`picollm.config.from_block` checks
them, then the block's own ``check()`` for what ties two of its fields together. Imports nothing of picollm.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Rule:
    """A test of one value and the words for a value that fails it."""

    test: Callable[[Any], bool]
    says: str  # "must be >= 1": the key before it, the value after it

    def problem(self, key: str, value: Any) -> str | None:
        if value is None or self.test(value):
            return None
        return f"{key} {self.says}, got {value}"


@dataclass(frozen=True)
class OneOf(Rule):
    """A value from a fixed list of names."""

    def problem(self, key: str, value: Any) -> str | None:
        if value is None or self.test(value):
            return None
        return f"{key}: unknown value {value!r} (choose from {self.says})"


def ruled(default: Any, rule: Rule) -> Any:
    """A dataclass field with ``default`` and ``rule``."""
    return field(default=default, metadata={"rule": rule})


def at_least(low: int, default: Any, why: str = "") -> Any:
    says = f"must be >= {low}" + (f" ({why})" if why else "")
    return ruled(default, Rule(lambda v: math.isfinite(v) and v >= low, says))


def above(low: float, default: Any) -> Any:
    return ruled(default, Rule(lambda v: math.isfinite(v) and v > low, f"must be > {low:g}"))


def positive(default: float) -> Any:
    return ruled(default, Rule(lambda v: math.isfinite(v) and v > 0, "must be a positive number"))


def within(low: float, high: float, default: float, closed: str = "[)") -> Any:
    """``closed`` says which ends belong to the range, as an interval is written: ``[)``, ``()``, ``[]``."""
    above = (lambda v: v >= low) if closed[0] == "[" else (lambda v: v > low)
    below = (lambda v: v <= high) if closed[1] == "]" else (lambda v: v < high)
    says = f"must be in {closed[0]}{low:g}, {high:g}{closed[1]}"
    return ruled(default, Rule(lambda v: math.isfinite(v) and above(v) and below(v), says))


def one_of(choices: Collection[str], default: str) -> Any:
    """A name from ``choices``: a tuple, or a registry dict whose keys are the names."""
    return ruled(default, OneOf(lambda v: v in choices, ", ".join(choices)))


def problems(block: Any, section: str) -> list[str]:
    """What breaks a field's declared rule, one line per field, in the order the fields are declared."""
    found = []
    for f in dataclasses.fields(block):
        rule = f.metadata.get("rule")
        if rule is not None and (line := rule.problem(f"{section}.{f.name}", getattr(block, f.name))):
            found.append(line)
    return found
