"""picollm from Python: the command lines' functions, with results that show in a notebook.

Why: each function runs the same code as its command line, so a notebook and a shell make the same records and numbers.
Bad input raises :class:`picollm.errors.PicoError` with the one line a command line prints; nothing here calls
``sys.exit``. Tables are DataFrames, figures matplotlib Figures, and every result has an HTML view::

    import picollm
    run = picollm.train(picollm.load_config("experiments/quick.yaml", ["train.max_tokens=20000"]))
    run.plot()
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from picollm.errors import ConfigError, DataError, mask_url
from picollm.storage_url import storage_url
from picollm.threads import choose_layout, fit_threads

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from picollm.config import Config
    from picollm.sweeps import Experiment
    from picollm.sweeps.study import CappedStudy

__all__ = [
    "delete_sweep",
    "evaluate",
    "extend",
    "generate",
    "inspect",
    "load_config",
    "load_sweep",
    "noise",
    "resume",
    "sweep",
    "train",
]

# -- Showing results in a notebook ------------------------------------------------------------


def _figure_html(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"/>'


def _table_html(values: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in values.items())
    return f"<table style='text-align:left'>{rows}</table>"


def _lines_html(lines: Sequence[str]) -> str:
    return "<pre style='white-space:pre-wrap'>" + html.escape("\n".join(lines)) + "</pre>"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _overrides(overrides: Sequence[str] | str) -> list[str]:
    """``"optim.lr=3e-3"`` alone is one override, not a sequence of characters."""
    return [overrides] if isinstance(overrides, str) else list(overrides)


# -- Configs and training ---------------------------------------------------------------------


def load_config(path: str | Path | None, overrides: Sequence[str] | str = ()) -> Config:
    """A trainer config from a YAML file plus dotted ``key=value`` overrides, checked before any work.

    Why: the same precedence as ``--set`` on the command line, so a config tried in a notebook runs unchanged as
    ``python -m picollm.train``. A typo raises :class:`~picollm.errors.ConfigError`. ``path=None`` starts from the
    defaults; ``search:``/``study:`` blocks are ignored (see :func:`sweep`).

        cfg = picollm.load_config("experiments/quick.yaml", ["optim.lr=3e-3", "model.type=lstm"])
    """
    from picollm.config import load_config as load  # yaml: import picollm loads no config

    return load(path, _overrides(overrides))


@dataclass(repr=False)
class TrainResult:
    """One finished (or pruned) run: its record folder, summary, loss history and curves."""

    run_dir: Path
    summary: dict[str, Any]  # summary.json: status, losses, baseline, tokens, run and W&B ids

    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> TrainResult:
        """An existing run record, e.g. one a sweep trial or the command line wrote."""
        run_dir = Path(run_dir)
        return cls(run_dir, json.loads((run_dir / "summary.json").read_text(encoding="utf-8")))

    @property
    def history(self) -> pd.DataFrame:
        """Every row of ``metrics.jsonl``: step rows (train/loss, lr, ...), eval rows, epoch rows."""
        import pandas as pd

        from picollm.analysis.records import read_jsonl  # numpy: import picollm stays light

        return pd.DataFrame(read_jsonl(self.run_dir / "metrics.jsonl"))

    def plot(self) -> Figure:
        """Training loss per step, validation losses and the unigram baseline, as a Figure."""
        from picollm.analysis.figures import draw_losses  # matplotlib: import picollm stays light
        from picollm.analysis.records import load_run_dir  # numpy: import picollm stays light

        return draw_losses(load_run_dir(self.run_dir))

    def _headline(self) -> dict[str, Any]:
        keys = ("status", "best_val_loss", "final_val_loss", "unigram_val_loss", "tokens", "steps", "wall_time_s")
        return {"run_dir": str(self.run_dir), **{k: self.summary.get(k) for k in keys}}

    def __repr__(self) -> str:
        return "TrainResult(" + ", ".join(f"{k}={_fmt(v)}" for k, v in self._headline().items()) + ")"

    def _repr_html_(self) -> str:
        notes = self.summary.get("notes") or []
        return _table_html(self._headline()) + (_lines_html(notes) if notes else "") + _figure_html(self.plot())


def _as_config(cfg: Config | str | Path | None, overrides: Sequence[str] | str) -> Config:
    from picollm.config import Config, apply_overrides, config_from_dict  # yaml: import picollm loads no config

    if isinstance(cfg, Config):
        return config_from_dict(apply_overrides(cfg.to_dict(), _overrides(overrides))) if overrides else cfg
    return load_config(cfg, overrides)


def train(cfg: Config | str | Path | None, overrides: Sequence[str] | str = ()) -> TrainResult:
    """Train one model end to end, exactly as ``python -m picollm.train`` does, and return its result.

    Why: the run's record, W&B run and summary, with the loss history as a DataFrame and the curves as a Figure inline.
    ``cfg`` is a :class:`~picollm.config.Config` or a YAML path (None: the defaults). A loss that stops being finite
    raises :class:`~picollm.errors.ConfigError` naming the record, closed as failed. Interrupting the kernel closes the
    record as ``interrupted``, prints the command that continues it (:func:`resume` does the same), and raises
    ``KeyboardInterrupt``.

        run = picollm.train("experiments/smoke.yaml", ["train.epochs=2"])
        run.history.tail()   # DataFrame of metrics.jsonl
        run.plot()           # Figure: train/loss, val/loss, val/epoch_loss, unigram baseline
    """
    from picollm.tracking import new_run_id  # the trainer imports it too: import picollm stays light
    from picollm.trainer import train as run  # torch: import picollm stays light

    cfg = fit_threads(_as_config(cfg, overrides))
    run_id = new_run_id()
    return _finished(lambda: run(cfg, run_id=run_id), Path(cfg.tracking.out_dir) / run_id)


def resume(run: str | Path | TrainResult) -> TrainResult:
    """Continue a killed or interrupted run from its last checkpoint, in its own record, as ``--resume`` does.

    Why: a run stopped by a crash, a preempted machine or Ctrl-C finishes with the losses it would have had.

        picollm.resume("results/runs/<run_id>")
    """
    from picollm.trainer import resume as go_on  # torch: import picollm stays light

    record = _run_dir(run)
    return _finished(lambda: go_on(record), record)


def extend(run: str | Path | TrainResult, tokens: int) -> TrainResult:
    """A finished ``optim.schedule=wsd`` run continued from the end of its stable phase to ``tokens``, as a new run.

    Why: a longer budget without training the shared stable phase again; what ``--extend-to TOKENS RUN_DIR`` does.

        longer = picollm.extend(run, 600_000)
    """
    from picollm.trainer import extend as go_on  # torch: import picollm stays light

    record = _run_dir(run)
    return _finished(lambda: go_on(record, tokens), None)


def _finished(training: Callable[[], dict[str, Any]], record: Path | None) -> TrainResult:
    """The run's result; a NaN loss as one line naming its record; on Ctrl-C, the command that continues the run."""
    from picollm.trainer import NonFiniteLoss  # torch: import picollm stays light

    try:
        summary = training()
    except KeyboardInterrupt:
        if record is not None and (record / "config.yaml").is_file():
            print(f"run record {record}: python -m picollm.train --resume {record} continues it", file=sys.stderr)
        raise
    except NonFiniteLoss as exc:
        where = f"; run record {record} closed as failed" if record is not None else "; its run record closed as failed"
        raise ConfigError(f"{exc}{where}; try a lower optim.lr or optim.grad_clip") from None
    return TrainResult.from_run_dir(summary["run_dir"])


def _weights(which: str) -> str:
    if which not in ("best", "final"):
        raise ConfigError(f"weights: choose best or final, got {which!r}")
    return which


def _run_dir(run: str | Path | TrainResult) -> Path:
    path = run.run_dir if isinstance(run, TrainResult) else Path(run)
    if not path.is_dir():
        raise DataError(f"run folder not found: {path}")
    return path


# -- Sweeps -----------------------------------------------------------------------------------


@dataclass(repr=False)
class SweepResult:
    """A study after :func:`sweep`: the Optuna study, its trials as a table, the best config, exports."""

    study: CappedStudy  # reopened once the workers are done
    experiment: Experiment  # the file's settings: where exports go, whether they draw figures, its confirm: block
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C or SIGTERM stopped it; what finished is exported and the study resumes

    @property
    def folder(self) -> Path:
        """results/studies/<name>/: trials.csv, best.yaml, figures."""
        return Path(self.experiment.study.out_dir) / self.study.study_name

    @property
    def trials(self) -> pd.DataFrame:
        """One row per trial: number, state, value, every searched parameter, tokens, run record."""
        import pandas as pd

        from picollm.sweeps.export import trial_rows  # optuna: import picollm stays light

        header, rows = trial_rows(self.study)
        return pd.DataFrame(rows, columns=header)

    @property
    def best_config(self) -> dict[str, Any] | None:
        """The best trial's complete trainer config (what ``best.yaml`` holds); None before any completes."""
        from picollm.sweeps.export import best_config  # optuna: import picollm stays light

        try:
            return best_config(self.study)[0].to_dict()
        except ValueError:
            return None

    @property
    def best_yaml(self) -> Path:
        """``best.yaml``: ``picollm.train(result.best_yaml)`` runs the best configuration again."""
        return self.folder / "best.yaml"

    def report(self) -> list[str]:
        """The lines ``sweep.py`` prints: trial counts, tokens spent, the best trial against the baseline."""
        from picollm.sweeps import report_lines  # optuna: import picollm stays light

        return report_lines(self.study)

    def status(self) -> list[str]:
        """What ``sweep.py status`` prints: one line per trial in finishing order, then :meth:`report`."""
        from picollm.sweeps import best_value, trial_line  # optuna: import picollm stays light
        from picollm.sweeps.report import in_finishing_order  # optuna: import picollm stays light

        trials = in_finishing_order(self.study.trials)
        return [*(trial_line(t, best_value(self.study, upto=t)) for t in trials), *self.report()]

    def export(self) -> list[str]:
        """Write the folder's files again from the study, as ``sweep.py export`` does; returns its notes and where.

        Why: after a change to the study outside a sweep (another machine's trials, a deletion), or to draw the figures.
        best.yaml stays the confirmed winner where the study holds a confirmation."""
        from picollm.sweeps.export import export_study  # optuna: import picollm stays light

        folder, notes = export_study(self.study, self.experiment.study.out_dir, figures=self.experiment.study.figures)
        return [*notes, f"exported to {folder}/"]

    def confirm(self, top: int | None = None, seeds: int | None = None, workers: int | None = None) -> list[str]:
        """Train the leader again with fresh seeds, then up to ``top`` configs that cannot be told apart from it and
        the baseline, as ``sweep.py confirm`` does (docs/confirming.md).

        Why: a sweep's best trial is partly the luckiest of many; fresh seeds give the winner a 95% interval and
        paired comparisons. ``top`` and ``seeds`` default to the file's ``confirm:`` block (3 and 3), ``workers`` to
        one per core (up to 8; one per GPU). Returns the summary lines; best.yaml becomes the confirmed winner."""
        from picollm.sweeps.experiment import ConfirmSettings, check_confirm  # optuna: import picollm stays light
        from picollm.sweeps.export import confirm_and_export  # optuna: import picollm stays light

        block = self.experiment.confirm or ConfirmSettings()
        settings = replace(block, top=block.top if top is None else top, seeds=block.seeds if seeds is None else seeds)
        check_confirm(settings)
        s = self.experiment.study
        return confirm_and_export(self.study, settings, s.out_dir, workers, s.figures)

    def plots(self) -> dict[str, Figure]:
        """Optuna's optimisation history, parameter importances and intermediate values as Figures."""
        from picollm.sweeps.export import study_figures  # optuna: import picollm stays light

        return study_figures(self.study)[0]

    def __repr__(self) -> str:
        return f"SweepResult(study={self.study.study_name!r}, folder='{self.folder}')\n" + "\n".join(self.report())

    def _repr_html_(self) -> str:
        figures = "".join(_figure_html(fig) for fig in self.plots().values())
        return (
            f"<h4>study {html.escape(self.study.study_name)}</h4>"
            + _lines_html([*self.report(), *self.notes, f"exports: {self.folder}/"])
            + self.trials.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}")
            + figures
        )


@contextlib.contextmanager
def _own_sigterm() -> Iterator[None]:
    """The sweep turns SIGTERM into a clean stop; a kernel gets its own handler back afterwards."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def sweep(
    experiment: str | Path | Experiment,
    storage: str | None = None,
    n_trials: int | None = None,
    workers: int | None = None,
    overrides: Sequence[str] | str = (),
    study_name: str | None = None,
    timeout_s: float | None = None,
) -> SweepResult:
    """Run, or resume, an Optuna study of trainer runs, exactly as ``python sweep.py`` does.

    Why: a sweep from a notebook cell with its trials, report and plots inline. ``n_trials`` is the study's total of
    finished trials, so calling again resumes. ``storage`` defaults to ``$PICOLLM_STORAGE`` or
    ``sqlite:///results/optuna.db``; ``workers`` defaults to what ``sweep.py`` uses (one per core, up to 8; one per
    GPU), and worker processes need nothing from the notebook.
    Interrupting the kernel exports what finished and raises ``KeyboardInterrupt``; the study stays resumable.

        result = picollm.sweep("experiments/quick.yaml", n_trials=6, overrides=["study.budget_tokens=20000"])
        result.trials        # DataFrame, one row per trial
        result.best_config   # dict; result.best_yaml is the same as a file
    """
    result = run_study(experiment, storage, n_trials, workers, overrides, study_name, timeout_s)
    if result.interrupted:
        print(
            f"interrupted: finished trials are exported to {result.folder}/; call sweep() again to resume",
            file=sys.stderr,
        )
        raise KeyboardInterrupt
    return result


def run_study(
    experiment: str | Path | Experiment,
    storage: str | None = None,
    n_trials: int | None = None,
    workers: int | None = None,
    overrides: Sequence[str] | str = (),
    study_name: str | None = None,
    timeout_s: float | None = None,
) -> SweepResult:
    """:func:`sweep` for the command line too: the same defaults, and an interrupt said in ``interrupted``."""
    from picollm.sweeps import open_study, run_sweep  # optuna: import picollm stays light
    from picollm.sweeps.study import fail_dead_local_trials  # optuna: import picollm stays light

    if workers is not None and workers < 1:
        raise ConfigError("workers must be >= 1")
    storage = storage_url(storage)
    experiment = _experiment(experiment, overrides, study_name, n_trials)
    with _own_sigterm():
        outcome = run_sweep(experiment, storage, workers or choose_layout()[0], timeout_s)
    study = open_study(experiment, storage, create=False)  # reopened: worker processes wrote the trials
    if outcome.interrupted:  # a kernel lives on, so nobody else would fail them
        _fail_left_running(study)
        fail_dead_local_trials(study, experiment.study.max_retry)  # workers stopped before they closed theirs
    return SweepResult(study, experiment, outcome.notes, outcome.interrupted)


def _experiment(
    experiment: str | Path | Experiment, overrides: Sequence[str] | str, study_name: str | None, n_trials: int | None
) -> Experiment:
    """An experiment file read with its overrides, or a loaded one with ``n_trials`` set."""
    from picollm.sweeps import Experiment, load_experiment  # optuna: import picollm stays light

    if n_trials is not None and n_trials < 1:
        raise ConfigError("n_trials must be >= 1")
    if not isinstance(experiment, Experiment):
        return load_experiment(str(experiment), _overrides(overrides), study_name, n_trials)
    if overrides or study_name:
        raise ConfigError("overrides and study_name apply to an experiment file, not to a loaded Experiment")
    if n_trials is not None:
        return replace(experiment, study=replace(experiment.study, n_trials=n_trials))
    return experiment


def load_sweep(
    experiment: str | Path | Experiment,
    storage: str | None = None,
    overrides: Sequence[str] | str = (),
    study_name: str | None = None,
    n_trials: int | None = None,
) -> SweepResult:
    """The experiment's study as it stands, trained by nobody here: what ``sweep.py status``, ``export`` and
    ``confirm`` open.

    Why: to read a study that runs elsewhere (other workers, Slurm jobs) or finished earlier, and to export or confirm
    it. Nothing is created: a study that does not exist is one line. ``n_trials`` is the study's total, as the run
    that made it was given it (a file with ``n_trials: null`` and no ``max_tokens`` needs it).

        result = picollm.load_sweep("experiments/quick.yaml")
        print("\\n".join(result.status()))
    """
    from picollm.sweeps import open_study  # optuna: import picollm stays light

    experiment = _experiment(experiment, overrides, study_name, n_trials)
    return SweepResult(open_study(experiment, storage_url(storage), create=False), experiment)


def delete_sweep(
    study_name: str, storage: str | None = None, files: bool = False, ask: Callable[[str], bool] | None = None
) -> list[str]:
    """Delete a study from its storage, as ``sweep.py delete`` does; ``files`` removes its results folder too.

    Why: to start a study of that name over (a study refuses a run that asks another question). ``ask`` gets what
    would be deleted ("study 'quick' (6 trials: 6 complete) from sqlite:///... and results/studies/quick/") and may
    refuse, which deletes nothing and returns []. Returns the lines saying what was deleted and what was kept: run
    records and W&B runs are never deleted.

        print("\\n".join(picollm.delete_sweep("quick", files=True)))
    """
    from picollm.sweeps.study import delete_stored, find_study  # optuna: import picollm stays light

    storage = storage_url(storage)
    found = find_study(study_name, storage)
    folder = found.export_dir if files else None
    what = f"study {study_name!r} ({found.summary()}) from {mask_url(storage)}" + (f" and {folder}/" if folder else "")
    if ask is not None and not ask(what):
        return []
    delete_stored(found)
    if folder is not None:
        shutil.rmtree(folder)
    kept = [f"the run records in {found.runs_dir}/ (named {study_name}-...)", "any W&B runs"]
    if found.export_dir is not None and folder is None:
        kept.append(
            f"{found.export_dir}/ (a new study named {study_name!r} will not write over it: move it away, "
            "or delete with --files next time)"
        )
    if found.other_dir is not None:
        kept.append(f"{found.other_dir}/ (another study's results)")
    return [f"deleted {what}", f"kept: {'; '.join(kept)}"]


def _fail_left_running(study: CappedStudy) -> None:
    """Fail the trials an interrupted sweep left RUNNING in this process: a kernel lives on, so nobody else would."""
    from optuna.trial import TrialState

    from picollm.sweeps.trial import INTERRUPTED, TrialRecord, record_stored  # optuna: import picollm stays light

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = TrialRecord.of(trial).worker or ""
        if not worker or worker.endswith(f":{os.getpid()}"):
            record_stored(study.storage, study.trial_id(trial.number), fail_reason=INTERRUPTED)
            study.tell(trial.number, state=TrialState.FAIL)


# -- Reading runs: evaluation, noise, inspection, generation ----------------------------------


def evaluate(
    run: str | Path | TrainResult,
    overrides: Sequence[str] | str = (),
    block_size: int | None = None,
    weights: str = "best",
    device: str = "cpu",
) -> dict[str, Any]:
    """Score a run's saved weights on its validation split, as ``python -m picollm.evaluate`` does.

    Why: a loss (nats per token) with its standard error on a fixed token set, comparable across runs and models.
    ``overrides`` change the data, ``block_size`` the context; ``weights`` is ``best`` or ``final``; ``device`` is
    cpu, cuda, cuda:N, mps or auto. Returns ``{"loss", "stderr", "tokens", "documents", "context", ...}``.

        picollm.evaluate(run)["loss"]
    """
    from picollm.scoring import evaluate_run  # torch: import picollm stays light

    return evaluate_run(_run_dir(run), _overrides(overrides), block_size, _weights(weights), device)


@dataclass(repr=False)
class NoiseResult:
    """The noisy-loss analysis of some runs: per-run results, the verdict, and the figures."""

    runs: list[dict[str, Any]]
    verdict: str
    figures: list[Figure]

    @property
    def epochs(self) -> pd.DataFrame:
        """Each run's epoch means with 95% intervals (autocorrelation-corrected) and step counts."""
        import pandas as pd

        return pd.DataFrame([{"run": r["run"], **e} for r in self.runs for e in r["epochs"]])

    def _lines(self) -> list[str]:
        per_run = [r["verdict"] for r in self.runs]
        return per_run if len(per_run) == 1 else [*per_run, "", self.verdict]

    def __repr__(self) -> str:
        return "\n".join(self._lines())

    def _repr_html_(self) -> str:
        return _lines_html(self._lines()) + "".join(_figure_html(fig) for fig in self.figures)


def noise(*runs: str | Path | TrainResult, simulate: bool = True) -> NoiseResult:
    """Is an epoch-to-epoch rise of the training loss real, or noise? As ``analyze.py noise`` answers it.

    Why: with short epochs an epoch's mean loss often rises although the model improves. Returns each epoch's mean with
    a 95% interval, the probability of a false rise, the epoch length that shows the trend, a verdict and figures.

        result = picollm.noise(short_run, long_run)
        result.epochs        # DataFrame of epoch means and intervals
    """
    from picollm.analysis.figures import draw_false_increase, draw_noise  # matplotlib: import picollm stays light
    from picollm.analysis.noise import analyze_noise, overall_verdict  # scipy: import picollm stays light
    from picollm.analysis.records import load_run_dir  # numpy: import picollm stays light

    if not runs:
        raise ConfigError("noise() needs at least one run record")
    histories = [load_run_dir(_run_dir(run)) for run in runs]
    try:
        results = [analyze_noise(h, simulate=simulate) for h in histories]
    except ValueError as exc:
        raise DataError(str(exc)) from None
    figures = [draw_noise(h, r) for h, r in zip(histories, results, strict=True)]
    figures.append(draw_false_increase(results))
    return NoiseResult(results, overall_verdict(results), figures)


@dataclass(repr=False)
class InspectResult:
    """What a model received and predicted at one position, against plain token counting."""

    data: dict[str, Any]  # what ``analyze.py inspect`` writes to inspect.json

    @property
    def top(self) -> pd.DataFrame:
        """The model's top-k next tokens with their probabilities."""
        import pandas as pd

        return pd.DataFrame(self.data["top"])

    @property
    def token_frequencies(self) -> pd.DataFrame:
        """The most frequent training tokens and their share of all training tokens."""
        import pandas as pd

        return pd.DataFrame(self.data["token_frequencies"])

    @property
    def figures(self) -> list[Figure]:
        """Bars of the top-k next-token probabilities and of the corpus' token frequencies."""
        from picollm.analysis.figures import draw_bars  # matplotlib: import picollm stays light

        d = self.data
        return [
            draw_bars(
                [t["token"] for t in d["top"]],
                [t["prob"] for t in d["top"]],
                f"top-{len(d['top'])} next tokens after position {d['position']}",
                "probability",
            ),
            draw_bars(
                [t["token"] for t in d["token_frequencies"]],
                [t["share"] for t in d["token_frequencies"]],
                "most frequent training tokens",
                "share of training tokens",
            ),
        ]

    def __repr__(self) -> str:
        from picollm.analysis.diagnose import inspect_lines  # torch: import picollm stays light

        return "\n".join(inspect_lines(self.data))

    def _repr_html_(self) -> str:
        return _lines_html([repr(self)]) + "".join(_figure_html(fig) for fig in self.figures)


def inspect(
    run: str | Path | TrainResult,
    position: int | None = None,
    top: int = 10,
    batch: int = 0,
    weights: str = "best",
) -> InspectResult:
    """What does the model see and predict at one position? As ``analyze.py inspect`` shows it.

    Why: a loss near the unigram baseline means the model only learned token frequencies. Returns the decoded window,
    the model's ``top`` next tokens, the corpus' most frequent tokens, the loss beside the baseline, and a warning when
    one token is the top guess almost everywhere.

        result = picollm.inspect(run, position=20)
        result.top           # DataFrame: token, id, prob
    """
    from picollm.analysis.diagnose import inspect_run  # torch: import picollm stays light

    return InspectResult(inspect_run(_run_dir(run), batch, position, top, _weights(weights)))


def generate(
    run: str | Path | TrainResult,
    prompt: str = "Once upon a time",
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = 0.95,
    greedy: bool = False,
    seed: int = 0,
    weights: str = "best",
) -> str:
    """Continue ``prompt`` with a trained run's weights, as ``python -m picollm.generate`` does.

    Why: reading samples is the quickest check that a model learned text. ``greedy``, or temperature, top-k and top-p
    sampling; a fixed ``seed`` repeats a sample. Returns the continuation only.

        print(picollm.generate(run, "Once upon a time", max_new_tokens=60, top_p=0.9))
    """
    from picollm.checkpoint import load_run  # torch: import picollm stays light
    from picollm.sampling import Sampling, check_sampling, generate_text  # torch: import picollm stays light

    sampling = Sampling(max_new_tokens, temperature, top_k, top_p, greedy)
    check_sampling(sampling)
    model, tokenizer = load_run(_run_dir(run), _weights(weights))
    return generate_text(model, tokenizer, prompt, sampling, seed)
