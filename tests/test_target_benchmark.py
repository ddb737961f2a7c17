"""benchmarks.target_vs_brute_force: rank, paired regret, share of the gain, random search at equal tokens."""

from __future__ import annotations

import pytest

from benchmarks.target_vs_brute_force import random_search_share, run_key, score

SEEDS = [1, 2]


def runs(pool: list[dict], means: list[float]) -> dict[str, dict]:
    """Two seeds per configuration, 0.01 either side of its mean, 100 tokens each."""
    return {
        run_key(p, s): {"final_val_loss": m + (0.01 if s == 1 else -0.01), "tokens": 100}
        for p, m in zip(pool, means, strict=True)
        for s in SEEDS
    }


def test_a_winner_is_ranked_and_scored_against_the_pools_base_and_best() -> None:
    pool = [{"x": "base"}, {"x": "a"}, {"x": "b"}, {"x": "c"}]
    known = runs(pool, [5.0, 4.0, 4.5, 3.0])  # base 5.0, best c 3.0: the achievable gain is 2.0
    known[run_key({"x": "mine"}, 1)] = {"final_val_loss": 3.51, "tokens": 100}
    known[run_key({"x": "mine"}, 2)] = {"final_val_loss": 3.49, "tokens": 100}
    sweeps = {"s0": {"seed": 0, "winner": {"x": "mine"}, "tokens": 400, "wall_s": 1.0}}
    (row,) = score(pool, known, sweeps, SEEDS, target=100)
    assert (row["rank"], row["of"]) == (2, 5)  # behind c, ahead of a, b and the base config
    assert row["regret"] == pytest.approx(0.5) and row["regret_se"] == pytest.approx(0.0)  # paired: seeds cancel
    assert row["share"] == pytest.approx((5.0 - 3.5) / 2.0)
    assert row["token_share"] == pytest.approx(400 / 800) and row["random_configs"] == pytest.approx(2)


def test_random_search_takes_the_best_of_the_configurations_it_can_pay_for() -> None:
    means = {"a": 4.0, "b": 4.5, "c": 3.0}
    assert random_search_share(means, base=5.0, best=3.0, budget_configs=3, seed=0) == pytest.approx(1.0)
    assert random_search_share(means, base=5.0, best=3.0, budget_configs=0, seed=0) == 0.0
    one = random_search_share(means, base=5.0, best=3.0, budget_configs=1, seed=0)
    assert one == pytest.approx(0.5)  # one of a (0.5), b (0.25), c (1.0): the median draw is a


def test_random_search_given_a_fraction_of_a_configuration_more_buys_it_in_that_share_of_draws() -> None:
    """The sweep's tokens, not fewer: 1.9 configurations' worth is two configurations in nine draws of ten."""
    means = {"a": 4.0, "b": 4.5, "c": 3.0}
    assert random_search_share(means, base=5.0, best=3.0, budget_configs=0.1, seed=0) == 0.0  # mostly nothing
    assert random_search_share(means, base=5.0, best=3.0, budget_configs=0.9, seed=0) == pytest.approx(0.5)
    # two of three: the best pair holds c in two draws of three, so the median draw finds it
    assert random_search_share(means, base=5.0, best=3.0, budget_configs=1.9, seed=0) == pytest.approx(1.0)
