"""Helpers for the browser tests (imported by conftest.py and the test modules): screenshots, waiting, login.

Streamlit-specific locators live here so a Streamlit upgrade that renames a test id is fixed in one place.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
PASSWORD = "browser-test-password"
"""The fixture starts the dashboard with UMTCDS_PASSWORD set, so every test also walks through the password gate."""


def shot(pg, name: str) -> Path:
    """Save a full-page screenshot as ``test-artifacts/browser/<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / (re.sub(r"[^\w.-]+", "_", name) + ".png")
    pg.screenshot(path=str(path), full_page=True)
    return path


def main_area(pg):
    return pg.locator('[data-testid="stMain"]')


def wait_idle(pg, timeout_ms: int = 30_000) -> None:
    """Wait until the script run finished (Streamlit shows its status widget while a rerun is in progress)."""
    pg.wait_for_timeout(200)
    pg.wait_for_function(
        """() => !document.querySelector('[data-testid="stStatusWidget"]')
               || !/running|运行/i.test(document.querySelector('[data-testid="stStatusWidget"]').innerText)""",
        timeout=timeout_ms,
    )


def open_dashboard(pg, dash, path: str = "") -> None:
    """Open the dashboard (a new browser session) and pass the password gate."""
    pg.goto(dash.url + path)
    pwd = pg.get_by_label(re.compile("^(密码|Password)$"))
    pwd.wait_for()
    pwd.fill(PASSWORD)
    pg.get_by_role("button", name=re.compile("^(进入|Enter)$")).click()
    pg.locator('[data-testid="stSidebar"]').wait_for()
    wait_idle(pg)


def set_language(pg, lang: str) -> None:
    """Click the sidebar's 中文 / English radio."""
    label = "English" if lang == "en" else "中文"
    pg.locator('[data-testid="stSidebar"]').get_by_text(label, exact=True).click()
    wait_idle(pg)


def create_workspace(pg, name: str) -> None:
    """Create a project from the Home page's form."""
    box = pg.get_by_placeholder("my-campus")
    box.fill(name)
    pg.get_by_role("button", name=re.compile("^(创建项目|Create project)$")).click()
    wait_idle(pg)
