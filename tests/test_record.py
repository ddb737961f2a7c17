"""A study's and a trial's facts go to Optuna and come back through one typed record each."""

from __future__ import annotations

import optuna
import pytest

from picollm.sweeps.trial import INTERRUPTED, StudyRecord, TrialRecord, record, record_confirm_run, record_study


def test_a_trials_facts_round_trip_and_an_unknown_fact_is_refused() -> None:
    study = optuna.create_study()
    trial = study.ask()
    record(trial, run_dir="/runs/x", spent_tokens=1234, fail_reason=INTERRUPTED)
    with pytest.raises(TypeError, match="not a trial fact: run_dri"):
        record(trial, run_dri="/typo")
    study.tell(trial, 1.0)
    facts = TrialRecord.of(study.trials[0])
    assert (facts.number, facts.run_dir, facts.spent_tokens, facts.fail_reason) == (0, "/runs/x", 1234, INTERRUPTED)
    assert facts.baseline is False and facts.continues is None  # unwritten facts keep their defaults
    assert TrialRecord(baseline=True, continues=3).queued() == {"baseline": True, "continues": 3}


def test_a_studys_facts_round_trip_with_its_confirmation_runs() -> None:
    study = optuna.create_study()
    assert StudyRecord.of(study) == StudyRecord()  # nothing written: empty, not a KeyError
    record_study(study, space=[{"key": "optim.lr"}], base={"data": {"val_tokens": 64}}, settings={"metric": "m"})
    record_confirm_run(study, "cfg|1338|600", {"tokens": 600, "trial": 3})
    with pytest.raises(TypeError, match="not a study fact: spaec"):
        record_study(study, spaec=[])
    facts = StudyRecord.of(study)
    assert facts.param_keys == ["optim.lr"] and facts.settings == {"metric": "m"}
    assert facts.confirm_runs == {"cfg|1338|600": {"tokens": 600, "trial": 3}}
    assert facts.ran_base == {"data": {"val_tokens": 64}}  # no trained base recorded: the base as given
    record_study(study, trained_base={"data": {"val_tokens": 32}})
    assert StudyRecord.of(study).ran_base == {"data": {"val_tokens": 32}}
