"""The phase stopwatch: exclusive phases that add up to the wall time (a fake clock, no timed tests)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from picollm.timing import Stopwatch, process_age_s, shares, total


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_nested_phase_pauses_the_outer_one_and_phases_add_up_to_wall() -> None:
    clock = FakeClock()
    sw = Stopwatch(clock)
    clock.advance(1.0)  # unclaimed -> other
    with sw.phase("evaluation"):
        clock.advance(2.0)
        with sw.phase("storage"):  # a pruning report inside an evaluation
            clock.advance(0.5)
        clock.advance(3.0)
    with sw.phase("train_steps"):
        clock.advance(4.0)
    with sw.phase("evaluation"):  # a phase met twice accumulates
        clock.advance(1.5)
    b = sw.breakdown()
    assert b == {"storage": 0.5, "train_steps": 4.0, "evaluation": 6.5, "other": 1.0, "wall": 12.0}
    assert list(b) == ["storage", "train_steps", "evaluation", "other", "wall"]  # the PHASES order


def test_time_before_the_stopwatch_counts_in_the_wall() -> None:
    clock = FakeClock()
    sw = Stopwatch(clock)
    sw.add_before("worker_start", 3.0)
    with sw.phase("data"):
        clock.advance(1.0)
    assert sw.breakdown() == {"worker_start": 3.0, "data": 1.0, "other": 0.0, "wall": 4.0}


def test_a_phase_that_raises_is_still_charged() -> None:
    clock = FakeClock()
    sw = Stopwatch(clock)
    with pytest.raises(ValueError), sw.phase("train_steps"):
        clock.advance(2.0)
        raise ValueError("boom")
    with sw.phase("checkpoints"):
        clock.advance(1.0)
    assert sw.breakdown()["train_steps"] == 2.0 and sw.breakdown()["checkpoints"] == 1.0


def test_total_and_shares_over_trials() -> None:
    summed = total([{"train_steps": 3.0, "other": 1.0, "wall": 4.0}, {"train_steps": 5.0, "data": 2.0, "wall": 7.0}])
    assert summed == {"train_steps": 8.0, "other": 1.0, "wall": 11.0, "data": 2.0}
    s = shares(summed)
    assert s["train_steps"] == pytest.approx(8 / 11) and "wall" not in s


def test_process_age_is_the_age_of_this_process() -> None:
    """A child that sleeps before asking must report at least that long; this process is older still."""
    code = "import time; time.sleep(0.3); from picollm.timing import process_age_s; print(process_age_s())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    mine = process_age_s()
    assert mine is not None and 0.3 <= child < 60 and mine > 0


def test_a_run_record_accounts_for_its_time(synthetic: list[str]) -> None:
    """summary.json's time_breakdown: every trainer phase present, and the phases add up to the wall time."""
    import json
    from pathlib import Path

    from picollm.config import load_config
    from picollm.trainer import train

    summary = train(load_config(None, [*synthetic, "model.type=kgram", "train.max_tokens=4096"]))
    b = json.loads((Path(summary["run_dir"]) / "summary.json").read_text())["time_breakdown"]
    phases = {"data", "model_build", "tracking_init", "train_steps", "evaluation", "sampling", "checkpoints"}
    assert phases <= set(b) and all(b[p] > 0 for p in phases)
    assert sum(v for k, v in b.items() if k != "wall") == pytest.approx(b["wall"], abs=1e-3 * len(b))
    assert b["wall"] >= summary["wall_time_s"]  # the trainer's own clock starts later, at its first step


def test_a_sweep_trial_scores_its_final_weights_once(synthetic: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The last periodic evaluation and the objective score the same weights on the same set: once, not twice."""
    import picollm.trainer as train_mod
    from picollm.config import load_config

    calls = []
    real_score = train_mod.score

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real_score(*args, **kwargs)

    monkeypatch.setattr(train_mod, "score", counting)
    one_set = ["data.val_tokens=1024", "train.eval_tokens=1024", "train.eval_every_tokens=1024"]
    run = [*synthetic, "model.type=kgram", "train.max_tokens=4096", "train.epochs=100", *one_set]
    summary = train_mod.train(load_config(None, run))
    assert summary["steps"] == 4 and len(calls) == 4  # one per report (every step here), none at an epoch's end
    assert summary["final_val_loss"] == summary["last_val_loss"]


def test_the_wandb_summary_carries_the_breakdown(synthetic: list[str]) -> None:
    """Read back from the offline .wandb file: W&B shows time_breakdown.<phase> next to the run's losses."""
    from picollm.config import load_config
    from picollm.trainer import train
    from picollm.wandb_offline import find_run_file, read_run_info

    run = [*synthetic, "model.type=kgram", "train.max_tokens=2048", "tracking.wandb=offline"]
    import time

    summary = train(load_config(None, run))
    deadline = time.monotonic() + 60  # W&B's service may still be writing the file's last records
    while "time_breakdown" not in (info := read_run_info(find_run_file(summary["run_dir"])))["summary"]:
        assert time.monotonic() < deadline, sorted(info["summary"])
        time.sleep(0.5)
    shown = info["summary"]["time_breakdown"]
    assert shown["train_steps"] == summary["time_breakdown"]["train_steps"] > 0 and "evaluation" in shown


def _preloaded(queue: object) -> None:
    loaded = set(sys.modules)  # before this function imports anything itself
    from picollm.sweeps.processes import WORKER_PRELOAD

    queue.put({name: name in loaded for name in WORKER_PRELOAD})


def test_sweep_workers_start_with_torch_and_dynamo_already_imported() -> None:
    """Workers fork from a forkserver that imported them once: no worker pays torch's or dynamo's import."""
    from picollm.sweeps.processes import worker_context

    ctx = worker_context()
    queue = ctx.Queue()
    proc = ctx.Process(target=_preloaded, args=(queue,))
    proc.start()
    seen = queue.get(timeout=300)
    proc.join()
    assert seen and all(seen.values()), seen
