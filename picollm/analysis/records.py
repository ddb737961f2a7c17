"""Run histories from run records, offline W&B files or the W&B API, as one :class:`RunHistory` for every analysis."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from picollm.errors import DataError, mask_url
from picollm.wandb_offline import read_history, read_run_info

if TYPE_CHECKING:
    import optuna


@dataclass
class RunHistory:
    """The rows of one run, split by kind (step, periodic validation, epoch end)."""

    name: str
    steps: np.ndarray  # step number of each train/loss row
    losses: np.ndarray  # train/loss
    epochs: np.ndarray  # epoch of each train/loss row
    val_steps: np.ndarray  # step of each val/loss row
    val_losses: np.ndarray
    epoch_rows: list[dict[str, Any]] = field(default_factory=list)  # rows with val/epoch_loss
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    val_stderrs: np.ndarray = field(default_factory=lambda: np.zeros(0))  # val/loss_stderr (nan when absent)

    @property
    def run_dir(self) -> Path | None:
        path = Path(self.source)
        return path if path.is_dir() else None

    def val_epoch_loss(self) -> float | None:
        values = [r["val/epoch_loss"] for r in self.epoch_rows if r.get("val/epoch_loss") is not None]
        return min(values) if values else None


def from_rows(
    name: str,
    rows: list[dict[str, Any]],
    config: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
    source: str = "",
) -> RunHistory:
    step_rows = [r for r in rows if r.get("train/loss") is not None]
    val_rows = [r for r in rows if r.get("val/loss") is not None]
    return RunHistory(
        name=name,
        steps=np.array([r["step"] for r in step_rows], dtype=np.int64),
        losses=np.array([r["train/loss"] for r in step_rows], dtype=np.float64),
        epochs=np.array([r.get("epoch", 1) for r in step_rows], dtype=np.int64),
        val_steps=np.array([r["step"] for r in val_rows], dtype=np.int64),
        val_losses=np.array([r["val/loss"] for r in val_rows], dtype=np.float64),
        epoch_rows=[r for r in rows if r.get("val/epoch_loss") is not None],
        val_stderrs=np.array([r.get("val/loss_stderr") for r in val_rows], dtype=np.float64),
        config=config or {},
        summary=summary or {},
        source=source,
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON lines; a truncated last line (a crash mid-write) is skipped with a warning."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            where = "last line" if i == len(lines) - 1 else f"line {i + 1}"
            warnings.warn(f"{path}: {where} is truncated or corrupt; skipped", stacklevel=2)
    return rows


def load_run_dir(path: str | Path) -> RunHistory:
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise DataError(f"{path}: not a run record (no metrics.jsonl)")
    config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}
    name = (config.get("tracking") or {}).get("name") or path.name  # the run's given name, else its id
    return from_rows(name, read_jsonl(metrics), config, summary, str(path))


def load_wandb_file(path: str | Path) -> RunHistory:
    """An offline ``run-<id>.wandb`` file: the same history W&B would show."""
    info = read_run_info(path)
    return from_rows(info.get("name") or Path(path).stem, read_history(path), info.get("config", {}), {}, str(path))


def load_wandb_project(project_path: str, group: str | None = None, api: Any = None) -> list[RunHistory]:
    """Runs of ``ENTITY/PROJECT`` (optionally one group) through the W&B public API."""
    if api is None:
        api = wandb_api()
    filters = {"group": group} if group else {}
    try:
        runs = list(api.runs(project_path, filters=filters))
    except Exception as exc:
        raise DataError(f"cannot read W&B project {project_path}: {type(exc).__name__}: {exc}") from None
    histories = []
    for run in runs:
        rows = list(run.scan_history())
        config = {k: v for k, v in dict(run.config).items() if not k.startswith("_")}
        histories.append(from_rows(run.name, rows, config, dict(run.summary), f"wandb:{project_path}/{run.id}"))
    if not histories:
        raise DataError(f"W&B project {project_path} has no runs" + (f" in group {group}" if group else ""))
    return histories


def wandb_api() -> Any:
    """W&B's public API; without a key (or wandb) that is one line, not W&B's traceback."""
    try:
        import wandb

        return wandb.Api(timeout=30)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot use the W&B API: {detail} (or set WANDB_API_KEY)") from None


def load_study(study_name: str, storage: str) -> Any:
    """A finished or running sweep, opened read-only for analysis."""
    import optuna

    from picollm.sweeps.study import open_storage, quiet_optuna  # optuna: reading run folders needs none

    quiet_optuna()
    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(storage))
    except KeyError:
        raise DataError(f"no study named {study_name!r} in {mask_url(storage)}") from None


def open_studies(storage_url: str, study_name: str | None) -> tuple[Any, list[str]]:
    """A storage and the study names in it to show (one, or all): a missing study is one line."""
    import optuna

    from picollm.sweeps.study import open_storage, quiet_optuna  # optuna: reading run folders needs none

    quiet_optuna()
    storage = open_storage(storage_url)
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    except Exception as exc:
        raise DataError(f"cannot read studies from {mask_url(storage_url)}: {type(exc).__name__}") from None
    if study_name is not None and study_name not in names:
        known = ", ".join(names) or "none"
        raise DataError(f"no study named {study_name!r} in {mask_url(storage_url)} (studies there: {known})")
    if not names:
        raise DataError(f"no studies in {mask_url(storage_url)}")
    return storage, [study_name] if study_name else names


def _complete_trials(study: optuna.Study) -> list[Any]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _run_dir(trial: Any) -> str | None:
    from picollm.sweeps.trial import TrialRecord  # optuna: reading run folders needs none

    return TrialRecord.of(trial).run_dir


def _has_record(trial: Any) -> bool:
    run_dir = _run_dir(trial)
    return bool(run_dir) and Path(run_dir, "metrics.jsonl").is_file()


def load_study_runs(study: optuna.Study) -> list[RunHistory]:
    """The run records of a study's completed trials, in trial order."""
    runs = []
    for trial in filter(_has_record, _complete_trials(study)):
        run = load_run_dir(_run_dir(trial))
        run.name = f"t{trial.number}"
        runs.append(run)
    if not runs:
        raise DataError(f"study {study.study_name!r} has no completed trials with run records on this machine")
    return runs


def unrecorded_trials(study: optuna.Study) -> list[str]:
    """The completed trials :func:`load_study_runs` cannot read, each with where its record was looked for."""
    return [
        f"t{t.number} (no run record at {_run_dir(t) or 'an unrecorded folder'})"
        for t in _complete_trials(study)
        if not _has_record(t)
    ]


def study_report_lines(study: optuna.Study) -> list[str]:
    """The sweep's own summary of a study (counts, tokens spent, best against the baseline)."""
    from picollm.sweeps import report_lines  # optuna: reading run folders needs none

    return report_lines(study)
