"""``python -m picollm.generate``: sample text from a saved run (the command line lives in :mod:`picollm.cli.generate`).

A module only so that ``python -m picollm.generate`` works; ``picollm.generate`` itself is the Python API's function.
"""

from picollm.cli import run_generate

if __name__ == "__main__":
    run_generate()
