"""A study in optuna-dashboard on localhost, plus picollm's figures and notes linking trials to their run records.

Figures are study artifacts (uploaded again only when changed); run records are served read-only at ``/picollm/``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref import simple_server

from picollm.analysis.sections import STUDY_FIGURES, study_folder
from picollm.errors import PicoError
from picollm.fileio import atomic_write_json
from picollm.sweeps.export import CONFIRM_PLOT
from picollm.sweeps.trial import TrialRecord
from picollm.tracking import read_summary

if TYPE_CHECKING:
    import optuna

RUN_FILES = ("summary.json", "config.yaml", "meta.json", "metrics.jsonl", "samples.jsonl")
REPORT_FIGURES = {
    "transfer.png": "Does the cheap budget predict the target? Rank correlation and regret by budget",
    "false_increase.png": "P(epoch mean rises although the model improves) by steps per epoch",
    "running_average.png": "Each run's step losses and their running average",
    "compare.png": "Training-loss metrics against the validation loss: which one ranks configs?",
    "top_k.png": "The best run's top next-token probabilities",
}


def figures_to_publish(study: optuna.Study, reports_root: Path) -> list[tuple[Path, str]]:
    """(file, caption) for every figure of the study that exists on this machine, in reading order."""
    folder, report = study_folder(study), reports_root / study.study_name
    found = []
    if folder is not None:
        found += [(folder / name, caption) for name, caption in STUDY_FIGURES.items()]
        found.append((folder / CONFIRM_PLOT, "Confirmation: the best configurations re-run with other seeds"))
    found += [(report / name, caption) for name, caption in REPORT_FIGURES.items()]
    found += [(p, f"Losses of {p.stem.removeprefix('noise_')}") for p in sorted(report.glob("noise_*.png"))]
    return [(path, caption) for path, caption in found if path.is_file()]


def publish_figures(
    study: optuna.Study, study_id: int, figures: list[tuple[Path, str]], store: Any, index_path: Path
) -> list[str]:
    """Upload each figure once per content (``index.json``: sha256 -> artifact id); returns the ids in order."""
    from optuna.artifacts import get_all_artifact_meta, upload_artifact

    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    existing = {meta.artifact_id for meta in get_all_artifact_meta(study)}
    ids = []
    for path, _ in figures:
        digest = f"{study_id}:{hashlib.sha256(path.read_bytes()).hexdigest()}"
        if index.get(digest) not in existing:
            index[digest] = upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=study, mimetype="image/png"
            )
        ids.append(index[digest])
    atomic_write_json(index_path, index)
    return ids


def study_note(
    study: optuna.Study, study_id: int, figures: list[tuple[Path, str]], ids: list[str], has_report: bool
) -> str:
    lines = [f"## {study.study_name}: the figures", ""]
    if has_report:
        lines += [
            "The full report (question, ranking, best config, noise, diagnostics): "
            f"[report.html](/picollm/report/{study.study_name})",
            "",
        ]
    else:
        lines += [
            f"Add the noise, ranking and diagnostics figures: `python analyze.py report --study "
            f"{study.study_name} --html`, then restart the dashboard.",
            "",
        ]
    for (_, caption), artifact_id in zip(figures, ids, strict=True):
        lines += [f"**{caption}**", "", f"![{caption}](/artifacts/{study_id}/{artifact_id})", ""]
    return "\n".join(lines)


def trial_note(study_name: str, trial: Any) -> str:
    """Links from a trial to its run record and W&B run (online), from its user attributes."""
    facts = TrialRecord.of(trial)
    run_dir = facts.run_dir
    summary = read_summary(run_dir)
    lines = [f"### Trial {trial.number}", ""]
    if summary:
        files = " · ".join(f"[{name}](/picollm/run/{study_name}/{trial.number}/{name})" for name in RUN_FILES)
        lines += [f"Run record `{run_dir}`: {files}", ""]
    elif run_dir:
        lines += [f"Run record `{run_dir}` (not on this machine)", ""]
    wandb_id = facts.wandb_run_id or summary.get("wandb_run_id")
    url = facts.wandb_url or summary.get("wandb_url")
    if url:
        lines.append(f"W&B run: [{wandb_id}]({url})")
    elif wandb_id:
        lines.append(f"W&B run `{wandb_id}` (offline: `wandb sync {run_dir}/wandb/offline-run-*` uploads it)")
    return "\n".join(lines)


def write_notes(study: optuna.Study, storage: Any, study_id: int, body: str) -> None:
    """The study note and one note per finished trial; a note is saved only when its text changed."""
    import optuna
    from optuna_dashboard import get_note, save_note

    if get_note(study) != body:
        save_note(study, body)
    for frozen in study.get_trials(deepcopy=False):
        if not frozen.state.is_finished():
            continue
        trial = optuna.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number))
        note = trial_note(study.study_name, frozen)
        if get_note(trial) != note:
            save_note(trial, note)


class PicollmFiles:
    """WSGI middleware: run-record files and the HTML report under ``/picollm/``, the dashboard elsewhere."""

    def __init__(self, app: Any, studies: dict[str, Any], reports_root: Path) -> None:
        self.app, self.studies, self.reports_root = app, studies, reports_root

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        parts = environ.get("PATH_INFO", "").strip("/").split("/")
        if parts[0] != "picollm":
            return self.app(environ, start_response)
        path = self.resolve(parts[1:])
        if path is None or not path.is_file():
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        kind = "text/html" if path.suffix == ".html" else "text/plain"
        start_response("200 OK", [("Content-Type", f"{kind}; charset=utf-8")])
        return [path.read_bytes()]

    def resolve(self, parts: list[str]) -> Path | None:
        """Only known file names of known trials: the URL never names a path on disk."""
        if len(parts) == 2 and parts[0] == "report" and parts[1] in self.studies:
            return self.reports_root / parts[1] / "report.html"
        if len(parts) == 4 and parts[0] == "run" and parts[1] in self.studies and parts[3] in RUN_FILES:
            trials = {str(t.number): t for t in self.studies[parts[1]].get_trials(deepcopy=False)}
            run_dir = TrialRecord.of(trials[parts[2]]).run_dir if parts[2] in trials else None
            return Path(str(run_dir), parts[3]) if run_dir else None
        return None


class _QuietHandler(simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingServer(ThreadingMixIn, simple_server.WSGIServer):
    daemon_threads = True  # a browser's open connections never keep Ctrl-C from exiting


def prepare(storage: Any, study_names: list[str], artifacts: Path, reports_root: Path) -> tuple[Any, dict]:
    """Publish figures and notes for each study; returns the artifact store and the studies by name."""
    import optuna
    from optuna.artifacts import FileSystemArtifactStore

    artifacts.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(artifacts))
    studies = {}
    for name in study_names:
        study = optuna.load_study(study_name=name, storage=storage)
        study_id = storage.get_study_id_from_name(name)
        figures = figures_to_publish(study, reports_root)
        ids = publish_figures(study, study_id, figures, store, artifacts / "index.json")
        has_report = (reports_root / name / "report.html").is_file()
        write_notes(study, storage, study_id, study_note(study, study_id, figures, ids, has_report))
        studies[name] = study
    return store, studies


def make_server(storage: Any, study_names: list[str], port: int, artifacts: Path, reports_root: Path) -> Any:
    """A dashboard server on 127.0.0.1:port (0: any free port); ``serve_forever`` runs it."""
    from optuna_dashboard import wsgi

    store, studies = prepare(storage, study_names, artifacts, reports_root)
    app = PicollmFiles(wsgi(storage, artifact_store=store), studies, reports_root)
    try:
        return simple_server.make_server(
            "127.0.0.1", port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
    except OSError as exc:
        raise PicoError(f"cannot serve on 127.0.0.1:{port} ({exc.strerror}); choose another --port") from None


def serve_in_thread(server: Any) -> threading.Thread:
    """For tests and notebooks: serve until ``server.shutdown()``."""
    thread = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    thread.start()
    return thread
