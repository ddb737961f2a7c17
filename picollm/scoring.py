"""Scoring a model on validation tokens, with a standard error.

A validation loss is a token-weighted mean over documents, ``L = sum_d S_d / sum_d N_d``. Tokens of one story are not
independent, so the standard error is the ratio-estimator (cluster) one over documents,
``sqrt(n/(n-1) * sum_d (S_d - L N_d)^2) / sum_d N_d``, not ``std/sqrt(tokens)``, which would overstate the precision
several times. The head and the loss run only on scored tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from picollm.checkpoint import load_run
from picollm.config import Config, load_config
from picollm.data import (
    CompactTokenizer,
    EvalSet,
    ScoringPolicy,
    eval_batches,
    load_token_data,
    remap_to_vocab,
    sample_documents,
    scoring_policy,
    test_sample,
)
from picollm.device import autocast_for, resolve_device, to_device
from picollm.errors import ConfigError, DataError
from picollm.models.loss import token_losses

EVAL_BATCH = 32  # windows per forward pass when scoring outside training


@dataclass
class Estimate:
    """A validation loss (nats/token), its standard error over documents, and what it was taken over."""

    loss: float
    stderr: float  # nan with a single document
    tokens: int
    documents: int


def ratio_estimate(sums: np.ndarray, counts: np.ndarray) -> Estimate:
    """Token-weighted mean loss of documents and its ratio-estimator standard error."""
    keep = counts > 0
    sums, counts = sums[keep], counts[keep]
    total, n = float(counts.sum()), len(counts)
    loss = float(sums.sum()) / total
    resid = sums - loss * counts
    stderr = math.sqrt(n / (n - 1) * float(resid @ resid)) / total if n > 1 else math.nan
    return Estimate(loss, stderr, int(total), n)


@torch.no_grad()
def score(
    model: nn.Module, eval_set: EvalSet, policy: ScoringPolicy, batch_size: int, device: torch.device
) -> Estimate:
    """Loss of ``model`` on every token of ``eval_set`` after the first, each once, per ``policy``."""
    was_training = model.training
    model.eval()
    sums = np.zeros(eval_set.documents)
    counts = np.zeros(eval_set.documents)
    for x, y, scored, index in eval_batches(eval_set.tokens, policy, batch_size):
        x, y, scored = to_device((x, y, scored), device)
        with autocast_for(device):
            losses = token_losses(model(x)[scored], model.head, y[scored])
        docs = eval_set.doc_of_target[index]
        sums += np.bincount(docs, weights=losses.double().cpu().numpy(), minlength=eval_set.documents)
        counts += np.bincount(docs, minlength=eval_set.documents)
    model.train(was_training)
    return ratio_estimate(sums, counts)


# -- Scoring a saved run ----------------------------------------------------------------------


def _run_config(run_dir: Path, overrides: Sequence[str]) -> Config:
    if not run_dir.is_dir():
        raise DataError(f"run folder not found: {run_dir}")
    if not (run_dir / "config.yaml").is_file():
        raise DataError(f"{run_dir}: not a run record (no config.yaml)")
    for item in overrides:
        if not item.strip().startswith("data."):
            raise ConfigError(f"--set {item}: only data.* keys change what a saved model is scored on")
    return load_config(run_dir / "config.yaml", overrides)


def _weights_file(run_dir: Path, which: str) -> Path:
    path = run_dir / f"{which}.pt"
    return path if path.is_file() else run_dir / "final.pt"


def validation_set_for(cfg: Config, tokenizer: Any, test: bool = False) -> EvalSet:
    """The capped validation set of ``cfg.data`` (``test``: its test set) in the model's (maybe compact) vocabulary."""
    if isinstance(tokenizer, CompactTokenizer):  # the model's ids, whatever data it is scored on
        cfg.data.compact_vocab = False
        data = load_token_data(cfg.data, progress=False)
        split = remap_to_vocab(data.val_split, tokenizer.used)
    else:
        data = load_token_data(cfg.data, progress=False)
        split = data.val_split
    base = tokenizer.base if isinstance(tokenizer, CompactTokenizer) else tokenizer
    if data.tokenizer.name != base.name:
        raise ConfigError(f"data.tokenizer={cfg.data.tokenizer}, but the model was trained with {base.name} ids")
    if test:
        if not cfg.data.test_tokens:
            raise ConfigError("no test set: data.test_tokens is not set for this run")
        return test_sample(split, tokenizer.eot_id, cfg.data.val_tokens, cfg.data.test_tokens)
    return sample_documents(split, tokenizer.eot_id, cfg.data.val_tokens)


def evaluate_run(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    block_size: int | None = None,
    weights: str = "best",
    device: str = "cpu",
    test: bool = False,
) -> dict[str, Any]:
    """Score a saved run on its validation split, another dataset's (``overrides``), or its test set (``test``)."""
    run_dir = Path(run_dir)
    cfg = _run_config(run_dir, overrides)
    torch_device = resolve_device(device)
    model, tokenizer = load_run(run_dir, weights, device=str(torch_device))
    block = model.block_size if block_size is None else block_size
    if block < 1 or (getattr(model, "pos_embed", None) is not None and block > model.block_size):
        raise ConfigError(f"--block-size {block}: this model takes 1 to {model.block_size} tokens")
    eval_set = validation_set_for(cfg, tokenizer, test)
    policy = scoring_policy(block, model.context_size)
    est = score(model, eval_set, policy, EVAL_BATCH, torch_device)
    return {
        "run_dir": str(run_dir),
        "weights": _weights_file(run_dir, weights).name,
        "loss": est.loss,
        "stderr": None if math.isnan(est.stderr) else est.stderr,
        "tokens": est.tokens,
        "documents": est.documents,
        "block_size": block,
        "context": policy.describe(),
        "split": "test" if test else "validation",
        "val_set": eval_set.description,
        "data": {"tinystories": cfg.data.tinystories, "tokenizer": tokenizer.name, "val_tokens": cfg.data.val_tokens},
    }
