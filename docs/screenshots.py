"""Make the README's screenshots of a study: the dashboard and the HTML report, in headless Chromium.

    python docs/screenshots.py --storage sqlite:///results/optuna.db --study quick

Needs Debian's chromium and a report made first (``analyze.py report --study quick --html``). Writes
``docs/dashboard.png`` and ``docs/report.png``, small (a viewport, not the whole page).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from picollm.analysis import records  # noqa: E402
from picollm.analysis.dashboard import make_server, serve_in_thread  # noqa: E402
from picollm.cli import run_cli  # noqa: E402
from picollm.errors import PicoError  # noqa: E402
from picollm.storage_url import add_storage_argument  # noqa: E402

VIEWPORT = {"width": 1100, "height": 760}


def shrink(path: Path) -> None:
    """A 128-colour palette: a screenshot of flat UI colours stays sharp at a fraction of the bytes."""
    from PIL import Image

    Image.open(path).convert("RGB").quantize(colors=128).save(path, optimize=True)


def shoot(args: argparse.Namespace) -> None:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        raise PicoError("Debian's chromium is not installed (apt-get install -y chromium)")
    report = Path(args.reports) / args.study / "report.html"
    if not report.is_file():
        raise PicoError(f"no {report}: run `python analyze.py report --study {args.study} --html` first")
    storage, names = records.open_studies(args.storage, args.study)
    server = make_server(storage, names, 0, Path(args.artifacts), Path(args.reports))
    serve_in_thread(server)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(f"http://127.0.0.1:{server.server_port}/dashboard/studies/1")
            page.get_by_text("Best Trial").wait_for(timeout=60000)
            page.wait_for_timeout(2000)  # plots animate in
            page.screenshot(path=str(ROOT / "docs" / "dashboard.png"))
            page.goto(report.resolve().as_uri() + "#ranking")
            page.screenshot(path=str(ROOT / "docs" / "report.png"))
            browser.close()
    finally:
        server.shutdown()
    for name in ("dashboard.png", "report.png"):
        shrink(ROOT / "docs" / name)
    print(f"wrote {ROOT / 'docs' / 'dashboard.png'} and {ROOT / 'docs' / 'report.png'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_storage_argument(parser)
    parser.add_argument("--study", required=True)
    parser.add_argument("--reports", default="results/reports")
    parser.add_argument("--artifacts", default="results/artifacts")
    shoot(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    run_cli(main)
