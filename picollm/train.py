"""``python -m picollm.train``: train one small language model (the command line lives in :mod:`picollm.cli.train`).

A module only so that ``python -m picollm.train`` works; ``picollm.train`` itself is the Python API's function.
"""

from picollm.cli import run_train

if __name__ == "__main__":
    run_train()
