"""Sweeps that aim at the budget the winner will be trained at: rungs scored by branched decays, confirmation at
the target, a test split the search never sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from optuna.trial import TrialState

from picollm.errors import ConfigError
from picollm.sweeps import load_experiment, open_study, report_lines, run_sweep
from picollm.sweeps.experiment import apply_params, rungs
from picollm.trainer import train
from tests.sweeps import write_experiment

CHEAP, TARGET = 1024, 9216  # rungs at 1,024 and 3,072 tokens, the target at 9,216
TARGET_STUDY = {
    "budget_tokens": CHEAP,
    "target_tokens": TARGET,
    "pruner": "successive_halving",
    "n_trials": 6,
    "sampler": "random",
}
WSD = {"schedule": "wsd", "name": "adam", "lr": 3e-3}


def test_rungs_grow_by_the_reduction_factor_up_to_the_target(tmp_path) -> None:
    exp = load_experiment(str(write_experiment(tmp_path, study=TARGET_STUDY, optim=WSD)), [])
    assert rungs(exp.study) == [1024, 3072]
    assert exp.study.pruner_options == {"min_resource": CHEAP, "reduction_factor": 3}
    assert (exp.base.train.max_tokens, exp.base.train.anneal_at) == (TARGET, [1024, 3072])


@pytest.mark.parametrize(
    ("study", "optim", "message"),
    [
        ({"budget_tokens": 4096, "target_tokens": 2048}, WSD, r"study\.target_tokens \(2,048\) must be at least"),
        (TARGET_STUDY, {"schedule": "cosine"}, "needs optim.schedule: wsd"),
        ({**TARGET_STUDY, "sampler": "sobol", "pruner": "hyperband"}, WSD, "would take the same point"),
    ],
)
def test_a_target_the_sweep_cannot_aim_at_is_one_line(tmp_path, study: dict, optim: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_experiment(str(write_experiment(tmp_path, study=study, optim=optim)), [])


def test_a_target_sweep_compares_annealed_models_at_equal_tokens(tmp_path) -> None:
    path = write_experiment(tmp_path, study=TARGET_STUDY, optim=WSD)
    exp = load_experiment(str(path), [])
    storage = f"sqlite:///{tmp_path}/s.db"
    outcome = run_sweep(exp, storage, workers=1)
    assert not outcome.interrupted
    study = open_study(exp, storage, create=False)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 6
    for t in finished:
        reported = sorted(t.intermediate_values)
        assert set(reported) <= {1024, 3072, TARGET} and reported[0] == 1024
        if t.state == TrialState.COMPLETE:  # ran to the target and is ranked there
            assert t.user_attrs["tokens"] >= TARGET and t.value == t.intermediate_values[TARGET]
    assert any(t.state == TrialState.PRUNED for t in finished)  # the halving stopped some at a rung
    header = (tmp_path / "studies" / "t" / "best.yaml").read_text().splitlines()[0]  # no confirm: block here
    assert (
        header.startswith("# Best trial of study 't'") and f"trained at {TARGET:,} tokens with schedule wsd" in header
    )

    # Each rung's value is the loss a WSD run of that budget ends with: check one trial's cheap rung directly.
    some = finished[1]
    values = {"train.max_tokens": CHEAP, "train.anneal_at": [], "train.eval_every_tokens": CHEAP}
    alone = train(apply_params(exp.base, {**some.params, **values, "tracking.out_dir": str(tmp_path / "check")}))
    assert alone["final_val_loss"] == some.intermediate_values[1024]


def test_the_test_set_is_whole_documents_outside_the_validation_sample(tmp_path) -> None:
    from picollm.config import load_config
    from picollm.data import document_lengths, load_token_data, test_set, validation_sets

    cfg = load_config(write_experiment(tmp_path), ["data.val_tokens=512", "data.test_tokens=300"])
    data = load_token_data(cfg.data, progress=False)
    _, validation = validation_sets(data, None)
    test = test_set(data, 300)
    eot = data.tokenizer.eot_id

    def documents(tokens) -> set[tuple[int, ...]]:
        ends = list(document_lengths(tokens, eot).cumsum())
        return {tuple(tokens[a:b]) for a, b in zip([0, *ends], ends, strict=False)}

    assert test.description["tokens"] >= 300 and not documents(test.tokens) & documents(validation.tokens)
    assert test.description["seed"] != validation.description["seed"]
    whole = load_config(write_experiment(tmp_path), ["data.val_tokens=null"])
    with pytest.raises(Exception, match="takes every validation document"):
        test_set(load_token_data(whole.data, progress=False), 300)


def test_the_answer_is_confirmed_at_the_target_and_scored_once_on_the_test_set(tmp_path) -> None:
    import yaml

    path = write_experiment(
        tmp_path, study={**TARGET_STUDY, "n_trials": 4}, optim=WSD, data={"test_tokens": 256}, train={"threads": 1}
    )
    raw = yaml.safe_load(path.read_text())
    raw["confirm"] = {"top": 1, "seeds": 2}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    exp = load_experiment(str(path), [])
    outcome = run_sweep(exp, f"sqlite:///{tmp_path}/s.db", workers=1)
    study = open_study(exp, f"sqlite:///{tmp_path}/s.db", create=False)
    runs = [v for k, v in study.user_attrs.items() if k.startswith("confirm:")]
    assert runs and all(r["budget_tokens"] == TARGET and r["tokens"] >= TARGET for r in runs)
    from picollm.sweeps.export import recorded_confirmation

    conf = recorded_confirmation(study)
    tested = {r["trial"] for r in runs if "test_loss" in r}
    winner = conf.ranked()[0].candidate.number
    assert tested == {winner, 0}  # only the confirmed winner and the baseline are scored on it
    assert any("validation - test" in line for line in outcome.notes)
    best = (tmp_path / "studies" / "t" / "best.yaml").read_text()
    assert f"confirmed at {TARGET:,} tokens with schedule wsd" in best and "test " in best
    assert yaml.safe_load(best)["train"]["max_tokens"] == TARGET and yaml.safe_load(best)["train"]["anneal_at"] == []
    import csv

    rows = {int(r["number"]): r for r in csv.DictReader((tmp_path / "studies" / "t" / "trials.csv").open())}
    side_by_side = {n for n, r in rows.items() if r["test_loss"] and r["confirmed_val_loss"]}
    assert side_by_side == {winner, 0}  # trials.csv: validation and test figures of the winner and the baseline
    assert all(float(rows[n]["test_loss_stderr"]) > 0 for n in side_by_side)
    assert all(
        abs(float(rows[n]["val_minus_test"]) - (float(rows[n]["confirmed_val_loss"]) - float(rows[n]["test_loss"])))
        < 1e-9
        for n in side_by_side
    )
    from picollm.analysis.sections import confirm_section

    report = confirm_section(study, tmp_path / "studies" / "t")  # the same lines the sweep printed
    assert report is not None and len([line for line in report.text if "validation - test" in line]) == 2


def test_a_budgeted_target_sweep_stops_inside_its_tokens_and_counts_every_one(tmp_path, capsys) -> None:
    from picollm.sweeps.budget import plan_of
    from picollm.sweeps.report import report_lines

    sampler = {"name": "sobol", "tpe_after": 4}  # target.yaml's sampler: Sobol points, then TPE
    study = {**TARGET_STUDY, "n_trials": None, "max_tokens": 90_000, "sampler": sampler, "pruner": "halving"}
    path = write_experiment(tmp_path, study=study, optim=WSD, confirm={"top": 1, "seeds": 2})
    exp = load_experiment(str(path), [])
    storage = f"sqlite:///{tmp_path}/s.db"
    run_sweep(exp, storage, workers=1)
    said = capsys.readouterr().out
    assert "budget 90,000 training tokens (trials, branched decays and confirmation)" in said.splitlines()[1]
    sweep = open_study(exp, storage, create=False)
    plan = plan_of(exp)
    trials = sweep.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(trials) >= 4 and not plan.room_for_trial(sweep.trials)  # the budget, not a count, ended it
    assert any(t.state == TrialState.COMPLETE for t in trials)  # the best went on to the target
    # No more than the plan said it could cost to its last rung (a continuation: from where it went on).
    for t in trials:
        index, paid = plan.index_of(t), plan.paid(t)
        assert (plan.budgets[index] if not paid else 1) <= t.user_attrs["spent_tokens"] <= plan.cost_to(index) - paid
    # Halving: no rung below the last promoted more than the best third of the configurations scored there (the last
    # sends its best on at the end, while the budget pays), each from where it paused.
    for index, budget in enumerate(plan.budgets[:-2]):
        scored = {json.dumps(t.params, sort_keys=True) for t in trials if budget in t.intermediate_values}
        above = {json.dumps(t.params, sort_keys=True) for t in trials if plan.index_of(t) > index}
        assert above <= scored and len(above) <= len(scored) // 3
    for t in (t for t in trials if "continues" in t.user_attrs):
        meta = json.loads((Path(t.user_attrs["run_dir"]) / "meta.json").read_text())
        paused = sweep.trials[t.user_attrs["continues"]]
        assert meta["resumed_from"] == paused.user_attrs["run_dir"] and t.params == paused.params
    assert any("continues" in t.user_attrs for t in trials)
    confirm = [r["tokens"] for k, r in sweep.user_attrs.items() if k.startswith("confirm:")]
    spent = sum(t.user_attrs["spent_tokens"] for t in trials) + sum(confirm)
    assert 4 <= len(confirm) <= 6 and spent <= 90_000
    assert f"{spent:,} training tokens spent" in report_lines(sweep)[0]


def test_sobol_points_follow_the_trial_number_not_the_finishing_order(tmp_path) -> None:
    """Trial n takes point n whichever worker asks: the study tries the same configurations in any order."""
    import optuna

    from picollm.sweeps.experiment import make_sampler, sample

    exp = load_experiment(str(write_experiment(tmp_path, study=TARGET_STUDY, optim=WSD)), [])

    def configurations(order: list[int]) -> dict[int, dict]:
        study = optuna.create_study(sampler=make_sampler("sobol", exp.space, 0, {}))
        trials = [study.ask() for _ in range(16)]
        return {i: sample(trials[i], exp.space, exp.base) for i in order}

    forward = configurations(list(range(16)))
    assert forward == configurations(list(reversed(range(16))))
    assert {p["optim.name"] for p in forward.values()} == {"sgd", "adam", "rmsprop"}
    assert len({json.dumps(p, sort_keys=True) for p in forward.values()}) == 16  # no point twice


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # the retry callback, as the study uses it
def test_a_retried_trial_takes_no_sobol_point(tmp_path) -> None:
    """A dead trial's retry runs its parameters again: the next fresh trial takes the next point, none is skipped."""
    import optuna

    from picollm.sweeps.experiment import make_sampler, sample

    exp = load_experiment(str(write_experiment(tmp_path, study=TARGET_STUDY, optim=WSD)), [])

    def points(retry_after: int | None) -> list[dict]:
        study = optuna.create_study(sampler=make_sampler("sobol", exp.space, 0, {}))
        fresh = []
        for i in range(4):
            trial = study.ask()
            params = sample(trial, exp.space, exp.base)
            if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(study.trials[-1]) is None:
                fresh.append(params)
            if i == retry_after:  # failed, and re-queued as the heartbeat's callback re-queues a dead trial
                study.tell(trial, state=TrialState.FAIL)
                optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)(study, study.trials[-1])
            else:
                study.tell(trial, 1.0)
        return fresh

    assert points(retry_after=1) == points(retry_after=None)[:3]


def test_sobol_then_tpe_looks_again_near_the_first_half_s_best(tmp_path) -> None:
    """``tpe_after``: the first trials are the Sobol sampler's very points; later ones crowd near the best of them,
    pruned (paused) trials ranked by the rung they reached, as halving leaves them."""
    import math

    import optuna

    from picollm.sweeps.experiment import make_sampler, sample

    exp = load_experiment(str(write_experiment(tmp_path, study=TARGET_STUDY, optim=WSD)), [])
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def loss(params: dict) -> float:  # best at rmsprop, lr 3e-3, block 16
        miss = abs(math.log10(params["optim.lr"] / 3e-3)) + (params["optim.name"] != "rmsprop")
        return 3.0 + miss + 0.1 * (params["model.block_size"] != 16)

    def run(options: dict) -> list[dict]:
        study = optuna.create_study(sampler=make_sampler("sobol", exp.space, 0, options))
        tried = []
        for _ in range(40):
            trial = study.ask()
            params = sample(trial, exp.space, exp.base)
            tried.append(params)
            value = loss(params)
            if value < 3.6:  # the best go on to the target; the rest pause at the rung, as halving leaves them
                study.tell(trial, value)
            else:
                trial.report(value, step=CHEAP)
                study.tell(trial, state=TrialState.PRUNED)
        return tried

    with pytest.raises(ConfigError, match="tpe_after must be a whole number of trials >= 0, got -1"):
        make_sampler("sobol", exp.space, 0, {"tpe_after": -1})
    sobol, hybrid = run({}), run({"tpe_after": 16})
    assert hybrid[:16] == sobol[:16]
    near = [sum(loss(p) < 3.6 for p in tried[16:]) for tried in (sobol, hybrid)]
    assert near[1] >= 2 * near[0] + 4, near


def test_a_larger_budget_resumes_the_study_where_the_smaller_one_ended(tmp_path) -> None:
    study = {**TARGET_STUDY, "n_trials": None, "max_tokens": 70_000, "sampler": "sobol", "pruner": "halving"}
    path = write_experiment(tmp_path, study=study, optim=WSD)
    storage = f"sqlite:///{tmp_path}/s.db"
    run_sweep(load_experiment(str(path), []), storage, workers=1)
    first = len(open_study(load_experiment(str(path), []), storage, create=False).trials)
    run_sweep(
        load_experiment(str(path), ["study.max_tokens=120000"]), storage, workers=1
    )  # the budget is no new question
    again = open_study(load_experiment(str(path), ["study.max_tokens=120000"]), storage, create=False)
    assert len(again.trials) > first and "of the budget of 120,000" in " ".join(report_lines(again))
