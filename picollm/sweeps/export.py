"""The one owner of ``results/studies/<study>/``: trials table, ``best.yaml``, figures, the confirmation's files and the
study's W&B summary run, all rebuilt from the study storage alone (so ``sweep.py export`` needs no experiment file)."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any

import optuna

from picollm.config import Config, config_from_dict
from picollm.errors import PicoError, mask_url
from picollm.fileio import atomic_write_json, atomic_write_text, write_json_once
from picollm.sweeps.confirm import (
    Confirmation,
    NothingToConfirm,
    confirm_study,
    held_out,
    plan,
    scored_on_test,
    summary_lines,
    test_lines,
    verdict_lines,
    winners_curse,
)
from picollm.sweeps.experiment import ConfirmSettings, apply_params, stored_settings
from picollm.sweeps.study import (
    OWNER,
    CappedStudy,
    folder_owner,
    refuse_another_studys_folder,
    runs_of,
    trained_base,
)
from picollm.sweeps.trial import FAILED, FINAL, PRUNED_AT, StudyRecord, TrialRecord
from picollm.tracking import flatten, read_summary, resolve_wandb_mode, wait_for_run_file

# Before the searched parameters: what the value is and how precise; after them: where it came from.
VALUE_COLUMNS = ("number", "state", "value", "value_stderr", "value_kind", "metric", "pruned_at_tokens")
RUN_COLUMNS = ("tokens", "duration_s", "run_id", "run_dir", "wandb_run_id", "baseline", "fail_reason")
VALUE_KIND = {"COMPLETE": FINAL, "PRUNED": PRUNED_AT, "FAIL": FAILED}


def _last_intermediate(t: Any) -> tuple[int | None, float | None]:
    if not t.intermediate_values:
        return None, None
    step = max(t.intermediate_values)
    return step, t.intermediate_values[step]


def trial_row(t: Any, metric: str | None) -> dict[str, Any]:
    """One trial as the table shows it: a pruned trial's value is its last intermediate value, marked so."""
    facts, state = TrialRecord.of(t), t.state.name
    summary = read_summary(facts.run_dir)  # for the facts a trial's attrs lack
    metric = facts.metric or metric
    step, last = _last_intermediate(t)
    kind = facts.value_kind or VALUE_KIND.get(state, state.lower())
    value = t.value if state == "COMPLETE" else (last if kind == PRUNED_AT else None)
    stderr = facts.value_stderr
    if stderr is None and state == "COMPLETE" and metric:
        stderr = summary.get(f"{metric}_stderr")
    row = {"number": t.number, "state": state, "value_kind": kind, "value": value, "value_stderr": stderr}
    pruned_at = facts.pruned_at_tokens if facts.pruned_at_tokens is not None else (step if state == "PRUNED" else None)
    row |= {"metric": metric, "pruned_at_tokens": pruned_at}
    row |= t.params
    for key in RUN_COLUMNS:
        row[key] = getattr(facts, key) if getattr(facts, key) not in (None, False) else summary.get(key)
    return row


def trial_rows(study: optuna.Study) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per trial with every searched parameter as a column."""
    facts = StudyRecord.of(study)
    metric = stored_settings(study, facts).metric if facts.settings else None  # None: a study not made by sweep.py
    header = [*VALUE_COLUMNS, *facts.param_keys, *RUN_COLUMNS]
    return header, [trial_row(t, metric) for t in study.trials]


# The confirmed winner's and the baseline's rows: validation and test means over the confirmation's seeds, side by
# side, so the table shows the winner's curse (the search chose on the first, never saw the second).
HELD_OUT_COLUMNS = (
    "confirmed_val_loss",
    "confirmed_val_loss_stderr",
    "test_loss",
    "test_loss_stderr",
    "val_minus_test",
    "val_minus_test_stderr",
)


def trials_csv(study: optuna.Study, conf: Confirmation | None = None) -> str:
    header, rows = trial_rows(study)
    held = held_out_figures(conf) if conf is not None else {}
    if held:
        header = [*header, *HELD_OUT_COLUMNS]
        for row in rows:
            row.update(held.get(row["number"], {}))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def held_out_figures(conf: Confirmation) -> dict[int, dict[str, float]]:
    """Trial number -> its confirmation's mean validation and test losses with their standard errors."""
    figures = {}
    for result in scored_on_test(conf):
        val, test, curse = held_out(result, "final_val_loss"), held_out(result, "test_loss"), winners_curse(result)
        if val is not None and test is not None and curse is not None:
            figures[result.candidate.number] = dict(
                zip(HELD_OUT_COLUMNS, (val.mean, val.stderr, test.mean, test.stderr, *curse), strict=True)
            )
    return figures


def best_trial(study: optuna.Study) -> Any:
    """The lowest value among COMPLETE trials (a pruned trial's intermediate value never wins)."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ValueError("no completed trial yet")
    return min(complete, key=lambda t: (t.value, t.number))


def best_config(study: optuna.Study) -> tuple[Config, Any]:
    """The best trial's complete trainer config, set up to run on its own (not as a trial)."""
    best = best_trial(study)
    return standalone_config(study, best.params), best


def standalone_config(study: optuna.Study, params: dict[str, Any], budget_tokens: int | None = None) -> Config:
    """The complete trainer config of ``params`` as the trials ran it (or at ``budget_tokens``), to run on its own."""
    values: dict[str, Any] = {
        **params,
        "tracking.group": None,
        "tracking.job_type": "train",
        "tracking.name": None,
        "train.progress": True,
        "train.anneal_at": [],  # the sweep's rungs: a run of its own needs none
    }
    if budget_tokens:
        values["train.max_tokens"] = budget_tokens
        values["train.eval_every_tokens"] = budget_tokens
    return apply_params(config_from_dict(trained_base(study)), values)


def recorded_confirmation(study: optuna.Study) -> Confirmation | None:
    """The study's latest confirmation as recorded (no training), or None when it has none with a finished run."""
    stored = StudyRecord.of(study).confirm_settings
    if not stored:
        return None
    try:
        fields = {k: v for k, v in stored.items() if k in ConfirmSettings.__dataclass_fields__}
        conf = plan(study, ConfirmSettings(**fields))
    except NothingToConfirm:
        return None
    return conf if conf.ranked() else None


def best_yaml(study: optuna.Study, conf: Confirmation | None = None) -> str:
    """``best.yaml``: the confirmed winner's config headed by its evidence, or before one the best trial's."""
    conf = conf if conf is not None and conf.ranked() else recorded_confirmation(study)
    run_it = "# Run it as-is: python -m picollm.train --config <this file>"
    if conf is None:
        cfg, best = best_config(study)
        header = (
            f"# Best trial of study '{study.study_name}': trial {best.number}, value {best.value:.6f}, trained at "
            f"{_budget_and_schedule(cfg)}\n{run_it}\n"
        )
        return header + cfg.to_yaml()
    winner = conf.ranked()[0]
    cfg = standalone_config(study, winner.candidate.params, conf.budget_tokens)
    evidence = "\n".join(f"#   {line.strip()}" for line in summary_lines(conf))
    header = (
        f"# Confirmed winner of study '{study.study_name}': {winner.candidate.label}, confirmed at "
        f"{_budget_and_schedule(cfg)}\n"
        f"# (best mean final_val_loss over fresh seeds, not the single luckiest trial):\n{evidence}\n"
        f"{run_it}  (train.seed is the study's own; train.max_tokens is the confirmed budget)\n"
    )
    return header + cfg.to_yaml()


def _budget_and_schedule(cfg: Config) -> str:
    """'600,000 tokens with schedule wsd (decay_fraction 0.2, linear)': what best.yaml trains, said in its header."""
    optim, tokens = cfg.optim, cfg.train.max_tokens
    schedule = optim.schedule + (
        f" (decay_fraction {optim.decay_fraction}, {optim.decay_shape})" if optim.schedule == "wsd" else ""
    )
    budget = f"{tokens:,} tokens" if tokens else "the base config's epochs"
    return f"{budget} with schedule {schedule}"


HISTORY_PLOT = "optimization_history.png"
IMPORTANCES_PLOT = "param_importances.png"
INTERMEDIATE_PLOT = "intermediate_values.png"
STUDY_PLOTS = (HISTORY_PLOT, IMPORTANCES_PLOT, INTERMEDIATE_PLOT)
CONFIRM_PLOT = "confirm.png"


def _plots() -> dict[str, tuple[Any, str | None]]:
    """Optuna's plots by file name (:data:`STUDY_PLOTS`), with the x-axis label each needs (None: Optuna's is right)."""
    from optuna.visualization import matplotlib as vis

    return {
        HISTORY_PLOT: (vis.plot_optimization_history, None),
        IMPORTANCES_PLOT: (vis.plot_param_importances, None),
        # trials report at token counts (block sizes line up), which Optuna labels "Step"
        INTERMEDIATE_PLOT: (vis.plot_intermediate_values, "training tokens"),
    }


def study_figures(study: optuna.Study) -> tuple[dict[str, Any], list[str]]:
    """Optuna's plots as Figures by file name, and a note for each not drawable yet; closed in pyplot."""
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
            _drop_long_legend(ax)
            figure = ax.get_figure()
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            plt.close(figure)
            figures[name] = figure
        except Exception as exc:  # e.g. importances need two finished trials with varied params
            skipped.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return figures, skipped


LEGEND_MAX = 20  # entries; Optuna's intermediate-values plot has one per trial


def _drop_long_legend(ax: Any) -> None:
    """A legend of more than :data:`LEGEND_MAX` trials is taller than the figure (tight_layout then warns and gives
    up) and names no line one can find."""
    legend = ax.get_legend()
    if legend is not None and len(legend.get_texts()) > LEGEND_MAX:
        legend.remove()


def write_figures(study: optuna.Study, folder: Path) -> tuple[list[Path], list[str]]:
    """The study plots as PNGs; a plot that cannot be drawn yet (too few trials) is skipped with a note."""
    figures, skipped = study_figures(study)
    for name, figure in figures.items():
        figure.savefig(folder / name, dpi=110)
    return [folder / name for name in figures], skipped


CONFIRM_COLUMNS = (
    "trial",
    "baseline",
    "seed",
    "final_val_loss",
    "final_val_loss_stderr",
    "test_loss",
    "test_loss_stderr",
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
    writer = csv.DictWriter(buffer, fieldnames=[*CONFIRM_COLUMNS, *_param_keys(conf)], extrasaction="ignore")
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


def plot_confirmation(conf: Confirmation, path: Path) -> None:
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


def stamp_folder(study: CappedStudy, root: str | Path) -> Path:
    """Name the study in ``root/<study>/``'s :data:`OWNER`, where no stamp names it yet, so that another study of its
    name is refused before it trains. Of two studies stamping one folder at once, the first stamp stands and the
    second study is refused. A study from before uids stamps nothing: it has no uid to name."""
    folder = Path(root) / study.study_name
    uid = StudyRecord.of(study).uid
    if uid is None or folder_owner(folder).get("uid") == uid:
        return folder
    _make(folder)
    owner = {"study": study.study_name, "uid": uid, "storage": mask_url(study.storage_url)}
    try:
        if not write_json_once(folder / OWNER, owner) and folder_owner(folder).get("uid") is None:
            atomic_write_json(folder / OWNER, owner)  # a stamp naming no uid names no study
    except OSError as exc:
        raise PicoError(f"cannot write the study's results to {folder}: {exc.strerror}") from None
    refuse_another_studys_folder(folder, study.study_name, uid, study.storage_url, set)  # another stamp came first
    return folder


def _make(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PicoError(f"cannot write the study's results to {folder}: {exc.strerror}") from None


def own_folder(study: CappedStudy, root: str | Path) -> Path:
    """``root/<study>``, refused in one line where it holds another study's results (before anything is written),
    else stamped as this study's."""
    folder = Path(root) / study.study_name
    refuse_another_studys_folder(folder, study.study_name, StudyRecord.of(study).uid, study.storage_url, runs_of(study))
    return stamp_folder(study, root)


def export_study(
    study: CappedStudy, root: str | Path, conf: Confirmation | None = None, figures: bool = True
) -> tuple[Path, list[str]]:
    """Write trials.csv, best.yaml, the figures and a confirmation's csv and png; returns the folder and notes.

    ``figures=False`` (``study.figures``) draws no PNG and removes those an earlier export drew, which would no longer
    show what trials.csv lists."""
    folder = own_folder(study, root)
    _make(folder)
    conf = conf if conf is not None and conf.ranked() else recorded_confirmation(study)
    atomic_write_text(folder / "trials.csv", trials_csv(study, conf))
    notes: list[str] = []
    try:
        atomic_write_text(folder / "best.yaml", best_yaml(study, conf))
    except ValueError:
        notes.append("best.yaml: no completed trial yet")
    if figures:
        notes += write_figures(study, folder)[1]
    else:
        _remove_figures(folder)
    if conf is not None:
        atomic_write_text(folder / "confirm.csv", confirm_csv(conf))
        if figures:
            plot_confirmation(conf, folder / CONFIRM_PLOT)
    return folder, notes


FIGURES = (*STUDY_PLOTS, CONFIRM_PLOT)  # every PNG an export writes


def _remove_figures(folder: Path) -> None:
    """An earlier export's PNGs: without new ones they would show trials that trials.csv no longer matches."""
    for name in FIGURES:
        (folder / name).unlink(missing_ok=True)


def exported(figures: bool) -> str:
    """What an export writes, as the sweep's last line says it."""
    return "trials.csv, best.yaml, figures" if figures else "trials.csv, best.yaml"


def confirm_and_export(
    study: CappedStudy, s: ConfirmSettings, root: str | Path, workers: int | None = None, figures: bool = True
) -> list[str]:
    """Train what the confirmation misses, rewrite the study's files and W&B summary run, return the summary lines."""
    own_folder(study, root)  # before the confirmation trains
    try:
        conf = confirm_study(study, s, workers)
    except NothingToConfirm as exc:
        return [f"confirmation skipped: {exc}"]
    folder, _ = export_study(study, root, conf, figures)
    log_study_run(study, folder, conf)
    written = f"confirm.csv, {CONFIRM_PLOT}" if figures else "confirm.csv"
    return [*summary_lines(conf), f"confirmation: {folder}/{written}; best.yaml is the confirmed winner"]


def log_study_run(study: optuna.Study, folder: Path, conf: Confirmation | None = None) -> str | None:
    """The study's W&B summary run: trial values, the table, figures and the answer; its id, or None if W&B is off."""
    facts = StudyRecord.of(study)
    tracking = facts.base.get("tracking", {})
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
            config=flatten({"study": facts.settings}) | {"space": facts.space},
            settings=wandb.Settings(silent=True, console="off"),
            reinit="create_new",
        )
        _log_study(run, study, folder)
        run.summary.update(answer_summary(study, conf if conf is not None else recorded_confirmation(study)))
        run_id = run.id
        run.finish()
        wait_for_run_file(run)  # run.finish() returns before the run's .wandb file is written
        return run_id
    except Exception as exc:
        warnings.warn(f"W&B study run failed ({type(exc).__name__}: {exc}); the local export is complete", stacklevel=2)
        return None


def _log_study(run: Any, study: optuna.Study, folder: Path) -> None:
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


def answer_summary(study: optuna.Study, conf: Confirmation | None) -> dict[str, Any]:
    """The study's answer as summary keys (``best/<param>``, ``best_trial``, its mean, interval and verdict)."""
    if conf is None:
        try:
            best = best_trial(study)
        except ValueError:  # no completed trial: no answer yet
            return {"answer": "none yet"}
        return {"answer": "best trial", "best_trial": best.number} | {f"best/{k}": v for k, v in best.params.items()}
    winner = conf.ranked()[0]
    iv = winner.interval()
    return (
        {
            "answer": "confirmed winner",
            "best_trial": winner.candidate.number,
            "confirmed/mean": iv.mean,
            "confirmed/ci_low": iv.low,
            "confirmed/ci_high": iv.high,
            "confirmed/seeds": iv.n,
            "confirmed/budget_tokens": conf.budget_tokens,
            "verdict": "\n".join([*verdict_lines(conf), *test_lines(conf)]),
        }
        | _test_summary(conf)
        | {f"best/{k}": v for k, v in winner.candidate.params.items()}
    )


def _test_summary(conf: Confirmation) -> dict[str, float]:
    """The winner's validation and test means (``confirmed/val_loss``, ``confirmed/test_loss``, with stderrs) and
    the baseline's test mean, when the study has a test split."""
    figures = held_out_figures(conf)
    winner, baseline = conf.ranked()[0], next((r for r in conf.results if r.candidate.baseline), None)
    mine = figures.get(winner.candidate.number)
    if mine is None:
        return {}
    summary = {f"confirmed/{k.removeprefix('confirmed_')}": v for k, v in mine.items()}
    if baseline is not None and baseline is not winner and baseline.candidate.number in figures:
        summary["baseline/test_loss"] = figures[baseline.candidate.number]["test_loss"]
    return summary


def _cell(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)
