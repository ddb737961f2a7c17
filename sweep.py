"""``python sweep.py``: the sweep command line, kept at the repository's root (see :mod:`picollm.cli.sweep`)."""

from picollm.cli import run_sweep

if __name__ == "__main__":
    run_sweep()
