"""The HTML report in a real browser: Playwright drives Debian's chromium-headless-shell (`.ci/run` installs it).

On a machine without the browser or Playwright the tests skip and say what to install; under CI (the `CI`
environment variable, set by `.ci/run`) a missing browser fails them instead, so they never skip unseen.
"""

import os
import shutil
from pathlib import Path

import pytest

from modelfusion.report import write_report

from .results_samples import auto_results, ensemble_results

INJECTED = "<script>alert(1)</script>"
BROWSER_PATHS = ("/usr/lib/chromium/chromium-headless-shell", "/usr/bin/chromium-headless-shell")


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the browser test must run here)")
    pytest.skip(reason)


def _browser_path() -> str:
    """MODELFUSION_BROWSER, else Debian's chromium-headless-shell."""
    candidates = [os.environ.get("MODELFUSION_BROWSER"), *BROWSER_PATHS, shutil.which("chromium-headless-shell")]
    found = next((path for path in candidates if path and os.access(path, os.X_OK)), None)
    if found is None:
        _unavailable("no chromium-headless-shell: apt-get install chromium-headless-shell (or set MODELFUSION_BROWSER)")
    return found


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: pip install -e '.[dev]'")
    executable = _browser_path()
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=executable)
        except Error as err:
            _unavailable(f"{executable} did not start: {str(err).strip().splitlines()[0]}")
        yield browser
        browser.close()


def _open(browser, report: Path) -> tuple:
    """Load `report`, recording every request, console message, page error and dialog on the way."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    seen = {"requests": [], "console": [], "errors": [], "dialogs": []}
    page.on("request", lambda request: seen["requests"].append(request.url))
    page.on("console", lambda message: seen["console"].append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: seen["errors"].append(str(error)))
    page.on("dialog", lambda dialog: (seen["dialogs"].append(dialog.message), dialog.dismiss()))
    page.goto(report.as_uri(), wait_until="load")
    return page, seen


@pytest.mark.parametrize("shape", ["auto", "ensemble"])
def test_report_renders_in_a_browser_without_requests_errors_or_scripts(browser, tmp_path, shape):
    if shape == "auto":  # a member named like a script: it must show as text and run nothing; a long name
        long_name = "student of greedy_selection over every member, then half its units pruned and recovered, int8"
        results = auto_results((INJECTED, long_name, "logreg"))
        # accuracy against cost, reliability, interpolation, cascade, merge search (its searched soup) and diversity
        candidates, figures = len(results["leaderboard"]), 5 + bool(results["curves"].get("search"))
    else:
        results, candidates, figures = ensemble_results(), 5, 3
    report = write_report(results, tmp_path / "report.html")
    page, seen = _open(browser, report)

    assert seen["requests"] == [report.as_uri()]  # the file itself, nothing else
    assert seen["console"] == [] and seen["errors"] == [] and seen["dialogs"] == []
    svgs = page.locator("svg")
    assert svgs.count() == figures
    for k in range(figures):
        box = svgs.nth(k).bounding_box()
        assert box is not None and box["width"] > 50 and box["height"] > 50, (k, box)
    rows = page.locator("#leaderboard tbody tr")
    assert rows.count() == candidates
    names = [rows.nth(k).locator("td").nth(1).inner_text() for k in range(candidates)]
    assert sorted(names) == sorted(c["name"] for c in results["leaderboard"])
    assert page.locator("#verdict").inner_text().startswith("The chosen fusion")
    # a wide leaderboard scrolls inside its box; the page itself never needs a horizontal scroll bar
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shot = page.screenshot(path=tmp_path / "report.png", full_page=True)
    assert len(shot) > 10_000 and (tmp_path / "report.png").stat().st_size == len(shot)
    page.close()
