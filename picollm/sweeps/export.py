"""Export a study to ``results/studies/<study>/``: trials table, best config, figures, W&B summary run.

Everything is rebuilt from the study storage alone (the base config and search space are kept in
the study's user attributes), so ``sweep.py export`` works without the experiment file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import warnings
from pathlib import Path
from typing import Any

import yaml

from picollm.config import config_from_dict
from picollm.fileio import atomic_write_text
from picollm.search import apply_params
from picollm.tracking import flatten, resolve_wandb_mode

# Before the searched parameters: what the value is and how precise; after them: where it came from.
VALUE_COLUMNS = ("number", "state", "value", "value_stderr", "value_kind", "metric", "pruned_at_tokens")
RUN_COLUMNS = ("tokens", "duration_s", "run_id", "run_dir", "wandb_run_id", "baseline", "fail_reason")
VALUE_KIND = {"COMPLETE": "final", "PRUNED": "pruned-intermediate", "FAIL": "failed"}


def _run_summary(run_dir: Any) -> dict[str, Any]:
    """A trial's ``summary.json``, when its run record is on this machine (older studies lack some attrs)."""
    try:
        return json.loads(Path(run_dir, "summary.json").read_text()) if run_dir else {}
    except (OSError, ValueError):
        return {}


def _last_intermediate(t: Any) -> tuple[int | None, float | None]:
    if not t.intermediate_values:
        return None, None
    step = max(t.intermediate_values)
    return step, t.intermediate_values[step]


def trial_row(t: Any, metric: str) -> dict[str, Any]:
    """One trial as the table shows it: a pruned trial's value is its last intermediate value, marked so."""
    attrs, state = t.user_attrs, t.state.name
    summary = _run_summary(attrs.get("run_dir"))
    metric = attrs.get("metric", metric)
    step, last = _last_intermediate(t)
    kind = attrs.get("value_kind") or VALUE_KIND.get(state, state.lower())
    value = t.value if state == "COMPLETE" else (last if kind == "pruned-intermediate" else None)
    stderr = attrs.get("value_stderr")
    if stderr is None and state == "COMPLETE":
        stderr = summary.get(f"{metric}_stderr")
    row = {"number": t.number, "state": state, "value_kind": kind, "value": value, "value_stderr": stderr}
    row |= {"metric": metric, "pruned_at_tokens": attrs.get("pruned_at_tokens", step if state == "PRUNED" else None)}
    row |= t.params
    for key in RUN_COLUMNS:
        row[key] = attrs[key] if attrs.get(key) is not None else summary.get(key)
    return row


def trial_rows(study: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per trial with every searched parameter as a column."""
    param_keys = [p["key"] for p in study.user_attrs.get("space", [])]
    metric = study.user_attrs.get("settings", {}).get("metric", "best_val_loss")
    header = [*VALUE_COLUMNS, *param_keys, *RUN_COLUMNS]
    return header, [trial_row(t, metric) for t in study.trials]


def trials_csv(study: Any) -> str:
    header, rows = trial_rows(study)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def best_trial(study: Any) -> Any:
    """The lowest value among COMPLETE trials (a pruned trial's intermediate value never wins)."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ValueError("no completed trial yet")
    return min(complete, key=lambda t: (t.value, t.number))


def best_config(study: Any) -> tuple[dict[str, Any], Any]:
    """The best trial's complete trainer config, set up to run on its own (not as a trial)."""
    best = best_trial(study)
    return standalone_config(study, best.params), best


def standalone_config(study: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The complete trainer config of ``params`` in this study, as the trials ran it, to run on its own."""
    from picollm.sweeps.studies import trained_base

    raw = apply_params(trained_base(study), params)
    raw["tracking"].update(group=None, job_type="train", name=None)
    raw["train"]["progress"] = True
    return config_from_dict(raw).to_dict()


def best_yaml(study: Any) -> str:
    cfg, best = best_config(study)
    header = (
        f"# Best trial of study '{study.study_name}': trial {best.number}, value {best.value:.6f}\n"
        f"# Run it as-is: python -m picollm.train --config <this file>\n"
    )
    return header + yaml.safe_dump(cfg, sort_keys=False)


def _plots() -> dict[str, tuple[Any, str | None]]:
    """Optuna's plots by file name, with the x-axis label each needs (None: Optuna's own is right)."""
    from optuna.visualization import matplotlib as vis

    return {
        "optimization_history.png": (vis.plot_optimization_history, None),
        "param_importances.png": (vis.plot_param_importances, None),
        # trials report at token counts (block sizes line up), which Optuna labels "Step"
        "intermediate_values.png": (vis.plot_intermediate_values, "training tokens"),
    }


def study_figures(study: Any) -> tuple[dict[str, Any], list[str]]:
    """Optuna's study plots as matplotlib Figures by file name, and a note for each that cannot be drawn yet.

    Each figure is closed in pyplot right away: it can still be saved or shown in a notebook, but
    pyplot neither keeps it alive nor shows it a second time at the end of a notebook cell.
    """
    import matplotlib.pyplot as plt

    figures, skipped = {}, []
    for name, (plot, xlabel) in _plots().items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            ax = ax[0] if hasattr(ax, "__len__") else ax
            if xlabel:
                ax.set_xlabel(xlabel)
            figure = ax.get_figure()
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
    """One W&B run of job_type 'summary' in the study's group: the value of each trial against its
    number (summary: the minimum), the trials table, the best parameters and the figures; None if W&B is off."""
    tracking = study.user_attrs.get("base", {}).get("tracking", {})
    mode = resolve_wandb_mode(tracking.get("wandb", "auto"))
    if mode == "disabled":
        return None
    try:
        import wandb

        run = wandb.init(
            project=tracking.get("project", "picollm"),
            entity=tracking.get("entity"),
            group=study.study_name,
            job_type="summary",
            name=f"{study.study_name}-summary",
            mode=mode,
            dir=str(folder),
            config=flatten({"study": study.user_attrs.get("settings", {})}) | {"space": study.user_attrs.get("space")},
            settings=wandb.Settings(silent=True, console="off"),
            reinit="create_new",
        )
        _log_study(run, study, folder)
        run_id = run.id
        run.finish()
        return run_id
    except Exception as exc:
        warnings.warn(f"W&B study run failed ({type(exc).__name__}: {exc}); the local export is complete", stacklevel=2)
        return None


def _log_study(run: Any, study: Any, folder: Path) -> None:
    import wandb

    run.define_metric("trial")
    for key in ("value", "best_value"):
        run.define_metric(key, step_metric="trial", summary="min")
    best_so_far = None
    for t in study.trials:
        if t.state.name == "COMPLETE":
            best_so_far = t.value if best_so_far is None else min(best_so_far, t.value)
            run.log({"trial": t.number, "value": t.value, "best_value": best_so_far})
    header, rows = trial_rows(study)
    table = wandb.Table(columns=header, data=[[_cell(r.get(c)) for c in header] for r in rows])
    payload: dict[str, Any] = {"trials": table}
    for png in sorted(folder.glob("*.png")):
        payload[f"plots/{png.stem}"] = wandb.Image(str(png))
    run.log(payload)
    with contextlib.suppress(ValueError):  # no completed trial: no best to show
        best = best_trial(study)
        run.summary.update({"best_trial": best.number, **{f"best/{k}": v for k, v in best.params.items()}})


def _cell(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)
