"""picollm.sweeps.pruning: a pruner reads each finished trial once, and sees every trial that finishes."""

from __future__ import annotations

import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from picollm.storage import open_storage
from picollm.sweeps.pruning import ReadOncePruner
from tests.conftest import postgres_url

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # a bare study.ask, on purpose


def url_of(kind: str, tmp_path: Path) -> str:
    return postgres_url() if kind == "postgresql" else f"sqlite:///{tmp_path}/s.db"


def finish(study: optuna.Study, values: list[float]) -> None:
    trial = study.ask()
    for step, value in enumerate(values):
        trial.report(value, step)
    study.tell(trial, values[-1])


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_it_prunes_as_its_pruner_does_and_sees_trials_other_workers_finish(tmp_path: Path, kind: str) -> None:
    url, name = url_of(kind, tmp_path), f"p{uuid.uuid4().hex[:8]}"
    median = optuna.pruners.MedianPruner(n_startup_trials=2)
    here = optuna.create_study(study_name=name, storage=open_storage(url, create=True))
    here.pruner = ReadOncePruner(median, url)
    elsewhere = optuna.load_study(study_name=name, storage=url)  # another worker, another storage object
    finish(elsewhere, [1.0, 1.0])
    running = here.ask()
    running.report(2.0, 0)
    assert not running.should_prune()  # one complete trial: the median pruner waits for two
    finish(elsewhere, [1.0, 1.0])
    assert running.should_prune()  # the second, finished elsewhere, is seen: 2.0 is worse than the median
    plain = optuna.load_study(study_name=name, storage=url, pruner=median)
    assert median.prune(plain, plain.trials[running.number])  # what the pruner itself decides


def test_while_no_trial_finishes_a_read_is_one_statement_and_a_new_one_is_the_only_one_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, name = postgres_url(), f"p{uuid.uuid4().hex[:8]}"
    storage = open_storage(url, create=True)
    study = optuna.create_study(study_name=name, storage=storage)
    study.pruner = ReadOncePruner(optuna.pruners.MedianPruner(n_startup_trials=1), url)
    for _ in range(3):
        finish(study, [1.0, 1.0])
    running = study.ask()
    running.report(2.0, 0)
    assert running.should_prune()  # the first read fetches the trials
    statements: list[str] = []
    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    built: list[int] = []
    build = type(storage)._build_frozen_trial_from_trial_model
    monkeypatch.setattr(
        type(storage),
        "_build_frozen_trial_from_trial_model",
        lambda self, m: (built.append(m.number), build(self, m))[1],
    )
    assert running.should_prune()
    assert statements == []  # Optuna's own read would fetch the running trial and its tables again
    finish(optuna.load_study(study_name=name, storage=url), [3.0, 3.0])
    assert running.should_prune()
    assert built == [running.number + 1]  # the one finished since; not the running trial, not the three before


def test_hyperband_is_left_as_it_is_for_the_samplers_that_look_for_it(tmp_path: Path) -> None:
    from picollm.sweeps.settings import load_experiment
    from picollm.sweeps.studies import open_study
    from tests.sweeps import write_experiment

    for pruner, kind in [("hyperband", optuna.pruners.HyperbandPruner), ("median", ReadOncePruner)]:
        path = write_experiment(tmp_path, study={"pruner": pruner, "name": pruner})
        study = open_study(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db", create=True)
        assert type(study.pruner) is kind  # optuna.pruners._filter_study: isinstance(study.pruner, HyperbandPruner)
