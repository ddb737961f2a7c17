"""Figures for loss noise, false increases, rankings and predictions, validation losses with 95% intervals.

``draw_*`` build a Figure without pyplot, so a notebook's backend never switches; ``*_figure`` save a PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from picollm.analysis.noise import Z95, fit_noise
from picollm.analysis.smoothing import running_mean


def save_figure(fig: Figure, path: Path) -> Path:
    """The PNG every command line writes: one resolution for all of them."""
    fig.savefig(path, dpi=120)
    return path


def _new(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="tight")


def noise_figure(run: Any, result: dict[str, Any], path: Path) -> Path:
    return save_figure(draw_noise(run, result), path)


def draw_noise(run: Any, result: dict[str, Any]) -> Figure:
    """Step losses (faint), their trend, epoch means with 95% intervals, and validation losses."""
    fit = fit_noise(run.losses)
    fig = _new(9, 5)
    ax = fig.subplots()
    ax.plot(run.steps, run.losses, color="tab:blue", alpha=0.45, lw=0.8, label="train/loss (each step)")
    ax.plot(run.steps, fit.trend, color="tab:blue", lw=2, label=f"trend (Savitzky-Golay, {fit.window} steps)")
    centers, means, errs = [], [], []
    for row in result["epochs"]:
        steps = run.steps[run.epochs == row["epoch"]]
        centers.append(steps.mean())
        means.append(row["mean"])
        errs.append(row["mean"] - row["ci_low"])
    ax.errorbar(
        centers,
        means,
        yerr=errs,
        fmt="o",
        color="tab:orange",
        ms=4,
        capsize=2,
        label="epoch mean of step losses, 95% CI",
    )
    _validation_with_bands(ax, run)
    lo, hi = np.percentile(run.losses, [1, 99.5])
    ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(
        f"{run.name}: sigma={result['step_noise_sigma']:.3f}, {result['steps_per_epoch']} steps/epoch, "
        f"P(false rise)={100 * result['p_false_increase']:.0f}%"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _validation_with_bands(ax: Any, run: Any) -> None:
    """val/loss with its 95% sampling band, val/epoch_loss with 95% error bars (when the run logged them)."""
    if len(run.val_losses):
        ax.plot(run.val_steps, run.val_losses, "s-", color="tab:green", ms=3, lw=1, label="val/loss (fixed sample)")
        se = getattr(run, "val_stderrs", np.zeros(0))
        if len(se) == len(run.val_losses) and np.isfinite(se).any():
            band = Z95 * np.nan_to_num(se)
            low, high = run.val_losses - band, run.val_losses + band
            ax.fill_between(run.val_steps, low, high, color="tab:green", alpha=0.2, label="val/loss 95% band")
    if run.epoch_rows:
        errs = [Z95 * (r.get("val/epoch_loss_stderr") or 0.0) for r in run.epoch_rows]
        ax.errorbar(
            [r["step"] for r in run.epoch_rows],
            [r["val/epoch_loss"] for r in run.epoch_rows],
            yerr=errs,
            fmt="D",
            color="tab:red",
            ms=5,
            capsize=3,
            label="val/epoch_loss (whole capped set), 95% interval",
        )


def false_increase_figure(results: list[dict[str, Any]], path: Path) -> Path:
    return save_figure(draw_false_increase(results), path)


def draw_false_increase(results: list[dict[str, Any]]) -> Figure:
    """P(epoch average rises although the model improves) against steps per epoch, per run."""
    fig = _new(8, 5)
    ax = fig.subplots()
    for i, r in enumerate(results):
        color = f"C{i}"
        curve = r["p_false_increase_by_n"]
        ax.plot(curve["n"], curve["analytic"], "-", color=color, label=f"{r['run']} (AR(1) formula)")
        sim = curve["simulated"]
        if sim:
            ax.plot(
                [int(n) for n in sim],
                list(sim.values()),
                "o",
                color=color,
                mfc="none",
                label=f"{r['run']} (simulation)",
            )
        ax.axvline(r["steps_per_epoch"], color=color, ls=":", lw=1)
        if r["min_steps_per_epoch_95"]:
            ax.axvline(r["min_steps_per_epoch_95"], color=color, ls="--", lw=1)
    ax.axhline(0.05, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("steps per epoch n  (dotted: the run's n; dashed: smallest n with 95% power)")
    ax.set_ylabel("P(epoch mean rises | true loss falls)")
    ax.set_ylim(-0.02, 0.55)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def compare_figure(table: list[dict[str, Any]], metrics: list[str], path: Path) -> Path:
    """Each ranking metric against the validation loss, one panel per metric."""
    fig = _new(4 * len(metrics), 4)
    axes = fig.subplots(1, len(metrics), squeeze=False)
    val = np.array([row["val_loss"] for row in table])
    for ax, metric in zip(axes[0], metrics, strict=True):
        x = np.array([row[metric] for row in table])
        ax.scatter(x, val, s=18)
        pick = int(np.nanargmin(x))
        ax.scatter([x[pick]], [val[pick]], s=60, facecolors="none", edgecolors="red", label="its pick")
        ax.set_xlabel(metric)
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def bar_figure(labels: list[str], values: list[float], title: str, xlabel: str, path: Path) -> Path:
    return save_figure(draw_bars(labels, values, title, xlabel), path)


def draw_bars(labels: list[str], values: list[float], title: str, xlabel: str) -> Figure:
    """Horizontal bars, largest first: top-k next-token probabilities, token frequencies."""
    fig = _new(8, max(3, 0.28 * len(labels) + 1))
    ax = fig.subplots()
    ax.barh(range(len(labels)), values, color="tab:blue")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    return fig


def draw_losses(run: Any) -> Figure:
    """One run's step and validation losses against the unigram baseline, the line to beat."""
    fig = _new(8, 4.5)
    ax = fig.subplots()
    ax.plot(run.steps, run.losses, color="tab:blue", alpha=0.6, lw=0.8, label="train/loss")
    _validation_with_bands(ax, run)
    baseline = run.summary.get("unigram_val_loss")
    if baseline is not None:
        ax.axhline(baseline, color="grey", ls="--", lw=1, label=f"unigram baseline {baseline:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(run.name)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def transfer_figure(result: dict[str, Any], path: Path) -> Path:
    return save_figure(draw_transfer(result), path)


def draw_transfer(result: dict[str, Any]) -> Figure:
    """Rank correlation with the target and regret of an early pick, against the budget they were ranked at."""
    fig = _new(10, 4)
    left, right = fig.subplots(1, 2)
    for ax, key, label in ((left, "spearman", "Spearman rho with the target ranking"), (right, "regret", "regret")):
        rows = [r for r in result["rows"] if r[key] is not None]
        x = np.array([r["tokens"] for r in rows], dtype=float)
        y = np.array([r[key] for r in rows])
        ci = [r[f"{key}_ci"] or [r[key], r[key]] for r in rows]
        err = np.abs(np.array(ci, dtype=float).reshape(-1, 2).T - y) if rows else None
        ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3, color="tab:blue", label="95% bootstrap interval")
        ax.axvline(result["budget_tokens"], color="tab:orange", ls="--", lw=1, label="cheap budget")
        ax.axvline(result["target_tokens"], color="tab:red", ls=":", lw=1, label="target")
        ax.set_xscale("log")
        ax.set_xlabel("tokens the configurations were ranked at")
        ax.set_ylabel(label + (" (nats at the target)" if key == "regret" else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    left.set_ylim(-1.05, 1.05)
    return fig


def windows_figure(runs: list[Any], results: list[dict[str, Any]], path: Path) -> Path:
    return save_figure(draw_windows(runs, results), path)


def draw_windows(runs: list[Any], results: list[dict[str, Any]]) -> Figure:
    """One small panel per run: every step's loss and its running average over the run's best window."""
    cols = min(4, len(runs))
    rows = -(-len(runs) // cols)
    fig = _new(3.3 * cols, 2.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, run, r in zip(axes, runs, results, strict=False):
        w = r["best_window"]
        ax.plot(run.steps, run.losses, color="tab:blue", alpha=0.4, lw=0.7, label="each step")
        ax.plot(run.steps, running_mean(run.losses, w), color="tab:orange", lw=1.6, label=f"mean of last {w}")
        lo, hi = np.percentile(run.losses, [1, 99.5])
        hi = max(min(hi, run.losses[0] + 3 * r["step_noise_sigma"]), lo + 1e-6)  # a spike above the start: cut
        ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
        ax.set_title(f"{run.name}: sigma {r['step_noise_sigma']:.3f}, best window {w}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes[len(runs) :]:
        ax.set_axis_off()
    fig.supxlabel("step", fontsize=8)
    fig.supylabel("train/loss (nats/token)", fontsize=8)
    return fig
