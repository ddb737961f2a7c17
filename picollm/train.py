"""``python -m picollm.train`` (:mod:`picollm.cli.train`); ``picollm.train`` itself is the API's function."""

from picollm.cli import run_train

if __name__ == "__main__":
    run_train()
