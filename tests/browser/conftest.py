"""Browser-test fixtures: the REAL dashboard server (``streamlit run Home.py``) and headless Debian Chromium.

Why real: AppTest runs a page script in-process; only a browser shows that the server starts, the navigation works,
widgets respond and a background job's progress reaches the screen. The server is started with ``make run`` (see
``make_run_cmd``), so it reads the same ``.streamlit/config.toml`` a user's does. Screenshots of every step land in
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


def make_run_cmd(port: int) -> list[str]:
    """``make run`` exactly as the README starts the app, on ``port``.

    Why make and not ``streamlit run`` with test flags: the tests used to add ``--server.fileWatcherType none``, which
    hid that the app as users start it watched the whole checkout and burned a core. Now the app runs with the same
    Makefile recipe and ``.streamlit/config.toml`` a user gets; only the port (free, so tests never collide) and
    environment variables (workspaces root, password) differ. ``VENV`` names the venv this suite runs in (the
    Makefile's default ``.venv`` when started by ``make test``).
    """
    return ["make", "--no-print-directory", "run", f"PORT={port}", f"VENV={Path(sys.prefix)}"]


def _require_make_setup() -> None:
    """``make run`` installs first when the venv is not set up; a test must not reinstall: say what to do instead."""
    if shutil.which("make") is None:
        raise RuntimeError("The browser tests start the app with `make run`: install make (apt-get install make).")
    check = subprocess.run(
        ["make", "--question", "setup", f"VENV={Path(sys.prefix)}"], cwd=REPO, capture_output=True, text=True
    )
    if check.returncode != 0:
        raise RuntimeError(
            f"The venv {sys.prefix} is not set up for `make run` (its install stamp is missing or older than "
            "requirements.txt/pyproject.toml): run `make setup` first, then the browser tests."
        )


@dataclass
class Dashboard:
    url: str
    workspaces: Path
    log: Path
    proc: subprocess.Popen
    """``make`` itself, the leader of a new session; Streamlit is its child in the same process group."""

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-n:]
        except OSError:
            return ""


def _start_dashboard(tmp: Path, env_extra: dict[str, str] | None = None, workspaces: Path | None = None) -> Dashboard:
    _require_make_setup()
    port = free_port()
    workspaces = workspaces or tmp / "workspaces"
    workspaces.mkdir(parents=True, exist_ok=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / f"streamlit-{port}.log"
    env = dict(os.environ)
    env.update(UMTCDS_WORKSPACES=str(workspaces), UMTCDS_PASSWORD=PASSWORD, PYTHONUNBUFFERED="1")
    env.pop("UMTCDS_WARN_PUBLIC", None)
    for name in [k for k in env if k.startswith("STREAMLIT_")]:  # config comes from .streamlit/config.toml only
        env.pop(name)
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):  # a suite started by `make test` must not pass its flags on
        env.pop(name, None)
    env.update(env_extra or {})
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            make_run_cmd(port), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    dash = Dashboard(url=f"http://127.0.0.1:{port}/", workspaces=workspaces, log=log, proc=proc)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _stop_dashboard(dash)
            raise RuntimeError(f"`make run` exited with {proc.returncode}:\n{dash.log_tail()}")
        try:
            with urllib.request.urlopen(dash.url + "_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    return dash
        except OSError:
            time.sleep(0.3)
    _stop_dashboard(dash)
    raise RuntimeError(f"The dashboard did not answer within 120 s:\n{dash.log_tail()}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal still exists
        return True


def _stop_dashboard(dash: Dashboard) -> None:
    """End make AND Streamlit: SIGTERM to the whole process group, SIGKILL to what is left after 15 s.

    Waiting for make alone is not enough: make can exit on SIGTERM before its child Streamlit has, so the group is
    polled until it is empty. Jobs started from the pages run in sessions of their own and are not touched here.
    """
    pgid = dash.proc.pid
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        if not _group_alive(pgid):
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            dash.proc.poll()  # reap make so its pid leaves the group
            if not _group_alive(pgid):
                break
            time.sleep(0.1)
    try:
        dash.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
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
