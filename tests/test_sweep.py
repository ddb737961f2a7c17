"""sweep.py: resumable totals, exact counts under concurrency, faults that do not stop a study."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import sweep as sweep_module
from picollm.config import load_config
from picollm.errors import run_cli
from picollm.export import export_study
from picollm.sweeps import load_experiment, open_study, run_sweep
from picollm.sweeps import studies as study_mod
from picollm.train import train
from picollm.wandb_offline import find_run_file, read_run_info
from tests.sweeps import sweep_cli, write_experiment

POSTGRES_URL = os.environ.get("PICOLLM_TEST_POSTGRES_URL")


def states(study: optuna.Study) -> dict[str, int]:
    return study_mod.counts(study)


def test_running_again_resumes_to_the_total(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, storage = write_experiment(tmp_path), f"sqlite:///{tmp_path}/s.db"
    run_sweep(load_experiment(str(path), [], n_trials=3), storage)
    study = open_study(load_experiment(str(path), []), storage, create=False)
    assert states(study)["COMPLETE"] == 3
    run_sweep(load_experiment(str(path), [], n_trials=5), storage)
    run_sweep(load_experiment(str(path), [], n_trials=5), storage)  # already there: nothing more runs
    study = open_study(load_experiment(str(path), []), storage, create=False)
    assert states(study)["COMPLETE"] == 5 and len(study.trials) == 5
    assert study.trials[0].user_attrs["baseline"] is True
    assert study.trials[0].params == {"optim.name": "adam", "optim.lr": 3e-3, "model.block_size": 16, "model.k": 3}


@pytest.mark.parametrize("storage_kind", ["sqlite", "journal", "postgresql"])
def test_two_workers_finish_exactly_n_trials(tmp_path: Path, storage_kind: str) -> None:
    if storage_kind == "postgresql" and not POSTGRES_URL:
        pytest.skip("set PICOLLM_TEST_POSTGRES_URL (.ci/run does) to test against a PostgreSQL server")
    storage = {
        "sqlite": f"sqlite:///{tmp_path}/s.db",
        "journal": f"journal:{tmp_path}/s.log",
        "postgresql": POSTGRES_URL,
    }[storage_kind]
    name = f"w{uuid.uuid4().hex[:8]}"
    exp = load_experiment(str(write_experiment(tmp_path, study={"n_trials": 7})), [], study_name=name)
    run_sweep(exp, storage, workers=2)
    study = open_study(exp, storage, create=False)
    c = states(study)
    assert c["COMPLETE"] + c["PRUNED"] == 7 and c["RUNNING"] == 0 and c["WAITING"] == 0
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    run_ids = [t.user_attrs["run_id"] for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(run_ids) == len(set(run_ids)) == 7
    workers = {t.user_attrs["worker"] for t in study.trials if t.state == TrialState.COMPLETE}
    assert len(workers) == 2  # both processes did work


def test_raising_and_nan_trials_do_not_stop_the_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import picollm.train as train_mod

    calls = {"n": 0}
    real_train = train_mod.train

    def flaky_train(cfg, **kwargs):  # the second trial raises like a bug in user code would
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected failure")
        return real_train(cfg, **kwargs)

    monkeypatch.setattr(train_mod, "train", flaky_train)
    search = {"optim.lr": {"type": "categorical", "choices": [1.0e12, 3.0e-3]}}
    path = write_experiment(
        tmp_path,
        search=search,
        study={"n_trials": 4, "sampler": "random"},
        optim={"name": "sgd", "lr": 3.0e-3, "grad_clip": 0.0},
    )
    outcome = run_sweep(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db")
    study = open_study(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db", create=False)
    reasons = [t.user_attrs.get("fail_reason", "") for t in study.trials if t.state == TrialState.FAIL]
    assert any("injected failure" in r for r in reasons)
    assert any("NonFiniteLoss" in r for r in reasons)
    assert states(study)["COMPLETE"] == 4 and not outcome.interrupted


def test_pruning_stops_hopeless_trials_early(tmp_path: Path) -> None:
    path = write_experiment(
        tmp_path,
        study={
            "n_trials": 8,
            "sampler": "random",
            "budget_tokens": 8192,
            "reports": 4,
            "pruner": {"name": "median", "n_startup_trials": 2},
        },
    )
    run_sweep(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db")
    study = open_study(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db", create=False)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned
    assert all(t.user_attrs["tokens"] < 8192 for t in pruned)
    assert all(max(t.intermediate_values) < 8192 for t in pruned)


def test_best_yaml_reproduces_the_best_trial(tmp_path: Path) -> None:
    path = write_experiment(tmp_path, study={"n_trials": 3})
    exp = load_experiment(str(path), [])
    run_sweep(exp, f"sqlite:///{tmp_path}/s.db")
    study = open_study(exp, f"sqlite:///{tmp_path}/s.db", create=False)
    folder, _ = export_study(study, tmp_path / "studies")
    assert {"trials.csv", "best.yaml", "optimization_history.png"} <= {p.name for p in folder.iterdir()}
    summary = train(load_config(folder / "best.yaml", ["train.progress=false"]))
    assert summary["best_val_loss"] == study.best_value
    header = (folder / "trials.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["number", "state", "value"] and {"optim.name", "run_dir"} <= set(header)


def test_wandb_groups_trials_and_logs_a_study_run(tmp_path: Path) -> None:
    path = write_experiment(tmp_path, study={"n_trials": 2, "name": "grp"}, tracking={"wandb": "offline"})
    run_sweep(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db")
    study = open_study(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db", create=False)
    info = read_run_info(find_run_file(study.trials[1].user_attrs["run_dir"]))
    assert (info["group"], info["job_type"], info["name"]) == ("grp", "trial", "grp-t1")
    assert info["config"]["trial.number"] == 1
    assert {k: info["config"][k] for k in study.trials[1].params} == study.trials[1].params
    study_runs = list((tmp_path / "studies" / "grp").glob("wandb/*run-*/run-*.wandb"))
    assert study_runs and read_run_info(study_runs[-1])["job_type"] == "summary"


BAD = [
    (["--storage", "mongodb://x/y"], "unknown storage"),
    (["--storage", "postgresql://alice:hunter2@127.0.0.1:9/db"], "cannot open storage postgresql://alice:***@"),
    (["--set", "study.sampler=annealing"], "study.sampler: unknown sampler 'annealing'"),
    (["--set", "study.pruner={name: median, bogus: 1}"], "study.pruner: bad option for median"),
    (["--set", "search.optim.name.choices=[]"], "search.optim.name: 'choices' must be a non-empty list"),
    (["--set", "search.optim.lr.low=0.5"], "search.optim.lr: low (0.5) is greater than high"),
    (["--set", "search.optim.lr.low=0"], "a log range needs low > 0"),
    (["--set", "search.optim.name.choices=[sgd, adamx]"], "value 'adamx' is refused by the trainer"),
    (["--set", "search.model.k.type=gaussian"], "unknown type 'gaussian'"),
    (["--set", "search.optim.lr.high=1e-5"], "low (0.0001) is greater than high"),
    (["--set", "study.n_trials=0"], "study.n_trials must be >= 1"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_storage_and_spaces_exit_with_one_line(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_experiment(tmp_path)
    argv = ["--config", str(path), "--storage", f"sqlite:///{tmp_path}/s.db", *args]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(sweep_module.main, argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert "hunter2" not in err
    assert not (tmp_path / "runs").exists()


def test_changed_search_space_on_resume_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_experiment(tmp_path, study={"n_trials": 1})
    run_sweep(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db")
    with pytest.raises(SystemExit):
        run_cli(
            sweep_module.main,
            ["--config", str(path), "--storage", f"sqlite:///{tmp_path}/s.db", "--set", "search.model.k.high=6"],
        )
    assert "was created with another search space" in capsys.readouterr().err


def test_cli_end_to_end_prints_best_against_baseline(tmp_path: Path) -> None:
    proc = sweep_cli(write_experiment(tmp_path, study={"n_trials": 3}), f"sqlite:///{tmp_path}/s.db")
    assert proc.returncode == 0, proc.stderr
    assert "best: trial" in proc.stdout and "baseline (trial 0" in proc.stdout and "results: " in proc.stdout
    status = sweep_cli(write_experiment(tmp_path, study={"n_trials": 3}), f"sqlite:///{tmp_path}/s.db", "status")
    assert status.stdout.count("COMPLETE") >= 3
