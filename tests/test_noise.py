"""Validation noise: sampling error of the estimate vs training noise, and what a precision costs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from picollm import trainer as train_mod
from picollm.analysis.figures import noise_figure
from picollm.analysis.noise import Z95, analyze_noise, tokens_for_precision, validation_noise
from picollm.analysis.records import from_rows, load_run_dir
from picollm.analysis.smoothing import best_window, running_mean, window_analysis, window_error, window_line
from picollm.config import load_config


def test_tokens_for_precision_follows_one_over_sqrt_tokens() -> None:
    need = tokens_for_precision(0.04, 10_000, 0.02)
    assert need == math.ceil(10_000 * (Z95 * 0.04 / 0.02) ** 2)
    assert tokens_for_precision(0.04, 10_000, 0.04) == pytest.approx(need / 4, rel=1e-3)
    assert tokens_for_precision(0.01, 10_000, 0.02) < 10_000  # already precise enough


def _history(changes: list[float], stderr: float, wobble: float) -> object:
    """Step losses, a smooth periodic val/loss with ``wobble`` of noise, and epoch losses that move by ``changes``."""
    rng = np.random.default_rng(0)
    rows, val, step = [], 5.0, 0
    for epoch, change in enumerate([0.0, *changes], start=1):
        val += change
        for _ in range(10):
            step += 1
            rows.append({"step": step, "epoch": epoch, "train/loss": 6 - 0.001 * step + rng.normal(0, 0.2)})
            if step % 2 == 0:
                periodic = 5 - 0.002 * step + rng.normal(0, wobble)
                rows.append({"step": step, "epoch": epoch, "val/loss": periodic, "val/loss_stderr": 0.05})
        rows.append({"step": step, "epoch": epoch, "val/epoch_loss": val, "val/epoch_loss_stderr": stderr})
    summary = {"val_set": {"full": {"scored_tokens": 20_000}, "periodic": {"scored_tokens": 4_000}}}
    config = {"model": {"block_size": 32}, "train": {"batch_size": 16}}
    return from_rows("r", rows, config, summary)


def test_an_epoch_change_is_real_only_above_both_noises() -> None:
    run = _history([-0.2, -0.01, 0.02, -0.3], stderr=0.02, wobble=0.01)
    v = validation_noise(run, step_sigma=0.2)
    flags = [c["exceeds_both"] for c in v["val_epoch_changes"]]
    assert flags == [True, False, False, True]
    assert v["val_epoch_changes"][1]["sampling_noise_95"] == pytest.approx(Z95 * math.hypot(0.02, 0.02))
    assert v["weight_noise_sigma"] == pytest.approx(0.01, rel=0.6)  # the wobble of val/loss on a fixed set
    assert v["tokens_for_precision"]["0.02"] == tokens_for_precision(0.02, 20_000, 0.02)
    noisy = validation_noise(_history([-0.2, -0.01, 0.02, -0.3], stderr=0.02, wobble=0.3), step_sigma=0.2)
    assert not noisy["val_epoch_changes"][0]["exceeds_both"]  # the weights' own noise swallows -0.2


def test_noise_analysis_of_a_real_run_reports_validation_precision(synthetic: list[str], tmp_path: Path) -> None:
    cfg = load_config(None, [*synthetic, "train.epochs=3", "train.max_steps_per_epoch=6", "train.eval_every=2"])
    run = load_run_dir(train_mod.train(cfg)["run_dir"])
    result = analyze_noise(run, simulate=False)
    v = result["validation_noise"]
    assert v["val_epoch_loss_stderr"] > 0 and v["val_epoch_tokens"] > 0 and v["val_loss_tokens"] >= 2048
    assert "+/-0.02 nats needs about" in result["verdict"] and len(v["val_epoch_changes"]) == 2
    assert noise_figure(run, result, tmp_path / "noise.png").stat().st_size > 10_000
    old = from_rows("old", _rows_without_stderr(run), {}, {})
    assert validation_noise(old, 0.1) is None


def _rows_without_stderr(run: object) -> list[dict]:
    steps = zip(run.steps, run.epochs, run.losses, strict=True)
    rows = [{"step": int(s), "epoch": int(e), "train/loss": float(v)} for s, e, v in steps]
    return rows + [{k: v for k, v in r.items() if not k.endswith("stderr")} for r in run.epoch_rows]


def test_running_mean_is_the_mean_of_the_last_window() -> None:
    y = np.array([4.0, 2.0, 6.0, 0.0, 8.0])
    assert running_mean(y, 2).tolist() == [4.0, 3.0, 4.0, 3.0, 4.0]
    assert running_mean(y, 10).tolist() == [np.mean(y[: i + 1]) for i in range(5)]


@pytest.mark.parametrize(("sigma", "rho"), [(0.2, 0.0), (0.1, 0.5)])
def test_a_windows_scatter_is_what_simulated_noise_shows(sigma: float, rho: float) -> None:
    rng = np.random.default_rng(1)
    noise = np.zeros(200_000)
    shocks = rng.normal(0, sigma * math.sqrt(1 - rho**2), noise.size)
    noise[0] = rng.normal(0, sigma)
    for t in range(1, noise.size):
        noise[t] = rho * noise[t - 1] + shocks[t]
    for w in (1, 10, 50):
        scatter, lag = window_error(w, sigma, rho, slope=0.01)
        assert running_mean(noise, w)[w:].std() == pytest.approx(scatter, rel=0.05)
        assert lag == pytest.approx(0.01 * (w - 1) / 2)
    assert window_error(10, sigma, 0.0, 0.0)[0] == pytest.approx(sigma / math.sqrt(10))


def test_the_best_window_trades_noise_for_lag() -> None:
    assert best_window(sigma=0.01, rho=0.0, slope=0.1, steps=500) == 1  # a steep trend and little noise: no average
    assert best_window(sigma=0.3, rho=0.0, slope=0.0, steps=500) == 500  # a flat trend: average everything
    middle = best_window(sigma=0.2, rho=0.0, slope=1e-3, steps=5000)
    errors = [math.hypot(*window_error(w, 0.2, 0.0, 1e-3)) for w in (middle - 1, middle, middle + 1)]
    assert errors[1] <= min(errors[0], errors[2]) and 10 < middle < 500


def test_a_one_epoch_run_gets_its_window_analysis(synthetic: list[str]) -> None:
    cfg = load_config(None, [*synthetic, "train.epochs=1", "train.batch_size=8", "train.max_steps_per_epoch=30"])
    run = load_run_dir(train_mod.train(cfg)["run_dir"])
    result = window_analysis(run)
    assert result["epochs"] == 1 and result["steps"] == 30 and set(result["windows"]) == {"1", "10"}
    assert result["windows"]["10"]["scatter"] < result["windows"]["1"]["scatter"] == result["step_noise_sigma"]
    assert result["val_loss_ci95"] > 0 and "one epoch: no epoch-to-epoch change" in window_line(result)
    words = analyze_noise(run, simulate=False)["verdict"]  # one epoch: no share of epoch-to-epoch rises to state
    assert "Step to step the loss rose" in words and "epoch to epoch" not in words


@pytest.mark.parametrize("rho", [-0.9, -0.3, 0.0, 0.5, 0.95, 0.9995, 1.0])
def test_block_variance_and_smoothed_covariance_match_their_defining_sums(rho: float) -> None:
    """The closed forms against the sums they stand for: AR(1) block means, and residuals of a Savitzky-Golay trend."""
    from scipy import signal

    from picollm.analysis.noise import _residual_cov, block_mean_var

    for n in (1, 2, 7, 300):
        k = np.arange(1, n)
        defined = 0.3**2 / n**2 * (n + 2.0 * float(((n - k) * rho**k).sum()))
        assert block_mean_var(n, 0.3, rho) == pytest.approx(defined, rel=1e-9), n
    weights = signal.savgol_coeffs(21, polyorder=2)
    g = np.eye(21)[10] - weights  # a residual: the step minus its smoothed value
    offsets = np.arange(21)
    for lag in (0, 1, 4):
        powers = rho ** np.abs(lag + offsets[None, :] - offsets[:, None])
        assert _residual_cov(weights, rho, lag) == pytest.approx(float(g @ powers @ g), rel=1e-9, abs=1e-12), lag
