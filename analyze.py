"""``python analyze.py``: the analyze command line, kept at the repository's root (see :mod:`picollm.cli.analyze`)."""

from picollm.cli import run_analyze

if __name__ == "__main__":
    run_analyze()
