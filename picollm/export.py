"""Export a study to ``results/studies/<study>/``: trials table, best config, figures, W&B summary run.

Everything is rebuilt from the study storage alone (the base config and search space are kept in
the study's user attributes), so ``sweep.py export`` works without the experiment file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import warnings
from pathlib import Path
from typing import Any

import yaml

from picollm.config import config_from_dict
from picollm.fileio import atomic_write_text
from picollm.search import apply_params
from picollm.tracking import resolve_wandb_mode

TRIAL_COLUMNS = (
    "number",
    "state",
    "value",
    "tokens",
    "duration_s",
    "wandb_run_id",
    "run_dir",
    "baseline",
    "fail_reason",
)


def trial_rows(study: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per trial with every searched parameter as a column."""
    param_keys = [p["key"] for p in study.user_attrs.get("space", [])]
    header = [*TRIAL_COLUMNS[:3], *param_keys, *TRIAL_COLUMNS[3:]]
    rows = []
    for t in study.trials:
        row = {"number": t.number, "state": t.state.name, "value": t.value, **t.params}
        for key in TRIAL_COLUMNS[3:]:
            row[key] = t.user_attrs.get(key)
        rows.append(row)
    return header, rows


def trials_csv(study: Any) -> str:
    header, rows = trial_rows(study)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def best_config(study: Any) -> tuple[dict[str, Any], Any]:
    """The best trial's complete trainer config, set up to run on its own (not as a trial)."""
    best = study.best_trial
    raw = apply_params(study.user_attrs["base"], best.params)
    raw["tracking"].update(group=None, job_type="train", name=None)
    raw["train"]["progress"] = True
    return config_from_dict(raw).to_dict(), best


def best_yaml(study: Any) -> str:
    cfg, best = best_config(study)
    header = (
        f"# Best trial of study '{study.study_name}': trial {best.number}, value {best.value:.6f}\n"
        f"# Run it as-is: python -m picollm.train --config <this file>\n"
    )
    return header + yaml.safe_dump(cfg, sort_keys=False)


def _plots() -> dict[str, Any]:
    from optuna.visualization import matplotlib as vis

    return {
        "optimization_history.png": vis.plot_optimization_history,
        "param_importances.png": vis.plot_param_importances,
        "intermediate_values.png": vis.plot_intermediate_values,
    }


def study_figures(study: Any) -> tuple[dict[str, Any], list[str]]:
    """Optuna's study plots as matplotlib Figures by file name, and a note for each that cannot be drawn yet.

    Each figure is closed in pyplot right away: it can still be saved or shown in a notebook, but
    pyplot neither keeps it alive nor shows it a second time at the end of a notebook cell.
    """
    import matplotlib.pyplot as plt

    figures, skipped = {}, []
    for name, plot in _plots().items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            figure = (ax[0] if hasattr(ax, "__len__") else ax).get_figure()
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            plt.close(figure)
            figures[name] = figure
        except Exception as exc:  # e.g. importances need two finished trials with varied params
            skipped.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return figures, skipped


def write_figures(study: Any, folder: Path) -> tuple[list[Path], list[str]]:
    """The study plots as PNGs; a plot that cannot be drawn yet (too few trials) is skipped with a note."""
    figures, skipped = study_figures(study)
    for name, figure in figures.items():
        figure.savefig(folder / name, dpi=110)
    return [folder / name for name in figures], skipped


def export_study(study: Any, root: str | Path) -> tuple[Path, list[str]]:
    """Write trials.csv, best.yaml and figures; returns the folder and notes on what was skipped."""
    folder = Path(root) / study.study_name
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "trials.csv", trials_csv(study))
    notes: list[str] = []
    try:
        atomic_write_text(folder / "best.yaml", best_yaml(study))
    except ValueError:
        notes.append("best.yaml: no completed trial yet")
    _, skipped = write_figures(study, folder)
    return folder, notes + skipped


def log_study_run(study: Any, folder: Path) -> str | None:
    """One W&B run of job_type 'study' with the trials table, best params and plots; None if W&B is off."""
    base = study.user_attrs.get("base", {})
    tracking = base.get("tracking", {})
    mode = resolve_wandb_mode(tracking.get("wandb", "auto"))
    if mode == "disabled":
        return None
    try:
        import wandb

        header, rows = trial_rows(study)
        run = wandb.init(
            project=tracking.get("project", "picollm"),
            entity=tracking.get("entity"),
            group=study.study_name,
            job_type="study",
            name=f"{study.study_name}-study",
            mode=mode,
            dir=str(folder),
            config={"study": study.user_attrs.get("settings", {}), "space": study.user_attrs.get("space", [])},
            settings=wandb.Settings(silent=True, console="off"),
            reinit="create_new",
        )
        table = wandb.Table(columns=header, data=[[_cell(r.get(c)) for c in header] for r in rows])
        payload: dict[str, Any] = {"trials": table}
        for png in sorted(folder.glob("*.png")):
            payload[f"plots/{png.stem}"] = wandb.Image(str(png))
        run.log(payload)
        with contextlib.suppress(ValueError):  # no completed trial: no best to show
            run.summary.update(
                {
                    "best_value": study.best_value,
                    "best_trial": study.best_trial.number,
                    **{f"best/{k}": v for k, v in study.best_params.items()},
                }
            )
        run_id = run.id
        run.finish()
        return run_id
    except Exception as exc:
        warnings.warn(f"W&B study run failed ({type(exc).__name__}: {exc}); the local export is complete", stacklevel=2)
        return None


def _cell(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)
