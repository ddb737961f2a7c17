"""Does the target sweep find what brute force at the target finds, for a third of its tokens, every time?

    python -m benchmarks.target_vs_brute_force --set data.tinystories=../shared/data/tinystories-sample \\
        --set data.offline_fallback=false

1. Pools (test data): for each ``--pool-seeds`` seed, ``--pool-size`` configurations drawn at random from the
   experiment's space by a sampler of their own, plus the base config, each trained with the experiment's recipe at
   the target with the confirmation's seeds. Each pool is measured once and cached as JSON with the code's version.
2. Sweeps: the experiment run once per ``--study-seeds`` seed, exactly as a user runs it; every token it trained
   (trials, their branched decays, the confirmation) is counted from the run records, not from the sweep's own line.
3. Per pool and run: the confirmed winner's rank among the pool's configurations, its regret against the pool's best
   (paired over the shared seeds), the share of the achievable gain (base config -> pool best), the tokens and their
   share of the pool's; beside it random search given the same tokens (configurations of the pool trained at the
   target with the same seeds, the best one picked), its median over 1,000 draws.

Every run is scored on the study's validation tokens with the same seeds, so two configurations are compared by the
standard error of their paired difference. Resumable: finished runs and sweeps are kept in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from picollm.checkpoint import code_version
from picollm.config import add_override_argument
from picollm.storage_url import DEFAULT_STORAGE

RANDOM_DRAWS = 1000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.target_vs_brute_force", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--config", default="experiments/target.yaml", help="the target-aware experiment")
    parser.add_argument("--pool-seeds", type=int, nargs="+", default=[101, 202], help="one pool per seed (>= 2)")
    parser.add_argument("--pool-size", type=int, default=16, help="random configurations per pool, besides the base")
    parser.add_argument("--study-seeds", type=int, nargs="+", default=[0, 1, 2], help="one sweep per study.seed")
    parser.add_argument("--workers", type=int, default=2, help="processes training at once")
    parser.add_argument(
        "--only", choices=("pools", "sweeps", "all"), default="all", help="run one phase only (all: score the cached)"
    )
    parser.add_argument("--yardstick-s", type=float, help="../shared/bench/quick_reference.py's time, this session")
    parser.add_argument("--storage", default=DEFAULT_STORAGE.replace("optuna.db", "bench_target.db"))
    add_override_argument(parser, "override a key of the experiment, e.g. data.tinystories=PATH (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("results/bench_target"))
    return parser


def draw_pool(exp: Any, n: int, seed: int) -> list[dict[str, Any]]:
    """The base config, then ``n`` distinct configurations drawn at random from the experiment's space."""
    import optuna

    from picollm.sweeps.confirm import params_key
    from picollm.sweeps.experiment import baseline_params, sample

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    base = baseline_params(exp.space, exp.base)
    pool = {params_key(base): base}
    while len(pool) < n + 1:
        params = sample(study.ask(), exp.space, exp.base)
        pool.setdefault(params_key(params), params)
    return list(pool.values())


def _train(job: tuple[str, Any]) -> tuple[str, dict[str, Any]]:
    from picollm.sweeps.confirm import train_record

    key, cfg = job
    return key, train_record(cfg, "bench-")


def run_key(params: dict[str, Any], seed: int) -> str:
    from picollm.sweeps.confirm import params_key

    return f"{params_key(params)}|{seed}"


def train_at_target(
    exp: Any, configs: list[dict[str, Any]], seeds: list[int], workers: int, cache: Cache, label: str
) -> None:
    """Each configuration trained at the target with each seed, as a confirmation run is; kept in ``cache``."""
    from picollm.sweeps.confirm import run_config
    from picollm.sweeps.experiment import target_of
    from picollm.sweeps.processes import in_processes

    jobs = []
    for params in configs:
        for seed in seeds:
            key = run_key(params, seed)
            if key not in cache.runs:
                cfg = run_config(
                    exp.base,
                    params,
                    seed,
                    budget_tokens=target_of(exp.study),
                    reports=1,
                    group="bench-target",
                    job_type="reference",
                    name=f"ref-s{seed}",
                )
                quiet = {"train.threads": 1, "tracking.wandb": "disabled", "tracking.save_weights": False}
                jobs.append((key, cfg.with_values(quiet)))
    for i, (key, record) in enumerate(in_processes(_train, jobs, workers)):
        cache.runs[key] = record
        cache.save()
        print(f"  {label}: {i + 1}/{len(jobs)} runs at the target, loss {record.get('final_val_loss')}", flush=True)


@dataclass
class Cache:
    """A JSON file of finished runs, with the code version that trained them."""

    path: Path
    runs: dict[str, Any]
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: Path, **meta: Any) -> Cache:
        if path.is_file():
            stored = json.loads(path.read_text())
            return cls(path, stored["runs"], stored["meta"])
        return cls(path, {}, {"code_version": code_version(), **meta})

    def save(self) -> None:
        self.path.write_text(json.dumps({"meta": self.meta, "runs": self.runs}, indent=1))


def losses(runs: dict[str, Any], params: dict[str, Any], seeds: list[int]) -> list[float]:
    return [runs[run_key(params, seed)]["final_val_loss"] for seed in seeds]


def spent_tokens(study: Any) -> int:
    """Every training token a study cost, read from its run records rather than its own count: each trial's run and
    branched decays (a run that went on from another's checkpoint less what that one had trained), and its
    confirmation runs."""
    from picollm.sweeps.trial import TrialRecord, trained

    total = 0
    for trial in study.trials:
        run_dir = TrialRecord.of(trial).run_dir
        total += trained(_read(run_dir, "summary.json"))
        source = _read(run_dir, "meta.json").get("resumed_from")
        if source:
            total -= trained(_read(source, "summary.json"))
    for key, record in study.user_attrs.items():
        if key.startswith("confirm:"):
            total += int(record.get("tokens") or 0)
    return total


def _read(run_dir: str | None, name: str) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / name).read_text()) if run_dir else {}
    except (OSError, ValueError):
        return {}


def run_sweeps(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    """The experiment once per study seed, as a user runs it; its winner, tokens and wall time kept in sweeps.json."""
    from picollm.sweeps import load_experiment, open_study, run_sweep
    from picollm.sweeps.export import recorded_confirmation

    path = args.out / "sweeps.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    for seed in args.study_seeds:
        exp = load_experiment(args.config, [*overrides, f"study.seed={seed}"])
        name = f"{exp.study.name}-s{seed}"
        if name in done:
            continue
        exp = load_experiment(args.config, [*overrides, f"study.seed={seed}", f"study.name={name}"])
        print(f"sweep {name}", flush=True)
        started = time.perf_counter()
        run_sweep(exp, args.storage, args.workers)
        wall = time.perf_counter() - started
        study = open_study(exp, args.storage, create=False)
        winner = recorded_confirmation(study).ranked()[0].candidate.params
        done[name] = {"seed": seed, "winner": winner, "tokens": spent_tokens(study), "wall_s": round(wall, 1)}
        done[name]["code_version"] = code_version()
        path.write_text(json.dumps(done, indent=1))
    return done


def random_search_share(means: dict[str, float], base: float, best: float, budget_configs: float, seed: int) -> float:
    """Random search given ``budget_configs`` configurations' tokens: median share of the gain over draws of the pool.

    A fractional budget buys one configuration more in that fraction of the draws, so random search trains the sweep's
    tokens on average: rounding down would hand it up to a configuration less than the sweep spent.
    """
    rng = random.Random(seed)
    names = list(means)
    whole, part = divmod(budget_configs, 1)
    shares = []
    for _ in range(RANDOM_DRAWS):
        n = min(int(whole) + (rng.random() < part), len(names))
        found = min((means[name] for name in rng.sample(names, n)), default=base)  # none drawn: the base config
        shares.append((base - found) / (base - best))
    return statistics.median(shares)


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    return statistics.mean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))


def score(
    pool: list[dict[str, Any]], known: dict[str, Any], sweeps: dict[str, Any], seeds: list[int], target: int
) -> list[dict[str, Any]]:
    """Each sweep's winner against one pool: rank, regret, share of the gain, tokens; random search beside it."""
    from picollm.sweeps.confirm import params_key

    means = {params_key(p): statistics.mean(losses(known, p, seeds)) for p in pool}
    base_key = params_key(pool[0])
    best_key = min(means, key=means.get)
    base, best = means[base_key], means[best_key]
    pool_tokens = sum(int(known[run_key(p, s)]["tokens"]) for p in pool for s in seeds)
    drawn = {k: v for k, v in means.items() if k != base_key}
    rows = []
    for name, run in sweeps.items():
        params = run["winner"]
        mine = losses(known, params, seeds)
        regret, se = paired(mine, losses(known, next(p for p in pool if params_key(p) == best_key), seeds))
        mean = statistics.mean(mine)
        per_config = len(seeds) * target
        rows.append(
            {
                "sweep": name,
                "rank": 1 + sum(m < mean for k, m in means.items() if k != params_key(params)),
                "of": len(means) + (params_key(params) not in means),
                "regret": regret,
                "regret_se": se,
                "share": (base - mean) / (base - best),
                "tokens": run["tokens"],
                "token_share": run["tokens"] / pool_tokens,
                "random_configs": run["tokens"] / per_config,
                "random_share": random_search_share(drawn, base, best, run["tokens"] / per_config, run["seed"]),
                "wall_s": run["wall_s"],
            }
        )
    return rows


def table(pool_seed: int, rows: list[dict[str, Any]], yardstick: float | None) -> list[str]:
    lines = [
        f"pool {pool_seed}:",
        "| sweep | winner's rank | regret (paired over seeds) | share of the gain | tokens | share of the pool's "
        "| random search, same tokens | wall time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        wall = f"{r['wall_s']:.0f} s" + (f" ({r['wall_s'] / yardstick:.1f}x yardstick)" if yardstick else "")
        lines.append(
            f"| {r['sweep']} | {r['rank']} of {r['of']} | {r['regret']:+.4f} ± {r['regret_se']:.4f} "
            f"| {100 * r['share']:.0f}% | {r['tokens'] / 1e6:.2f} M | {100 * r['token_share']:.0f}% "
            f"| {100 * r['random_share']:.0f}% ({r['random_configs']:.2f} configs) | {wall} |"
        )
    shares = [r["share"] for r in rows]
    lines.append(
        f"mean share of the gain {100 * statistics.mean(shares):.0f}%, lowest {100 * min(shares):.0f}%; "
        f"mean share of the pool's tokens {100 * statistics.mean(r['token_share'] for r in rows):.0f}%; "
        f"random search at the same tokens {100 * statistics.mean(r['random_share'] for r in rows):.0f}%"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    from picollm.sweeps import load_experiment
    from picollm.sweeps.confirm import seeds_for
    from picollm.sweeps.experiment import ConfirmSettings, target_of

    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    overrides = [
        *args.overrides,
        f"study.out_dir={args.out}/studies",
        f"tracking.out_dir={args.out}/runs",
        "tracking.wandb=disabled",
    ]
    exp = load_experiment(args.config, overrides)
    seeds = seeds_for(exp.base.train.seed, exp.confirm or ConfirmSettings())
    target = target_of(exp.study)
    pools = {}
    for pool_seed in [] if args.only == "sweeps" else args.pool_seeds:
        cache = Cache.open(args.out / f"pool-{pool_seed}.json", pool_seed=pool_seed, seeds=seeds, target=target)
        pool = draw_pool(exp, args.pool_size, pool_seed)
        print(f"pool {pool_seed}: {len(pool)} configurations x seeds {seeds} at {target:,} tokens", flush=True)
        train_at_target(exp, pool, seeds, args.workers, cache, f"pool {pool_seed}")
        pools[pool_seed] = (pool, cache)
    if args.only == "pools":
        return 0
    sweeps = run_sweeps(args, overrides)
    if args.only == "sweeps":
        return 0
    known = {key: run for _, cache in pools.values() for key, run in cache.runs.items()}
    winners = Cache.open(args.out / "winners.json", seeds=seeds, target=target)
    unmeasured = [run["winner"] for run in sweeps.values() if run_key(run["winner"], seeds[0]) not in known]
    train_at_target(exp, unmeasured, seeds, args.workers, winners, "winners")
    known.update(winners.runs)
    lines = []
    for pool_seed, (pool, _) in pools.items():
        lines += [*table(pool_seed, score(pool, known, sweeps, seeds, target), args.yardstick_s), ""]
    print("\n".join(lines))
    (args.out / "table.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
