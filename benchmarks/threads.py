"""Benchmark: how many torch threads a lone training run should use. ``python -m benchmarks.threads [--repeats N]``.

Times one quick.yaml-sized run (``experiments/quick.yaml``'s base config, ``train.max_tokens=60000``, on the shared
TinyStories sample) as a whole ``python -m picollm.train`` process with each thread count, on this machine as it is
("quiet": nothing started by this benchmark beside it) and busy (``../shared/bench/quick_reference.py`` running
beside it, restarted until the run ends). The machine may be shared, so every row carries the load average before
and after it, and the yardstick's own time alone is measured in the same session: compare ratios across sessions,
not seconds. ``auto`` leaves ``train.threads`` unset, so the row shows what :mod:`picollm.threads`'s rule chose. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
YARDSTICK = SHARED / "bench" / "quick_reference.py"
SAMPLE = SHARED / "data" / "tinystories-sample"
RUN = [
    "train.max_tokens=60000",
    f"data.tinystories={SAMPLE}",
    "data.offline_fallback=false",
    "tracking.wandb=disabled",
    "train.progress=false",
]


def load() -> str:
    """The 1-minute load average and runnable/total tasks, as /proc/loadavg says them."""
    fields = Path("/proc/loadavg").read_text().split()
    return f"{fields[0]} ({fields[3]})"


def yardstick() -> float:
    """One run of the shared yardstick, alone: its printed wall time in seconds."""
    out = subprocess.run([sys.executable, str(YARDSTICK)], capture_output=True, text=True, check=True, cwd=ROOT)
    return float(out.stdout.split()[-1])


@contextmanager
def busy(times: list[float]) -> Iterator[None]:
    """The yardstick running beside the block, restarted until it ends; each finished copy's time goes to ``times``."""
    stop = threading.Event()
    current: list[subprocess.Popen[str]] = []

    def loop() -> None:
        while not stop.is_set():
            proc = subprocess.Popen([sys.executable, str(YARDSTICK)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
            current[:] = [proc]
            out, _ = proc.communicate()
            if proc.returncode == 0 and out.strip():
                times.append(float(out.split()[-1]))

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    time.sleep(1.0)  # a head start: the yardstick is under way before the run is
    try:
        yield
    finally:
        stop.set()
        for proc in current:
            proc.kill()
        worker.join()


def train_once(tmp: Path, threads: str, config: Path, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """One ``python -m picollm.train`` process: its wall time start to exit, its run's summary, the threads it ran
    with (``auto``: train.threads unset, so picollm.threads chose)."""
    out_dir = Path(tempfile.mkdtemp(dir=tmp))
    chosen = [] if threads == "auto" else [f"train.threads={threads}"]
    sets = [*RUN, *chosen, f"tracking.out_dir={out_dir}", f"data.cache_dir={tmp / 'cache'}", *extra]
    command = [sys.executable, "-m", "picollm.train", "--config", str(config)]
    started = time.perf_counter()
    subprocess.run([*command, *(a for s in sets for a in ("--set", s))], check=True, capture_output=True, cwd=ROOT)
    wall = time.perf_counter() - started
    (run_dir,) = out_dir.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    ran_with = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["threads"]
    return {
        "process_s": wall,
        "run_s": summary["wall_time_s"],
        "tokens_per_s": summary["tokens"] / summary["wall_time_s"],
        "final_val_loss": summary["final_val_loss"],
        "ran_with": ran_with,
    }


def measure(tmp: Path, mode: str, threads: str, config: Path, extra: tuple[str, ...]) -> dict[str, Any]:
    before, yard = load(), []
    if mode == "busy":
        with busy(yard):
            row = train_once(tmp, threads, config, extra)
    else:
        row = train_once(tmp, threads, config, extra)
    return {"mode": mode, "threads": threads, **row, "load_before": before, "load_after": load(), "beside": yard}


def table(rows: list[dict[str, Any]], alone: list[float]) -> str:
    lines = [
        f"yardstick alone ({YARDSTICK.name}, 2 threads): " + ", ".join(f"{t:.1f} s" for t in alone),
        f"cores this process may use: {len(os.sched_getaffinity(0))}",
        "",
        f"{'mode':6} {'threads':>9} {'process s':>10} {'run s':>8} {'tokens/s':>9} {'final val':>10}  load before -> "
        "after  (yardstick copies that finished beside it, s)",
    ]
    for r in rows:
        beside = ", ".join(f"{t:.1f}" for t in r["beside"]) or "-"
        threads = f"auto={r['ran_with']}" if r["threads"] == "auto" else r["threads"]
        lines.append(
            f"{r['mode']:6} {threads:>9} {r['process_s']:>10.1f} {r['run_s']:>8.1f} {r['tokens_per_s']:>9,.0f} "
            f"{r['final_val_loss']:>10.4f}  {r['load_before']} -> {r['load_after']}  ({beside})"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", nargs="+", default=["1", "2", "auto"], help="thread counts to compare; auto: the rule's choice"
    )
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "quick.yaml", help="the run's config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a key of the run (repeatable)")
    parser.add_argument("--modes", nargs="+", choices=("quiet", "busy"), default=["quiet", "busy"])
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every (mode, threads), interleaved")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        extra = tuple(args.overrides)
        train_once(tmp, "1", args.config, (*extra, "train.max_tokens=512"))  # the token cache: no row tokenizes
        alone = [yardstick()]
        rows = [
            measure(tmp, m, t, args.config, extra)
            for _ in range(args.repeats)
            for m in args.modes
            for t in args.threads
        ]
        alone.append(yardstick())
    print(table(rows, alone))
    if args.out:
        args.out.write_text(json.dumps({"yardstick_alone_s": alone, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
