"""What W&B shows of a sweep, read back from the offline ``.wandb`` files: runs that compare.

Parallel-coordinates and importance panels need each searched parameter as a top-level config key;
grouping needs ``group`` = study and a ``job_type`` per kind of run; tables need the trial number and
state in each run's summary; the study-level run carries the best value as a min-summary metric.
"""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from picollm import tracking
from picollm.config import load_config
from picollm.sweeps.export import LEGEND_MAX, best_trial, study_figures, trial_rows, trials_csv, write_figures
from picollm.trainer import train
from picollm.wandb_offline import find_run_file, read_run_info

# shared_study is built once per test process: these modules share one
pytestmark = pytest.mark.xdist_group("shared_study")


@pytest.fixture(scope="module")
def study_dir(shared_study: tuple[str, Path]) -> Path:
    return shared_study[1]


def _trials(study_dir: Path) -> list[dict[str, str]]:
    with open(study_dir / "studies" / "t" / "trials.csv") as f:
        return list(csv.DictReader(f))


def test_every_trial_run_carries_dotted_params_group_job_type_and_state(study_dir: Path) -> None:
    rows = _trials(study_dir)
    searched = ("optim.name", "optim.lr", "model.block_size", "model.k")
    assert {r["state"] for r in rows} == {"COMPLETE", "PRUNED"}
    for row in rows:
        info = read_run_info(find_run_file(row["run_dir"]))
        assert (info["group"], info["job_type"], info["name"]) == ("t", "trial", f"t-t{row['number']}")
        for key in searched:
            assert str(info["config"][key]) == row[key], key
        # the data settings survive next to the data summary (a shallow merge used to drop them)
        assert info["config"]["data.tokenizer"] == "bytes" and info["config"]["data.synthetic"] == 400
        assert "data.tinystories" in info["config"] and info["config"]["data_summary.vocab_size"] == 257
        assert info["summary"]["trial_number"] == int(row["number"])
        assert info["summary"]["trial_state"] == row["state"]
        assert info["metrics"]["val/epoch_loss"] == {"step_metric": "epoch", "summary": []}  # W&B's default: last
        if row["state"] == "COMPLETE":  # a trial's summary: the last epoch's loss, and the lowest as best/
            assert info["summary"]["val/epoch_loss"] == pytest.approx(float(row["value"]))
            assert info["summary"]["best/val/epoch_loss"] <= info["summary"]["val/epoch_loss"]


def test_the_study_run_holds_the_best_value_table_and_figures(study_dir: Path) -> None:
    rows = _trials(study_dir)
    (run_file,) = (study_dir / "studies" / "t" / "wandb").glob("*run-*/run-*.wandb")
    info = read_run_info(run_file)
    assert (info["group"], info["job_type"]) == ("t", "summary")
    assert info["metrics"]["best_value"] == {"step_metric": "trial", "summary": ["min"]}
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = min(complete, key=lambda r: float(r["value"]))
    assert info["summary"]["best_value"]["min"] == pytest.approx(float(best["value"]))
    assert info["summary"]["best_trial"] == int(best["number"])
    assert info["summary"]["trials/nrows"] == len(rows)
    assert {"plots/optimization_history/path", "plots/intermediate_values/path"} <= set(info["summary"])
    assert info["config"]["study.name"] == "t"


def _unit_study() -> optuna.Study:
    """Three trials in memory: complete (2.0), pruned with a lower intermediate value (1.5), complete (2.5)."""
    study = optuna.create_study(study_name="u")
    dist = {"optim.lr": FloatDistribution(1e-4, 1e-1, log=True)}
    study.set_user_attr("space", [{"key": "optim.lr"}])
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=2.0, params={"optim.lr": 1e-3}, distributions=dist))
    pruned = create_trial(
        state=TrialState.PRUNED,
        params={"optim.lr": 1e-2},
        distributions=dist,
        intermediate_values={500: 3.0, 1000: 1.5},  # lower than the complete trial, but not final
        user_attrs={"value_stderr": None},
    )
    study.add_trial(pruned)
    done = create_trial(
        state=TrialState.COMPLETE,
        value=2.5,
        params={"optim.lr": 1e-2},
        distributions=dist,
        user_attrs={"value_stderr": 0.01, "metric": "final_val_loss"},
    )
    study.add_trial(done)
    return study


def test_trials_table_marks_pruned_values_and_never_ranks_them_best() -> None:
    study = _unit_study()
    header, rows = trial_rows(study)
    assert header[:7] == ["number", "state", "value", "value_stderr", "value_kind", "metric", "pruned_at_tokens"]
    pruned_row = {k: rows[1][k] for k in ("value_kind", "value", "pruned_at_tokens")}
    assert pruned_row == {"value_kind": "pruned-intermediate", "value": 1.5, "pruned_at_tokens": 1000}
    # a trial that recorded no metric, in a study that recorded no settings: no metric is made up for it
    assert (rows[0]["value_kind"], rows[0]["metric"]) == ("final", None)
    assert (rows[2]["value_stderr"], rows[2]["metric"]) == (0.01, "final_val_loss")
    assert best_trial(study).number == 0
    assert trials_csv(study).splitlines()[2].startswith("1,PRUNED,1.5,,pruned-intermediate,")


def test_the_reports_question_states_only_what_the_study_recorded() -> None:
    from picollm.analysis.sections import study_section
    from picollm.sweeps.trial import record_study

    study = optuna.create_study(study_name="q")  # made by Optuna alone
    assert study_section(study, []).text == ["This study recorded no settings: it was not made by sweep.py."]
    record_study(study, settings={"n_trials": None, "max_tokens": 1_000_000, "sampler": "random"})
    question = study_section(study, []).text[0]  # keys it lacks take their declared defaults
    assert question.startswith("Minimise `final_val_loss` (nats per token) over as many trials as study.max_tokens")
    assert "sampler `random`, pruner `median`" in question


def test_progress_line_reports_a_running_run(synthetic: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    monkeypatch.setattr(tracking, "PROGRESS_EVERY_S", 0.0)
    cfg = load_config(None, [*synthetic, "train.max_steps_per_epoch=12", "train.epochs=1", "tracking.name=p"])
    train(cfg, on_progress=lines.append)
    assert len(lines) >= 10 and lines[-1].startswith("  p: step ")
    assert "train/loss" in lines[-1] and "tokens/s" in lines[-1]


def test_intermediate_values_are_plotted_against_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.figure

    labels: dict[str, str] = {}
    savefig = matplotlib.figure.Figure.savefig

    def spy(self: matplotlib.figure.Figure, path: Path, *args: object, **kwargs: object) -> None:
        labels[Path(path).name] = self.axes[0].get_xlabel()
        savefig(self, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    write_figures(_unit_study(), tmp_path)
    assert labels["intermediate_values.png"] == "training tokens"  # Optuna's own label says "Step"


def _study_of(n: int) -> optuna.Study:
    """``n`` pruned trials, each with two intermediate values: one line (and one legend entry) each."""
    study = optuna.create_study()
    dist = {"optim.lr": FloatDistribution(1e-4, 1e-1, log=True)}
    for i in range(n):
        steps, params = {22_222: 5.0 - i / 100, 66_666: 4.5 - i / 100}, {"optim.lr": 1e-3 * (1 + i)}
        study.add_trial(
            create_trial(state=TrialState.PRUNED, params=params, distributions=dist, intermediate_values=steps)
        )
    return study


@pytest.mark.filterwarnings("error")  # matplotlib: "Tight layout not applied" under a legend taller than the figure
def test_a_study_of_many_trials_plots_its_intermediate_values_without_a_legend_per_trial() -> None:
    figures, skipped = study_figures(
        _study_of(85)
    )  # the target sweep's 85 trials made matplotlib give up on the layout
    assert not skipped and figures["intermediate_values.png"].axes[0].get_legend() is None
    few, _ = study_figures(_study_of(LEGEND_MAX))
    assert len(few["intermediate_values.png"].axes[0].get_legend().get_texts()) == LEGEND_MAX  # these it names
