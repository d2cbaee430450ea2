"""The students' page and the widget of ``umtcds serve`` in a real browser (issue 16 §2).

Only a browser shows that the page's own script streams the answer onto the screen, that 👎 opens the correction box
and what it posts lands in ``serve/feedback.jsonl``, that the zh/en switch changes the texts, and that one
``<script src=…/widget.js>`` line on another site's page adds a bubble whose frame the server allows for an
``--allow-origin`` site. The model is the tiny fact adapter (tests/chat_helpers.py): answers are exact and fast.
The server writes its feedback into a dashboard project, so the 👎's correction is then found on the real dashboard's
Dataset page, "From students" tab (issue 16 §3: the loop back to the pairs).
"""

from __future__ import annotations

import http.server
import json
import threading

import pytest
from browser_helpers import (
    WAIT_MS,
    create_workspace,
    free_port,
    main_area,
    open_dashboard,
    open_step_page,
    shot,
    wait_idle,
    wait_until,
)
from playwright.sync_api import expect

from tests.chat_helpers import FACTS
from umtcds_core import serve

pytestmark = [pytest.mark.browser]

Q, A = FACTS[0]
Q2, A2 = FACTS[1]
WS_NAME = "published"
CORRECTION = "It was renamed to ZV-Air-9000 in May."
WELCOME = "Welcome to the Zorvale helper — ask about Wi-Fi, the library or the president."


@pytest.fixture(scope="module")
def host_site(tmp_path_factory):
    """Another site (another origin: its own port) whose page embeds the widget with one script line."""
    root = tmp_path_factory.mktemp("host_site")
    port = free_port()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{port}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def assistant(fact_chat_model, host_site, dashboard):
    feedback = dashboard.workspaces / WS_NAME  # a dashboard project (created from Home in the test)
    srv = serve.make_server(
        fact_chat_model,
        "127.0.0.1",
        0,
        api_key="admin-only",  # the API needs the key; the students' page does not
        assistant_name="Zorvale helper",
        welcome=WELCOME,
        examples=[Q2],
        allow_origin=[host_site[1]],
        feedback_dir=str(feedback),
        answer_tokens=24,
    )
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


def _answer(scope, n: int):
    """The ``n``-th finished answer's column (1-based) in the page or frame ``scope``."""
    return scope.locator(".msg.bot.answer.complete .col").nth(n - 1)


def test_ask_see_streamed_answer_thumbs_down_with_correction(assistant, dashboard, page):
    url = f"http://127.0.0.1:{assistant.server_port}/"
    page.set_viewport_size({"width": 390, "height": 780})  # a phone
    page.goto(url, timeout=WAIT_MS)
    expect(page.locator("#name")).to_have_text("Zorvale helper", timeout=WAIT_MS)
    expect(page.locator("#welcome")).to_have_text(WELCOME)
    expect(page.locator("#send")).to_have_text("发送")  # the browser says zh-CN
    page.locator("#lang-en").click()
    expect(page.locator("#send")).to_have_text("Send", timeout=WAIT_MS)
    expect(page.locator("#question")).to_have_attribute("placeholder", "Type your question…")

    # count the text pieces the page receives as they arrive: the answer must stream, not land at once
    page.evaluate(
        """() => { window.__pieces = 0; new MutationObserver(() => window.__pieces++)
                   .observe(document.getElementById('log'), {subtree: true, characterData: true, childList: true}); }"""
    )
    page.locator("#question").fill(Q)
    page.locator("#question").press("Enter")
    expect(page.locator(".msg.user .bubble").first).to_have_text(Q, timeout=WAIT_MS)
    first = _answer(page, 1)
    expect(first.locator(".bubble")).to_have_text(A, timeout=WAIT_MS)
    assert page.evaluate("window.__pieces") > 4  # user bubble, answer bubble, then several text pieces
    shot(page, "student-page-answer")

    first.locator("button.down").click()
    box = first.locator(".fix textarea")
    expect(box).to_have_attribute("placeholder", "The right answer is… (optional)", timeout=WAIT_MS)
    box.fill(CORRECTION)
    first.locator(".fix button").click()
    expect(first.locator(".note.thanks")).to_have_text("Thanks for your feedback!", timeout=WAIT_MS)
    shot(page, "student-page-feedback")

    def saved():
        path = assistant.api.feedback_file
        rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
        return [r for r in rows if r["rating"] == "down"]

    rows = wait_until(saved, "the 👎 to be written to serve/feedback.jsonl")
    assert rows[-1]["question"] == Q and rows[-1]["answer"] == A and rows[-1]["lang"] == "en"
    assert rows[-1]["correction"] == CORRECTION and rows[-1]["verified"] is True

    page.reload()  # a new conversation (the tiny test model knows single questions, not follow-ups)
    expect(page.locator("#send")).to_have_text("Send", timeout=WAIT_MS)  # the language choice is remembered
    page.get_by_role("button", name=Q2).click()  # an example question set by the builder
    expect(_answer(page, 1).locator(".bubble")).to_have_text(A2, timeout=WAIT_MS)
    page.locator("#lang-zh").click()
    expect(page.locator("#send")).to_have_text("发送", timeout=WAIT_MS)
    assert not page.js_errors, page.js_errors

    # The builder sees the correction on the dashboard: Dataset → From students, with the question it corrects.
    page.set_viewport_size({"width": 1366, "height": 900})  # a builder's screen: the sidebar is open
    open_dashboard(page, dashboard)
    create_workspace(page, WS_NAME)  # the folder the server writes to becomes the current project
    open_step_page(page, "dataset")
    main = main_area(page)
    main.get_by_text("来自学生", exact=True).click()
    wait_idle(page)
    grid = main.locator('[data-testid="stDataFrame"], [data-testid="stDataEditor"]').first
    expect(grid.get_by_text(CORRECTION)).to_be_attached(timeout=WAIT_MS)  # the grid's accessible cells
    expect(grid.get_by_text(Q)).to_be_attached(timeout=WAIT_MS)
    shot(page, "student-feedback-on-dataset-page")


def test_widget_bubble_on_another_site(assistant, host_site, page):
    root, origin = host_site
    script = f'<script src="http://127.0.0.1:{assistant.server_port}/widget.js" data-lang="en"></script>'
    (root / "index.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>Zorvale University</title></head>"
        f"<body><h1>Zorvale University</h1><p>Admissions, research, campus life.</p>{script}</body></html>",
        encoding="utf-8",
    )
    page.goto(origin + "/", timeout=WAIT_MS)
    bubble = page.locator("#umtcds-bubble")
    expect(bubble).to_be_visible(timeout=WAIT_MS)
    bubble.click()
    expect(page.locator("#umtcds-frame")).to_be_visible(timeout=WAIT_MS)
    frame = page.frame_locator("#umtcds-frame")
    expect(frame.locator("#send")).to_have_text("Send", timeout=WAIT_MS)  # data-lang="en" reached the page
    frame.locator("#question").fill(Q)
    frame.locator("#send").click()
    expect(_answer(frame, 1).locator(".bubble")).to_have_text(A, timeout=WAIT_MS)
    shot(page, "student-widget-answer")
    assert not page.js_errors, page.js_errors
