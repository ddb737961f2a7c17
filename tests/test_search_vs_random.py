"""compare_search's arithmetic on hand-made studies: best-so-far, tokens to reach a target, the goal check."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.search_vs_random import Trace, quartiles, summarize, top_configs


def _trace(method: str, seed: int, tokens: list[int], values: list[float | None]) -> Trace:
    """A study as (tokens spent by each trial, its value; None = pruned); trial 0 is the shared baseline."""
    spent = np.cumsum(tokens).astype(float)
    best, so_far, complete = [], math.inf, []
    for i, v in enumerate(values):
        if v is not None:
            so_far = min(so_far, v)
            complete.append((v, {"trial": 0} if i == 0 else {"trial": i, "method": method, "seed": seed}))
        best.append(so_far)
    return Trace(method, seed, spent, np.array(best), sum(v is None for v in values), complete)


def test_tpe_that_reaches_random_median_with_a_third_of_the_tokens_meets_the_goal() -> None:
    traces = [
        _trace("random", s, [100] * 4, [6.0, 5.0 - 0.1 * s, 5.5, 4.9 - 0.1 * s]) for s in range(3)
    ]  # finals 4.9, 4.8, 4.7: median 4.8 after 400 tokens
    traces += [_trace("tpe-median", s, [100, 30, 30, 30], [6.0, 4.7, None, None]) for s in range(3)]
    out = summarize(traces, ["tpe-median", "random"])
    assert out["random_median_best"] == pytest.approx(4.8) and out["random_median_tokens"] == 400
    assert out["methods"]["tpe-median"]["tokens_to_random_median"][1] == 130  # 4.7 <= 4.8 after 100 + 30 tokens
    assert out["goal_met"] and out["goal_share"] == 130 / 400
    assert out["methods"]["tpe-median"]["pruned"][1] == 2


def test_a_search_that_never_reaches_the_target_fails_the_goal() -> None:
    traces = [_trace("random", s, [100, 100], [5.0, 4.0]) for s in range(3)]
    traces += [_trace("tpe-median", s, [10, 10], [5.0, None]) for s in range(3)]
    out = summarize(traces, ["tpe-median", "random"])
    assert not out["goal_met"] and out["goal_share"] == math.inf
    assert out["methods"]["tpe-median"]["reached_in"] == 0


def test_either_pruner_can_meet_the_goal_and_the_verdict_says_which() -> None:
    from benchmarks.search_vs_random import verdict

    traces = [_trace("random", s, [100, 100], [5.0, 4.0]) for s in range(3)]
    traces += [_trace("tpe-median", s, [10, 10], [5.0, None]) for s in range(3)]  # never reaches 4.0
    traces += [_trace("tpe-sha", s, [50, 10, 10], [5.0, None, 3.9]) for s in range(3)]  # 70 of 200 tokens
    out = summarize(traces, ["tpe-median", "tpe-sha", "random"])
    assert out["goals"] == {"tpe-median": math.inf, "tpe-sha": 70 / 200}
    assert out["goal_met"] and out["goal_share"] == 70 / 200
    lines = verdict(out, None)
    assert "MET" in lines[0] and "NOT MET" not in lines[0]
    assert "TPE + median pruning: not reached by the median seed (does not" in lines[1]
    assert "TPE + successive halving: at 35% of the tokens (meets it" in lines[2]


def test_quartiles_with_unreached_seeds() -> None:
    assert quartiles([100.0, 200.0, math.inf]) == (150.0, 200.0, math.inf)  # the median seed did reach it
    assert quartiles([100.0, math.inf, math.inf])[1] == math.inf


def test_best_so_far_ignores_pruned_trials_and_stops_at_the_tokens_spent() -> None:
    t = _trace("tpe-sha", 0, [100, 10, 100], [5.0, None, 4.0])
    assert t.best_at(50) != t.best_at(50)  # NaN: nothing complete yet
    assert (t.best_at(100), t.best_at(150), t.best_at(210)) == (5.0, 5.0, 4.0)
    assert math.isnan(t.best_at(211))  # beyond what this study spent
    assert t.tokens_to_reach(4.5) == 210


def test_top_configs_pool_studies_without_repeats() -> None:
    a = _trace("random", 0, [1, 1, 1], [5.0, 4.0, 4.5])
    b = _trace("tpe-median", 0, [1, 1], [5.0, 3.0])  # trial 0 repeats a's trial 0 (same params)
    top = top_configs([a, b], 3)
    assert [v for v, _ in top] == [3.0, 4.0, 4.5]
