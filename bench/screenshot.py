"""The README's picture of a report: the first screen of an HTML report, as Debian's chromium-headless-shell
draws it (through Playwright).

    .venv/bin/python bench/screenshot.py runs/auto/report.html docs/report-screenshot.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

BROWSER = "/usr/lib/chromium/chromium-headless-shell"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--height", type=int, default=1400, help="pixels of the page shown")
    parser.add_argument("--browser", default=BROWSER)
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.browser)
        page = browser.new_page(viewport={"width": 1200, "height": args.height})
        page.goto(args.report.resolve().as_uri())
        page.screenshot(path=args.png)
        browser.close()


if __name__ == "__main__":
    main()
