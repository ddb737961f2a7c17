"""Train one run: ``python -m picollm.train --config experiments/base.yaml [--set key=value ...]``.

:func:`run_loop` is the whole training loop on one screen; the pieces it calls are short
functions — :func:`train_step`, the periodic and epoch-end evaluations (:mod:`picollm.scoring`
scores), sampling and checkpoints — that share one :class:`Run` holding the run's parts and
running numbers. :func:`train` is the one entry point: the CLI and every sweep trial call it, so
a sweep trial is exactly a trainer run, and once its record exists, whatever fails, the record
ends with ``summary.json`` (status ``failed`` and the reason).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from picollm.checkpoint import save_checkpoint
from picollm.config import Config
from picollm.console import show_progress
from picollm.data import (
    CompactTokenizer,
    EvalSet,
    ScoringPolicy,
    TokenData,
    apply_offline_fallback,
    describe,
    load_token_data,
    scoring_policy,
    train_batches,
    unigram_baseline,
    validation_sets,
    window_starts,
)
from picollm.device import autocast_for, resolve_device, to_device
from picollm.errors import ConfigError
from picollm.models import build_model, count_parameters
from picollm.models.loss import allow_tf32, linear_cross_entropy
from picollm.optim import build_optimizer, lr_at, set_lr
from picollm.sampling import Sampling, generate_text
from picollm.scoring import Estimate, score
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


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    grad_clip: float,
    device: torch.device,
) -> tuple[float, float]:
    """One forward, backward and optimiser step; returns (loss, gradient norm before clipping).

    ``x`` may start with context tokens that are not scored (the k-gram's k - 1): only the last
    ``y.shape[1]`` positions enter the loss.
    """
    with autocast_for(device):
        loss = linear_cross_entropy(model(x)[:, -y.shape[1] :], model.head, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    optimizer.step()
    return loss.item(), grad_norm.item()


@dataclass
class Budget:
    """How far a run goes: the first of epochs, steps per epoch and total tokens that runs out."""

    steps_per_epoch: int
    total_steps: int
    max_tokens: int | None

    @classmethod
    def plan(cls, cfg: Config, data: TokenData, context: int = 0) -> Budget:
        t = cfg.train
        windows = sum(len(s) for s in window_starts(data, cfg.model.block_size, context).values())
        per_epoch = max(1, windows // t.batch_size)
        per_epoch = min(per_epoch, t.max_steps_per_epoch or per_epoch)
        total = t.epochs * per_epoch
        if t.max_tokens:
            total = min(total, math.ceil(t.max_tokens / (t.batch_size * cfg.model.block_size)))
        return cls(per_epoch, total, t.max_tokens)


def _stderr(values: list[float]) -> float:
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


@dataclass
class Run:
    """One run's parts and running numbers; the loop's functions read and update it."""

    cfg: Config
    data: TokenData
    model: nn.Module
    tracker: Tracker
    budget: Budget
    device: torch.device
    periodic: EvalSet  # behind val/loss (train.eval_tokens; the whole capped set when null)
    full: EvalSet  # behind val/epoch_loss and the summary: the whole capped validation set
    on_eval: EvalHook | None = None
    step_model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    step: int = 0
    tokens: int = 0
    epoch: int = 0
    next_eval_mark: int = 0
    best: Estimate | None = None
    last: Estimate | None = None  # the last periodic evaluation
    final: Estimate | None = None  # the last epoch-end evaluation
    last_epoch_train: float | None = None
    started: float = field(default_factory=time.perf_counter)
    bar: Any = None
    clock: Stopwatch = field(default_factory=Stopwatch)  # where the run's time goes (summary: time_breakdown)
    last_step: int = -1  # the step of the last periodic evaluation

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.cfg.train.seed)
        self.next_eval_mark = self.cfg.train.eval_every_tokens or 0
        self.context = self.model.context_size or 0  # tokens each training window reads before its block
        self.policy = scoring_policy(self.cfg.model.block_size, self.model.context_size)
        self.eval_batch = max(1, self.cfg.train.batch_size * 2)
        self.one_set = self.periodic is self.full or np.array_equal(self.periodic.tokens, self.full.tokens)


# -- the loop -----------------------------------------------------------------------------------
def run_loop(run: Run) -> None:
    """The training loop, top to bottom: epochs of steps, evaluations and samples when due."""
    t = run.cfg.train
    interactive = t.progress and show_progress()  # no bar spam in CI logs
    with tqdm(total=run.budget.total_steps, unit="step", disable=not interactive, leave=False) as run.bar:
        for epoch in range(1, t.epochs + 1):
            run.epoch = epoch
            losses: list[float] = []
            for batch in train_batches(run.data, run.cfg.model.block_size, t.batch_size, run.rng, run.context):
                if len(losses) >= run.budget.steps_per_epoch or out_of_budget(run):
                    break
                losses.append(one_step(run, batch))
                mark = evaluation_due(run)
                if mark is not None:
                    evaluate_periodic(run, mark)
                if t.sample_every and run.step % t.sample_every == 0:
                    sample(run)
            end_epoch(run, losses)
            if out_of_budget(run):
                break


def out_of_budget(run: Run) -> bool:
    return run.step >= run.budget.total_steps or bool(run.budget.max_tokens and run.tokens >= run.budget.max_tokens)


def one_step(run: Run, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """A training step with its bookkeeping: learning rate, NaN check, the metrics row, the bar."""
    x, y = to_device(batch, run.device)
    lr = lr_at(run.step, run.budget.total_steps, run.cfg.optim)
    set_lr(run.optimizer, lr)
    started = time.perf_counter()
    with run.clock.phase("train_steps"):
        loss, grad_norm = train_step(run.step_model, run.optimizer, x, y, run.cfg.optim.grad_clip, run.device)
    speed = y.numel() / (time.perf_counter() - started)
    run.step += 1
    run.tokens += y.numel()
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"training loss became {loss} at step {run.step} (lr {lr:g})")
    row = {"train/loss": loss, "lr": lr, "tokens": run.tokens, "tokens_per_s": speed, "grad_norm": grad_norm}
    run.tracker.log({"step": run.step, "epoch": run.epoch, **row})
    run.bar.update(1)
    val = f"{run.last.loss:.3f}" if run.last is not None else "-"
    run.bar.set_postfix(epoch=run.epoch, loss=f"{loss:.3f}", tok_s=f"{speed:,.0f}", val=val)
    return loss


# -- evaluation, samples, epoch ends --------------------------------------------------------------
def evaluation_due(run: Run) -> int | None:
    """The report position (tokens) if a periodic evaluation is due now, else None."""
    every_tokens = run.cfg.train.eval_every_tokens
    if not every_tokens:
        return run.tokens if run.step % run.cfg.train.eval_every == 0 else None
    if run.tokens < run.next_eval_mark:
        return None
    mark = run.next_eval_mark
    while run.next_eval_mark <= run.tokens:
        run.next_eval_mark += every_tokens
    return mark


def evaluate_periodic(run: Run, mark: int) -> None:
    """val/loss on the periodic set, with its standard error; the hook (a pruner) sees the loss."""
    with run.clock.phase("evaluation"):
        run.last = score(run.model, run.periodic, run.policy, run.eval_batch, run.device)
    run.last_step = run.step
    row = {"tokens": run.tokens, "val/loss": run.last.loss, "val/loss_stderr": run.last.stderr}
    run.tracker.log({"step": run.step, "epoch": run.epoch, **row})
    if run.on_eval is not None:
        run.on_eval(mark, run.last.loss)


def end_epoch(run: Run, losses: list[float]) -> None:
    """val/epoch_loss on the whole capped set; the best weights so far are saved."""
    if not losses:
        return
    if run.one_set and run.last_step == run.step and run.last is not None:
        val = run.last  # the periodic evaluation just scored these very weights on this very set (a sweep's)
    else:
        with run.clock.phase("evaluation"):
            val = score(run.model, run.full, run.policy, run.eval_batch, run.device)
    run.final, run.last_epoch_train = val, float(np.mean(losses))
    row = {
        "tokens": run.tokens,
        "val/epoch_loss": val.loss,
        "val/epoch_loss_stderr": val.stderr,
        "train/epoch_loss": run.last_epoch_train,
        "train/epoch_loss_stderr": _stderr(losses),
        "train/epoch_steps": len(losses),
    }
    run.tracker.log({"step": run.step, "epoch": run.epoch, **row})
    say(
        run,
        f"epoch {run.epoch}: train {run.last_epoch_train:.4f} ± {_stderr(losses):.4f} ({len(losses)} steps), "
        f"val {val.loss:.4f} ± {val.stderr:.4f}",
    )
    if run.best is None or val.loss < run.best.loss:
        run.best = val
        save(run, "best")


def sample(run: Run) -> None:
    t = run.cfg.train
    s = Sampling(max_new_tokens=t.sample_tokens, temperature=0.8, top_p=0.95)
    with run.clock.phase("sampling"):
        text = generate_text(run.model, run.data.tokenizer, t.prompt, s, seed=t.seed)
    run.tracker.log_sample(run.step, t.prompt, text)
    say(run, f"[step {run.step}] {t.prompt}{text!r}")


def say(run: Run, line: str) -> None:
    if run.cfg.train.progress:
        tqdm.write(line, file=sys.stderr)


def save(run: Run, which: str) -> None:
    if not run.cfg.tracking.save_weights:
        return
    tok = run.data.tokenizer
    vocab_ids = tok.used if isinstance(tok, CompactTokenizer) else None
    settings = dataclasses.asdict(run.cfg.model)
    with run.clock.phase("checkpoints"):
        save_checkpoint(run.tracker.run_dir / f"{which}.pt", run.model, settings, run.data.vocab_size, vocab_ids)


# -- start and end of a run -----------------------------------------------------------------------
def val_set_description(periodic: EvalSet, full: EvalSet, policy: ScoringPolicy) -> dict[str, Any]:
    """How the validation sets were drawn and scored, for meta.json and summary.json."""
    return {"periodic": periodic.description, "full": full.description, "scoring": policy.describe()}


def run_to_end(run: Run) -> tuple[str, str]:
    """Build the optimiser, run the loop, keep the final weights and a sample; (status, reason)."""
    try:
        with run.clock.phase("model_build"):
            run.optimizer = build_optimizer(run.model, run.cfg.optim)
    except ValueError as exc:  # torch's own range checks, e.g. a beta outside [0, 1)
        raise ConfigError(f"optim.name={run.cfg.optim.name}: {exc}") from None
    run.step_model = torch.compile(run.model) if run.cfg.train.compile else run.model
    try:
        run_loop(run)
        status, reason = "finished", ""
    except StopRun as stop:
        status, reason = stop.status, stop.reason
    save(run, "final")
    sample(run)
    return status, reason


def _value(estimate: Estimate | None, stderr: bool = False) -> float | None:
    if estimate is None:
        return None
    value = estimate.stderr if stderr else estimate.loss
    return None if math.isnan(value) else value


def summarize(run: Run, status: str, reason: str, baseline: dict[str, Any]) -> dict[str, Any]:
    """The run's numbers for summary.json: each validation loss with its standard error."""
    wall = time.perf_counter() - run.started
    losses = {}
    for name, estimate in (("best", run.best), ("final", run.final), ("last", run.last)):
        losses[f"{name}_val_loss"] = _value(estimate)
        losses[f"{name}_val_loss_stderr"] = _value(estimate, stderr=True)
    return {
        "status": status,
        "reason": reason,
        **losses,
        "final_train_loss": run.last_epoch_train,
        "tokens": run.tokens,
        "steps": run.step,
        "epochs": run.epoch,
        "wall_time_s": wall,
        "tokens_per_s": run.tokens / wall if wall > 0 else None,
        "params": count_parameters(run.model),
        "time_breakdown": run.clock.breakdown(),
        "val_set": val_set_description(run.periodic, run.full, run.policy),
        **baseline,
        "run_dir": str(run.tracker.run_dir),
        "vocab_size": run.data.vocab_size,
        "tokenizer": run.data.tokenizer.name,
        "device": str(run.device),
        "notes": run.data.notes,
    }


def _prepare_data(cfg: Config) -> tuple[Config, torch.device, TokenData]:
    """The config that will really run (offline fallback said aloud), its device, and its token data."""
    cfg, note = apply_offline_fallback(cfg)
    if note:
        print(note, file=sys.stderr)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        allow_tf32()
    data = load_token_data(cfg.data, progress=cfg.train.progress)
    if note:
        data.notes.append(note)
    return cfg, device, data


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
    run cleanly (status ``pruned``). Any error after the record exists closes it with status
    ``failed`` and the reason, and is re-raised; Ctrl-C closes it with ``interrupted``. ``clock`` (a sweep
    trial's, which also times its storage calls) accounts the run's time: the summary's ``time_breakdown``.
    """
    clock = clock or Stopwatch()
    with clock.phase("data"):
        cfg, device, data = _prepare_data(cfg)
    with clock.phase("model_build"):
        torch.manual_seed(cfg.train.seed)
        model = build_model(dataclasses.asdict(cfg.model), data.vocab_size).to(device)
    with clock.phase("data"):
        budget = Budget.plan(cfg, data, model.context_size or 0)  # before the record: an impossible budget: none
        periodic, full = validation_sets(data, cfg.train.eval_tokens)
        baseline = unigram_baseline(data)
    meta = {
        "device": str(device),
        "data": describe(data),
        "params": count_parameters(model),
        "baseline": baseline,
        "val_set": val_set_description(periodic, full, scoring_policy(cfg.model.block_size, model.context_size)),
    }
    with clock.phase("tracking_init"):
        tracker = Tracker(cfg, run_id or new_run_id(), extra={**meta, **(extra or {})})
    run = Run(cfg, data, model, tracker, budget, device, periodic, full, on_eval, clock=clock)
    status, reason = "failed", ""
    try:
        status, reason = run_to_end(run)
    except KeyboardInterrupt:
        status, reason = "interrupted", "KeyboardInterrupt"
        raise
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        summary = summarize(run, status, reason, baseline)
        with clock.phase("tracking_finish"):
            tracker.finish(summary)
    return summary
