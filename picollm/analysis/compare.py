"""Which metric ranks configurations reliably? A pick costs how much worse its validation loss is than the best."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

METRICS = ("last_step_loss", "last_n_mean", "last_epoch_mean")


def run_metrics(run: Any, last_n: int) -> dict[str, Any] | None:
    val = run.val_epoch_loss()
    if val is None or len(run.losses) == 0:
        return None
    last_epoch = run.epochs.max()
    return {
        "run": run.name,
        "last_step_loss": float(run.losses[-1]),
        "last_n_mean": float(run.losses[-last_n:].mean()),
        "last_epoch_mean": float(run.losses[run.epochs == last_epoch].mean()),
        "val_loss": val,
    }


def compare_runs(runs: list[Any], last_n: int = 50) -> dict[str, Any]:
    table = [m for m in (run_metrics(r, last_n) for r in runs) if m is not None]
    if len(table) < 2:
        raise ValueError("compare needs at least two runs with a validation loss")
    val = np.array([row["val_loss"] for row in table])
    best_val = float(val.min())
    out: dict[str, Any] = {
        "runs": table,
        "last_n": last_n,
        "best_by_val": table[int(val.argmin())]["run"],
        "metrics": {},
    }
    for metric in METRICS:
        x = np.array([row[metric] for row in table])
        tau = stats.kendalltau(x, val).statistic
        rho = stats.spearmanr(x, val).statistic
        pick = int(np.argmin(x))
        out["metrics"][metric] = {
            "kendall_tau": float(tau),
            "spearman": float(rho),
            "picks": table[pick]["run"],
            "pick_val_loss": float(val[pick]),
            "cost": float(val[pick] - best_val),
        }
    return out


def compare_lines(result: dict[str, Any]) -> list[str]:
    lines = [
        f"{len(result['runs'])} runs; best by validation loss: {result['best_by_val']}",
        f"{'metric':18s} {'kendall tau':>11s} {'spearman':>9s}  picks    cost (val loss above the best)",
    ]
    for metric, m in result["metrics"].items():
        label = metric if metric != "last_n_mean" else f"mean of last {result['last_n']}"
        lines.append(f"{label:18s} {m['kendall_tau']:11.3f} {m['spearman']:9.3f}  {m['picks']:8s} {m['cost']:.4f}")
    return lines
