"""Browser-test fixtures: the REAL dashboard server (``streamlit run Home.py``) and headless Debian Chromium.

Why real: AppTest runs a page script in-process; only a browser shows that the server starts, the navigation works,
widgets respond and a background job's progress reaches the screen. Screenshots of every step land in
``test-artifacts/browser/`` (gitignored) so a failing CI run can be looked at.

Needs ``playwright`` (pip, in requirements.txt) and Debian's ``chromium`` at /usr/bin/chromium
(``apt-get install chromium``; ``playwright install`` cannot download here). Without it the tests skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from browser_helpers import ARTIFACTS, PASSWORD, REPO, shot

CHROMIUM = os.environ.get("UMTCDS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _streamlit_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "streamlit"  # .venv/bin/streamlit when the suite runs from the venv
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "streamlit"]


@dataclass
class Dashboard:
    url: str
    workspaces: Path
    log: Path
    proc: subprocess.Popen

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-n:]
        except OSError:
            return ""


def _start_dashboard(tmp: Path, env_extra: dict[str, str] | None = None) -> Dashboard:
    port = free_port()
    workspaces = tmp / "workspaces"
    workspaces.mkdir(parents=True, exist_ok=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / f"streamlit-{port}.log"
    env = dict(os.environ)
    env.update(
        UMTCDS_WORKSPACES=str(workspaces),
        UMTCDS_PASSWORD=PASSWORD,
        STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
        PYTHONUNBUFFERED="1",
    )
    env.pop("UMTCDS_WARN_PUBLIC", None)
    env.update(env_extra or {})
    cmd = _streamlit_cmd() + [
        "run",
        "Home.py",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    dash = Dashboard(url=f"http://127.0.0.1:{port}/", workspaces=workspaces, log=log, proc=proc)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"The dashboard exited with {proc.returncode}:\n{dash.log_tail()}")
        try:
            with urllib.request.urlopen(dash.url + "_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    return dash
        except OSError:
            time.sleep(0.3)
    _stop_dashboard(dash)
    raise RuntimeError(f"The dashboard did not answer within 90 s:\n{dash.log_tail()}")


def _stop_dashboard(dash: Dashboard) -> None:
    if dash.proc.poll() is None:
        try:
            os.killpg(dash.proc.pid, signal.SIGTERM)  # its own session: also ends jobs it started in the foreground
            dash.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(dash.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """The real dashboard on a free port, with an empty workspaces root (one server per test module)."""
    dash = _start_dashboard(tmp_path_factory.mktemp("dashboard"))
    yield dash
    _stop_dashboard(dash)


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
    context.set_default_timeout(30_000)
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
