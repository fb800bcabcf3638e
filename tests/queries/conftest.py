"""The browser of the report's tests: Debian's chromium driven by Playwright, one per module, a fresh page per
test that records every request and fails the test on a script error."""

from __future__ import annotations

import shutil

import pytest

VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright (the CI script installs both)."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip: dev extra)"
    )
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A fresh page; `page.requests` collects the URL of every request it makes."""
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()
    tab.requests = []
    tab.errors = []
    tab.on("request", lambda request: tab.requests.append(request.url))
    tab.on("pageerror", lambda error: tab.errors.append(str(error)))
    yield tab
    context.close()
    assert not tab.errors, tab.errors  # a script error in the site fails the test that hit it
