"""The dashboard's own CPU stays low while a training job runs and a browser tab watches it (issue 21, item 1).

With Streamlit's default file watcher the server watched the whole checkout (``.venv/`` and the workspaces that jobs
write into) and, with a tab open, used 65-90 % of a core, slowing training 4.6x on a 2-core machine. This test runs
the situation a user is in: the app started by ``make run`` (so ``.streamlit/config.toml`` decides the watcher), the
projects folder INSIDE the checkout (as the default ``data/workspaces/`` is), a real ``umtcds train`` job of the
embedded model writing a metrics line every step, and the Train page open in Chromium redrawing its live chart.
The CPU of the dashboard's own processes (its session: ``make`` and Streamlit, not the job, which runs in a session
of its own) is sampled over 20 s of training.
"""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest
from browser_helpers import (
    ARTIFACTS,
    WAIT_MS,
    main_area,
    open_dashboard,
    open_step_page,
    session_cpu_seconds,
    shot,
    start_dashboard,
    start_training,
    stop_dashboard,
    train_records,
    training_workspace,
    wait_until,
)
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SAMPLE_S = 20.0
MAX_CPU_PERCENT = 25.0
"""Of one core, averaged over the window. The old watcher config used 65-90 %; the page's own live refresh (job panel
every 2 s, chart every 3 s) costs a few percent, and a loaded machine stretches each rerun, hence the margin."""


@pytest.fixture(scope="module")
def dashboard_in_checkout():
    """The dashboard with its projects folder inside the checkout, where a recursive file watcher would see the job's
    writes (the default ``data/workspaces/`` is inside it too); removed afterwards."""
    root = ARTIFACTS / f"cpu-workspaces-{os.getpid()}"
    dash = start_dashboard(root, workspaces=root)
    yield dash
    stop_dashboard(dash)
    shutil.rmtree(root, ignore_errors=True)


def test_dashboard_cpu_stays_low_while_training_with_the_train_page_open(dashboard_in_checkout, page):
    dash = dashboard_in_checkout
    ws = training_workspace(dash.workspaces, "cpu-check")
    job, run_dir = start_training(ws)
    try:
        # The user opens the Train page while the job runs: the page then refreshes itself (job panel, live chart).
        open_dashboard(page, dash)
        open_step_page(page, "train")
        wait_until(lambda: train_records(run_dir) or job.status() != "running", "the first training step", 600)
        assert job.status() == "running", f"training ended before it could be watched: {job.error_summary()}"
        chart = main_area(page).locator('[data-testid="stPlotlyChart"]').first
        expect(chart).to_be_visible(timeout=WAIT_MS)
        shot(page, "cpu-1-train-page-open")

        job_sid = job.meta["pgid"]  # the job's session (start_job makes its supervisor a session leader)
        cpu0, job0, t0 = session_cpu_seconds(dash.proc.pid), session_cpu_seconds(job_sid), time.monotonic()
        page.wait_for_timeout(SAMPLE_S * 1000)  # the tab stays open and live the whole window
        cpu1, job1, t1 = session_cpu_seconds(dash.proc.pid), session_cpu_seconds(job_sid), time.monotonic()
        percent = 100.0 * (cpu1 - cpu0) / (t1 - t0)
        job_percent = 100.0 * (job1 - job0) / (t1 - t0)
        print(f"dashboard CPU {percent:.1f} %, training job {job_percent:.0f} % of one core over {t1 - t0:.0f} s")

        assert job.status() == "running", f"training ended during the window: {job.error_summary()}"
        # On a loaded machine one step can take longer than the window; the job's own CPU shows it was training.
        assert job1 - job0 > 2.0, "the training job hardly ran in the window: nothing was measured"
        expect(main_area(page).get_by_text(re.compile("运行中|running|训练进行中|Training…")).first).to_be_visible(
            timeout=WAIT_MS
        )
        shot(page, "cpu-2-after-window")
        assert percent < MAX_CPU_PERCENT, (
            f"the dashboard used {percent:.0f} % of a core while a job ran with a tab open (limit "
            f"{MAX_CPU_PERCENT:.0f} %): is the file watcher on? See .streamlit/config.toml.\n{dash.log_tail(2000)}"
        )
        assert not page.js_errors, page.js_errors
    finally:
        job.stop()
