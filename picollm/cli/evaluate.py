"""``python -m picollm.evaluate``: score a saved run on validation tokens (:func:`picollm.api.evaluate`)."""

from __future__ import annotations

import argparse

from picollm.api import evaluate
from picollm.config import add_override_argument
from picollm.fileio import atomic_write_json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m picollm.evaluate",
        description="Score a saved run's weights on validation tokens: loss in nats/token with its standard "
        "error over documents, every token scored once with real left context.",
        epilog="examples:\n"
        "  python -m picollm.evaluate results/runs/<run_id>\n"
        "  python -m picollm.evaluate results/runs/<run_id> --set data.tinystories=path/to/tinystories\n"
        "  python -m picollm.evaluate results/runs/<run_id> --set data.val_tokens=null --out score.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", help="a run record folder with saved weights, e.g. results/runs/<run_id>")
    add_override_argument(parser, "score on other data: a data.* key, e.g. data.tinystories=PATH (repeatable)")
    parser.add_argument("--block-size", type=int, default=None, help="scoring window (default: the model's)")
    parser.add_argument("--weights", choices=("best", "final"), default="best", help="which saved weights")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    parser.add_argument("--out", default=None, help="also write the result as JSON to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = evaluate(args.run_dir, args.overrides, args.block_size, args.weights, args.device)
    stderr = "?" if result["stderr"] is None else f"{result['stderr']:.4f}"
    print(
        f"{result['run_dir']} ({result['weights']}): loss {result['loss']:.4f} ± {stderr} nats/token "
        f"(1 s.e. over {result['documents']:,} documents), {result['tokens']:,} tokens; "
        f"context: {result['context']['policy']}"
    )
    if args.out:
        atomic_write_json(args.out, result)
    return 0
