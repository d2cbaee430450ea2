"""Answers from the website in the dashboard: the Crawl page builds the search index with a background job and has a
search box; the Chat page's "answer from the website" toggle shows each answer's sources (title, link, snippet)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.app.zh_check import leaks
from umtcds_core.index import build_index, index_dir_of
from umtcds_core.jobs import DONE, RUNNING, latest_job
from umtcds_core.models import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[2]


def _page(ws, name: str, lang: str = "en") -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / name), default_timeout=180)
    at.session_state["workspace"] = str(ws.root)
    at.session_state["lang"] = lang
    return at.run()


def _with_pages(ws, demo_index):
    shutil.copytree(demo_index[0], ws.pages_dir)
    return ws


def _wait_for(condition, timeout: float = 120.0, what: str = "the condition"):
    """Poll ``condition`` (a job runs in another process) until truthy; fail naming ``what`` after ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_crawl_page_builds_the_index_in_a_job_and_searches_it(workspace, demo_index):
    ws = _with_pages(workspace, demo_index)
    at = _page(ws, "1_crawl.py")
    assert not at.exception
    assert any("No search index yet" in i.value for i in at.info)
    at.button(key="crawl_index").click().run()
    job = _wait_for(lambda: latest_job(ws, "index"), what="the index job to start")
    status = _wait_for(lambda: (s := job.status()) != RUNNING and s, what="the index job to finish")
    assert status == DONE, job.log_tail()
    assert (index_dir_of(ws) / "meta.json").exists()

    at.run()
    assert not at.exception
    assert any("The index holds 22 pages" in c.value for c in at.caption)
    at.text_input(key="crawl_search").set_value("周末图书馆什么时候开放？").run()
    first = next(m.value for m in at.markdown if m.value.startswith("**1.**"))
    assert "[图书馆](http://127.0.0.1:" in first and "/zh/library.html)" in first

    (ws.pages_dir / sorted(p.name for p in ws.pages_dir.glob("*.txt"))[0]).write_text("changed\n", encoding="utf-8")
    at.run()
    assert any("1 pages changed since the index was built" in w.value for w in at.warning)
    assert at.button(key="crawl_index").label == "Refresh the search index"


def test_crawl_page_index_section_is_chinese_only_in_chinese(workspace, demo_index):
    ws = _with_pages(workspace, demo_index)
    build_index(ws.pages_dir, index_dir_of(ws))
    at = _page(ws, "1_crawl.py", lang="zh")
    at.text_input(key="crawl_search").set_value("How many books can I borrow?").run()
    assert not at.exception and any(m.value.startswith("**1.**") for m in at.markdown)
    found = leaks(at, ws.root)
    assert not found, found


def test_chat_page_answers_from_the_website_with_sources(workspace, demo_index):
    ws = _with_pages(workspace, demo_index)
    at = _page(ws, "6_chat.py")
    at.button(key="chat_load").click().run()
    assert not at.exception and at.session_state["chat_loaded"] == [DEFAULT_MODEL, ""]
    assert "chat_rag" not in [t.key for t in at.toggle]  # no index in the project: no toggle

    build_index(ws.pages_dir, index_dir_of(ws))
    at.run()
    assert at.toggle(key="chat_rag").value is True  # an index: answers come from the website by default
    at.slider(key="chat_temp").set_value(0.0)
    at.number_input(key="chat_max_tokens").set_value(24).run()
    at.chat_input(key="chat_input").set_value("When does the library open on weekdays?").run()
    assert not at.exception
    last = at.session_state["chat_history"][-1]
    assert last["content"] and last["sources"][0]["title"] == "Library"
    assert last["sources"][0]["url"].endswith("/library.html")
    assert any(c.value == "Sources" for c in at.caption)
    links = [m.value for m in at.markdown if m.value.startswith("**[1]**")]
    assert links and "[Library](http://127.0.0.1:" in links[0]
    assert any("7:30" in c.value for c in at.caption)  # the snippet of the source page

    at.toggle(key="chat_rag").set_value(False).run()
    at.chat_input(key="chat_input").set_value("Hello").run()
    assert not at.exception and "sources" not in at.session_state["chat_history"][-1]
    assert len([c for c in at.caption if c.value == "Sources"]) == 1  # the earlier answer keeps its sources
