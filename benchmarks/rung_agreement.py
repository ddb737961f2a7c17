"""How well does a cheap rung rank configurations the way the target does? The measurement a rung ladder rests on.

    python -m benchmarks.rung_agreement --set data.tinystories=../shared/data/tinystories-sample \\
        --set data.offline_fallback=false

A development pool (``--pool-seed``, never one of target_vs_brute_force's test pools): configurations drawn at random
from the experiment's space, each trained once as a warmup-stable-decay run to the target with a decay branched at
every candidate rung (target / 3, / 9, / 27, / 81). Per rung it prints the Spearman rank correlation with the target
loss and what keeping the best third at that rung costs at the target (the best kept configuration's target loss
minus the pool's best). Cached as JSON with the code's version in ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.target_vs_brute_force import Cache, _train, draw_pool, run_key
from picollm.config import add_override_argument

FACTORS = (3, 9, 27, 81)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rung_agreement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="experiments/target.yaml", help="the target-aware experiment")
    parser.add_argument("--pool-seed", type=int, default=7, help="the development pool's sampler seed")
    parser.add_argument("--pool-size", type=int, default=20, help="random configurations, besides the base")
    parser.add_argument("--workers", type=int, default=2, help="processes training at once")
    add_override_argument(parser, "override a key of the experiment, e.g. data.tinystories=PATH (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("results/bench_target"))
    return parser


def spearman(a: list[float], b: list[float]) -> float:
    from scipy import stats

    return float(stats.spearmanr(a, b).statistic)


def main(argv: list[str] | None = None) -> int:
    from picollm.sweeps import load_experiment
    from picollm.sweeps.confirm import run_config
    from picollm.sweeps.experiment import target_of
    from picollm.sweeps.processes import in_processes

    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    overrides = [*args.overrides, f"tracking.out_dir={args.out}/runs", "tracking.wandb=disabled"]
    exp = load_experiment(args.config, overrides)
    target = target_of(exp.study)
    rungs = [target // f for f in FACTORS]
    seed = exp.base.train.seed
    cache = Cache.open(args.out / f"dev-pool-{args.pool_seed}.json", pool_seed=args.pool_seed, rungs=rungs)
    pool = draw_pool(exp, args.pool_size, args.pool_seed)
    jobs = []
    for params in pool:
        if run_key(params, seed) not in cache.runs:
            cfg = run_config(
                exp.base,
                params,
                seed,
                budget_tokens=target,
                reports=1,
                group="bench-rungs",
                job_type="reference",
                name="rungs",
            )
            quiet = {"train.threads": 1, "tracking.wandb": "disabled", "tracking.save_weights": False}
            jobs.append((run_key(params, seed), cfg.with_values({**quiet, "train.anneal_at": sorted(rungs)})))
    for i, (key, record) in enumerate(in_processes(_train_with_rungs, jobs, args.workers)):
        cache.runs[key] = record
        cache.save()
        print(f"  {i + 1}/{len(jobs)} runs, target loss {record.get('final_val_loss')}", flush=True)
    runs = [cache.runs[run_key(p, seed)] for p in pool]
    final = [r["final_val_loss"] for r in runs]
    best = min(final)
    print(f"development pool {args.pool_seed}: {len(pool)} configurations, target {target:,} tokens, best {best:.4f}")
    print("| rung (tokens) | Spearman with the target | best of the top third at the target, minus the pool's best |")
    print("| --- | --- | --- |")
    for rung in sorted(rungs):
        at = [r["annealed"][str(rung)] for r in runs]
        kept = sorted(range(len(pool)), key=lambda i: at[i])[: max(1, len(pool) // 3)]
        print(f"| {rung:,} | {spearman(at, final):.2f} | {min(final[i] for i in kept) - best:+.4f} |")
    print(f"median target loss {statistics.median(final):.4f}")
    return 0


def _train_with_rungs(job: tuple[str, Any]) -> tuple[str, dict[str, Any]]:
    """One run, with its branched decays' losses read back from its summary."""
    import json

    key, record = _train(job)
    summary = json.loads((Path(record["run_dir"]) / "summary.json").read_text())
    record["annealed"] = {b: v["loss"] for b, v in summary["annealed_val_loss"].items()}
    return key, record


if __name__ == "__main__":
    sys.exit(main())
