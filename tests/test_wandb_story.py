"""W&B tells the whole story: when ``train()`` returns, the run's offline ``.wandb`` file holds every row,
or the run's summary.json says it does not (and one warning said so); run summaries hold each metric's last
value; the study's summary run names the confirmed winner; an unwritable ``tracking.out_dir`` is one line.
"""

from __future__ import annotations

import csv
import json
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from picollm import tracking
from picollm import trainer as train_mod
from picollm.cli import run_cli
from picollm.cli import train as train_cli
from picollm.config import load_config
from picollm.errors import PicoError
from picollm.wandb_offline import find_run_file, has_exit_record, read_history, read_run_info


def _offline(synthetic: list[str], *more: str) -> list[str]:
    return [*[o for o in synthetic if not o.startswith("tracking.wandb")], "tracking.wandb=offline", *more]


def _train(overrides: list[str]) -> tuple[Path, dict[str, Any], list[str], float]:
    """Train; the run folder, its summary.json, the W&B warnings given and the seconds ``train()`` took."""
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_dir = Path(train_mod.train(load_config(None, overrides))["run_dir"])
    elapsed = time.monotonic() - start
    summary = json.loads((run_dir / "summary.json").read_text())
    return run_dir, summary, [str(w.message) for w in caught if "W&B" in str(w.message)], elapsed


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the end of a test: a W&B call the test held back goes on, so no thread outlives the test stuck."""
    event = threading.Event()
    yield event
    event.set()


def _late_run_files(monkeypatch: pytest.MonkeyPatch, write_s: float) -> None:
    """W&B's service closes a run's stream, and so writes the end of its ``.wandb`` file, ``write_s`` after
    ``run.finish()`` returned, as a loaded machine's service can (``inform_finish`` is a message it answers later)."""
    from wandb.sdk.lib.service.service_connection import ServiceConnection

    real_inform = ServiceConnection.inform_finish

    def inform_finish(self: ServiceConnection, run_id: str) -> None:
        threading.Timer(write_s, real_inform, (self, run_id)).start()

    monkeypatch.setattr(ServiceConnection, "inform_finish", inform_finish)


def _slow_finish(monkeypatch: pytest.MonkeyPatch, release: threading.Event, finish_s: float) -> None:
    """Every run's ``run.finish()`` starts ``finish_s`` late (or when ``release`` is set)."""
    import wandb

    real_init = wandb.init

    def init(**kw: Any) -> Any:
        run = real_init(**kw)
        real_finish = run.finish

        def finish(*args: Any, **kwargs: Any) -> None:
            release.wait(finish_s)
            real_finish(*args, **kwargs)

        run.finish = finish
        return run

    monkeypatch.setattr(wandb, "init", init)


@pytest.mark.parametrize(("finish_s", "write_s"), [(0.0, 2.0), (2.5, 2.5)], ids=["late-file", "slow-finish"])
def test_a_slow_wandb_that_answers_leaves_the_whole_run_before_train_returns(
    finish_s: float,
    write_s: float,
    synthetic: list[str],
    monkeypatch: pytest.MonkeyPatch,
    release: threading.Event,
) -> None:
    """Each W&B call answers within the timeout, their sum does not (slow-finish); the file is written late.

    Each wait is 2 s inside the timeout, so a loaded machine's own W&B time fits; their sum is 0.5 s beyond it."""
    monkeypatch.setattr(tracking, "WANDB_TIMEOUT_S", 4.5)
    _slow_finish(monkeypatch, release, finish_s)
    _late_run_files(monkeypatch, write_s)
    run_dir, summary, messages, _ = _train(_offline(synthetic, "train.max_steps_per_epoch=6", "train.eval_every=3"))
    run_file = find_run_file(run_dir)
    assert has_exit_record(run_file) and messages == []
    local = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    history = read_history(run_file)
    for key in ("train/loss", "val/loss", "val/epoch_loss"):
        assert [h[key] for h in history if key in h] == [r[key] for r in local if key in r], key
    assert read_run_info(run_file)["exit_code"] == 0
    assert summary["wandb_complete"] is True and "wandb_error" not in summary
    assert summary["wandb_run_id"] == run_dir.name


def test_a_stuck_wandb_costs_one_warning_and_is_flagged_in_summary_json(
    synthetic: list[str], monkeypatch: pytest.MonkeyPatch, release: threading.Event
) -> None:
    monkeypatch.setattr(tracking, "WANDB_TIMEOUT_S", 2.0)
    _slow_finish(monkeypatch, release, finish_s=120.0)
    run_dir, summary, messages, elapsed = _train(_offline(synthetic, "train.max_steps_per_epoch=4"))
    assert len(messages) == 1 and "incomplete" in messages[0] and "wandb_complete" in messages[0], messages
    assert summary["wandb_complete"] is False and summary["wandb_error"] == "W&B finish did not answer within 2s"
    assert summary["status"] == "finished" and summary["steps"] == 4
    assert sum("train/loss" in line for line in (run_dir / "metrics.jsonl").read_text().splitlines()) == 4
    assert elapsed < 30  # the timeout (2 s) and a few training steps, not the 120 s the finish is held back


def test_a_run_summary_holds_each_metrics_last_value_and_each_validation_minimum(out: list[str]) -> None:
    """Rows as a run logs them, with the last validation loss above the lowest: W&B's summary keeps the last value
    of every step and epoch metric and the minimum of each validation loss as ``best/<key>``."""
    cfg = load_config(None, [*out, "data.tinystories=null", "data.synthetic=10", "tracking.wandb=offline"])
    tracker = tracking.Tracker(cfg, "r1")
    losses = [(4.9, 4.6), (3.71, 4.30), (4.2, 4.41)]  # (train/loss, val/loss) per step: val rises at the end
    for step, (train_loss, val_loss) in enumerate(losses, 1):
        tracker.log({"step": step, "epoch": 1, "train/loss": train_loss, "lr": 0.1 / step, "tokens": 64 * step})
        tracker.log({"step": step, "epoch": 1, "val/loss": val_loss, "val/loss_stderr": 0.01 * step})
    for epoch, val in ((1, 4.35), (2, 4.45)):
        tracker.log({"step": 3, "epoch": epoch, "val/epoch_loss": val, "train/epoch_loss": 4.0 + epoch / 10})
    tracker.finish({"status": "finished"})
    info = read_run_info(find_run_file(tracker.run_dir))
    s = info["summary"]
    assert (s["train/loss"], s["val/loss"], s["lr"], s["val/loss_stderr"]) == (4.2, 4.41, pytest.approx(0.1 / 3), 0.03)
    assert (s["val/epoch_loss"], s["train/epoch_loss"]) == (4.45, 4.2)
    assert (s["best/val/loss"], s["best/val/epoch_loss"]) == (4.30, 4.35)
    assert info["metrics"]["val/loss"] == {"step_metric": "step", "summary": []}  # W&B's default: the last value
    assert info["metrics"]["best/val/epoch_loss"]["step_metric"] == "epoch"
    best_curve = [h["best/val/loss"] for h in read_history(find_run_file(tracker.run_dir)) if "best/val/loss" in h]
    assert best_curve == [4.6, 4.30, 4.30]
    local = (tracker.run_dir / "metrics.jsonl").read_text()
    assert "best/" not in local  # the local record holds what the trainer logged, nothing derived


def test_the_study_summary_run_names_the_confirmed_winner_its_interval_and_the_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep with a confirm: block, its run files written late: the summary run is complete when it returns."""
    from picollm.sweeps import load_experiment, run_sweep
    from tests.sweeps import write_experiment

    _late_run_files(monkeypatch, 0.2)

    path = write_experiment(
        tmp_path,
        study={"n_trials": 3, "budget_tokens": 2048},
        train={"threads": 1},
        tracking={"wandb": "offline"},
        data={"test_tokens": 256},
    )
    raw = yaml.safe_load(path.read_text())
    raw["confirm"] = {"top": 2, "seeds": 2}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    run_sweep(load_experiment(str(path), []), f"sqlite:///{tmp_path}/s.db", workers=1)
    folder = tmp_path / "studies" / "t"
    rows = list(csv.DictReader((folder / "confirm.csv").open()))
    winner = next(r for r in rows if r["rank"] == "1")
    (run_file,) = (folder / "wandb").glob("*run-*/run-*.wandb")  # one summary run, logged after confirmation
    assert has_exit_record(run_file)
    info = read_run_info(run_file)
    s = info["summary"]
    assert (info["job_type"], info["group"]) == ("summary", "t")
    assert s["answer"] == "confirmed winner" and s["best_trial"] == int(winner["trial"])
    assert s["confirmed/mean"] == pytest.approx(float(winner["config_mean"]))
    assert (s["confirmed/ci_low"], s["confirmed/ci_high"]) == (
        pytest.approx(float(winner["config_ci_low"])),
        pytest.approx(float(winner["config_ci_high"])),
    )
    assert s["confirmed/ci_low"] < s["confirmed/mean"] < s["confirmed/ci_high"]
    assert (s["confirmed/seeds"], s["confirmed/budget_tokens"]) == (2, 2048)
    assert s["verdict"].startswith(f"confirmed winner: trial {winner['trial']}")
    assert "shared seeds" in s["verdict"] or "cannot be told apart" in s["verdict"]
    params = {k: v for k, v in winner.items() if k.startswith(("optim.", "model.")) and v != ""}
    assert {k: str(s[f"best/{k}"]) for k in params} == params
    winner_runs = [r for r in rows if r["trial"] == winner["trial"]]
    assert s["confirmed/test_loss"] == pytest.approx(sum(float(r["test_loss"]) for r in winner_runs) / 2)
    assert s["confirmed/val_loss"] == pytest.approx(float(winner["config_mean"]))
    assert s["confirmed/test_loss_stderr"] > 0 and "winner's curse" in s["verdict"]
    # each confirmation run's W&B id, as its own run record says it
    for r in rows:
        recorded = json.loads((Path(r["run_dir"]) / "summary.json").read_text())["wandb_run_id"]
        assert r["wandb_run_id"] and r["wandb_run_id"] == recorded


@pytest.mark.parametrize("where", ["under-a-file", "under-proc"])
def test_an_unwritable_out_dir_is_one_line_and_writes_nothing(
    where: str, synthetic: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Root can write almost anywhere, but not below a regular file nor into /proc."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    out_dir = blocker / "runs" if where == "under-a-file" else Path("/proc/picollm-runs")
    argv = [x for o in synthetic for x in ("--set", o)] + ["--set", f"tracking.out_dir={out_dir}"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_cli.main, argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: tracking.out_dir={out_dir}: cannot create the run folder ")
    assert blocker.read_text() == "not a folder\n" and not out_dir.exists() and not (tmp_path / "runs").exists()


def test_a_record_that_cannot_be_completed_is_removed(out: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracking, "atomic_write_json", disk_full)
    cfg = load_config(None, [*out, "data.tinystories=null", "data.synthetic=10", "tracking.wandb=offline"])
    with pytest.raises(PicoError, match=r"cannot write the run record in .*: No space left on device"):
        tracking.Tracker(cfg, "r1")
    runs = Path(cfg.tracking.out_dir)
    assert runs.is_dir() and list(runs.iterdir()) == []  # the folder it made for the run is gone, W&B never started
