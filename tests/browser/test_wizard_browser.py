"""The whole wizard in a real browser, on the bundled demo campus site, with tiny settings.

crawl → generate (embedded model) → edit a pair → split → config → train (watch the chart grow) → chat, against the
real ``streamlit run Home.py`` server. Each step leaves a screenshot in ``test-artifacts/browser/wizard-*.png``.
Background jobs are awaited through the workspace's job records (the same files the pages read), then the page is
checked for what the user should see. A page that lacks an expected control makes the test skip with the reason
(a page still being built), never pass by pretending.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from browser_helpers import (
    WAIT_MS,
    create_workspace,
    main_area,
    open_dashboard,
    set_language,
    shot,
    wait_idle,
    wait_until,
)
from playwright.sync_api import expect

from tests.index_helpers import crawl_demo
from umtcds_core.demo import pick_seed
from umtcds_core.demo_site import DemoSite
from umtcds_core.fileio import write_jsonl_atomic
from umtcds_core.index import build_index, index_dir_of
from umtcds_core.jobs import latest_job
from umtcds_core.workspace import Workspace

pytestmark = [pytest.mark.browser, pytest.mark.slow]

WS_NAME = "wizard"
WS_NAME2 = "wizard-2"
# Generous limits for a 2-core CI machine; each is one step's job.
LIMITS = {"crawl": 120, "generate": 900, "train": 600}


def goto(page, label: str, header: str) -> None:
    """Open a step from the sidebar and wait for its header."""
    page.locator('[data-testid="stSidebarNav"]').get_by_text(label, exact=True).click()
    main_area(page).get_by_role("heading", name=re.compile(header)).first.wait_for(timeout=60_000)
    wait_idle(page)


def need(locator, what: str, timeout: int = 20_000):
    """The control, or skip the test: the page does not offer it (yet)."""
    try:
        locator.first.wait_for(timeout=timeout)
    except Exception:  # noqa: BLE001 - playwright's TimeoutError; any failure to find means the same here
        pytest.skip(f"The page has no {what} yet; this part of the wizard cannot be driven.")
    return locator.first


def wait_job(ws: Workspace, step: str, page, shot_name: str) -> None:
    """Wait for the latest ``step`` job to end (taking a screenshot while it runs) and require it to succeed."""
    deadline = time.monotonic() + LIMITS[step]
    job = None
    while job is None and time.monotonic() < deadline:
        job = latest_job(ws, step)
        time.sleep(0.3)
    assert job is not None, f"no {step} job was started"
    shot(page, f"{shot_name}-running")
    status = job.wait(timeout=max(1.0, deadline - time.monotonic()))
    assert status == "done", f"{step} ended {status}: {job.error_summary()}"
    # The job panel notices the end by itself (its fragment polls) and reruns the page once.
    main_area(page).get_by_text(re.compile(r"🟢 done")).first.wait_for(timeout=WAIT_MS)
    wait_idle(page)


def fill_number(page, label: str, value) -> None:
    box = need(main_area(page).get_by_label(label, exact=True), f"'{label}' field")
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


@pytest.fixture
def stop_jobs_after(dashboard):
    """Jobs outlive the dashboard by design; a failed test must not leave one running."""
    yield
    for name in (WS_NAME, WS_NAME2):
        ws_dir = dashboard.workspaces / name
        if ws_dir.exists():
            for step in ("crawl", "generate", "train"):
                job = latest_job(Workspace.open(ws_dir), step)
                if job is not None and job.status() == "running":
                    job.stop()


def test_wizard_crawl_and_generate_on_the_demo_site(dashboard, page, stop_jobs_after):
    """Steps 1–2: crawl two demo pages, generate pairs from them with the embedded model."""
    open_dashboard(page, dashboard)
    set_language(page, "en")
    create_workspace(page, WS_NAME)
    main_area(page).get_by_text(f"Steps — {WS_NAME}").wait_for()
    ws = Workspace.open(dashboard.workspaces / WS_NAME)
    main = main_area(page)

    with DemoSite() as site:
        # ---- 1 · Crawl
        goto(page, "1 · Crawl", "Crawl")
        url = need(main.get_by_role("textbox", name="Start URL", exact=True), "Start URL field")
        url.fill(site.url)
        url.press("Enter")
        fill_number(page, "Depth (link hops)", 1)
        fill_number(page, "Max pages", 2)
        fill_number(page, "Delay (seconds)", 0)
        shot(page, "wizard-1-crawl-settings")
        need(main.get_by_role("button", name="Start crawl"), "Start crawl button").click()
        wait_job(ws, "crawl", page, "wizard-1-crawl")
        done = main.get_by_text(re.compile(r"Saved pages \(\d+\)"))
        done.wait_for(timeout=60_000)
        done.scroll_into_view_if_needed()
        saved = sorted(ws.pages_dir.glob("*.txt"))
        assert len(saved) == 2
        assert not any(p.startswith("/staff-only") for p in site.requests)  # robots.txt obeyed
        shot(page, "wizard-1-crawl-done")

    # ---- 2 · Generate Q&A (embedded model, local backend)
    goto(page, "2 · Generate Q&A", "Generate")
    need(main.get_by_text("Local model", exact=True), "'Local model' backend choice").click()
    wait_idle(page)
    fill_number(page, "Pairs per page", 2)
    fill_number(page, "Max reply tokens", 128)  # a CPU test: short replies
    clean = need(main.locator('label:has-text("Clean text first") input[type="checkbox"]'), "'Clean text first' switch")
    if clean.is_checked():  # a second LLM pass per page: too slow for a CPU test
        main.get_by_text("Clean text first", exact=True).click()
        wait_idle(page)
        expect(clean).not_to_be_checked(timeout=WAIT_MS)
    shot(page, "wizard-2-generate-settings")
    need(main.get_by_role("button", name="Start generating"), "Start generating button").click()
    wait_job(ws, "generate", page, "wizard-2-generate")
    results = main.get_by_text("Results").first
    results.wait_for(timeout=60_000)
    results.scroll_into_view_if_needed()
    shot(page, "wizard-2-generate-done")
    wait_until(lambda: ws.qa_file.exists() and (ws.qa_dir / "failures.jsonl").exists(), "qa.jsonl and failures.jsonl")
    assert (ws.qa_file).exists() and (ws.qa_dir / "failures.jsonl").exists()
    assert not page.js_errors, page.js_errors


def test_wizard_dataset_config_train_chat(dashboard, page, stop_jobs_after):
    """Steps 3–6 on pairs a user brings (the demo's hand-written seed pairs as qa.jsonl): edit, split, config,
    train with the chart growing, chat with the tuned checkpoint."""
    open_dashboard(page, dashboard)
    set_language(page, "en")
    create_workspace(page, WS_NAME2)
    main_area(page).get_by_text(f"Steps — {WS_NAME2}").wait_for()
    ws = Workspace.open(dashboard.workspaces / WS_NAME2)
    ws.qa_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(ws.qa_file, pick_seed(12))
    main = main_area(page)

    # ---- 3 · Dataset: add two pairs through the form, edit one in the table, split
    goto(page, "3 · Dataset", "Dataset")
    for q, a in (
        ("What is the library's late fee?", "The late fee is 0.1 yuan per book per day."),
        ("How much is the dormitory fee?", "The dormitory fee is 1,200 yuan per year."),
    ):
        need(main.get_by_role("textbox", name="Question", exact=True), "'Add a pair' form").fill(q)
        main.get_by_role("textbox", name="Answer", exact=True).first.fill(a)
        main.get_by_role("button", name="Add", exact=True).click()
        wait_idle(page)
    edited = ws.dataset_dir / "qa_edited.jsonl"
    wait_until(edited.exists, "qa_edited.jsonl after adding pairs")
    assert edited.exists(), "adding pairs should save the reviewed copy"
    search = need(main.get_by_role("textbox", name="Search (question, answer or source)", exact=True), "search box")
    search.fill("dormitory fee")
    search.press("Enter")
    wait_idle(page)
    grid = need(main.locator('[data-testid="stDataFrame"], [data-testid="stDataEditor"]'), "pairs table")
    grid.scroll_into_view_if_needed()
    editor = page.locator("textarea.gdg-input, input.gdg-input")
    for _ in range(5):  # the grid draws lazily on a canvas: retry until a double-click opens the cell editor
        page.wait_for_timeout(700)
        box = grid.bounding_box()
        # First data row, answer column (question | answer | source share the width; the header row is ~35 px).
        page.mouse.dblclick(box["x"] + box["width"] * 0.55, box["y"] + 35 + 17)
        try:
            editor.first.wait_for(timeout=3000)
            break
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: not open yet, try again
            page.keyboard.press("Escape")
    editor = editor.first
    editor.fill("The dormitory fee is 1,200 yuan per year, paid in September.")
    editor.press("Enter")
    wait_idle(page)

    def edited_rows() -> list[dict]:
        return [json.loads(x) for x in edited.read_text(encoding="utf-8").splitlines() if x.strip()]

    try:  # the edit reaches the file in the rerun the cell edit triggers: wait for it
        wait_until(lambda: any("paid in September" in r["answer"] for r in edited_rows()), "the edited answer")
    except AssertionError:
        pass
    rows = edited_rows()
    if not any("paid in September" in r["answer"] for r in rows):
        shot(page, "wizard-3-edit-FAILED")
        pytest.fail("Editing a cell of the pairs table did not reach qa_edited.jsonl")
    search.fill("")
    search.press("Enter")
    wait_idle(page)
    shot(page, "wizard-3-dataset-edited")
    need(main.get_by_role("button", name="Split and export"), "Split and export button").click()
    main.get_by_text("Dataset written to").wait_for(timeout=WAIT_MS)
    wait_until((ws.dataset_dir / "train.jsonl").exists, "dataset/train.jsonl")
    assert (ws.dataset_dir / "train.jsonl").exists()
    shot(page, "wizard-3-dataset-split")

    # ---- 4 · Config: LoRA on the embedded model, a few steps
    goto(page, "4 · Config", "config")
    need(main.get_by_text("lora", exact=True), "method choice").click()
    wait_idle(page)
    fill_number(page, "Max steps (-1 = use epochs)", 4)
    shot(page, "wizard-4-config")
    need(main.get_by_role("button", name="Save to the project"), "Save button").click()
    wait_idle(page)
    wait_until(
        lambda: ws.config_file.exists() and "max_steps: 4" in ws.config_file.read_text(encoding="utf-8"),
        "config.yaml with max_steps: 4",
    )
    assert ws.config_file.exists()
    assert "max_steps: 4" in ws.config_file.read_text(encoding="utf-8")

    # ---- 5 · Train: start, see the chart appear and grow while the job runs
    goto(page, "5 · Train", "Train")
    need(main.get_by_role("button", name="Start a new run"), "Start button").click()
    chart = main.locator('[data-testid="stPlotlyChart"]')
    need(chart, "loss chart", timeout=LIMITS["train"] * 1000)
    shot(page, "wizard-5-train-chart-first")
    # The chart and the metrics redraw from metrics.jsonl while the job runs: the train-loss figure turns from "—"
    # into a number without any click.
    loss = main.locator('[data-testid="stMetric"]').filter(has_text="Train loss").first
    need(loss, "'Train loss' figure")
    page.wait_for_function(
        r"""(el) => /\d/.test(el.innerText.replace('Train loss', ''))""",
        arg=loss.element_handle(),
        timeout=LIMITS["train"] * 1000,
    )
    shot(page, "wizard-5-train-chart-updated")
    wait_job(ws, "train", page, "wizard-5-train")
    wait_idle(page)
    expect(chart.first.locator(".scatterlayer .trace").first).to_be_attached(timeout=WAIT_MS)  # the fragment redraws
    assert chart.first.locator(".scatterlayer .trace").count() >= 1  # plotted points, not an empty frame
    assert any((r / "adapter_config.json").exists() for r in ws.runs())
    shot(page, "wizard-5-train-done")

    # ---- 6 · Chat with the tuned checkpoint, answering from the website (a search index over the crawled demo site)
    crawl_demo(ws.pages_dir)
    build_index(ws.pages_dir, index_dir_of(ws))
    goto(page, "6 · Chat", "Chat")
    need(main.get_by_role("button", name="Load model"), "Load model button").click()
    wait_idle(page, timeout_ms=180_000)
    # (page-wide: with a chat input on the page, Streamlit lays the main area out without the stMain test id)
    page.wait_for_function(  # on by default once the project has an index
        """() => document.querySelector('input[aria-label="Answer from the website"]')?.checked""",
        timeout=180_000,
    )
    ask = need(page.get_by_placeholder("Ask a question…"), "chat input")
    ask.fill("When does the library open on weekdays?")
    ask.press("Enter")
    page.wait_for_function(
        """() => {
            const m = document.querySelectorAll('[data-testid="stChatMessageContent"]');
            return m.length >= 2 && m[m.length - 1].innerText.trim().length > 0;
        }""",
        timeout=180_000,
    )
    last = page.locator('[data-testid="stChatMessageContent"]').last
    answer, deadline = "", time.monotonic() + 180
    while time.monotonic() < deadline:  # the reply streams in: wait until it stops growing
        page.wait_for_timeout(1500)
        now = last.inner_text().strip()
        if now and now == answer:
            break
        answer = now
    assert answer and "When does the library open" not in answer
    shot(page, "wizard-6-chat-answer")
    # the pages the answer was given, under it, with links: the library page among them
    page.wait_for_function(
        """() => {
            const m = document.querySelectorAll('[data-testid="stChatMessage"]');
            const last = m[m.length - 1];
            if (!last || ![...last.querySelectorAll('p')].some(p => p.innerText.trim() === 'Sources')) return null;
            const links = [...last.querySelectorAll('a')].map(a => a.href);
            return links.length ? links : null;  // the caption can arrive a frame before the linked lines under it
        }""",
        timeout=WAIT_MS,
    )
    wait_idle(page)  # every source line drawn, then read them all
    links = page.evaluate(
        """() => {
            const m = document.querySelectorAll('[data-testid="stChatMessage"]');
            return [...m[m.length - 1].querySelectorAll('a')].map(a => a.href);
        }"""
    )
    assert any("library" in href for href in links), links
    shot(page, "wizard-6-chat")
    assert not page.js_errors, page.js_errors
