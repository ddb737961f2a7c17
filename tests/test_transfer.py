"""analyze.py transfer: does the ranking at the cheap budget predict the ranking at the target?

Every study here is synthetic (Optuna trials made with known losses), so each answer is known in advance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from scipy import stats

import picollm.cli.analyze as analyze
from picollm.analysis import transfer
from picollm.analysis.render import write_report
from picollm.analysis.report import Report
from picollm.analysis.sections import transfer_section
from picollm.cli import run_cli
from picollm.errors import DataError

optuna.logging.set_verbosity(optuna.logging.WARNING)
DIST = {"x": optuna.distributions.FloatDistribution(0.0, 100.0)}


def make_study(
    storage: str,
    cheap: list[float],
    target: list[float | None],
    budget: int = 60_000,
    target_tokens: int | None = 600_000,
    confirm: dict[int, list[float]] | None = None,
    name: str = "s",
) -> optuna.Study:
    """Trial i reports ``cheap[i]`` at ``budget`` tokens (half of it at half the budget) and, when ``target[i]`` is
    not None, trains to the target with that value; otherwise it stops at the cheap budget. ``confirm`` adds
    confirmation runs at the target: trial -> its seeds' losses."""
    study = optuna.create_study(study_name=name, storage=storage)
    study.set_user_attr("settings", {"budget_tokens": budget, "target_tokens": target_tokens, "metric": "x"})
    end = target_tokens or budget
    for i, (c, t) in enumerate(zip(cheap, target, strict=True)):
        trained = end if t is not None else budget
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": float(i)},
                distributions=DIST,
                value=t if t is not None else c,
                intermediate_values={budget // 2: c + 1.0, budget: c},
                user_attrs={"tokens": trained, "baseline": i == 0},
            )
        )
    for trial, seeds in (confirm or {}).items():
        for seed, loss in enumerate(seeds):
            record = {"trial": trial, "seed": seed, "budget_tokens": end, "final_val_loss": loss, "status": "completed"}
            study.set_user_attr(f"confirm:{trial}-{seed}", record)
    return study


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'o.db'}"


def test_rank_correlation_is_spearman() -> None:
    x = np.arange(8.0)
    assert transfer.rank_correlations(x, x**3)[0] == pytest.approx(1.0)  # monotone, not linear
    assert transfer.rank_correlations(x, -x)[0] == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 30).astype(float), rng.normal(size=30)  # with ties
    assert transfer.rank_correlations(a, b)[0] == pytest.approx(stats.spearmanr(a, b).statistic)
    assert np.isnan(transfer.rank_correlations(np.ones(5), x[:5])[0])  # a constant ranks nothing


def test_regret_is_the_target_cost_of_the_early_pick() -> None:
    assert transfer.regrets(np.array([1.0, 2.0, 3.0]), np.array([5.0, 6.0, 7.0]))[0] == 0.0
    assert transfer.regrets(np.array([3.0, 2.0, 1.0]), np.array([5.0, 6.0, 7.5]))[0] == pytest.approx(2.5)


def test_a_cheap_ranking_that_carries_over(storage: str) -> None:
    study = make_study(storage, cheap=[4.0, 3.0, 5.0, 2.0, 6.0], target=[3.0, 2.5, 3.5, 2.0, 4.0])
    result = transfer.transfer_analysis(study, n_boot=500)
    rows = {r["tokens"]: r for r in result["rows"]}
    assert set(rows) == {30_000, 60_000, 600_000}
    cheap = rows[60_000]
    assert (cheap["n"], cheap["spearman"], cheap["regret"]) == (5, pytest.approx(1.0), 0.0)
    assert cheap["spearman_ci"] == [pytest.approx(1.0), pytest.approx(1.0)]  # one seed each: no other ranking
    assert "Spearman rho 1.00" in result["verdict"] and "costs 0.0000 nats" in result["verdict"]


def test_a_reversed_ranking_costs_the_whole_spread(storage: str) -> None:
    study = make_study(storage, cheap=[1.0, 2.0, 3.0, 4.0], target=[4.0, 3.0, 2.0, 1.0])
    cheap = next(r for r in transfer.transfer_analysis(study, n_boot=200)["rows"] if r["tokens"] == 60_000)
    assert cheap["spearman"] == pytest.approx(-1.0) and cheap["regret"] == pytest.approx(3.0)


def test_confirmation_seeds_set_the_target_loss_and_widen_the_interval(storage: str) -> None:
    cheap, target = [1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0]
    seeds = {i: [t - 2.0, t + 2.0] for i, t in enumerate(target)}  # same means, seeds that overlap
    seeds[4] = [0.5, 0.7]  # trial 4 turns out best at the target
    study = make_study(storage, cheap, target, confirm=seeds)
    (config,) = [c for c in transfer.configurations(study, transfer.budgets_of(study)) if c.trial == 4]
    assert config.target == [0.5, 0.7]
    row = next(r for r in transfer.transfer_analysis(study, n_boot=1000)["rows"] if r["tokens"] == 60_000)
    assert row["regret"] == pytest.approx(1.0 - 0.6)  # picked trial 0 (mean 1.0); the best mean is 0.6
    plain = make_study(storage, cheap, target, name="plain")
    narrow = next(r for r in transfer.transfer_analysis(plain, n_boot=1000)["rows"] if r["tokens"] == 60_000)
    assert narrow["spearman_ci"][0] == pytest.approx(1.0) and row["spearman_ci"][0] < 0.5


def test_no_measurement_at_a_far_target_is_said_in_words(storage: str) -> None:
    study = make_study(storage, cheap=[3.0, 2.0, 4.0, 5.0], target=[None] * 4)
    result = transfer.transfer_analysis(study, n_boot=200)
    assert result["verdict"] == (
        "This study swept at 60,000 tokens for a target of 600,000 and has no measurement at the target: "
        "the ranking may not carry over."
    )
    few = make_study(storage, [3.0, 2.0, 4.0, 5.0], [None] * 4, confirm={1: [2.1], 2: [4.2]}, name="few")
    assert "only 2 configuration(s) measured at both" in transfer.transfer_analysis(few, n_boot=200)["verdict"]


def test_a_study_without_a_separate_target_says_what_it_measures(storage: str) -> None:
    study = make_study(storage, cheap=[3.0, 2.0, 4.0], target=[3.1, 2.2, 4.4], target_tokens=None)
    result = transfer.transfer_analysis(study, n_boot=200)
    assert result["target_tokens"] == 60_000 and "target is its own budget" in result["verdict"]
    assert [r["tokens"] for r in result["rows"]] == [30_000, 60_000]


def test_too_few_trials_is_one_error(storage: str) -> None:
    study = make_study(storage, cheap=[3.0, 2.0], target=[3.0, 2.0])
    with pytest.raises(DataError, match="2 complete trial"):
        transfer.transfer_analysis(study)


def test_cli_prints_the_table_and_saves_json_and_a_figure(
    storage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_study(storage, cheap=[4.0, 3.0, 5.0, 2.0, 6.0], target=[3.0, 2.5, 3.5, 2.0, 4.0])
    out = tmp_path / "rep"
    argv = ["transfer", "--study", "s", "--storage", storage, "--out", str(out), "--bootstrap", "300"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(analyze.main, argv)
    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "n configs" in text and "Spearman rho" in text and "cheap budget" in text
    saved = json.loads((out / "transfer.json").read_text())
    assert [r["n"] for r in saved["rows"]] == [5, 5, 5] and (out / "transfer.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["transfer", "--study", "nope"], "no study named 'nope'"),
        (["transfer", "--study", "s2"], "1 complete trial(s)"),
        (["transfer"], "transfer needs --study NAME"),
        (["transfer", "--study", "s2", "--bootstrap", "5"], "--bootstrap must be at least 100"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    storage: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_study(storage, cheap=[3.0], target=[3.0], name="s2")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(analyze.main, [*argv, "--storage", storage])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_report_section_has_the_table_and_never_stays_silent(storage: str, tmp_path: Path) -> None:
    measured = make_study(storage, cheap=[4.0, 3.0, 5.0, 2.0], target=[3.0, 2.5, 3.5, 2.0])
    section, result = transfer_section(measured, tmp_path)
    assert section.tables[0].rows[1][:3] == ["60,000", "cheap budget", 4] and (tmp_path / "transfer.json").is_file()
    (md,) = write_report(Report("r", tmp_path, [section]))
    assert "## Does the cheap budget predict the target?" in md.read_text() and "](transfer.png)" in md.read_text()
    blind = make_study(storage, cheap=[3.0, 2.0, 4.0, 5.0], target=[None] * 4, name="blind")
    section, _ = transfer_section(blind, tmp_path)
    assert "has no measurement at the target: the ranking may not carry over" in section.text[0]
    empty = make_study(storage, cheap=[3.0], target=[3.0], name="one")
    section, result = transfer_section(empty, tmp_path)
    assert result is None and "1 complete trial(s)" in section.text[0]
