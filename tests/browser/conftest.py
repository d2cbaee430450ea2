"""Browser-test fixtures: the REAL dashboard server (``streamlit run Home.py``) and headless Debian Chromium.

Why real: AppTest runs a page script in-process; only a browser shows that the server starts, the navigation works,
widgets respond and a background job's progress reaches the screen. The server is started with ``make run`` (see
``browser_helpers.make_run_cmd``), so it reads the same ``.streamlit/config.toml`` a user's does. Screenshots of every step land in
``test-artifacts/browser/`` (gitignored) so a failing CI run can be looked at.

Needs ``playwright`` (pip, in requirements.txt) and Debian's ``chromium`` at /usr/bin/chromium
(``apt-get install chromium``; ``playwright install`` cannot download here). Without it the tests skip.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from browser_helpers import CHROMIUM, CHROMIUM_ARGS, shot, start_dashboard, stop_dashboard


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """The real dashboard on a free port, with an empty workspaces root (one server per test module)."""
    dash = start_dashboard(tmp_path_factory.mktemp("dashboard"))
    yield dash
    stop_dashboard(dash)


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which(CHROMIUM):
        pytest.skip(f"No Chromium at {CHROMIUM}: install Debian's chromium: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed: pip install playwright (then apt-get install chromium)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1366, "height": 900}, locale="zh-CN")
    context.set_default_timeout(60_000)  # a loaded 2-core machine: see browser_helpers.WAIT_MS
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.js_errors = errors  # type: ignore[attr-defined]
    yield pg
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        shot(pg, f"{request.node.name}-FAILED")
    context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
