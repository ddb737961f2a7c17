"""Train one run: ``python -m picollm.train --config experiments/base.yaml [--set key=value ...]``.

The loop is a few short pieces — :func:`train_step`, :func:`evaluate`, sampling — driven by
:class:`Trainer`, which owns the bookkeeping (budget, epochs, evaluation cadence, checkpoints).
:func:`train` is the one entry point: the CLI and every sweep trial call it, so a sweep trial
is exactly a trainer run.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from picollm.checkpoint import save_checkpoint
from picollm.config import Config, add_override_argument, load_config
from picollm.data import (
    CompactTokenizer,
    TokenData,
    apply_offline_fallback,
    describe,
    eval_batches,
    load_token_data,
    train_batches,
    unigram_baseline,
    window_starts,
)
from picollm.errors import ConfigError, run_cli
from picollm.generate import Sampling, generate_text
from picollm.models import build_model, count_parameters
from picollm.models.loss import linear_cross_entropy
from picollm.optim import build_optimizer, lr_at, set_lr
from picollm.timing import Stopwatch
from picollm.tracking import Tracker, new_run_id

EvalHook = Callable[[int, float], None]  # (tokens seen, val/loss) -> None; may raise StopRun


class StopRun(Exception):
    """Raised by a hook to end a run early but cleanly, e.g. a sweep trial the pruner stopped."""

    def __init__(self, status: str, reason: str = "") -> None:
        super().__init__(reason or status)
        self.status = status
        self.reason = reason


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the run cannot recover, so it stops here."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA device is available (use auto or cpu)")
    return torch.device(name)


def autocast_for(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA (tensor cores, no loss scaling needed); full precision elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def to_device(batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if device.type == "cuda":
        return tuple(t.pin_memory().to(device, non_blocking=True) for t in batch)  # type: ignore[return-value]
    return batch


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    grad_clip: float,
    device: torch.device,
) -> tuple[float, float]:
    """One forward, backward and optimiser step; returns (loss, gradient norm before clipping)."""
    with autocast_for(device):
        loss = linear_cross_entropy(model(x), model.head, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    optimizer.step()
    return loss.item(), grad_norm.item()


@torch.no_grad()
def evaluate(model: nn.Module, tokens: np.ndarray, block_size: int, batch_size: int, device: torch.device) -> float:
    """Mean next-token loss over every token of ``tokens`` (each scored once, no padding)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in eval_batches(tokens, block_size, batch_size):
        x, y = to_device(batch, device)
        with autocast_for(device):
            loss = linear_cross_entropy(model(x), model.head, y)
        total += loss.item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / count


@dataclass
class Budget:
    """How far a run goes: the first of epochs, steps per epoch and total tokens that runs out."""

    steps_per_epoch: int
    total_steps: int
    max_tokens: int | None

    @classmethod
    def plan(cls, cfg: Config, data: TokenData) -> Budget:
        t = cfg.train
        windows = sum(len(s) for s in window_starts(data, cfg.model.block_size).values())
        per_epoch = max(1, windows // t.batch_size)
        per_epoch = min(per_epoch, t.max_steps_per_epoch or per_epoch)
        total = t.epochs * per_epoch
        if t.max_tokens:
            total = min(total, math.ceil(t.max_tokens / (t.batch_size * cfg.model.block_size)))
        return cls(per_epoch, total, t.max_tokens)


def _stderr(values: list[float]) -> float:
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


class Trainer:
    """Runs the epochs of one run and keeps its bookkeeping; see :func:`train`."""

    def __init__(
        self,
        cfg: Config,
        data: TokenData,
        model: nn.Module,
        tracker: Tracker,
        budget: Budget,
        device: torch.device,
        on_eval: EvalHook | None,
        stopwatch: Stopwatch,
    ) -> None:
        self.cfg, self.data, self.model, self.tracker, self.device = cfg, data, model, tracker, device
        self.stopwatch = stopwatch
        self.step_model = torch.compile(model) if cfg.train.compile else model
        self.optimizer = build_optimizer(model, cfg.optim)
        self.budget = budget
        self.on_eval = on_eval
        self.rng = np.random.default_rng(cfg.train.seed)
        self.eval_tokens = data.val[: cfg.train.eval_tokens + 1]  # the fixed subset behind val/loss
        self.eval_batch = max(1, cfg.train.batch_size * 2)
        self.step = self.tokens = self.epoch = 0
        self.next_eval_mark = cfg.train.eval_every_tokens or 0
        self.best_val = math.inf
        self.last_val: float | None = None
        self.last_epoch_train: float | None = None
        self.started = time.perf_counter()
        self.final_val: float | None = None
        self.bar: Any = None

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        interactive = self.cfg.train.progress and sys.stderr.isatty()  # no bar spam in CI logs
        self.bar = tqdm(
            total=self.budget.total_steps, unit="step", disable=not interactive, dynamic_ncols=True, leave=False
        )
        try:
            while self.epoch < self.cfg.train.epochs and not self.out_of_budget():
                self.epoch += 1
                self.run_epoch()
        finally:
            self.bar.close()

    def out_of_budget(self) -> bool:
        return self.step >= self.budget.total_steps or bool(
            self.budget.max_tokens and self.tokens >= self.budget.max_tokens
        )

    def run_epoch(self) -> None:
        losses: list[float] = []
        block, batch = self.cfg.model.block_size, self.cfg.train.batch_size
        for batch_xy in train_batches(self.data, block, batch, self.rng):
            if len(losses) >= self.budget.steps_per_epoch or self.out_of_budget():
                break
            losses.append(self.run_step(batch_xy))
            self.maybe_evaluate()
            self.maybe_sample()
        self.end_epoch(losses)

    def run_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        x, y = to_device(batch, self.device)
        lr = lr_at(self.step, self.budget.total_steps, self.cfg.optim)
        set_lr(self.optimizer, lr)
        started = time.perf_counter()
        with self.stopwatch.phase("train_steps"):
            loss, grad_norm = train_step(self.step_model, self.optimizer, x, y, self.cfg.optim.grad_clip, self.device)
        elapsed = time.perf_counter() - started
        self.step += 1
        self.tokens += y.numel()
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"training loss became {loss} at step {self.step} (lr {lr:g})")
        self.tracker.log(
            {
                "step": self.step,
                "epoch": self.epoch,
                "train/loss": loss,
                "lr": lr,
                "tokens": self.tokens,
                "tokens_per_s": y.numel() / elapsed,
                "grad_norm": grad_norm,
            }
        )
        self.bar.update(1)
        self.bar.set_postfix(
            epoch=self.epoch,
            loss=f"{loss:.3f}",
            tok_s=f"{y.numel() / elapsed:,.0f}",
            val=f"{self.last_val:.3f}" if self.last_val is not None else "-",
        )
        return loss

    # -- evaluation, samples, epoch ends ----------------------------------------------------
    def evaluation_due(self) -> int | None:
        """The report position (tokens) if an evaluation is due now, else None."""
        every_tokens = self.cfg.train.eval_every_tokens
        if every_tokens:
            if self.tokens < self.next_eval_mark:
                return None
            mark = self.next_eval_mark
            while self.next_eval_mark <= self.tokens:
                self.next_eval_mark += every_tokens
            return mark
        return self.tokens if self.step % self.cfg.train.eval_every == 0 else None

    def maybe_evaluate(self) -> None:
        mark = self.evaluation_due()
        if mark is None:
            return
        with self.stopwatch.phase("evaluation"):
            self.last_val = evaluate(
                self.model, self.eval_tokens, self.cfg.model.block_size, self.eval_batch, self.device
            )
        self.tracker.log({"step": self.step, "epoch": self.epoch, "tokens": self.tokens, "val/loss": self.last_val})
        if self.on_eval is not None:
            self.on_eval(mark, self.last_val)

    def maybe_sample(self) -> None:
        every = self.cfg.train.sample_every
        if every and self.step % every == 0:
            self.sample()

    def sample(self) -> None:
        t = self.cfg.train
        s = Sampling(max_new_tokens=t.sample_tokens, temperature=0.8, top_p=0.95)
        with self.stopwatch.phase("sampling"):
            text = generate_text(self.model, self.data.tokenizer, t.prompt, s, seed=t.seed)
        self.tracker.log_sample(self.step, t.prompt, text)
        self.say(f"[step {self.step}] {t.prompt}{text!r}")

    def say(self, line: str) -> None:
        if self.cfg.train.progress:
            tqdm.write(line, file=sys.stderr)

    def end_epoch(self, losses: list[float]) -> None:
        if not losses:
            return
        with self.stopwatch.phase("evaluation"):
            val = evaluate(self.model, self.data.val, self.cfg.model.block_size, self.eval_batch, self.device)
        self.last_epoch_train = float(np.mean(losses))
        self.tracker.log(
            {
                "step": self.step,
                "epoch": self.epoch,
                "tokens": self.tokens,
                "val/epoch_loss": val,
                "train/epoch_loss": self.last_epoch_train,
                "train/epoch_loss_stderr": _stderr(losses),
                "train/epoch_steps": len(losses),
            }
        )
        self.final_val = val
        self.say(
            f"epoch {self.epoch}: train {self.last_epoch_train:.4f} ± {_stderr(losses):.4f} "
            f"({len(losses)} steps), val {val:.4f}"
        )
        if val < self.best_val:
            self.best_val = val
            self.save("best")

    def save(self, which: str) -> None:
        if not self.cfg.tracking.save_weights:
            return
        tok = self.data.tokenizer
        vocab_ids = tok.used if isinstance(tok, CompactTokenizer) else None
        with self.stopwatch.phase("checkpoints"):
            save_checkpoint(
                self.tracker.run_dir / f"{which}.pt",
                self.model,
                dataclasses.asdict(self.cfg.model),
                self.data.vocab_size,
                vocab_ids,
            )

    def summary(self, status: str, reason: str) -> dict[str, Any]:
        wall = time.perf_counter() - self.started
        return {
            "status": status,
            "reason": reason,
            "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
            "final_val_loss": self.final_val,
            "final_train_loss": self.last_epoch_train,
            "tokens": self.tokens,
            "steps": self.step,
            "epochs": self.epoch,
            "wall_time_s": wall,
            "tokens_per_s": self.tokens / wall if wall > 0 else None,
            "params": count_parameters(self.model),
            "time_breakdown": self.stopwatch.breakdown(),
        }


def train(
    cfg: Config,
    *,
    run_id: str | None = None,
    on_eval: EvalHook | None = None,
    extra: dict[str, Any] | None = None,
    clock: Stopwatch | None = None,
) -> dict[str, Any]:
    """Train one run end to end and return its summary (also written to ``summary.json``).

    ``on_eval`` sees every periodic validation loss and may raise :class:`StopRun` to end the
    run cleanly (status ``pruned``). Errors still close the record with status ``failed`` and are
    re-raised; Ctrl-C closes it with ``interrupted``. ``clock`` (a sweep trial's, which also times
    its storage calls) accounts the run's time; the summary's ``time_breakdown`` is its breakdown.
    """
    sw = clock or Stopwatch()
    with sw.phase("data"):
        cfg, note = apply_offline_fallback(cfg)
        if note:
            print(note, file=sys.stderr)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        device = resolve_device(cfg.train.device)
        data = load_token_data(cfg.data, progress=cfg.train.progress)
        if note:
            data.notes.append(note)
        budget = Budget.plan(cfg, data)  # before the record exists: an impossible budget leaves nothing behind
        baseline = unigram_baseline(data)
    with sw.phase("model_build"):
        torch.manual_seed(cfg.train.seed)
        model = build_model(dataclasses.asdict(cfg.model), data.vocab_size).to(device)
    meta = {"device": str(device), "data": describe(data), "params": count_parameters(model), "baseline": baseline}
    with sw.phase("tracking_init"):
        tracker = Tracker(cfg, run_id or new_run_id(), extra={**meta, **(extra or {})})
    with sw.phase("model_build"):
        trainer = Trainer(cfg, data, model, tracker, budget, device, on_eval, sw)
    status, reason = "failed", ""
    try:
        trainer.run()
        status = "finished"
    except StopRun as stop:
        status, reason = stop.status, stop.reason
    except KeyboardInterrupt:
        status, reason = "interrupted", "KeyboardInterrupt"
        raise
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if status != "failed":
            trainer.save("final")
            trainer.sample()
        summary = {
            **trainer.summary(status, reason),
            **baseline,
            "run_dir": str(tracker.run_dir),
            "vocab_size": data.vocab_size,
            "tokenizer": data.tokenizer.name,
            "device": str(device),
            "notes": data.notes,
        }
        with sw.phase("tracking_finish"):
            tracker.finish(summary)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m picollm.train",
        description="Train one small language model and record its per-step, periodic and per-epoch "
        "losses locally (results/runs/<run_id>/) and in W&B.",
        epilog="examples:\n"
        "  python -m picollm.train --config experiments/smoke.yaml\n"
        "  python -m picollm.train --config experiments/base.yaml --set model.type=lstm --set optim.lr=3e-3\n"
        "  python -m picollm.train --config experiments/base.yaml "
        "--set data.tinystories=../shared/data/tinystories-sample\n"
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
    best = summary["best_val_loss"]
    print(f"run record: {summary['run_dir']}")
    print(
        f"best val loss {best:.4f} nats (unigram baseline {summary['unigram_val_loss']:.4f}); "
        f"{summary['tokens']:,} tokens in {summary['wall_time_s']:.1f}s"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
