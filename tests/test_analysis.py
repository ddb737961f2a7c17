"""analyze.py: the noise statistics recover known truths; the adapters, rankings and diagnostics work."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from signal import SIGABRT, SIGINT

import numpy as np
import pytest
import torch
from scipy import signal

import picollm.cli.analyze as analyze
from picollm.analysis import noise, records
from picollm.analysis.compare import compare_runs
from picollm.analysis.diagnose import inspect_run
from picollm.analysis.records import RunHistory
from picollm.analysis.render import write_report
from picollm.analysis.sections import MAX_RUN_FIGURES, build_report, noise_section
from picollm.cli import run_cli
from picollm.config import load_config
from picollm.errors import DataError
from picollm.trainer import train
from tests.conftest import ROOT, TIKTOKEN_CACHE


def synthetic_losses(n: int, sigma: float, rho: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A decaying trend plus AR(1) noise of marginal std sigma: y_t = 3 + 2 exp(-t/400) + e_t."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(n + 500)
    e = signal.lfilter([sigma * math.sqrt(1 - rho**2)], [1.0, -rho], z)[500:]
    trend = 3 + 2 * np.exp(-np.arange(n) / 400)
    return trend + e, trend


def synthetic_run(n: int, steps_per_epoch: int, sigma: float, rho: float, name: str = "syn") -> RunHistory:
    y, _ = synthetic_losses(n, sigma, rho)
    epochs = np.arange(n) // steps_per_epoch + 1
    rows = [{"step": i + 1, "epoch": int(epochs[i]), "train/loss": float(v)} for i, v in enumerate(y)]
    rows += [
        {"step": int(s), "epoch": int(e), "val/epoch_loss": 3 + 2 * math.exp(-s / 400)}
        for e, s in ((e, np.flatnonzero(epochs == e).max() + 1) for e in np.unique(epochs))
    ]
    return records.from_rows(name, rows)


@pytest.mark.parametrize(("sigma", "rho"), [(0.2, 0.0), (0.05, 0.0), (0.2, 0.3), (0.1, 0.6)])
def test_noise_fit_recovers_sigma_and_autocorrelation(sigma: float, rho: float) -> None:
    for seed in range(3):
        y, _ = synthetic_losses(4000, sigma, rho, seed)
        fit = noise.fit_noise(y)
        assert fit.sigma == pytest.approx(sigma, rel=0.10)
        assert fit.rho == pytest.approx(rho, abs=0.08)


def test_noise_fit_ignores_a_spike() -> None:
    y, _ = synthetic_losses(3000, 0.1, 0.0)
    y[1500] += 9.0  # one batch at loss ~12, as seen with Adam's beta2=0.999 and tied embeddings
    assert noise.fit_noise(y).sigma == pytest.approx(0.1, rel=0.10)


def test_epoch_means_are_exact_and_intervals_widen_with_autocorrelation() -> None:
    y, _ = synthetic_losses(600, 0.2, 0.0)
    epochs = np.arange(600) // 50 + 1
    table = noise.epoch_table(y, epochs, 0.2, 0.0)
    assert [row["mean"] for row in table] == [float(y[epochs == e].mean()) for e in range(1, 13)]
    assert table[0]["stderr"] == pytest.approx(0.2 / math.sqrt(50))
    correlated = noise.epoch_table(y, epochs, 0.2, 0.5)
    assert correlated[0]["stderr"] > 1.6 * table[0]["stderr"]  # sqrt((1+rho)/(1-rho)) = 1.73 for long blocks


@pytest.mark.parametrize("rho", [0.0, 0.4])
@pytest.mark.parametrize("n", [1, 4, 16, 64, 256])
def test_false_increase_probability_agrees_with_simulation(n: int, rho: float) -> None:
    slope, sigma = 2e-4, 0.15
    exact = noise.false_increase_prob(n, slope, sigma, rho)
    simulated = noise.simulate_false_increase(n, slope, sigma, rho, trials=20000, seed=n)
    assert simulated == pytest.approx(exact, abs=4 * math.sqrt(0.25 / 20000) + 0.005)


def test_minimum_steps_per_epoch_is_the_threshold() -> None:
    n = noise.min_steps_per_epoch(1e-3, 0.2, 0.3)
    assert noise.false_increase_prob(n, 1e-3, 0.2, 0.3) <= 0.05 < noise.false_increase_prob(n - 1, 1e-3, 0.2, 0.3)


def test_short_epochs_rise_by_chance_long_epochs_do_not() -> None:
    short = noise.analyze_noise(synthetic_run(3000, 3, 0.2, 0.0, "short"), simulate=False)
    long = noise.analyze_noise(synthetic_run(3000, 500, 0.2, 0.0, "long"), simulate=False)
    assert short["p_false_increase"] > 0.4 and long["p_false_increase"] < 0.01
    assert short["share_epoch_increases"] > 0.3 > long["share_epoch_increases"]  # late epochs flatten out
    assert short["epoch_increases_within_noise"] >= 0.9 * short["epoch_increases"]  # a 95% test flags ~5%
    assert short["validation"]["share_val_epoch_increases"] == 0
    assert "The hypothesis holds" in noise.overall_verdict([short, long])


def test_truncated_last_line_is_tolerated(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "epoch": 1, "train/loss": 2.0}\n{"step": 2, "ep')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = records.load_run_dir(tmp_path)
    assert list(run.losses) == [2.0]
    assert any("last line is truncated" in str(w.message) for w in caught)


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    tmp = tmp_path_factory.mktemp("runs")
    base = [
        f"tracking.out_dir={tmp}/runs",
        f"data.cache_dir={tmp}/cache",
        "train.progress=false",
        "data.tinystories=null",
        "data.synthetic=600",
        "data.tokenizer=bytes",
        "model.type=kgram",
        "model.block_size=16",
        "train.batch_size=16",
        "train.eval_every=10",
        "tracking.wandb=offline",
    ]
    dirs = []
    for lr, epochs in ((3e-3, 4), (1e-3, 4), (3e-4, 4)):
        summary = train(
            load_config(None, [*base, f"optim.lr={lr}", f"train.epochs={epochs}", "train.max_steps_per_epoch=15"])
        )
        dirs.append(summary["run_dir"])
    return dirs


def test_offline_wandb_file_and_api_adapter_give_the_local_history(trained_runs: list[str]) -> None:
    from picollm.wandb_offline import find_run_file, read_history

    local = records.load_run_dir(trained_runs[0])
    wandb_file = find_run_file(trained_runs[0])
    offline = records.load_wandb_file(wandb_file)
    np.testing.assert_array_equal(offline.losses, local.losses)
    assert offline.val_epoch_loss() == local.val_epoch_loss()

    class FakeRun:  # the public API's Run, answering from the recorded history
        name, id, config, summary = "recorded", "abc", {"model": {"type": "kgram"}}, {}

        def scan_history(self):
            return iter(read_history(wandb_file))

    class FakeApi:
        def runs(self, path, filters=None):
            assert path == "me/picollm" and filters == {"group": "g"}
            return [FakeRun()]

    (api_run,) = records.load_wandb_project("me/picollm", "g", api=FakeApi())
    np.testing.assert_array_equal(api_run.losses, local.losses)


def _ranked_run(name: str, last_steps: list[float], val: float) -> RunHistory:
    """A run whose training losses end in ``last_steps`` (one epoch each half) and whose validation loss is ``val``."""
    losses = [5.0] * (20 - len(last_steps)) + last_steps
    rows = [{"step": i + 1, "epoch": 1 + i // 10, "train/loss": v} for i, v in enumerate(losses)]
    rows.append({"step": 20, "epoch": 2, "val/epoch_loss": val})
    return records.from_rows(name, rows)


def test_compare_prices_a_pick_by_a_noisy_metric() -> None:
    # the last step loss favours b by luck; the mean of the last 3 steps agrees with the validation ranking
    runs = [
        _ranked_run("a", [2.0, 2.1, 1.9], 2.0),
        _ranked_run("b", [3.0, 3.2, 1.0], 3.0),
        _ranked_run("c", [4.0, 4.1, 3.9], 4.0),
    ]
    result = compare_runs(runs, last_n=3)
    assert result["best_by_val"] == "a"
    noisy, steady = result["metrics"]["last_step_loss"], result["metrics"]["last_n_mean"]
    assert (noisy["picks"], noisy["cost"], noisy["kendall_tau"]) == ("b", pytest.approx(1.0), pytest.approx(1 / 3))
    assert (steady["picks"], steady["cost"], steady["kendall_tau"]) == ("a", 0.0, pytest.approx(1.0))


def test_inspect_warns_when_the_model_only_predicts_one_token(trained_runs: list[str]) -> None:
    run_dir = Path(trained_runs[0])
    normal = inspect_run(run_dir, batch=1, position=5, top=5)
    assert len(normal["top"]) == 5 and abs(sum(t["prob"] for t in normal["top"])) <= 1.0 + 1e-6
    assert normal["context"] and normal["token_frequencies"][0]["share"] > 0
    payload = torch.load(run_dir / "best.pt", weights_only=True)
    payload["state_dict"]["head.bias"][256] = 1e4  # always predict end-of-text
    torch.save(payload, run_dir / "best.pt")
    stuck = inspect_run(run_dir)
    assert "top guess is" in stuck["warning"] and stuck["most_common_guess_share"] == 1.0


def test_cli_noise_and_report_write_json_figures_and_a_verdict(
    trained_runs: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(analyze.main, ["noise", *trained_runs[:2], "--out", str(tmp_path / "noise")])
    assert exit_info.value.code == 0
    data = json.loads((tmp_path / "noise" / "noise.json").read_text())
    first = data["runs"][0]
    assert {"step_noise_sigma", "epochs", "p_false_increase", "min_steps_per_epoch_95"} <= set(first)
    assert {"epoch", "mean", "stderr", "ci_low", "ci_high", "n_steps"} <= set(first["epochs"][0])
    assert len(list((tmp_path / "noise").glob("*.png"))) == 3
    assert "verdict:" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        run_cli(analyze.main, ["report", *trained_runs, "--name", "r"])
    report = (tmp_path / "results" / "reports" / "r" / "report.md").read_text()
    assert "](false_increase.png)" in report and "## Which number ranks configurations?" in report
    assert "{figure}" not in report  # plain Markdown images, which every viewer shows
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (tmp_path / "results" / "reports" / "r" / link).is_file(), link


def test_cli_bad_sources_exit_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(analyze.main, ["noise", str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and "no such run record" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run_cli(analyze.main, ["compare"])
    assert exit_info.value.code == 2 and "give exactly one source" in capsys.readouterr().err


def test_report_covers_every_run_and_draws_those_the_verdict_names(tmp_path: Path) -> None:
    runs = [synthetic_run(2000, 100, 0.2, 0.0, f"mid{i}") for i in range(6)]
    runs.insert(0, synthetic_run(2000, 500, 0.2, 0.0, "long"))
    runs.append(synthetic_run(2000, 3, 0.2, 0.0, "short"))  # last: beyond the figures' cap
    report = build_report("v", runs, tmp_path)
    (md,) = write_report(report)
    text = md.read_text()
    verdict = report.sections[0].text[0]
    assert "short" in verdict and "long" in verdict and "Covers all 8 runs." in report.sections[0].text
    for name in ("short", "long"):
        assert f"](noise_{name}.png)" in text and (tmp_path / f"noise_{name}.png").is_file()
    for run in runs:  # each run its own verdict, drawn or not
        assert f"### {run.name}\n\n{run.name}: step losses scatter" in text
    assert len(list(tmp_path.glob("noise_*.png"))) == MAX_RUN_FIGURES
    assert [row[0] for row in report.sections[0].subsections[-2].tables[0].rows] == [r.name for r in runs]


def test_one_epoch_runs_get_running_averages_and_the_command_that_tests_epochs(tmp_path: Path) -> None:
    runs = [synthetic_run(300, 300, 0.2, 0.0, f"t{i}") for i in range(8)]  # a sweep's one-epoch trials
    report = build_report("one", runs, tmp_path)
    (section,) = [s for s in report.sections if s.title == "Is an epoch-to-epoch increase real?"]
    assert "single epoch" in section.text[0] and "Covers all 8 runs." in section.text
    assert not section.tables  # no epoch-to-epoch numbers that cannot exist
    averages, command = section.subsections
    assert [row[0] for row in averages.tables[0].rows] == [f"t{i}" for i in range(8)]
    assert (tmp_path / "running_average.png").stat().st_size > 10_000
    one_step = averages.tables[0].rows[0][5]
    assert one_step == pytest.approx(noise.Z95 * 0.2, rel=0.25)  # the synthetic noise, sigma 0.2
    assert "train.max_steps_per_epoch=4" in command.code and "python analyze.py noise" in command.code
    assert len(report.data["running_average"]) == 8


def test_runs_without_a_record_or_with_too_few_steps_are_named(tmp_path: Path) -> None:
    runs = [synthetic_run(300, 300, 0.2, 0.0, "t0"), synthetic_run(5, 5, 0.2, 0.0, "t1")]
    section, _ = noise_section(runs, tmp_path, None, "best.yaml", ["t2 (no run record at results/runs/x)"])
    assert section.text[-1] == (
        "Covers 1 of 3 runs; not here: t2 (no run record at results/runs/x); "
        "t1 (5 training steps: too few to separate noise from trend)."
    )


def test_unrecorded_trials_of_a_study_are_listed_with_where_they_were_looked_for(tmp_path: Path) -> None:
    import optuna

    study = optuna.create_study()
    recorded = tmp_path / "run0"
    recorded.mkdir()
    (recorded / "metrics.jsonl").write_text('{"step": 1, "epoch": 1, "train/loss": 2.0}\n')
    for i, run_dir in enumerate((recorded, tmp_path / "gone")):
        study.add_trial(optuna.trial.create_trial(value=float(i), user_attrs={"run_dir": str(run_dir)}))
    assert records.unrecorded_trials(study) == [f"t1 (no run record at {tmp_path / 'gone'})"]
    assert [r.name for r in records.load_study_runs(study)] == ["t0"]


def test_noise_from_wandb_without_an_api_key_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(analyze.main, ["noise", "--wandb", "me/picollm", "--out", str(tmp_path / "n")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "API key" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path: Path, umask: int, mode: int) -> None:
    from picollm.fileio import atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "trials.csv", "a,b\n")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "trials.csv").stat().st_mode & 0o777 == mode == (tmp_path / "plain.txt").stat().st_mode & 0o777


def test_analysis_json_is_replaced_whole_or_not_at_all(
    trained_runs: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from picollm import fileio

    out = tmp_path / "cmp"
    out.mkdir()
    (out / "compare.json").write_text('{"old": true}')

    def crash(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        analyze.main(["compare", *trained_runs, "--out", str(out)])
    assert json.loads((out / "compare.json").read_text()) == {"old": True}
    assert not list(out.glob(".compare.json-*"))  # no half-written temporary file left behind


def test_inspect_past_the_block_shows_the_last_position_with_a_note(trained_runs: list[str]) -> None:
    from picollm.analysis.diagnose import inspect_lines

    result = inspect_run(trained_runs[1], position=20)  # the README's example on a block-16 run
    assert result["position"] == 15 and "block size 16" in result["note"]
    assert inspect_lines(result)[0].startswith("note: position 20 is past")
    with pytest.raises(DataError, match="--position"):
        inspect_run(trained_runs[1], position=-1)


def test_dashboard_refuses_a_missing_database_or_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.db"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(analyze.main, ["dashboard", "--storage", f"sqlite:///{missing}"])
    assert exit_info.value.code == 2 and "no SQLite file at" in capsys.readouterr().err
    assert not missing.exists()  # the read-only opener never creates an empty database
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    import optuna

    optuna.create_study(study_name="real", storage=storage)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(analyze.main, ["dashboard", "--storage", storage, "--study", "other"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "no study named 'other'" in err and "real" in err


def test_dashboard_serves_until_ctrl_c_and_exits_cleanly(tmp_path: Path) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
    cmd = [
        sys.executable,
        str(ROOT / "analyze.py"),
        "dashboard",
        "--storage",
        storage,
        "--port",
        "0",
        "--artifacts",
        str(tmp_path / "a"),
        "--reports",
        str(tmp_path / "r"),
    ]
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}  # a hang below dumps every thread's stack (SIGABRT)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/dashboard/", line).group(0)
        from urllib.request import urlopen

        with urlopen(url.replace("/dashboard/", "/api/studies"), timeout=30) as response:
            assert b'"study_name": "s"' in response.read().replace(b'":"', b'": "')
        assert "Ctrl-C" in line
        proc.send_signal(SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # seen once in a full run: say where it hung
            proc.send_signal(SIGABRT)
            out, err = proc.communicate(timeout=10)
            pytest.fail(f"the dashboard was still running 30 s after SIGINT; stdout {out!r}; stderr:\n{err}")
    finally:
        proc.kill()
    assert proc.returncode in (0, 130) and "Traceback" not in err, err
    assert "dashboard stopped" in out


def test_a_missing_tokenizer_is_found_where_its_files_lie_or_named_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from picollm.analysis import diagnose

    empty, good = tmp_path / "empty", tmp_path / "good"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(empty))
    monkeypatch.setattr(diagnose, "tiktoken_folders", lambda run_dir=None: [empty, good])
    monkeypatch.setattr(diagnose, "_loads", lambda: os.environ["TIKTOKEN_CACHE_DIR"] == str(good))
    diagnose.ensure_tokenizer("gpt2")
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(good)  # the tokenizer and the token data read the same files

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(empty))
    monkeypatch.setattr(diagnose, "_loads", lambda: False)
    with pytest.raises(DataError) as error:
        diagnose.ensure_tokenizer("gpt2")
    message = str(error.value)
    assert "set TIKTOKEN_CACHE_DIR to a folder with GPT-2's tiktoken files" in message and str(good) in message
    assert "\n" not in message and os.environ["TIKTOKEN_CACHE_DIR"] == str(empty)  # left as it was
    diagnose.ensure_tokenizer("bytes")  # needs no files: no probe, no error


needs_gpt2_files = pytest.mark.skipif(not TIKTOKEN_CACHE.is_dir(), reason="needs ../shared/tiktoken-cache")


@needs_gpt2_files
def test_inspect_finds_the_shared_gpt2_files_offline(tmp_path: Path) -> None:
    text = tmp_path / "stories.txt"
    text.write_text("\n".join(f"Once upon a time a {w} cat sat on the mat." for w in ("red", "big", "shy") * 40))
    cfg = load_config(
        None,
        [
            f"tracking.out_dir={tmp_path}/runs",
            f"data.cache_dir={tmp_path}/cache",
            "data.tinystories=null",
            f"data.input_files=[{text}]",
            "data.tokenizer=gpt2",
            "data.compact_vocab=true",
            "model.type=kgram",
            "model.block_size=8",
            "train.batch_size=8",
            "train.epochs=1",
            "train.max_steps_per_epoch=5",
            "train.progress=false",
            "tracking.wandb=disabled",
        ],
    )
    run_dir = train(cfg)["run_dir"]
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "no-files-here")}  # as if it were never set
    cmd = [sys.executable, str(ROOT / "analyze.py"), "inspect", run_dir, "--out", str(tmp_path / "inspect")]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "next token:" in result.stdout and (tmp_path / "inspect" / "inspect.json").is_file()


def test_diagnostics_that_cannot_run_say_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from picollm.analysis import diagnose, sections

    why = "this run's GPT-2 tokenizer files are not on this machine: set TIKTOKEN_CACHE_DIR to a folder with them"

    def refuse(*_: object) -> None:
        raise DataError(why)

    monkeypatch.setattr(diagnose, "inspect_run", refuse)
    run = synthetic_run(300, 300, 0.2, 0.0, "t0")
    run.source = str(tmp_path)
    section, result = sections.diagnostics_section(run, tmp_path)
    assert result is None and section.text == [f"No diagnostics for this run: {why}."]


def test_a_run_records_where_its_tokenizer_files_were_and_diagnostics_look_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from picollm.analysis import diagnose

    files = tmp_path / "tiktoken"
    files.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(files))
    from picollm.tokenizers import tiktoken_cache_dir

    assert tiktoken_cache_dir() == str(files)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "meta.json").write_text(json.dumps({"tokenizer_files": str(files)}))
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
    assert files.resolve() in diagnose.tiktoken_folders(run_dir)
    assert files.resolve() not in diagnose.tiktoken_folders()


def test_a_report_shows_no_figures_or_best_yaml_of_another_study_of_the_same_name(tmp_path: Path) -> None:
    """The study's folder is read only where it holds this study's results, as a sweep would write there."""
    import optuna

    from picollm.analysis.sections import study_folder
    from picollm.sweeps.trial import record_study

    study = optuna.create_study(study_name="t")
    record_study(study, settings={"out_dir": str(tmp_path)}, uid="mine")
    folder = tmp_path / "t"
    folder.mkdir()
    assert study_folder(study) == folder  # nothing exported yet
    (folder / "trials.csv").write_text("number,run_id\n0,t-t0-a\n")  # an export no study.json names
    assert study_folder(study) is None  # its runs are not this study's
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"run_id": "t-t0-a"}))
    assert study_folder(study) == folder  # they are: its own export from before study uids
    for uid, shown in (("mine", folder), (None, folder), ("another", None)):
        (folder / "study.json").write_text(json.dumps({"study": "t", "uid": uid, "storage": "sqlite:///x.db"}))
        assert study_folder(study) == shown, uid
