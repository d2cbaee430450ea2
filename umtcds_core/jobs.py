"""Background jobs: run a CLI step as a subprocess that outlives the browser and the dashboard.

Why a supervisor process: the dashboard may be closed or restarted at any time. ``start_job`` launches
``python -m umtcds_core.jobs supervise JOB_DIR`` in a new session (its own process group); the supervisor starts the
step (``python -m umtcds_core.cli <step> …``) with stdout/stderr appended to ``log.txt``, waits for it, and writes
``exit.json``. Everything the dashboard needs is in the job folder, so any later dashboard process re-attaches by
reading it:

    jobs/<job-id>/job.json       id, step, argv, started, supervisor pid (+ its start time, against pid reuse)
    jobs/<job-id>/log.txt        the step's output
    jobs/<job-id>/progress.json  written by the step through umtcds_core.progress (UMTCDS_PROGRESS_FILE)
    jobs/<job-id>/settings.yaml  the step's settings (``umtcds <step> --config`` it), when the page saved them
    jobs/<job-id>/exit.json      returncode, ended, stopped — absent while running or when the job was killed hard
    jobs/<job-id>/stop           present once a stop was requested

Secrets go to the child only through its environment; job.json never stores environment values.
"""

from __future__ import annotations

import os
import secrets as _rand
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .fileio import read_json, tail_text, write_json_atomic, write_text_atomic
from .progress import ENV_VAR as PROGRESS_ENV

if TYPE_CHECKING:  # for the annotations only: workspace imports this module (a step's status reads its jobs)
    from .workspace import Workspace

# A job's states. The workspace shows a step's status in the same words (plus "not started"), so they live here,
# below the workspace, and it imports them.
RUNNING, DONE, FAILED, STOPPED = "running", "done", "failed", "stopped"
SETTINGS_FILE = "settings.yaml"
_HANDLES: dict[str, subprocess.Popen] = {}  # reaps supervisors started by this process (no zombies)


def _proc_start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (Linux), so a recycled pid is not mistaken for our job."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":  # zombie: finished, not yet reaped
            return None
        return fields[19]
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, start_time: str | None) -> bool:
    if Path("/proc").exists():
        now = _proc_start_time(pid)
        return now is not None and (start_time is None or now == start_time)
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


@dataclass
class Job:
    dir: Path

    @property
    def id(self) -> str:
        return self.dir.name

    @property
    def meta(self) -> dict:
        return read_json(self.dir / "job.json", {}) or {}

    @property
    def step(self) -> str:
        return self.meta.get("step", "")

    @property
    def log_file(self) -> Path:
        return self.dir / "log.txt"

    @property
    def progress_file(self) -> Path:
        return self.dir / "progress.json"

    @property
    def settings_file(self) -> Path:
        """The step's settings YAML the job was started with (``--config``); absent for a job started with flags."""
        return self.dir / SETTINGS_FILE

    def exit_info(self) -> dict | None:
        return read_json(self.dir / "exit.json")

    def status(self) -> str:
        handle = _HANDLES.get(str(self.dir))
        if handle is not None:
            handle.poll()
        info = self.exit_info()
        if info is not None:
            if info.get("stopped"):  # the user pressed Stop; the step may still have saved its work
                return STOPPED
            return DONE if info.get("returncode") == 0 else FAILED
        meta = self.meta
        pid = meta.get("pid")
        if pid and _alive(pid, meta.get("pid_start")):
            return RUNNING
        # The supervisor died without writing exit.json: killed hard (or the machine rebooted).
        return STOPPED if (self.dir / "stop").exists() else FAILED

    @property
    def returncode(self) -> int | None:
        info = self.exit_info()
        return None if info is None else info.get("returncode")

    def progress(self) -> dict | None:
        return read_json(self.progress_file)

    def log_tail(self, max_chars: int = 20_000) -> str:
        return tail_text(self.log_file, max_chars)

    def error_summary(self, lines: int = 6, lang: str | None = None) -> str:
        """What a failed job says about itself, in ``lang`` (default: the current UI language).

        The CLI prints a user error as ``Error: …`` and, for a job started in Chinese, ``错误：…`` right after (with
        any ``- problem`` lines under each): one of the two blocks is returned, never both back to back. Without
        either, the last meaningful lines of the log."""
        from .i18n import current_lang

        text = [ln for ln in self.log_tail(8000).splitlines() if ln.strip() and "\r" not in ln and "it/s]" not in ln]

        def last_block(is_head) -> list[str]:
            heads = [i for i, ln in enumerate(text) if is_head(ln)]
            if not heads:
                return []
            i = heads[-1]
            block = [text[i]]
            for ln in text[i + 1 :]:
                if not ln.startswith(("- ", "  ")):
                    break
                block.append(ln)
            return block

        zh = last_block(lambda ln: ln.startswith("错误"))
        en = last_block(lambda ln: ln.startswith(("Error", "error:", "ERROR")) or "Error:" in ln)
        chosen = (zh or en) if (lang or current_lang()) == "zh" else (en or zh)
        return "\n".join(chosen or text[-lines:])

    def wait(self, timeout: float | None = None, poll: float = 0.2) -> str:
        end = None if timeout is None else time.time() + timeout
        while True:
            st = self.status()
            if st != RUNNING:
                return st
            if end is not None and time.time() > end:
                return st
            time.sleep(poll)

    def stop(self, grace: float = 15.0) -> str:
        """SIGTERM to the whole process group (the step saves what it can), SIGKILL after ``grace`` seconds."""
        (self.dir / "stop").touch()
        meta = self.meta
        pgid = meta.get("pgid")
        if self.status() != RUNNING or not pgid:
            return self.status()
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return self.status()
        if self.wait(timeout=grace) == RUNNING:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait(timeout=5)
        return self.status()


def cli_argv(step: str, *args: str) -> list[str]:
    """The argv that runs ``umtcds <step> args…`` with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "umtcds_core.cli", step, *args]


def start_job(
    ws: Workspace,
    step: str,
    argv: list[str],
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    settings: str | None = None,
) -> Job:
    """Start ``argv`` as a background job of ``step`` in ``ws``; returns at once.

    ``settings``: the step's settings as YAML text, saved as the job folder's ``settings.yaml`` before the step
    starts and passed to it as ``--config`` — so the job folder says what the job runs with, and a page coming back
    to a running (or failed) job reads its settings from there instead of showing its own defaults."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    job_dir = ws.jobs_dir / f"{step}-{stamp}-{_rand.token_hex(3)}"
    job_dir.mkdir(parents=True)
    if settings is not None:
        write_text_atomic(job_dir / SETTINGS_FILE, settings)
        argv = [*argv, "--config", str(job_dir / SETTINGS_FILE)]
    write_json_atomic(
        job_dir / "job.json",
        {"id": job_dir.name, "step": step, "argv": argv, "started": time.time(), "cwd": cwd or os.getcwd()},
    )
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env[PROGRESS_ENV] = str(job_dir / "progress.json")
    child_env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "umtcds_core.jobs", "supervise", str(job_dir)],
        cwd=cwd,
        env=child_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    _HANDLES[str(job_dir)] = proc
    meta = read_json(job_dir / "job.json")
    meta.update(pid=proc.pid, pgid=proc.pid, pid_start=_proc_start_time(proc.pid))
    write_json_atomic(job_dir / "job.json", meta)
    return Job(job_dir)


def list_jobs(ws: Workspace, step: str | None = None) -> list[Job]:
    """Jobs of ``ws`` (optionally of one step), newest first."""
    if not ws.jobs_dir.exists():
        return []
    jobs = [Job(p) for p in ws.jobs_dir.iterdir() if p.is_dir() and (p / "job.json").exists()]
    if step:
        jobs = [j for j in jobs if j.step == step]
    return sorted(jobs, key=lambda j: j.meta.get("started", 0), reverse=True)


def latest_job(ws: Workspace, step: str) -> Job | None:
    jobs = list_jobs(ws, step)
    return jobs[0] if jobs else None


def running_job(ws: Workspace, step: str) -> Job | None:
    job = latest_job(ws, step)
    return job if job is not None and job.status() == RUNNING else None


# ---- supervisor ---------------------------------------------------------------------------------------------------
def _supervise(job_dir: Path) -> int:
    meta = read_json(job_dir / "job.json")
    stopped = {"flag": False}

    def on_term(signum, frame):  # the group got SIGTERM: the child got it too; remember it and keep waiting
        stopped["flag"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    with open(job_dir / "log.txt", "ab", buffering=0) as log:
        try:
            child = subprocess.Popen(
                meta["argv"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=meta.get("cwd")
            )
        except OSError as exc:
            log.write(f"Error: could not start {meta['argv'][0]}: {exc}\n".encode())
            write_json_atomic(job_dir / "exit.json", {"returncode": 127, "ended": time.time(), "stopped": False})
            return 127
        while True:
            try:
                rc = child.wait()
                break
            except InterruptedError:
                continue
    stopped_flag = stopped["flag"] or (job_dir / "stop").exists()
    write_json_atomic(job_dir / "exit.json", {"returncode": rc, "ended": time.time(), "stopped": stopped_flag})
    return rc


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "supervise":
        sys.exit(_supervise(Path(sys.argv[2])))
    print("usage: python -m umtcds_core.jobs supervise JOB_DIR", file=sys.stderr)
    sys.exit(2)
