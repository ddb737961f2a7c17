"""Benchmark: ``python -m benchmarks.bench [--device cpu|cuda] [--quick] [--out results/bench.json]``.

Measures in one process, side by side, with warm-up and the median of several repeats:

* training tokens/s (forward + backward + AdamW step) for each model at the reference config
  (vocab 50257, batch 16, block 128, embed 128) and peak memory;
* the k-gram MLP against a naive reference written the classic course way (a Python loop over
  batch and positions, one-hot k*V vectors into the first Linear) — kept only here;
* the transformer's MFU: 6 * N * tokens/s over the peak FLOP/s of a large matmul measured on the
  same device (N counts every parameter, the output head included: the nanoGPT convention);
* the opt-in compact vocabulary's speed-up; tokenizer throughput; token-cache load time; the
  start-up of a sweep trial with a warm cache (process start to first training step);
* generation tokens/s with and without the KV cache at 256 new tokens (64 with ``--quick``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from picollm.cli import run_cli
from picollm.config import OptimConfig, add_override_argument
from picollm.errors import ConfigError
from picollm.models import build_model, count_parameters
from picollm.models.loss import linear_cross_entropy
from picollm.optim import build_optimizer
from picollm.sampling import Sampling, generate

VOCAB = 50257
REFERENCE = {"batch": 16, "block": 128, "embed": 128}
MODELS = {
    "kgram": {"type": "kgram", "k": 3, "embed_size": 128, "hidden_size": 128, "num_inner_layers": 1},
    "lstm": {"type": "lstm", "embed_size": 128, "hidden_size": 128, "num_layers": 1},
    "transformer": {"type": "transformer", "embed_size": 128, "num_layers": 4, "n_heads": 4, "tie_weights": True},
}
LARGER = {"type": "transformer", "embed_size": 256, "num_layers": 6, "n_heads": 8, "tie_weights": True}
GPT2_SMALL = {"type": "transformer", "embed_size": 768, "num_layers": 12, "n_heads": 12, "tie_weights": True}
# Dense bf16 peak of an H100 SXM (no sparsity): the denominator the GPU MFU uses by convention.
H100_BF16_PEAK = 989e12


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError):  # Linux: writing 5 resets the peak resident set size (VmHWM)
            Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def autocast(device: torch.device) -> Any:
    return (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )


def train_step_fn(model: nn.Module, batch: int, block: int, vocab: int, device: torch.device) -> Callable[[], None]:
    optimizer = build_optimizer(model, OptimConfig(name="adamw", lr=1e-4))
    x = torch.randint(0, vocab, (batch, block), device=device)
    y = torch.randint(0, vocab, (batch, block), device=device)

    def step() -> None:
        with autocast(device):
            loss = linear_cross_entropy(model(x), model.head, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bench_training(
    settings: dict[str, Any],
    device: torch.device,
    batch: int,
    block: int,
    repeats: int,
    vocab: int = VOCAB,
    compile_model: bool = False,
    warmup: int = 2,
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_model({**settings, "block_size": block}, vocab).to(device)
    step_model = torch.compile(model) if compile_model else model
    reset_peak_memory(device)
    seconds = timed(train_step_fn(step_model, batch, block, vocab, device), device, warmup=warmup, repeats=repeats)
    return {
        "tokens_per_s": batch * block / seconds,
        "step_s": seconds,
        "params": count_parameters(model),
        "peak_memory_mb": peak_memory_mb(device),
    }


class NaiveKGram(nn.Module):
    """The classic course k-gram MLP: one-hot k*V context vectors, a Python loop over batch and time."""

    def __init__(self, vocab: int, k: int, hidden: int) -> None:
        super().__init__()
        self.vocab, self.k = vocab, k
        self.net = nn.Sequential(nn.Linear(k * vocab, hidden), nn.SiLU(), nn.Linear(hidden, vocab))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        batch, length = idx.shape
        out = torch.zeros(batch, length, self.vocab)
        for b in range(batch):
            for t in range(length):
                context = [0] * max(0, self.k - t - 1) + idx[b, max(0, t - self.k + 1) : t + 1].tolist()
                one_hot = torch.cat([nn.functional.one_hot(torch.tensor(c), self.vocab) for c in context]).float()
                out[b, t] = self.net(one_hot)
        return out


def bench_naive_kgram(repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = NaiveKGram(VOCAB, 3, 128)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randint(0, VOCAB, (1, 8)), torch.randint(0, VOCAB, (1, 8))

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    seconds = timed(step, torch.device("cpu"), warmup=1, repeats=repeats)
    return {"tokens_per_s": x.numel() / seconds}


def bench_matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None) -> float:
    """FLOP/s of a large square matmul, best of several: the practical peak of this device and dtype."""
    n = n or (8192 if device.type == "cuda" else 3072)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = min(timed(lambda: a @ b, device, warmup=1 if i else 2, repeats=1) for i in range(5))
    return 2 * n**3 / best


def bench_generation(device: torch.device, repeats: int, new_tokens: int = 256) -> dict[str, Any]:
    """Greedy generation after a 16-token prompt, at the full and at a compact (6000-id) vocabulary.

    At vocab 50257 every new token reads the whole 25 MB head for one matrix-vector product, which the
    KV cache cannot avoid; the compact vocabulary shows what the cache saves on the transformer body.
    """
    out: dict[str, Any] = {"new_tokens": new_tokens}
    for label, vocab in (("", VOCAB), ("compact_", 6000)):
        torch.manual_seed(0)
        model = build_model({**MODELS["transformer"], "block_size": 512}, vocab).to(device).eval()
        prompt = torch.randint(0, vocab, (16,)).tolist()
        for name, use_cache in (("with_cache", True), ("without_cache", False)):
            s = Sampling(max_new_tokens=new_tokens, greedy=True, use_cache=use_cache)
            seconds = timed(lambda s=s, m=model, p=prompt: generate(m, p, s), device, warmup=1, repeats=repeats)
            out[f"{label}{name}_tokens_per_s"] = new_tokens / seconds
        out[f"{label}kv_cache_speedup"] = (
            out[f"{label}with_cache_tokens_per_s"] / out[f"{label}without_cache_tokens_per_s"]
        )
    return out


def sample_texts() -> list[str]:
    """TinyStories sample texts when ../shared has them, else built-in stories."""
    sample = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories-sample"
    if sample.is_dir():
        import pyarrow.parquet as pq

        return [t for f in sorted(sample.glob("data/train-*.parquet")) for t in pq.read_table(f)["text"].to_pylist()]
    from picollm.corpora import builtin_stories

    return builtin_stories(1000)


def bench_tokenizer(repeats: int) -> dict[str, Any]:
    """GPT-2 encoding of the TinyStories sample (x4) as the cache build does it: all cores, and one thread."""
    from picollm.tokenizers import TiktokenTokenizer, tiktoken_available

    if not tiktoken_available():
        return {"note": "tiktoken's gpt2 files unavailable (set TIKTOKEN_CACHE_DIR)"}
    tokenizer = TiktokenTokenizer()
    texts = sample_texts() * 4
    n_tokens = len(tokenizer.encode_docs(texts))
    threaded = timed(lambda: tokenizer.encode_docs(texts), torch.device("cpu"), 1, repeats)
    one_thread = timed(lambda: tokenizer._encode_chunk(texts), torch.device("cpu"), 1, repeats)
    return {
        "tokens": n_tokens,
        "threaded_tokens_per_s": n_tokens / threaded,
        "one_thread_tokens_per_s": n_tokens / one_thread,
    }


def bench_cache(tmp: Path, quick: bool) -> dict[str, Any]:
    from picollm.config import DataConfig
    from picollm.data import load_token_data

    out: dict[str, Any] = {}
    sample = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories-sample"
    if sample.is_dir() and os.environ.get("TIKTOKEN_CACHE_DIR"):
        d = DataConfig(tinystories=str(sample), cache_dir=str(tmp / "cache"))
        start = time.perf_counter()
        load_token_data(d, progress=False)
        out["sample_build_s"] = time.perf_counter() - start
        out["sample_load_s"] = timed(lambda: load_token_data(d, progress=False), torch.device("cpu"), 1, 3)
    n_tokens = 2_000_000 if quick else 10_000_000
    corpus = tmp / "generated.txt"
    from picollm.corpora import builtin_stories

    stories = builtin_stories(5000)
    with open(corpus, "w") as fh:
        written = 0
        while written < n_tokens:  # bytes tokenizer: one token per byte (+1 per line)
            for story in stories:
                fh.write(story + "\n")
                written += len(story) + 1
    d = DataConfig(tinystories=None, input_files=[str(corpus)], tokenizer="bytes", cache_dir=str(tmp / "cache"))
    start = time.perf_counter()
    load_token_data(d, progress=False)
    out["generated_tokens"] = written
    out["generated_build_s"] = time.perf_counter() - start
    out["generated_load_s"] = timed(lambda: load_token_data(d, progress=False), torch.device("cpu"), 1, 3)
    return out


STARTUP_PROBE = """
import sys, time
from picollm.config import load_config
from picollm.trainer import StopRun, train
cfg = load_config(None, sys.argv[1:])
def first(tokens, loss):
    print("FIRST_STEP", time.perf_counter() - started, flush=True)
    raise StopRun("pruned", "probe")
started = time.perf_counter()
train(cfg, on_eval=first)
started = time.perf_counter()  # a second trial in the same process, as in a sweep worker
train(cfg, on_eval=first)
"""


def bench_startup(tmp: Path, repeats: int) -> dict[str, Any]:
    """Time to the first training step with a warm cache: from ``python`` starting (a fresh worker), and
    for a later trial in the same process (what each further trial of a sweep worker pays)."""
    overrides = [
        f"tracking.out_dir={tmp}/runs",
        f"data.cache_dir={tmp}/cache",
        "data.tinystories=null",
        "data.builtin_stories=2000",
        "data.tokenizer=bytes",
        "model.type=kgram",
        "train.eval_every=1",
        "train.progress=false",
        "tracking.wandb=offline",
        "tracking.save_weights=false",
    ]
    from picollm.config import load_config
    from picollm.data import load_token_data

    load_token_data(load_config(None, overrides).data, progress=False)  # the cache the runs find warm
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    fresh, later = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", STARTUP_PROBE, *overrides],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[1],
        )
        seen = []
        for line in proc.stdout:
            if line.startswith("FIRST_STEP"):
                seen.append((time.perf_counter() - start, float(line.split()[1])))
        proc.wait()
        if len(seen) == 2:
            fresh.append(seen[0][0])
            later.append(seen[1][1])
    return {
        "warm_start_to_first_step_s": statistics.median(fresh) if fresh else None,
        "in_process_trial_to_first_step_s": statistics.median(later) if later else None,
    }


def run_benchmarks(device: torch.device, quick: bool) -> dict[str, Any]:
    repeats, warmup = (1, 1) if quick else (7, 2)  # quick: a smoke run of every figure, as the tests run it
    batch, block = REFERENCE["batch"], REFERENCE["block"]
    results: dict[str, Any] = {
        "device": str(device),
        "quick": quick,
        "config": REFERENCE,
        "vocab": VOCAB,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or '?'}",
        "thp_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE"),
    }
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = bench_matmul_peak(device, dtype, n=2048 if quick and device.type == "cpu" else None)
    results["matmul_peak_flops"] = peak
    training = {name: bench_training(s, device, batch, block, repeats, warmup=warmup) for name, s in MODELS.items()}
    if not quick:
        training["transformer_larger"] = bench_training(LARGER, device, batch, block, repeats)
    compact_vocab = 6000  # about the ids the TinyStories sample uses
    training["transformer_compact_vocab"] = bench_training(
        MODELS["transformer"], device, batch, block, repeats, compact_vocab, warmup=warmup
    )
    results["training"] = training
    tr = training["transformer"]
    results["transformer_mfu"] = 6 * tr["params"] * tr["tokens_per_s"] / peak
    results["compact_vocab_speedup"] = training["transformer_compact_vocab"]["tokens_per_s"] / tr["tokens_per_s"]
    if device.type == "cpu":
        naive = bench_naive_kgram(repeats=min(repeats, 2))  # a naive step takes most of a second
        results["naive_kgram_tokens_per_s"] = naive["tokens_per_s"]
        results["kgram_vs_naive"] = training["kgram"]["tokens_per_s"] / naive["tokens_per_s"]
    else:
        gpt2 = bench_training(GPT2_SMALL, device, 8, 1024, repeats)
        results["gpt2_small"] = {
            **gpt2,
            "mfu_vs_h100_bf16_peak": 6 * gpt2["params"] * gpt2["tokens_per_s"] / H100_BF16_PEAK,
            "mfu_vs_measured_peak": 6 * gpt2["params"] * gpt2["tokens_per_s"] / peak,
        }
    results["generation"] = bench_generation(device, repeats=1 if quick else 3, new_tokens=64 if quick else 256)
    with tempfile.TemporaryDirectory() as tmp:
        results["tokenizer"] = bench_tokenizer(repeats)
        results["cache"] = bench_cache(Path(tmp), quick)
        results["startup"] = bench_startup(Path(tmp), repeats=1 if quick else 3)
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        f"device {results['device']} ({results['machine']}), torch {results['torch']}, "
        f"{results['threads']} threads; vocab {results['vocab']}, batch 16, block 128, embed 128",
        f"{'training':28s} {'tokens/s':>10s} {'params':>11s} {'peak MB':>9s}",
    ]
    for name, r in results["training"].items():
        mem = f"{r['peak_memory_mb']:9.0f}" if r["peak_memory_mb"] else f"{'-':>9s}"
        lines.append(f"{name:28s} {r['tokens_per_s']:10,.0f} {r['params']:11,d} {mem}")
    lines.append(
        f"matmul peak {results['matmul_peak_flops'] / 1e9:,.0f} GFLOP/s; transformer MFU "
        f"{100 * results['transformer_mfu']:.1f}% (6*N*tokens/s, N with the head)"
    )
    if "kgram_vs_naive" in results:
        lines.append(
            f"k-gram vs naive course implementation: {results['kgram_vs_naive']:,.0f}x per token "
            f"({results['naive_kgram_tokens_per_s']:.1f} tokens/s naive)"
        )
    if "gpt2_small" in results:
        g = results["gpt2_small"]
        lines.append(
            f"GPT-2 small (12x768, block 1024): {g['tokens_per_s']:,.0f} tokens/s, MFU "
            f"{100 * g['mfu_vs_h100_bf16_peak']:.1f}% of 989 TFLOP/s"
        )
    lines.append(f"compact vocabulary (6000 ids) speed-up: {results['compact_vocab_speedup']:.2f}x")
    g = results["generation"]
    lines.append(
        f"generation, {g['new_tokens']} new tokens: {g['with_cache_tokens_per_s']:,.0f} tokens/s with KV cache, "
        f"{g['without_cache_tokens_per_s']:,.0f} without ({g['kv_cache_speedup']:.1f}x)"
    )
    t = results["tokenizer"]
    if "threaded_tokens_per_s" in t:
        lines.append(
            f"gpt2 tokenizer (cache build): {t['threaded_tokens_per_s'] / 1e6:.2f}M tokens/s on "
            f"{os.cpu_count()} cores, {t['one_thread_tokens_per_s'] / 1e6:.2f}M on one thread"
        )
    c = results["cache"]
    if "sample_load_s" in c:
        lines.append(
            f"token cache, TinyStories sample: build {c['sample_build_s']:.2f}s, "
            f"load {1000 * c['sample_load_s']:.0f} ms"
        )
    lines.append(
        f"token cache, generated {c['generated_tokens'] / 1e6:.0f}M tokens: build {c['generated_build_s']:.2f}s, "
        f"load {1000 * c['generated_load_s']:.0f} ms"
    )
    st = results["startup"]
    lines.append(
        f"warm-cache trial start-up to first step, W&B offline: {st['warm_start_to_first_step_s']:.2f}s from "
        f"process start, {st['in_process_trial_to_first_step_s']:.2f}s for a later trial in the same worker"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n"
        "  python -m benchmarks.bench                  # kernels, models, tokenizer, cache, start-up (minutes)\n"
        "  python -m benchmarks.bench --sweep          # the main job end to end, its time phase by phase\n"
        "  python -m benchmarks.bench --sweep --set study.n_trials=4   # a shorter sweep\n"
        "  python -m benchmarks.bench --layouts        # workers x threads on this machine's cores\n"
        "  python -m benchmarks.bench --processes      # k-gram trainer vs naive course code, whole processes\n"
        "Figures measured while other work shares the cores are not clean benchmarks: compare ratios to the\n"
        "yardstick (../shared/bench/quick_reference.py), which --sweep runs before and after.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats and warm-ups, a smaller matmul and corpora, shorter generations (CI)",
    )
    parser.add_argument("--sweep", action="store_true", help="time the main job (quick.yaml) end to end instead")
    parser.add_argument("--layouts", action="store_true", help="time workers x threads layouts on this machine")
    parser.add_argument("--runs", type=int, default=4, help="--layouts: trials per layout (default 4)")
    parser.add_argument(
        "--processes", action="store_true", help="trainer k-gram vs the naive course one, as whole processes"
    )
    parser.add_argument("--config", default="experiments/quick.yaml", help="the experiment --sweep/--layouts run")
    parser.add_argument("--workers", type=int, help="--sweep: worker processes (default: the sweep's own choice)")
    parser.add_argument("--no-yardstick", action="store_true", help="--sweep: skip the yardstick before and after")
    add_override_argument(parser, "--sweep: override a key of the experiment, e.g. study.n_trials=4 (repeatable)")
    parser.add_argument("--out", default="results/bench.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.sweep:
        from benchmarks.main_job import bench_sweep, sweep_table

        results = bench_sweep(args.config, args.overrides, args.workers, not args.no_yardstick)
        print(sweep_table(results))
    elif args.layouts:
        from benchmarks.main_job import bench_layouts, layouts_table
        from picollm.threads import available_cores

        results = bench_layouts(args.config, args.overrides, args.runs, available_cores())
        print(layouts_table(results))
    elif args.processes:
        from benchmarks.main_job import bench_processes, processes_table

        results = bench_processes(trainer_tokens=32_768 if args.quick else 262_144, naive_steps=4 if args.quick else 24)
        print(processes_table(results))
    else:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("--device cuda but no CUDA device is available")
        results = run_benchmarks(torch.device(args.device), args.quick)
        print(table(results))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
