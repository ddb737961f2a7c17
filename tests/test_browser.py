"""A study as a user sees it: the HTML report and the dashboard in a real, headless Chromium.

Chromium is Debian's (``apt-get install chromium``; ``.ci/run`` installs it when missing), driven by
Playwright; nothing is downloaded at run time. Without it the tests skip on a workstation and FAIL
under ``CI=true``, so a CI run never reports a browser check that did not happen.
Each test saves a screenshot in its tmp folder.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import picollm.cli.analyze as analyze
from picollm.analysis import records
from picollm.analysis.dashboard import make_server, serve_in_thread
from picollm.cli import run_cli

# shared_study is built once per test process: these modules share one
pytestmark = pytest.mark.xdist_group("shared_study")


def missing(message: str) -> None:
    """Skip here, fail under CI: a browser check that did not run must not look like one that passed."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}: CI must run the browser tests")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        missing("Debian's chromium is not installed (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is not installed (pip install -r requirements-dev.txt)")
    with sync_playwright() as p:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start
        launched = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def study(shared_study: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished 5-trial study (complete and pruned trials) and its HTML report."""
    storage, tmp = shared_study
    reports = tmp_path_factory.mktemp("browser-reports")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(analyze.main, ["report", "--study", "t", "--storage", storage, "--html", "--out", str(reports / "t")])
    assert exit_info.value.code == 0
    with open(tmp / "studies" / "t" / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    return {"tmp": tmp, "storage": storage, "reports": reports, "trials": trials}


def _best(trials: list[dict[str, str]]) -> dict[str, str]:
    return min((t for t in trials if t["state"] == "COMPLETE"), key=lambda t: float(t["value"]))


def _images_loaded(page: Any, expected: int) -> list[bool]:
    """Each image's state once ``expected`` images are on the page and every one has finished, loaded or broken:
    under load the page can render its figures after the network went quiet (seen in CI); a broken one still fails."""
    ready = "n => document.images.length >= n && Array.from(document.images).every(i => i.complete)"
    page.wait_for_function(ready, arg=expected, timeout=30000)
    return page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")


def test_html_report_shows_ranking_best_value_and_every_figure_offline(
    browser: Any, study: dict[str, Any], tmp_path: Path
) -> None:
    report = study["reports"] / "t" / "report.html"
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(report.as_uri())
    trials, best = study["trials"], _best(study["trials"])
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    pruned = [t for t in trials if t["state"] == "PRUNED"]
    assert complete and pruned
    ranking = page.locator("#ranking table").first
    assert ranking.locator("tbody tr").count() == len(complete)
    assert page.locator("#ranking tr.pruned").count() == len(pruned)  # apart, marked, never ranked
    assert ranking.locator("tbody tr").first.inner_text().split("\t")[:3] == [
        "1",
        best["number"],
        f"{float(best['value']):.4f}",
    ]
    assert page.get_by_text(f"value {float(best['value']):.4f}").first.is_visible()
    figures = list((study["reports"] / "t").glob("*.png")) + list((study["tmp"] / "studies" / "t").glob("*.png"))
    assert page.locator("figure img").count() == len(figures)
    loaded = _images_loaded(page, len(figures))
    assert all(loaded) and len(loaded) == len(figures)
    assert page.locator("#best-configuration button", has_text="copy").is_visible()
    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # no CDN, no network
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    page.close()


@pytest.fixture
def dashboard(study: dict[str, Any], tmp_path: Path) -> Iterator[str]:
    storage, names = records.open_studies(study["storage"], "t")
    server = make_server(storage, names, 0, tmp_path / "artifacts", study["reports"])
    serve_in_thread(server)
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_dashboard_shows_trials_best_value_figures_and_run_links(
    browser: Any, study: dict[str, Any], dashboard: str, tmp_path: Path
) -> None:
    trials, best = study["trials"], _best(study["trials"])
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{dashboard}/dashboard/studies/1")
    page.get_by_text(f"Best Trial (number={best['number']})").wait_for(timeout=30000)
    assert page.get_by_text(str(float(best["value"]))).first.is_visible()
    page.screenshot(path=str(tmp_path / "dashboard.png"))
    page.goto(f"{dashboard}/dashboard/studies/1/trials")
    page.get_by_text(f"{len(trials)} Trials").wait_for(timeout=30000)
    page.get_by_text("summary.json").first.wait_for(timeout=30000)  # the trial's note links its record
    link = page.get_by_role("link", name="summary.json").first.get_attribute("href")
    summary = page.request.get(f"{dashboard}{link}")
    assert summary.ok and '"status"' in summary.text()
    page.goto(f"{dashboard}/dashboard/studies/1/note")
    page.get_by_text("t: the figures").wait_for(timeout=30000)
    page.wait_for_load_state("networkidle")
    published = len(list((tmp_path / "artifacts").glob("*-*-*-*-*")))
    loaded = _images_loaded(page, published)
    figures = list((study["reports"] / "t").glob("*.png")) + list((study["tmp"] / "studies" / "t").glob("*.png"))
    assert published == len(figures) >= 7 and len(loaded) == published and all(loaded)  # every figure, each once
    page.screenshot(path=str(tmp_path / "dashboard-note.png"), full_page=True)
    page.close()
