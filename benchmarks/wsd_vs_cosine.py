"""A WSD run decayed at budget B against a cosine run to B, at several budgets and seeds.

    python -m benchmarks.wsd_vs_cosine --set data.tinystories=../shared/data/tinystories-sample \\
        --set data.offline_fallback=false

For each seed, ONE warmup-stable-decay run trains to the largest budget and branches a decay at every smaller one
(``train.anneal_at``: the loss a WSD run of that budget ends with), and one cosine run trains to each budget. Both
are scored on the same validation tokens, so the difference at a budget is paired by seed; its standard error is
over seeds. The WSD runs cost the largest budget plus a decay per smaller budget; the cosine runs cost the sum of
the budgets: that is the point of WSD.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from picollm.config import add_override_argument, load_config
from picollm.trainer import train

BUDGETS = (60_000, 180_000, 600_000)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.wsd_vs_cosine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="experiments/quick.yaml", help="the trainer config (its base settings)")
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS), help="training tokens")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    add_override_argument(parser, "override a config key, e.g. data.tinystories=PATH (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("results/wsd_vs_cosine.json"))
    return parser


def one_seed(config: str, overrides: list[str], budgets: list[int], seed: int, folder: Path) -> dict[str, Any]:
    common = [
        *overrides,
        f"train.seed={seed}",
        "train.progress=false",
        "tracking.wandb=disabled",
        f"tracking.out_dir={folder}",
        "tracking.save_weights=false",
        "train.epochs=1000",
    ]
    *smaller, largest = sorted(budgets)
    wsd = train(
        load_config(
            config,
            [
                *common,
                "optim.schedule=wsd",
                f"train.max_tokens={largest}",
                f"train.anneal_at={smaller}",
                f"train.eval_every_tokens={largest}",
            ],
        )
    )
    row: dict[str, Any] = {"seed": seed, "wsd": {}, "cosine": {}, "wsd_tokens": wsd["tokens"]}
    for budget in smaller:
        row["wsd"][budget] = wsd["annealed_val_loss"][str(budget)]["loss"]
    row["wsd"][largest] = wsd["final_val_loss"]
    for budget in budgets:
        cosine = train(
            load_config(
                config,
                [*common, "optim.schedule=cosine", f"train.max_tokens={budget}", f"train.eval_every_tokens={budget}"],
            )
        )
        row["cosine"][budget] = cosine["final_val_loss"]
    return row


def table(rows: list[dict[str, Any]], budgets: list[int]) -> str:
    lines = ["budget     WSD decayed at B   cosine to B   WSD - cosine (paired over seeds)"]
    for budget in sorted(budgets):
        wsd = [r["wsd"][budget] for r in rows]
        cos = [r["cosine"][budget] for r in rows]
        diff = [a - b for a, b in zip(wsd, cos, strict=True)]
        se = statistics.stdev(diff) / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        lines.append(
            f"{budget:>9,}  {statistics.mean(wsd):>16.4f}  {statistics.mean(cos):>12.4f}   "
            f"{statistics.mean(diff):+.4f} ± {se:.4f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="picollm-wsd-") as tmp:
        for seed in args.seeds:
            rows.append(one_seed(args.config, args.overrides, args.budgets, seed, Path(tmp)))
            print(f"seed {seed}: {rows[-1]}", flush=True)
    print(table(rows, args.budgets))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
