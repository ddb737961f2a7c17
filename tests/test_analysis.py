"""analyze.py: the noise statistics recover known truths; the adapters, rankings and diagnostics work."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import signal

import analyze
from picollm.analysis import noise, records
from picollm.analysis.compare import compare_runs
from picollm.analysis.diagnose import inspect_run
from picollm.analysis.records import RunHistory
from picollm.config import load_config
from picollm.errors import run_cli
from picollm.train import train


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


def test_compare_ranks_and_prices_the_noisy_choice(trained_runs: list[str]) -> None:
    result = compare_runs([records.load_run_dir(d) for d in trained_runs], last_n=10)
    assert set(result["metrics"]) == {"last_step_loss", "last_n_mean", "last_epoch_mean"}
    for m in result["metrics"].values():
        assert -1 <= m["kendall_tau"] <= 1 and m["cost"] >= 0
    best = min(result["runs"], key=lambda r: r["val_loss"])
    assert result["best_by_val"] == best["run"]


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
    assert "```{figure} false_increase.png" in report and "## Which number ranks configurations?" in report


def test_cli_bad_sources_exit_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(analyze.main, ["noise", str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and "no such run record" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run_cli(analyze.main, ["compare"])
    assert exit_info.value.code == 2 and "give exactly one source" in capsys.readouterr().err
