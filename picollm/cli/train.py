"""``python -m picollm.train``: train one run from a YAML config and ``--set`` overrides (:func:`picollm.api.train`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from picollm.api import TrainResult, extend, resume, train
from picollm.config import add_override_argument, load_config
from picollm.course import add_course_flags, course_notes
from picollm.errors import PicoError
from picollm.threads import fit_threads


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
        "  python -m picollm.train --input_files 3seqs.txt --tinystories_weight 0.0 --block_size 32 "
        '--prompt "0 1 2 3 4"\n'
        "  python -m picollm.train --resume results/runs/<run_id>\n"
        "  python -m picollm.train --config experiments/quick.yaml --set optim.schedule=wsd "
        "--set train.max_tokens=200000\n"
        "  python -m picollm.train --extend-to 600000 results/runs/<run_id>   (a finished wsd run, token budget)\n"
        "values after '=' are read as YAML: 3e-4, true, null, [a.txt, b.txt]. The command line always "
        "wins over the file. With train.threads unset, a CPU run uses one thread (picollm.threads).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML experiment file (may start with 'base: other.yaml')")
    add_override_argument(parser, "override one config key with a dotted name, e.g. optim.lr=3e-4 (repeatable)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a killed or interrupted run from its last checkpoint, in its record",
    )
    parser.add_argument(
        "--extend-to",
        nargs=2,
        metavar=("TOKENS", "RUN_DIR"),
        help="continue a finished optim.schedule=wsd run from the end of its stable phase to TOKENS, as a new run",
    )
    add_course_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.resume or args.extend_to:
        print_summary(continue_run(args).summary)
        return 0
    cfg = fit_threads(load_config(args.config, args.overrides))
    for note in course_notes(args.course_flags, cfg):
        print(note, file=sys.stderr)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    print_summary(train(cfg).summary)
    return 0


def continue_run(args: argparse.Namespace) -> TrainResult:
    """``--resume``/``--extend-to``: the run's own config; a config or override given with them is refused."""
    if args.config or args.overrides or args.course_flags or (args.resume and args.extend_to):
        raise PicoError("--resume and --extend-to continue a run as it was configured: give one of them alone")
    if args.resume:
        return resume(args.resume)
    tokens, run_dir = args.extend_to
    try:
        budget = int(float(tokens))
    except ValueError:
        raise PicoError(f"--extend-to expects a number of tokens, got {tokens!r}") from None
    return extend(run_dir, budget)


def print_summary(summary: dict[str, Any]) -> None:
    best, err = summary["best_val_loss"], summary["best_val_loss_stderr"]
    best_text = "-" if best is None else f"{best:.4f}" + ("" if err is None else f" ± {err:.4f}")
    print(f"run record: {summary['run_dir']}")
    print(
        f"best val loss {best_text} nats (unigram baseline {summary['unigram_val_loss']:.4f}); "
        f"{summary['tokens']:,} tokens in {summary['wall_time_s']:.1f}s"
    )
