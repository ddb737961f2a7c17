"""``python -m picollm.generate``: sample text from a trained run's saved weights (:func:`picollm.api.generate`)."""

from __future__ import annotations

import argparse

from picollm.api import generate
from picollm.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m picollm.generate", description="Sample text from a trained run's saved weights."
    )
    parser.add_argument("run_dir", help="a run record folder, e.g. results/runs/<run_id>")
    parser.add_argument("--prompt", default="Once upon a time", help="text to continue")
    parser.add_argument("--weights", choices=("best", "final"), default="best")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8, help="<= 0 means greedy")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass")
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {args.num_samples}")
    for i in range(args.num_samples):
        text = generate(
            args.run_dir,
            args.prompt,
            args.max_new_tokens,
            args.temperature,
            args.top_k,
            args.top_p,
            args.greedy,
            args.seed + i,
            args.weights,
        )
        print(f"--- sample {i + 1}\n{args.prompt}{text}")
    return 0
