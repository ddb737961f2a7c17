"""``python -m picollm.evaluate`` (:mod:`picollm.cli.evaluate`); ``picollm.evaluate`` itself is the API's function."""

from picollm.cli import run_evaluate

if __name__ == "__main__":
    run_evaluate()
