"""The benchmarks run end to end and report figures that agree with each other (speed is printed, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLE, needs_sample


def _bench(tmp_path: Path, *args: str) -> tuple[dict, str]:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(proc.stdout)  # the table, for CI logs
    return json.loads(out.read_text()), proc.stdout


def test_quick_benchmark_reports_consistent_figures(tmp_path: Path) -> None:
    r, stdout = _bench(tmp_path, "--quick")
    train = r["training"]
    assert set(train) == {"kgram", "lstm", "transformer", "transformer_compact_vocab"}
    v, e, k = r["vocab"], 128, 3  # k-gram: (V+1) x E embedding, k*E -> E layer, E -> V head
    assert train["kgram"]["params"] == (v + 1) * e + (k * e * e + e) + (e * v + v)
    fewer = train["transformer"]["params"] - train["transformer_compact_vocab"]["params"]  # tied head (+ bias?)
    assert fewer in ((v - 6000) * e, (v - 6000) * (e + 1))
    for name, t in train.items():  # tokens/s is the batch over the median step time
        assert t["tokens_per_s"] == pytest.approx(16 * 128 / t["step_s"], rel=1e-9), name
    tr = train["transformer"]
    assert r["transformer_mfu"] == pytest.approx(6 * tr["params"] * tr["tokens_per_s"] / r["matmul_peak_flops"])
    assert r["kgram_vs_naive"] == pytest.approx(train["kgram"]["tokens_per_s"] / r["naive_kgram_tokens_per_s"])
    compact = train["transformer_compact_vocab"]["tokens_per_s"] / tr["tokens_per_s"]
    assert r["compact_vocab_speedup"] == pytest.approx(compact)
    g = r["generation"]
    assert g["new_tokens"] == 64 and f"generation, 64 new tokens: {g['with_cache_tokens_per_s']:,.0f}" in stdout
    assert g["kv_cache_speedup"] == pytest.approx(g["with_cache_tokens_per_s"] / g["without_cache_tokens_per_s"])
    assert r["cache"]["generated_tokens"] >= 2_000_000
    assert f"{r['kgram_vs_naive']:,.0f}x per token" in stdout and f"MFU {100 * r['transformer_mfu']:.1f}%" in stdout


@needs_sample
def test_tokenizer_benchmark_counts_the_tokens_it_times(tmp_path: Path) -> None:
    """The tokens/s figure divides the sample's real GPT-2 token count (stories + one end-of-text each)."""
    import pyarrow.parquet as pq
    import tiktoken

    from benchmarks.bench import bench_tokenizer

    enc = tiktoken.get_encoding("gpt2")
    stories = [t for f in sorted(SAMPLE.glob("data/train-*.parquet")) for t in pq.read_table(f)["text"].to_pylist()]
    expected = 4 * sum(len(enc.encode_ordinary(s)) + 1 for s in stories)
    r = bench_tokenizer(repeats=1)
    assert r["tokens"] == expected and r["threaded_tokens_per_s"] > 0 and r["one_thread_tokens_per_s"] > 0


@needs_sample
def test_sweep_benchmark_accounts_for_every_trial(tmp_path: Path) -> None:
    """--sweep runs the real-data sweep and sums each trial's phases, which add up to the trials' wall time."""
    small = ["study.n_trials=2", "study.budget_tokens=2048", "study.reports=2", "data.compact_vocab=true"]
    small += ["confirm.top=1", "confirm.seeds=2"]  # the smallest confirmation: 2 or 4 runs, not 6
    small += ["data.val_tokens=2048", "train.eval_tokens=1024"]  # scoring 16,384 tokens took half the runs' time
    r, stdout = _bench(tmp_path, "--sweep", "--no-yardstick", *[a for s in small for a in ("--set", s)])
    assert r["runs"]["trial"] == 2
    b = r["breakdown"]["trial"]
    for phase in ("worker_start", "storage", "data", "model_build", "train_steps", "evaluation", "tracking_finish"):
        assert b[phase] > 0, phase
    assert sum(s for name, s in b.items() if name != "wall") == pytest.approx(b["wall"], abs=0.01)
    assert b["wall"] <= r["wall_s"]  # the trials ran inside the timed command
    useful = 100 * (b["train_steps"] + b["evaluation"]) / b["wall"]
    assert f"train steps + evaluation: {useful:.1f}% of trial wall time" in stdout
