"""``python -m picollm.evaluate``: score a saved run (the command line lives in :mod:`picollm.cli.evaluate`).

A module only so that ``python -m picollm.evaluate`` works; ``picollm.evaluate`` itself is the Python API's function.
"""

from picollm.cli import run_evaluate

if __name__ == "__main__":
    run_evaluate()
