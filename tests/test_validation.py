"""Validation numbers: the same tokens for every model and block size, real context, honest precision."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from picollm import trainer as train_mod
from picollm.config import load_config
from picollm.data import ScoringPolicy, load_token_data, scoring_policy, validation_sets
from picollm.models import build_model
from picollm.scoring import evaluate_run, ratio_estimate, score
from tests.conftest import ROOT, SAMPLE, needs_sample


def test_kgram_loss_does_not_depend_on_the_evaluation_block_size(synthetic: list[str]) -> None:
    """The same weights, scored with windows of 1 to 200 tokens: every target sees its real k-1 tokens."""
    cfg = load_config(None, synthetic)
    data = load_token_data(cfg.data, progress=False)
    _, full = validation_sets(data, None)
    torch.manual_seed(0)
    model = build_model({"type": "kgram", "k": 4, "embed_size": 16, "hidden_size": 32}, data.vocab_size)
    losses = [score(model, full, scoring_policy(b, model.context_size), 8, torch.device("cpu")) for b in (1, 7, 200)]
    assert losses[0].tokens == losses[1].tokens == losses[2].tokens == len(full.tokens) - 1
    for other in losses[1:]:
        assert other.loss == pytest.approx(losses[0].loss, abs=1e-5)
        assert other.stderr == pytest.approx(losses[0].stderr, abs=1e-5)


def test_a_trained_transformer_scores_no_worse_with_overlapping_windows(synthetic: list[str]) -> None:
    overrides = ["model.type=transformer", "model.positions=rotary", "train.epochs=3", "optim.lr=3e-3"]
    cfg = load_config(None, [*synthetic, *overrides, "model.block_size=16", "train.eval_every=1000"])
    summary = train_mod.train(cfg)
    from picollm.checkpoint import load_run

    model, _ = load_run(summary["run_dir"], "final")
    _, full = validation_sets(load_token_data(cfg.data, progress=False), None)
    cpu = torch.device("cpu")
    for block in (4, 9, 16):
        strided = score(model, full, scoring_policy(block, None), 16, cpu)
        disjoint = score(model, full, ScoringPolicy(block, block), 16, cpu)  # no overlap: today's windows
        assert strided.tokens == disjoint.tokens
        assert strided.loss <= disjoint.loss + 1e-6, block
    assert summary["final_val_loss"] < 0.6 * summary["unigram_entropy"]  # the model did learn


def test_the_standard_error_is_the_ratio_estimator_over_documents() -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(20, 200, 400).astype(float)
    per_doc = rng.normal(3.0, 0.5, 400)  # documents differ: tokens of one document are alike
    est = ratio_estimate(per_doc * counts, counts)
    assert est.loss == pytest.approx(float((per_doc * counts).sum() / counts.sum()))
    # resampling whole documents: the spread of the estimate is what the formula says
    draws = [rng.integers(0, 400, 400) for _ in range(2000)]
    boot = np.std([(per_doc[d] * counts[d]).sum() / counts[d].sum() for d in draws])
    assert est.stderr == pytest.approx(boot, rel=0.1)
    assert est.stderr > 3 * 0.5 / math.sqrt(counts.sum())  # far above a per-token std/sqrt(n)


def test_run_record_describes_both_validation_sets(synthetic: list[str]) -> None:
    summary = train_mod.train(load_config(None, [*synthetic, "train.max_steps_per_epoch=4", "train.eval_every=2"]))
    run_dir = Path(summary["run_dir"])
    meta = json.loads((run_dir / "meta.json").read_text())
    for record in (meta, summary):
        periodic, full = record["val_set"]["periodic"], record["val_set"]["full"]
        assert periodic["seed"] == full["seed"] and periodic["tokens"] >= 2048 and periodic["documents"] > 1
        assert full["tokens"] == summary["val_set"]["full"]["tokens"] > periodic["tokens"]
        assert "whole documents" in periodic["drawn"] and record["val_set"]["scoring"]["min_context"] == 16
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val_rows = [r for r in rows if "val/loss" in r]
    assert val_rows and all(r["val/loss_stderr"] > 0 for r in val_rows)
    assert [r["val/epoch_loss_stderr"] for r in rows if "val/epoch_loss" in r] == [summary["final_val_loss_stderr"]]
    assert summary["last_val_loss"] == val_rows[-1]["val/loss"] and summary["best_val_loss_stderr"] > 0
    assert evaluate_run(run_dir, weights="final")["loss"] == pytest.approx(summary["final_val_loss"], abs=1e-5)


def test_null_eval_tokens_makes_the_periodic_set_the_whole_capped_set(synthetic: list[str]) -> None:
    cfg = load_config(None, [*synthetic, "data.val_tokens=1500", "train.eval_tokens=null"])
    data = load_token_data(cfg.data, progress=False)
    periodic, full = validation_sets(data, cfg.train.eval_tokens)
    assert periodic is full and 1500 <= len(full.tokens) < 1600 < len(data.val_split)
    assert np.array_equal(full.tokens, data.val)
    smaller, _ = validation_sets(data, 500)
    assert 500 <= len(smaller.tokens) < 600


@needs_sample
def test_periodic_estimate_agrees_with_the_whole_split_within_two_standard_errors(out: list[str]) -> None:
    """quick.yaml's baseline on the shared sample: val/loss at the last step against all validation stories."""
    cfg = load_config(
        ROOT / "experiments" / "quick.yaml",
        [
            *out,
            f"data.tinystories={SAMPLE}",
            "data.offline_fallback=false",
            "data.compact_vocab=true",
            "tracking.wandb=disabled",
            "train.max_tokens=61440",  # 120 steps of 16 x 32
            "train.eval_every=40",  # so the last step is evaluated
        ],
    )
    summary = train_mod.train(cfg)
    assert summary["steps"] == 120
    whole = evaluate_run(summary["run_dir"], ["data.val_tokens=null"], weights="final")
    assert whole["documents"] == whole["val_set"]["split_documents"] == cfg.data.max_val_stories
    last, se = summary["last_val_loss"], summary["last_val_loss_stderr"]
    assert abs(last - whole["loss"]) <= 2 * se, (last, se, whole["loss"])
    assert se < 0.2  # a precision worth printing
    assert dataclasses.asdict(cfg.model)["type"] == "kgram"
