"""How noisy is a loss curve, and when does an epoch-to-epoch "increase" mean anything?

The step loss is a smooth trend plus AR(1) noise, so an epoch mean's error is the AR(1) block-mean error, not
``std/sqrt(n)``. A change of ``val/epoch_loss`` is real only when it exceeds both the sampling noise over documents and
the training noise at 95% (docs/reading-losses.md).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import signal, stats

Z95 = 1.959963984540054


@dataclass
class NoiseFit:
    trend: np.ndarray
    sigma: float  # per-step noise around the trend
    rho: float  # lag-1 autocorrelation of that noise
    tau: float  # integrated autocorrelation time (1 = independent steps)
    window: int


def _window(n: int) -> int:
    w = max(7, min(n // 5, 201))
    return w if w % 2 else w + 1


def _residual_cov(weights: np.ndarray, rho: float, lag: int) -> float:
    """Cov(r_t, r_t+lag) for r = e - smooth(e), e an AR(1) process with unit variance.

    That is ``sum_ij g_i g_j rho^|lag + j - i|``, summed by ``d = j - i`` over ``g``'s autocorrelation: one vector of
    powers instead of a window-squared matrix of them (a report's fits took seconds).
    """
    g = -weights.copy()
    g[len(g) // 2] += 1.0
    d = np.arange(1 - len(g), len(g))
    return float(np.correlate(g, g, "full") @ rho ** np.abs(lag + d))


def _solve_rho(weights: np.ndarray, observed_acf1: float) -> float:
    """The AR(1) rho whose smoothed residuals would show ``observed_acf1`` at lag 1 (bisection)."""

    def implied(rho: float) -> float:
        return _residual_cov(weights, rho, 1) / _residual_cov(weights, rho, 0)

    lo, hi = -0.95, 0.95
    if observed_acf1 <= implied(lo):
        return lo
    if observed_acf1 >= implied(hi):
        return hi
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if implied(mid) < observed_acf1 else (lo, mid)
    return (lo + hi) / 2


def autocorrelation(x: np.ndarray, max_lag: int) -> np.ndarray:
    x = x - x.mean()
    denom = float(x @ x)
    if denom == 0:
        return np.zeros(max_lag + 1)
    return np.array([1.0] + [float(x[:-k] @ x[k:]) / denom for k in range(1, max_lag + 1)])


def fit_noise(losses: np.ndarray) -> NoiseFit | None:
    """Trend, noise sigma, lag-1 correlation and autocorrelation time; None for fewer than 8 steps."""
    y = np.asarray(losses, dtype=np.float64)
    if len(y) < 8:
        return None
    w = min(_window(len(y)), len(y) - (1 - len(y) % 2))
    trend = signal.savgol_filter(y, w, polyorder=2, mode="interp")
    resid = y - trend
    weights = signal.savgol_coeffs(w, polyorder=2)
    rho = _solve_rho(weights, autocorrelation(resid, 1)[1])
    mad_sigma = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    sigma = mad_sigma / math.sqrt(_residual_cov(weights, rho, 0))  # undo the share the smoother swallowed
    tau = (1 + rho) / (1 - rho) if rho > 0 else 1.0
    return NoiseFit(trend=trend, sigma=sigma, rho=rho, tau=tau, window=w)


def block_mean_var(n: int, sigma: float, rho: float) -> float:
    """Variance of the mean of n consecutive AR(1) steps.

    ``sum_{k=1}^{n-1} (n - k) rho^k`` in closed form: reports call this for every epoch length of every run.
    """
    if abs(1.0 - rho) < 1e-3:  # the closed form divides by (1 - rho)^2, and loses digits near rho = 1
        k = np.arange(1, n)
        lagged = float(((n - k) * rho**k).sum())
    else:
        lagged = rho * (n * (1 - rho) - (1 - rho**n)) / (1 - rho) ** 2
    return sigma**2 / n**2 * (n + 2.0 * lagged)


def adjacent_block_cov(n: int, sigma: float, rho: float) -> float:
    """Covariance of the means of two back-to-back blocks of n AR(1) steps."""
    geometric = (1 - rho**n) / (1 - rho) if rho != 1 else n
    return sigma**2 / n**2 * rho * geometric**2


def false_increase_prob(n: int, slope: float, sigma: float, rho: float) -> float:
    """P(mean of epoch B > mean of epoch A) when the trend falls by ``slope`` per step, epochs of n steps."""
    var = 2 * block_mean_var(n, sigma, rho) - 2 * adjacent_block_cov(n, sigma, rho)
    if var <= 0:
        return 0.0 if slope > 0 else 0.5
    return float(stats.norm.cdf(-slope * n / math.sqrt(var)))


def simulate_false_increase(n: int, slope: float, sigma: float, rho: float, trials: int = 4000, seed: int = 0) -> float:
    """The same probability by Monte Carlo: simulate trend + AR(1) noise, count rising epoch means."""
    rng = np.random.default_rng(seed)
    burn = int(20 / max(1 - abs(rho), 0.05))
    z = rng.standard_normal((trials, burn + 2 * n))
    noise = signal.lfilter([sigma * math.sqrt(1 - rho**2)], [1.0, -rho], z, axis=1)[:, burn:]
    trend = -slope * np.arange(2 * n)
    series = trend + noise
    return float(np.mean(series[:, n:].mean(1) > series[:, :n].mean(1)))


def min_steps_per_epoch(slope: float, sigma: float, rho: float, power: float = 0.95, limit: int = 10**6) -> int | None:
    """Smallest n for which an epoch shows the improvement (a lower mean) with probability ``power``."""
    if slope <= 0:
        return None
    lo, hi = 1, 1
    while false_increase_prob(hi, slope, sigma, rho) > 1 - power:
        hi *= 2
        if hi > limit:
            return None
    while lo < hi:
        mid = (lo + hi) // 2
        if false_increase_prob(mid, slope, sigma, rho) <= 1 - power:
            hi = mid
        else:
            lo = mid + 1
    return lo


def epoch_table(losses: np.ndarray, epochs: np.ndarray, sigma: float, rho: float) -> list[dict[str, Any]]:
    """Per epoch: exact mean of the step losses, AR(1)-corrected standard error, 95% interval."""
    rows = []
    for epoch in np.unique(epochs):
        values = losses[epochs == epoch]
        se = math.sqrt(block_mean_var(len(values), sigma, rho))
        mean = float(values.mean())
        naive = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
        rows.append(
            {
                "epoch": int(epoch),
                "mean": mean,
                "stderr": se,
                "ci_low": mean - Z95 * se,
                "ci_high": mean + Z95 * se,
                "n_steps": len(values),
                "naive_stderr": naive,
            }
        )
    return rows


def epoch_changes(table: list[dict[str, Any]], sigma: float, rho: float) -> list[dict[str, Any]]:
    """Each consecutive pair: the change of the epoch mean, its 95% interval, and whether noise explains it."""
    out = []
    for a, b in itertools.pairwise(table):
        n_a, n_b = a["n_steps"], b["n_steps"]
        cov = adjacent_block_cov(n_a, sigma, rho) if n_a == n_b else 0.0
        se = math.sqrt(max(a["stderr"] ** 2 + b["stderr"] ** 2 - 2 * cov, 1e-24))
        change = b["mean"] - a["mean"]
        out.append(
            {
                "from_epoch": a["epoch"],
                "to_epoch": b["epoch"],
                "change": change,
                "ci_low": change - Z95 * se,
                "ci_high": change + Z95 * se,
                "distinguishable": abs(change) > Z95 * se,
            }
        )
    return out


def per_step_improvement(fit: NoiseFit, epochs: np.ndarray) -> float:
    """The measured improvement per step: median over epoch pairs of the trend's drop between epoch means."""
    means = np.array([fit.trend[epochs == e].mean() for e in np.unique(epochs)])
    sizes = np.array([(epochs == e).sum() for e in np.unique(epochs)])
    if len(means) >= 2:
        per_step = (means[:-1] - means[1:]) / ((sizes[:-1] + sizes[1:]) / 2)
        return float(np.median(per_step))
    return float((fit.trend[0] - fit.trend[-1]) / max(1, len(fit.trend) - 1))


PRECISIONS = (0.01, 0.02, 0.05)  # wanted 95% half-widths, nats


def tokens_for_precision(stderr: float, tokens: int, half_width: float) -> int:
    """Validation tokens that give a 95% interval of +/- ``half_width``: the error falls as 1/sqrt(tokens)."""
    return math.ceil(tokens * (Z95 * stderr / half_width) ** 2)


def _median_finite(values: Any) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.median(finite)) if finite else None


def _set_tokens(run: Any, which: str) -> int | None:
    described = (run.summary.get("val_set") or {}).get(which) or {}
    return described.get("scored_tokens")


def val_epoch_changes(run: Any, weight_sigma: float | None) -> list[dict[str, Any]]:
    """Each consecutive pair of val/epoch_loss: the change against sampling and training noise (95%)."""
    rows = [r for r in run.epoch_rows if r.get("val/epoch_loss_stderr") is not None]
    out = []
    for a, b in itertools.pairwise(rows):
        change = b["val/epoch_loss"] - a["val/epoch_loss"]
        sampling = Z95 * math.hypot(a["val/epoch_loss_stderr"], b["val/epoch_loss_stderr"])
        training = None if weight_sigma is None else Z95 * math.sqrt(2) * weight_sigma
        out.append(
            {
                "from_epoch": a["epoch"],
                "to_epoch": b["epoch"],
                "change": change,
                "sampling_noise_95": sampling,
                "training_noise_95": training,
                "exceeds_both": abs(change) > sampling and (training is None or abs(change) > training),
            }
        )
    return out


def validation_noise(run: Any, step_sigma: float) -> dict[str, Any] | None:
    """Sampling noise of the validation estimates vs training noise; None for runs without stderrs."""
    full_se = _median_finite(r.get("val/epoch_loss_stderr") for r in run.epoch_rows)
    periodic_se = _median_finite(getattr(run, "val_stderrs", []))
    if full_se is None and periodic_se is None:
        return None
    weight_fit = fit_noise(run.val_losses) if len(run.val_losses) >= 8 else None
    weight_sigma = weight_fit.sigma if weight_fit is not None else None
    se, tokens = (
        (full_se, _set_tokens(run, "full")) if full_se is not None else (periodic_se, _set_tokens(run, "periodic"))
    )
    return {
        "val_epoch_loss_stderr": full_se,
        "val_epoch_tokens": _set_tokens(run, "full"),
        "val_loss_stderr": periodic_se,
        "val_loss_tokens": _set_tokens(run, "periodic"),
        "tokens_for_precision": {str(p): tokens_for_precision(se, tokens, p) for p in PRECISIONS} if tokens else {},
        "weight_noise_sigma": weight_sigma,
        "step_noise_sigma": step_sigma,
        "val_epoch_changes": val_epoch_changes(run, weight_sigma),
    }


def _share_of_increases(values: np.ndarray) -> float | None:
    return float(np.mean(np.diff(values) > 0)) if len(values) > 1 else None


N_GRID = tuple(int(n) for n in np.unique(np.logspace(0, 3.7, 48).astype(int)))  # 1 .. 5000 steps
N_SIMULATED = (1, 5, 20, 100, 500)


def analyze_noise(run: Any, simulate: bool = True) -> dict[str, Any]:
    """Everything ``analyze.py noise`` reports for one run (a :class:`RunHistory`)."""
    fit = fit_noise(run.losses)
    if fit is None:
        raise ValueError(f"{run.name}: {len(run.losses)} training steps are too few to separate noise from trend")
    table = epoch_table(run.losses, run.epochs, fit.sigma, fit.rho)
    changes = epoch_changes(table, fit.sigma, fit.rho)
    slope = per_step_improvement(fit, run.epochs)
    n_run = int(np.median([row["n_steps"] for row in table]))
    analytic = [false_increase_prob(n, slope, fit.sigma, fit.rho) if slope > 0 else 0.5 for n in N_GRID]
    simulated = (
        {n: simulate_false_increase(n, slope, fit.sigma, fit.rho) for n in N_SIMULATED}
        if simulate and slope > 0
        else {}
    )
    val_epoch = np.array([r["val/epoch_loss"] for r in run.epoch_rows])
    increases = [c for c in changes if c["change"] > 0]
    result = {
        "run": run.name,
        "source": run.source,
        "steps": len(run.losses),
        "step_noise_sigma": fit.sigma,
        "lag1_autocorrelation": fit.rho,
        "autocorrelation_time": fit.tau,
        "smoother_window": fit.window,
        "per_step_improvement": slope,
        "steps_per_epoch": n_run,
        "epochs": table,
        "epoch_changes": changes,
        "p_false_increase": false_increase_prob(n_run, slope, fit.sigma, fit.rho) if slope > 0 else 0.5,
        "p_false_increase_by_n": {"n": list(N_GRID), "analytic": analytic, "simulated": simulated},
        "min_steps_per_epoch_95": min_steps_per_epoch(slope, fit.sigma, fit.rho),
        "share_step_increases": _share_of_increases(run.losses),
        "share_epoch_increases": _share_of_increases(np.array([row["mean"] for row in table])),
        "epoch_increases": len(increases),
        "epoch_increases_within_noise": sum(not c["distinguishable"] for c in increases),
        "validation": {
            "val_epoch_loss": val_epoch.tolist(),
            "share_val_epoch_increases": _share_of_increases(val_epoch),
            "share_val_loss_increases": _share_of_increases(run.val_losses),
            "n_val_evals": len(run.val_losses),
        },
        "validation_noise": validation_noise(run, fit.sigma),
    }
    result["verdict"] = verdict(result)
    return result


def _pct(p: float | None) -> str:
    return "-" if p is None else f"{100 * p:.0f}%"


def verdict(r: dict[str, Any]) -> str:
    """The run's noise story in plain words."""
    n, slope = r["steps_per_epoch"], r["per_step_improvement"]
    se = r["epochs"][len(r["epochs"]) // 2]["stderr"]
    parts = [
        f"{r['run']}: step losses scatter by sigma={r['step_noise_sigma']:.3f} around their trend "
        f"(lag-1 autocorrelation {r['lag1_autocorrelation']:.2f})."
    ]
    if slope > 0:
        parts.append(
            f"With {n} step(s) per epoch an epoch mean is uncertain by +/-{Z95 * se:.3f} (95%) while the trend "
            f"improves by {slope * n:.4f} per epoch, so the epoch average goes UP although the model improves "
            f"with probability {_pct(r['p_false_increase'])}."
        )
        need = r["min_steps_per_epoch_95"]
        parts.append(f"Epochs need >= {need} steps to show this improvement 95% of the time." if need else "")
    else:
        parts.append("The trend is flat here: any epoch-to-epoch increase is noise.")
    if r["epoch_increases"]:
        parts.append(
            f"{r['epoch_increases']} epoch average(s) went up; {r['epoch_increases_within_noise']} of them are "
            "within the noise."
        )
    epochs = r["share_epoch_increases"]
    parts.append(
        f"Step to step the loss rose {_pct(r['share_step_increases'])} of the time"
        + (f", epoch to epoch {_pct(epochs)}." if epochs is not None else ".")
    )
    val = r["validation"]
    if val["share_val_epoch_increases"] is not None:
        parts.append(
            f"The full validation loss (the same tokens every epoch) rose in "
            f"{_pct(val['share_val_epoch_increases'])} of epochs."
        )
    parts.append(validation_verdict(r.get("validation_noise")))
    return " ".join(p for p in parts if p)


def validation_verdict(v: dict[str, Any] | None) -> str:
    """The two validation noises and what a wanted precision costs, in words."""
    if not v:
        return "This run logged no validation standard errors, so its validation noise is unknown."
    parts = []
    for key, what in (("val_epoch", "val/epoch_loss"), ("val", "val/loss")):
        se, tokens = v[f"{key}_loss_stderr"], v[f"{key}_loss_tokens" if key == "val" else "val_epoch_tokens"]
        if se is not None:
            size = f" over {tokens:,} tokens" if tokens else ""
            parts.append(f"{what} is uncertain by +/-{Z95 * se:.3f} (95%, sampling noise of its documents{size}).")
    need = v["tokens_for_precision"].get("0.02")
    if need:
        parts.append(f"+/-0.02 nats needs about {need:,} validation tokens on this data.")
    if v["weight_noise_sigma"] is not None:
        parts.append(
            f"On the fixed periodic set the weights' own step-to-step noise is sigma={v['weight_noise_sigma']:.4f}."
        )
    changes = v["val_epoch_changes"]
    if changes:
        real = sum(c["exceeds_both"] for c in changes)
        parts.append(f"{real} of {len(changes)} epoch-to-epoch changes of val/epoch_loss exceed both noises.")
    return " ".join(parts)


def overall_verdict(results: list[dict[str, Any]]) -> str:
    """Across runs: do short epochs explain the rising epoch averages?"""
    if len(results) < 2:
        return results[0]["verdict"] if results else ""
    ordered = sorted(results, key=lambda r: r["steps_per_epoch"])
    short, long = ordered[0], ordered[-1]
    lines = [
        f"Short epochs ({short['steps_per_epoch']} steps, {short['run']}): P(epoch average rises while the model "
        f"improves) = {_pct(short['p_false_increase'])}; long epochs ({long['steps_per_epoch']} steps, "
        f"{long['run']}): {_pct(long['p_false_increase'])}."
    ]
    if short["p_false_increase"] > 0.05 >= long["p_false_increase"]:
        lines.append(
            "The hypothesis holds: an average over too few steps is too noisy to show the real trend; the "
            "increases are noise, not the model getting worse. Compare configurations on the fixed-set "
            "validation loss (or on many-step averages), not on short-epoch training averages."
        )
    return " ".join(lines)
