"""End-to-end benchmarks, measured as whole processes the way a user runs them (``python -m benchmarks.bench``).

* ``--sweep``: the main job (``experiments/quick.yaml``) on the shared TinyStories sample with the GPT-2
  tokenizer, in a fresh folder (so its token cache is built, as on a first run), timed from the command's
  start to its exit; then every trial's ``time_breakdown`` (see :mod:`picollm.timing`) summed over the study
  and the share of trial time spent in training steps and the evaluation the objective needs.
* ``--layouts``: the same trial run as workers x threads layouts on this machine's cores (e.g. 1 x 2 and
  2 x 1 on 2 cores), so the sweep's automatic choice (:func:`picollm.threads.choose_layout`) is measured.
* ``--processes``: whole trainer processes: the trainer's k-gram MLP against the naive course implementation,
  tokens per second of wall time from process start to exit.

Each can run the fixed yardstick (``../shared/bench/quick_reference.py``) before and after, so a figure
measured on a loaded or a different machine is still comparable as a ratio.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from picollm.errors import ConfigError
from picollm.timing import PHASES, shares, total

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLE = SHARED / "data" / "tinystories-sample"
YARDSTICK = SHARED / "bench" / "quick_reference.py"
# The phases a trial cannot do without: training, and the validation losses its value and its pruning need.
USEFUL = ("train_steps", "evaluation")


def sample_overrides() -> list[str]:
    """The real data: the shared TinyStories sample, the GPT-2 tokenizer, no fallback to anything else."""
    if not SAMPLE.is_dir() or not os.environ.get("TIKTOKEN_CACHE_DIR"):
        raise ConfigError(f"needs {SAMPLE} and TIKTOKEN_CACHE_DIR (GPT-2's tiktoken files) for real data")
    return [f"data.tinystories={SAMPLE}", "data.offline_fallback=false"]


def run_timed(cmd: Sequence[str], cwd: Path, log: Path) -> float:
    """Wall seconds of a whole process (start to exit); its output goes to ``log``. Fails loudly."""
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "WANDB_SILENT": "true"}
    start = time.perf_counter()
    with open(log, "w") as fh:
        code = subprocess.run(list(cmd), cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False).returncode
    seconds = time.perf_counter() - start
    if code != 0:
        tail = log.read_text()[-1500:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {code}:\n{tail}")
    return seconds


def yardstick() -> float | None:
    """The shared yardstick's seconds (a 3-minute goal holds where it prints ~57), or None without it."""
    if not YARDSTICK.is_file():
        return None
    out = subprocess.run([sys.executable, str(YARDSTICK)], capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1])


# ---------------------------------------------------------------------------------------------
# The main job, accounted for.
# ---------------------------------------------------------------------------------------------


def sweep_command(folder: Path, config: str, overrides: list[str], workers: int | None) -> list[str]:
    keep_inside = [
        f"tracking.out_dir={folder / 'runs'}",
        f"data.cache_dir={folder / 'cache'}",
        f"study.out_dir={folder / 'studies'}",
    ]
    cmd = [sys.executable, "sweep.py", "--config", config, "--storage", f"sqlite:///{folder / 'optuna.db'}"]
    cmd += ["--workers", str(workers)] if workers else []
    for item in [*sample_overrides(), *keep_inside, *overrides]:
        cmd += ["--set", item]
    return cmd


def run_breakdowns(folder: Path) -> list[dict[str, Any]]:
    """Every run record's summary (trials, confirmation runs): its job type and time breakdown."""
    out = []
    for path in sorted((folder / "runs").glob("*/summary.json")):
        summary = json.loads(path.read_text())
        if "time_breakdown" not in summary:
            continue
        out.append({"run_id": path.parent.name, "job_type": _job_type(path.parent), **summary})
    return out


def _job_type(run_dir: Path) -> str:
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    return str((cfg.get("tracking") or {}).get("job_type") or "run")


def trial_breakdowns(folder: Path) -> dict[str, dict[str, float]]:
    """Trials' own breakdowns (storage and worker start included), keyed by run id, from the study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = f"sqlite:///{folder / 'optuna.db'}"
    out = {}
    for summary in optuna.get_all_study_summaries(url):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        for t in study.get_trials(deepcopy=False):
            if "time_breakdown" in t.user_attrs and "run_id" in t.user_attrs:
                out[t.user_attrs["run_id"]] = t.user_attrs["time_breakdown"]
    return out


def bench_sweep(config: str, overrides: list[str], workers: int | None, with_yardstick: bool = True) -> dict[str, Any]:
    """Run the main job once in a fresh folder; its wall time and every run's time, phase by phase."""
    with tempfile.TemporaryDirectory(prefix="picollm-bench-sweep-") as tmp:
        folder = Path(tmp)
        before = yardstick() if with_yardstick else None
        wall = run_timed(sweep_command(folder, config, overrides, workers), ROOT, folder / "sweep.log")
        after = yardstick() if with_yardstick else None
        trials = trial_breakdowns(folder)
        runs = run_breakdowns(folder)
        log_tail = (folder / "sweep.log").read_text().splitlines()[-6:]
    by_job: dict[str, list[dict[str, float]]] = {}
    for run in runs:
        by_job.setdefault(run["job_type"], []).append(trials.get(run["run_id"], run["time_breakdown"]))
    ticks = [y for y in (before, after) if y]
    return {
        "config": config,
        "overrides": overrides,
        "workers": workers,
        "wall_s": wall,
        "yardstick_s": statistics.mean(ticks) if ticks else None,
        "yardstick_runs_s": ticks,
        "runs": {job: len(b) for job, b in by_job.items()},
        "breakdown": {job: total(b) for job, b in by_job.items()},
        "log_tail": log_tail,
    }


def sweep_table(r: dict[str, Any]) -> str:
    lines = [f"main job: python sweep.py --config {r['config']} on the TinyStories sample (GPT-2 tokenizer)"]
    if r["yardstick_s"]:
        lines.append(
            f"wall {r['wall_s']:.1f}s, yardstick {r['yardstick_s']:.1f}s -> {r['wall_s'] / r['yardstick_s']:.2f}x "
            "(a 3-minute goal is 3.2x)"
        )
    else:
        lines.append(f"wall {r['wall_s']:.1f}s (no yardstick at {YARDSTICK})")
    for job, b in r["breakdown"].items():
        share = shares(b)
        lines.append(f"{job} runs: {r['runs'][job]}, {b.get('wall', 0):.1f}s of run time, phase by phase:")
        for name in [p for p in PHASES if p in b] + ["other"]:
            lines.append(f"  {name:16s} {b.get(name, 0.0):8.2f}s {100 * share.get(name, 0.0):6.1f}%")
        useful = sum(share.get(p, 0.0) for p in USEFUL)
        lines.append(f"  train steps + evaluation: {100 * useful:.1f}% of {job} wall time")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Workers x threads.
# ---------------------------------------------------------------------------------------------

LAYOUT_PROBE = """
import sys
from picollm.config import load_config
from picollm.trainer import train
runs, overrides = int(sys.argv[1]), sys.argv[2:]
for i in range(runs):
    train(load_config(overrides[0], [*overrides[1:], f"train.seed={i}"]))
"""


def bench_layouts(config: str, overrides: list[str], runs: int, cores: int) -> dict[str, Any]:
    """``runs`` trials of the experiment's base config (its trial budget), spread over each layout's workers.

    Every layout does the same work (the same configs and seeds), each worker a whole process, so start-up,
    thread scaling and the cores' contention are all in the wall time.
    """
    from picollm.config import load_raw, split_experiment
    from picollm.sweeps.experiment import parse_study

    study = parse_study(split_experiment(load_raw(config))[1].get("study"), "bench")
    budget = [f"train.max_tokens={study.budget_tokens}", "train.epochs=1000"] if study.budget_tokens else []
    layouts = sorted({(w, cores // w) for w in range(1, cores + 1) if cores % w == 0 and runs % w == 0})
    results: dict[str, Any] = {"runs": runs, "cores": cores, "layouts": {}}
    with tempfile.TemporaryDirectory(prefix="picollm-bench-layouts-") as tmp:
        folder = Path(tmp)
        common = [config, *sample_overrides(), *budget, "train.progress=false", "tracking.save_weights=false"]
        common += [f"tracking.out_dir={folder / 'runs'}", f"data.cache_dir={folder / 'cache'}", *overrides]
        run_timed([sys.executable, "-c", LAYOUT_PROBE, "1", *common], ROOT, folder / "warm.log")  # builds the cache
        for workers, threads in layouts:
            cmd = [sys.executable, "-c", LAYOUT_PROBE, str(runs // workers), *common, f"train.threads={threads}"]
            start = time.perf_counter()
            procs = [
                subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for _ in range(workers)
            ]
            codes = [p.wait() for p in procs]
            if any(codes):
                raise RuntimeError(f"layout {workers}x{threads}: worker exit codes {codes}")
            results["layouts"][f"{workers}x{threads}"] = time.perf_counter() - start
    return results


def layouts_table(r: dict[str, Any]) -> str:
    fastest = min(r["layouts"].values())
    lines = [f"{r['runs']} quick-sweep trials (base config) on {r['cores']} cores, workers x threads:"]
    for name, seconds in r["layouts"].items():
        lines.append(f"  {name:8s} {seconds:8.1f}s  {seconds / fastest:5.2f}x the fastest")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Whole processes: the trainer's k-gram MLP against the naive course implementation.
# ---------------------------------------------------------------------------------------------

NAIVE_PROBE = """
import sys
import torch
from benchmarks.bench import NaiveKGram, VOCAB
steps = int(sys.argv[1])
torch.manual_seed(0)
model = NaiveKGram(VOCAB, 3, 128)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
for _ in range(steps):
    x, y = torch.randint(0, VOCAB, (1, 8)), torch.randint(0, VOCAB, (1, 8))
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
"""
# The trainer's k-gram at the reference shape of the kernel table (full GPT-2 vocabulary, k 3, embed and
# hidden 128, batch 16, block 128), as `python -m picollm.train` runs it with its evaluations and record.
KGRAM_TRAINER = [
    "model.type=kgram",
    "model.k=3",
    "model.embed_size=128",
    "model.hidden_size=128",
    "model.block_size=128",
    "train.batch_size=16",
    "train.epochs=1000",
]


def bench_processes(trainer_tokens: int, naive_steps: int) -> dict[str, Any]:
    """Training tokens per second of wall time, process start to exit, for both implementations."""
    with tempfile.TemporaryDirectory(prefix="picollm-bench-processes-") as tmp:
        folder = Path(tmp)
        overrides = [*sample_overrides(), *KGRAM_TRAINER, f"train.max_tokens={trainer_tokens}", "train.progress=false"]
        overrides += [f"tracking.out_dir={folder / 'runs'}", f"data.cache_dir={folder / 'cache'}"]
        cmd = [sys.executable, "-m", "picollm.train", "--config", "experiments/base.yaml"]
        for item in overrides:
            cmd += ["--set", item]
        run_timed(cmd, ROOT, folder / "warm.log")  # builds the token cache: a user's second run, not first
        trainer_s = run_timed(cmd, ROOT, folder / "trainer.log")
        naive_s = run_timed([sys.executable, "-c", NAIVE_PROBE, str(naive_steps)], ROOT, folder / "naive.log")
    trainer = trainer_tokens / trainer_s
    naive = naive_steps * 8 / naive_s
    return {
        "trainer_tokens": trainer_tokens,
        "trainer_s": trainer_s,
        "trainer_tokens_per_s": trainer,
        "naive_tokens": naive_steps * 8,
        "naive_s": naive_s,
        "naive_tokens_per_s": naive,
        "ratio": trainer / naive,
    }


def processes_table(r: dict[str, Any]) -> str:
    return (
        f"whole processes, start to exit: trainer k-gram {r['trainer_tokens']:,} tokens in {r['trainer_s']:.1f}s "
        f"({r['trainer_tokens_per_s']:,.0f} tokens/s); naive course k-gram {r['naive_tokens']} tokens in "
        f"{r['naive_s']:.1f}s ({r['naive_tokens_per_s']:.1f} tokens/s) -> {r['ratio']:,.0f}x per token"
    )
