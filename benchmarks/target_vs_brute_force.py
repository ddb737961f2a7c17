"""Does a target-aware sweep find the answer a brute-force search at the target would, for less?

    python -m benchmarks.target_vs_brute_force --set data.tinystories=../shared/data/tinystories-sample \\
        --set data.offline_fallback=false

1. The reference: a fixed pool of configurations drawn at random from the experiment's space (quick.yaml's, in
   ``experiments/target.yaml``), each trained at the target budget with the confirmation's seeds: every
   configuration's mean loss at the target, and the pool's best.
2. The target-aware sweep (``experiments/target.yaml``: rungs scored by branched decays, successive halving,
   confirmation at the target): its confirmed winner's mean at the target, and every training token it spent
   (trials, their branched decays, the confirmation).
3. Today's cheap sweep (``experiments/quick.yaml``: 60,000 tokens a trial, confirmation at 60,000): its confirmed
   winner trained at the target with the same seeds, and the tokens the sweep spent.

Every run is scored on the same validation tokens with the same seeds, so a winner and the pool's best are compared
by the standard error of their paired difference over seeds. Resumable: finished runs are kept in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from picollm.config import add_override_argument
from picollm.storage import DEFAULT_STORAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.target_vs_brute_force", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--config", default="experiments/target.yaml", help="the target-aware experiment")
    parser.add_argument("--cheap-config", default="experiments/quick.yaml", help="today's sweep at the cheap budget")
    parser.add_argument("--pool", type=int, default=24, help="configurations in the brute-force pool (>= 16)")
    parser.add_argument("--workers", type=int, default=2, help="processes training at once")
    parser.add_argument("--storage", default=DEFAULT_STORAGE.replace("optuna.db", "bench_target.db"))
    add_override_argument(parser, "override a key of both experiments, e.g. data.tinystories=PATH (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("results/bench_target"))
    return parser


def draw_pool(exp: Any, n: int, seed: int = 12345) -> list[dict[str, Any]]:
    """``n`` distinct configurations from the experiment's space, drawn at random (the baseline first)."""
    import optuna

    from picollm.search import baseline_params, sample
    from picollm.sweeps.confirm import params_key

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    pool = {params_key(baseline_params(exp.space, exp.base)): baseline_params(exp.space, exp.base)}
    while len(pool) < n:
        params = sample(study.ask(), exp.space, exp.base)
        pool.setdefault(params_key(params), params)
    return list(pool.values())


def _train(job: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    from picollm.sweeps.confirm import train_record

    key, raw = job
    return key, train_record(raw, "bench-")


def train_at_target(
    exp: Any, configs: list[dict[str, Any]], seeds: list[int], workers: int, done: dict[str, Any], save: Any
) -> dict[str, Any]:
    """Each configuration trained at the target with each seed, as a confirmation run would be; kept in ``done``."""
    from picollm.sweeps.confirm import params_key, run_config
    from picollm.sweeps.processes import in_processes
    from picollm.sweeps.settings import target_of

    target = target_of(exp.study)
    jobs = []
    for params in configs:
        for seed in seeds:
            key = f"{params_key(params)}|{seed}"
            if key not in done:
                raw = run_config(
                    exp.base,
                    params,
                    seed,
                    budget_tokens=target,
                    reports=1,
                    group="bench-target",
                    job_type="reference",
                    name=f"ref-s{seed}",
                )
                raw["train"]["threads"] = 1
                raw["tracking"].update(wandb="disabled", save_weights=False)
                jobs.append((key, raw))
    for key, record in in_processes(_train, jobs, workers):
        done[key] = record
        save()
        print(f"  {len(done)} runs at the target: {record.get('final_val_loss')}", flush=True)
    return done


def spent_tokens(study: Any) -> int:
    """Every training token a study cost: its trials with their branched decays, and its confirmation runs."""
    total = 0
    for trial in study.trials:
        summary = _summary(trial.user_attrs.get("run_dir"))
        total += int(summary.get("tokens") or trial.user_attrs.get("tokens") or 0)
        total += int(summary.get("anneal_tokens") or 0)
    for key, record in study.user_attrs.items():
        if key.startswith("confirm:"):
            total += int(record.get("tokens") or 0)
    return total


def _summary(run_dir: str | None) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text()) if run_dir else {}
    except (OSError, ValueError):
        return {}


def run_sweep_of(path: str, overrides: list[str], storage: str, workers: int) -> tuple[Any, Any]:
    from picollm.sweeps import load_experiment, open_study, run_sweep
    from picollm.sweeps.export import recorded_confirmation

    exp = load_experiment(path, overrides)
    started = time.perf_counter()
    run_sweep(exp, storage, workers)
    print(f"  {exp.study.name}: {time.perf_counter() - started:.0f} s", flush=True)
    study = open_study(exp, storage, create=False)
    return study, recorded_confirmation(study)


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    return statistics.mean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))


def main(argv: list[str] | None = None) -> int:
    from picollm.sweeps import load_experiment
    from picollm.sweeps.confirm import params_key, seeds_for

    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    overrides = [
        *args.overrides,
        f"study.out_dir={args.out}/studies",
        f"tracking.out_dir={args.out}/runs",
        "tracking.wandb=disabled",
    ]
    exp = load_experiment(args.config, overrides)
    seeds = seeds_for(exp.base, exp.confirm)
    done_file = args.out / "reference.json"
    done = json.loads(done_file.read_text()) if done_file.is_file() else {}

    def save() -> None:
        done_file.write_text(json.dumps(done, indent=1))

    print(f"1. the pool: {args.pool} configurations x seeds {seeds} at the target", flush=True)
    pool = draw_pool(exp, args.pool)
    train_at_target(exp, pool, seeds, args.workers, done, save)

    def losses(params: dict[str, Any]) -> list[float]:
        return [done[f"{params_key(params)}|{seed}"]["final_val_loss"] for seed in seeds]

    means = sorted((statistics.mean(losses(p)), i) for i, p in enumerate(pool))
    best = pool[means[0][1]]
    pool_tokens = sum(int(done[f"{params_key(p)}|{s}"]["tokens"]) for p in pool for s in seeds)

    print("2. the target-aware sweep", flush=True)
    target_study, target_conf = run_sweep_of(args.config, overrides, args.storage, args.workers)
    print("3. the cheap sweep, its winner then trained at the target", flush=True)
    cheap_study, cheap_conf = run_sweep_of(
        args.cheap_config, [*overrides, "study.name=cheap", "study.target_tokens=null"], args.storage, args.workers
    )
    answers = {"target-aware sweep": (target_study, target_conf), "cheap sweep (quick.yaml)": (cheap_study, cheap_conf)}
    winners = {name: conf.ranked()[0].candidate.params for name, (_, conf) in answers.items()}
    train_at_target(exp, list(winners.values()), seeds, args.workers, done, save)

    lines = [
        f"reference: {len(pool)} configurations x {len(seeds)} seeds at {exp.base['train']['max_tokens']:,} tokens "
        f"= {pool_tokens:,} training tokens; pool best {means[0][0]:.4f} (the median configuration "
        f"{means[len(means) // 2][0]:.4f}, the worst {means[-1][0]:.4f})",
        "",
        "| search | its confirmed winner at the target | vs the pool's best (paired over seeds) | within 1 s.e.? "
        "| training tokens | share of the pool's |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, (study, _) in answers.items():
        mine = losses(winners[name])
        diff, se = paired(mine, losses(best))
        spent = spent_tokens(study)
        lines.append(
            f"| {name} | {statistics.mean(mine):.4f} | {diff:+.4f} ± {se:.4f} | {'yes' if diff <= se else 'no'} "
            f"| {spent:,} | {100 * spent / pool_tokens:.0f}% |"
        )
    table = "\n".join(lines)
    print(table)
    (args.out / "table.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
