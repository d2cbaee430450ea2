"""Helpers for the browser tests (imported by conftest.py, the test modules and bench/dashboard_cpu_bench.py): the
dashboard started as ``make run``, screenshots, waiting, login, CPU accounting, a real training job.

Streamlit-specific locators live here so a Streamlit upgrade that renames a test id is fixed in one place.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
PASSWORD = "browser-test-password"
"""The fixture starts the dashboard with UMTCDS_PASSWORD set, so every test also walks through the password gate."""
WAIT_MS = 60_000
"""How long a test waits for the screen (or a file) to show an action's result: a rerun can take tens of seconds on a
loaded 2-core machine, so every check after an action waits up to this long instead of looking once."""

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


# ---- the real dashboard, started as `make run` -----------------------------------------------------------------
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
    return ["make", "--no-print-directory", "run", f"PORT={port}", *_venv_arg()]


def _venv_arg() -> list[str]:
    """``VENV=<this interpreter's venv>`` unless it is the Makefile's default ``.venv`` (then the command is plain)."""
    here = Path(sys.prefix).resolve()
    return [] if here == (REPO / ".venv").resolve() else [f"VENV={here}"]


def _without_make_flags(env: dict[str, str]) -> dict[str, str]:
    """A suite started by ``make test`` must not pass that make's flags (jobserver, -k…) on to ``make run``."""
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
        env.pop(name, None)
    return env


def _require_make_setup() -> None:
    """``make run`` installs first when the venv is not set up; a test must not reinstall: say what to do instead."""
    if shutil.which("make") is None:
        raise RuntimeError("The browser tests start the app with `make run`: install make (apt-get install make).")
    env = _without_make_flags(dict(os.environ))
    check = subprocess.run(["make", "--question", "setup", *_venv_arg()], cwd=REPO, env=env, capture_output=True)
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


def start_dashboard(tmp: Path, env_extra: dict[str, str] | None = None, workspaces: Path | None = None) -> Dashboard:
    """Start the dashboard with ``make run`` on a free port and wait until it answers.

    Projects live in ``workspaces`` (default ``tmp/workspaces``); the password gate is on (``PASSWORD``). Only
    environment variables differ from a user's start: Streamlit's own ``STREAMLIT_*`` ones are removed so that the
    config file decides, unless ``env_extra`` sets one on purpose (the bench's watcher comparison).
    """
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
    env = _without_make_flags(env)
    env.update(env_extra or {})
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            make_run_cmd(port), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    dash = Dashboard(url=f"http://127.0.0.1:{port}/", workspaces=workspaces, log=log, proc=proc)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop_dashboard(dash)
            raise RuntimeError(f"`make run` exited with {proc.returncode}:\n{dash.log_tail()}")
        try:
            with urllib.request.urlopen(dash.url + "_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    return dash
        except OSError:
            time.sleep(0.3)
    stop_dashboard(dash)
    raise RuntimeError(f"The dashboard did not answer within 120 s:\n{dash.log_tail()}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal still exists
        return True


def stop_dashboard(dash: Dashboard) -> None:
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


def open_step_page(pg, url_path: str) -> None:
    """Open a step page from the sidebar's navigation by its URL path ("train", …), independent of its title.

    Through the sidebar, not by URL: a page's URL opened in a new session would skip Home's password gate.
    """
    pg.locator(f'[data-testid="stSidebarNav"] a[href$="/{url_path}"]').first.click()
    pg.wait_for_url(re.compile(f"/{url_path}(\\?.*)?$"), timeout=WAIT_MS)
    wait_idle(pg)


def set_language(pg, lang: str) -> None:
    """Click the sidebar's 中文 / English radio and wait until it is selected (the caller waits for the new texts)."""
    from playwright.sync_api import expect

    label = "English" if lang == "en" else "中文"
    sidebar = pg.locator('[data-testid="stSidebar"]')
    # While a rerun replaces the sidebar, the old radio can still be in the page beside the new one: act on the first
    # match and wait for any copy to be checked, instead of requiring exactly one element.
    sidebar.get_by_text(label, exact=True).first.click()
    expect(sidebar.get_by_role("radio", name=label, exact=True, checked=True).first).to_be_attached(timeout=WAIT_MS)
    wait_idle(pg)


def create_workspace(pg, name: str) -> None:
    """Create a project from the Home page's form."""
    box = pg.get_by_placeholder("my-campus")
    box.wait_for(timeout=WAIT_MS)
    box.fill(name)
    pg.get_by_role("button", name=re.compile("^(创建项目|Create project)$")).click()
    wait_idle(pg)


# ---- CPU accounting and a real training job (the dashboard CPU test and bench/dashboard_cpu_bench.py) -------------
def proc_table() -> dict[int, tuple[int, int, float]]:
    """Every process now: pid -> (parent pid, session id, CPU seconds used so far: user + system), from /proc.

    Why /proc and sessions: the dashboard (``make`` and its child Streamlit) runs in a session of its own, and every
    background job runs in another one (``jobs.start_job`` starts a new session), so "the dashboard's own CPU" is
    exactly the CPU of the processes in the dashboard's session, whoever started the jobs.
    """
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is the state (field 3 of proc(5))
        table[int(entry.name)] = (int(fields[1]), int(fields[3]), (int(fields[11]) + int(fields[12])) / tick)
    return table


def session_cpu_seconds(sid: int) -> float:
    """CPU seconds used so far by the live processes of session ``sid``."""
    return sum(cpu for _, s, cpu in proc_table().values() if s == sid)


EMBEDDED_TRAIN_CONFIG = {
    "model": "smollm2-135m",  # the embedded model: what a user without a GPU trains
    "data_dir": "dataset",
    "method": "lora",
    "max_input_length": 64,  # short steps: a loaded 2-core machine still logs several per minute
    "max_output_length": 64,
    "per_device_batch_size": 1,
    "logging_steps": 1,  # one metrics line per step: the files a job writes all the time
    "eval_steps": 100_000,
    "save_steps": 100_000,
    "max_steps": 100_000,  # stopped by the caller once it has measured
}


def training_workspace(root: Path, name: str, **config) -> object:
    """A project under ``root`` with the demo site's seed pairs as its dataset and a config.yaml for the embedded
    model (``EMBEDDED_TRAIN_CONFIG`` updated with ``config``), as the Dataset and Config pages would leave it."""
    import yaml

    from umtcds_core.demo import pick_seed
    from umtcds_core.fileio import write_jsonl_atomic
    from umtcds_core.workspace import Workspace

    ws = Workspace.create(name, root=root)
    rows = [
        {"messages": [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]}
        for r in pick_seed(None)
    ]
    write_jsonl_atomic(ws.dataset_dir / "train.jsonl", rows)
    write_jsonl_atomic(ws.dataset_dir / "dev.jsonl", rows[:2])
    ws.config_file.write_text(yaml.safe_dump({**EMBEDDED_TRAIN_CONFIG, **config}, sort_keys=False), encoding="utf-8")
    return ws


def start_training(ws) -> tuple[object, Path]:
    """Start ``umtcds train`` on the project's config as a background job, with the argv the Train page's "Start a new
    run" button uses; returns the job and its run folder."""
    from umtcds_core.jobs import cli_argv, start_job

    run_dir = ws.new_run_dir()
    argv = cli_argv("train", str(ws.config_file), "--resume", "no", "--output-dir", str(run_dir))
    return start_job(ws, "train", argv), run_dir


def train_records(run_dir: Path) -> list[dict]:
    """The run's per-step training records so far (``metrics.jsonl`` lines of kind "train")."""
    import json

    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:  # a line being written
            continue
        if rec.get("kind") == "train" and "tokens_seen" in rec:
            out.append(rec)
    return out
