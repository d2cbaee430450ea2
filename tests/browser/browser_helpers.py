"""Helpers for the browser tests (imported by conftest.py and the test modules): screenshots, waiting, login.

Streamlit-specific locators live here so a Streamlit upgrade that renames a test id is fixed in one place.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
PASSWORD = "browser-test-password"
"""The fixture starts the dashboard with UMTCDS_PASSWORD set, so every test also walks through the password gate."""
WAIT_MS = 60_000
"""How long a test waits for the screen (or a file) to show an action's result: a rerun can take tens of seconds on a
loaded 2-core machine, so every check after an action waits up to this long instead of looking once."""


def shot(pg, name: str) -> Path:
    """Save a full-page screenshot as ``test-artifacts/browser/<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / (re.sub(r"[^\w.-]+", "_", name) + ".png")
    pg.screenshot(path=str(path), full_page=True)
    return path


def main_area(pg):
    return pg.locator('[data-testid="stMain"]')


def wait_until(check: Callable[[], object], what: str, timeout_s: float = WAIT_MS / 1000) -> object:
    """Poll ``check`` until it returns something truthy (and return that); fail naming ``what`` after the timeout.

    For results outside the page (a file the page saves): the save happens in the server's rerun, which may finish
    well after the click returned.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(0.3)


def wait_idle(pg, timeout_ms: int = WAIT_MS) -> None:
    """Wait until the script run finished (Streamlit shows its status widget while a rerun is in progress)."""
    pg.wait_for_timeout(200)
    pg.wait_for_function(
        """() => !document.querySelector('[data-testid="stStatusWidget"]')
               || !/running|运行/i.test(document.querySelector('[data-testid="stStatusWidget"]').innerText)""",
        timeout=timeout_ms,
    )


def open_dashboard(pg, dash, path: str = "") -> None:
    """Open the dashboard (a new browser session) and pass the password gate."""
    pg.goto(dash.url + path, timeout=WAIT_MS)
    pwd = pg.get_by_label(re.compile("^(密码|Password)$"))
    pwd.wait_for(timeout=WAIT_MS)
    pwd.fill(PASSWORD)
    pg.get_by_role("button", name=re.compile("^(进入|Enter)$")).click()
    pg.locator('[data-testid="stSidebar"]').wait_for(timeout=WAIT_MS)
    wait_idle(pg)


def set_language(pg, lang: str) -> None:
    """Click the sidebar's 中文 / English radio and wait until it is selected (the caller waits for the new texts)."""
    from playwright.sync_api import expect

    label = "English" if lang == "en" else "中文"
    sidebar = pg.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text(label, exact=True).click()
    expect(sidebar.get_by_role("radio", name=label, exact=True)).to_be_checked(timeout=WAIT_MS)
    wait_idle(pg)


def create_workspace(pg, name: str) -> None:
    """Create a project from the Home page's form."""
    box = pg.get_by_placeholder("my-campus")
    box.wait_for(timeout=WAIT_MS)
    box.fill(name)
    pg.get_by_role("button", name=re.compile("^(创建项目|Create project)$")).click()
    wait_idle(pg)
