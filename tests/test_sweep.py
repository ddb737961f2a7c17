"""sweep.py: resumable totals, exact counts under concurrency, faults that do not stop a study."""

from __future__ import annotations

import gc
import json
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import picollm.cli.sweep as sweep_module
from picollm.cli import run_cli
from picollm.config import load_config
from picollm.sweeps import load_experiment, open_study, run_sweep
from picollm.sweeps import study as study_mod
from picollm.sweeps.export import export_study
from picollm.trainer import train
from picollm.wandb_offline import find_run_file, read_run_info
from tests.conftest import postgres_url
from tests.sweeps import processes_at_once, sweep_cli, sweep_here, write_experiment


def states(study: optuna.Study) -> dict[str, int]:
    return study_mod.counts(study)


def test_running_again_resumes_to_the_total(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, storage = write_experiment(tmp_path), f"sqlite:///{tmp_path}/s.db"
    run_sweep(load_experiment(str(path), [], n_trials=3), storage, workers=1)
    study = open_study(load_experiment(str(path), []), storage, create=False)
    assert states(study)["COMPLETE"] == 3
    run_sweep(load_experiment(str(path), [], n_trials=5), storage, workers=1)
    run_sweep(load_experiment(str(path), [], n_trials=5), storage, workers=1)  # already there: nothing more runs
    study = open_study(load_experiment(str(path), []), storage, create=False)
    assert states(study)["COMPLETE"] == 5 and len(study.trials) == 5
    assert study.trials[0].user_attrs["baseline"] is True
    assert study.trials[0].params == {"optim.name": "adam", "optim.lr": 3e-3, "model.block_size": 16, "model.k": 3}
    for t in study.trials:  # the ranked value is the documented metric, read from the trial's own record
        summary = json.loads((Path(t.user_attrs["run_dir"]) / "summary.json").read_text())
        assert t.user_attrs["metric"] == "final_val_loss" and t.user_attrs["value_kind"] == "final"
        assert t.value == summary["final_val_loss"] and t.user_attrs["tokens"] == summary["tokens"]


def test_workers_and_resumes_never_draw_the_same_parameters(tmp_path: Path) -> None:
    """Every worker process builds its own sampler: with one seed, two workers (or a resume) drew in lockstep."""
    storage = f"sqlite:///{tmp_path}/s.db"
    path = str(write_experiment(tmp_path, study={"n_trials": 4}))
    run_sweep(load_experiment(path, []), storage, workers=2)
    run_sweep(load_experiment(path, [], n_trials=7), storage, workers=1)  # a resume to a larger total
    study = open_study(load_experiment(path, []), storage, create=False)
    drawn = [tuple(sorted(t.params.items())) for t in study.trials if not t.user_attrs.get("baseline")]
    assert len(drawn) == 6 and len(set(drawn)) == 6, drawn


def test_a_reader_never_writes_a_new_study_description(tmp_path: Path) -> None:
    """Export, status and tests open studies read-only: racing a starting worker's first writes crashed it."""
    storage, exp = f"sqlite:///{tmp_path}/s.db", load_experiment(str(write_experiment(tmp_path)), [])
    optuna.create_study(study_name=exp.study.name, storage=storage)
    assert open_study(exp, storage, create=False).user_attrs == {}
    assert open_study(exp, storage, create=True).user_attrs["space"]


def test_a_worker_keeps_what_it_inherited_on_the_forkservers_pages() -> None:
    """A worker freezes what the forkserver imported (torch, optuna), so its collector never copies those pages."""
    with processes_at_once(1) as pool:
        frozen = pool.apply(gc.get_freeze_count)
    assert frozen > 100_000  # the forkserver's imports; a worker that froze nothing reads 0


def _prepare_in_process(args: tuple[str, str, str]) -> int:
    path, storage, name = args
    from picollm.sweeps.workers import prepare

    prepare(load_experiment(path, [], study_name=name), storage)
    return 0


@pytest.mark.parametrize("storage_kind", ["sqlite", "postgresql"])
def test_machines_starting_together_record_one_question_and_one_baseline(tmp_path: Path, storage_kind: str) -> None:
    storage = f"sqlite:///{tmp_path}/s.db" if storage_kind == "sqlite" else postgres_url()
    name, path = f"p{uuid.uuid4().hex[:8]}", str(write_experiment(tmp_path))
    with processes_at_once(6) as pool:
        assert pool.map(_prepare_in_process, [(path, storage, name)] * 6) == [0] * 6
    study = open_study(load_experiment(path, [], study_name=name), storage, create=False)
    assert [t.state for t in study.trials] == [TrialState.WAITING]  # the baseline, enqueued once
    assert {"space", "base", "settings", "fingerprint"} <= set(study.user_attrs)


@pytest.mark.parametrize("storage_kind", ["sqlite", "journal", "postgresql"])
def test_two_workers_finish_exactly_n_trials(tmp_path: Path, storage_kind: str) -> None:
    storage = {
        "sqlite": lambda: f"sqlite:///{tmp_path}/s.db",
        "journal": lambda: f"journal:{tmp_path}/s.log",
        "postgresql": postgres_url,
    }[storage_kind]()
    name = f"w{uuid.uuid4().hex[:8]}"
    # trials long enough (~1 s) that a worker still starting cannot miss all of them
    exp = load_experiment(
        str(write_experiment(tmp_path, study={"n_trials": 7, "budget_tokens": 40_000})), [], study_name=name
    )
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


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # a bare study.ask, on purpose
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_full_study_starts_no_trial(tmp_path: Path, kind: str) -> None:
    storage = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else postgres_url()
    path = write_experiment(tmp_path, study={"n_trials": 3, "name": f"cap{uuid.uuid4().hex[:8]}"})
    study = open_study(load_experiment(str(path), []), storage, create=True)
    study.enqueue_trial({"optim.lr": 1e-3})
    first, second = study.ask(), study.ask()  # the queued trial, then a new one
    assert study.trials[0].system_attrs["fixed_params"] == {"optim.lr": 1e-3}  # dequeued, not a new trial
    assert (first.number, second.number) == (0, 1)
    third = study.ask()
    with pytest.raises(study_mod.StudyFull, match="3 of 3 trials are finished or running"):
        study.ask()
    study.tell(first, 1.0)
    study.tell(third, state=TrialState.PRUNED)
    with pytest.raises(study_mod.StudyFull):  # finished counts too
        study.ask()
    assert len(study.trials) == 3

    # The hook holds only while Optuna's optimize starts its trials through Study.ask: a full study's optimize
    # must end without creating a trial (an Optuna that bypassed ask would create a fourth here).
    study.tell(second, 2.0)
    with pytest.raises(study_mod.StudyFull):
        study.optimize(lambda trial: 0.0, n_trials=1)
    assert len(study.trials) == 3


def test_a_trial_not_started_by_the_capped_ask_stops_the_sweep_with_one_line(tmp_path: Path) -> None:
    """What an Optuna whose optimize no longer calls Study.ask would do: the objective refuses its trial."""
    import optuna as optuna_mod

    from picollm.errors import PicoError

    path = write_experiment(tmp_path, study={"n_trials": 3})
    study = open_study(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db", create=True)
    trial = optuna_mod.Study.ask(study)  # Optuna's own ask, around the hook
    with pytest.raises(PicoError, match=r"without Study\.ask"):
        study.started_here(trial)


def test_raising_and_nan_trials_do_not_stop_the_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import picollm.trainer as train_mod

    calls = {"n": 0}
    real_train = train_mod.train

    def flaky_train(cfg, **kwargs):  # the second trial raises like a bug in user code would
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError(
                "injected failure talking to postgresql://bob:hunter2@db/s?password=hunter2&sslpassword=hunter2"
            )
        return real_train(cfg, **kwargs)

    monkeypatch.setattr(train_mod, "train", flaky_train)
    search = {"optim.lr": {"type": "categorical", "choices": [1.0e12, 3.0e-3]}}
    path = write_experiment(
        tmp_path,
        search=search,
        study={"n_trials": 4, "sampler": "random"},
        optim={"name": "sgd", "lr": 3.0e-3, "grad_clip": 0.0},
    )
    outcome = run_sweep(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db", workers=1)
    study = open_study(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db", create=False)
    reasons = [t.user_attrs.get("fail_reason", "") for t in study.trials if t.state == TrialState.FAIL]
    assert any("injected failure" in r and "bob:***@" in r and "password=***" in r for r in reasons)
    assert not any("hunter2" in r for r in reasons)
    assert any("NonFiniteLoss" in r for r in reasons)
    assert states(study)["COMPLETE"] == 4 and not outcome.interrupted


@pytest.mark.parametrize(
    ("fault", "message", "failed"),
    [  # a fault every trial would hit stops at once; a bug in trials stops after max(3, n_trials) in a row
        ("missing data", "no data at /nowhere/train.parquet", 1),
        ("bug", "4 trials failed in a row; last: ZeroDivisionError: a bug in user code", 4),
    ],
)
def test_a_sweep_stops_on_a_fault_every_trial_hits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str, message: str, failed: int
) -> None:
    import picollm.trainer as train_mod
    from picollm.errors import PicoError

    def failing(cfg, **kwargs):
        if fault == "missing data":
            raise PicoError("no data at /nowhere/train.parquet")
        raise ZeroDivisionError("a bug in user code")

    monkeypatch.setattr(train_mod, "train", failing)
    path = write_experiment(tmp_path, study={"n_trials": 4})
    with pytest.raises(PicoError, match=message):
        run_sweep(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db", workers=1)
    study = open_study(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db", create=False)
    assert states(study)["FAIL"] == failed and states(study)["COMPLETE"] == states(study)["RUNNING"] == 0
    assert study.trials[0].user_attrs.get("abort", False) is (fault == "missing data")


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
    run_sweep(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db", workers=1)
    study = open_study(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db", create=False)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert pruned
    for t in pruned:  # its value is what the pruner saw last, labelled as such, never a final value
        at = t.user_attrs["pruned_at_tokens"]
        assert t.user_attrs["value_kind"] == "pruned-intermediate" and at == max(t.intermediate_values)
        assert t.value == t.intermediate_values[at]
        earlier = [c.intermediate_values[at] for c in complete if c.number < t.number and at in c.intermediate_values]
        assert t.value > sorted(earlier)[(len(earlier) - 1) // 2]  # the median rule, at the same token count
    assert study.best_trial.state == TrialState.COMPLETE


def test_best_yaml_reproduces_the_best_trial(tmp_path: Path) -> None:
    path = write_experiment(tmp_path, study={"n_trials": 3})
    exp = load_experiment(str(path), [])
    run_sweep(exp, f"sqlite:///{tmp_path}/s.db", workers=1)
    study = open_study(exp, f"sqlite:///{tmp_path}/s.db", create=False)
    folder, _ = export_study(study, tmp_path / "studies")
    assert {"trials.csv", "best.yaml", "optimization_history.png"} <= {p.name for p in folder.iterdir()}
    summary = train(load_config(folder / "best.yaml", ["train.progress=false"]))
    assert summary["final_val_loss"] == study.best_value  # the study metric, reproduced bit for bit
    header = (folder / "trials.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["number", "state", "value"] and {"optim.name", "run_dir"} <= set(header)


def test_an_export_with_figures_false_draws_no_png_and_removes_the_earlier_ones(tmp_path: Path) -> None:
    """study.figures: false leaves no plot that no longer shows what trials.csv lists."""
    storage = f"sqlite:///{tmp_path}/s.db"
    drawn = load_experiment(str(write_experiment(tmp_path, study={"n_trials": 2, "figures": True})), [])
    folder = run_sweep(drawn, storage, workers=1).folder
    assert {"optimization_history.png", "intermediate_values.png"} <= {p.name for p in folder.glob("*.png")}
    plain = load_experiment(str(write_experiment(tmp_path, study={"n_trials": 3})), [])
    assert run_sweep(plain, storage, workers=1).folder == folder
    assert not list(folder.glob("*.png"))
    assert len((folder / "trials.csv").read_text().splitlines()) == 1 + 3


def test_wandb_groups_trials_and_logs_a_study_run(tmp_path: Path) -> None:
    path = write_experiment(tmp_path, study={"n_trials": 2, "name": "grp"}, tracking={"wandb": "offline"})
    run_sweep(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db", workers=1)
    study = open_study(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db", create=False)
    run_dir = study.trials[1].user_attrs["run_dir"]
    info = read_run_info(find_run_file(run_dir))
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    assert summary["wandb_run_id"] and study.trials[1].user_attrs["wandb_run_id"] == summary["wandb_run_id"]
    assert (info["group"], info["job_type"], info["name"]) == ("grp", "trial", "grp-t1")
    assert info["config"]["trial.number"] == 1
    assert {k: info["config"][k] for k in study.trials[1].params} == study.trials[1].params
    study_runs = list((tmp_path / "studies" / "grp").glob("wandb/*run-*/run-*.wandb"))
    assert study_runs and read_run_info(study_runs[-1])["job_type"] == "summary"


BAD = [
    (["--storage", "mongodb://x/y"], "unknown storage"),
    (["--storage", "postgresql://alice:hunter2@127.0.0.1:9/db"], "cannot open storage postgresql://alice:***@"),
    (["--set", "study.sampler=annealing"], "study.sampler: unknown sampler 'annealing'"),
    (["--set", "study.pruner={name: median, bogus: 1}"], "median takes no option 'bogus' (its options: interval"),
    (["--set", "study.sampler={name: random, n_startup_trials: 3}"], "random takes no option 'n_startup_trials' (its"),
    (["--set", "search.optim.name.choices=[]"], "search.optim.name: 'choices' must be a non-empty list"),
    (["--set", "search.optim.lr.low=0.5"], "search.optim.lr: low (0.5) is greater than high"),
    (["--set", "search.optim.lr.low=0"], "a log range needs low > 0"),
    (["--set", "search.optim.name.choices=[sgd, adamx]"], "value 'adamx' is refused by the trainer"),
    (["--set", "search.model.k.type=gaussian"], "unknown type 'gaussian'"),
    (["--set", "search.optim.lr.high=1e-5"], "low (0.0001) is greater than high"),
    (["--set", "study.n_trials=0"], "study.n_trials must be >= 1"),
    (["--set", "study=3"], "study: expected a mapping"),
    (["--set", "optim.beta1=-0.5"], "optim.beta1 must be in [0, 1)"),
    (["--set", "optim.lr=0.01"], "optim.lr is searched by this study"),
    (["--set", "search.optim.name.choices=[sgd, no]"], "quote it ('no')"),
    (["--set", "search.model.embed_size={type: int, low: 8, high: 40, step: 16}"], "is not in the search space"),
    (["--storage", "postgres://alice@127.0.0.1:9/db"], "write postgresql://"),
    (["--storage", "postgresql://alice@127.0.0.1:9/db?sslmode=disable&password=hunter2"], "password=***"),
    (  # the storage is checked before the data: no "offline: ..." line first
        ["--set", "data.tinystories=roneneldan/TinyStories", "--set", "data.offline_fallback=true", "--storage", "x:/"],
        "unknown storage",
    ),
    (["status", "--storage", "sqlite:///{tmp}/missing.db"], "no SQLite file at"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_storage_and_spaces_exit_with_one_line(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_experiment(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    argv = ["--config", str(path), "--storage", f"sqlite:///{tmp_path}/s.db", *args]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(sweep_module.main, argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert "hunter2" not in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "missing.db").exists()


def test_changed_search_space_on_resume_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_experiment(tmp_path, study={"n_trials": 1})
    run_sweep(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db", workers=1)
    with pytest.raises(SystemExit):
        run_cli(
            sweep_module.main,
            ["--config", str(path), "--storage", f"sqlite:///{tmp_path}/s.db", "--set", "search.model.k.high=6"],
        )
    assert "was created with another search space" in capsys.readouterr().err


def test_cli_end_to_end_prints_best_against_baseline(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    proc = sweep_cli(write_experiment(tmp_path, study={"n_trials": 3}), f"sqlite:///{tmp_path}/s.db")
    assert proc.returncode == 0, proc.stderr
    assert "best: trial" in proc.stdout and "baseline (trial 0" in proc.stdout and "results: " in proc.stdout
    status = sweep_here(
        capfd, write_experiment(tmp_path, study={"n_trials": 3}), f"sqlite:///{tmp_path}/s.db", "status"
    )
    assert status.stdout.count("COMPLETE") >= 3


def test_an_explicit_empty_search_is_refused_not_inherited(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_experiment(tmp_path)
    (tmp_path / "child.yaml").write_text("base: exp.yaml\nsearch: {}\n")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            sweep_module.main, ["--config", str(tmp_path / "child.yaml"), "--storage", f"sqlite:///{tmp_path}/s.db"]
        )
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "'search:' is empty" in err and len(err.splitlines()) == 1


def test_quoted_yes_and_no_stay_strings_in_a_trial() -> None:
    from picollm.sweeps.experiment import apply_params

    base = load_config(None, ["data.tinystories=null", "data.synthetic=10"])
    cfg = apply_params(base, {"train.prompt": "no", "tracking.name": "null", "optim.lr": 1e-3})
    assert (cfg.train.prompt, cfg.tracking.name, cfg.optim.lr) == ("no", "null", 1e-3)


def _offline_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine cannot reach the hub: the fallback replaces the data (the config is kept here)."""
    import picollm.data

    monkeypatch.setattr(picollm.data, "apply_offline_fallback", lambda cfg: (cfg, "offline: simulated"))


MIXES = {  # what changed -> the words the refusal says it in
    "offline fallback": ([], _offline_machine, "this run would train offline, on 400 synthetic sequences"),
    "another --set data.*": (["--set", "data.synthetic=500"], None, "this run would train on 500 synthetic sequences"),
    "an edited base YAML": ([], "edit", "model.embed_size is 16 in this study but 24 here"),
}


@pytest.mark.parametrize("mix", list(MIXES))
def test_a_sweep_that_asks_another_question_is_refused(
    tmp_path: Path, mix: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args, change, words = MIXES[mix]
    path, storage = write_experiment(tmp_path, study={"n_trials": 1}), f"sqlite:///{tmp_path}/s.db"
    run_sweep(load_experiment(str(path), []), storage, workers=1)
    if change == "edit":
        write_experiment(tmp_path, study={"n_trials": 1}, model={"embed_size": 24})
    elif change is not None:
        change(monkeypatch)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(sweep_module.main, ["--config", str(path), "--storage", storage, "--n-trials", "3", *args])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the offline note, when there is one
    assert exit_info.value.code == 2 and err.startswith("error: "), err
    assert "answers another question: " in err and words in err, err
    study = open_study(load_experiment(str(path), [*args[1::2]]), storage, create=False)
    assert len(study.trials) == 1  # nothing added


def test_a_running_trial_prints_progress_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trial of tens of seconds must not leave the terminal silent: the worker turns the tracker's line on."""
    from picollm import tracking

    monkeypatch.setattr(tracking, "PROGRESS_EVERY_S", 0.0)
    run_sweep(load_experiment(str(write_experiment(tmp_path)), [], n_trials=1), f"sqlite:///{tmp_path}/s.db", workers=1)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  t-t0: step")]
    assert lines and "tokens" in lines[-1] and "train/loss" in lines[-1]


def _sleep_or_mark(item: tuple[str, float]) -> int:
    """A pool item: sleep (saying so), or leave a mark when interrupted; the worker's rank otherwise."""
    import time

    from picollm.sweeps.processes import pool_rank

    folder, seconds = item
    if seconds:
        Path(folder, f"started-{pool_rank()}").touch()
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        Path(folder, f"interrupted-{pool_rank()}").touch()
        raise
    return pool_rank()


def test_a_pool_stopped_early_interrupts_its_running_items_and_skips_the_rest(tmp_path: Path) -> None:
    """Confirmation and the search comparison run items in a pool: stopping must not wait for every item."""
    import time

    from picollm.sweeps.processes import in_processes

    items = [(str(tmp_path), 0.0), (str(tmp_path), 0.0), *[(str(tmp_path), 600.0)] * 4]
    results = in_processes(_sleep_or_mark, items, parallel=2)
    assert {next(results), next(results)} <= {0, 1}  # each worker knows its rank
    while len(list(tmp_path.glob("started-*"))) < 2:  # both workers inside a long item
        time.sleep(0.1)
    results.close()  # the consumer stops (Ctrl-C, an error): running items get SIGINT, queued ones never start
    marks = sorted(p.name for p in tmp_path.iterdir())
    assert marks == ["interrupted-0", "interrupted-1", "started-0", "started-1"]


def test_best_yaml_names_the_data_the_trials_used_after_an_offline_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, the trials train on the built-in corpus: best.yaml must say so, or with network it trains on other
    data than the study measured."""
    import yaml

    import picollm.corpora

    monkeypatch.setattr(picollm.corpora, "hub_reachable", lambda *a, **k: False)
    data = {"tinystories": "roneneldan/TinyStories", "offline_fallback": True, "synthetic": 0, "max_stories": 40}
    path = write_experiment(tmp_path, study={"n_trials": 2}, data=data, confirm={"top": 1, "seeds": 2})
    run_sweep(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db", workers=1)
    # every run record says it, the confirmation's too
    metas = [json.loads(meta.read_text()) for meta in (tmp_path / "runs").glob("*/meta.json")]
    assert sum("-confirm-" in m["run_id"] for m in metas) >= 2 and len(metas) > 2
    assert all(m.get("offline_fallback", "").startswith("offline: cannot reach") for m in metas)
    best = yaml.safe_load((tmp_path / "studies" / "t" / "best.yaml").read_text())["data"]
    assert best["tinystories"] is None and best["builtin_stories"] == 40 and best["offline_fallback"] is False
    trial_record = yaml.safe_load(next((tmp_path / "runs").glob("*/config.yaml")).read_text())["data"]
    assert {k: best[k] for k in ("tinystories", "builtin_stories", "tokenizer")} == {
        k: trial_record[k] for k in ("tinystories", "builtin_stories", "tokenizer")
    }


def test_trial_lines_come_in_finishing_order_so_each_best_is_already_shown() -> None:
    """With two workers trial 1 can finish before trial 0: listed by number, trial 0's line would show a best that
    appears only on the line below it."""
    from datetime import datetime, timedelta

    from picollm.sweeps.report import best_value, in_finishing_order

    study, start = optuna.create_study(), datetime(2026, 1, 1)
    for value, seconds in [(5.0, 30), (4.0, 10), (6.0, 20)]:  # trials 0, 1, 2
        trial = optuna.trial.create_trial(value=value)
        trial.datetime_start, trial.datetime_complete = start, start + timedelta(seconds=seconds)
        study.add_trial(trial)
    study.enqueue_trial({})  # waiting: after the finished ones
    ordered = in_finishing_order(study.trials)
    assert [t.number for t in ordered] == [1, 2, 0, 3]
    shown: list[float] = []
    for trial in ordered[:3]:
        shown.append(trial.value)
        assert best_value(study, upto=trial) == min(shown)  # a value on this line or above it
