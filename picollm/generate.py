"""``python -m picollm.generate`` (:mod:`picollm.cli.generate`); ``picollm.generate`` itself is the API's function."""

from picollm.cli import run_generate

if __name__ == "__main__":
    run_generate()
