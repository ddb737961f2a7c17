"""Train one run: the training loop and :func:`train`, its one entry point.

:func:`run_loop` is the loop on one screen; the pieces it calls share one :class:`Run`. The CLI and every sweep trial
call :func:`train`, and once a run's record exists it always ends with ``summary.json``. A full-state checkpoint holds
everything the loop reads, so :func:`resume` finishes a killed run bit for bit (on a CPU) and :func:`extend` continues a
WSD run's stable phase to a longer budget.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from picollm import checkpoint
from picollm.config import Config, config_from_dict, load_config
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
from picollm.errors import ConfigError, DataError
from picollm.models import build_model, count_parameters
from picollm.models.loss import allow_tf32, linear_cross_entropy
from picollm.optim import build_optimizer, decay_start, lr_at, set_lr
from picollm.sampling import Sampling, generate_text
from picollm.scoring import Estimate, score
from picollm.timing import Stopwatch
from picollm.tokenizers import tiktoken_cache_dir
from picollm.tracking import Tracker, new_run_id, read_summary

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
    """One optimiser step: (loss, gradient norm before clipping); ``x``'s last ``y.shape[1]`` positions are scored."""
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
    steps_by_epochs: int  # what the epochs alone allow
    tokens_per_step: int

    @classmethod
    def plan(cls, cfg: Config, data: TokenData, context: int = 0) -> Budget:
        t = cfg.train
        windows = sum(len(s) for s in window_starts(data, cfg.model.block_size, context).values())
        per_epoch = max(1, windows // t.batch_size)
        per_epoch = min(per_epoch, t.max_steps_per_epoch or per_epoch)
        by_epochs = t.epochs * per_epoch
        per_step = t.batch_size * cfg.model.block_size
        budget = cls(per_epoch, by_epochs, t.max_tokens, by_epochs, per_step)
        budget.total_steps = budget.steps_for(t.max_tokens)
        return budget

    def steps_for(self, tokens: int | None) -> int:
        """The steps of a run of this config with a budget of ``tokens`` (None: the epochs' own)."""
        return (
            self.steps_by_epochs if not tokens else min(self.steps_by_epochs, math.ceil(tokens / self.tokens_per_step))
        )


def _stderr(values: list[float]) -> float:
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


@dataclass
class Run:
    """One run's parts and running numbers: what decides what happens next, all in a full-state checkpoint."""

    cfg: Config
    data: TokenData
    model: nn.Module
    tracker: Tracker
    budget: Budget
    device: torch.device
    periodic: EvalSet  # behind val/loss (train.eval_tokens; the whole capped set when null)
    full: EvalSet  # behind val/epoch_loss and the summary: the whole capped validation set
    on_eval: EvalHook | None = None
    on_anneal: EvalHook | None = None  # sees every branched decay's loss: (its budget in tokens, the loss)
    step_model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    step: int = 0
    tokens: int = 0
    epoch: int = 1
    epoch_losses: list[float] = field(default_factory=list)  # this epoch's step losses so far
    epoch_rng: dict[str, Any] | None = None  # the data order's random state at this epoch's start
    next_eval_mark: int = 0
    next_checkpoint_mark: int = 0
    best: Estimate | None = None
    last: Estimate | None = None  # the last periodic evaluation
    final: Estimate | None = None  # the last epoch-end evaluation
    annealed: dict[int, Estimate] = field(default_factory=dict)  # budget (tokens) -> its branched decay's loss
    anneal_tokens: int = 0  # tokens trained in branched decays, on top of the run's own
    last_epoch_train: float | None = None
    started: float = field(default_factory=time.perf_counter)
    bar: Any = None
    clock: Stopwatch = field(default_factory=Stopwatch)  # where the run's time goes (summary: time_breakdown)
    last_step: int = -1  # the step of the last periodic evaluation

    def __post_init__(self) -> None:
        t = self.cfg.train
        self.rng = np.random.default_rng(t.seed)
        self.next_eval_mark = t.eval_every_tokens or 0
        tenth = math.ceil(self.budget.total_steps / 10) * self.budget.tokens_per_step
        self.checkpoint_every = t.checkpoint_every_tokens or tenth
        self.next_checkpoint_mark = self.checkpoint_every
        self.context = self.model.context_size or 0  # tokens each training window reads before its block
        self.policy = scoring_policy(self.cfg.model.block_size, self.model.context_size)
        self.eval_batch = max(1, t.batch_size * 2)
        self.one_set = self.periodic is self.full or np.array_equal(self.periodic.tokens, self.full.tokens)
        # the step before which each branched decay starts: a run of that budget decays from there
        self.anneal_from = {decay_start(self.budget.steps_for(b), self.cfg.optim): b for b in sorted(t.anneal_at)}
        wsd = self.cfg.optim.schedule == "wsd"
        self.stable_end = decay_start(self.budget.total_steps, self.cfg.optim) if wsd else None


# -- the loop -----------------------------------------------------------------------------------
def run_loop(run: Run) -> None:
    """The training loop, top to bottom: epochs of steps, evaluations, decays and checkpoints when due."""
    t = run.cfg.train
    interactive = t.progress and show_progress()  # no bar spam in CI logs
    with tqdm(total=run.budget.total_steps, initial=run.step, unit="step", disable=not interactive, leave=False) as bar:
        run.bar = bar
        while run.epoch <= t.epochs:
            for batch in epoch_batches(run):
                if len(run.epoch_losses) >= run.budget.steps_per_epoch or out_of_budget(run):
                    break
                run.epoch_losses.append(one_step(run, batch))
                after_step(run)
            end_epoch(run, run.epoch_losses)
            if out_of_budget(run) or run.epoch == t.epochs:
                break
            start_epoch(run, run.epoch + 1)


def epoch_batches(run: Run) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This epoch's batches from where the run stands in it (a resumed run skips the ones it trained)."""
    if run.epoch_rng is None:
        run.epoch_rng = copy.deepcopy(run.rng.bit_generator.state)
    run.rng.bit_generator.state = copy.deepcopy(run.epoch_rng)
    batches = train_batches(run.data, run.cfg.model.block_size, run.cfg.train.batch_size, run.rng, run.context)
    return itertools.islice(batches, len(run.epoch_losses), None)


def start_epoch(run: Run, epoch: int) -> None:
    run.epoch, run.epoch_losses, run.epoch_rng = epoch, [], copy.deepcopy(run.rng.bit_generator.state)


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


def after_step(run: Run) -> None:
    """What is due once a step is done: a periodic evaluation, a sample, branched decays, a checkpoint."""
    mark = evaluation_due(run)
    if mark is not None:
        evaluate_periodic(run, mark)
    if run.cfg.train.sample_every and run.step % run.cfg.train.sample_every == 0:
        sample(run)
    if run.step in run.anneal_from:
        anneal(run, run.anneal_from[run.step])
    due = checkpoint_due(run)
    if run.step == run.stable_end:
        keep_state(run, stable=True)
    elif due:
        keep_state(run)


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
    if run.on_eval is None:
        return
    try:
        run.on_eval(mark, run.last.loss)
    except StopRun as stop:
        if stop.status != "pruned" or not out_of_budget(run):
            raise  # once the budget is spent, pruning would only throw the finished run away: it completes


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
    say(run, f"[step {run.step}] {t.prompt}{text}".replace("\n", " "))


def say(run: Run, line: str) -> None:
    if run.cfg.train.progress:
        tqdm.write(line, file=sys.stderr)


def save(run: Run, which: str) -> None:
    if not run.cfg.tracking.save_weights:
        return
    tok = run.data.tokenizer
    vocab_ids = tok.used if isinstance(tok, CompactTokenizer) else None
    settings = run.cfg.to_dict()["model"]
    with run.clock.phase("checkpoints"):
        checkpoint.save_checkpoint(
            run.tracker.run_dir / f"{which}.pt", run.model, settings, run.data.vocab_size, vocab_ids
        )


# -- a decay branched from the stable phase -------------------------------------------------------
def anneal(run: Run, budget_tokens: int) -> None:
    """The loss a WSD run of ``budget_tokens`` would end with, scored now and left behind.

    That run shares every step up to its decay, which starts here: the decay trains this run's model and optimiser on
    the coming batches, is scored on the whole capped set, and is undone, random state included.
    """
    saved, decayed = training_state(run), 0
    total = run.budget.steps_for(budget_tokens)
    with run.clock.phase("annealing"):
        for step, batch in zip(range(run.step, total), _stream_from_here(run), strict=False):
            set_lr(run.optimizer, lr_at(step, total, run.cfg.optim))
            x, y = to_device(batch, run.device)
            train_step(run.step_model, run.optimizer, x, y, run.cfg.optim.grad_clip, run.device)
            decayed += y.numel()
    with run.clock.phase("evaluation"):
        estimate = score(run.model, run.full, run.policy, run.eval_batch, run.device)
    restore_state(run, saved)
    run.anneal_tokens += decayed
    run.annealed[budget_tokens] = estimate
    row = {"tokens": run.tokens, "anneal_tokens": budget_tokens, "val/annealed_loss": estimate.loss}
    run.tracker.log({"step": run.step, "epoch": run.epoch, **row, "val/annealed_loss_stderr": estimate.stderr})
    say(run, f"decay branched at {run.tokens:,} tokens: val {estimate.loss:.4f} at a budget of {budget_tokens:,}")
    keep_state(run)  # a sweep that stops the run here may promote it later: it goes on from this very step
    if run.on_anneal is not None:
        run.on_anneal(budget_tokens, estimate.loss)


def _stream_from_here(run: Run) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches the run would train on next, across epoch ends, without moving the run's own stream."""
    rng = np.random.default_rng()
    rng.bit_generator.state = copy.deepcopy(run.epoch_rng)
    skip = len(run.epoch_losses)
    block, batch = run.cfg.model.block_size, run.cfg.train.batch_size
    while True:
        yield from itertools.islice(
            train_batches(run.data, block, batch, rng, run.context), skip, run.budget.steps_per_epoch
        )
        skip = 0


# -- full-state checkpoints -----------------------------------------------------------------------
def checkpoint_due(run: Run) -> bool:
    """Each ``train.checkpoint_every_tokens`` (by default a tenth of the run), except at its very end."""
    if run.tokens < run.next_checkpoint_mark:
        return False
    while run.next_checkpoint_mark <= run.tokens:
        run.next_checkpoint_mark += run.checkpoint_every
    return not out_of_budget(run)


def _estimate(value: dict[str, Any] | None) -> Estimate | None:
    return None if value is None else Estimate(**value)


def _plain(estimate: Estimate | None) -> dict[str, Any] | None:
    return None if estimate is None else dataclasses.asdict(estimate)


def training_state(run: Run) -> dict[str, Any]:
    """Everything the loop reads, as copies (a checkpoint, or a branched decay's way back): tensors and plain values
    that ``torch.load(weights_only=True)`` reads back."""
    return {
        "model_state": {k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()},
        "optimizer": copy.deepcopy(run.optimizer.state_dict()),
        "step": run.step,
        "tokens": run.tokens,
        "epoch": run.epoch,
        "epoch_losses": list(run.epoch_losses),
        "epoch_rng": copy.deepcopy(run.epoch_rng),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "next_eval_mark": run.next_eval_mark,
        "next_checkpoint_mark": run.next_checkpoint_mark,
        "last_step": run.last_step,
        "best": _plain(run.best),
        "last": _plain(run.last),
        "final": _plain(run.final),
        "annealed": {str(b): _plain(e) for b, e in run.annealed.items()},
        "last_epoch_train": run.last_epoch_train,
        "anneal_tokens": run.anneal_tokens,
        "records": run.tracker.record_lengths(),
        "wall_s": time.perf_counter() - run.started,
    }


def restore_state(run: Run, state: dict[str, Any]) -> None:
    """Put a saved state into a run built from the same config (the optimiser already built)."""
    run.model.load_state_dict(state["model_state"])
    run.optimizer.load_state_dict(state["optimizer"])
    for key in ("step", "tokens", "epoch", "epoch_rng", "next_eval_mark", "next_checkpoint_mark", "last_step"):
        setattr(run, key, copy.deepcopy(state[key]))
    run.epoch_losses = list(state["epoch_losses"])
    run.best, run.last, run.final = (_estimate(state[k]) for k in ("best", "last", "final"))
    run.annealed = {int(b): _estimate(e) for b, e in state["annealed"].items()}
    run.last_epoch_train = state["last_epoch_train"]
    run.anneal_tokens = state["anneal_tokens"]
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def keep_state(run: Run, stable: bool = False) -> None:
    """A full-state checkpoint; ``stable``: a WSD run's stable-phase end, kept for :func:`extend`."""
    with run.clock.phase("checkpoints"):
        checkpoint.save_state(run.tracker.run_dir, training_state(run), run.cfg, stable=stable)
        checkpoint.prune_states(run.tracker.run_dir, run.cfg.train.keep_checkpoints)


# -- start and end of a run -----------------------------------------------------------------------
def val_set_description(periodic: EvalSet, full: EvalSet, policy: ScoringPolicy) -> dict[str, Any]:
    """How the validation sets were drawn and scored, for meta.json and summary.json."""
    return {"periodic": periodic.description, "full": full.description, "scoring": policy.describe()}


def run_to_end(run: Run, state: dict[str, Any] | None = None) -> tuple[str, str]:
    """Build the optimiser (and restore ``state``), run the loop, keep the final weights and a sample."""
    try:
        with run.clock.phase("model_build"):
            run.optimizer = build_optimizer(run.model, run.cfg.optim)
    except ValueError as exc:  # torch's own range checks, e.g. a beta outside [0, 1)
        raise ConfigError(f"optim.name={run.cfg.optim.name}: {exc}") from None
    if state is not None:
        restore_state(run, state)
        run.started -= state["wall_s"]  # wall_time_s and tokens_per_s count the time that led up to the checkpoint
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
    annealed = {str(b): {"loss": _value(e), "stderr": _value(e, True)} for b, e in sorted(run.annealed.items())}
    return {
        "status": status,
        "reason": reason,
        **losses,
        "annealed_val_loss": annealed,
        "anneal_tokens": run.anneal_tokens,
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


@dataclass
class Start:
    """Where a run starts other than at step 0: a checkpoint's state and the record it continues (None: a new one)."""

    state: dict[str, Any]
    source: Path
    run_dir: Path | None = None
    label: str = "extended_from"  # the meta.json key naming ``source`` in a new record


def train(
    cfg: Config,
    *,
    run_id: str | None = None,
    on_eval: EvalHook | None = None,
    on_anneal: EvalHook | None = None,
    extra: dict[str, Any] | None = None,
    clock: Stopwatch | None = None,
    start: Start | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train one run end to end and return its summary (also written to ``summary.json``).

    ``on_eval`` and ``on_anneal`` may raise :class:`StopRun` (status ``pruned``); any error after the record exists
    closes it as ``failed``, Ctrl-C as ``interrupted``. ``start`` continues from a checkpoint. ``on_progress`` gets a
    line on how far the run is every few seconds (a sweep's trials, which show no progress bar).
    """
    clock = clock or Stopwatch()
    with clock.phase("data"):
        cfg, device, data = _prepare_data(cfg)
    with clock.phase("model_build"):
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model, data.vocab_size).to(device)
    with clock.phase("data"):
        budget = Budget.plan(cfg, data, model.context_size or 0)  # before the record: an impossible budget: none
        periodic, full = validation_sets(data, cfg.train.eval_tokens)
        baseline = unigram_baseline(data)
    meta = {
        "device": str(device),
        "data": describe(data),
        "params": count_parameters(model),
        "baseline": baseline,
        "tokenizer_files": tiktoken_cache_dir() if cfg.data.tokenizer == "gpt2" else None,
        "val_set": val_set_description(periodic, full, scoring_policy(cfg.model.block_size, model.context_size)),
    }
    with clock.phase("tracking_init"):
        tracker = _open_record(cfg, run_id, {**meta, **(extra or {})}, start, on_progress)
    run = Run(cfg, data, model, tracker, budget, device, periodic, full, on_eval, on_anneal, clock=clock)
    status, reason = "failed", ""
    try:
        status, reason = run_to_end(run, start.state if start is not None else None)
    except KeyboardInterrupt:
        status, reason = "interrupted", "KeyboardInterrupt"
        raise
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        summary = summarize(run, status, reason, baseline)
        with clock.phase("tracking_finish"):
            summary = tracker.finish(summary)  # as summary.json has it: the W&B outcome too
    return summary


def _open_record(
    cfg: Config, run_id: str | None, meta: dict[str, Any], start: Start | None, on_progress: Any = None
) -> Tracker:
    """A new run record, or the record a checkpoint continues (its rows after the checkpoint dropped)."""
    if start is None:
        return Tracker(cfg, run_id or new_run_id(), extra=meta, on_progress=on_progress)
    rows = start.state["records"]
    if start.run_dir is not None:
        resumed = {**meta, "resumed_at_step": start.state["step"]}
        return Tracker.reopen(cfg, start.run_dir, rows, extra=resumed, on_progress=on_progress)
    extra = {**meta, start.label: str(start.source), "resumed_at_step": start.state["step"]}
    tracker = Tracker(cfg, run_id or new_run_id(), extra=extra, on_progress=on_progress)
    tracker.copy_rows(start.source, rows)
    return tracker


# -- continuing a run ------------------------------------------------------------------------------
def resume(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Continue a killed run from its latest full-state checkpoint, in its own record, with the same losses."""
    run_dir = Path(run_dir)
    cfg = _recorded_config(run_dir)
    if read_summary(run_dir).get("status") == "finished":  # a killed run has no summary yet
        further = "; --extend-to TOKENS trains it further" if cfg.optim.schedule == "wsd" else ""
        raise ConfigError(f"{run_dir}: the run finished{further}")
    path = checkpoint.latest_state(run_dir)
    state = checkpoint.load_state(path, cfg, same_budget=True)
    return train(cfg, run_id=run_dir.name, start=Start(state, run_dir, run_dir), **kwargs)


def extend(run_dir: str | Path, tokens: int, **kwargs: Any) -> dict[str, Any]:
    """A finished WSD run continued from the end of its stable phase to ``tokens``: a new run, as if started so."""
    run_dir = Path(run_dir)
    cfg = _recorded_config(run_dir)
    if cfg.optim.schedule != "wsd":
        raise ConfigError(
            f"{run_dir}: optim.schedule={cfg.optim.schedule} has no stable phase to branch from; "
            "only a wsd run can be extended (train the longer budget from the start instead)"
        )
    if cfg.train.max_tokens is None:
        raise ConfigError(
            f"{run_dir}: the run's budget was its epochs (train.max_tokens null); only a run with a token budget "
            "can be extended: train one with --set train.max_tokens=N"
        )
    if tokens <= cfg.train.max_tokens:
        raise ConfigError(
            f"--extend-to {tokens:,}: the run's budget is train.max_tokens={cfg.train.max_tokens}; "
            "extend to more tokens than that"
        )
    state = checkpoint.load_state(checkpoint.stable_state(run_dir), cfg, same_budget=False)
    raw = cfg.to_dict()
    raw["train"]["max_tokens"] = tokens
    # The epochs grow with the budget, so that they do not end the longer run before its tokens do.
    raw["train"]["epochs"] = max(cfg.train.epochs, math.ceil(cfg.train.epochs * tokens / cfg.train.max_tokens))
    longer = config_from_dict(raw)
    return train(longer, start=Start(state, run_dir), **kwargs)


def _recorded_config(run_dir: Path) -> Config:
    if not run_dir.is_dir():
        raise DataError(f"run folder not found: {run_dir}")
    if not (run_dir / "config.yaml").is_file():
        raise DataError(f"{run_dir}: not a run record (no config.yaml)")
    return load_config(run_dir / "config.yaml")
