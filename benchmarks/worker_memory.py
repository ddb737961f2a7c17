"""Benchmark: the memory of a sweep's processes. ``python -m benchmarks.worker_memory [--workers N] [--set KEY=VALUE]``.

Runs ``python sweep.py --workers N`` (N >= 2: one worker trains in the sweep's own process) on quick.yaml's trainer,
space and study settings (no confirmation; a fresh SQLite study in a temporary folder), and every 0.5 s while all N
worker processes are alive reads ``/proc/<pid>/smaps_rollup`` of its forkserver and workers. Pss splits each shared
page between the processes sharing it, so the sum of Pss is what the forkserver and workers cost the machine;
Private_Dirty is what one process holds alone. Prints the largest of each seen; asserts nothing. Linux only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.workers_scale import experiment_file
from picollm.config import add_override_argument

ROOT = Path(__file__).resolve().parents[1]
FORKSERVER = "multiprocessing.forkserver"


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc/<pid>/stat's fourth field)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def memory_mb(pid: int) -> dict[str, float]:
    """Pss and Private_Dirty of ``pid`` in MB (empty if it has ended)."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return {}
    keys = {"Pss:": "pss", "Private_Dirty:": "private"}
    return {keys[line.split()[0]]: int(line.split()[1]) / 1024 for line in lines if line.split()[0] in keys}


def sweep_processes(sweep: int) -> tuple[int | None, list[int]]:
    """The sweep's forkserver and the workers forked from it."""
    for pid in children(sweep):
        try:
            if FORKSERVER in Path(f"/proc/{pid}/cmdline").read_text():
                return pid, children(pid)
        except OSError:
            continue
    return None, []


def measure(workers: int, overrides: list[str]) -> dict[str, float]:
    """The largest memory seen while all ``workers`` trained."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = experiment_file(ROOT, folder, "memory", n_trials=4 * workers)
        command = [sys.executable, str(ROOT / "sweep.py"), "--config", str(path), "--workers", str(workers)]
        command += ["--storage", f"sqlite:///{folder}/s.db", *[a for item in overrides for a in ("--set", item)]]
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        most = {"total_pss": 0.0, "forkserver_pss": 0.0, "worker_pss": 0.0, "worker_private": 0.0, "samples": 0}
        while proc.poll() is None:
            time.sleep(0.5)
            server, pids = sweep_processes(proc.pid)
            seen = [memory_mb(pid) for pid in pids]
            if server is None or len([m for m in seen if m]) < workers:
                continue
            own = memory_mb(server)
            most["samples"] += 1
            most["forkserver_pss"] = max(most["forkserver_pss"], own.get("pss", 0.0))
            most["worker_pss"] = max(most["worker_pss"], *(m.get("pss", 0.0) for m in seen))
            most["worker_private"] = max(most["worker_private"], *(m.get("private", 0.0) for m in seen))
            total = own.get("pss", 0.0) + sum(m.get("pss", 0.0) for m in seen)
            most["total_pss"] = max(most["total_pss"], total)
        if proc.returncode:
            sys.exit(f"error: the sweep exited {proc.returncode}: run {' '.join(command)} to see why")
        if not most["samples"]:
            sys.exit("error: no forkserver with all its workers was seen: it takes --workers 2 or more, on Linux")
        return most


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="sweep workers, 2 or more (default 2)")
    add_override_argument(parser, "override a key of the experiment, e.g. optim.lr=3e-3 (repeatable)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    m = measure(args.workers, args.overrides)
    print(f"{args.workers} workers, {m['samples']} samples while all trained (largest seen, MB):")
    print(
        f"  forkserver Pss {m['forkserver_pss']:.0f}; each worker: Pss {m['worker_pss']:.0f}, "
        f"Private_Dirty {m['worker_private']:.0f}; forkserver and workers together: Pss {m['total_pss']:.0f}"
    )


if __name__ == "__main__":
    main()
