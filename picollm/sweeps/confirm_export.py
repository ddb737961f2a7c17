"""Files of a confirmation in ``results/studies/<study>/``: confirm.csv, confirm.png, best.yaml.

``best.yaml`` is rewritten from the *confirmed* winner (the lowest mean over fresh seeds), with its
interval and its comparisons in the header, so the file a user runs next says how sure the choice is.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import yaml

from picollm.export import standalone_config
from picollm.fileio import atomic_write_text
from picollm.sweeps.confirm import (
    SETTINGS_ATTR,
    Confirmation,
    ConfirmSettings,
    NothingToConfirm,
    confirm_study,
    plan,
    summary_lines,
)

CSV_COLUMNS = (
    "trial",
    "baseline",
    "seed",
    "final_val_loss",
    "final_val_loss_stderr",
    "tokens",
    "budget_tokens",
    "status",
    "reason",
    "run_id",
    "run_dir",
    "wandb_run_id",
    "config_mean",
    "config_ci_low",
    "config_ci_high",
    "rank",
)


def confirm_csv(conf: Confirmation) -> str:
    """One row per (config, seed) run, with its config's mean, interval and rank (1 = confirmed winner)."""
    ranks = {id(r): i + 1 for i, r in enumerate(conf.ranked())}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*CSV_COLUMNS, *_param_keys(conf)], extrasaction="ignore")
    writer.writeheader()
    for result in conf.results:
        iv = result.interval()
        for seed in sorted(result.runs):
            writer.writerow(
                {
                    **result.runs[seed],
                    **result.candidate.params,
                    "baseline": result.candidate.baseline,
                    "seed": seed,
                    "config_mean": iv.mean,
                    "config_ci_low": iv.low,
                    "config_ci_high": iv.high,
                    "rank": ranks.get(id(result)),
                }
            )
    return buffer.getvalue()


def _param_keys(conf: Confirmation) -> list[str]:
    keys: dict[str, None] = {}
    for result in conf.results:
        keys.update(dict.fromkeys(result.candidate.params))
    return list(keys)


def plot(conf: Confirmation, path: Path) -> None:
    """One point and 95% interval per config, its seeds as dots; the baseline in another colour."""
    from matplotlib.figure import Figure  # not pyplot: a notebook's backend stays as it is

    ranked = conf.ranked()
    fig = Figure(figsize=(6.4, 0.9 + 0.45 * len(ranked)))
    ax = fig.subplots()
    for y, result in enumerate(ranked):
        iv = result.interval()
        colour = "tab:red" if result.candidate.baseline else "tab:blue"
        ax.errorbar(iv.mean, y, xerr=[[iv.mean - iv.low], [iv.high - iv.mean]], fmt="o", color=colour, capsize=4)
        seeds = result.losses(sorted(result.runs))
        ax.scatter(seeds, [y] * len(seeds), s=10, color="grey", alpha=0.6, zorder=3)
    ax.set_yticks(range(len(ranked)), [r.candidate.label + (" *" if i == 0 else "") for i, r in enumerate(ranked)])
    ax.invert_yaxis()
    ax.set_xlabel(f"final_val_loss (nats): mean, 95% CI and each of {len(conf.seeds)} seeds")
    ax.set_title(f"confirmation of {conf.study_name!r}: * = confirmed winner, baseline in red", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def best_yaml(study: Any, conf: Confirmation) -> str:
    """The confirmed winner's complete trainer config, headed by the evidence for choosing it."""
    winner = conf.ranked()[0]
    cfg = standalone_config(study, winner.candidate.params)
    evidence = "\n".join(f"#   {line.strip()}" for line in summary_lines(conf))
    header = (
        f"# Confirmed winner of study '{study.study_name}': {winner.candidate.label}\n"
        f"# (best mean final_val_loss over fresh seeds, not the single luckiest trial):\n{evidence}\n"
        f"# Run it as-is: python -m picollm.train --config <this file>  (train.seed is the study's own)\n"
    )
    return header + yaml.safe_dump(cfg, sort_keys=False)


def export_confirmation(study: Any, conf: Confirmation, root: str | Path) -> Path:
    """Write confirm.csv, confirm.png and best.yaml (the latter only once some config has a run)."""
    folder = Path(root) / study.study_name
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "confirm.csv", confirm_csv(conf))
    if conf.ranked():
        plot(conf, folder / "confirm.png")
        atomic_write_text(folder / "best.yaml", best_yaml(study, conf))
    return folder


def confirm_and_export(study: Any, s: ConfirmSettings, root: str | Path, workers: int | None = None) -> list[str]:
    """Train what is missing (``workers`` processes: the sweep's layout by default), write the files, return the
    summary lines (a note if nothing can be confirmed)."""
    try:
        conf = confirm_study(study, s, workers)
    except NothingToConfirm as exc:
        return [f"confirmation skipped: {exc}"]
    folder = export_confirmation(study, conf, root)
    return [*summary_lines(conf), f"confirmation: {folder}/confirm.csv, confirm.png; best.yaml is the confirmed winner"]


def export_recorded(study: Any, root: str | Path) -> list[str]:
    """Rewrite the confirmation files from the runs recorded in the study (no training); [] if none."""
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if not stored:
        return []
    try:
        conf = plan(study, ConfirmSettings(**stored))
    except NothingToConfirm:
        return []
    folder = export_confirmation(study, conf, root)
    return [f"confirmation re-exported: {folder}/confirm.csv, confirm.png, best.yaml (confirmed winner)"]
