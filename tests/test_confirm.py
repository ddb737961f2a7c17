"""Confirming a winner: the statistics on known numbers, and an end-to-end confirmation of a tiny study."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pytest
import yaml

import picollm.cli.sweep as sweep_module
from picollm.cli import run_cli
from picollm.errors import ConfigError
from picollm.sweeps.confirm import compare_words, paired_test, t_interval
from picollm.sweeps.experiment import parse_confirm


def test_t_interval_matches_the_textbook_value() -> None:
    iv = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, df=2) = 4.3027
    assert iv.mean == pytest.approx(2.0) and iv.sd == pytest.approx(1.0)
    assert (iv.low, iv.high) == (pytest.approx(2 - 4.302653 / math.sqrt(3)), pytest.approx(2 + 4.302653 / math.sqrt(3)))
    assert math.isnan(t_interval([5.0]).low)


def test_a_known_difference_is_detected_because_the_test_is_paired() -> None:
    """Seed luck moves both configs by up to 0.3 nats; the config difference (0.05) is constant.

    An unpaired look (the two intervals) overlaps, so it could not tell; the paired test must.
    """
    rng = random.Random(0)
    luck = [rng.uniform(-0.3, 0.3) for _ in range(5)]
    better = [4.50 + x for x in luck]
    worse = [4.55 + x + rng.uniform(-0.005, 0.005) for x in luck]
    a, b = t_interval(better), t_interval(worse)
    assert a.high > b.low  # the unpaired intervals overlap
    pair = paired_test(better, worse)
    assert pair.distinguishable and pair.p < 0.001
    assert pair.low < -0.05 + 0.01 and pair.high > -0.05 - 0.01 and pair.high < 0
    assert "beats" in compare_words("trial 3", "trial 0 (baseline)", pair, 5)


def test_no_difference_is_reported_as_cannot_be_told_apart() -> None:
    a = [4.40, 4.52, 4.47, 4.61, 4.44]
    b = [x + d for x, d in zip(a, [0.012, -0.010, 0.004, -0.008, 0.003], strict=True)]
    pair = paired_test(a, b)
    assert not pair.distinguishable and pair.p > 0.5
    assert pair.low < 0 < pair.high
    words = compare_words("trial 7", "trial 2", pair, 5)
    assert "cannot be told apart" in words and "5 seeds" in words


def test_identical_differences_are_certain_and_identical_runs_are_not() -> None:
    assert paired_test([1.0, 2.0], [1.5, 2.5]).p == 0.0
    assert paired_test([1.0, 2.0], [1.0, 2.0]).p == 1.0
    with pytest.raises(ValueError, match="equal lengths"):
        paired_test([1.0], [1.0, 2.0])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"seeds": 1}, "confirm.seeds must be >= 2"),
        ({"top": 0}, "confirm.top must be >= 1"),
        ({"tops": 3}, "unknown key confirm.tops"),
        ({"seeds": "three"}, "confirm.seeds: expected a number"),
        ([3], "confirm: expected a mapping"),
    ],
)
def test_bad_confirm_blocks_are_one_clear_error(raw: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_confirm(raw)


def test_defaults_are_small() -> None:
    s = parse_confirm({})
    assert (s.top, s.seeds) == (3, 3)


def _run_dirs(tmp_path: Path) -> set[str]:
    return {p.name for p in (tmp_path / "runs").iterdir()}


def test_a_tiny_study_is_confirmed_end_to_end_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """run_sweep with a confirm: block re-trains the leader, what cannot be told apart from it and the baseline on 2
    fresh seeds; a re-run trains nothing."""
    from picollm.sweeps import load_experiment, open_study, run_sweep
    from tests.sweeps import write_experiment

    path, storage = (
        write_experiment(tmp_path, study={"n_trials": 3, "budget_tokens": 2048, "figures": True}, train={"threads": 1}),
        f"sqlite:///{tmp_path}/s.db",
    )
    raw = yaml.safe_load(path.read_text())
    raw["confirm"] = {"top": 2, "seeds": 2}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    outcome = run_sweep(load_experiment(str(path), []), storage, workers=1)
    assert any("confirmed winner" in line for line in outcome.notes)
    folder = tmp_path / "studies" / "t"
    rows = list(csv.DictReader((folder / "confirm.csv").open()))
    study = open_study(load_experiment(str(path), []), storage, create=False)
    from picollm.sweeps.confirm import gap_to, leader
    from picollm.sweeps.export import recorded_confirmation

    conf = recorded_confirmation(study)
    first = leader(study)
    expected = {r.candidate.number for r in conf.results}
    assert first.number in expected and 0 in expected  # the leader and the baseline (trial 0)
    assert {int(r["trial"]) for r in rows} == expected and len(rows) == 2 * len(expected)
    leader_runs = [float(r["final_val_loss"]) for r in rows if int(r["trial"]) == first.number]
    margin = 1.96 * math.sqrt(2) * abs(leader_runs[0] - leader_runs[1]) / math.sqrt(2)  # sd of two values
    assert conf.margin == pytest.approx(margin)
    for t in study.trials:  # the shortlist: exactly the other configurations closer than the margin
        gap = gap_to(first, t) if t.number not in (first.number, 0) and t.state.name != "FAIL" else None
        if gap is not None:
            assert (t.number in expected) == (gap[1] < margin), (t.number, gap, margin)
    assert {int(r["seed"]) for r in rows} == {1338, 1339}  # fresh: the study trained with seed 1337
    assert all(math.isfinite(float(r["final_val_loss"])) for r in rows)
    losses = {(r["trial"], r["seed"]): float(r["final_val_loss"]) for r in rows}
    assert len(set(losses.values())) == len(losses)  # another seed or config: another loss
    winner = min(rows, key=lambda r: float(r["config_mean"]))
    assert winner["rank"] == "1"
    best = (folder / "best.yaml").read_text()
    assert f"Confirmed winner of study 't': trial {winner['trial']}" in best and "95% CI" in best
    assert (folder / "confirm.png").stat().st_size > 1000
    record = yaml.safe_load((Path(rows[0]["run_dir"]) / "config.yaml").read_text())
    assert record["tracking"]["job_type"] == "confirm" and record["tracking"]["group"] == "t"
    assert record["train"]["seed"] == int(rows[0]["seed"])

    from picollm.analysis.sections import confirm_section

    summary, per_run = confirm_section(study, folder).tables  # the report: a row per configuration, then per run
    assert summary.rows[0][1].split()[0] == winner["trial"] and len(summary.rows) == len(expected)
    assert any(row[1] == "0 (baseline)" for row in summary.rows) and len(per_run.rows) == len(rows)

    before = _run_dirs(tmp_path)
    assert sweep_module.main(["confirm", "--config", str(path), "--storage", storage]) == 0
    assert _run_dirs(tmp_path) == before  # everything was recorded: nothing is trained again
    assert "confirmed winner" in capsys.readouterr().out
    assert sweep_module.main(["export", "--config", str(path), "--storage", storage]) == 0
    assert (folder / "best.yaml").read_text() == best  # a re-export keeps the confirmed winner
    with pytest.raises(SystemExit) as exit_info:
        run_cli(sweep_module.main, ["confirm", "--config", str(path), "--storage", storage, "--seeds", "1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: confirm.seeds must be >= 2 (an interval needs two runs), got 1"
    ]

    # One more seed, in two worker processes: only the missing runs train, each scored once, at the end.
    more = ["confirm", "--config", str(path), "--storage", storage, "--seeds", "3", "--workers", "2"]
    assert sweep_module.main(more) == 0
    third = [r for r in csv.DictReader((folder / "confirm.csv").open()) if r["seed"] == "1340"]
    assert {int(r["trial"]) for r in third} == expected
    assert all(math.isfinite(float(r["final_val_loss"])) for r in third)
    assert len(_run_dirs(tmp_path)) == len(before) + len(expected)
    rows = (Path(third[0]["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    assert sum("val/loss" in json.loads(row) for row in rows) == 1
