"""Step losses against a running average: what a run with a single epoch can say about its noise.

A trailing W-step average scatters by the W-step block-mean error (:mod:`.noise`) and lags a falling trend by s*(W-1)/2;
the best window minimises sqrt(scatter^2 + lag^2).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from picollm.analysis.noise import Z95, block_mean_var, fit_noise, validation_noise

WINDOWS = (10, 50)  # running-average widths the report's table shows next to a single step
MAX_WINDOW = 2000  # the search for the best window stops here (a run's length caps it too)


def running_mean(losses: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean of the last ``window`` values (of the values so far at the start)."""
    y = np.asarray(losses, dtype=np.float64)
    sums = np.cumsum(np.concatenate([[0.0], y]))
    ends = np.arange(1, len(y) + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


def end_slope(trend: np.ndarray) -> float:
    """How fast the trend falls per step over the run's last tenth, where the current loss is read."""
    m = max(2, len(trend) // 10)
    return float((trend[-m] - trend[-1]) / (m - 1))


def window_error(window: int, sigma: float, rho: float, slope: float) -> tuple[float, float]:
    """Scatter (standard deviation) and lag bias of a ``window``-step trailing average."""
    return math.sqrt(block_mean_var(window, sigma, rho)), slope * (window - 1) / 2


def best_window(sigma: float, rho: float, slope: float, steps: int) -> int:
    """The window with the smallest root-mean-square error of scatter and lag."""
    widths = range(1, max(1, min(steps, MAX_WINDOW)) + 1)
    return min(widths, key=lambda w: math.hypot(*window_error(w, sigma, rho, slope)))


def window_analysis(run: Any) -> dict[str, Any] | None:
    """One run's step noise and what running averages of it do; None for runs too short to fit a trend."""
    fit = fit_noise(run.losses)
    if fit is None:
        return None
    steps = len(run.losses)
    slope = end_slope(fit.trend)
    windows = {}
    for w in (1, *WINDOWS):
        if w <= steps:
            scatter, lag = window_error(w, fit.sigma, fit.rho, slope)
            windows[str(w)] = {"scatter": scatter, "ci95": Z95 * scatter, "lag": lag, "smoothing": fit.sigma / scatter}
    best = best_window(fit.sigma, fit.rho, slope, steps)
    val = validation_noise(run, fit.sigma) or {}
    val_se = val.get("val_epoch_loss_stderr") or val.get("val_loss_stderr")
    return {
        "run": run.name,
        "steps": steps,
        "epochs": len(np.unique(run.epochs)),
        "step_noise_sigma": fit.sigma,
        "lag1_autocorrelation": fit.rho,
        "autocorrelation_time": fit.tau,
        "end_slope": slope,
        "windows": windows,
        "best_window": best,
        "best_window_rms": math.hypot(*window_error(best, fit.sigma, fit.rho, slope)),
        "val_loss_ci95": None if val_se is None else Z95 * val_se,
    }


def window_verdict(results: list[dict[str, Any]]) -> str:
    """The runs' step noise in one paragraph: typical sigma, what 10 and 50 steps of averaging leave."""
    sigma = float(np.median([r["step_noise_sigma"] for r in results]))
    rho = float(np.median([r["lag1_autocorrelation"] for r in results]))
    parts = [
        f"Across {len(results)} run(s) one step's loss scatters by a median sigma={sigma:.3f} nats around its "
        f"trend (lag-1 autocorrelation {rho:.2f}), so a single step is uncertain by +/-{Z95 * sigma:.3f} (95%)."
    ]
    for w in WINDOWS:
        have = [r["windows"][str(w)] for r in results if str(w) in r["windows"]]
        if have:
            ci = float(np.median([h["ci95"] for h in have]))
            factor = float(np.median([h["smoothing"] for h in have]))
            parts.append(f"A running average of {w} steps is uncertain by +/-{ci:.3f} ({factor:.1f}x smoother).")
    parts.append(
        "An epoch of W steps is such an average: two epoch means that differ by less than about "
        "sqrt(2) times its interval are not told apart."
    )
    return " ".join(parts)


def window_line(r: dict[str, Any]) -> str:
    """One run's running-average numbers on one line (``analyze.py noise``)."""
    shown = ", ".join(f"+/-{v['ci95']:.3f} over {w} step(s)" for w, v in r["windows"].items())
    one_epoch = "; one epoch: no epoch-to-epoch change to test" if r["epochs"] == 1 else ""
    return f"running average (95%): {shown}; best window {r['best_window']} steps{one_epoch}"
