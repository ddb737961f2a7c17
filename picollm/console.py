"""Whether progress bars belong in the output: in a terminal or a notebook, never in a log file."""

from __future__ import annotations

import sys


def in_notebook() -> bool:
    """True inside a Jupyter or Colab kernel (the same test ``tqdm.autonotebook`` makes)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in shell.config


def show_progress() -> bool:
    """Whether to draw progress bars: in a terminal or a notebook, never into a file or a CI log."""
    return sys.stderr.isatty() or in_notebook()
