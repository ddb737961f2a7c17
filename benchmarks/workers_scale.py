"""Does a sweep scale with its workers? Finished trials per second of quick.yaml-sized trials on PostgreSQL.

    PICOLLM_STORAGE=postgresql://postgres@127.0.0.1:5432/postgres python -m benchmarks.workers_scale
    python -m benchmarks.workers_scale --repo /path/to/another/checkout     # the same, for another version

For each worker count W it runs ``python sweep.py`` with ``--workers W`` on a fresh database (created on the
server of ``--storage`` and dropped afterwards), quick.yaml's space and budget, ``trials_per_worker * W`` trials
and no confirmation, exactly as a user would, and reads the trials' own start and end times back from the study:
trials/s = finished trials / (last trial's end - first trial's start). Process start-up, data loading and the
exports fall outside that window; storage calls, pruning reports and waiting for the cap's lock fall inside it.
With ``--repo`` the command runs another checkout's ``sweep.py`` with this Python, so two versions are measured
on one machine in one session. Machines differ: compare the figures of one run, or ratios to the yardstick.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from picollm.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
WORKERS = (1, 2, 4, 8)


def experiment_file(repo: Path, folder: Path, name: str, n_trials: int) -> Path:
    """quick.yaml's trainer, space and study settings, without its confirmation (only trials are timed)."""
    raw = yaml.safe_load((repo / "experiments" / "quick.yaml").read_text())
    raw.pop("confirm", None)
    raw["base"] = str(repo / "experiments" / raw["base"])
    raw["study"].update(name=name, n_trials=n_trials, out_dir=str(folder / "studies"))
    raw.setdefault("tracking", {})["out_dir"] = str(folder / "runs")
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def trials_per_second(url: str, name: str) -> dict[str, Any]:
    import optuna

    study = optuna.load_study(study_name=name, storage=url)
    done = [t for t in study.trials if t.state.is_finished() and t.datetime_complete and t.datetime_start]
    finished = [t for t in done if t.state.name in ("COMPLETE", "PRUNED")]
    start = min(t.datetime_start for t in done)
    end = max(t.datetime_complete for t in done)
    window = (end - start).total_seconds()
    return {
        "finished": len(finished),
        "failed": len(done) - len(finished),
        "window_s": window,
        "trials_per_s": len(finished) / window if window > 0 else None,
    }


def run_one(repo: Path, url: str, workers: int, n_trials: int, overrides: list[str], folder: Path) -> dict[str, Any]:
    name = f"scale-w{workers}-{uuid.uuid4().hex[:6]}"
    path = experiment_file(repo, folder, name, n_trials)
    command = [
        sys.executable,
        str(repo / "sweep.py"),
        "--config",
        str(path),
        "--workers",
        str(workers),
        "--storage",
        url,
        *[arg for item in overrides for arg in ("--set", item)],
    ]
    started = time.perf_counter()
    proc = subprocess.run(
        command, cwd=folder, capture_output=True, text=True, check=False, env={**os.environ, "PICOLLM_STORAGE": url}
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"sweep.py failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return {"workers": workers, "trials": n_trials, "command_s": wall, **trials_per_second(url, name)}


def fresh_database(url: str) -> tuple[str, Any]:
    import sqlalchemy

    name = f"picollm_scale_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + f"/{name}", lambda: _drop(admin, name)


def _drop(admin: Any, name: str) -> None:
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
    admin.dispose()


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["workers  trials  finished  failed  window s  trials/s  vs 1 worker  command s"]
    one = rows[0]["trials_per_s"]
    for r in rows:
        lines.append(
            f"{r['workers']:>7}  {r['trials']:>6}  {r['finished']:>8}  {r['failed']:>6}  {r['window_s']:>8.1f}  "
            f"{r['trials_per_s']:>8.3f}  {r['trials_per_s'] / one:>10.2f}x  {r['command_s']:>9.1f}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workers_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--storage",
        default=os.environ.get("PICOLLM_STORAGE"),
        help="a PostgreSQL URL whose server may create databases (default: $PICOLLM_STORAGE)",
    )
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose sweep.py runs (default: this one)")
    parser.add_argument("--workers", type=int, nargs="+", default=list(WORKERS))
    parser.add_argument("--trials-per-worker", type=int, default=4)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to sweep.py, e.g. data.tinystories=../shared/data/tinystories-sample",
    )
    parser.add_argument("--out", type=Path, default=Path("results/bench_workers.json"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.storage or not args.storage.startswith("postgresql"):
        parser.error("--storage (or PICOLLM_STORAGE) must be a postgresql:// URL")
    url, drop = fresh_database(args.storage)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="picollm-scale-") as tmp:
            for workers in args.workers:
                rows.append(
                    run_one(
                        args.repo.resolve(), url, workers, args.trials_per_worker * workers, args.overrides, Path(tmp)
                    )
                )
                print(table(rows).splitlines()[-1] if len(rows) > 1 else table(rows), flush=True)
    finally:
        drop()
    print(f"\n{args.repo.resolve()}\n{table(rows)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"repo": str(args.repo.resolve()), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    run_cli(main)
