"""Where a run's wall time goes: a stopwatch over named phases.

A sweep pays every fixed cost once per trial, so a trial's time is accounted for, not guessed. Phases are exclusive
(entering one pauses the one around it), so they add up to the wall time, and the unclaimed rest is ``other``. The
breakdown lands in ``summary.json`` (``time_breakdown``), W&B and the trial's attributes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

# The phases the trainer and the sweep use, in the order a trial meets them (the order tables print in).
PHASES = (
    "worker_start",  # process start to the worker's first trial (imports, opening the study); first trial only
    "storage",  # Optuna storage calls: asking, reporting, pruning decisions, user attributes, telling
    "data",  # token cache lookup and load (or build), tokenizer
    "model_build",  # model and optimiser construction
    "tracking_init",  # run record and W&B set-up
    "train_steps",  # forward, backward, optimiser step, per-step logging
    "evaluation",  # validation losses: periodic (the pruner's) and per epoch (the objective's)
    "sampling",  # generated text for the record
    "checkpoints",  # best.pt / final.pt
    "tracking_finish",  # closing the run record and W&B
)


def process_age_s() -> float | None:
    """Seconds since this process started (Linux ``/proc``), or None: the start-up a stopwatch cannot see otherwise."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            fields = fh.read().rpartition(")")[2].split()
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        start_ticks = int(fields[19])  # field 22 of stat; fields after the command name start at 3
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


_START_CHARGED = [False]  # process start-up is charged once per process, to its first run


def take_process_start() -> float:
    """This process's age the first time it is asked (its start-up, for the first run to own), else 0."""
    if _START_CHARGED[0]:
        return 0.0
    _START_CHARGED[0] = True
    return process_age_s() or 0.0


class Stopwatch:
    """Exclusive time per named phase, plus the wall time since it was made."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.started = clock()
        self.totals: dict[str, float] = {}
        self._before = 0.0  # time spent before the stopwatch existed (see `add_before`)
        self._stack: list[tuple[str, float]] = []  # open phases, innermost last, with when each last resumed

    def _charge(self, name: str, seconds: float) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Charge the time inside the block to ``name``; an enclosing phase is paused meanwhile."""
        now = self._clock()
        if self._stack:
            outer, since = self._stack[-1]
            self._charge(outer, now - since)
        self._stack.append((name, now))
        try:
            yield
        finally:
            now = self._clock()
            _, since = self._stack.pop()
            self._charge(name, now - since)
            if self._stack:
                self._stack[-1] = (self._stack[-1][0], now)

    def add_before(self, name: str, seconds: float) -> None:
        """Charge time that passed before this stopwatch started (e.g. a worker's start-up) to ``name``."""
        self._charge(name, seconds)
        self._before += seconds

    def wall(self) -> float:
        return self._before + self._clock() - self.started

    def breakdown(self) -> dict[str, float]:
        """Seconds per phase (known phases first), ``other`` for the unclaimed rest, and ``wall``."""
        wall = self.wall()
        order = [p for p in PHASES if p in self.totals] + sorted(set(self.totals) - set(PHASES))
        out = {name: round(self.totals[name], 4) for name in order}
        out["other"] = round(max(0.0, wall - sum(self.totals.values())), 4)
        out["wall"] = round(wall, 4)
        return out


def total(breakdowns: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Sum breakdowns phase by phase (a study's trials), keeping the phase order."""
    sums: dict[str, float] = {}
    for b in breakdowns:
        for name, seconds in b.items():
            sums[name] = sums.get(name, 0.0) + float(seconds)
    return sums


def shares(breakdown: Mapping[str, float]) -> dict[str, float]:
    """Each phase's share of the wall time (0..1)."""
    wall = breakdown.get("wall") or 0.0
    return {name: (s / wall if wall > 0 else 0.0) for name, s in breakdown.items() if name != "wall"}
