"""Shared fixtures: every test writes under its own tmp folder and never needs a network."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SAMPLE = SHARED / "data" / "tinystories-sample"
TIKTOKEN_CACHE = SHARED / "tiktoken-cache"

# Python's default, which an environment may turn off: the suite starts dozens of interpreters of the same sources,
# each compiling picollm again (0.4 to 0.8 CPU-s for a sweep's imports), and each test process rewrites the tests'
# asserts.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if TIKTOKEN_CACHE.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_service(env: str, what: str) -> str:
    """The URL of a service a test needs, from ``env``; without it the test skips, or FAILS under ``CI=true``.

    CI must not report full survival for a fault it never injected, so there a missing service is an error.
    """
    url = os.environ.get(env)
    if url:
        return url
    message = f"set {env} to run this test against {what} (.ci/run does)"
    if CI:
        pytest.fail(f"CI=true but {message}", pytrace=False)
    pytest.skip(message)


def postgres_url() -> str:
    return require_service("PICOLLM_TEST_POSTGRES_URL", "a PostgreSQL server")


needs_sample = pytest.mark.skipif(
    not (SAMPLE.is_dir() and TIKTOKEN_CACHE.is_dir()),
    reason="needs ../shared/data/tinystories-sample and ../shared/tiktoken-cache",
)


@pytest.fixture(scope="session")
def shared_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One finished 5-trial study (its storage URL and folder) for every test that only reads it: the sweep is the
    slow part of such a test, and reading never changes the study. Built once per test process: a module using it
    marks itself ``xdist_group("shared_study")``, so that process is one."""
    from tests.studies import finished_study

    tmp = tmp_path_factory.mktemp("shared-study")
    storage, _ = finished_study(tmp)
    return storage, tmp


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
_SKIPPED: dict[str, int] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run @pytest.mark.slow tests (the soak test)")


# The stderr pytest itself writes to, taken while its capture is suspended (pytest_configure): what a test process
# prints just before it ends on purpose (tests/sweeps.py: sweep_here's timeout) reaches the run's log.
TERMINAL_STDERR: list[int] = []


def pytest_configure(config: pytest.Config) -> None:
    _own_core()
    TERMINAL_STDERR.append(os.dup(2))
    config.addinivalue_line("markers", "fault(name): a fault-injection test of the named fault class")
    config.addinivalue_line("markers", "slow: minutes long (the soak test); run with --slow")


def _own_core() -> None:
    """Under pytest-xdist, each test process keeps to one core of its own, and so do the processes it starts: a run
    that sampled the machine as free would otherwise take both cores while the other test process trains too."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1:
        os.sched_setaffinity(0, {cores[int(worker[2:]) % len(cores)]})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    fault = dict(report.user_properties).get("fault")  # set at collection; travels with the report from xdist workers
    if not fault:
        return
    if report.skipped:  # never injected: counted apart, so a skip never reads as survival
        _SKIPPED[fault] = _SKIPPED.get(fault, 0) + 1
    elif report.when == "call" or (report.when == "setup" and report.failed):
        _FAULTS.setdefault(fault, []).append(report.passed)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if item.get_closest_marker("slow") and not config.getoption("--slow"):
            item.add_marker(skip_slow)
        mark = item.get_closest_marker("fault")
        if mark:
            item.user_properties.append(("fault", mark.args[0]))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Under ``--dist loadgroup`` xdist names a grouped test ``<id>@<group>`` to keep its group in one process. A pytest
    that drops the new name (pytest-dev/pytest-xdist#1386) would quietly build shared_study in every process."""
    grouped = item.config.getoption("loadgroup", default=False) and item.get_closest_marker("xdist_group")
    if grouped and "@" not in item.nodeid:
        pytest.fail("pytest-xdist dropped this test's xdist_group: install requirements-dev.txt's pytest")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _FAULTS and not _SKIPPED:
        return
    terminalreporter.section("faults injected")
    for name in sorted(set(_FAULTS) | set(_SKIPPED)):
        outcomes = _FAULTS.get(name, [])
        terminalreporter.write_line(
            f"{name:28s} injected {len(outcomes):3d}  survived {sum(outcomes):3d}  not run {_SKIPPED.get(name, 0):3d}"
        )
    total = [o for outcomes in _FAULTS.values() for o in outcomes]
    terminalreporter.write_line(
        f"{'all fault classes':28s} injected {len(total):3d}  survived {sum(total):3d}  "
        f"not run {sum(_SKIPPED.values()):3d}"
    )
