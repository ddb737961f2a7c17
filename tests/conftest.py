"""Shared fixtures: every test writes under its own tmp folder and never needs a network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SAMPLE = SHARED / "data" / "tinystories-sample"
TIKTOKEN_CACHE = SHARED / "tiktoken-cache"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if TIKTOKEN_CACHE.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))

needs_sample = pytest.mark.skipif(
    not (SAMPLE.is_dir() and TIKTOKEN_CACHE.is_dir()),
    reason="needs ../shared/data/tinystories-sample and ../shared/tiktoken-cache",
)


@pytest.fixture
def out(tmp_path: Path) -> list[str]:
    """Overrides that keep run records and the token cache inside the test's tmp folder."""
    return [f"tracking.out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", "train.progress=false"]


@pytest.fixture
def synthetic(out: list[str]) -> list[str]:
    """A small synthetic-sequence config: bytes tokenizer, no TinyStories, W&B off."""
    return [
        *out,
        "data.tinystories=null",
        "data.synthetic=600",
        "data.tokenizer=bytes",
        "tracking.wandb=disabled",
        "model.block_size=32",
        "model.embed_size=64",
        "train.batch_size=32",
        "train.eval_every=20",
        "train.eval_tokens=2048",
        "train.prompt='0 1 2 3 4'",
    ]
