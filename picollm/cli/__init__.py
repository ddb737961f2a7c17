"""The command lines: thin layers that parse arguments and print; the library never imports them."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from picollm.errors import run_cli


def _command(name: str) -> Callable[[], None]:
    def run() -> None:
        """A console script: :mod:`picollm.cli.<name>`'s ``main``, its errors one line and an exit code."""
        run_cli(importlib.import_module(f"picollm.cli.{name}").main)

    return run


run_train, run_evaluate, run_generate, run_sweep, run_analyze = map(
    _command, ("train", "evaluate", "generate", "sweep", "analyze")
)
