"""What scoring with real context costs: ``python -m benchmarks.eval_cost [--tokens N] [--trial SAMPLE]``.

Times :func:`picollm.scoring.score` on the same validation tokens with the overlapping windows
the trainer uses and with plain non-overlapping windows (the old way), per model, at the
benchmark's sizes (GPT-2 vocabulary, block 128, embed 128). ``--trial`` also runs one
``experiments/quick.yaml`` trial on the shared TinyStories sample and reports the share of its
wall time spent in evaluation. Medians of a few repeats; figures depend on the machine's load.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from picollm.cli import run_cli
from picollm.data import EvalSet, ScoringPolicy, scoring_policy, scoring_windows
from picollm.models import build_model
from picollm.scoring import EVAL_BATCH, score

CPU = torch.device("cpu")
SIZES = {"block_size": 128, "embed_size": 128, "hidden_size": 128, "num_layers": 2, "n_heads": 4, "k": 3}


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def body_work(n_tokens: int, policy: ScoringPolicy) -> float:
    """Input tokens the model body reads per scored token (the head runs once per scored token either way)."""
    width, starts, _ = scoring_windows(n_tokens, policy)
    return width * len(starts) / (n_tokens - 1)


def scoring_cost(n_tokens: int, vocab: int, repeats: int) -> list[dict[str, float | str]]:
    """Seconds to score ``n_tokens`` with and without overlap, per model type."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, n_tokens).astype(np.uint16)
    docs = np.repeat(np.arange(n_tokens // 200 + 1, dtype=np.int32), 200)[: n_tokens - 1]
    eval_set = EvalSet(tokens, docs, int(docs.max()) + 1, {})
    rows = []
    for model_type in ("kgram", "lstm", "transformer"):
        torch.manual_seed(0)
        model = build_model({"type": model_type, **SIZES}, vocab)
        block = SIZES["block_size"]
        new = scoring_policy(block, model.context_size)
        old = ScoringPolicy(block, block)
        t_new = _median_seconds(lambda m=model, p=new: score(m, eval_set, p, EVAL_BATCH, CPU), repeats)
        t_old = _median_seconds(lambda m=model, p=old: score(m, eval_set, p, EVAL_BATCH, CPU), repeats)
        work = body_work(n_tokens, new) / body_work(n_tokens, old)
        rows.append({"model": model_type, "old_s": t_old, "new_s": t_new, "ratio": t_new / t_old, "work": work})
    return rows


def trial_share(sample: str) -> dict[str, float]:
    """One quick.yaml trial on the shared sample: its wall time and the part spent scoring."""
    from picollm import trainer as train_mod
    from picollm.config import load_config

    spent = [0.0]
    real_score = train_mod.score

    def timed_score(*args: object, **kwargs: object) -> object:
        started = time.perf_counter()
        try:
            return real_score(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - started

    overrides = [
        f"data.tinystories={sample}",
        "data.offline_fallback=false",
        "tracking.wandb=disabled",
        "tracking.out_dir=/tmp/picollm-evalbench/runs",
        "train.progress=false",
        "train.max_tokens=60000",
        "train.eval_every_tokens=10000",
    ]
    cfg = load_config(Path(__file__).resolve().parent.parent / "experiments" / "quick.yaml", overrides)
    train_mod.score = timed_score
    try:
        summary = train_mod.train(cfg)
    finally:
        train_mod.score = real_score
    return {"wall_s": summary["wall_time_s"], "eval_s": spent[0], "eval_share": spent[0] / summary["wall_time_s"]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.eval_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192, help="validation tokens to score (default 8192)")
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trial", default=None, metavar="SAMPLE", help="also time a quick.yaml trial on this data")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    print(f"scoring {args.tokens:,} tokens, vocab {args.vocab:,}, block {SIZES['block_size']}, {threads} threads")
    print(f"{'model':12s} {'no overlap s':>13s} {'with context s':>15s} {'time ratio':>10s} {'body work ratio':>16s}")
    for row in scoring_cost(args.tokens, args.vocab, args.repeats):
        print(f"{row['model']:12s} {row['old_s']:13.3f} {row['new_s']:15.3f} {row['ratio']:10.2f} {row['work']:16.3f}")
    if args.trial:
        share = trial_share(args.trial)
        print(
            f"quick.yaml trial: {share['wall_s']:.1f}s wall, {share['eval_s']:.1f}s scoring "
            f"({100 * share['eval_share']:.0f}% of the trial)"
        )
    return 0


if __name__ == "__main__":
    run_cli(main)
