"""The sweep's workers x threads choice (the benchmark measures it; these pin the rule)."""

from __future__ import annotations

import pytest

from picollm.threads import MAX_AUTO_WORKERS, available_cores, choose_layout


@pytest.mark.parametrize(
    ("workers", "cores", "gpus", "expected"),
    [
        (None, 2, 0, (2, 1)),  # this project's machine: one single-threaded worker per core
        (None, 1, 0, (1, 1)),
        (None, 32, 0, (MAX_AUTO_WORKERS, 32 // MAX_AUTO_WORKERS)),  # capped; the spare cores become threads
        (None, 16, 2, (2, 8)),  # one worker per GPU
        (1, 2, 0, (1, 2)),  # --workers 1: that worker gets every core
        (3, 2, 0, (3, 1)),  # more workers than cores: never 0 threads
    ],
)
def test_layout_rule(workers: int | None, cores: int, gpus: int, expected: tuple[int, int]) -> None:
    assert choose_layout(workers, cores, gpus) == expected


def test_default_uses_the_cores_this_process_may_run_on() -> None:
    workers, threads = choose_layout(gpus=0)
    assert workers * threads <= available_cores() and workers >= 1 and threads >= 1
