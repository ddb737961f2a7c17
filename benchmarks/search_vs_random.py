"""Is the search better than chance? TPE + pruning against random search over several study seeds.

python -m benchmarks.search_vs_random --config experiments/quick.yaml --seeds 5 --n-trials 8 \\
    --budget-tokens 30000 --horizon-top 4 --parallel 2 --set data.tinystories=../shared/data/tinystories-sample \\
    --set data.offline_fallback=false --set data.compact_vocab=true

Each method (a sampler + pruner pair) runs one study per study seed, all at the same trial count and
per-trial token budget, ranked by one metric (``final_val_loss``: the study's validation set at the end
of a complete trial; pruned trials spend tokens but never count as a best value). The answer is the
median and interquartile range, over seeds, of the best value so far against cumulative training
tokens, and the goal check: does TPE with median pruning reach random search's median best value with
at most half of random search's tokens?

The short-horizon bias is measured on the same pool: the top configurations at the study budget are
trained again at ``--horizon-factor`` times that budget (same seed), and Kendall's tau compares the two
rankings. A low tau means a short-budget sweep picks winners that would not win a longer run.

Everything is resumable: studies live in one storage and continue where they stopped, long-horizon runs
are recorded in ``horizon.json`` as they finish; the report is rebuilt from both.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from picollm.cli import run_cli
from picollm.config import add_override_argument
from picollm.errors import ConfigError, PicoError
from picollm.fileio import atomic_write_json, atomic_write_text
from picollm.storage_url import add_storage_argument

GOAL_TOKEN_SHARE = 0.5  # TPE + pruning should match random search's median best with at most this share of tokens


@dataclass(frozen=True)
class Method:
    """A sampler and a pruner, with pruner options scaled to the per-trial budget."""

    label: str
    sampler: str
    pruner: str

    def overrides(self, budget: int, reports: int) -> list[str]:
        """``--set`` items; quick.yaml's own pruner settings at 60,000 tokens, scaled to ``budget``."""
        samplers = {"tpe": {"name": "tpe", "n_startup_trials": 4}, "random": {"name": "random"}}
        pruners = {
            "median": {"name": "median", "n_startup_trials": 3, "n_warmup_steps": budget // 3},
            "successive_halving": {
                "name": "successive_halving",
                "min_resource": budget // reports,
                "reduction_factor": 3,
            },
            "none": {"name": "none"},
        }
        return [
            f"study.sampler={json.dumps(samplers[self.sampler])}",
            f"study.pruner={json.dumps(pruners[self.pruner])}",
        ]


METHODS = {
    "tpe-median": Method("TPE + median pruning", "tpe", "median"),
    "tpe-sha": Method("TPE + successive halving", "tpe", "successive_halving"),
    "random": Method("random search, no pruning", "random", "none"),
}


@dataclass(frozen=True)
class Job:
    """One study of the comparison: everything a spawned process needs (plain data, picklable)."""

    config: str
    overrides: tuple[str, ...]
    storage: str
    method: str
    seed: int
    name: str


def study_overrides(args: argparse.Namespace, out: Path) -> list[str]:
    """The settings every study shares, whatever its method and seed."""
    return [
        *args.overrides,
        f"study.budget_tokens={args.budget_tokens}",
        f"study.reports={args.reports}",
        "study.metric=final_val_loss",
        f"study.out_dir={out / 'studies'}",
        f"tracking.out_dir={out / 'runs'}",
        "tracking.wandb=disabled",
        "tracking.save_weights=false",
    ]


def jobs(args: argparse.Namespace, out: Path) -> list[Job]:
    """Seed-major order: if time runs out, every method has the same seeds done."""
    shared = study_overrides(args, out)
    return [
        Job(
            args.config,
            tuple(shared + METHODS[m].overrides(args.budget_tokens, args.reports) + [f"study.seed={seed}"]),
            args.storage,
            m,
            seed,
            f"{args.prefix}-{m}-s{seed}",
        )
        for seed in range(args.seeds)
        for m in args.methods
    ]


def run_job(job: Job, n_trials: int, threads: int) -> str:
    """Run (or resume) one study to ``n_trials`` finished trials, one trial at a time."""
    from picollm.sweeps.experiment import load_experiment
    from picollm.sweeps.processes import interrupts_as_keyboard
    from picollm.sweeps.workers import WorkerSpec, prepare, run_worker

    exp, _ = prepare(load_experiment(job.config, list(job.overrides), job.name, n_trials), job.storage)
    with interrupts_as_keyboard():
        run_worker(WorkerSpec(exp, job.storage, threads=threads, verbose=False))
    return job.name


def _run_job_args(packed: tuple[Job, int, int]) -> str:
    """One study; on Ctrl-C ``in_processes`` interrupts the running studies and never starts the queued ones."""
    try:
        return run_job(*packed)
    except PicoError as exc:  # one study's problem; the others go on, the report shows what is missing
        return f"{packed[0].name} FAILED: {exc}"


def run_all(todo: list[Job], n_trials: int, parallel: int) -> None:
    """Studies in ``parallel`` processes (each sequential inside, one thread), with a progress bar."""
    from tqdm.auto import tqdm

    from picollm.sweeps.processes import in_processes

    packed = [(job, n_trials, 1 if parallel > 1 else 2) for job in todo]
    with tqdm(total=len(todo), unit="study", file=sys.stdout) as bar:
        for name in in_processes(_run_job_args, packed, parallel):
            bar.write(f"done {name}")
            bar.update()


# ---------------------------------------------------------------------------------------------
# Reading the studies back: best-so-far against cumulative tokens.
# ---------------------------------------------------------------------------------------------


@dataclass
class Trace:
    """One study as a step function: after ``tokens[i]`` training tokens, the best value was ``best[i]``."""

    method: str
    seed: int
    tokens: np.ndarray
    best: np.ndarray
    pruned: int
    complete: list[tuple[float, dict[str, Any]]]  # (value, params) of its complete trials

    def best_at(self, budget: float) -> float:
        """NaN before the first complete trial and beyond the tokens this study actually spent."""
        i = np.searchsorted(self.tokens, budget, side="right") - 1
        return float(self.best[i]) if i >= 0 and budget <= self.tokens[-1] else math.nan

    def tokens_to_reach(self, target: float) -> float:
        hit = np.nonzero(self.best <= target)[0]
        return float(self.tokens[hit[0]]) if hit.size else math.inf


def trace(study: Any, method: str, seed: int) -> Trace:
    from optuna.trial import TrialState

    tokens, best, spent, so_far, pruned, complete = [], [], 0, math.inf, 0, []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if not t.state.is_finished():
            continue
        spent += int(t.user_attrs.get("tokens") or 0)
        pruned += t.state == TrialState.PRUNED
        if t.state == TrialState.COMPLETE and t.value is not None:
            so_far = min(so_far, t.value)
            complete.append((t.value, dict(t.params)))
        tokens.append(spent)
        best.append(so_far)
    return Trace(method, seed, np.array(tokens, dtype=float), np.array(best), pruned, complete)


def load_traces(todo: list[Job], n_trials: int) -> tuple[list[Trace], list[str]]:
    """The studies that reached ``n_trials`` (equal trial counts or no comparison), and the names of the rest."""
    import optuna

    from picollm.sweeps.study import open_storage, quiet_optuna

    quiet_optuna()
    storage = open_storage(todo[0].storage)
    stored = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    traces, missing = [], []
    for job in todo:
        t = (
            trace(optuna.load_study(study_name=job.name, storage=storage), job.method, job.seed)
            if job.name in stored
            else None
        )
        if t is not None and len(t.tokens) >= n_trials:
            traces.append(t)
        else:
            missing.append(job.name)
    return traces, missing


def quartiles(values: list[float]) -> tuple[float, float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) * 2 <= len(values):  # median itself is not reached / infinite
        return (math.nan, math.inf, math.inf) if values else (math.nan,) * 3
    never = 1e300  # stands in for "not reached" (inf), which numpy cannot interpolate
    q = np.percentile(np.minimum(np.array(values, dtype=float), never), [25, 50, 75])
    q = np.where(q > 1e200, np.inf, q)
    return float(q[0]), float(q[1]), float(q[2])


def summarize(traces: list[Trace], methods: list[str]) -> dict[str, Any]:
    """Per method: final best and tokens (median, IQR), and tokens to reach random search's median best."""
    by = {m: [t for t in traces if t.method == m] for m in methods}
    random_best = quartiles([t.best[-1] for t in by.get("random", [])])[1] if by.get("random") else math.nan
    random_tokens = quartiles([t.tokens[-1] for t in by.get("random", [])])[1] if by.get("random") else math.nan
    rows = {}
    for m, ts in by.items():
        if not ts:
            continue
        reach = [t.tokens_to_reach(random_best) for t in ts]
        rows[m] = {
            "label": METHODS[m].label,
            "seeds": sorted(t.seed for t in ts),
            "best": quartiles([t.best[-1] for t in ts]),
            "tokens": quartiles([t.tokens[-1] for t in ts]),
            "pruned": quartiles([float(t.pruned) for t in ts]),
            "tokens_to_random_median": quartiles(reach),
            "reached_in": sum(math.isfinite(r) for r in reach),
        }
    goals = {m: _share(rows[m], random_tokens) for m in rows if METHODS[m].pruner != "none"}
    best = min(goals.values(), default=math.inf)
    return {
        "random_median_best": random_best,
        "random_median_tokens": random_tokens,
        "methods": rows,
        "goals": goals,  # per TPE + pruner: its median seed's tokens to random's median best / random's tokens
        "goal_share": best,
        "goal_met": bool(best <= GOAL_TOKEN_SHARE),
    }


def _share(row: dict[str, Any], random_tokens: float) -> float:
    reach = row["tokens_to_random_median"][1]
    return reach / random_tokens if random_tokens and math.isfinite(reach) else math.inf


def curve_grid(traces: list[Trace], points: int = 60) -> np.ndarray:
    top = max((t.tokens[-1] for t in traces if t.tokens.size), default=1.0)
    return np.linspace(0, top, points)


def plot(traces: list[Trace], methods: list[str], summary: dict[str, Any], path: Path) -> None:
    """Median best-so-far against cumulative tokens with the IQR shaded, one colour per method."""
    from matplotlib.figure import Figure  # not pyplot: a notebook's backend stays as it is

    grid = curve_grid(traces)
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    for m in methods:
        ts = [t for t in traces if t.method == m]
        if not ts:
            continue
        values = np.array([[t.best_at(x) for x in grid] for t in ts])
        values = np.where(np.isinf(values), np.nan, values)
        with warnings.catch_warnings():  # before any trial completes a column is all NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            q1, q2, q3 = np.nanpercentile(values, [25, 50, 75], axis=0)
        q2[np.isnan(values).sum(axis=0) * 2 > len(ts)] = np.nan  # a median needs most seeds to have spent that much
        ax.plot(grid, q2, label=f"{METHODS[m].label} ({len(ts)} seeds)")
        ax.fill_between(grid, q1, q3, alpha=0.2)
    if math.isfinite(summary["random_median_best"]):
        ax.axhline(summary["random_median_best"], ls="--", c="grey", lw=0.8, label="random search: median best")
    ax.set(xlabel="cumulative training tokens", ylabel="best final_val_loss so far (nats)")
    ax.set_title("search vs chance: median and IQR over study seeds", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


# ---------------------------------------------------------------------------------------------
# Short-horizon bias: the top configs at the study budget, trained again at 10x.
# ---------------------------------------------------------------------------------------------


def top_configs(traces: list[Trace], top: int) -> list[tuple[float, dict[str, Any]]]:
    from picollm.sweeps.confirm import params_key

    pool: dict[str, tuple[float, dict[str, Any]]] = {}
    for t in traces:
        for value, params in t.complete:
            key = params_key(params)
            if key not in pool or value < pool[key][0]:
                pool[key] = (value, params)
    return sorted(pool.values(), key=lambda vp: vp[0])[:top]


def horizon(args: argparse.Namespace, traces: list[Trace], out: Path) -> dict[str, Any]:
    """Train the pool's top configs at ``horizon_factor`` x budget, ``--parallel`` at once (resumable)."""
    from scipy.stats import kendalltau
    from tqdm.auto import tqdm

    from picollm.sweeps.confirm import params_key, run_config
    from picollm.sweeps.experiment import load_experiment
    from picollm.sweeps.processes import in_processes
    from picollm.sweeps.workers import resolve_offline

    path = out / "horizon.json"
    exp = resolve_offline(load_experiment(args.config, study_overrides(args, out), f"{args.prefix}-horizon"))
    long_budget = args.budget_tokens * args.horizon_factor
    top = top_configs(traces, args.horizon_top)
    todo = []
    for value, params in top:
        if params_key(params) not in _read_json(path):
            cfg = run_config(
                exp.base,
                params,
                exp.base.train.seed,
                budget_tokens=long_budget,
                reports=args.reports,
                group=exp.study.name,
                job_type="horizon",
                name=None,
            )
            cfg.train.threads = 1 if args.parallel > 1 else None
            todo.append((cfg, value, params))
    for key, record in tqdm(
        in_processes(_long_run, todo, args.parallel),
        total=len(todo),
        unit="run",
        desc=f"{args.horizon_factor}x budget",
        file=sys.stdout,
    ):
        atomic_write_json(path, {**_read_json(path), key: record})  # re-read: another process may have added runs
    done = _read_json(path)
    rows = [done[params_key(p)] for _, p in top if params_key(p) in done]
    short, long = [r["short"] for r in rows], [r["final_val_loss"] for r in rows]
    tau, p = kendalltau(short, long) if len(rows) >= 3 else (math.nan, math.nan)
    return {"budget": args.budget_tokens, "long_budget": long_budget, "rows": rows, "tau": tau, "p": p}


def _long_run(item: tuple[Any, float, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    from picollm.sweeps.confirm import params_key, train_record

    cfg, value, params = item
    return params_key(params), {"params": params, "short": value, **train_record(cfg, "horizon-")}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


# ---------------------------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------------------------


def _iqr(q: tuple[float, float, float], fmt: str) -> str:
    if not math.isfinite(q[1]):
        return "not reached"
    upper = "not reached" if not math.isfinite(q[2]) else format(q[2], fmt)
    return f"{format(q[1], fmt)} ({format(q[0], fmt)}-{upper})"


def table(summary: dict[str, Any]) -> str:
    lines = [
        "| search | best final_val_loss, median (IQR) | training tokens, median (IQR) | pruned trials, median "
        "| tokens to reach random's median best, median (IQR) | as a share of random's tokens |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary["methods"].values():
        reach = _iqr(row["tokens_to_random_median"], ",.0f")
        share = row["tokens_to_random_median"][1] / summary["random_median_tokens"]
        n = len(row["seeds"])
        lines.append(
            f"| {row['label']} ({n} seeds) | {_iqr(row['best'], '.4f')} | {_iqr(row['tokens'], ',.0f')} "
            f"| {row['pruned'][1]:.0f} | {reach} (reached in {row['reached_in']}/{n}) "
            f"| {f'{share:.0%}' if math.isfinite(share) else '-'} |"
        )
    return "\n".join(lines)


def verdict(summary: dict[str, Any], hz: dict[str, Any] | None) -> list[str]:
    lines = [
        f"goal (TPE with pruning reaches random search's median best {summary['random_median_best']:.4f} with <= "
        f"{GOAL_TOKEN_SHARE:.0%} of random's {summary['random_median_tokens']:,.0f} tokens): "
        + ("MET" if summary["goal_met"] else "NOT MET")
    ]
    for m, share in summary["goals"].items():
        reached = f"at {share:.0%} of the tokens" if math.isfinite(share) else "not reached by the median seed"
        met = "meets it" if share <= GOAL_TOKEN_SHARE else "does not"
        seeds = f"{summary['methods'][m]['reached_in']}/{len(summary['methods'][m]['seeds'])}"
        lines.append(f"  {METHODS[m].label}: {reached} ({met}; reached in {seeds} seeds)")
    if hz:
        lines.append(
            f"short-horizon bias: Kendall tau {hz['tau']:.2f} (p={hz['p']:.2g}) between the ranking of the top "
            f"{len(hz['rows'])} configs at {hz['budget']:,} tokens and at {hz['long_budget']:,} tokens"
        )
    return lines


def report(args: argparse.Namespace, out: Path, todo: list[Job]) -> list[str]:
    traces, missing = load_traces(todo, args.n_trials)
    if not traces:
        raise ConfigError(f"no study of this comparison in {args.storage} yet: run without --report-only first")
    summary = summarize(traces, args.methods)
    hz = horizon(args, traces, out) if args.horizon_top >= 3 else None
    plot(traces, args.methods, summary, Path(args.figure))
    lines = [table(summary), "", *verdict(summary, hz)]
    if missing:
        lines.append(f"left out, fewer than {args.n_trials} finished trials: {', '.join(missing)}")
    atomic_write_json(out / "compare.json", {"setup": vars(args), "summary": summary, "horizon": hz})
    atomic_write_text(out / "compare.md", "\n".join(lines) + "\n")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.search_vs_random",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="the experiment YAML whose search space is compared")
    parser.add_argument("--seeds", type=int, default=5, help="study seeds per method (sampler seeds 0..N-1)")
    parser.add_argument("--n-trials", type=int, default=8, help="finished trials per study, equal for every method")
    parser.add_argument("--budget-tokens", type=int, default=30000, help="training tokens per trial")
    parser.add_argument("--reports", type=int, default=6, help="validation losses reported to the pruner per trial")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument(
        "--horizon-top", type=int, default=4, help="top configs re-trained at the long horizon (0: skip)"
    )
    parser.add_argument("--horizon-factor", type=int, default=10, help="long horizon = this x --budget-tokens")
    parser.add_argument(
        "--parallel", type=int, default=1, help="studies (then long-horizon runs) at once, one process and thread each"
    )
    parser.add_argument("--prefix", default="cmp", help="study names are <prefix>-<method>-s<seed>")
    parser.add_argument("--out", default="results/compare", help="run records, horizon.json, compare.json/.md")
    parser.add_argument("--figure", default="docs/search_vs_random.png")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="no new trials: the table and figure from the studies (long-horizon runs still resume)",
    )
    add_storage_argument(parser)
    parser.set_defaults(storage=os.environ.get("PICOLLM_STORAGE", "sqlite:///results/compare/optuna.db"))
    add_override_argument(parser, "trainer or study override shared by every study, e.g. data.compact_vocab=true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("seeds", "n_trials", "budget_tokens", "reports", "parallel", "horizon_factor"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    out = Path(args.out)
    todo = jobs(args, out)
    if not args.report_only:
        run_all(todo, args.n_trials, args.parallel)
    print("\n".join(report(args, out, todo)))
    print(f"written: {out}/compare.md, {out}/compare.json, {args.figure}")
    return 0


if __name__ == "__main__":
    run_cli(main)
