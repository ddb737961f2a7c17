"""``python -m picollm.evaluate``: a saved run scored on its own or other data, one line, JSON out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from picollm import scoring
from picollm import trainer as train_mod
from picollm.cli import evaluate as evaluate_cli
from picollm.cli import run_cli
from picollm.config import load_config


@pytest.fixture
def compact_run(synthetic: list[str]) -> dict:
    cfg = load_config(None, [*synthetic, "model.type=kgram", "data.compact_vocab=true", "train.max_steps_per_epoch=6"])
    return train_mod.train(cfg)


def test_scores_a_saved_run_like_its_own_final_evaluation(
    compact_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "score.json"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate_cli.main, [compact_run["run_dir"], "--weights", "final", "--out", str(out)])
    assert exit_info.value.code == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out.read_text())
    assert {"loss", "stderr", "tokens", "documents", "context", "val_set"} <= set(result)
    assert result["loss"] == pytest.approx(compact_run["final_val_loss"], abs=1e-5)
    assert result["stderr"] == pytest.approx(compact_run["final_val_loss_stderr"], rel=1e-4)
    assert result["tokens"] == compact_run["val_set"]["full"]["scored_tokens"]
    assert f"{result['loss']:.4f} ± {result['stderr']:.4f}" in line and "context" in line
    assert result["context"]["min_context"] == result["context"]["window"] - result["context"]["stride"]


def test_scores_a_compact_vocabulary_model_on_another_dataset(compact_run: dict) -> None:
    other = scoring.evaluate_run(
        compact_run["run_dir"], ["data.synthetic=0", "data.builtin_stories=200", "data.val_tokens=2000"]
    )
    own = scoring.evaluate_run(compact_run["run_dir"], ["data.val_tokens=2000"])
    assert 2000 <= other["tokens"] + 1 < 3000 and other["stderr"] > 0
    assert other["loss"] > own["loss"] + 1.0  # stories are not counting sequences: far worse, but scored


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "optim.lr=1"], "only data.* keys"),
        (["--set", "data.tokenizer=gpt2"], "trained with bytes ids"),
        (["--block-size", "0"], "--block-size 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    compact_run: dict, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate_cli.main, [compact_run["run_dir"], *args])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1


def test_missing_folder_or_weights_are_one_line(
    synthetic: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        run_cli(evaluate_cli.main, [str(tmp_path / "no-such-run")])
    assert capsys.readouterr().err.strip() == f"error: run folder not found: {tmp_path / 'no-such-run'}"
    no_weights = ["train.max_steps_per_epoch=2", "tracking.save_weights=false"]
    summary = train_mod.train(load_config(None, [*synthetic, *no_weights]))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate_cli.main, [summary["run_dir"]])
    assert exit_info.value.code == 2 and "no saved weights" in capsys.readouterr().err
