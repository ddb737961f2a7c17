"""A study survives a student's mistakes: a bad path or config costs one line and no study, a refusal to mix says
in words what differs, a study can be deleted to start over, a resume re-runs what Ctrl-C or a fault stopped, and
Ctrl-C to a two-worker sweep prints no traceback from any process."""

from __future__ import annotations

import gc
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import picollm
import picollm.cli.sweep as sweep_module
import picollm.sweeps.workers as workers_module
from picollm.cli import run_cli
from picollm.errors import PicoError
from picollm.sweeps import load_experiment, open_study, run_sweep
from picollm.sweeps.report import report_lines
from picollm.sweeps.study import FingerprintMismatch, counts, fingerprint, refuse_mix
from picollm.sweeps.trial import StudyRecord, record_study
from picollm.sweeps.workers import prepare
from tests.conftest import ROOT, SAMPLE, needs_sample
from tests.sweeps import SWEEP, processes_at_once, retry_origin, sweep_argv, write_experiment


def test_a_command_run_in_this_process_leaves_its_garbage_collector_alone(tmp_path: Path) -> None:
    """A console script skips the last collection as its process ends; a test or notebook calling it goes on."""
    frozen = gc.get_freeze_count()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(sweep_module.main, ["delete", "--study-name", "none", "--storage", f"sqlite:///{tmp_path}/s.db"])
    assert exit_info.value.code == 2 and gc.get_freeze_count() == frozen


def sweep(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``python sweep.py ARGV`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(sweep_module.main, argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def study_names(storage: str) -> list[str]:
    return optuna.get_all_study_names(storage)


def load_study(storage: str, name: str = "t") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


# ------------------------------------------------------------------------------------------------
# 1. Data and config are checked before a study exists.
# ------------------------------------------------------------------------------------------------


def _binary(tmp: Path) -> list[str]:
    (tmp / "stories.txt").write_bytes(b"once upon a time\x00\x01\x02")
    return ["--set", f"data.input_files=[{tmp / 'stories.txt'}]"]


def _blank(tmp: Path) -> list[str]:
    (tmp / "stories.txt").write_text("\n   \n\n")
    return ["--set", f"data.input_files=[{tmp / 'stories.txt'}]"]


def _under_a_file(tmp: Path) -> list[str]:
    (tmp / "a-file").write_text("not a folder")
    return ["--set", f"study.out_dir={tmp / 'a-file' / 'studies'}"]


MISTAKES = {  # what a student gets wrong -> the arguments, and what the one line says
    "misspelled data path": (
        lambda tmp: ["--set", "data.tinystories=../shared/data/tinystorie-sample"],
        "local dataset folder not found: ../shared/data/tinystorie-sample",
    ),
    "missing input file": (lambda tmp: ["--set", f"data.input_files=[{tmp / 'typo.txt'}]"], "file not found"),
    "binary input file": (_binary, "looks binary"),
    "unreadable input file": (  # reading it fails with EIO, even for root, for whom no permission bit does
        lambda tmp: ["--set", "data.input_files=[/proc/self/mem]"],
        "cannot read the data: Input/output error",
    ),
    "empty dataset": (_blank, "is empty"),
    "a device this machine lacks": (lambda tmp: ["--set", "train.device=cuda:7"], "train.device=cuda:7 is not avail"),
    "unwritable study.out_dir": (_under_a_file, "study.out_dir: cannot write to"),
    "a study name that is a path": (  # <study.out_dir>/<name>/ would not be inside study.out_dir
        lambda tmp: ["--study-name", "../elsewhere"],
        "study.name: use letters, digits, '-', '_' and '.', got '../elsewhere'",
    ),
    "a test set the validation sample leaves no room for": (
        lambda tmp: ["--set", "data.val_tokens=1000000", "--set", "data.test_tokens=512"],
        "data.test_tokens: the validation sample takes every validation document",
    ),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_mistake_in_the_data_or_config_is_one_line_and_no_study(
    tmp_path: Path, mistake: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if mistake == "unreadable input file" and not Path("/proc/self/mem").exists():
        pytest.skip("needs Linux's /proc/self/mem, a file that cannot be read")
    arguments, message = MISTAKES[mistake]
    storage = f"sqlite:///{tmp_path}/s.db"
    argv = ["--config", str(write_experiment(tmp_path)), "--storage", storage, "--workers", "2"]
    code, _, err = sweep([*argv, *arguments(tmp_path)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: ") and message in lines[-1], err
    assert "Traceback" not in err and all(not line.startswith("error") for line in lines[:-1]), err
    if "data" in mistake or "input" in mistake:  # nothing was tokenized, so nothing says it is tokenizing
        assert "tokenizing" not in err, err
    assert study_names(storage) == []  # no study, so no failed trials and no fingerprint to refuse the fix
    assert not (tmp_path / "runs").exists()  # no run record either


def test_after_fixing_the_mistake_the_same_command_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stories = tmp_path / "stories.txt"
    storage = f"sqlite:///{tmp_path}/s.db"
    argv = ["--config", str(write_experiment(tmp_path, study={"n_trials": 1})), "--storage", storage]
    argv += ["--set", f"data.input_files=[{stories}]", "--set", "data.synthetic=0"]
    code, _, err = sweep(argv, capsys)
    assert code == 2 and "file not found" in err
    stories.write_text("\n".join(f"{i} {i + 1} {i + 2} {i + 3} {i + 4}" for i in range(300)))
    code, out, err = sweep(argv, capsys)
    assert code == 0, err
    study = open_study(load_experiment(argv[1], argv[5::2]), storage, create=False)
    assert counts(study)["COMPLETE"] == 1 and len(study.trials) == 1 and "best: trial 0" in out


# ------------------------------------------------------------------------------------------------
# 2. A refusal to mix says in words what differs.
# ------------------------------------------------------------------------------------------------


def _fingerprint(tmp: Path, overrides: list[str], offline: bool = False) -> dict:
    exp = load_experiment(str(write_experiment(tmp)), overrides)
    if offline:  # the built-in stories in place of an unreachable hub, as the offline fallback records it
        exp.extra["offline_fallback"] = "offline: simulated"
    return fingerprint(exp)


def _explained(stored: dict, mine: dict) -> str:
    with pytest.raises(FingerprintMismatch) as refused:
        refuse_mix(stored, _with(mine), "sqlite:///s.db")
    message = str(refused.value)
    assert "\n" not in message and "python sweep.py delete --study t" in message and "--study-name" in message
    assert not re.search(r"[0-9a-f]{20}", message), message  # no cache hash
    return message


def _with(fp: dict) -> object:
    from types import SimpleNamespace

    return SimpleNamespace(fingerprint=fp, study=SimpleNamespace(name="t"))


BUILTIN = ["data.synthetic=0", "data.builtin_stories=2000"]


@needs_sample
def test_a_refusal_names_the_data_source_in_words(tmp_path: Path) -> None:
    offline = _fingerprint(tmp_path, BUILTIN, offline=True)
    sample = _fingerprint(tmp_path, ["data.synthetic=0", f"data.tinystories={SAMPLE}", "data.tokenizer=gpt2"])
    message = _explained(offline, sample)
    assert (
        "this study was made offline, on the built-in stories (2,000) with the bytes tokenizer; "
        f"this run would train on {SAMPLE} with the gpt2 tokenizer"
    ) in message


def test_a_refusal_names_the_tokenizer_the_budget_and_an_unsearched_key(tmp_path: Path) -> None:
    base = _fingerprint(tmp_path, [])
    tokenizer = _explained(base, _fingerprint(tmp_path, ["data.tokenizer=gpt2"]))
    assert (
        "this study was made on 400 synthetic sequences with the bytes tokenizer; "
        "this run would train on 400 synthetic sequences with the gpt2 tokenizer"
    ) in tokenizer
    budget = _explained(base, _fingerprint(tmp_path, ["study.budget_tokens=8192"]))
    assert "each trial trains on 4,096 tokens in this study but on 8,192 tokens here (study.budget_tokens)" in budget
    assert "max_tokens" not in budget and "eval_every_tokens" not in budget  # said once, as the budget
    unsearched = _explained(base, _fingerprint(tmp_path, ["model.embed_size=24"]))
    assert "model.embed_size is 16 in this study but 24 here (not searched" in unsearched


def test_a_refusal_says_when_only_the_files_under_the_same_settings_changed(tmp_path: Path) -> None:
    stories = tmp_path / "stories.txt"
    stories.write_text("one two three\nfour five six\n")
    settings = ["data.synthetic=0", f"data.input_files=[{stories}]"]
    before = _fingerprint(tmp_path, settings)
    stories.write_text("one two three\nfour five six seven\n")
    message = _explained(before, _fingerprint(tmp_path, settings))
    assert "the data files changed since this study was made on " in message and "other contents" in message


# ------------------------------------------------------------------------------------------------
# 3. `sweep.py delete`.
# ------------------------------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def one_trial_study(tmp_path: Path) -> tuple[Path, str]:
    path, storage = write_experiment(tmp_path, study={"n_trials": 1}), f"sqlite:///{tmp_path}/s.db"
    run_sweep(load_experiment(str(path), []), storage, workers=1)
    return path, storage


def test_status_and_export_print_what_the_api_returns_and_delete_sweep_asks_first(
    one_trial_study: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, storage = one_trial_study
    capsys.readouterr()
    loaded = picollm.load_sweep(path, storage)
    assert loaded.status()[0].startswith("trial   0 COMPLETE")
    for command, lines in (("status", loaded.status()), ("export", loaded.export())):
        code, out, err = sweep([command, "--config", str(path), "--storage", storage], capsys)
        assert code == 0 and out.splitlines() == lines, err
    assert lines[-1] == f"exported to {loaded.folder}/"
    # --n-trials reaches status as it reached the run: a file that leaves the total open needs it
    open_total = ["--set", "study.n_trials=null", "--n-trials", "1"]
    code, out, err = sweep(["status", "--config", str(path), "--storage", storage, *open_total], capsys)
    assert code == 0 and out.splitlines() == loaded.status(), err
    code, _, err = sweep(["status", "--storage", storage], capsys)
    assert code == 2 and err.strip() == "error: sweep.py status needs --config experiments/<name>.yaml"
    # reading a study needs no torch (it was half of status's time): a fresh interpreter, as the command line is
    reader = f"""
import sys
from picollm.cli.sweep import main
main(["status", "--config", {str(path)!r}, "--storage", {storage!r}])
print("torch loaded:", "torch" in sys.modules)
"""
    fresh = subprocess.run([sys.executable, "-c", reader], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0 and fresh.stdout.splitlines()[-1] == "torch loaded: False", fresh.stderr
    asked: list[str] = []
    assert picollm.delete_sweep("t", storage, ask=lambda what: asked.append(what) or False) == []
    assert asked == [f"study 't' (1 trial: 1 complete) from {storage}"] and study_names(storage) == ["t"]
    lines = picollm.delete_sweep("t", storage, ask=lambda what: asked.append(what) or True)
    assert lines[0] == f"deleted {asked[-1]}" and lines[1].startswith("kept: ") and study_names(storage) == []


def test_delete_asks_on_a_terminal_and_refuses_without_one(
    one_trial_study: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, storage = one_trial_study
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # no terminal, no --yes
    code, _, err = sweep(["delete", "--study", "t", "--storage", storage], capsys)
    assert code == 2 and err.startswith("error: ") and "add --yes" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(sys, "stdin", _Terminal())
    asked: list[str] = []
    monkeypatch.setattr("builtins.input", lambda question: asked.append(question) or "n")
    code, out, _ = sweep(["delete", "--study", "t", "--storage", storage], capsys)
    assert code == 1 and "nothing was deleted" in out and study_names(storage) == ["t"]
    assert asked == [f"delete study 't' (1 trial: 1 complete) from {storage}? [y/N] "]
    monkeypatch.setattr("builtins.input", lambda question: "y")
    code, out, _ = sweep(["delete", "--study", "t", "--storage", storage], capsys)
    assert code == 0 and study_names(storage) == []


def test_delete_with_yes_starts_the_study_over_and_says_what_it_kept(
    tmp_path: Path, one_trial_study: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, storage = one_trial_study
    code, out, err = sweep(["delete", "--study", "t", "--storage", storage, "--yes"], capsys)
    assert code == 0, err
    assert f"deleted study 't' (1 trial: 1 complete) from {storage}" in out
    assert f"kept: the run records in {tmp_path / 'runs'}/" in out
    assert f"{tmp_path / 'studies' / 't'}/ (a new study named 't' will not write over it: move it away" in out
    folder = tmp_path / "studies" / "t"
    assert study_names(storage) == [] and (folder / "trials.csv").is_file()
    # the kept results are not written over by the next study of that name: one line, nothing created
    kept = (folder / "trials.csv").read_bytes()
    code, _, err = sweep(["--config", str(path), "--storage", storage, "--set", "model.embed_size=24"], capsys)
    assert code == 2 and f"{folder}/ holds the results of an earlier study named 't' in {storage}, deleted" in err
    assert (
        len(err.strip().splitlines()) == 1
        and study_names(storage) == []
        and (folder / "trials.csv").read_bytes() == kept
    )
    # moved away, the same name takes another question: a fresh study, no refusal
    folder.rename(tmp_path / "studies" / "t-before")
    code, _, err = sweep(["--config", str(path), "--storage", storage, "--set", "model.embed_size=24"], capsys)
    assert code == 0, err
    study = open_study(load_experiment(str(path), ["model.embed_size=24"]), storage, create=False)
    assert study.user_attrs["fingerprint"]["config.model.embed_size"] == 24


def test_delete_files_removes_the_results_folder_and_an_unknown_study_is_one_line(
    tmp_path: Path, one_trial_study: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, storage = one_trial_study
    code, _, err = sweep(["delete", "--study", "typo", "--storage", storage, "--yes"], capsys)
    assert code == 2 and "no study named 'typo'" in err and "(it holds: t)" in err and study_names(storage) == ["t"]
    code, out, _ = sweep(["delete", "--study", "t", "--storage", storage, "--yes", "--files"], capsys)
    assert code == 0 and f"and {tmp_path / 'studies' / 't'}/" in out
    assert not (tmp_path / "studies" / "t").exists() and (tmp_path / "runs").is_dir()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_a_study_of_the_same_name_in_another_storage_leaves_the_results_folder_alone(
    tmp_path: Path, one_trial_study: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, storage = one_trial_study
    folder, other = tmp_path / "studies" / "t", f"sqlite:///{tmp_path}/other.db"
    written = _files(folder)
    code, _, err = sweep(["--config", str(path), "--storage", other], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{folder}/ holds the results of another study named 't' (in {storage})" in err and "--study-name" in err
    assert study_names(other) == [] and _files(folder) == written
    code, _, err = sweep(["--config", str(path), "--storage", other, "--study-name", "t2"], capsys)
    assert code == 0, err
    code, _, err = sweep(["--config", str(path), "--storage", storage, "--n-trials", "2"], capsys)  # its own: resumed
    assert code == 0 and (folder / "trials.csv").read_bytes() != written["trials.csv"], err
    owner = json.loads((folder / "study.json").read_text())
    assert owner == {"study": "t", "uid": StudyRecord.of(load_study(storage)).uid, "storage": storage} and owner["uid"]
    (folder / "study.json").write_text('{"uid": "another", "storage": "elsewhere"}')  # a folder it does not own
    code, out, _ = sweep(["delete", "--study", "t", "--storage", storage, "--yes", "--files"], capsys)
    assert code == 0 and "kept: " in out and f"{folder}/ (another study's results)" in out
    assert folder.is_dir() and study_names(storage) == []  # --files removes only the study's own folder


def test_a_confirmation_into_another_studys_folder_is_refused_before_it_trains(
    tmp_path: Path, one_trial_study: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = one_trial_study
    other, elsewhere = f"sqlite:///{tmp_path}/other.db", str(tmp_path / "elsewhere")
    code, _, err = sweep(["--config", str(path), "--storage", other, "--set", f"study.out_dir={elsewhere}"], capsys)
    assert code == 0, err
    runs = sorted((tmp_path / "runs").iterdir())
    code, _, err = sweep(["confirm", "--config", str(path), "--storage", other, "--top", "1", "--seeds", "2"], capsys)
    assert code == 2 and f"{tmp_path / 'studies' / 't'}/ holds the results of another study named 't'" in err, err
    assert sorted((tmp_path / "runs").iterdir()) == runs  # nothing trained


def test_a_study_holds_its_results_folder_from_its_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study of the same name started elsewhere while the first still trains is refused before it trains, however
    the two start: the first names itself in the folder as it starts, and of two stamps the first stands."""
    path = write_experiment(tmp_path, study={"n_trials": 1})
    storage, other = f"sqlite:///{tmp_path}/s.db", f"sqlite:///{tmp_path}/other.db"
    _, first = prepare(load_experiment(str(path), []), storage)  # started: nothing trained or exported yet
    folder = tmp_path / "studies" / "t"
    assert json.loads((folder / "study.json").read_text())["uid"] == StudyRecord.of(first).uid
    assert not (folder / "trials.csv").exists()
    code, _, err = sweep(["--config", str(path), "--storage", other], capsys)
    assert code == 2 and f"{folder}/ holds the results of another study named 't' (in {storage})" in err, err
    assert study_names(other) == [] and not any((tmp_path / "runs").glob("*"))
    monkeypatch.setattr(workers_module, "check_results_folder", lambda *args: False)  # checked before A stamped
    with pytest.raises(PicoError, match="holds the results of another study named 't'"):
        prepare(load_experiment(str(path), []), other)  # its stamp comes second: refused, and its new study gone
    assert study_names(other) == []
    code, _, err = sweep(["--config", str(path), "--storage", storage], capsys)
    assert code == 0 and (folder / "trials.csv").is_file(), err


def test_an_export_from_before_study_uids_is_adopted_by_its_study_and_kept_from_any_other(
    tmp_path: Path, one_trial_study: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder no study.json names is its study's where its trials.csv lists that study's runs, however the study's
    URL is spelled and even once the study has a uid; another study of the name is refused."""
    path, storage = one_trial_study
    folder, other = tmp_path / "studies" / "t", f"sqlite:///{tmp_path}/other.db"
    record_study(load_study(storage), uid=None)  # a study from before uids, and its export
    (folder / "study.json").unlink()
    code, _, err = sweep(["export", "--config", str(path), "--storage", storage], capsys)
    assert code == 0 and not (folder / "study.json").exists(), err  # read, not swept: it has no uid to name
    shutil.copytree(folder, tmp_path / "copy" / "t")  # the same export on another machine
    written = _files(folder)
    code, _, err = sweep(["--config", str(path), "--storage", other], capsys)  # a new study of the name
    assert code == 2 and f"{folder}/ holds the results of an earlier study named 't'; nothing was written" in err
    assert _files(folder) == written and study_names(other) == []
    elsewhere = ["--set", f"study.out_dir={tmp_path / 'elsewhere'}"]  # a study with a uid, pointed at the folder
    assert sweep(["--config", str(path), "--storage", other, *elsewhere], capsys)[0] == 0
    code, _, err = sweep(["--config", str(path), "--storage", other, "--n-trials", "2"], capsys)
    assert code == 2 and f"{folder}/ holds the results of an earlier study named 't'" in err
    assert _files(folder) == written
    (folder / "study.json").write_text(json.dumps({"study": "t", "uid": None, "storage": storage}))  # names no uid
    code, _, err = sweep(["--config", str(path), "--storage", other, "--n-trials", "2"], capsys)
    assert code == 2 and f"{folder}/ holds the results of another study named 't' (in {storage})" in err
    (folder / "study.json").unlink()
    spelled_otherwise = f"sqlite:///{tmp_path}/./s.db"  # its own study resumes, however its URL is spelled
    code, _, err = sweep(["--config", str(path), "--storage", spelled_otherwise, "--n-trials", "2"], capsys)
    uid = StudyRecord.of(load_study(storage)).uid
    assert code == 0 and json.loads((folder / "study.json").read_text())["uid"] == uid, err
    copy = ["--set", f"study.out_dir={tmp_path / 'copy'}"]  # with its uid now, it still knows its export elsewhere
    code, _, err = sweep(["export", "--config", str(path), "--storage", storage, *copy], capsys)
    assert code == 0 and json.loads((tmp_path / "copy" / "t" / "study.json").read_text())["uid"] == uid, err


def test_refusals_that_name_a_study_point_at_delete_and_study_name(
    one_trial_study: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, storage = one_trial_study
    for change in (["--set", "search.model.k.high=6"], ["--set", "model.embed_size=24"]):
        code, _, err = sweep(["--config", str(path), "--storage", storage, *change], capsys)
        assert code == 2 and "--study-name NEW" in err and "'python sweep.py delete --study t --files'" in err, err


# ------------------------------------------------------------------------------------------------
# 4. A resume re-runs a failed baseline and the trials Ctrl-C stopped, with their parameters.
# ------------------------------------------------------------------------------------------------


def _stopped_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A study whose baseline failed (a transient fault) and whose third trial was stopped by Ctrl-C."""
    import picollm.trainer as train_mod

    real, calls = train_mod.train, []

    def flaky(cfg, **kwargs):
        calls.append(cfg.tracking.name)
        if len(calls) == 1:
            raise RuntimeError("a transient fault")
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(cfg, **kwargs)

    path, storage = write_experiment(tmp_path, study={"n_trials": 3}), f"sqlite:///{tmp_path}/s.db"
    with monkeypatch.context() as patch:
        patch.setattr(train_mod, "train", flaky)
        assert run_sweep(load_experiment(str(path), []), storage, workers=1).interrupted
    study = open_study(load_experiment(str(path), []), storage, create=False)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.FAIL]
    assert study.trials[2].user_attrs["fail_reason"] == "interrupted"
    assert "baseline (trial 0) did not complete: FAIL" in report_lines(study)
    return path, storage


def test_a_resume_reruns_the_failed_baseline_and_the_interrupted_trial_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path, storage = _stopped_study(tmp_path, monkeypatch)
    capsys.readouterr()
    code, out, err = sweep(["--config", str(path), "--storage", storage, "--workers", "1"], capsys)
    assert code == 0, err
    assert "trials 0, 2 run again with their parameters" in out
    study = open_study(load_experiment(str(path), []), storage, create=False)
    trials = study.trials
    assert len(trials) == 5 and counts(study)["COMPLETE"] == 3 and counts(study)["WAITING"] == 0  # the exact total
    assert (trials[3].params, trials[4].params) == (trials[0].params, trials[2].params)
    assert trials[3].user_attrs["baseline"] and trials[3].state == TrialState.COMPLETE
    assert f"baseline (trial 3, the base config): {trials[3].value:.4f}" in out
    code, out, _ = sweep(["--config", str(path), "--storage", storage, "--workers", "1", "--n-trials", "4"], capsys)
    assert code == 0 and "run again" not in out  # each was re-queued once: the new trial is a fresh draw
    assert len(open_study(load_experiment(str(path), []), storage, create=False).trials) == 6


def _prepare(args: tuple[str, str]) -> int:
    prepare(load_experiment(args[0], []), args[1])
    return 0


def test_workers_starting_together_requeue_each_stopped_trial_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, storage = _stopped_study(tmp_path, monkeypatch)
    with processes_at_once(4) as pool:
        assert pool.map(_prepare, [(str(path), storage)] * 4) == [0] * 4
    study = open_study(load_experiment(str(path), []), storage, create=False)
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert sorted(retry_origin(t) for t in waiting) == [0, 2]


# ------------------------------------------------------------------------------------------------
# 5. Ctrl-C to a two-worker sweep: no traceback from any process, no process left.
# ------------------------------------------------------------------------------------------------


def _group(pgid: int) -> dict[int, str]:
    """The live (not zombie) processes of process group ``pgid``: pid -> command line."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found[int(stat.parent.name)] = command
    return found


def _wait_for(moment: str, proc: subprocess.Popen, exp: object, storage: str) -> None:
    """Until the sweep is at ``moment``: its forkserver importing torch, or both workers training."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05 if moment == "starting" else 0.5)
        if moment == "starting" and any("forkserver" in c for c in _group(proc.pid).values()):
            return
        if moment == "training":
            try:
                running = open_study(exp, storage, create=False).get_trials(states=(TrialState.RUNNING,))
            except Exception:
                continue
            if len(running) == 2 and all("run_dir" in t.user_attrs for t in running):
                time.sleep(1.0)  # inside torch's steps
                return
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"the sweep never got to {moment!r}: {proc.communicate()}")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc")
def test_ctrl_c_to_a_two_worker_sweep_prints_no_traceback_and_leaves_no_process(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches every process of the group: the sweep, its forkserver and its workers. Once while
    the forkserver imports, twice while both workers train (the traceback there came in most runs, not all)."""
    for i, moment in enumerate(["starting", "training", "training"]):
        folder = tmp_path / str(i)
        folder.mkdir()
        path, storage = write_experiment(folder, study={"budget_tokens": 3_000_000}), f"sqlite:///{folder}/s.db"
        proc = subprocess.Popen(
            [sys.executable, SWEEP, *sweep_argv(path, storage, "--workers", "2")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
        _wait_for(moment, proc, load_experiment(str(path), []), storage)
        os.killpg(proc.pid, signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=120)
        finally:
            deadline = time.time() + 10  # the forkserver and resource tracker end when they see the sweep gone
            while (left := _group(proc.pid)) and time.time() < deadline:
                time.sleep(0.1)
            for pid in left:
                os.kill(pid, signal.SIGKILL)
        assert proc.returncode == 130, err
        assert "Traceback" not in err and "OSError" not in err, f"Ctrl-C while {moment}:\n{err}"
        assert not left, f"Ctrl-C while {moment} left {left}"
        study = open_study(load_experiment(str(path), []), storage, create=False)
        assert counts(study)["RUNNING"] == 0
