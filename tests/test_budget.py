"""A study's budget in tokens: what a trial costs at each rung, and the two checks that keep a study inside it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from optuna.trial import TrialState

from picollm.errors import ConfigError
from picollm.sweeps import load_experiment
from picollm.sweeps.budget import TokenPlan, plan_of
from picollm.sweeps.experiment import rungs
from tests.sweeps import write_experiment

PLAN = TokenPlan(budgets=(1000, 3000, 9000), decay_fraction=0.2, eta=3, step_tokens=0, reserve=0, max_tokens=None)


def trial(number: int, state: TrialState, reported: tuple[int, ...] = (), spent: int | None = None) -> SimpleNamespace:
    attrs = {} if spent is None else {"spent_tokens": spent}
    values = dict.fromkeys(reported, 5.0)
    return SimpleNamespace(number=number, state=state, intermediate_values=values, user_attrs=attrs)


def test_a_trial_costs_its_stable_phase_and_every_decay_it_branched() -> None:
    assert PLAN.cost_to(0) == 800 + 200  # stable to the first rung's decay, then that decay
    assert PLAN.cost_to(1) == 2400 + 200 + 600
    assert PLAN.cost_to(2) == 9000 + 200 + 600  # the run's own decay is part of its 9,000 tokens
    # A new trial goes on to each further rung once in eta.
    assert PLAN.expected_from(-1) == pytest.approx(1000 + (3200 - 1000) / 3 + (9800 - 3200) / 9)


def test_a_new_trial_starts_only_when_its_expected_cost_fits_beside_what_is_kept() -> None:
    plan = TokenPlan(**{**PLAN.__dict__, "reserve": 5000, "max_tokens": 30000})
    assert plan.kept == 5000 + 9800  # the confirmation and one trial's way to the target
    done = [trial(0, TrialState.PRUNED, (1000,), spent=1000), trial(1, TrialState.COMPLETE, (1000, 3000, 9000), 9800)]
    assert plan.room_for_trial(done)  # 10,800 spent + 2,733 expected + 14,800 kept <= 30,000
    running = [*done, trial(2, TrialState.RUNNING, (1000, 3000))]  # expected to go on to the target: 9,800
    assert not plan.room_for_trial(running)


def test_a_trial_goes_past_a_rung_only_when_the_next_rung_fits_beside_every_commitment() -> None:
    plan = TokenPlan(**{**PLAN.__dict__, "reserve": 5000, "max_tokens": 20000})
    others = [trial(0, TrialState.COMPLETE, (1000, 3000, 9000), spent=9800), trial(1, TrialState.RUNNING)]
    me = trial(2, TrialState.RUNNING, (1000,))
    # 9,800 spent + 1,000 committed by trial 1 + 3,200 for me to rung 3,000 + 5,000 reserved = 19,000
    assert plan.room_to_go_on([*others, me], me, index=0)
    # to the target: 9,800 + 1,000 + 9,800 + 5,000 > 20,000
    later = trial(2, TrialState.RUNNING, (1000, 3000))
    assert not plan.room_to_go_on([*others, later], later, index=1)
    assert plan.room_to_go_on([*others, me], me, index=2)  # at the target there is nothing left to pay


def test_a_failed_trial_that_did_not_say_counts_up_to_its_next_rung() -> None:
    assert PLAN.spent(trial(0, TrialState.FAIL, (1000, 3000))) == PLAN.cost_to(2)  # it may have trained on to there
    assert PLAN.spent(trial(0, TrialState.FAIL, (1000, 3000, 9000))) == PLAN.cost_to(2)  # scored at the target
    assert PLAN.spent(trial(0, TrialState.FAIL, (1000,), spent=777)) == 777


def test_rungs_are_the_target_over_powers_of_the_reduction_factor() -> None:
    settings = SimpleNamespace(budget_tokens=20_000, target_tokens=600_000, pruner_options={})
    assert rungs(settings) == [22_222, 66_666, 200_000]


def test_a_budget_that_cannot_pay_for_the_confirmation_and_one_trial_is_one_line(tmp_path) -> None:
    study = {"budget_tokens": 1024, "target_tokens": 9216, "pruner": "successive_halving", "max_tokens": 20_000}
    path = write_experiment(tmp_path, study=study, optim={"schedule": "wsd"}, confirm={"top": 1, "seeds": 2})
    with pytest.raises(ConfigError, match=r"study\.max_tokens \(20,000\) cannot pay for the confirmation"):
        load_experiment(str(path), [])
    exp = load_experiment(str(path), ["study.max_tokens=200000", "study.n_trials=null"])
    plan = plan_of(exp)
    assert plan.reserve == 2 * 2 * (9216 + plan.step_tokens) and plan.budgets == (1024, 3072, 9216)
    with pytest.raises(ConfigError, match=r"study\.n_trials: null needs study\.max_tokens"):
        load_experiment(str(path), ["study.max_tokens=null", "study.n_trials=null"])


def config(number: int, name: str, values: dict[int, float], state: TrialState = TrialState.PRUNED, **attrs: int):
    return SimpleNamespace(number=number, params={"x": name}, state=state, intermediate_values=values, user_attrs=attrs)


def test_halving_promotes_the_best_paused_configuration_once_its_rung_has_room() -> None:
    from picollm.sweeps.budget import next_promotion, promotions_due

    budgets = (1000, 3000, 9000)
    two = [config(0, "a", {1000: 5.0}), config(1, "b", {1000: 4.0})]
    assert next_promotion(two, budgets, 3) is None  # two scored: no decision yet, both wait
    three = [*two, config(2, "c", {1000: 6.0})]
    promoted, index = next_promotion(three, budgets, 3)
    assert (promoted.number, index) == (1, 0) and promotions_due(three, budgets, 3) == [1, 0]
    going = config(3, "b", {}, TrialState.RUNNING, continues=1, from_rung=0)
    assert next_promotion([*three, going], budgets, 3) is None  # the rung's best third has gone on
    assert promotions_due([*three, going], budgets, 3) == [0, 0]
    six = [*three, going, *(config(4 + i, n, {1000: v}) for i, (n, v) in enumerate([("d", 4.5), ("e", 7), ("f", 8)]))]
    promoted, index = next_promotion(six, budgets, 3)
    assert (promoted.params, index) == ({"x": "d"}, 0)  # six scored: room for two


def test_the_last_rung_sends_its_best_to_the_target_at_the_end_then_the_next_while_paid() -> None:
    from picollm.sweeps.budget import last_promotion

    budgets = (1000, 3000, 9000)
    top = [config(0, "a", {1000: 5.0, 3000: 4.5}), config(1, "b", {1000: 4.0, 3000: 4.2}), config(2, "c", {1000: 6})]
    promoted, index = last_promotion(top, budgets, most=None)
    assert (promoted.params, index) == ({"x": "b"}, 1)  # the best of every configuration that reached the last rung
    done = [*top, config(3, "b", {9000: 3.9}, TrialState.COMPLETE, continues=1, from_rung=1)]
    assert last_promotion(done, budgets, most=1) is None  # without a token budget: one in eta, at least one
    assert last_promotion(done, budgets, most=None)[0].params == {"x": "a"}  # with one: the next best, while it pays
    thin = [config(0, "a", {1000: 5.0}), config(1, "b", {1000: 4.0})]
    assert last_promotion(thin, budgets, most=None)[0].params == {"x": "b"}  # too thin to halve: still an answer


def test_a_failed_run_neither_scores_its_rung_nor_is_promoted_again() -> None:
    from picollm.sweeps.budget import next_promotion, promotions_due

    budgets = (1000, 3000, 9000)
    rung = [config(0, "a", {1000: 5.0}), config(1, "b", {1000: 4.0}), config(2, "c", {1000: 6.0})]
    nan_at_rung = config(3, "d", {1000: 1.0}, TrialState.FAIL)  # failed as it was scored: not a score
    assert next_promotion([*rung, nan_at_rung], budgets, 3)[0].number == 1
    failed_continuation = config(4, "b", {}, TrialState.FAIL, continues=1, from_rung=0)
    assert next_promotion([*rung, failed_continuation], budgets, 3) is None  # the same state would fail again
    assert promotions_due([*rung, failed_continuation], budgets, 3) == [0, 0]
    plan = TokenPlan(**{**PLAN.__dict__, "promotes": True, "max_tokens": 10**6})
    scored_at_target = trial(5, TrialState.RUNNING, (1000, 3000, 9000))  # saving its weights: nothing more to train
    assert plan.ledger([scored_at_target], hard=True) == plan.cost_to(2)
