"""Shared test fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# -- pseudonym key: one test key for the whole session, so that no test reads or creates the user's
# default key file (~/.config/petcohort/pseudonym.key); tests of the key sources override it -----------
TEST_PSEUDONYM_KEY = "petcohort-test-session-key-0123456789"


@pytest.fixture(scope="session", autouse=True)
def _pseudonym_key():
    mp = pytest.MonkeyPatch()
    mp.setenv("PETCOHORT_PSEUDONYM_KEY", TEST_PSEUDONYM_KEY)
    mp.delenv("PETCOHORT_PSEUDONYM_KEY_FILE", raising=False)
    yield TEST_PSEUDONYM_KEY
    mp.undo()


# -- browser: one headless chromium per session (tests marked `browser`) -------------------------
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BROWSER_OUT = Path(__file__).resolve().parent.parent / "test-output" / "browser"


@pytest.fixture(scope="session")
def browser():
    """A headless chromium driven by Playwright (system binary; `playwright install` is never used)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def browser_out() -> Path:
    """Folder for screenshots (gitignored ``test-output/browser``)."""
    BROWSER_OUT.mkdir(parents=True, exist_ok=True)
    return BROWSER_OUT
