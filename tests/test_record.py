"""A trial's facts go to Optuna and come back through one typed record."""

from __future__ import annotations

import optuna
import pytest

from picollm.sweeps.record import INTERRUPTED, TrialRecord, record


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
