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


# --- fault-injection bookkeeping: `@pytest.mark.fault("class")` tests are summed up per class ---
_FAULTS: dict[str, list[bool]] = {}
_FAULT_OF: dict[str, str] = {}  # test id -> fault class


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fault(name): a fault-injection test of the named fault class")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    fault = _FAULT_OF.get(report.nodeid)
    if fault and not report.skipped and (report.when == "call" or (report.when == "setup" and report.failed)):
        _FAULTS.setdefault(fault, []).append(report.passed)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        mark = item.get_closest_marker("fault")
        if mark:
            _FAULT_OF[item.nodeid] = mark.args[0]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _FAULTS:
        return
    terminalreporter.section("faults injected")
    for name, outcomes in sorted(_FAULTS.items()):
        terminalreporter.write_line(f"{name:28s} injected {len(outcomes):3d}  survived {sum(outcomes):3d}")
    total = [o for outcomes in _FAULTS.values() for o in outcomes]
    terminalreporter.write_line(f"{'all fault classes':28s} injected {len(total):3d}  survived {sum(total):3d}")
