"""``python -m picollm.generate``: sample text from a trained run's saved weights (:mod:`picollm.sampling`)."""

from __future__ import annotations

import argparse


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
    from picollm.checkpoint import load_run  # torch: --help stays quick
    from picollm.sampling import Sampling, check_sampling, generate_text  # torch: --help stays quick

    s = Sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.greedy)
    check_sampling(s, args.num_samples)
    model, tokenizer = load_run(args.run_dir, args.weights)
    for i in range(args.num_samples):
        print(f"--- sample {i + 1}\n{args.prompt}{generate_text(model, tokenizer, args.prompt, s, args.seed + i)}")
    return 0
