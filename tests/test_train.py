"""The trainer: learns a learnable task, records everything, is reproducible, refuses bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from picollm import trainer as train_mod
from picollm.checkpoint import load_run
from picollm.cli import run_cli
from picollm.cli import train as train_cli
from picollm.cli.generate import main as generate_main
from picollm.config import load_config
from picollm.device import resolve_device
from picollm.errors import ConfigError
from picollm.wandb_offline import find_run_file, read_history, read_run_info
from tests.conftest import ROOT, SAMPLE, needs_sample


def read_metrics(run_dir: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


LEARNING_BUDGETS = {
    "transformer": ["model.positions=rotary", "train.epochs=8", "optim.lr=3e-3"],
    "kgram": ["train.epochs=8", "optim.lr=3e-3"],
    "lstm": ["train.epochs=12", "optim.lr=1e-2", "model.hidden_size=128"],
}


@pytest.mark.parametrize("model_type", sorted(LEARNING_BUDGETS))
def test_each_model_learns_the_synthetic_task(model_type: str, synthetic: list[str]) -> None:
    """Counting sequences are predictable: the loss must fall far below the unigram entropy."""
    cfg = load_config(None, [*synthetic, f"model.type={model_type}", *LEARNING_BUDGETS[model_type]])
    summary = train_mod.train(cfg)
    assert summary["status"] == "finished"
    assert summary["best_val_loss"] < 0.6 * summary["unigram_entropy"], summary


def test_same_seed_gives_identical_losses(synthetic: list[str]) -> None:
    def losses(seed: int) -> list[float]:
        cfg = load_config(None, [*synthetic, "train.max_steps_per_epoch=8", "train.epochs=2", f"train.seed={seed}"])
        return [r["train/loss"] for r in read_metrics(train_mod.train(cfg)["run_dir"]) if "train/loss" in r]

    first, second, other = losses(1), losses(1), losses(2)
    assert first == second  # bit for bit
    assert first != other


@needs_sample
@pytest.mark.parametrize("model_type", ["kgram", "lstm", "transformer"])
def test_sample_run_records_locally_and_in_offline_wandb(model_type: str, out: list[str]) -> None:
    cfg = load_config(
        ROOT / "experiments" / "base.yaml",
        [
            *out,
            f"data.tinystories={SAMPLE}",
            f"model.type={model_type}",
            "tracking.wandb=offline",
            "model.block_size=32",
            "model.embed_size=32",
            "model.hidden_size=32",
            "train.batch_size=8",
            "train.epochs=2",
            "train.max_steps_per_epoch=6",
            "train.eval_every=3",
            "train.eval_tokens=512",
            "data.val_tokens=2048",
            "train.sample_tokens=5",
            "optim.warmup_steps=2",
        ],
    )
    summary = train_mod.train(cfg)
    run_dir = Path(summary["run_dir"])
    rows = read_metrics(run_dir)
    assert all("step" in r and "epoch" in r for r in rows)
    assert sum("train/loss" in r for r in rows) == 12
    assert sum("val/loss" in r for r in rows) == 4
    assert [r["epoch"] for r in rows if "val/epoch_loss" in r] == [1, 2]
    assert {"config.yaml", "meta.json", "summary.json", "best.pt", "final.pt"} <= {p.name for p in run_dir.iterdir()}
    assert load_config(run_dir / "config.yaml") == cfg
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["versions"]["torch"] == torch.__version__ and meta["device"] == "cpu"

    history = read_history(find_run_file(run_dir))
    keys = set().union(*history)
    assert {"train/loss", "val/loss", "val/epoch_loss", "train/epoch_loss", "step", "epoch"} <= keys
    assert [h["train/loss"] for h in history if "train/loss" in h] == [
        r["train/loss"] for r in rows if "train/loss" in r
    ]
    info = read_run_info(find_run_file(run_dir))
    assert info["config"]["model.type"] == model_type and info["exit_code"] == 0
    assert json.loads((run_dir / "summary.json").read_text())["wandb_complete"] is True


def test_saved_weights_reload_safely_and_generate(synthetic: list[str]) -> None:
    summary = train_mod.train(load_config(None, [*synthetic, "train.max_steps_per_epoch=5"]))
    payload = torch.load(Path(summary["run_dir"]) / "final.pt", weights_only=True)
    assert set(payload) == {"model", "vocab_size", "state_dict"}
    model, tokenizer = load_run(summary["run_dir"], "final")
    assert tokenizer.vocab_size == payload["vocab_size"] == model.head.out_features


def test_nan_loss_stops_the_run_and_is_recorded(synthetic: list[str]) -> None:
    cfg = load_config(None, [*synthetic, "optim.name=sgd", "optim.lr=1e12", "optim.grad_clip=0"])
    with pytest.raises(train_mod.NonFiniteLoss):
        train_mod.train(cfg)
    (run_dir,) = (Path(synthetic[0].split("=", 1)[1])).iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "NonFiniteLoss" in summary["reason"]


def test_a_hook_can_stop_a_run_cleanly(synthetic: list[str]) -> None:
    seen: list[tuple[int, float]] = []

    def prune_on_second(tokens: int, val: float) -> None:
        seen.append((tokens, val))
        if len(seen) == 2:
            raise train_mod.StopRun("pruned", "test pruner")

    cfg = load_config(None, [*synthetic, "train.eval_every_tokens=4096", "train.epochs=5"])
    summary = train_mod.train(cfg, on_eval=prune_on_second)
    assert summary["status"] == "pruned"
    assert [t for t, _ in seen] == [4096, 8192]  # reports land on the token marks, whatever the batch
    assert summary["tokens"] < 5 * 600 * 40


def test_a_prune_at_the_last_report_is_ignored_and_the_run_completes(synthetic: list[str]) -> None:
    """Three reports in a 7,000-token budget, a sweep's 7,000 // 3 tokens apart: the last (at mark 6,999) comes once
    the budget is spent, so pruning there would throw a finished run away; the one before it still stops the run."""
    cfg = load_config(None, [*synthetic, "train.eval_every_tokens=2333", "train.max_tokens=7000", "train.epochs=5"])
    marks: list[int] = []

    def prune_at(last: int) -> object:
        def hook(tokens: int, val: float) -> None:
            marks.append(tokens)
            if tokens >= last:
                raise train_mod.StopRun("pruned", "test pruner")

        return hook

    finished = train_mod.train(cfg, on_eval=prune_at(6999))
    assert marks == [2333, 4666, 6999] and finished["status"] == "finished" and finished["tokens"] >= 7000
    marks.clear()
    assert train_mod.train(cfg, on_eval=prune_at(4666))["status"] == "pruned" and marks == [2333, 4666]


BAD_INPUT = [
    (["--set", "optim.lr=-1"], "optim.lr must be a positive number"),
    (["--set", "optim.name=adamx"], "optim.name: unknown value"),
    (["--set", "model.type=gru"], "model.type: unknown value"),
    (["--set", "model.block_size=0"], "model.block_size must be >= 1"),
    (["--set", "train.batch_size=-2"], "train.batch_size must be >= 1"),
    (["--set", "optim.typo=1"], "unknown key optim.typo"),
    (["--config", "nope.yaml"], "config file not found"),
    (["--set", "data.tinystories=./no/such/folder"], "local dataset folder not found"),
    (["--set", "data.tinystories=null", "--set", "data.input_files=[missing.txt]"], "file not found"),
    (["--set", "data.tinystories=null", "--set", "data.input_files=[{empty}]"], "is empty"),
    (["--set", "data.tinystories=null", "--set", "data.input_files=[{binary}]"], "looks binary"),
    (["--set", "data.tinystories=null", "--set", "data.input_files=[{latin1}]"], "not UTF-8"),
    (
        ["--set", "data.tinystories=null", "--set", "data.synthetic=10", "--set", "model.block_size=100000"],
        "shorter than one window",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_bad_input_exits_2_with_one_line(
    args: list[str], message: str, out: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {"empty": tmp_path / "empty.txt", "binary": tmp_path / "b.bin", "latin1": tmp_path / "l.txt"}
    files["empty"].write_text("\n \n")
    files["binary"].write_bytes(b"\x00\x01\x02 not text")
    files["latin1"].write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    args = [a.format(**files) for a in args]
    argv = [
        *args,
        *[x for o in out for x in ("--set", o)],
        "--set",
        "data.tokenizer=bytes",
        "--set",
        "tracking.wandb=disabled",
    ]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_cli.main, argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing a later run trusts


def test_a_run_that_fails_after_its_record_exists_still_ends_with_summary_json(
    synthetic: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An optimiser torch refuses is one line and exit 2; any failure closes the record as failed."""

    def refuse(model, cfg):
        raise ValueError("Invalid beta parameter at index 0: -0.5")

    monkeypatch.setattr(train_mod, "build_optimizer", refuse)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_cli.main, [x for o in synthetic for x in ("--set", o)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "Invalid beta parameter" in err
    (run_dir,) = Path(synthetic[0].split("=", 1)[1]).iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "Invalid beta parameter" in summary["reason"]

    monkeypatch.undo()
    monkeypatch.setattr(train_mod, "end_epoch", lambda run, losses: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train_mod.train(load_config(None, [*synthetic, "train.max_steps_per_epoch=2"]))
    newest = max(Path(synthetic[0].split("=", 1)[1]).iterdir(), key=lambda p: p.stat().st_mtime)
    summary = json.loads((newest / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["reason"].startswith("ZeroDivisionError") and summary["steps"] == 2


def test_optimizer_settings_torch_refuses_are_one_line(out: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--config", str(ROOT / "experiments" / "smoke.yaml"), "--set", "optim.beta1=-0.5"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_cli.main, [*argv, *[x for o in out for x in ("--set", o)], "--set", "tracking.wandb=disabled"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error: ") and "beta" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("device", ["mps", "cuda:7"])
def test_a_device_this_machine_lacks_is_one_line(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a machine with one GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=f"train.device={device} is not available on this machine"):
        resolve_device(device)
    assert resolve_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--top-k", "0"], "top_k (--top-k) must be >= 1"),
        (["--top-p", "0"], "top_p (--top-p) must be in (0, 1]"),
        (["--max-new-tokens", "0"], "max_new_tokens (--max-new-tokens) must be >= 1"),
        (["--num-samples", "0"], "--num-samples must be >= 1"),
    ],
)
def test_generate_refuses_settings_that_cannot_sample(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(generate_main, [str(tmp_path), *args])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1


def test_generate_names_a_missing_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(generate_main, [str(tmp_path / "no-such-run")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: run folder not found: {tmp_path / 'no-such-run'}"


def test_cli_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "picollm.train", "--set", "optim.lr=0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: optim.lr must be a positive number, got 0.0"
    assert "Traceback" not in proc.stderr
