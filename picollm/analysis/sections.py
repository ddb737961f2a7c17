"""The sections of a study's report; each builder returns a :class:`~.report.Section`, or None with nothing to show."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from picollm.analysis import diagnose
from picollm.analysis.compare import compare_lines, compare_runs
from picollm.analysis.figures import (
    bar_figure,
    compare_figure,
    false_increase_figure,
    noise_figure,
    transfer_figure,
    windows_figure,
)
from picollm.analysis.noise import analyze_noise, overall_verdict
from picollm.analysis.records import RunHistory, study_report_lines, unrecorded_trials
from picollm.analysis.report import Figure, Report, Section, Table
from picollm.analysis.smoothing import WINDOWS, window_analysis, window_verdict
from picollm.analysis.transfer import TABLE_HEADER, table_rows, transfer_analysis
from picollm.errors import PicoError
from picollm.fileio import atomic_write_json
from picollm.sweeps.confirm import test_lines
from picollm.sweeps.experiment import budget_words, stored_settings
from picollm.sweeps.export import (
    CONFIRM_PLOT,
    HISTORY_PLOT,
    IMPORTANCES_PLOT,
    INTERMEDIATE_PLOT,
    best_trial,
    best_yaml,
    recorded_confirmation,
    trial_rows,
)
from picollm.sweeps.report import short
from picollm.sweeps.study import belongs_to, runs_of
from picollm.sweeps.trial import StudyRecord, TrialRecord

if TYPE_CHECKING:
    import optuna

MIN_STEPS_FOR_NOISE = 8
MAX_RUN_FIGURES = 6  # per-run noise figures (those the verdict names and the best run first); the rest in words


def _describe_param(p: dict[str, Any]) -> str:
    if p.get("type") == "categorical":
        text = "one of " + ", ".join(map(str, p["choices"]))
    else:
        text = f"{p['type']} in [{p['low']:g}, {p['high']:g}]" + (" (log)" if p.get("log") else "")
        text += f", step {p['step']:g}" if p.get("step") else ""
    when = p.get("when")
    return text + (f", when {', '.join(f'{k} in {v}' for k, v in when.items())}" if when else "")


def _data_identity(study: optuna.Study) -> Table:
    """What the trials trained and were scored on: the data settings, and a run's measured data."""
    data = StudyRecord.of(study).base.get("data", {})
    keys = ("tinystories", "max_stories", "input_files", "synthetic", "tokenizer", "compact_vocab", "val_tokens")
    rows = [[f"data.{k}", data.get(k)] for k in keys if k in data]
    for t in study.trials:
        meta_path = Path(str(TrialRecord.of(t).run_dir or ""), "meta.json")
        if meta_path.is_file():
            seen = json.loads(meta_path.read_text()).get("data", {})
            rows += [[f"measured: {k}", seen.get(k)] for k in ("tokenizer", "vocab_size", "train_tokens", "val_tokens")]
            rows.append(["token cache", Path(str(seen.get("cache", ""))).name or None])
            break
    return Table(["setting", "value"], rows, "Data identity (trials compare only on the same data):")


def study_section(study: optuna.Study, counts_lines: list[str]) -> Section:
    """The question the study asks: space, budget, metric, data."""
    facts = StudyRecord.of(study)
    s = stored_settings(study, facts)
    if not facts.settings:
        question = "This study recorded no settings: it was not made by sweep.py."
    else:
        trials = f"{s.n_trials} trials" if s.n_trials is not None else "as many trials as study.max_tokens pays for"
        question = (
            f"Minimise `{s.metric}` (nats per token) over {trials}; sampler `{s.sampler}`, pruner `{s.pruner}`, "
            f"{budget_words(s)}, {s.reports} reports to the pruner."
        )
    text = [question, *counts_lines]
    space = Table(
        ["parameter", "searched over"],
        [[p["key"], _describe_param(p)] for p in facts.space],
        "Search space:",
    )
    return Section("The study", text=text, tables=[space, _data_identity(study)])


def ranking_section(header: list[str], rows: list[dict[str, Any]], params: list[str]) -> Section:
    """Complete trials ranked; pruned trials apart with their last intermediate value; failures with reasons."""
    complete = sorted((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: (r["value"], r["number"]))
    ranked = Table(
        ["rank", "trial", "value", "± stderr", *params, "tokens"],
        [
            [i + 1, r["number"], r["value"], r["value_stderr"], *[r.get(p) for p in params], r["tokens"]]
            for i, r in enumerate(complete)
        ],
        "Completed trials, best first (value = the study's metric on its fixed validation set, data.val_tokens):",
    )
    section = Section("Ranking", tables=[ranked])
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    if pruned:
        section.tables.append(
            Table(
                ["trial", "state", "last intermediate val/loss", "at tokens", *params],
                [
                    [r["number"], "pruned", r["value"], r["pruned_at_tokens"], *[r.get(p) for p in params]]
                    for r in pruned
                ],
                "Pruned trials (not ranked: their value is a periodic val/loss before the budget ran out):",
            )
        )
    failed = [r for r in rows if r["state"] not in ("COMPLETE", "PRUNED")]
    if failed:
        section.tables.append(
            Table(
                ["trial", "state", "reason"],
                [[r["number"], r["state"], r["fail_reason"]] for r in failed],
                "Not finished:",
            )
        )
    return section


def best_config_section(best_yaml: str, best: Any) -> Section:
    return Section(
        "Best configuration",
        text=[
            f"Trial {best.number} (value {best.value:.4f}). Run it as-is: `python -m picollm.train --config best.yaml`."
        ],
        code=best_yaml,
        code_lang="yaml",
        copy_button=True,
    )


def _noise_table(results: list[dict[str, Any]]) -> Table:
    rows = []
    for r in results:
        val = r["validation"]
        rows.append(
            [
                r["run"],
                r["steps_per_epoch"],
                r["step_noise_sigma"],
                r["lag1_autocorrelation"],
                r["p_false_increase"],
                r["share_step_increases"],
                r["share_epoch_increases"],
                val["share_val_loss_increases"],
                val["share_val_epoch_increases"],
            ]
        )
    return Table(
        [
            "run",
            "steps/epoch",
            "sigma",
            "lag-1 rho",
            "P(false increase)",
            "train step rises",
            "train epoch rises",
            "val/loss rises (per eval)",
            "val/epoch_loss rises",
        ],
        rows,
        "Share of rises, step to step and epoch to epoch, for the training loss and the validation loss "
        "(val/loss: a fixed subset every evaluation; val/epoch_loss: the whole split each epoch):",
    )


def _named_runs(verdict: str, runs: list[RunHistory], best: RunHistory | None) -> list[RunHistory]:
    """Every run, those the verdict names and the best run first."""
    named = [r for r in runs if r is best or re.search(rf"(?<![\w.-]){re.escape(r.name)}(?![\w-])", verdict)]
    return named + [r for r in runs if r not in named]


EPOCH_COMPARISON = (("short", 180, 4), ("long", 2, 360))  # the README's measured pair: 720 steps each
COMPARISON_VAL_TOKENS = 4096  # every epoch end scores the whole set: 180 of them at 16k tokens dominate the time


def epoch_comparison_command(config: str) -> str:
    """Two runs of one configuration for the same 720 steps, many short epochs against two long ones, then the test."""
    runs = [
        f"python -m picollm.train --config {config} --set train.max_tokens=null --set train.epochs={epochs} "
        f"--set train.max_steps_per_epoch={steps} --set data.val_tokens={COMPARISON_VAL_TOKENS} "
        f"--set tracking.name={name}-epochs "
        f"--set tracking.out_dir=results/noise-runs/{name}"
        for name, epochs, steps in EPOCH_COMPARISON
    ]
    return "\n".join([*runs, "python analyze.py noise results/noise-runs/short/* results/noise-runs/long/*"])


def _epoch_part(section: Section, runs: list[RunHistory], out_dir: Path, best: RunHistory | None) -> list:
    """The epoch-to-epoch test of runs with several epochs: verdict, table, figures (the first few runs')."""
    results = [analyze_noise(run, simulate=len(runs) <= 4) for run in runs]
    verdict = overall_verdict(results)
    section.text.append(verdict)
    section.tables.append(_noise_table(results))
    fig = false_increase_figure(results, out_dir / "false_increase.png")
    section.figures.append(
        Figure(
            fig,
            "Probability that an epoch's mean training loss rises although the true loss falls, by steps per epoch.",
        )
    )
    by_name = {r["run"]: r for r in results}
    for i, run in enumerate(_named_runs(verdict, runs, best)):
        sub = Section(run.name, text=[by_name[run.name]["verdict"]])
        if i < MAX_RUN_FIGURES:
            path = noise_figure(run, by_name[run.name], out_dir / f"noise_{run.name}.png")
            sub.figures.append(Figure(path, f"Losses of {run.name}."))
        else:
            sub.text.append(f"Its figure: `python analyze.py noise {run.source}`.")
        section.subsections.append(sub)
    return results


def _window_part(runs: list[RunHistory], out_dir: Path) -> tuple[Section, list[dict[str, Any]]]:
    """Every run's step noise against running averages of it, one row and one panel each."""
    results = [window_analysis(run) for run in runs]
    header = ["run", "steps", "epochs", "sigma", "lag-1 rho", "+/-95% one step"]
    header += [f"+/-95% mean of {w}" for w in WINDOWS]
    header += ["trend fall/step (end)", "best window", "its rms error", "val loss +/-95%"]
    rows = [
        [
            r["run"],
            r["steps"],
            r["epochs"],
            r["step_noise_sigma"],
            r["lag1_autocorrelation"],
            *[(r["windows"].get(str(w)) or {}).get("ci95") for w in (1, *WINDOWS)],
            r["end_slope"],
            r["best_window"],
            r["best_window_rms"],
            r["val_loss_ci95"],
        ]
        for r in results
    ]
    fig = windows_figure(runs, results, out_dir / "running_average.png")
    section = Section(
        "Step losses against a running average",
        text=[window_verdict(results)],
        tables=[
            Table(
                header,
                rows,
                "Per run: the noise of one step's loss and of running averages of it (95% half-widths, nats); the "
                "trend's fall per step at the end of the run; the window whose average is the best estimate of the "
                "current loss (smallest root-mean-square of its scatter and its lag behind the falling trend); and "
                "the validation loss's own sampling error for comparison:",
            )
        ],
        figures=[Figure(fig, "Each run's step losses and their running average over its best window.")],
    )
    return section, results


ONE_EPOCH = (
    "Every run here trained for a single epoch (in a sweep: its token budget ends inside the first pass over the "
    "training data), so no epoch mean can rise above another: there is no epoch-to-epoch increase to test. What "
    "the step losses do show is below: how noisy one step's loss is, and how much a running average of W steps "
    "smooths it, which is the noise an epoch of W steps would have to beat. The last subsection runs the epoch "
    "test itself."
)


def noise_section(
    runs: list[RunHistory], out_dir: Path, best: RunHistory | None, config: str, missing: list[str]
) -> tuple[Section | None, dict[str, Any]]:
    """Is an epoch-to-epoch rise real? Runs with several epochs are tested; ``missing`` runs are named, not skipped."""
    usable = [run for run in runs if len(run.losses) >= MIN_STEPS_FOR_NOISE]
    left_out = missing + [
        f"{r.name} ({len(r.losses)} training steps: too few to separate noise from trend)"
        for r in runs
        if r not in usable
    ]
    if not usable:
        return None, {}
    section = Section("Is an epoch-to-epoch increase real?")
    several = [run for run in usable if len(np.unique(run.epochs)) > 1]
    epochs = _epoch_part(section, several, out_dir, best) if several else []
    if not several:
        section.text.append(ONE_EPOCH)
    elif len(several) < len(usable):
        section.text.append(
            f"{len(usable) - len(several)} run(s) trained for a single epoch: no epoch-to-epoch change to test, so "
            "they appear only in the running-average table below."
        )
    total = len(runs) + len(missing)
    section.text.append(
        f"Covers all {total} runs."
        if not left_out
        else f"Covers {len(usable)} of {total} runs; not here: {'; '.join(left_out)}."
    )
    windows, window_results = _window_part(usable, out_dir)
    section.subsections.append(windows)
    section.subsections.append(
        Section(
            "Measure it: many short epochs against few long ones",
            text=[
                "Train one configuration twice for the same 720 steps, 180 epochs of 4 steps and 2 epochs of 360, "
                f"each scored on a {COMPARISON_VAL_TOKENS:,}-token validation set (every epoch end scores it whole), "
                "then test whether the short epochs' averages rise while the model improves (the verdict says when "
                "an increase is noise and how many steps an epoch needs):"
            ],
            code=epoch_comparison_command(config),
            code_lang="bash",
        )
    )
    return section, {"epochs": epochs, "windows": window_results}


def compare_section(runs: list[RunHistory], out_dir: Path) -> tuple[Section | None, dict[str, Any] | None]:
    """Ranking agreement: does a noisy training number pick the same configuration as the validation loss?"""
    try:
        cmp = compare_runs(runs)
    except ValueError:
        return None, None
    fig = compare_figure(cmp["runs"], list(cmp["metrics"]), out_dir / "compare.png")
    section = Section(
        "Which number ranks configurations?",
        code="\n".join(compare_lines(cmp)),
        figures=[Figure(fig, "Each training-loss metric against the validation loss; red: the run it would pick.")],
    )
    return section, cmp


def diagnostics_section(run: RunHistory, out_dir: Path) -> tuple[Section, dict[str, Any] | None]:
    """What the best run predicts: top-k next tokens, the unigram baseline, a collapse warning."""
    title = f"Diagnostics of the best run ({run.name})"
    if run.run_dir is None:
        where = f"its run record ({run.source}) is not a folder on this machine"
        return Section(title, text=[f"No diagnostics: {where}."]), None
    try:
        result = diagnose.inspect_run(run.run_dir)  # looked up here: tests patch it
    except PicoError as exc:
        return Section(title, text=[f"No diagnostics for this run: {exc}."]), None
    fig = bar_figure(
        [t["token"] for t in result["top"]],
        [t["prob"] for t in result["top"]],
        f"top-{len(result['top'])} next tokens after position {result['position']}",
        "probability",
        out_dir / "top_k.png",
    )
    text = [
        f"Input (validation window {result['batch']}): `{result['context'][-200:]!r}`; next token {result['target']}.",
        f"Loss on this window {result['window_loss']:.3f} nats; unigram (counting) baseline "
        f"{result['unigram_val_loss']:.3f}. Its most common top guess is {result['most_common_guess']} at "
        f"{100 * result['most_common_guess_share']:.0f}% of positions.",
    ]
    table = Table(["token", "probability"], [[t["token"], t["prob"]] for t in result["top"]], "Top next tokens:")
    figure = Figure(fig, "The best run's top next-token probabilities at the window's last position.")
    return Section(title, text=text, tables=[table], figures=[figure], warning=result["warning"]), result


def sample_section(run: RunHistory) -> Section | None:
    path = run.run_dir / "samples.jsonl" if run.run_dir else None
    lines = [x for x in path.read_text().splitlines() if x.strip()] if path and path.is_file() else []
    if not lines:
        return None
    last = json.loads(lines[-1])
    return Section(f"A sample from {run.name}", code=f"{last['prompt']}{last['text']}")


def files_section(folders: list[Path], report_files: list[Path]) -> Section:
    """The study's exports and this report's own files (written right after this list is made)."""
    rows = [
        [str(path), f"{path.stat().st_size / 1024:.1f} KiB"]
        for folder in folders
        if folder.is_dir()
        for path in sorted(folder.iterdir())
        if path.is_file() and not path.name.startswith(".") and path not in report_files
    ]
    rows += [[str(path), "this report"] for path in report_files]
    return Section("Exported files", tables=[Table(["file", "size"], rows)])


def study_folder(study: optuna.Study) -> Path | None:
    """Where ``sweep.py`` exported the study (``<study.out_dir>/<name>/``); None where that folder holds another
    study's results (of the same name), whose figures and best.yaml are not this one's."""
    facts = StudyRecord.of(study)
    folder = Path(stored_settings(study, facts).out_dir, study.study_name)
    return folder if belongs_to(folder, facts.uid, runs_of(study)) else None


STUDY_FIGURES = {
    HISTORY_PLOT: "Each trial's value and the best so far.",
    INTERMEDIATE_PLOT: "Validation loss reported to the pruner against training tokens, per trial.",
    IMPORTANCES_PLOT: "How much of the value's variation each searched parameter explains (fANOVA).",
}


def figures_section(study: optuna.Study, folder: Path) -> Section | None:
    """The sweep's own plots, and the confirmation (best configs re-run with other seeds) when present."""
    figures = [Figure(folder / name, caption) for name, caption in STUDY_FIGURES.items() if (folder / name).is_file()]
    confirm = confirm_section(study, folder)
    if not figures:  # study.figures: false drew none
        return confirm
    section = Section("Study figures", figures=figures)
    if confirm is not None:
        section.subsections.append(confirm)
    return section


def confirm_section(study: optuna.Study, folder: Path) -> Section | None:
    """Is the winner still the winner with other seeds? The study's recorded confirmation, as the sweep ranked it."""
    conf = recorded_confirmation(study)
    if conf is None:
        return None
    ranked = conf.ranked()
    unscored = [r for r in conf.results if r.runs and r not in ranked]  # every run of it failed
    params = list(dict.fromkeys(k for r in conf.results for k in r.candidate.params))

    def row(rank: str, r: Any) -> list[Any]:
        scored = r in ranked
        return [
            rank,
            f"{r.candidate.number}" + (" (baseline)" if r.candidate.baseline else ""),
            f"{r.interval().mean:.4f}" if scored else "-",
            f"[{r.interval().low:.4f}, {r.interval().high:.4f}]" if scored else "-",
            len(r.runs),
            *(short(r.candidate.params.get(p)) for p in params),
        ]

    summary = Table(
        ["rank", "trial", "mean final_val_loss", "95% CI over seeds", "runs", *params],
        [*(row(str(i), r) for i, r in enumerate(ranked, 1)), *(row("-", r) for r in unscored)],
        "Each configuration re-trained with fresh seeds, best mean first (best.yaml is the first row):",
    )
    per_run = Table(
        ["trial", "seed", "final_val_loss", "± stderr", "status"],
        [
            [
                r.candidate.number,
                seed,
                _fmt4(run.get("final_val_loss")),
                _fmt4(run.get("final_val_loss_stderr")),
                run.get("status", "-"),
            ]
            for r in conf.results
            for seed, run in sorted(r.runs.items())
        ],
        "Every confirmation run (run folders and W&B ids are in confirm.csv):",
    )
    section = Section("Confirmation", text=test_lines(conf), tables=[summary, per_run])
    if (folder / CONFIRM_PLOT).is_file():
        section.figures.append(Figure(folder / CONFIRM_PLOT, "Confirmation runs."))
    return section


def _fmt4(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def _study_sections(study: optuna.Study) -> tuple[list[Section], str | None]:
    """The study's own sections and the name of its best trial's run (``t<number>``)."""
    header, rows = trial_rows(study)
    params = StudyRecord.of(study).param_keys
    sections = [study_section(study, study_report_lines(study)), ranking_section(header, rows, params)]
    folder = study_folder(study)
    figures = figures_section(study, folder) if folder is not None else None
    sections += [figures] if figures is not None else []
    try:
        best = best_trial(study)
    except ValueError:
        return sections, None
    sections.append(best_config_section(best_yaml(study), best))
    return sections, f"t{best.number}"


TRANSFER_METHOD = (
    "For each token count at which trials reported a validation loss, and for the target: Spearman's rank "
    "correlation between the configurations' losses there and at the target, and the regret of picking the best "
    "there (its target loss minus the best target loss), over the configurations measured at both. A target loss "
    "is the mean of the configuration's confirmation runs at the target when it has any, else its trial's value. "
    "Intervals: 95% percentile bootstrap resampling configurations and their seeds. Numbers in transfer.json."
)


def transfer_section(study: optuna.Study, out_dir: Path) -> tuple[Section, dict[str, Any] | None]:
    """Does the ranking at the cheap budget predict the target's? Always a section: it says why when it cannot tell."""
    title = "Does the cheap budget predict the target?"
    try:
        result = transfer_analysis(study)
    except PicoError as exc:
        return Section(title, text=[f"Not measured: {exc}."]), None
    atomic_write_json(out_dir / "transfer.json", result)
    table = Table(TABLE_HEADER, table_rows(result), "Ranked at each token count against the ranking at the target:")
    section = Section(title, text=[result["verdict"], TRANSFER_METHOD], tables=[table])
    if any(r["spearman"] is not None for r in result["rows"]):
        fig = transfer_figure(result, out_dir / "transfer.png")
        section.figures.append(Figure(fig, "Rank correlation with the target and regret of an early pick, by budget."))
    return section, result


def _epoch_config(study: optuna.Study, best: RunHistory | None) -> str:
    """The config the epoch comparison trains: the study's best.yaml, else the best run's own config."""
    folder = study_folder(study) if study is not None else None
    if folder is not None and (folder / "best.yaml").is_file():
        return str(folder / "best.yaml")
    if best is not None and best.run_dir is not None:
        return str(best.run_dir / "config.yaml")
    return "CONFIG.yaml"


def build_report(
    name: str, runs: list[RunHistory], out_dir: Path, study: optuna.Study | None = None, html: bool = False
) -> Any:
    """Every section that has something to show, in reading order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sections, best_name = _study_sections(study) if study is not None else ([], None)
    scored = [r for r in runs if r.val_epoch_loss() is not None]
    best = next((r for r in runs if r.name == best_name), None) or min(
        scored, key=lambda r: r.val_epoch_loss(), default=None
    )
    transfer, moved = transfer_section(study, out_dir) if study is not None else (None, None)
    missing = unrecorded_trials(study) if study is not None else []
    noise, results = noise_section(runs, out_dir, best, _epoch_config(study, best), missing)
    compare, cmp = compare_section(runs, out_dir) if len(runs) >= 2 else (None, None)
    diagnostics, inspect = diagnostics_section(best, out_dir) if best is not None else (None, None)
    sample = sample_section(best) if best is not None else None
    sections += [s for s in (transfer, noise, compare, diagnostics, sample) if s is not None]
    study_dir = study_folder(study) if study is not None else None
    own = [out_dir / name for name in ("report.md", "report.json", *(("report.html",) if html else ()))]
    sections.append(files_section([d for d in (study_dir, out_dir) if d is not None], own))
    data = {
        "transfer": moved,
        "noise": results.get("epochs"),
        "running_average": results.get("windows"),
        "compare": cmp,
        "inspect": inspect,
        "best_run": best.name if best else None,
    }
    return Report(name, out_dir, sections, data)
