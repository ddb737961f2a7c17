"""``python -m picollm.train``: train one run from a YAML config and ``--set`` overrides (:func:`picollm.train`)."""

from __future__ import annotations

import argparse

from picollm.config import add_override_argument, load_config
from picollm.trainer import train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m picollm.train",
        description="Train one small language model and record its per-step, periodic and per-epoch "
        "losses locally (results/runs/<run_id>/) and in W&B.",
        epilog="examples:\n"
        "  python -m picollm.train --config experiments/smoke.yaml\n"
        "  python -m picollm.train --config experiments/base.yaml --set model.type=lstm --set optim.lr=3e-3\n"
        "  python -m picollm.train --config experiments/base.yaml "
        "--set data.tinystories=path/to/tinystories\n"
        "values after '=' are read as YAML: 3e-4, true, null, [a.txt, b.txt]. The command line always "
        "wins over the file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML experiment file (may start with 'base: other.yaml')")
    add_override_argument(parser, "override one config key with a dotted name, e.g. optim.lr=3e-4 (repeatable)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    summary = train(cfg)
    best, err = summary["best_val_loss"], summary["best_val_loss_stderr"]
    best_text = "-" if best is None else f"{best:.4f}" + ("" if err is None else f" ± {err:.4f}")
    print(f"run record: {summary['run_dir']}")
    print(
        f"best val loss {best_text} nats (unigram baseline {summary['unigram_val_loss']:.4f}); "
        f"{summary['tokens']:,} tokens in {summary['wall_time_s']:.1f}s"
    )
    return 0
