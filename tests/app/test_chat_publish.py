"""Chat page, Publish section (issue 16 §2): a real `umtcds serve` job with the embedded model — started from the
page, /health waited for, the URL, the widget line and a QR code shown, then stopped. The one slow test of the
section (the model loads on CPU in a subprocess)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from streamlit.testing.v1 import AppTest

from umtcds_core import publish
from umtcds_core.jobs import RUNNING, STOPPED, latest_job
from umtcds_core.serve import SERVE

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "6_chat.py")


def _poll(at: AppTest, done, what: str, timeout_s: float = 300.0) -> None:
    """Re-run the page until ``done(at)`` (the page's own polling fragment does this in a browser)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        at.run()
        assert not at.exception, at.exception
        if done(at):
            return
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


def test_publish_starts_serve_shows_url_snippet_qr_and_stops(workspace):
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["workspace"] = str(workspace.root)
    at.session_state["lang"] = "en"
    at.run()
    assert not at.exception
    at.number_input(key="pub_port").set_value(0)  # any free port: the page reads the real one from the start line
    at.text_input(key="pub_assistant_name").set_value("Zorvale helper")
    at.checkbox(key="pub_log_questions").check()
    at.button(key="pub_start").click().run()
    assert not at.exception
    job = latest_job(workspace, "serve")
    try:
        settings = SERVE.load_yaml(job.settings_file)
        assert settings["feedback_dir"] == str(workspace.root) and settings["log_questions"] is True
        assert settings["model"] == "smollm2-135m" and settings["adapter"] is None
        _poll(at, lambda a: any("/health answers" in s.value for s in a.success), "/health to answer")
        url = next(m.value for m in at.markdown if "Students’ page" in m.value).split("](")[-1].rstrip(")")
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        assert publish.widget_snippet(url) in [c.value for c in at.code]
        qr = at.get("image")
        assert qr and qr[0].value and qr[0].captions == ["Scan with a phone"]  # the QR code is drawn
        with urllib.request.urlopen(url + "page.json", timeout=10) as resp:  # the real students' page is there
            assert json.loads(resp.read())["name"] == "Zorvale helper"
        assert at.text_input(key="pub_assistant_name").disabled  # settings are fixed while it serves
        at.button(key="pub_stop").click().run()
        _poll(at, lambda a: any("server is stopped" in c.value for c in a.caption), "the server to stop", 60)
        assert job.status() == STOPPED
    finally:
        if job.status() == RUNNING:
            job.stop(grace=5)


def test_publish_helpers_read_the_start_line_and_draw_a_qr():
    log = "Serving smollm2-135m at http://0.0.0.0:8123/v1 (key required)\nStudents' page: http://0.0.0.0:8123/  ·  w\n"
    assert publish.served_base(log) == "http://0.0.0.0:8123"
    assert publish.local_url("http://0.0.0.0:8123") == "http://127.0.0.1:8123"
    assert publish.public_url("http://127.0.0.1:9/") != "" and publish.public_url("http://10.1.2.3:80") == (
        "http://10.1.2.3:80/"
    )
    assert publish.public_url("http://0.0.0.0:8123").endswith(":8123/")
    assert publish.served_base("nothing yet") is None and not publish.healthy("http://127.0.0.1:9")
    assert publish.qr_png("http://10.1.2.3:8000/").startswith(b"\x89PNG")
