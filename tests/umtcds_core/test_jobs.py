import os
import signal
import subprocess
import sys
import textwrap
import time

from umtcds_core.jobs import STOPPED, Job, latest_job, list_jobs, start_job
from umtcds_core.workspace import DONE, FAILED, RUNNING, Workspace


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_job_runs_logs_and_finishes(workspace):
    job = start_job(
        workspace, "crawl", py("print('hello from the job'); import sys; print('to stderr', file=sys.stderr)")
    )
    assert job.wait(timeout=30) == DONE
    assert job.returncode == 0
    assert "hello from the job" in job.log_tail() and "to stderr" in job.log_tail()
    assert latest_job(workspace, "crawl").id == job.id


def test_crash_is_detected_with_last_error_lines(workspace):
    job = start_job(workspace, "generate", py("print('working'); raise SystemExit('Error: the API key was rejected')"))
    assert job.wait(timeout=30) == FAILED
    assert "API key was rejected" in job.error_summary()
    assert workspace.status("generate") == FAILED


def test_progress_file_is_written_by_the_step(workspace):
    code = """
    import time
    from umtcds_core.progress import Progress
    with Progress(4, unit="pages", desc="t") as p:
        for i in range(4):
            p.update(1, saved=i + 1)
    """
    job = start_job(workspace, "crawl", py(code), cwd=os.getcwd())
    assert job.wait(timeout=60) == DONE
    prog = job.progress()
    assert prog["done"] == 4 and prog["total"] == 4 and prog["counters"]["saved"] == 4


def test_stop_terminates_the_group_gracefully(workspace):
    code = """
    import signal, sys, time
    def bye(*a):
        print('saving before exit', flush=True); sys.exit(3)
    signal.signal(signal.SIGTERM, bye)
    print('started', flush=True)
    time.sleep(60)
    """
    job = start_job(workspace, "train", py(code))
    deadline = time.time() + 20
    while "started" not in job.log_tail() and time.time() < deadline:
        time.sleep(0.1)
    assert job.status() == RUNNING
    assert workspace.status("train") == RUNNING
    assert job.stop(grace=10) == STOPPED
    assert "saving before exit" in job.log_tail()


def test_hard_kill_is_reported_as_failed(workspace):
    job = start_job(workspace, "train", py("import time; print('x', flush=True); time.sleep(60)"))
    deadline = time.time() + 20
    while "x" not in job.log_tail() and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(job.meta["pgid"], signal.SIGKILL)
    assert job.wait(timeout=10) == FAILED


def test_reattach_after_the_dashboard_process_dies(tmp_path):
    """A 'dashboard' process starts a job and is killed; a new process finds the job and sees it finish."""
    ws = Workspace.create("w", root=tmp_path)
    dashboard = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from umtcds_core.jobs import start_job
            from umtcds_core.workspace import Workspace
            ws = Workspace.open({str(ws.root)!r})
            start_job(ws, "crawl", [sys.executable, "-c", "import time; time.sleep(2); print('finished')"])
            print('started', flush=True)
            time.sleep(60)
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert dashboard.stdout.readline().strip() == "started"
    dashboard.kill()
    dashboard.wait()
    # "Reload": a fresh view of the workspace from files only.
    jobs = list_jobs(Workspace.open(ws.root), "crawl")
    assert len(jobs) == 1
    job = Job(jobs[0].dir)
    assert job.status() == RUNNING
    assert job.wait(timeout=30) == DONE
    assert "finished" in job.log_tail()
