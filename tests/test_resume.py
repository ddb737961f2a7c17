"""Warmup-stable-decay schedules, branched decays, full-state checkpoints, --resume and --extend-to.

The runs are tiny transformers with dropout on synthetic sequences: dropout draws from torch's random state, so a
checkpoint that forgot it, or a branched decay that left it moved, changes every later loss.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import picollm.cli.train as train_cli_module
from picollm import checkpoint
from picollm.cli import run_cli
from picollm.config import OptimConfig, load_config
from picollm.errors import ConfigError, DataError
from picollm.optim import decay_start, lr_at
from picollm.trainer import extend, resume, train
from tests.conftest import ROOT

BUDGET = 20480  # 160 steps of 8 x 16 tokens


def small(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "data.tinystories=null",
        "data.synthetic=300",
        "data.tokenizer=bytes",
        f"data.cache_dir={tmp_path}/cache",
        "model.type=transformer",
        "model.block_size=16",
        "model.embed_size=32",
        "model.num_layers=1",
        "model.n_heads=2",
        "model.dropout=0.1",
        "train.batch_size=8",
        "train.epochs=50",
        "train.eval_every=20",
        "train.eval_tokens=512",
        "train.progress=false",
        "train.checkpoint_every_tokens=1024",
        "tracking.wandb=disabled",
        f"tracking.out_dir={tmp_path}/runs",
        "optim.schedule=wsd",
        "optim.lr=3e-3",
        "optim.warmup_steps=5",
        *extra,
    ]


def run(tmp_path: Path, *extra: str, **kwargs: object) -> dict:
    return train(load_config(None, small(tmp_path, *extra)), **kwargs)


def rows(run_dir: str | Path) -> list[dict]:
    """Every metrics row but the timing, which differs between any two runs."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in lines]


# -- the schedule ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_wsd_is_stable_then_decays_to_the_floor_whatever_the_budget(shape: str) -> None:
    cfg = OptimConfig(lr=1.0, schedule="wsd", warmup_steps=10, decay_fraction=0.2, decay_shape=shape, min_lr_ratio=0.0)
    assert [lr_at(s, 100, cfg) for s in range(10)] == [(s + 1) / 10 for s in range(10)]  # the warmup
    start = decay_start(100, cfg)
    assert start == 80
    assert all(lr_at(s, 100, cfg) == 1.0 for s in range(10, start))  # stable
    decay = [lr_at(s, 100, cfg) for s in range(start, 100)]
    assert decay[0] == 1.0 and all(a > b for a, b in itertools.pairwise(decay)) and decay[-1] < 0.3
    for longer in (101, 160, 1000):  # a longer run is the same run up to this one's decay: it can be branched
        assert all(lr_at(s, longer, cfg) == lr_at(s, 100, cfg) for s in range(start))


def test_the_decay_shapes_differ_as_named() -> None:
    mid = {
        s: lr_at(90, 100, OptimConfig(lr=1.0, schedule="wsd", decay_shape=s, min_lr_ratio=0.0))
        for s in ("linear", "cosine", "1-sqrt")
    }
    assert mid["linear"] == pytest.approx(0.5)
    assert mid["cosine"] == pytest.approx(0.5)
    assert mid["1-sqrt"] == pytest.approx(1 - math.sqrt(0.5))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.decay_shape=square", "optim.decay_shape: unknown value 'square'"),
        ("optim.decay_fraction=0", r"optim.decay_fraction must be in \(0, 1\)"),
        ("optim.decay_fraction=1", r"optim.decay_fraction must be in \(0, 1\)"),
        ("optim.schedule=wsdd", "optim.schedule: unknown value"),
    ],
)
def test_impossible_wsd_settings_are_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["optim.schedule=wsd", override])


# -- a decay branched from the stable phase --------------------------------------------------------
def test_a_branched_decay_scores_the_shorter_run_exactly_and_leaves_no_trace(tmp_path: Path) -> None:
    long = run(tmp_path, f"train.max_tokens={BUDGET}", "train.anneal_at=[6144]")
    short = run(tmp_path, "train.max_tokens=6144")
    plain = run(tmp_path, f"train.max_tokens={BUDGET}")
    assert long["annealed_val_loss"]["6144"]["loss"] == short["final_val_loss"]  # bit for bit
    without = [r for r in rows(long["run_dir"]) if "val/annealed_loss" not in r]
    assert without == rows(plain["run_dir"])  # the long run went on as if nothing had happened
    assert long["final_val_loss"] == plain["final_val_loss"]
    assert long["final_val_loss"] < short["final_val_loss"]  # more tokens learn more: the task is learnable


def test_anneal_at_needs_a_stable_phase_and_a_budget_inside_the_run() -> None:
    with pytest.raises(ConfigError, match=r"needs optim\.schedule=wsd"):
        load_config(None, ["optim.schedule=cosine", "train.max_tokens=1000", "train.anneal_at=[500]"])
    with pytest.raises(ConfigError, match="not between 0 and the run's budget"):
        load_config(None, ["optim.schedule=wsd", "train.max_tokens=1000", "train.anneal_at=[1000]"])


# -- resume and extend -------------------------------------------------------------------------------
KILL_AT_STEP = 77  # mid-epoch (37 steps an epoch), between two checkpoints (every 8 steps)

KILLED_CHILD = """
import os, signal, sys
sys.path.insert(0, {root!r})
import picollm.trainer as trainer
from picollm.config import load_config

one_step = trainer.one_step

def step_then_die(run, batch):
    if run.step == {kill}:
        os.kill(os.getpid(), signal.SIGKILL)
    return one_step(run, batch)

trainer.one_step = step_then_die
trainer.train(load_config(None, {overrides!r}), run_id="killed")
"""


def test_a_run_killed_mid_epoch_resumes_to_the_same_losses_bit_for_bit(tmp_path: Path) -> None:
    overrides = small(tmp_path, f"train.max_tokens={BUDGET}")
    whole = train(load_config(None, overrides))
    child = KILLED_CHILD.format(root=str(ROOT), kill=KILL_AT_STEP, overrides=overrides)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    killed = tmp_path / "runs" / "killed"
    assert not (killed / "summary.json").exists()
    assert len(list((killed / "checkpoints").glob("step-*.pt"))) == 2  # train.keep_checkpoints
    resumed = resume(killed)
    assert rows(killed) == rows(whole["run_dir"])  # every loss, lr, gradient norm and evaluation
    assert resumed["final_val_loss"] == whole["final_val_loss"] and resumed["steps"] == whole["steps"]
    meta = json.loads((killed / "meta.json").read_text())
    assert meta["resumes"][0]["at_step"] < KILL_AT_STEP and "started" in meta  # the first start is kept


def train_cli(*argv: str) -> int | str | None:
    """``python -m picollm.train ARGV``'s exit code, run here: a fresh interpreter would import torch again."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_cli_module.main, list(argv))
    return exit_info.value.code


def test_the_cli_resumes_a_killed_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overrides = small(tmp_path, "train.max_tokens=6144")
    child = KILLED_CHILD.format(root=str(ROOT), kill=30, overrides=overrides)
    subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300, check=False)
    killed = str(tmp_path / "runs" / "killed")
    assert train_cli("--resume", killed) == 0
    assert json.loads((tmp_path / "runs" / "killed" / "summary.json").read_text())["status"] == "finished"
    assert train_cli("--extend-to", "8192", killed) == 0  # a longer budget
    capsys.readouterr()
    # Refusals happen before any training, in one line.
    below = "--extend-to 4,096: the run's budget is train.max_tokens=6144; extend to more tokens than that"
    finished = f"{killed}: the run finished; --extend-to TOKENS trains it further"
    for argv, line in [(["--extend-to", "4096", killed], below), (["--resume", killed], finished)]:
        assert train_cli(*argv) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"error: {line}"]


def test_a_resumed_run_goes_on_in_the_same_offline_wandb_run(tmp_path: Path) -> None:
    from picollm.wandb_offline import read_history, read_run_info

    overrides = small(tmp_path, "train.max_tokens=6144", "tracking.wandb=offline")
    child = KILLED_CHILD.format(root=str(ROOT), kill=30, overrides=overrides)
    # The killed run has a W&B service of its own, as a run killed elsewhere would (W&B hands this process's service
    # to its children through WANDB_SERVICE; there the killed run would hold its id until this process ended).
    env = {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, "WANDB_MODE": "offline"}
    subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300, check=False, env=env)
    killed = tmp_path / "runs" / "killed"
    run_id = json.loads((killed / "meta.json").read_text())["wandb"]["run_id"]
    resume(killed)
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["wandb_complete"] is True and summary["wandb_run_id"] == run_id
    files = sorted(killed.glob("wandb/*run-*/run-*.wandb"), key=lambda f: f.stat().st_mtime)
    assert files and all(run_id in f.name for f in files)  # one W&B run, written in two sittings
    resumed_steps = [row["step"] for row in read_history(files[-1]) if "train/loss" in row]
    assert 0 < resumed_steps[0] <= 30 and resumed_steps[-1] == summary["steps"]  # from the checkpoint to the end
    info = read_run_info(files[-1])
    assert info.get("exit_code") == 0
    at = info["summary"]["resumed_at_step"]  # the charts say where the repeated steps begin
    assert at < resumed_steps[0] and f"resumed from a checkpoint at step {at}" in info["notes"]


def test_a_reopened_records_best_curve_goes_on_from_its_kept_rows(tmp_path: Path) -> None:
    from picollm.tracking import Tracker
    from picollm.wandb_offline import read_history

    cfg = load_config(None, small(tmp_path, "tracking.wandb=offline"))
    first = Tracker(cfg, "r", extra={})
    for step, loss in ((1, 2.0), (2, 3.0)):
        first.log({"step": step, "epoch": 1, "val/loss": loss})
    first.finish({"status": "interrupted"})
    again = Tracker.reopen(cfg, first.run_dir, {"metrics.jsonl": 2}, extra={"resumed_at_step": 2})
    again.log({"step": 3, "epoch": 1, "val/loss": 2.5})
    again.finish({"status": "finished"})
    files = sorted(first.run_dir.glob("wandb/*run-*/run-*.wandb"), key=lambda f: f.stat().st_mtime)
    (best,) = [r["best/val/loss"] for r in read_history(files[-1]) if "best/val/loss" in r]
    assert best == 2.0  # the kept rows' minimum, not the resumed sitting's 2.5


def test_a_finished_wsd_run_extends_to_the_run_started_with_the_longer_budget(tmp_path: Path) -> None:
    whole = run(tmp_path, f"train.max_tokens={BUDGET}")
    short = run(tmp_path, "train.max_tokens=8192")
    longer = extend(short["run_dir"], BUDGET)
    assert rows(longer["run_dir"]) == rows(whole["run_dir"])
    assert longer["final_val_loss"] == whole["final_val_loss"]
    assert rows(short["run_dir"])[-1]["step"] == short["steps"]  # the source record is left as it was
    meta = json.loads((Path(longer["run_dir"]) / "meta.json").read_text())
    assert meta["extended_from"] == short["run_dir"]


def test_extending_a_run_whose_epochs_would_end_it_first_grows_its_epochs(tmp_path: Path) -> None:
    """One epoch (37 steps, 4,736 tokens) holds a 4,096-token budget but not 20,480: the extension gets 5."""
    short = run(tmp_path, "train.max_tokens=4096", "train.epochs=1")
    longer = extend(short["run_dir"], BUDGET)
    assert longer["tokens"] >= BUDGET
    started_so = run(tmp_path, f"train.max_tokens={BUDGET}", "train.epochs=5")
    assert rows(longer["run_dir"]) == rows(started_so["run_dir"])


def test_resume_and_extend_refuse_what_they_cannot_continue_in_one_line(tmp_path: Path) -> None:
    short = run(tmp_path, "train.max_tokens=4096")
    with pytest.raises(ConfigError, match="extend to more tokens"):
        extend(short["run_dir"], 4096)
    cosine = run(tmp_path, "train.max_tokens=4096", "optim.schedule=cosine")
    with pytest.raises(ConfigError, match="no stable phase to branch from"):
        extend(cosine["run_dir"], 8192)
    run_dir = Path(short["run_dir"])
    with pytest.raises(ConfigError, match="the run finished; --extend-to"):
        resume(run_dir)
    (run_dir / "summary.json").unlink()  # as a killed run leaves it
    edited = (run_dir / "config.yaml").read_text().replace("lr: 0.003", "lr: 0.002")
    (run_dir / "config.yaml").write_text(edited)
    with pytest.raises(DataError, match=r"another config \(optim.lr differs\)"):
        resume(run_dir)
    with pytest.raises(DataError, match="run folder not found"):
        resume(tmp_path / "nothing-here")
    by_epochs = run(tmp_path, "train.epochs=1")
    with pytest.raises(ConfigError, match=r"the run's budget was its epochs \(train.max_tokens null\)"):
        extend(by_epochs["run_dir"], 8192)


def test_a_truncated_or_foreign_checkpoint_is_one_line(tmp_path: Path) -> None:
    short = run(tmp_path, "train.max_tokens=4096")
    run_dir = Path(short["run_dir"])
    path = checkpoint.latest_state(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    state = torch.load(path, weights_only=True)
    state["config"]["model"]["type"] = "lstm"
    torch.save(state, path)
    with pytest.raises(DataError, match=r"a checkpoint of a lstm model, this run is a transformer"):
        checkpoint.load_state(path, cfg, same_budget=True)
    state["config"]["model"]["type"] = "transformer"
    for key, value, message in (
        ("data_key", "0" * 20, "the run's data changed"),
        ("picollm", "0.1.0+000000000000", r"written by picollm 0\.1\.0\+000000000000"),  # another commit's code
    ):
        torch.save({**state, key: value}, path)
        with pytest.raises(DataError, match=message):
            checkpoint.load_state(path, cfg, same_budget=True)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="unreadable checkpoint"):
        checkpoint.load_state(path, cfg, same_budget=True)
