"""The command lines: each parses its arguments, calls :mod:`picollm.api` where it has the job, and prints.

The library never imports them.

:func:`run_cli` turns a :class:`~picollm.errors.PicoError` into one line on stderr and an exit code for every command
line; a sweep's worker processes do the same for themselves (:func:`picollm.sweeps.workers.worker_process`).
"""

from __future__ import annotations

import gc
import importlib
import sys
from collections.abc import Callable

from picollm.errors import EXIT_INTERRUPTED, EXIT_USAGE, PicoError


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run ``main`` and exit: 0 on success, 2 with one line on a :class:`PicoError`, 130 on Ctrl-C."""
    try:
        code = main(argv)
    except PicoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    if argv is None:  # a console script, whose process ends here
        # Its files and runs are closed by now. Without a last garbage collection over the million objects torch and
        # optuna made, the interpreter ends 0.5-1.3 s sooner; the OS frees their memory anyway.
        gc.freeze()
    sys.exit(code or 0)


def _command(name: str) -> Callable[[], None]:
    def run() -> None:
        """A console script: :mod:`picollm.cli.<name>`'s ``main``, its errors one line and an exit code."""
        run_cli(importlib.import_module(f"picollm.cli.{name}").main)

    return run


run_train, run_evaluate, run_generate, run_sweep, run_analyze = map(
    _command, ("train", "evaluate", "generate", "sweep", "analyze")
)
